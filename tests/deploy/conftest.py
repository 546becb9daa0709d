"""Fixtures: each overlay rendered once per session with `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.tools import REPO, find_tool, require_tool

DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod", "prod-tls")


def _renderer() -> list[str]:
    """`kubectl kustomize`, else a standalone `kustomize build` (PATH or .tools/bin)."""
    if shutil.which("kubectl") is None:
        standalone = find_tool("kustomize")
        if standalone is not None:
            return [standalone, "build"]
    kubectl = require_tool("kubectl", "renders the deploy/ overlays with kubectl kustomize; "
                           "a standalone kustomize on PATH also does")
    return [kubectl, "kustomize"]


def render(kustomization: Path) -> list[dict[str, Any]]:
    """The documents kustomize renders from one kustomization folder."""
    command = [*_renderer(), str(kustomization)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_rendered: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """(overlay name, its rendered documents), rendered once per session."""
    name: str = request.param
    if name not in _rendered:
        _rendered[name] = render(DEPLOY / "overlays" / name)
    return name, _rendered[name]


@pytest.fixture
def prod() -> list[dict[str, Any]]:
    if "prod" not in _rendered:
        _rendered["prod"] = render(DEPLOY / "overlays" / "prod")
    return _rendered["prod"]


@pytest.fixture
def dev() -> list[dict[str, Any]]:
    if "dev" not in _rendered:
        _rendered["dev"] = render(DEPLOY / "overlays" / "dev")
    return _rendered["dev"]


@pytest.fixture
def prod_tls() -> list[dict[str, Any]]:
    if "prod-tls" not in _rendered:
        _rendered["prod-tls"] = render(DEPLOY / "overlays" / "prod-tls")
    return _rendered["prod-tls"]
