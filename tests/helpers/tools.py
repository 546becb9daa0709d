"""Outside tools the tests start for real: skip without them, unless CI requires them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where `make deps` installs the tools it builds (ghz, kustomize).
TOOLS_BIN = REPO / ".tools" / "bin"


def tool_missing(message: str) -> NoReturn:
    """Skip the test, or fail it when CLIPPER_REQUIRE_TOOLS=1 (CI)."""
    if os.environ.get("CLIPPER_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{message} (CLIPPER_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """The tool's path: `make deps`'s own first, then PATH."""
    return shutil.which(name, path=str(TOOLS_BIN)) or shutil.which(name)


def require_tool(name: str, why: str) -> str:
    """The tool's path (`find_tool`), else `tool_missing`."""
    path = find_tool(name)
    if path is None:
        tool_missing(f"{name} is not installed ({why}); `make deps` builds it, "
                     ".ci/run installs the Debian packages")
    return path
