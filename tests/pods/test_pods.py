"""The image built by a real engine, and deploy/ played by `podman kube play`.

`make e2e-pods` runs this module (not `make test`: it builds images). It makes the
local base image once, builds the project image from the Dockerfile on it, plays
deploy/overlays/podman (the dev overlay, adapted by tests/pods/overlay.py), waits for
every pod's own probes, then from outside the pods: a digits query with our client
and with tritonclient, a ghz run, a model container killed and restarted by the
engine, and the pods stopped under load. Each step prints how long it took; the pods,
their secrets and volumes are removed at the end, whatever happened.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from loadtest.__main__ import main as loadtest_main
from loadtest.ghz import CONFIGS, errors
from services.client import Client
from services.client.errors import ClientError
from services.mesh import digits
from tests.helpers.tools import REPO, require_tool
from tests.pods import engine, overlay, probes

pytestmark = [pytest.mark.pods, pytest.mark.timeout(900)]

APP = "digits"
MODEL = "digits-logreg"
MODEL_DEPLOYMENT = "model-digits-logreg-v1"
TRITON_PYTHON = REPO / ".venv-tritonclient" / "bin" / "python"
TRITON_CHECKS = REPO / "tests" / "outside" / "tritonclient_checks.py"
READY_TIMEOUT_S = 120.0
GHZ_CALLS = 300
# Generous: the SLO is not what these tests measure, and the machine is shared.
SLO_MS = 1000
QUERY_TIMEOUT_S = 5.0


def step_done(name: str, started: float) -> None:
    print(f"[e2e-pods] {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


@contextmanager
def step(name: str) -> Iterator[None]:
    started = time.monotonic()
    print(f"[e2e-pods] {name} ...", file=sys.stderr, flush=True)
    yield
    step_done(name, started)


def container_name(deployment: str, spec: dict[str, Any]) -> str:
    """The name kube play gives a Deployment's (first) pod's container."""
    return f"{deployment}-pod-0-{spec['name']}"


@dataclass
class Pods:
    """The played overlay: where things listen, and each container's spec by name."""

    playable: overlay.Playable
    yaml_path: Path
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def frontend(self) -> str:
        return f"127.0.0.1:{self.playable.port('frontend', 1337)}"

    def wait_ready(self, names: list[str] | None = None) -> float:
        def all_ready() -> bool:
            return all(probes.ready(n, self.specs[n]) for n in names or self.specs)
        try:
            return engine.wait_for(all_ready, READY_TIMEOUT_S, "pods ready")
        except TimeoutError as exc:
            unready = [n for n in names or self.specs if not probes.ready(n, self.specs[n])]
            raise AssertionError(f"{exc}: {unready} not ready\n{self.logs()}") from exc

    def logs(self) -> str:
        return "\n".join(engine.logs(n) for n in self.specs)

    def secret(self, name: str, key: str) -> str:
        return self.playable.secrets[name][key]


def _create_secrets(secrets: dict[str, dict[str, str]]) -> None:
    """As podman secrets: JSON of key -> base64 value, the form kube play 4.3 reads."""
    for name, values in secrets.items():
        engine.podman("secret", "rm", name, check=False)
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        engine.podman("secret", "create", name, "-", stdin=json.dumps(data).encode())


def _remove(pods: Pods) -> None:
    """Everything the play made: pods, containers, volumes, secrets (idempotent)."""
    engine.podman("kube", "down", str(pods.yaml_path), check=False, timeout_s=120)
    for name in pods.playable.secrets:
        engine.podman("secret", "rm", name, check=False)


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    engine.require_engine()
    started = time.monotonic()
    with step("local base image (debootstrap, once per machine)"):
        made = engine.ensure_base_image()
        print(f"[e2e-pods]   {'made' if made else 'cached'}: {engine.BASE_IMAGE}",
              file=sys.stderr)
    with step("build the image from the Dockerfile, and Redis's"):
        engine.build_images()
    with step("render deploy/overlays/podman"):
        playable = overlay.playable()
        path = tmp_path_factory.mktemp("pods") / "play.yaml"
        path.write_text(yaml.safe_dump_all(playable.docs))
    pods = Pods(playable, path)
    for doc in playable.docs:
        if doc["kind"] == "Deployment":
            for spec in doc["spec"]["template"]["spec"]["containers"]:
                pods.specs[container_name(doc["metadata"]["name"], spec)] = spec
    try:
        with step("podman kube play"):
            _create_secrets(playable.secrets)
            engine.podman("kube", "play", str(path), timeout_s=120)
        with step("every pod ready (its startup and readiness probes)"):
            pods.wait_ready()
        yield pods
    finally:
        with step("remove the pods, volumes and secrets"):
            _remove(pods)
        step_done("e2e-pods in all", started)


