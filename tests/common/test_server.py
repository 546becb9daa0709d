"""Start-up: the ready line, and the start-up heap kept out of the collector's scans."""

from __future__ import annotations

import gc

import pytest

from services.common.server import READY_PREFIX, announce_ready


def test_announce_ready_prints_the_line_and_freezes_the_startup_heap(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gc.unfreeze()
    startup_objects: list[list[object]] = [[] for _ in range(1000)]  # tracked by gc
    try:
        announce_ready("test", 1234)
        assert capsys.readouterr().out == f"{READY_PREFIX} service=test port=1234\n"
        assert gc.get_freeze_count() >= len(startup_objects)

        # What serving allocates later is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
