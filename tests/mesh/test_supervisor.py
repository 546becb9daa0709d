"""The local mesh's supervisor with real (stand-in) processes: restarts, backoff, the
restart limit, and the drain in stages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.mesh.supervisor import RestartPolicy, ServiceSpec, Supervisor

FAST = RestartPolicy(backoff_s=0.05, max_backoff_s=0.2, max_restarts_per_min=3, stable_s=30)


def spec(tmp_path: Path, name: str, *args: str, stage: int = 0, keep_port: bool = False,
         grace_s: float = 5.0) -> ServiceSpec:
    return ServiceSpec(name, "tests.helpers.short_lived", list(args), stage=stage,
                       log_path=tmp_path / f"{name}.log", keep_port=keep_port, grace_s=grace_s)


class Recorder:
    """A supervisor whose status lines are kept."""

    def __init__(self, policy: RestartPolicy = FAST) -> None:
        self.lines: list[str] = []
        self.supervisor = Supervisor(policy, status=self.lines.append)

    def check_until(self, done: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"not done within {timeout_s} s: {self.lines}"
            self.supervisor.check()
            time.sleep(0.02)

    def said(self, text: str) -> int:
        return sum(text in line for line in self.lines)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.supervisor.kill_all()
    recorder.supervisor.drain()


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, max_backoff_s=30)
    assert [policy.delay_s(n) for n in (1, 2, 3, 6, 7, 20)] == [0.5, 1, 2, 16, 30, 30]


def test_a_service_that_exits_is_restarted_on_its_port_and_its_log_says_why(
        recorder: Recorder, tmp_path: Path) -> None:
    first = recorder.supervisor.start(spec(tmp_path, "flaky", "--exit-after-s", "0.3",
                                           keep_port=True))
    recorder.check_until(lambda: recorder.said("is back") == 1)
    again = recorder.supervisor.process("flaky")
    assert again is not None and again.proc.pid != first.proc.pid
    assert again.port == first.port
    assert recorder.said("flaky exit code 3 after") == 1
    log = (tmp_path / "flaky.log").read_text()
    assert "mesh supervisor: flaky exit code 3 after" in log
    assert log.index("exit code 3") < log.rindex("serving") < log.index("is back (pid")


def test_past_the_restart_limit_one_service_is_left_down_and_the_rest_serve(
        recorder: Recorder, tmp_path: Path) -> None:
    recorder.supervisor.start_all([spec(tmp_path, "crashy", "--exit-after-s", "0"),
                                   spec(tmp_path, "steady")])
    recorder.check_until(lambda: recorder.supervisor.down == ["crashy"])
    assert recorder.said("crashy exit code 3") == FAST.max_restarts_per_min + 1
    assert recorder.said("is left down") == 1
    # Restarts came after growing waits: 0.05, 0.1, then the cap 0.2.
    assert [line.split("restarting in ")[1].split(" ")[0] for line in recorder.lines
            if "restarting in" in line] == ["0.05", "0.1", "0.2"]
    steady = recorder.supervisor.process("steady")
    assert steady is not None and steady.proc.poll() is None
    for _ in range(20):  # left down means left down
        recorder.supervisor.check()
    assert recorder.supervisor.process("crashy") is None
    assert recorder.supervisor.drain()


def test_drain_goes_stage_by_stage_and_says_when_one_would_not_stop(
        recorder: Recorder, tmp_path: Path) -> None:
    recorder.supervisor.start_all([
        spec(tmp_path, "front", stage=0),
        spec(tmp_path, "stubborn", "--ignore-sigterm", stage=1, grace_s=0.2),
        spec(tmp_path, "back", stage=2),
    ])
    processes = {name: recorder.supervisor.process(name) for name in ("front", "stubborn",
                                                                      "back")}
    started = time.monotonic()
    assert not recorder.supervisor.drain()
    assert time.monotonic() - started < 30  # the grace period and its margin, not for ever
    assert [line for line in recorder.lines if line.startswith("stopping")] == [
        "stopping front", "stopping stubborn", "stopping back"]
    assert recorder.said("stubborn did not stop within 5.2 s of SIGTERM: killed") == 1
    codes = {name: p.proc.returncode for name, p in processes.items() if p is not None}
    assert codes == {"front": 0, "stubborn": -9, "back": 0}


def test_a_clean_drain_is_reported_clean(recorder: Recorder, tmp_path: Path) -> None:
    recorder.supervisor.start_all([spec(tmp_path, "a", stage=0), spec(tmp_path, "b", stage=1)])
    assert recorder.supervisor.drain()
    assert not [line for line in recorder.lines if not line.startswith("stopping")]
