"""A real Debian `redis-server` on a free loopback port, in a temporary folder."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import IO

from services.common.processes import free_port


class RedisServer:
    """Persists with an append-only file, so a restart on the same port keeps the data.

    With `password`, clients must authenticate (`requirepass`); with `user` too, as
    that ACL user (the default user is then off). With `tls`, it serves TLS only, with
    a certificate for 127.0.0.1 made at start (`ca_path` is the CA clients trust).
    """

    @staticmethod
    def tool(name: str, why: str) -> str:
        """The path of an outside tool this needs (tests skip without it instead)."""
        path = shutil.which(name)
        if path is None:
            raise FileNotFoundError(f"{name} is not installed ({why}); .ci/run installs the "
                                    "Debian packages")
        return path

    def __init__(self, workdir: Path, password: str = "", user: str = "",
                 tls: bool = False) -> None:
        self.binary = self.tool("redis-server", "shared state")
        self.workdir = workdir
        self.port = free_port()
        self.password = password
        self.user = user
        self.tls = tls
        self.ca_path = workdir / "redis-cert.pem"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f"{self.user}:{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca_path}"
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def _auth_command(self) -> bytes:
        if not self.password:
            return b""
        words = [self.user, self.password] if self.user else [self.password]
        return ("AUTH " + " ".join(words) + "\r\n").encode()

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls and not self.ca_path.exists():
            self._make_certificate()
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = self._spawn(log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self._connect() as s:
                    s.sendall(self._auth_command() + b"PING\r\n")
                    if b"+PONG" in _read_replies(s, 2 if self.password else 1):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                log_text = (self.workdir / "redis.log").read_text()
                raise RuntimeError(f"redis-server exited: {log_text}")
            time.sleep(0.02)
        raise TimeoutError("redis-server did not answer PING within 10 s")

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=0.2)
        if not self.tls:
            return sock
        context = ssl.create_default_context(cafile=str(self.ca_path))
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (its own CA)."""
        openssl = self.tool("openssl", "Redis over TLS")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(self.workdir / "redis-key.pem"), "-out", str(self.ca_path),
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60,
        )

    def _spawn(self, log: IO[bytes]) -> subprocess.Popen[bytes]:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                     "--tls-cert-file", str(self.ca_path),
                     "--tls-key-file", str(self.workdir / "redis-key.pem")]
        auth: list[str] = []
        if self.user:
            auth = ["--user", "default", "off",
                    "--user", self.user, "on", f">{self.password}", "~*", "&*", "+@all"]
        elif self.password:
            auth = ["--requirepass", self.password]
        return subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", *ports,
             "--dir", str(self.workdir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "yes", "--daemonize", "no", *auth],
            stdout=log, stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Delete a stopped server's data: its next start is a Redis without its volume."""
        assert self.proc is None, "stop the server first"
        shutil.rmtree(self.workdir / "appendonlydir", ignore_errors=True)
        (self.workdir / "dump.rdb").unlink(missing_ok=True)


def _read_replies(s: socket.socket, count: int) -> bytes:
    """Bytes until `count` reply lines have arrived (or the peer stops)."""
    data = b""
    while data.count(b"\r\n") < count:
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    return data
