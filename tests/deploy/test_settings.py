"""Every setting the services read is in deploy/README.md, under the name the code reads."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import pytest

from services.cli import settings
from services.common.config import (
    ConfigError,
    build_parser,
    declared_flags,
    flag,
    parse_config,
)
from services.frontend import config as frontend_config
from tests.deploy.manifests import REPO

README = REPO / "deploy" / "README.md"


def test_readme_table_is_up_to_date() -> None:
    assert settings.update_file(README, check_only=True), (
        "deploy/README.md lists other settings than the services read; run "
        "python -m services.cli settings --write deploy/README.md")


def test_every_flag_has_a_meaning() -> None:
    for s in settings.all_settings():
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


@pytest.mark.parametrize(("service", "module", "entrypoint"), settings.SERVICES)
def test_each_variable_sets_its_flag(service: str, module: str, entrypoint: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting a flag's variable changes the parsed default, and a bad value is named."""
    config = importlib.import_module(module).Config
    for d in declared_flags(config, service):
        probe = d.spec.choices[-1] if d.spec.choices else {int: "7919", float: "79.19"}.get(
            d.spec.parse, "probe-value")
        monkeypatch.setenv(d.env, probe)
        parsed = build_parser(config, service).parse_args([])
        assert getattr(parsed, d.dest) == d.spec.parse(probe), d.flag
        monkeypatch.delenv(d.env)
    frontend = {s.flag: s for s in settings.service_settings("frontend",
                                                            "services.frontend.config")}
    assert frontend["--port"].env == "CLIPPER_FRONTEND_PORT"
    assert frontend["--max-backlog-ms"].default == 50.0


def test_a_bad_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_FRONTEND_CACHE_SIZE", "lots")
    with pytest.raises(ConfigError, match="CLIPPER_FRONTEND_CACHE_SIZE='lots' is not valid"):
        build_parser(frontend_config.Config, "frontend")
    monkeypatch.setenv("CLIPPER_FRONTEND_CACHE_SIZE", "0")
    monkeypatch.setenv("CLIPPER_FRONTEND_ADMISSION", "sometimes")
    with pytest.raises(ConfigError, match="CLIPPER_FRONTEND_ADMISSION='sometimes'"):
        build_parser(frontend_config.Config, "frontend")
    monkeypatch.delenv("CLIPPER_FRONTEND_ADMISSION")
    with pytest.raises(ConfigError, match=r"--cache-size=0: must be > 0"):
        parse_config(frontend_config.Config, "frontend", [])
    monkeypatch.delenv("CLIPPER_FRONTEND_CACHE_SIZE")
    with pytest.raises(ConfigError, match=r"--max-backlog-ms=-1.0: must be > 0"):
        parse_config(frontend_config.Config, "frontend", ["--max-backlog-ms", "-1"])
    cfg = parse_config(frontend_config.Config, "frontend", ["--max-backlog-ms", "20"])
    assert cfg.admission.max_backlog_s == pytest.approx(0.02)


@dataclass(frozen=True)
class _Switches:
    verbose: bool = flag(False, "a switch")


def test_a_switch_is_on_when_given_else_as_its_variable_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(_Switches, "demo", []).verbose is False
    assert parse_config(_Switches, "demo", ["--verbose"]).verbose is True
    for raw, expected in (("true", True), ("1", True), ("off", False), ("false", False)):
        monkeypatch.setenv("CLIPPER_DEMO_VERBOSE", raw)
        assert parse_config(_Switches, "demo", []).verbose is expected
    monkeypatch.setenv("CLIPPER_DEMO_VERBOSE", "maybe")
    with pytest.raises(ConfigError, match="CLIPPER_DEMO_VERBOSE='maybe'"):
        parse_config(_Switches, "demo", [])
