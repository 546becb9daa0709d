"""`python -m services.cli [--frontend HOST:PORT] COMMAND ...`

Management commands need the management token (`--token` or
CLIPPER_MANAGEMENT_TOKEN). Output is JSON, for people and scripts alike.
`--tls-ca FILE` dials with TLS (`--tls-cert`/`--tls-key` for mTLS; env
CLIPPER_CLI_TLS_CA, CLIPPER_CLI_TLS_CERT, CLIPPER_CLI_TLS_KEY).

  apps list | get NAME | delete NAME
  apps create NAME --input-dtype float32 --input-shape 64 --slo-ms 100
                   [--policy all] [--param k=v] [--model M ...] [--default -1 --default-dtype int64]
  apps create NAME --input features:float32:4 --input mask:bool:4
                   [--output label:int64: --output probabilities:float32:3] ...
                   (named inputs and outputs: NAME:DTYPE:SHAPE, shape comma-separated)
  apps create ... [--api-key-sha256 H ...] [--feedback-key-sha256 H ...]
  apps keys APP [--api-key-sha256 H ...] [--feedback-key-sha256 H ...] | --none
                   (replaces both lists)
  apps create ... [--client-quota-qps Q [--client-quota-burst B]]
  apps quota APP --client-quota-qps Q [--client-quota-burst B]   (0: the frontend's default)
  apps link APP MODEL | apps unlink APP MODEL
  apps policy APP [--context KEY]        what the learning policy believes, per model version
  apps reset-policy APP [--context KEY]  forget it (no --context: the app's and every context's)
  models list | models set-version MODEL VERSION
  replicas list [--model M]
  predict APP --values 0,1,2,... [--dtype float32] [--shape 64] [--context USER]
  feedback APP --query-id ID --label 3 [--label-dtype int64] [--context USER]
  (predict and feedback send --api-key, default CLIPPER_API_KEY, when the app has keys)
  top [--metrics URL ... | --metrics-file PATH] [--interval-s 1] [--once]
                   live view: per application rate, p50/p99, defaults, misses; per model
                   replicas, queue, batch size (URLs: frontends' and containers' /metrics)

Local commands (no frontend needed):

  deploy-model --image IMG (--model REF | --model-pvc CLAIM | --model-image IMG) --name N
               [--version V] [--replicas R]
               [--max-batch-size ...] [--worker process] [--max-replicas M] | kubectl apply -f -
  settings [--check FILE | --write FILE]   every setting the services read, as Markdown
  tokens container MODEL | tokens selection   credentials derived from CLIPPER_MESH_SECRET
  tokens api-key                              a new API key and its SHA-256
  prometheus-rule RULES.yaml   a Prometheus rule file as a PrometheusRule resource
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from services.cli import local, top
from services.common import tensors
from services.common.auth import api_key, bearer
from services.common.tls import ClientTLS, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frontend", default=os.environ.get("CLIPPER_CLI_FRONTEND", "127.0.0.1:1337"))
    p.add_argument("--token", default=os.environ.get("CLIPPER_MANAGEMENT_TOKEN", ""))
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--tls-ca", default=os.environ.get("CLIPPER_CLI_TLS_CA", ""),
                   help="dial with TLS, trusting this PEM CA")
    p.add_argument("--tls-cert", default=os.environ.get("CLIPPER_CLI_TLS_CERT", ""),
                   help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default=os.environ.get("CLIPPER_CLI_TLS_KEY", ""),
                   help="PEM key of --tls-cert")
    p.add_argument("--tls-server-name", default="",
                   help="name to verify in the frontend's certificate instead of its host")
    sub = p.add_subparsers(dest="group", required=True)

    apps = sub.add_parser("apps").add_subparsers(dest="command", required=True)
    apps.add_parser("list")
    for name in ("get", "delete"):
        apps.add_parser(name).add_argument("name")
    create = apps.add_parser("create")
    create.add_argument("name")
    create.add_argument("--input-dtype", help="the one input's dtype (or --input)")
    create.add_argument("--input-shape", default="", help="comma-separated, -1 for any")
    for kind in ("input", "output"):
        create.add_argument(f"--{kind}", action="append", default=[], type=_named_spec,
                            metavar="NAME:DTYPE:SHAPE",
                            help=f"a named {kind} (repeat for several); shape comma-separated, "
                            "-1 for any, empty for a scalar")
    create.add_argument("--slo-ms", type=int, default=100)
    create.add_argument("--policy", default="static")
    create.add_argument("--param", action="append", default=[], help="policy parameter k=v")
    create.add_argument("--model", action="append", default=[], help="model to link")
    create.add_argument("--default", help="default output values, comma-separated")
    create.add_argument("--default-dtype", default="int64")
    create.add_argument("--allow-non-finite", action="store_true",
                        help="accept NaN and infinity in inputs (refused by default)")
    keys = apps.add_parser("keys", help="replace an application's API key hashes")
    keys.add_argument("name")
    keys.add_argument("--none", action="store_true", help="remove every key: open the app")
    quota = apps.add_parser("quota", help="set an application's per-client quota")
    quota.add_argument("name")
    for cmd in (create, quota):
        cmd.add_argument("--client-quota-qps", type=float, default=0.0, required=cmd is quota,
                         help="queries per second each client (API key, else address) may "
                         "send; 0: the frontend's --client-quota-qps")
        cmd.add_argument("--client-quota-burst", type=int, default=0,
                         help="queries a client may send at once above the rate; 0: one "
                         "second's worth")
    for cmd in (create, keys):
        cmd.add_argument("--api-key-sha256", action="append", default=[], metavar="HEX",
                         help="SHA-256 of a key queries and feedback need (tokens api-key)")
        cmd.add_argument("--feedback-key-sha256", action="append", default=[], metavar="HEX",
                         help="SHA-256 of a key feedback needs (instead of the above)")
    for name in ("policy", "reset-policy"):
        cmd = apps.add_parser(name)
        cmd.add_argument("application")
        cmd.add_argument("--context", default="", help="a context key (default: application-wide)")
    for name in ("link", "unlink"):
        cmd = apps.add_parser(name)
        cmd.add_argument("application")
        cmd.add_argument("model")

    models = sub.add_parser("models").add_subparsers(dest="command", required=True)
    models.add_parser("list")
    set_version = models.add_parser("set-version")
    set_version.add_argument("model")
    set_version.add_argument("version")

    replicas = sub.add_parser("replicas").add_subparsers(dest="command", required=True)
    replicas.add_parser("list").add_argument("--model", default="")

    predict = sub.add_parser("predict")
    predict.add_argument("application")
    predict.add_argument("--values", required=True, help="comma-separated numbers")
    predict.add_argument("--dtype", default="float32")
    predict.add_argument("--shape", default="", help="default: one dimension of len(values)")
    predict.add_argument("--context", default="")
    predict.add_argument("--api-key", default=os.environ.get("CLIPPER_API_KEY", ""))

    feedback = sub.add_parser("feedback")
    feedback.add_argument("application")
    feedback.add_argument("--query-id", required=True)
    feedback.add_argument("--label", required=True)
    feedback.add_argument("--label-dtype", default="int64")
    feedback.add_argument("--context", default="")
    feedback.add_argument("--api-key", default=os.environ.get("CLIPPER_API_KEY", ""))

    top.add_command(sub)
    local.add_commands(sub)
    return p


def _shape(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d.strip()]


def _named_spec(text: str) -> pb.TensorSpec:
    """NAME:DTYPE:SHAPE, e.g. mask:bool:4 (shape empty: a scalar)."""
    name, dtype, shape = [*text.split(":"), "", ""][:3]
    if not name or not dtype or text.count(":") > 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:DTYPE:SHAPE")
    try:
        return pb.TensorSpec(name=name, dtype=dtype, shape=_shape(shape))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the shape is comma-separated integers") \
            from None


def _values(raw: str, dtype: str, shape: str = "") -> pb.Tensor:
    array = np.array([float(v) for v in raw.split(",") if v.strip()], dtype=dtype)
    if shape:
        array = array.reshape([int(d) for d in shape.split(",")])
    elif array.size == 1:
        array = array.reshape(())
    return tensors.encode(array)


def _show(msg: Message) -> dict[str, Any]:
    """JSON of a message, with tensors decoded to lists."""
    data: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for field, value in msg.ListFields():
        if isinstance(value, pb.Tensor):
            data[field.name] = tensors.decode(value).tolist()
    return data


def _policy_state(state: pb.PolicyState) -> dict[str, Any]:
    """Every field, zeros included: an arm's weight 0 or count 0 is news too."""
    return {
        "application": state.application, "context_key": state.context_key,
        "policy": state.policy, "rounds": state.rounds, "source": state.source,
        "arms": [{"model": a.model, "version": a.version, "current": a.current,
                  "weight": round(a.weight, 4),
                  "estimate": None if a.estimate < 0 else round(a.estimate, 4),
                  "count": round(a.count, 2)} for a in state.arms],
    }


