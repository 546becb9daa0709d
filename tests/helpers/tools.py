"""Outside tools the tests start for real: skip without them, unless CI requires them."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, why: str) -> str:
    """The tool's path; skips the test when it is missing (fails when CLIPPER_REQUIRE_TOOLS=1)."""
    path = shutil.which(name)
    if path is None:
        message = (f"{name} is not installed ({why}); `make deps` builds it, "
                   ".ci/run installs the Debian packages")
        if os.environ.get("CLIPPER_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
