"""Podman as this machine runs it, the local base image, and the images the pods run.

The settings podman needs here are in `containers.conf` beside this file (runc, not
crun: crun refuses hybrid cgroups; ulimits the process may set), passed with
CONTAINERS_CONF so the machine's own configuration is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers.tools import REPO, tool_missing

HERE = Path(__file__).resolve().parent
CONTAINERS_CONF = HERE / "containers.conf"
# Debian bookworm made with debootstrap: its python3 is 3.11, as the project needs.
BASE_IMAGE = "localhost/clipper-base:bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
IMAGE = "localhost/clipper-mesh:e2e"
REDIS_IMAGE = "localhost/clipper-redis:e2e"
BUILD_TIMEOUT_S = 900.0


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout_s: float = 120.0, check: bool = True,
           stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS`; with `check`, fail with its stderr when it fails."""
    done = subprocess.run(["podman", *args], env=env(), capture_output=True, text=stdin is None,
                          input=stdin, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        stderr = done.stderr if isinstance(done.stderr, str) else done.stderr.decode()
        raise RuntimeError(f"podman {' '.join(args)} exited {done.returncode}:\n{stderr[-3000:]}")
    return done


def require_engine() -> None:
    """Skip (fail under CLIPPER_REQUIRE_TOOLS=1) unless podman can run a container here."""
    missing = [t for t in ("podman", "runc", "catatonit") if shutil.which(t) is None
               and not Path("/usr/libexec/podman", t).exists()]
    if missing:
        tool_missing(f"no container engine to play the manifests with ({', '.join(missing)} "
                     "missing); .ci/run installs podman, runc and catatonit from Debian")
    if os.geteuid() != 0:
        tool_missing("the pods tests run podman as root (this machine cannot map user ids)")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        tool_missing(f"podman cannot run here: {info.stderr.strip()[-500:]}")


def _debian_mirror() -> str:
    """The Debian mirror apt already uses on this machine (debootstrap takes the same)."""
    policy = subprocess.run(["apt-cache", "policy"], capture_output=True, text=True,
                            check=True, timeout=60).stdout
    for line in policy.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1].startswith("http") and words[2].startswith("bookworm/"):
            return words[1]
    return "http://deb.debian.org/debian"


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def ensure_base_image() -> bool:
    """Make the local Debian base once (kept between runs); True when it was made now.

    The image trusts what this machine trusts (its CA bundle), so that pip in the build
    reaches the package index the way the machine does.
    """
    if image_exists(BASE_IMAGE):
        return False
    if shutil.which("debootstrap") is None:
        tool_missing("debootstrap is missing: it makes the local base image (no registry to "
                     "pull python:3.11-slim from); .ci/run installs it")
    with tempfile.TemporaryDirectory(prefix="clipper-base-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                        "bookworm", str(root), _debian_mirror()],
                       check=True, capture_output=True, timeout=600)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        shutil.copyfile("/etc/ssl/certs/ca-certificates.crt",
                        root / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True,
                             check=True, timeout=300).stdout
        podman("import", "--change",
               "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", 'CMD ["python3"]', "-", BASE_IMAGE, stdin=tar, timeout_s=300)
    return True


def build_images() -> None:
    """The project image from the repository's Dockerfile on the local base, and Redis.

    Layers are cached by podman, so a build with nothing changed takes seconds.
    """
    podman("build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
           "-t", IMAGE, "-f", str(REPO / "Dockerfile"), str(REPO), timeout_s=BUILD_TIMEOUT_S)
    podman("build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-t", REDIS_IMAGE, "-f", str(HERE / "redis.Containerfile"), str(HERE),
           timeout_s=BUILD_TIMEOUT_S)


def container_state(name: str) -> tuple[str, int]:
    """(status, restart count) of a container."""
    out = podman("inspect", "--format", "{{.State.Status}} {{.RestartCount}}", name).stdout
    status, restarts = out.split()
    return status, int(restarts)


def logs(name: str, tail: int = 40) -> str:
    done = podman("logs", "--tail", str(tail), name, check=False)
    return f"--- {name} (last {tail} lines)\n{done.stdout}{done.stderr}"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `predicate()` every 0.2 s until true; the seconds it took, else TimeoutError."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
