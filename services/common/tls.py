"""TLS for every channel: server credentials that follow rotated files, and client channels.

Servers: `server_credentials(ServerTLS)` serves the certificate and key given, and with a
client CA requires client certificates (mTLS: others are refused at the handshake). The
files are checked at each new handshake (a `stat`, no read) and re-read when they change,
as cert-manager rotates a Secret mounted in a pod; a half-written or mismatched pair is
skipped and tried again at the next handshake, while the last good one keeps serving.
Connections already open keep the certificate they were made with.

Clients: `ClientTLS` names a CA (TLS on when given), an optional client certificate and
key (mTLS) and an optional name to verify instead of the dialled host. `ReloadingChannel`
builds its channel anew, from the files as they are then, whenever they changed since it
was built; long-lived clients ask it for their channel each time they reconnect.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from services.common.channels import Options, client_options

logger = logging.getLogger(__name__)

# What a file looked like when last read: (inode, mtime ns, size), None when missing.
Signature = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate chain and key (PEM files); `client_ca`: require client certs."""

    cert: str
    key: str
    client_ca: str = ""


@dataclass(frozen=True)
class ClientTLS:
    """How a client dials: TLS when `ca` is set, presenting `cert`/`key` when set (mTLS).

    `server_name`: the name to verify in the server's certificate instead of the dialled
    host (`grpc.ssl_target_name_override`), for servers dialled by IP address.
    """

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate and its key go together (both or neither)")
        if self.cert and not self.ca:
            raise ValueError("a client certificate (mTLS) needs the CA that signed the server's")

    @property
    def enabled(self) -> bool:
        return bool(self.ca)

    def with_server_name(self, name: str) -> ClientTLS:
        return replace(self, server_name=name) if name else self

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ca, self.cert, self.key) if f)


def signature(paths: Sequence[str]) -> Signature:
    """What the files look like now; it changes when one is replaced or rewritten.

    Paths are followed through symlinks, so a Secret volume's `..data` swap counts.
    """
    result: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            result.append(None)
        else:
            result.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(result)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _ServerCertificates:
    """grpc's certificate fetcher: a new configuration when the files changed, else None."""

    def __init__(self, tls: ServerTLS) -> None:
        self._tls = tls
        self.paths = tuple(p for p in (tls.cert, tls.key, tls.client_ca) if p)
        self._loaded: Signature = ()
        self._failed: Signature = ()

    def load(self) -> grpc.ServerCertificateConfiguration:
        """The files as they are now, checked: the key matches the certificate, the CA parses.

        Raises OSError, ssl.SSLError or ValueError when they cannot be used.
        """
        before = signature(self.paths)
        cert, key = _read(self._tls.cert), _read(self._tls.key)
        client_ca = _read(self._tls.client_ca) if self._tls.client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._tls.cert, self._tls.key)
        if self._tls.client_ca:
            context.load_verify_locations(self._tls.client_ca)
        if signature(self.paths) != before:
            raise ValueError("the certificate files changed while they were read")
        self._loaded = before
        return grpc.ssl_server_certificate_configuration([(key, cert)], client_ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each new handshake; must not raise."""
        now = signature(self.paths)
        if now == self._loaded or now == self._failed:
            return None
        try:
            config = self.load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed = now  # tried again once the files change again
            logger.warning("TLS files %s not reloaded (%s); serving the previous ones",
                           ", ".join(self.paths), exc)
            return None
        logger.info("TLS certificate reloaded from %s", self._tls.cert)
        return config


def server_credentials(tls: ServerTLS) -> grpc.ServerCredentials:
    """Credentials that serve `tls`'s files and re-read them when they change.

    Raises ValueError, naming the files, when they cannot be used at start.
    """
    fetcher = _ServerCertificates(tls)
    try:
        initial = fetcher.load()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(f"cannot serve TLS with {', '.join(fetcher.paths)}: {exc}") from exc
    return grpc.dynamic_ssl_server_credentials(
        initial, fetcher, require_client_authentication=bool(tls.client_ca))


def channel_credentials(tls: ClientTLS) -> grpc.ChannelCredentials:
    """TLS channel credentials from the files as they are now."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca),
        private_key=_read(tls.key) if tls.key else None,
        certificate_chain=_read(tls.cert) if tls.cert else None,
    )


def channel_options(tls: ClientTLS | None, options: Options = ()) -> list[tuple[str, Any]]:
    """`options`, plus the name to verify when `tls` overrides it."""
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls and tls.server_name else []
    return [*options, *extra]


def aio_channel(target: str, tls: ClientTLS | None, options: Options = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS when `tls` is enabled, else plaintext; with
    the mesh's keepalive (services/common/channels.py) unless `options` say otherwise."""
    options = client_options(options)
    if tls is None or not tls.enabled:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, channel_credentials(tls),
                                   options=channel_options(tls, options))


def sync_channel(target: str, tls: ClientTLS | None, options: Options = ()) -> grpc.Channel:
    """A blocking channel to `target`, as `aio_channel` builds them."""
    options = client_options(options)
    if tls is None or not tls.enabled:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, channel_credentials(tls),
                               options=channel_options(tls, options))


class ReloadingChannel:
    """A grpc.aio channel rebuilt from the TLS files when they have changed.

    `get()` returns the current channel, first closing it and building a new one if a
    file changed since it was built (so a reconnect uses a rotated client certificate
    or CA). Call `get()` when (re)connecting, not per call on a live stream.
    """

    def __init__(self, target: str, tls: ClientTLS | None, options: Options = ()) -> None:
        self.target = target
        self._tls = tls if tls is not None and tls.enabled else None
        self._options = list(options)
        self._channel: grpc.aio.Channel | None = None
        self._built: Signature = ()

    async def get(self) -> grpc.aio.Channel:
        now = signature(self._tls.files) if self._tls else ()
        if self._channel is not None and now == self._built:
            return self._channel
        try:
            channel = aio_channel(self.target, self._tls, self._options)
        except OSError as exc:
            if self._channel is None:
                raise
            logger.warning("TLS files for %s unreadable (%s); keeping the channel", self.target,
                           exc)
            return self._channel
        if self._channel is not None:
            logger.info("TLS files changed: new channel to %s", self.target)
            await self._channel.close()
        self._channel, self._built = channel, now
        return channel

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
