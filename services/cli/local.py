"""Commands that need no frontend: `deploy-model` (Kubernetes manifests), `settings`,
`tokens` and `prometheus-rule`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.cli import k8s, monitoring, tokens
from services.model_container.batcher import BATCHING_MODES
from services.model_container.runner import WORKER_KINDS
from services.model_container.runtimes import RUNTIMES

# Batching and worker flags of deploy-model, passed to the container as CLIPPER_CONTAINER_*.
_CONTAINER_FLAGS: tuple[tuple[str, Any, dict[str, Any]], ...] = (
    ("--batching", str, {"choices": BATCHING_MODES}),
    ("--max-batch-size", int, {}),
    ("--max-queue", int, {}),
    ("--max-delay-ms", float, {}),
    ("--concurrency", int, {}),
    ("--worker", str, {"choices": WORKER_KINDS}),
    ("--runtime", str, {"choices": RUNTIMES}),
    ("--heartbeat-s", float, {}),
    ("--log-level", str, {}),
)


def add_commands(sub: Any) -> None:
    """Add the local commands to the CLI's subparsers."""
    deploy = sub.add_parser(
        "deploy-model",
        help="print a model Deployment for kubectl apply -f -",
        description="Print the Kubernetes Deployment (and, with --max-replicas, an "
        "autoscaler) of one model, to apply into a namespace where deploy/ runs the mesh. "
        "Unset batching flags keep the container's defaults.",
    )
    deploy.add_argument("--image", required=True,
                        help="image with the model (built FROM the clipper-mesh image)")
    deploy.add_argument("--model", default="",
                        help="package.module:attr or a model file path inside the image")
    deploy.add_argument("--model-pvc", default="", metavar="CLAIM",
                        help="serve the model directory (model file and model.json) on this "
                        "PersistentVolumeClaim, mounted read-only: a new model needs no new "
                        "image")
    deploy.add_argument("--model-pvc-path", default="",
                        help="the model directory inside the claim (default: its root)")
    deploy.add_argument("--model-image", default="",
                        help="serve the model directory held in this image, copied by an "
                        "init container (the image needs cp)")
    deploy.add_argument("--model-image-path", default="/model",
                        help="the model directory inside --model-image")
    deploy.add_argument("--name", required=True, help="model name applications link to")
    deploy.add_argument("--version", default="1")
    deploy.add_argument("--replicas", type=int, default=1)
    deploy.add_argument("--namespace", default=k8s.NAMESPACE)
    deploy.add_argument("--input-dtype", default="", help="e.g. float32")
    deploy.add_argument("--input-shape", default="", help="e.g. 64 or 8,8")
    for flag, kind, extra in _CONTAINER_FLAGS:
        deploy.add_argument(flag, type=kind, default=None, **extra)
    deploy.add_argument("--cpu", default="250m", help="CPU request")
    deploy.add_argument("--memory", default="512Mi", help="memory request and limit")
    deploy.add_argument("--max-replicas", type=int, default=0,
                        help="add a HorizontalPodAutoscaler on CPU up to this many replicas")
    deploy.add_argument("--env", action="append", default=[], metavar="CLIPPER_CONTAINER_X=V",
                        help="any other container setting (see deploy/README.md)")
    deploy.add_argument("--tls-secret", default="",
                        help="with deploy/overlays/prod-tls: the certificate Secret to mount "
                        "(model-container-tls); probes move to the plaintext health port")
    deploy.add_argument("--output", choices=("yaml", "json"), default="yaml")

    tokens.add_command(sub)
    monitoring.add_command(sub)
    settings = sub.add_parser(
        "settings", help="every setting the services read, as a Markdown table")
    action = settings.add_mutually_exclusive_group()
    action.add_argument("--check", type=Path, metavar="FILE",
                        help="exit 1 when the table in FILE is out of date")
    action.add_argument("--write", type=Path, metavar="FILE",
                        help="rewrite the table in FILE between its markers")


def _model_spec(args: argparse.Namespace) -> k8s.ModelSpec:
    from services.cli.settings import env_names

    known = {name for name in env_names() if name.startswith("CLIPPER_CONTAINER_")}
    env: dict[str, str] = {}
    for flag, _, _ in _CONTAINER_FLAGS:
        dest = flag.removeprefix("--").replace("-", "_")
        value = getattr(args, dest)
        if value is not None:
            env[f"CLIPPER_CONTAINER_{dest.upper()}"] = str(value)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--env {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(sorted(known))}")
        env[name] = value
    return k8s.ModelSpec(
        image=args.image, model=args.model, name=args.name, version=args.version,
        replicas=args.replicas, namespace=args.namespace or None,
        input_dtype=args.input_dtype, input_shape=args.input_shape, env=env,
        cpu=args.cpu, memory=args.memory, max_replicas=args.max_replicas,
        tls_secret=args.tls_secret, model_pvc=args.model_pvc,
        model_pvc_path=args.model_pvc_path, model_image=args.model_image,
        model_image_path=args.model_image_path,
    )


def deploy_model(args: argparse.Namespace) -> int:
    try:
        manifests = k8s.model_manifests(_model_spec(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        doc: dict[str, Any] = (manifests[0] if len(manifests) == 1
                               else {"apiVersion": "v1", "kind": "List", "items": manifests})
        print(json.dumps(doc, indent=2))
    else:
        print(k8s.to_yaml(manifests), end="")
    return 0


def settings_table(args: argparse.Namespace) -> int:
    from services.cli import settings

    if args.check is None and args.write is None:
        print(settings.settings_markdown(), end="")
        return 0
    path: Path = args.check or args.write
    if settings.update_file(path, check_only=args.check is not None):
        return 0
    if args.check is not None:
        print(f"{path}: the settings table is out of date; run "
              f"python -m services.cli settings --write {path}", file=sys.stderr)
        return 1
    print(f"{path}: settings table updated", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "deploy-model": deploy_model,
    "settings": settings_table,
    "tokens": tokens.print_token,
    "prometheus-rule": monitoring.print_rule,
}
