"""Fixtures for multi-process tests: trained digits models and gRPC channels."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.mesh import digits


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example models, trained once per test session."""
    return digits.train(tmp_path_factory.mktemp("models"))
