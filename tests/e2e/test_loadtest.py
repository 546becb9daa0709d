"""Short ghz runs (`make loadtest`'s runner and configs) against a real mesh: a fixed
count of each config with distinct inputs (no cache hits) and with `--cache hot`
(cache hits), and a two-rate sweep (its table, JSON and plot)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.__main__ import main as loadtest_main
from loadtest.ghz import CONFIGS
from loadtest.mesh import frontend_metrics_url
from services.common.processes import free_port
from services.mesh import digits
from testkit.mesh import MANAGEMENT_TOKEN, Mesh
from tests.helpers.tools import require_tool

CALLS = 200
SLO_MS = 2000


def ghz_path() -> str:
    return require_tool("ghz", "the load generator; `make ghz` needs Go")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    """The application the ghz configs call: `digits`, float32[64], one model; the
    frontend serves its metrics."""
    mesh = Mesh(tmp_path_factory.mktemp("ghz-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend("--metrics-port", "0")
        mesh.start_digits_models(digits_models, ["digits-logreg"])
        mesh.create_app("digits", ["digits-logreg"], shape=digits.INPUT_SHAPE, slo_ms=SLO_MS)
        yield mesh
    finally:
        mesh.close()


@pytest.fixture
def metrics_url(mesh: Mesh) -> str:
    """The frontend's /metrics, as it logged it."""
    logs = "".join(p.read_text() for p in mesh.workdir.glob("frontend*.log"))
    found = re.search(r"metrics at (http://\S+/metrics)", logs)
    assert found is not None, logs
    return found.group(1)


def run(ghz: str, mesh: Mesh, metrics_url: str, results: Path, *args: str) -> int:
    return loadtest_main(["--ghz", ghz, "--target", mesh.address, "--metrics", metrics_url,
                          "--results", str(results), *args])


def summary(results: Path, config: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((results / f"{config.stem}.summary.json").read_text())
    return found


def test_default_configs_send_distinct_inputs_no_cache_hits(
        mesh: Mesh, metrics_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_MANAGEMENT_TOKEN", MANAGEMENT_TOKEN)  # reads the app's SLO
    ghz = ghz_path()
    # Bounded by count (ghz's -x would lift the count); the runner bounds ghz's time.
    code = run(ghz, mesh, metrics_url, tmp_path, "--calls", str(CALLS), "--", "-c", "8")
    for config in CONFIGS:
        report = json.loads((tmp_path / f"{config.stem}.json").read_text())
        assert report["statusCodeDistribution"] == {"OK": CALLS}, config.name
        assert report["options"]["connections"] == 8  # a --target may have replicas
        result = summary(tmp_path, config)
        assert result["calls"] == CALLS
        assert result["cache"] == {"queries": CALLS, "hits": 0, "coalesced": 0, "models": 1}
        assert result["cache_hit_ratio"] == 0.0
        assert result["slo_ms"] == SLO_MS  # from the application's record
        assert result["defaults"] == {}
        assert 0.0 <= result["within_slo"] <= 1.0
        assert not list(tmp_path.glob("*.bin"))  # the inputs are not left behind
    assert code == 0


def test_hot_cache_sends_one_input_answered_from_the_cache(
        mesh: Mesh, metrics_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CLIPPER_MANAGEMENT_TOKEN", raising=False)
    ghz = ghz_path()
    code = run(ghz, mesh, metrics_url, tmp_path, "--cache", "hot", "--calls", str(CALLS),
               "--", "-c", "8")
    for config in CONFIGS:
        result = summary(tmp_path, config)
        assert result["errors"] == {}
        cache = result["cache"]
        assert cache["queries"] == CALLS
        # Only a first call (the one input's first) may reach the model.
        assert cache["hits"] + cache["coalesced"] >= CALLS - 1, config.name
        assert result["slo_ms"] is None  # no token, no --slo-ms: not judged
    out = capsys.readouterr().out
    assert re.search(r"cache hit ratio (1\.000|0\.99\d)", out), out
    assert "note: no SLO for 'digits'" in out
    assert code == 0


def test_sweep_prints_each_rate_and_the_rate_that_held(
        mesh: Mesh, metrics_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ghz = ghz_path()
    predict = next(c for c in CONFIGS if c.stem == "predict")
    code = run(ghz, mesh, metrics_url, tmp_path, "--config", str(predict),
               "--sweep", "10,20", "--duration", "1s", "--slo-ms", str(SLO_MS))
    assert code == 0
    report = json.loads((tmp_path / "predict-sweep.json").read_text())
    assert report["slo_ms"] == SLO_MS
    steps = report["steps"]
    assert [s["offered_rps"] for s in steps] == [10, 20]
    for step in steps:
        assert step["calls"] > 0 and step["errors"] == {}
        assert step["cache_hit_ratio"] == 0.0
        assert (tmp_path / f"predict-{step['offered_rps']:g}rps.json").exists()
    # Two seconds of SLO is far above what 20 calls a second take on this mesh.
    assert report["held_rps"] == 20
    assert (tmp_path / "predict-sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert re.search(r"^\s+10\s", out, re.MULTILINE) and re.search(r"^\s+20\s", out,
                                                                    re.MULTILINE)
    assert "held: 20 q/s" in out


def test_open_loop_sends_at_the_rate_for_the_duration(
        mesh: Mesh, metrics_url: str, tmp_path: Path) -> None:
    ghz = ghz_path()
    code = run(ghz, mesh, metrics_url, tmp_path, "--rate", "20", "--duration", "1s",
               "--slo-ms", str(SLO_MS))
    assert code == 0
    for config in CONFIGS:
        result = summary(tmp_path, config)
        report = json.loads((tmp_path / f"{config.stem}.json").read_text())
        assert report["options"]["rps"] == 20 and report["options"]["async"] is True
        assert 0 < result["calls"] <= 25 and result["errors"] == {}
        assert result["offered_rps"] == 20
        assert result["cache_hit_ratio"] == 0.0


def test_the_frontends_metrics_are_found_among_every_services(
    mesh: Mesh, metrics_url: str, tmp_path: Path,
) -> None:
    """`make loadtest` starting the local mesh reads its frontend's counters from the
    URLs the mesh lists, one per service."""
    port = free_port()
    mesh.start_container("tests.helpers.models:SumModel", "listed", "1",
                         "--metrics-port", str(port))
    listing = tmp_path / "metrics-urls"
    listing.write_text(f"http://127.0.0.1:{port}/metrics\n{metrics_url}\n")
    assert frontend_metrics_url(listing) == metrics_url
    listing.write_text(f"http://127.0.0.1:{port}/metrics\n")
    with pytest.raises(RuntimeError, match="no frontend"):
        frontend_metrics_url(listing)
