"""TLS building blocks in one process: settings checks, and clients following rotated files."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import ConfigError
from services.common.credentials import container_token
from services.common.server import Server, start_server
from services.common.tls import ClientTLS, ReloadingChannel, ServerTLS
from services.frontend.config import config_from_args as frontend_config
from services.model_container.config import config_from_args as container_config
from testkit.mesh import MESH_SECRET
from tests.helpers.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("other"), "other")


def _replace(source: Path, target: Path) -> None:
    shutil.copyfile(source, target.with_suffix(".new"))
    os.replace(target.with_suffix(".new"), target)


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_MANAGEMENT_TOKEN", "m")
    monkeypatch.setenv("CLIPPER_MESH_SECRET", MESH_SECRET)
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", container_token(MESH_SECRET, "m"))


@pytest.mark.usefixtures("tokens")
def test_tls_settings_are_checked_at_start(pki: Pki, tmp_path: Path) -> None:
    cert, key, ca = str(pki.server.cert), str(pki.server.key), str(pki.ca.cert)
    for argv, message in [
        (["--tls-cert", cert], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", ca], "--tls-client-ca (mTLS) needs --tls-cert"),
        (["--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", key], "no such file"),
        (["--tls-client-cert", cert, "--tls-client-key", key], "needs --tls-ca"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            frontend_config(argv)
    cfg = frontend_config(["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca,
                           "--tls-ca", ca, "--tls-container-name", "model.example"])
    assert cfg.tls == ServerTLS(cert, key, ca)
    assert cfg.client_tls == ClientTLS(ca) and cfg.tls_container_name == "model.example"
    plain = frontend_config([])
    assert plain.tls is None and not plain.client_tls.enabled
    container = container_config(["--model", "m:f", "--name", "m", "--tls-ca", ca,
                                  "--tls-server-name", "frontend.example"])
    assert container.client_tls == ClientTLS(ca, server_name="frontend.example")
    with pytest.raises(ValueError, match="needs the CA"):
        ClientTLS(cert=cert, key=key)


async def test_a_mismatched_key_fails_the_start_naming_the_files(pki: Pki, other: Pki) -> None:
    with pytest.raises(ValueError, match=r"cannot serve TLS with .*ca-server\.pem"):
        await start_server([], "127.0.0.1", 0,
                           tls=ServerTLS(str(pki.server.cert), str(other.server.key)))


@pytest.fixture
async def rotating_server(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[Server, Path]]:
    """A TLS server whose certificate files live in `tmp_path / "secret"`."""
    secret = tmp_path / "secret"
    secret.mkdir()
    _replace(pki.server.cert, secret / "tls.crt")
    _replace(pki.server.key, secret / "tls.key")
    server = await start_server([], "127.0.0.1", 0,
                                tls=ServerTLS(str(secret / "tls.crt"), str(secret / "tls.key")))
    await server.set_serving(True)
    try:
        yield server, secret
    finally:
        await server.stop(None)


async def _check(channel: grpc.aio.Channel) -> bool:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=5)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE
        return False
    return True


async def test_a_reloading_channel_picks_up_a_rotated_ca(
        rotating_server: tuple[Server, Path], pki: Pki, other: Pki, tmp_path: Path) -> None:
    server, secret = rotating_server
    ca_file = tmp_path / "ca.crt"
    _replace(pki.ca.cert, ca_file)
    channels = ReloadingChannel(f"127.0.0.1:{server.port}", ClientTLS(str(ca_file)))
    try:
        first = await channels.get()
        assert await _check(first)
        assert await channels.get() is first  # nothing changed: the same channel
        # Both sides rotate to a new CA; the open connection ends with the old channel.
        _replace(other.server.cert, secret / "tls.crt")
        _replace(other.server.key, secret / "tls.key")
        _replace(other.ca.cert, ca_file)
        second = await channels.get()
        assert second is not first
        assert await _check(second)
    finally:
        await channels.aclose()
    # A channel still trusting the old CA cannot make a new connection.
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}",
                                       grpc.ssl_channel_credentials(pki.ca.cert.read_bytes())
                                       ) as stale:
        assert not await _check(stale)
