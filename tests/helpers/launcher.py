"""`python -m services.mesh` (what `make run` starts) as a child process, for tests.

The launcher's children are found through /proc (their parent is the launcher), so
that a test can `kill -9` one as a crash would; the launcher's status lines are kept.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.processes import REPO_ROOT
from services.common.tls import sync_channel
from services.generated.clipper.v1 import clipper_pb2 as pb
from services.generated.clipper.v1 import clipper_pb2_grpc as pb_grpc
from testkit.mesh import ENV, MGMT

READY = re.compile(r"Mesh ready in [\d.]+ s: frontend on (\S+)")


class Launcher:
    """The local mesh in `state_dir`, started with the trained models in `model_dir`."""

    def __init__(self, state_dir: Path, model_dir: Path, *args: str) -> None:
        self.state_dir = state_dir
        self.args = ["--port", "0", "--state-dir", str(state_dir), *args]
        shutil.copytree(model_dir, state_dir / "models")  # no training in the test
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self._ended = False  # the launcher's output is over
        self.address = ""

    def start(self, timeout_s: float = 120.0) -> Launcher:
        with open(self.state_dir / "launcher.log", "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.mesh", *self.args], cwd=REPO_ROOT,
                env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                stderr=log, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self.wait_for_line(READY, timeout_s).group(1)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                with self._new_line:
                    self.lines.append(line.rstrip("\n"))
                    self._new_line.notify_all()
        with self._new_line:
            self._ended = True
            self._new_line.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout_s: float,
                      after: int = 0) -> re.Match[str]:
        """The first status line from index `after` on that matches `pattern`."""
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while True:
                for line in self.lines[after:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self._ended:
                    raise TimeoutError(f"no line matching {pattern!r}; output:\n"
                                       + "\n".join(self.lines[-30:]))
                self._new_line.wait(min(left, 0.5))

    def pids(self, module: str, model: str = "") -> list[int]:
        """Children of the launcher running `python -m module` (of `model`)."""
        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
            except (OSError, ValueError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                continue
            if module in argv and (not model or model in argv):
                found.append(int(entry.name))
        return found

    def kill9(self, module: str, model: str = "") -> int:
        """SIGKILL one child running `module` (of `model`), as a crash would; its pid."""
        pid = self.pids(module, model)[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    @contextmanager
    def management(self) -> Iterator[Any]:
        with sync_channel(self.address, None) as channel:
            yield pb_grpc.ManagementStub(channel)

    def replicas(self, model: str) -> list[pb.Replica]:
        with self.management() as mgmt:
            return list(mgmt.ListReplicas(pb.ListReplicasRequest(model=model), metadata=MGMT,
                                          timeout=5).replicas)

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM, as Ctrl-C would; the launcher's exit code."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        """Stop the launcher if it runs, and kill any child it left behind."""
        if self.proc is None:
            return
        left = self.pids("-m")
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
