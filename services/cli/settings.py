"""Every setting the services read, found by introspecting their argparse parsers.

Each flag's default reads `CLIPPER_<SERVICE>_<NAME>` (services/common/config.py).
Rather than trust that naming convention, `service_settings` proves each pairing:
it sets the variable to a probe value, rebuilds the parser and checks that the
flag's default took it. `settings_markdown` renders the table that
deploy/README.md carries between the markers below; `python -m services.cli
settings --write deploy/README.md` refreshes it and `--check` fails when stale.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import env_name

BEGIN_MARKER = "<!-- settings:begin (python -m services.cli settings --write) -->"
END_MARKER = "<!-- settings:end -->"

# (service name in env vars, module with the parser, how it is started)
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("frontend", "services.frontend.config", "services.frontend"),
    ("selection", "services.selection.config", "services.selection"),
    ("container", "services.model_container.config", "services.model_container"),
)

# Settings read straight from the environment, shared by name between services.
SHARED_SETTINGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("CLIPPER_MANAGEMENT_TOKEN", ("frontend",),
     "bearer token that Management calls must carry (required)"),
    ("CLIPPER_MESH_SECRET", ("frontend",),
     "secret (16+ characters, the same on every frontend) from which the container, replica "
     "and selection credentials are derived with HMAC-SHA256 (required)"),
    ("CLIPPER_SELECTION_TOKEN", ("selection",),
     "the only bearer token the selection service accepts: "
     "`python -m services.cli tokens selection` (required)"),
    ("CLIPPER_CONTAINER_TOKEN", ("container",),
     "the token of this container's model: `python -m services.cli tokens container "
     "MODEL` (required; valid for that model only)"),
)


@dataclass(frozen=True)
class Setting:
    """One flag of one service, and the environment variable its default reads."""

    service: str
    flag: str
    env: str | None  # None: the flag has no environment default
    default: Any
    meaning: str


def _parser_factory(module_name: str) -> Callable[[], argparse.ArgumentParser]:
    """The service's `build_parser`, which reads the environment each time it runs."""
    build: Callable[[], argparse.ArgumentParser] = importlib.import_module(
        module_name).build_parser
    return build


@contextlib.contextmanager
def _environment(**overrides: str) -> Iterator[None]:
    """os.environ without any CLIPPER_* variable, plus `overrides`; restored after."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("CLIPPER_")]:
            del os.environ[key]
        os.environ.update(overrides)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _probe_value(action: argparse.Action) -> tuple[str, Any]:
    """A raw environment value for the action and what the default should become."""
    if action.type is int:
        return "7919", 7919
    if action.type is float:
        return "79.19", 79.19
    if action.choices:
        choice = [c for c in action.choices if c != action.default][-1]
        return str(choice), choice
    return "probe-value", "probe-value"


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)]


def service_settings(service: str, module_name: str) -> list[Setting]:
    """The flags of one service with their (proven) environment variables."""
    build = _parser_factory(module_name)
    with _environment():
        parser = build()
    settings = []
    for action in _flags(parser):
        var = env_name(service, action.dest)
        raw, expected = _probe_value(action)
        with _environment(**{var: raw}):
            probed = {a.dest: a.default for a in _flags(build())}
        flag = max(action.option_strings, key=len)
        meaning = " ".join((action.help or "").split())
        if action.choices and not all(str(c) in meaning for c in action.choices):
            choices = ", ".join(f"`{c}`" for c in action.choices)
            meaning = f"{meaning} (one of {choices})" if meaning else f"one of {choices}"
        settings.append(Setting(service, flag, var if probed[action.dest] == expected else None,
                                action.default, meaning))
    return settings


def all_settings() -> list[Setting]:
    """Every flag of the three services, in parser order."""
    return [s for service, module, _ in SERVICES for s in service_settings(service, module)]


def env_names() -> set[str]:
    """Every environment variable the services read."""
    names = {s.env for s in all_settings() if s.env is not None}
    return names | {name for name, _, _ in SHARED_SETTINGS}


def _show_default(value: Any) -> str:
    if value is None or value == "":
        return "(none)"
    return f"`{value}`"


def settings_markdown() -> str:
    """The settings tables, one per service, then the shared ones."""
    lines: list[str] = []
    settings = all_settings()
    for service, _, entrypoint in SERVICES:
        lines += ["", f"`python -m {entrypoint}`:", "",
                  "| flag | environment variable | default | meaning |", "|---|---|---|---|"]
        for s in settings:
            if s.service == service:
                env = f"`{s.env}`" if s.env else "(flag only)"
                lines.append(f"| `{s.flag}` | {env} | {_show_default(s.default)} | {s.meaning} |")
    lines += ["", "Shared by name (environment only):", "",
              "| environment variable | read by | meaning |", "|---|---|---|"]
    for name, readers, meaning in SHARED_SETTINGS:
        lines.append(f"| `{name}` | {', '.join(readers)} | {meaning} |")
    return "\n".join(lines[1:]) + "\n"


def replace_section(text: str, table: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    start = text.find(BEGIN_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"markers {BEGIN_MARKER!r} ... {END_MARKER!r} not found")
    return text[: start + len(BEGIN_MARKER)] + "\n" + table + text[end:]


def update_file(path: Path, check_only: bool) -> bool:
    """Write the table into `path` (or only compare); True when it was up to date."""
    text = path.read_text()
    updated = replace_section(text, settings_markdown())
    if updated == text:
        return True
    if not check_only:
        path.write_text(updated)
    return False
