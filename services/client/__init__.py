"""A Python client for the mesh's frontend, numpy in and out.

    import numpy as np
    from services.client import Client

    with Client("127.0.0.1:1337") as client:
        p = client.predict("digits", np.zeros(64, np.float32), context_key="user-1")
        print(p.output, p.models, p.default_used)
        client.feedback("digits", np.int64(3), query_id=p.query_id, context_key="user-1")

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

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
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
