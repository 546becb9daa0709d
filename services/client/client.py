"""`Client` (blocking) and `AsyncClient` (asyncio) for the frontend's `clipper.v1.Frontend`.

Both take numpy arrays in and give numpy arrays out, and raise a `ClientError`
subclass carrying the gRPC status when a call fails. A call's `timeout_s`
becomes its gRPC deadline, which the mesh honours when it is tighter than the
application's SLO. `api_key` is sent as metadata `x-api-key` on every call, for
applications that need one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc
import numpy as np
import numpy.typing as npt

from services.client.errors import from_rpc_error
from services.client.tensors import from_tensor, to_tensor
from services.common.tls import ClientTLS, aio_channel, sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:1337"
DEFAULT_TIMEOUT_S = 10.0
Metadata = Sequence[tuple[str, str]]
API_KEY_METADATA = "x-api-key"


def _with_key(metadata: Metadata, api_key: str) -> tuple[tuple[str, str], ...]:
    return (*metadata, (API_KEY_METADATA, api_key)) if api_key else tuple(metadata)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The answer to one query (compare `output` with numpy, not `==` on the whole)."""

    query_id: str
    output: np.ndarray
    # True when the application's default answer was returned, and why.
    default_used: bool
    default_reason: str
    # "name:version" of each model whose answer was combined, and the selected
    # models that did not answer in time.
    models: tuple[str, ...]
    missing_models: tuple[str, ...]
    # Share of the selection weight that agrees with `output` (0..1).
    confidence: float
    # The models' combined answer when the default replaced it for low confidence.
    ensemble_output: np.ndarray | None = None
    # An application with named outputs answers here, by name (and `output` is empty).
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, msg: pb.PredictResponse) -> Prediction:
        return cls(
            query_id=msg.query_id,
            output=from_tensor(msg.output) if msg.HasField("output") else np.empty(0),
            outputs={name: from_tensor(t) for name, t in msg.outputs.items()},
            default_used=msg.default_used,
            default_reason=msg.default_reason,
            models=tuple(msg.models),
            missing_models=tuple(msg.missing_models),
            confidence=msg.confidence,
            ensemble_output=(from_tensor(msg.ensemble_output)
                             if msg.HasField("ensemble_output") else None),
        )


def predict_request(
    app: str, x: npt.ArrayLike | Mapping[str, npt.ArrayLike], context_key: str, query_id: str
) -> pb.PredictRequest:
    """`x`: the input, or named inputs (a mapping name -> array)."""
    request = pb.PredictRequest(application=app, context_key=context_key, query_id=query_id)
    if isinstance(x, Mapping):
        for name, value in x.items():
            request.inputs[name].CopyFrom(to_tensor(value))
    else:
        request.input.CopyFrom(to_tensor(x))
    return request


def feedback_request(
    app: str, label: npt.ArrayLike, query_id: str, x: npt.ArrayLike | None, context_key: str
) -> pb.FeedbackRequest:
    if not query_id and x is None:
        raise ValueError("feedback needs the query_id of an earlier prediction, or its input x")
    request = pb.FeedbackRequest(application=app, context_key=context_key, query_id=query_id,
                                 label=to_tensor(label))
    if x is not None:
        request.input.CopyFrom(to_tensor(x))
    return request


class Client:
    """A blocking client: `Client("127.0.0.1:1337").predict("digits", x)`.

    Use it as a context manager, or call `close()`. A channel passed in stays
    open when the client closes (its owner closes it). `tls` dials with TLS (its
    files are read once, here).
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        metadata: Metadata = (),
        api_key: str = "",
        channel: grpc.Channel | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tls: ClientTLS | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel = channel or sync_channel(target, tls, options)
        self._stub = pb_grpc.FrontendStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _with_key(metadata, api_key)

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    def predict(
        self,
        app: str,
        x: npt.ArrayLike | Mapping[str, npt.ArrayLike],
        *,
        context_key: str = "",
        query_id: str = "",
        timeout_s: float | None = None,
    ) -> Prediction:
        """Ask application `app` about input `x` (its dtype and shape must match the app's;
        for an application with named inputs, a mapping name -> array)."""
        request = predict_request(app, x, context_key, query_id)
        try:
            reply = self._stub.Predict(request, timeout=self._timeout(timeout_s),
                                       metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return Prediction.from_proto(reply)

    def feedback(
        self,
        app: str,
        label: npt.ArrayLike,
        *,
        query_id: str = "",
        x: npt.ArrayLike | None = None,
        context_key: str = "",
        timeout_s: float | None = None,
    ) -> list[str]:
        """Tell `app` the true `label` of an earlier prediction (by `query_id`) or of input `x`.

        Returns the models whose answers were scored.
        """
        request = feedback_request(app, label, query_id, x, context_key)
        try:
            reply = self._stub.Feedback(request, timeout=self._timeout(timeout_s),
                                        metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return list(reply.models)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """An asyncio client: `async with AsyncClient(...) as c: await c.predict("digits", x)`.

    Create it inside a running event loop. A channel passed in stays open when
    the client closes.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        metadata: Metadata = (),
        api_key: str = "",
        channel: grpc.aio.Channel | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tls: ClientTLS | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel = channel or aio_channel(target, tls, options)
        self._stub = pb_grpc.FrontendStub(self._channel)
        self._timeout_s = timeout_s
        self._metadata = _with_key(metadata, api_key)

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    async def predict(
        self,
        app: str,
        x: npt.ArrayLike | Mapping[str, npt.ArrayLike],
        *,
        context_key: str = "",
        query_id: str = "",
        timeout_s: float | None = None,
    ) -> Prediction:
        """Ask application `app` about input `x` (its dtype and shape must match the app's;
        for an application with named inputs, a mapping name -> array)."""
        request = predict_request(app, x, context_key, query_id)
        try:
            reply = await self._stub.Predict(request, timeout=self._timeout(timeout_s),
                                             metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return Prediction.from_proto(reply)

    async def feedback(
        self,
        app: str,
        label: npt.ArrayLike,
        *,
        query_id: str = "",
        x: npt.ArrayLike | None = None,
        context_key: str = "",
        timeout_s: float | None = None,
    ) -> list[str]:
        """Tell `app` the true `label` of an earlier prediction (by `query_id`) or of input `x`.

        Returns the models whose answers were scored.
        """
        request = feedback_request(app, label, query_id, x, context_key)
        try:
            reply = await self._stub.Feedback(request, timeout=self._timeout(timeout_s),
                                              metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return list(reply.models)

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
