"""Start a service as a child process and learn the port it bound.

Every service prints `CLIPPER_READY service=NAME port=PORT` on stdout once it
serves; `start_service` waits for that line (never sleeps, never pre-picks a port).
Used by the local mesh launcher and by the tests.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.server import READY_PREFIX

_READY = re.compile(rf"^{READY_PREFIX} service=(\S+) port=(\d+)$")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """A running service: its process, bound port and captured output."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._join_reader()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to deregister (a crash, as tests need)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join_reader()

    def _join_reader(self) -> None:
        if self.reader is not None:
            self.reader.join(5)


def start_service(
    module: str,
    args: Sequence[str],
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
    log_path: Path | None = None,
    on_spawn: Callable[[subprocess.Popen[str]], None] | None = None,
) -> ServiceProcess:
    """Run `python -m module args...` and return once it prints its ready line.

    `on_spawn` gets the process as soon as it exists: ending it ends the wait.
    """
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    stderr = open(log_path, "a") if log_path else None
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    if stderr is not None:
        stderr.close()
    if on_spawn is not None:
        on_spawn(proc)
    assert proc.stdout is not None
    lines: list[str] = []
    found: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                match = _READY.match(line)
                if match and not found:
                    found.append(int(match.group(2)))
                    ready.set()
        ready.set()

    reader = threading.Thread(target=pump, name=f"stdout-{module}", daemon=True)
    reader.start()
    ready.wait(timeout_s)
    if not found:
        proc.kill()
        proc.wait()
        reader.join(5)
        raise RuntimeError(
            f"{module} did not become ready within {timeout_s}s "
            f"(exit code {proc.returncode}); output:\n" + "\n".join(lines[-20:])
        )
    return ServiceProcess(name or module, proc, found[0], lines, reader)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a process that must be told its port before
    it starts (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
