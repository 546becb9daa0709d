"""Shared fixtures: a clean environment for each test, and helpers to start mesh processes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_environ() -> Iterator[None]:
    """Restore os.environ after each test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
