"""Flag defaults from `CLIPPER_<SERVICE>_<NAME>` environment variables, validated at start."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and its value."""


def env_default(service: str, name: str, default: T, parse: Callable[[str], T]) -> T:
    """The value of CLIPPER_<SERVICE>_<NAME> parsed with `parse`, else `default`."""
    var = env_name(service, name)
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not valid: {exc}") from exc


def env_name(service: str, name: str) -> str:
    return f"CLIPPER_{service}_{name}".upper().replace("-", "_")


def require(condition: bool, message: str) -> None:
    """Fail fast with a ConfigError when a setting is out of range."""
    if not condition:
        raise ConfigError(message)