def test_pods_run_as_the_manifests_say(pods: Pods) -> None:
    """Non-root, read-only root filesystem, /tmp writable, no capabilities."""
    name = container_name("frontend", {"name": "frontend"})
    user = engine.podman("exec", name, "id", "-u").stdout.strip()
    assert user == "10001"
    assert engine.podman("exec", name, "touch", "/opt/clipper/x", check=False).returncode != 0
    engine.podman("exec", name, "touch", "/tmp/x")
    caps = engine.podman("inspect", "--format", "{{.EffectiveCaps}}", name).stdout.strip()
    assert caps == "[]", caps


def _cli(pods: Pods, *args: str) -> Any:
    env = {**os.environ, "CLIPPER_MANAGEMENT_TOKEN": pods.secret("clipper-tokens",
                                                                 "management-token")}
    done = subprocess.run([sys.executable, "-m", "services.cli", "--frontend", pods.frontend,
                           *args], capture_output=True, text=True, env=env, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.fixture(scope="module")
def app(pods: Pods) -> str:
    """The digits application, created with the command-line tool as deploy/README says."""
    with step("create the digits application; its model's replica connected"):
        _cli(pods, "apps", "create", APP, "--input-dtype", "float32", "--input-shape", "64",
             "--slo-ms", str(SLO_MS), "--model", MODEL, "--default", "-1")
        engine.wait_for(lambda: bool(_cli(pods, "replicas", "list")), 60,
                        f"a replica of {MODEL} registered")
    return APP


def _inputs(count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` distinct digits queries (the cache must not answer them) and their labels.

    Pixel 0 is blank in every digit of the data set: a small distinct value there makes
    each input new without changing what it shows.
    """
    _, x_test, _, y_test = digits.split()
    index = np.arange(offset, offset + count)
    x = x_test[index % len(x_test)].copy()
    x[:, 0] = (index + 1) * 1e-3
    return x, y_test[index % len(y_test)]


def test_digits_query_with_our_client_and_tritonclient(pods: Pods, app: str) -> None:
    x, y = _inputs(20)
    with step("digits queries through the frontend (clipper.v1 and tritonclient)"):
        with Client(pods.frontend) as client:
            answers = [client.predict(app, xi, timeout_s=QUERY_TIMEOUT_S) for xi in x]
        assert not any(a.default_used for a in answers), [a.default_reason for a in answers]
        correct = sum(int(a.output) == yi for a, yi in zip(answers, y, strict=True))
        assert correct >= 18, f"{correct}/20 digits right"
        if not TRITON_PYTHON.exists():
            require_tool(str(TRITON_PYTHON), "tritonclient's venv; run `make tritonclient`")
        calls = [{"name": "ready", "op": "model_ready", "model": app},
                 {"name": "infer", "op": "infer", "model": app, "datatype": "FP32",
                  "shape": [2, 64], "values": x[:2].reshape(-1).tolist()}]
        done = subprocess.run([str(TRITON_PYTHON), str(TRITON_CHECKS), pods.frontend],
                              input=json.dumps(calls), capture_output=True, text=True,
                              timeout=90, check=False)
        assert done.returncode == 0, done.stderr
        results = {r["call"]: r for r in json.loads(done.stdout)}
        assert results["ready"]["ready"] is True, results
        infer = results["infer"]
        assert infer["ok"] and infer["shape"] == [2], infer
        assert infer["values"] == [int(a.output) for a in answers[:2]], infer
        assert infer["parameters"]["default_used"] == {"bool_param": False}, infer


def test_ghz_run_has_no_error(pods: Pods, app: str, tmp_path: Path) -> None:
    ghz = require_tool("ghz", "the load generator; `make ghz` needs Go")
    with step(f"ghz: {GHZ_CALLS} calls of each config"):
        results = tmp_path / "ghz"
        code = loadtest_main(["--ghz", ghz, "--target", pods.frontend, "--results",
                              str(results), "--", "-n", str(GHZ_CALLS), "-c", "8"])
    for config in CONFIGS:
        report = json.loads((results / f"{config.stem}.json").read_text())
        assert report["count"] == GHZ_CALLS, config.name
        assert errors(report) == {}, config.name
    assert code == 0


@dataclass
class Load:
    """Queries in a loop from a few threads until stopped, each one recorded."""

    frontend: str
    app: str
    workers: int = 4
    # (started, finished, outcome): outcome "answer", "default" or the gRPC status name
    records: list[tuple[float, float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, worker: int) -> None:
        x, _ = _inputs(20_000, offset=1000 + worker * 20_000)
        with Client(self.frontend) as client:
            for xi in x:  # bounded in count; stopped long before it ends
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    answer = client.predict(self.app, xi, timeout_s=QUERY_TIMEOUT_S)
                    outcome = "default" if answer.default_used else "answer"
                except ClientError as exc:
                    outcome = exc.code.name
                with self._lock:
                    self.records.append((started, time.monotonic(), outcome))
                time.sleep(0.01)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        with self._lock:
            picked = [o for s, _, o in self.records if since <= s < until]
        return {o: picked.count(o) for o in sorted(set(picked))}


def test_killed_model_container_is_restarted_and_queries_are_answered(
        pods: Pods, app: str) -> None:
    model = container_name(MODEL_DEPLOYMENT, {"name": "model"})
    _, restarts_before = engine.container_state(model)
    load = Load(pods.frontend, app).start()
    try:
        time.sleep(1.0)
        with step("kill -9 the model container's process; the engine restarts it"):
            killed_at = time.monotonic()
            pid = engine.podman("inspect", "--format", "{{.State.Pid}}", model).stdout.strip()
            os.kill(int(pid), 9)
            engine.wait_for(lambda: engine.container_state(model)[1] > restarts_before, 60,
                            f"{model} restarted by the engine")
            pods.wait_ready([model])
        with step("real answers again after the restart"):
            def answering() -> bool:
                recent = load.outcomes(since=time.monotonic() - 1.0)
                return recent.get("answer", 0) > 0 and recent.get("default", 0) == 0
            engine.wait_for(answering, 60, "answers from the restarted model")
    finally:
        load.stop()
    during = load.outcomes(since=killed_at)
    print(f"[e2e-pods]   queries from the kill on: {during}", file=sys.stderr)
    assert set(during) <= {"answer", "default"}, f"errors: {during}\n{pods.logs()}"
    assert load.outcomes(until=killed_at).keys() == {"answer"}


def _stop_pods(names: list[str], grace: dict[str, int]) -> None:
    """`podman pod stop` each at once, with its manifest's terminationGracePeriodSeconds."""
    stops = [subprocess.Popen(["podman", "pod", "stop", "--time", str(grace[name]),
                               f"{name}-pod-0"], env=engine.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name in names]
    for stop in stops:
        stop.wait(timeout=grace[max(grace, key=grace.__getitem__)] + 30)


def test_pods_stopped_under_load_drain_every_query_in_flight(pods: Pods, app: str) -> None:
    """The frontend's pod stopped under load, then the others, each with its
    terminationGracePeriodSeconds (SIGTERM, then SIGKILL past it), then `podman kube down`.

    kube down alone (podman 4.3) kills every container at once, with no grace, so the
    graceful stop comes first. Every query started before the stop is answered; after
    it, a query may only be refused (UNAVAILABLE, or CANCELLED for the few that reach
    the server as gRPC core shuts it down); every container exits 0 (drained, not
    killed at the end of its grace).
    """
    grace = {d["metadata"]["name"]:
             int(d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
             for d in pods.playable.docs if d["kind"] == "Deployment"}
    load = Load(pods.frontend, app, workers=8).start()
    try:
        time.sleep(2.0)
        with step("stop the frontend's pod under load (SIGTERM, grace from its manifest)"):
            stopping_at = time.monotonic()
            _stop_pods(["frontend"], grace)
            stopped_at = time.monotonic()
        load.stop()
        with step("stop the other pods"):
            _stop_pods([name for name in grace if name != "frontend"], grace)
        exits = {name: engine.podman("inspect", "--format", "{{.State.ExitCode}}",
                                     name).stdout.strip() for name in pods.specs}
        drained_logs = pods.logs()  # the stopped containers' logs, before kube down removes them
    finally:
        load.stop()
        with step("podman kube down"):
            engine.podman("kube", "down", str(pods.yaml_path), timeout_s=120)
    print(f"[e2e-pods]   frontend stopped in {stopped_at - stopping_at:.1f} s; queries before: "
          f"{load.outcomes(until=stopping_at)}; from the stop on: "
          f"{load.outcomes(since=stopping_at)}; exit codes: {exits}", file=sys.stderr)
    assert set(load.outcomes(until=stopping_at)) <= {"answer", "default"}, drained_logs
    # A query sent in the instant gRPC core shuts the server down is cancelled by it
    # (CANCELLED; it never started): these clients dial the pod directly and never see
    # its readiness turn, where behind a Service the preStop delay keeps them away.
    after = load.outcomes(since=stopping_at)
    assert set(after) <= {"answer", "default", "UNAVAILABLE", "CANCELLED"}, drained_logs
    assert after.get("CANCELLED", 0) <= max(3, sum(after.values()) // 50), (after, drained_logs)
    assert exits == {name: "0" for name in pods.specs}, drained_logs
