"""A short ghz smoke run (`make loadtest`'s runner and configs) against a real mesh."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.__main__ import main as loadtest_main
from loadtest.ghz import CONFIGS, errors
from services.mesh import digits
from tests.helpers.mesh import Mesh
from tests.helpers.tools import require_tool

CALLS = 200


def ghz_path() -> str:
    return require_tool("ghz", "the load generator; `make ghz` needs Go")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    """The application the ghz configs call: `digits`, float32[64]."""
    mesh = Mesh(tmp_path_factory.mktemp("ghz-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_digits_models(digits_models, ["digits-logreg"])
        mesh.create_app("digits", ["digits-logreg"], shape=digits.INPUT_SHAPE, slo_ms=2000)
        yield mesh
    finally:
        mesh.close()


def test_ghz_smoke_has_no_error_response(mesh: Mesh, tmp_path: Path) -> None:
    ghz = ghz_path()
    results = tmp_path / "results"
    # Bounded by count (ghz's -x would lift the count); the runner bounds ghz's time.
    code = loadtest_main(["--ghz", ghz, "--target", mesh.address, "--results", str(results),
                          "--", "-n", str(CALLS), "-c", "8"])
    for config in CONFIGS:
        report = json.loads((results / f"{config.stem}.json").read_text())
        assert report["count"] == CALLS, config.name
        assert errors(report) == {}, config.name
        assert report["statusCodeDistribution"] == {"OK": CALLS}
    assert code == 0
