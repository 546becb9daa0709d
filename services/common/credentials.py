"""Scoped credentials, all derived with HMAC-SHA256 from the mesh secret the frontends hold.

    mesh secret (CLIPPER_MESH_SECRET, frontends only)
    ├── container token of model M   "clipper-ct1.<base64url(M)>.<hmac(secret, container|M)>"
    │   └── replica credential        hmac(container token, replica|<replica id>)
    └── selection token               hmac(secret, selection)

A container holds only its model's token: it proves "I serve model M" to a
frontend, and nothing about any other model. A frontend dialling replica R of
model M sends the replica credential, which the container recomputes from its own
token and replica id: it is valid for that one replica, so a holder of M's token
that registered an address learns nothing it could not compute itself. The
selection service holds only its token. Application API keys are random strings;
the frontend stores their SHA-256 only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

CONTAINER_TOKEN_PREFIX = "clipper-ct1"
MIN_SECRET_CHARS = 16


def _mac(key: str, *parts: str) -> str:
    message = "\x00".join(parts).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def container_token(secret: str, model: str) -> str:
    """The token with which containers of `model` (and only of it) announce themselves."""
    encoded = base64.urlsafe_b64encode(model.encode()).decode().rstrip("=")
    return f"{CONTAINER_TOKEN_PREFIX}.{encoded}.{_mac(secret, 'container', model)}"


def token_model(token: str) -> str:
    """The model a container token names (not verified); ValueError when malformed."""
    prefix, _, rest = token.partition(".")
    encoded, _, mac = rest.partition(".")
    if prefix != CONTAINER_TOKEN_PREFIX or not encoded or not mac:
        raise ValueError("not a scoped container token (clipper-ct1.<model>.<mac>)")
    try:
        padded = encoded + "=" * (-len(encoded) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a scoped container token: the model part is not base64url") from exc


def verify_container_token(secret: str, token: str) -> str | None:
    """The model `token` is valid for, or None when it is not a token derived from `secret`."""
    try:
        model = token_model(token)
    except ValueError:
        return None
    if hmac.compare_digest(token.encode(), container_token(secret, model).encode()):
        return model
    return None


def replica_credential(container_tok: str, replica_id: str) -> str:
    """What a frontend sends when it dials replica `replica_id` (derived from its model's
    container token, so the container can check it without the mesh secret)."""
    return _mac(container_tok, "replica", replica_id)


def selection_token(secret: str) -> str:
    """What frontends send to the selection service, the one credential it accepts."""
    return _mac(secret, "selection")


def sha256_hex(key: str) -> str:
    """The form in which API keys and replica secrets are stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
