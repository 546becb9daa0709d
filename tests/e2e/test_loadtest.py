"""A short ghz smoke run (`make loadtest`'s runner and configs) against a real mesh."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.__main__ import main as loadtest_main
from loadtest.ghz import CONFIGS, errors
from services.mesh import digits
from tests.helpers.mesh import Mesh

REPO = Path(__file__).resolve().parents[2]
CALLS = 200


def ghz_path() -> str:
    """ghz from `make ghz` (or PATH); skips without it, fails when CI requires it."""
    local = REPO / ".tools" / "bin" / "ghz"
    found = str(local) if local.exists() else shutil.which("ghz")
    if found is None:
        message = "ghz is not installed: run `make ghz` (needs Go)"
        if os.environ.get("CLIPPER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory,
         digits_models: dict[str, Path]) -> Iterator[Mesh]:
    """The application the ghz configs call: `digits`, float32[64]."""
    mesh = Mesh(tmp_path_factory.mktemp("ghz-mesh"))
    try:
        mesh.start_selection()
        mesh.start_frontend()
        mesh.start_container(str(digits_models["digits-logreg"]), "digits-logreg", "1",
                             "--input-dtype", digits.INPUT_DTYPE, "--input-shape", "64")
        mesh.create_app("digits", ["digits-logreg"], shape=digits.INPUT_SHAPE, slo_ms=2000)
        mesh.wait_connected("digits-logreg", 1)
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
