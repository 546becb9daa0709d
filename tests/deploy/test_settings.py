"""Every setting the services read is in deploy/README.md, under the name the code reads."""

from __future__ import annotations

import re

from services.cli import settings
from tests.deploy.manifests import REPO

README = REPO / "deploy" / "README.md"


def test_readme_table_is_up_to_date() -> None:
    assert settings.update_file(README, check_only=True), (
        "deploy/README.md lists other settings than the services read; run "
        "python -m services.cli settings --write deploy/README.md")


def test_every_flag_has_an_environment_variable_and_a_meaning() -> None:
    for s in settings.all_settings():
        assert s.env is not None, f"{s.service} {s.flag}: its default reads no CLIPPER_* variable"
        assert s.meaning, f"{s.service} {s.flag}: give it help text"


def test_every_variable_named_in_the_services_is_in_the_table() -> None:
    known = settings.env_names()
    literal = re.compile(r"[\"'](CLIPPER_[A-Z0-9_]*[A-Z0-9])[\"']")
    for path in (REPO / "services").rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if parts[1] in ("generated", "cli", "mesh"):
            continue
        for name in literal.findall(path.read_text()):
            if name == "CLIPPER_READY":  # the ready line services print, not a setting
                continue
            assert name in known, f"{path}: reads {name}, which deploy/README.md does not list"


def test_the_probe_proves_the_variable_pairing() -> None:
    frontend = {s.flag: s for s in settings.service_settings("frontend",
                                                            "services.frontend.config")}
    assert frontend["--port"].env == "CLIPPER_FRONTEND_PORT"
    assert frontend["--port"].default == 1337
    container = {s.flag: s for s in settings.service_settings(
        "container", "services.model_container.config")}
    assert container["--advertise-host"].env == "CLIPPER_CONTAINER_ADVERTISE_HOST"
