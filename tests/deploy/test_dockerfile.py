"""The Dockerfile, read without a Docker engine: stages, user, tools, entrypoints, context."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from services.cli import k8s
from services.mesh import digits
from tests.deploy.manifests import REPO

DOCKERFILE = REPO / "Dockerfile"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|python3?-dev|libc6?-dev|cargo|rustc|"
    r"pip\d*(\.\d+)? install|python -m pip install|apt-get install|apk add)\b")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse(text: str) -> list[Stage]:
    """Instructions by stage: comments dropped, continuation lines joined."""
    logical, buffer = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buffer:
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    for line in filter(str.strip, logical):
        keyword, _, rest = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


STAGES = parse(DOCKERFILE.read_text())
BUILD, FINAL = STAGES[0], STAGES[-1]


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{value}: use the exec (JSON) form"
    return parsed


def test_multi_stage_with_a_slim_final_stage() -> None:
    assert len(STAGES) >= 2
    assert BUILD.name and FINAL.name and FINAL.name != BUILD.name
    copies = FINAL.args("COPY")
    assert copies and all(c.startswith(f"--from={BUILD.name} ") for c in copies), (
        "the final stage takes only what the build stage made")


def test_final_stage_has_no_build_tools_and_no_pip_cache() -> None:
    for run in FINAL.args("RUN"):
        assert not BUILD_TOOLS.search(run), f"final stage installs or runs a build tool: {run}"
    env = " ".join(FINAL.args("ENV") + BUILD.args("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in env


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = FINAL.args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: numeric, so runAsNonRoot can check it"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert int(uid) == k8s.IMAGE_UID, "deploy/ runs pods as the image's user"


def test_entrypoint_and_cmd_run_a_service_module() -> None:
    (entrypoint,) = FINAL.args("ENTRYPOINT")
    (cmd,) = FINAL.args("CMD")
    command = _exec_form(entrypoint) + _exec_form(cmd)
    assert command[:2] == ["python", "-m"]
    assert command[2] in ("services.frontend", "services.selection", "services.model_container")
    assert importlib.util.find_spec(f"{command[2]}.__main__") is not None


def test_build_stage_installs_the_project_as_the_makefile_does() -> None:
    runs = " ".join(BUILD.args("RUN"))
    makefile = (REPO / "Makefile").read_text()
    protoc = re.search(r"-m grpc_tools.protoc (.*?) \$\(PROTO_SRC\)", makefile)
    assert protoc, "the Makefile's protoc line"
    ours = re.search(r"-m grpc_tools.protoc (.*?) \$\(find protos", runs)
    assert ours, "the Dockerfile's protoc line"
    assert ours[1].split() == protoc[1].replace("$(GEN)", "services/generated").split()
    assert "pyproject.toml" in runs and "pip install --no-deps ." in runs


def test_the_image_holds_the_example_models_where_deploy_expects_them() -> None:
    runs = BUILD.args("RUN")
    (train,) = [shlex.split(r) for r in runs if "services.mesh.digits" in r]
    model_dir = train[-1]
    assert any(c.split()[-1] == model_dir for c in FINAL.args("COPY"))
    example = next(yaml.safe_load_all((REPO / "deploy/base/model-digits-logreg.yaml").read_text()))
    env = {e["name"]: e.get("value") for e in
           example["spec"]["template"]["spec"]["containers"][0]["env"]}
    expected = digits.model_paths(Path(model_dir))["digits-logreg"]
    assert env["CLIPPER_CONTAINER_MODEL"] == str(expected)


def test_exposes_the_ports_deploy_uses() -> None:
    exposed = {int(p) for line in FINAL.args("EXPOSE") for p in line.split()}
    assert {1337, 1338, k8s.CONTAINER_PORT, k8s.METRICS_PORT} <= exposed


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent decides."""
    ignored = False
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatch(p, body) or fnmatch.fnmatch(p, body.removeprefix("**/"))
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies_and_nothing_heavy() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [c.split()[0] for s in STAGES for c in s.args("COPY") if not c.startswith("--")]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        files = [source] if (REPO / source).is_file() else [
            str(f.relative_to(REPO)) for f in (REPO / source).rglob("*.p*")
            if "generated" not in f.parts and "__pycache__" not in f.parts]
        assert files, source
        for path in files:
            assert not _ignored(path, patterns), f".dockerignore leaves out {path}"
    for heavy in (".git/config", ".venv/bin/python", ".run/frontend-state.json",
                  "services/generated/clipper/v1/clipper_pb2.py", "tests/conftest.py"):
        assert _ignored(heavy, patterns), f".dockerignore should leave out {heavy}"