def _key(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return api_key(args.api_key) if args.api_key else ()


def _channel(args: argparse.Namespace) -> grpc.Channel:
    return sync_channel(args.frontend, ClientTLS(args.tls_ca, args.tls_cert, args.tls_key,
                                                 args.tls_server_name))


def _management(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of a Management call."""
    return {"metadata": bearer(args.token), "timeout": args.timeout_s}


def run(args: argparse.Namespace) -> Any:
    channel = _channel(args)
    mgmt = pb_grpc.ManagementStub(channel)
    front = pb_grpc.FrontendStub(channel)
    kw = _management(args)
    group, command = args.group, getattr(args, "command", "")
    if group == "apps" and command == "list":
        reply = mgmt.ListApplications(pb.ListApplicationsRequest(), **kw)
        return [_show(a) for a in reply.applications]
    if group == "apps" and command in ("get", "delete"):
        method = mgmt.GetApplication if command == "get" else mgmt.DeleteApplication
        return _show(method(pb.ApplicationName(name=args.name), **kw))
    if group == "apps" and command == "create":
        if bool(args.input_dtype) == bool(args.input):
            raise SystemExit("apps create: give --input-dtype and --input-shape (one input), "
                             "or --input NAME:DTYPE:SHAPE for each named input")
        app = pb.Application(
            name=args.name,
            input_spec=pb.TensorSpec(dtype=args.input_dtype, shape=_shape(args.input_shape))
            if args.input_dtype else None,
            inputs=args.input,
            outputs=args.output,
            slo_ms=args.slo_ms,
            policy=args.policy,
            policy_params=dict(kv.split("=", 1) for kv in args.param),
            linked_models=args.model,
            allow_non_finite=args.allow_non_finite,
            api_key_sha256=args.api_key_sha256,
            feedback_key_sha256=args.feedback_key_sha256,
            client_quota_qps=args.client_quota_qps,
            client_quota_burst=args.client_quota_burst,
        )
        if args.default is not None:
            app.default_output.CopyFrom(_values(args.default, args.default_dtype))
        return _show(mgmt.CreateApplication(pb.ApplicationRequest(application=app), **kw))
    if group == "apps" and command == "keys":
        if args.none == bool(args.api_key_sha256 or args.feedback_key_sha256):
            raise SystemExit("apps keys: give --api-key-sha256 and/or --feedback-key-sha256 "
                             "(the new lists), or --none to remove every key")
        app = mgmt.GetApplication(pb.ApplicationName(name=args.name), **kw)
        app.api_key_sha256[:] = args.api_key_sha256
        app.feedback_key_sha256[:] = args.feedback_key_sha256
        return _show(mgmt.UpdateApplication(pb.ApplicationRequest(application=app), **kw))
    if group == "apps" and command == "quota":
        app = mgmt.GetApplication(pb.ApplicationName(name=args.name), **kw)
        app.client_quota_qps = args.client_quota_qps
        app.client_quota_burst = args.client_quota_burst
        return _show(mgmt.UpdateApplication(pb.ApplicationRequest(application=app), **kw))
    if group == "apps" and command in ("link", "unlink"):
        method = mgmt.LinkModel if command == "link" else mgmt.UnlinkModel
        return _show(method(pb.LinkRequest(application=args.application, model=args.model), **kw))
    if group == "apps" and command == "policy":
        request = pb.PolicyStateRequest(application=args.application, context_key=args.context)
        return _policy_state(mgmt.GetPolicyState(request, **kw))
    if group == "apps" and command == "reset-policy":
        request = pb.PolicyStateRequest(application=args.application, context_key=args.context)
        return {"states_deleted": mgmt.ResetPolicyState(request, **kw).states_deleted}
    if group == "models" and command == "list":
        return [_show(m) for m in mgmt.ListModels(pb.ListModelsRequest(), **kw).models]
    if group == "models" and command == "set-version":
        version = pb.SetModelVersionRequest(model=args.model, version=args.version)
        return _show(mgmt.SetModelVersion(version, **kw))
    if group == "replicas":
        reply = mgmt.ListReplicas(pb.ListReplicasRequest(model=args.model), **kw)
        return [_show(r) for r in reply.replicas]
    if group == "predict":
        query = pb.PredictRequest(application=args.application, context_key=args.context,
                                  input=_values(args.values, args.dtype, args.shape))
        return _show(front.Predict(query, timeout=args.timeout_s, metadata=_key(args)))
    if group == "feedback":
        fb = pb.FeedbackRequest(application=args.application, context_key=args.context,
                                query_id=args.query_id,
                                label=_values(args.label, args.label_dtype))
        return _show(front.Feedback(fb, timeout=args.timeout_s, metadata=_key(args)))
    raise SystemExit(f"unknown command {group} {command}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.group in local.COMMANDS:
        return local.COMMANDS[args.group](args)
    try:
        if args.group == "top":
            mgmt = pb_grpc.ManagementStub(_channel(args))
            return top.run(args.frontend, mgmt, args, _management(args))
        result = run(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a setting that cannot be used, such as TLS without a CA
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
