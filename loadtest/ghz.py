"""Run ghz against a frontend and read its JSON report (every call's latency and
status is in its `details`).

ghz finds the method through the server's reflection service: no proto files
or paths are needed, against any deployment of ours.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent
CONFIGS = (CONFIG_DIR / "predict.json", CONFIG_DIR / "model_infer.json")


def run_ghz(
    ghz: str, config: Path, target: str, report: Path,
    extra_args: Sequence[str] = (), timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run one ghz config against `target`; keep and return its JSON report."""
    report.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ghz, "--config", str(config), "--format", "json", "--output", str(report),
           *extra_args, target]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr or done.stdout}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def tls_args(ca: str, cert: str = "", key: str = "", server_name: str = "") -> list[str]:
    """ghz flags that dial with TLS trusting `ca` (mTLS with `cert` and `key`); none for
    plaintext. They override the configs' `"insecure": true`."""
    if not ca:
        return []
    flags = ["--no-insecure", "--cacert", ca]
    flags += ["--cert", cert, "--key", key] if cert else []
    return flags + (["--cname", server_name] if server_name else [])


def errors(report: dict[str, Any]) -> dict[str, int]:
    """Calls per non-OK status code (empty when every call succeeded)."""
    return {code: n for code, n in (report.get("statusCodeDistribution") or {}).items()
            if code != "OK"}
