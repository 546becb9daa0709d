"""Property-based fuzzing of every public RPC against a live frontend with real containers.

Requests are drawn by hypothesis: random and adversarial field values (dtypes, shapes
with huge, negative and deep dimensions, byte lengths that do not match, unicode and
overlong names, empty and repeated fields) and garbage bytes. Properties:

- the answer is OK or a documented status, never INTERNAL or UNKNOWN;
- it comes back within a bounded time;
- the frontend keeps serving: a valid query is answered after every batch of examples;
- the frontend's memory stays bounded over the campaign.

`make test` runs a few hundred examples (profile "ci", derandomized); `make fuzz`
runs the profile "fuzz" (thousands, fresh random draws each run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import tensors
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from services.generated.inference import grpc_service_pb2 as oip
from services.generated.inference import grpc_service_pb2_grpc as oip_grpc
from testkit.mesh import MGMT, Mesh, container_metadata

settings.register_profile("ci", max_examples=50, derandomize=True, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None)
settings.register_profile("fuzz", max_examples=1500, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None)
settings.load_profile(os.environ.get("CLIPPER_FUZZ_PROFILE", "ci"))

DOCUMENTED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
}
# Longest any one fuzzed call may take: they all fail fast or answer within the SLO.
CALL_LIMIT_S = 2.0
SLO_MS = 200
# Growth of the frontend's resident memory allowed over the whole campaign.
RSS_GROWTH_LIMIT_MB = 150

APPS = ["sum", "sum-default", "strings"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path_factory.mktemp("fuzz"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--max-applications", "64", "--cache-size", "1000")
        mesh.start_container("tests.helpers.models:SumModel", "sum")
        mesh.start_container("tests.helpers.models:SumModel", "sum2")
        mesh.start_container("tests.helpers.models:Echo", "echo")
        mesh.create_app("sum", ["sum", "sum2"], slo_ms=SLO_MS, policy="exp4")
        mesh.create_app("sum-default", ["sum"], slo_ms=SLO_MS,
                        default=tensors.encode(np.float64(-1)))
        mesh.create_app("strings", ["echo"], dtype="string", shape=(-1,), slo_ms=SLO_MS)
        for name in ("sum", "sum2", "echo"):
            mesh.wait_connected(name, 1)
        yield mesh
    finally:
        mesh.close()


class Campaign:
    """Calls against the mesh, with what each returned and how long it took."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.channel = grpc.insecure_channel(mesh.address, options=[
            ("grpc.max_send_message_length", 64 << 20)])
        self.frontend = pb_grpc.FrontendStub(self.channel)
        self.management = pb_grpc.ManagementStub(self.channel)
        self.registry = pb_grpc.RegistryStub(self.channel)
        self.inference = oip_grpc.GRPCInferenceServiceStub(self.channel)
        self.calls = 0
        self.slowest_s = 0.0
        self.codes: dict[str, int] = {}

    def call(self, rpc: Callable[..., Any], request: Any, **kwargs: Any) -> grpc.StatusCode:
        started = time.monotonic()
        try:
            result = rpc(request, timeout=10, **kwargs)
            if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
                for reply in result:  # a stream: every item's own error is checked too
                    if reply.HasField("error"):
                        self._check(grpc.StatusCode(_code(reply.error.code)), reply.error.message)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            self._check(code, exc.details() or "")
        elapsed = time.monotonic() - started
        self.calls += 1
        self.slowest_s = max(self.slowest_s, elapsed)
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        assert elapsed < CALL_LIMIT_S, f"{rpc} took {elapsed:.2f} s"
        if self.calls % 25 == 0:
            self.assert_serving()
        return code

    @staticmethod
    def _check(code: grpc.StatusCode, details: str) -> None:
        assert code in DOCUMENTED, f"{code.name}: {details[:300]}"
        assert len(details) < 2000, f"a {len(details)}-character message echoes the input"

    def assert_serving(self) -> None:
        value = np.arange(4, dtype=np.float32) + self.calls
        reply = self.frontend.Predict(
            pb.PredictRequest(application="sum", input=tensors.encode(value)), timeout=5)
        assert tensors.decode(reply.output).item() == pytest.approx(float(value.sum()))


