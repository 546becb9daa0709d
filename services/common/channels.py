"""Settings every channel and server of the mesh share: keepalive, and message limits.

Keepalive: each side pings the other every `KEEPALIVE_TIME_MS` and drops the
connection when a ping is not answered within `KEEPALIVE_TIMEOUT_MS`, so that a
peer that is gone without a word (a host lost, a process stopped, a cable pulled)
is noticed in about 15 s instead of when every query on it has waited out its
deadline. Pings go out even with no call and no data in flight; servers accept a
client's pings down to `MIN_PING_INTERVAL_MS` apart, half a client's interval, so a
client following these settings is never sent away for pinging too often.

Message limits: the servers of long-lived streams (containers, the selection
service) state the largest message they receive in the stream's initial metadata
(`LIMIT_KEY`), and clients state theirs in the call's metadata, so that each side
packs its messages to fit the other (services/common/streams.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Options = Sequence[tuple[str, Any]]

KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
MIN_PING_INTERVAL_MS = KEEPALIVE_TIME_MS // 2

_KEEPALIVE: Options = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # What gRPC core (1.75) enforces: how long any ping waits for its ack (1 min unset).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # no cap on pings between data frames
)
CLIENT_KEEPALIVE: Options = _KEEPALIVE
SERVER_KEEPALIVE: Options = (
    *_KEEPALIVE,
    # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the name core reads (an
    # unknown name is ignored, and the 5 min default then sends our clients away).
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
)

# gRPC's own default receive limit: what a peer that states nothing accepts.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
LIMIT_KEY = "clipper-max-message-bytes"


def client_options(options: Options = ()) -> list[tuple[str, Any]]:
    """Keepalive, then `options` (which win over it: gRPC takes the last of a name)."""
    return _merged(CLIENT_KEEPALIVE, options)


def server_options(max_message_bytes: int, options: Options = ()) -> list[tuple[str, Any]]:
    """Keepalive and message limits for a server, then `options`."""
    return _merged(SERVER_KEEPALIVE, [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ], options)


def limit_metadata(max_message_bytes: int) -> tuple[tuple[str, str]]:
    """Metadata stating the largest message this side receives."""
    return ((LIMIT_KEY, str(max_message_bytes)),)


def stated_limit(metadata: Iterable[tuple[str, Any]] | None) -> int:
    """The limit a peer stated in `metadata`, else gRPC's default (a peer that states
    nothing runs with it, unless configured otherwise, which it would then state)."""
    value = next((v for k, v in metadata or () if k == LIMIT_KEY), "")
    stated = int(value) if str(value).isdigit() else 0
    return stated if stated > 0 else DEFAULT_MAX_MESSAGE_BYTES


def _merged(*groups: Options) -> list[tuple[str, Any]]:
    merged: dict[str, Any] = {}
    for group in groups:
        merged.update(group)
    return list(merged.items())
