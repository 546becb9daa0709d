"""Every setting the services read, from the flags their `Config` declares.

Each flag's default reads `CLIPPER_<SERVICE>_<NAME>` (services/common/config.py
derives both names from the declaration). `settings_markdown` renders the table
that deploy/README.md carries between the markers below; `python -m services.cli
settings --write deploy/README.md` refreshes it and `--check` fails when stale.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import declared_flags

BEGIN_MARKER = "<!-- settings:begin (python -m services.cli settings --write) -->"
END_MARKER = "<!-- settings:end -->"

# (service name in env vars, module with its Config, how it is started)
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
    env: str
    default: Any
    meaning: str


def service_settings(service: str, module_name: str) -> list[Setting]:
    """The flags declared by the service's `Config`, with their environment variables."""
    config = importlib.import_module(module_name).Config
    settings = []
    for d in declared_flags(config, service):
        meaning = " ".join(d.spec.help.split())
        choices = d.spec.choices
        if choices and not all(c in meaning for c in choices):
            listed = ", ".join(f"`{c}`" for c in choices)
            meaning = f"{meaning} (one of {listed})" if meaning else f"one of {listed}"
        settings.append(Setting(service, d.flag, d.env, d.spec.default, meaning))
    return settings


def all_settings() -> list[Setting]:
    """Every flag of the three services, in parser order."""
    return [s for service, module, _ in SERVICES for s in service_settings(service, module)]


def env_names() -> set[str]:
    """Every environment variable the services read."""
    names = {s.env for s in all_settings()}
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
                lines.append(f"| `{s.flag}` | `{s.env}` | {_show_default(s.default)} | "
                             f"{s.meaning} |")
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
