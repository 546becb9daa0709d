"""`python -m services.mesh --cohost`: one container process serves every example model,
each still its own replica (one address, one stream from the frontend); the ensemble is
answered by all of them, and a `kill -9` of that process is survived like any
container's: flagged defaults while it is down, then real answers again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.metrics import read_metrics
from services.mesh import digits
from services.mesh.specs import METRICS_URLS
from tests.e2e.test_supervisor import REAL_AGAIN_S, SLO_MS, Load, kill_under_load
from tests.helpers.launcher import Launcher

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cohosted(tmp_path_factory: pytest.TempPathFactory,
             digits_models: dict[str, Path]) -> Iterator[Launcher]:
    model_dir = next(iter(digits_models.values())).parent
    launcher = Launcher(tmp_path_factory.mktemp("cohosted"), model_dir,
                        "--cohost", "--slo-ms", SLO_MS)
    try:
        yield launcher.start()
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def models(cohosted: Launcher) -> list[str]:
    return list(digits.model_flags(cohosted.state_dir / "models"))


def test_one_process_serves_every_model_each_its_own_replica(
        cohosted: Launcher, models: list[str]) -> None:
    assert len(cohosted.pids("services.model_container")) == 1
    replicas = {model: cohosted.replicas(model) for model in models}
    assert all(len(found) == 1 and found[0].connected for found in replicas.values())
    assert len({found[0].address for found in replicas.values()}) == 1
    assert f"{len(models)} model replicas in 1 container process)" in "\n".join(
        cohosted.lines)
    urls = (cohosted.state_dir / METRICS_URLS).read_text().split()
    assert len(urls) == 3  # selection, frontend and the one container process: each serves
    assert all(read_metrics(url) for url in urls)


async def test_the_ensemble_is_answered_by_all_and_a_killed_process_comes_back(
        cohosted: Launcher) -> None:
    x_test = digits.split()[1]
    async with Load(cohosted.address, "digits", x_test).running() as load:
        await load.answered(20)
        everyone = sorted(f"{name}:1" for name in digits.MODEL_NAMES)
        assert all(sorted(r.models) == everyone for _, r in load.answers if not r.default_used)
        await kill_under_load(cohosted, load, "services.model_container", "",
                              r"models-0 is back \(pid \d+, (127\.0\.0\.1:\d+)\)")
        await load.answered(50, timeout_s=REAL_AGAIN_S)
    assert load.errors == []
    assert any(r.default_used for _, r in load.answers)  # while it was down
