"""A Python client for the mesh's frontend, numpy in and out.

    import numpy as np
    from services.client import Client

    with Client("127.0.0.1:1337") as client:
        p = client.predict("digits", np.zeros(64, np.float32), context_key="user-1")
        print(p.output, p.models, p.default_used)
        client.feedback("digits", np.int64(3), query_id=p.query_id, context_key="user-1")

Over TLS: `Client(target, tls=ClientTLS(ca="ca.pem"))`, with `cert=` and `key=` for
mTLS and `server_name=` to verify a name other than the target's host.

`AsyncClient` has the same methods as coroutines. A failed call raises a
`ClientError` subclass (see `services.client.errors`) with the gRPC `code`
and the server's `details`.
"""

from services.client.client import AsyncClient, Client, Prediction
from services.client.errors import (
    ClientError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from services.client.tensors import from_tensor, to_tensor
from services.common.tls import ClientTLS

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ClientTLS",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_tensor",
    "to_tensor",
]