def _code(value: int) -> tuple[int, str]:
    """The StatusCode enum's value for a numeric code."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.value  # type: ignore[no-any-return]
    raise AssertionError(f"unknown status code {value}")


@pytest.fixture(scope="module")
def campaign(mesh: Mesh) -> Iterator[Campaign]:
    campaign = Campaign(mesh)
    rss_before = _rss_mb(mesh)
    yield campaign
    campaign.assert_serving()
    growth = _rss_mb(mesh) - rss_before
    print(f"\nfuzz: {campaign.calls} calls, slowest {campaign.slowest_s * 1000:.0f} ms, "
          f"frontend RSS +{growth:.0f} MB, codes {campaign.codes}")
    assert growth < RSS_GROWTH_LIMIT_MB
    campaign.channel.close()


def _rss_mb(mesh: Mesh) -> float:
    assert mesh.frontend is not None
    status = Path(f"/proc/{mesh.frontend.proc.pid}/status").read_text()
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return kb / 1024


# ---------------------------------------------------------------- strategies

DTYPES = ["float32", "float64", "int64", "uint8", "bool", "float16", "string", "bytes"]
names = st.one_of(
    st.sampled_from([*APPS, "", "nope", "a/b", "a:b", "x" * 129, "x" * 5000]),
    st.text(max_size=40),
)
long_text = st.one_of(st.text(max_size=30), st.text(min_size=200, max_size=400),
                      st.sampled_from(["k" * 257, "q" * 65, "\x00", "\ud7ff" * 10]))
dims = st.one_of(st.integers(0, 8), st.integers(-(1 << 63), (1 << 63) - 1),
                 st.sampled_from([1 << 62, (1 << 63) - 1, -1, 1 << 24, 1 << 32]))
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.integers(1, 2), min_size=20, max_size=80),
    st.builds(lambda n, d: [d] * n, st.integers(30, 3000), st.sampled_from([1, 2, 1 << 62])),
)


@st.composite
def tensors_(draw: st.DrawFn) -> pb.Tensor:
    """Anything from a valid float32[4] to nonsense."""
    if draw(st.integers(0, 3)) == 0:  # a valid-looking one, perhaps with NaN/inf
        values = draw(st.lists(st.floats(width=32), min_size=4, max_size=4))
        return tensors.encode(np.array(values, dtype=np.float32))
    dtype = draw(st.one_of(st.sampled_from(DTYPES), st.text(max_size=12)))
    msg = pb.Tensor(dtype=dtype, shape=draw(shapes))
    if draw(st.booleans()):
        msg.raw = draw(st.binary(max_size=256))
    if draw(st.booleans()):
        msg.bytes_list.extend(draw(st.lists(st.binary(max_size=16), max_size=8)))
    return msg


predict_requests = st.builds(
    pb.PredictRequest, application=names, input=tensors_(), context_key=long_text,
    query_id=long_text,
)


# ---------------------------------------------------------------- properties


@given(request=predict_requests)
def test_predict(campaign: Campaign, request: pb.PredictRequest) -> None:
    campaign.call(campaign.frontend.Predict, request)


@given(requests=st.lists(predict_requests, max_size=6))
def test_predict_stream(campaign: Campaign, requests: list[pb.PredictRequest]) -> None:
    campaign.call(campaign.frontend.PredictStream, iter(requests))


@given(application=names, context_key=long_text, query_id=long_text,
       value=st.one_of(st.none(), tensors_()), label=tensors_())
def test_feedback(campaign: Campaign, application: str, context_key: str, query_id: str,
                  value: pb.Tensor | None, label: pb.Tensor) -> None:
    request = pb.FeedbackRequest(application=application, context_key=context_key,
                                 query_id=query_id, label=label)
    if value is not None:
        request.input.CopyFrom(value)
    campaign.call(campaign.frontend.Feedback, request)


OIP_TYPES = ["FP32", "FP64", "INT64", "UINT8", "BOOL", "FP16", "BYTES"]


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    inputs = [
        oip.ModelInferRequest.InferInputTensor(
            name=draw(st.text(max_size=8)),
            datatype=draw(st.one_of(st.sampled_from(OIP_TYPES), st.text(max_size=8))),
            shape=draw(shapes),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    request = oip.ModelInferRequest(model_name=draw(names), model_version=draw(long_text),
                                    id=draw(long_text), inputs=inputs)
    for tensor in inputs:
        if draw(st.booleans()):
            tensor.contents.fp32_contents.extend(
                draw(st.lists(st.floats(width=32), max_size=8)))
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=8),
                                                                max_size=3)))
    if draw(st.booleans()):
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=64), max_size=3)))
    for key in draw(st.lists(st.sampled_from(["timeout", "context_key", "priority", "x"]),
                             max_size=3)):
        param = request.parameters[key]
        choice = draw(st.integers(0, 2))
        if choice == 0:
            param.int64_param = draw(st.integers(-(1 << 63), (1 << 63) - 1))
        elif choice == 1:
            param.string_param = draw(long_text)
        else:
            param.bool_param = True
    return request


@given(request=infer_requests())
def test_model_infer(campaign: Campaign, request: oip.ModelInferRequest) -> None:
    campaign.call(campaign.inference.ModelInfer, request)


@st.composite
def applications(draw: st.DrawFn) -> pb.Application:
    app = pb.Application(
        name=draw(names),
        input_spec=pb.TensorSpec(dtype=draw(st.one_of(st.sampled_from(DTYPES),
                                                      st.text(max_size=8))),
                                 shape=draw(shapes)),
        slo_ms=draw(st.integers(0, 100_000)),
        policy=draw(st.one_of(st.sampled_from(["static", "all", "exp3", "ab"]),
                              st.text(max_size=10))),
        policy_params=draw(st.dictionaries(st.text(max_size=12), long_text, max_size=4)),
        linked_models=draw(st.lists(names, max_size=5)),
        confidence_threshold=draw(st.floats()),
        allow_non_finite=draw(st.booleans()),
    )
    if draw(st.booleans()):
        app.default_output.CopyFrom(draw(tensors_()))
    return app


@given(app=applications(), update=st.booleans())
def test_management(campaign: Campaign, app: pb.Application, update: bool) -> None:
    rpc = campaign.management.UpdateApplication if update else \
        campaign.management.CreateApplication
    code = campaign.call(rpc, pb.ApplicationRequest(application=app), metadata=MGMT)
    if code == grpc.StatusCode.OK and app.name not in APPS:
        campaign.call(campaign.management.DeleteApplication, pb.ApplicationName(name=app.name),
                      metadata=MGMT)


# Only addresses nothing listens on, or that fail validation: a fuzzed announcement
# must never make the frontend dial anything but this machine's closed ports.
addresses = st.one_of(
    st.builds(lambda port: f"127.0.0.1:{port}", st.integers(1, 19)),
    st.sampled_from(["", "no-port", ":80", "127.0.0.1:0", "127.0.0.1:99999", "h" * 300]),
    st.text(alphabet=st.characters(blacklist_characters=":"), max_size=30),
)


@given(model=names, version=names, address=addresses, replica_id=long_text,
       spec_shape=shapes)
def test_announce(campaign: Campaign, model: str, version: str, address: str,
                  replica_id: str, spec_shape: list[int]) -> None:
    request = pb.AnnounceRequest(model=model, version=version, address=address,
                                 replica_id=replica_id, replica_secret=f"fuzz-{replica_id}",
                                 input_spec=pb.TensorSpec(dtype="float32", shape=spec_shape))
    code = campaign.call(campaign.registry.Announce, request, metadata=container_metadata(model))
    if code == grpc.StatusCode.OK:
        campaign.call(campaign.registry.Deregister,
                      pb.DeregisterRequest(replica_id=replica_id,
                                           replica_secret=f"fuzz-{replica_id}"),
                      metadata=container_metadata(model))


METHODS = [
    "/clipper.v1.Frontend/Predict", "/clipper.v1.Frontend/Feedback",
    "/clipper.v1.Management/CreateApplication", "/clipper.v1.Registry/Announce",
    "/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelReady",
]


@given(method=st.sampled_from(METHODS), data=st.binary(max_size=512))
def test_garbage_bytes(campaign: Campaign, method: str, data: bytes) -> None:
    rpc = campaign.channel.unary_unary(method)  # no serializers: the bytes go out as they are
    campaign.call(rpc, data, metadata=MGMT)
