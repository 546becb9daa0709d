"""Who may query an application or send it feedback: the one home of that rule.

An application with API keys (`api_key_sha256`) needs one of them, in metadata
`x-api-key`, on Predict, PredictStream, ModelInfer and Feedback. With feedback keys
(`feedback_key_sha256`), Feedback needs one of those instead, so that an
application can stay open for queries and still protect what its policies learn.
The interceptor (services/common/auth.py) hashes the key the client sent; the
frontend stores and compares hashes only.
"""

from __future__ import annotations

import re

from services.common.auth import API_KEY_METADATA, Caller, current_caller
from services.common.credentials import same
from services.common.errors import InvalidInput, PermissionDenied, Unauthenticated
from services.frontend.records import Application

QUERY = "queries"
FEEDBACK = "feedback"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def authorize(app: Application, action: str, caller: Caller | None = None) -> None:
    """Raise Unauthenticated (no key) or PermissionDenied (a wrong key) when the
    application needs a key for `action` (QUERY or FEEDBACK) that the caller lacks."""
    allowed = app.api_key_sha256
    if action == FEEDBACK and app.feedback_key_sha256:
        allowed = app.feedback_key_sha256
    if not allowed:
        return
    sent = (caller or current_caller()).api_key_sha256
    if not sent:
        raise Unauthenticated(f"application {app.name!r} needs an API key for {action}: "
                              f"metadata '{API_KEY_METADATA}: <key>'")
    if not any(same(sent, h) for h in allowed):
        raise PermissionDenied(f"wrong API key for {action} of application {app.name!r}")


def key_hashes(values: list[str], field: str) -> tuple[str, ...]:
    """Validated SHA-256 hex digests (lowercased), without duplicates."""
    hashes = tuple(dict.fromkeys(v.strip().lower() for v in values))
    for value in hashes:
        if not _SHA256_HEX.match(value):
            raise InvalidInput(f"{field}: expected SHA-256 digests (64 hex digits) of keys, "
                               f"got {value[:80]!r}")
    return hashes
