"""Settings declared once, on the dataclass fields they fill.

A service's `Config` is a frozen dataclass whose fields are of three kinds:

- a flag: `port: int = flag(1337, "gRPC port")`. Its command-line name is the field's,
  dashed (`--port`, or `name=`), and its default reads `CLIPPER_<SERVICE>_<NAME>`
  first (`CLIPPER_FRONTEND_PORT`); `check=` bounds it (`--port=-1: must be >= 0`);
- a section: `limits: Limits = section(Limits, prefix="max-")`, a dataclass whose own
  fields are flags (`--max-rank`), so that a domain type carries its settings;
- anything else (a secret read from the environment, a value derived from several
  flags): a plain field with a default, set by the service's own `config_from_args`,
  which also checks what involves several flags.

`parse_config(Config, service, argv)` builds the parser from the declarations, parses
and builds the Config; `declared_flags(Config, service)` lists them for the settings
table in deploy/README.md (services/cli/settings.py).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, TypeVar

from services.common.tls import ClientTLS, ServerTLS

C = TypeVar("C")

_FLAG = "clipper.flag"
_SECTION = "clipper.section"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the flag or variable and its value."""


def require(condition: bool, message: str) -> None:
    """Fail fast with a ConfigError when a setting is out of range."""
    if not condition:
        raise ConfigError(message)


def env_name(service: str, name: str) -> str:
    """CLIPPER_<SERVICE>_<NAME>, for a flag `--name` of `service`."""
    return f"CLIPPER_{service}_{name}".upper().replace("-", "_")


@dataclass(frozen=True)
class Check:
    """A bound a flag's value must keep, and what the error says when it does not."""

    holds: Callable[[Any], bool]
    message: str


POSITIVE = Check(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = Check(lambda v: v >= 0, "must be >= 0")


def at_least(minimum: float) -> Check:
    return Check(lambda v: v >= minimum, f"must be >= {minimum}")


@dataclass(frozen=True)
class Flag:
    """How one field is set: its flag, else its environment variable, else `default`
    (the value as the flag reads it; the field holds it times `scale`, when set)."""

    default: Any
    help: str
    parse: Callable[[str], Any]
    name: str = ""
    choices: tuple[str, ...] = ()
    check: Check | None = None
    scale: float | None = None

    def value(self, raw: Any) -> Any:
        return raw * self.scale if self.scale is not None else raw


def parse_bool(raw: str) -> bool:
    """A boolean variable: 1, true, yes or on; 0, false, no or off."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def flag(default: bool | int | float | str, help: str, *, name: str = "",
         choices: tuple[str, ...] = (), check: Check | None = None,
         scale: float | None = None) -> Any:
    """A dataclass field set by the flag `--<name>` (default: the field's name, dashed);
    a bool flag is off unless given."""
    parse = parse_bool if isinstance(default, bool) else type(default)
    spec = Flag(default, help, parse, name, choices, check, scale)
    return field(default=spec.value(default), metadata={_FLAG: spec})


def section(cls: type, prefix: str = "") -> Any:
    """A dataclass field whose own fields are flags, named `--<prefix><name>`."""
    return field(default_factory=cls, metadata={_SECTION: (cls, prefix)})


@dataclass(frozen=True)
class DeclaredFlag:
    """One flag as the parser, the environment and the settings table see it."""

    flag: str  # --max-rank
    env: str  # CLIPPER_FRONTEND_MAX_RANK ("": none, for a launcher's own flags)
    spec: Flag

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _walk(cls: type, service: str | None, prefix: str = "") -> Iterator[tuple[Field[Any], Any]]:
    """Each field of `cls` with its DeclaredFlag, or its section's fields' (recursively),
    or None for a field set otherwise."""
    for f in fields(cls):
        if _FLAG in f.metadata:
            spec: Flag = f.metadata[_FLAG]
            name = prefix + (spec.name or f.name.replace("_", "-"))
            env = env_name(service, name) if service is not None else ""
            yield f, DeclaredFlag("--" + name, env, spec)
        elif _SECTION in f.metadata:
            inner, inner_prefix = f.metadata[_SECTION]
            yield f, list(_walk(inner, service, prefix + inner_prefix))
        else:
            yield f, None


def declared_flags(cls: type, service: str | None) -> list[DeclaredFlag]:
    """Every flag of `cls`, sections included, in declaration order (`service` None: no
    environment variables)."""
    found: list[DeclaredFlag] = []

    def collect(items: list[tuple[Field[Any], Any]]) -> None:
        for _, item in items:
            if isinstance(item, DeclaredFlag):
                found.append(item)
            elif isinstance(item, list):
                collect(item)

    collect(list(_walk(cls, service)))
    return found


def env_default(declared: DeclaredFlag) -> Any:
    """The flag's default: its environment variable, parsed, when set; else its own."""
    raw = os.environ.get(declared.env) if declared.env else None
    if raw is None or raw == "":
        return declared.spec.default
    try:
        value = declared.spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{declared.env}={raw!r} is not valid: {exc}") from exc
    if declared.spec.choices and value not in declared.spec.choices:
        raise ConfigError(f"{declared.env}={raw!r} is not valid: expected one of "
                          f"{', '.join(declared.spec.choices)}")
    return value


def build_parser(cls: type, service: str | None,
                 **parser_args: Any) -> argparse.ArgumentParser:
    """The flags of `cls`, with defaults read from the environment now."""
    p = argparse.ArgumentParser(**parser_args)
    for d in declared_flags(cls, service):
        if d.spec.parse is parse_bool:  # on when given, else as its variable says
            p.add_argument(d.flag, dest=d.dest, action="store_true", default=env_default(d),
                           help=d.spec.help)
        else:
            p.add_argument(d.flag, dest=d.dest, type=d.spec.parse, default=env_default(d),
                           choices=d.spec.choices or None, help=d.spec.help)
    return p


def _build(cls: type[C], items: list[tuple[Field[Any], Any]], args: argparse.Namespace) -> C:
    values: dict[str, Any] = {}
    for f, item in items:
        if isinstance(item, DeclaredFlag):
            raw = getattr(args, item.dest)
            check = item.spec.check
            require(check is None or check.holds(raw), f"{item.flag}={raw}: "
                    f"{check.message if check else ''}")
            values[f.name] = item.spec.value(raw)
        elif isinstance(item, list):
            values[f.name] = _build(f.metadata[_SECTION][0], item, args)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a field that is not a flag needs a "
                            "default")
    try:
        return cls(**values)
    except ValueError as exc:  # the section's own checks
        raise ConfigError(str(exc)) from exc


def config_from_namespace(cls: type[C], service: str | None, args: argparse.Namespace) -> C:
    """`cls` from what `build_parser(cls, service)` parsed, each flag checked; its fields
    that are not flags keep their defaults."""
    return _build(cls, list(_walk(cls, service)), args)


def parse_config(cls: type[C], service: str, argv: list[str] | None = None,
                 **parser_args: Any) -> C:
    """`cls` from the command line `argv` (default: sys.argv) and the environment."""
    args = build_parser(cls, service, **parser_args).parse_args(argv)
    return config_from_namespace(cls, service, args)


# The flags every service has.

def host_flag() -> Any:
    return flag("127.0.0.1", "address to listen on (0.0.0.0 in a pod)")


def port_flag(default: int) -> Any:
    return flag(default, "gRPC port (0: any free port, logged and printed at start)")


def grace_flag() -> Any:
    return flag(10.0, "on SIGTERM: how long in-flight work may take to finish")


def metrics_port_flag() -> Any:
    return flag(-1, "serve Prometheus metrics on this port (0: any free port; -1: off)")


def log_level_flag() -> Any:
    return flag("INFO", "logging level (DEBUG, INFO, WARNING, ERROR)")


def log_format_flag() -> Any:
    return flag("text", "text lines, or JSON lines: one object per event with the service, "
                "and for a query its id, application and trace id", choices=("text", "json"))


def health_port_flag() -> Any:
    return flag(-1, "also serve only gRPC health checks, in plaintext, on this port (for "
                "probes that cannot do TLS; 0: any free port; -1: off)")


def _require_files(*pairs: tuple[str, str]) -> None:
    for name, path in pairs:
        require(not path or os.path.isfile(path), f"{name}={path}: no such file")


@dataclass(frozen=True)
class ServingTLSFlags:
    """--tls-cert, --tls-key and --tls-client-ca: serve TLS (mTLS with a client CA)."""

    cert: str = flag("", "serve TLS with this PEM certificate chain (re-read when it changes)")
    key: str = flag("", "PEM private key of --tls-cert")
    client_ca: str = flag("", "require client certificates signed by this PEM CA (mTLS)")

    def server_tls(self) -> ServerTLS | None:
        """The server TLS settings, checked; None for plaintext."""
        require(bool(self.cert) == bool(self.key),
                "--tls-cert and --tls-key go together (both or neither)")
        require(not self.client_ca or bool(self.cert),
                "--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        _require_files(("--tls-cert", self.cert), ("--tls-key", self.key),
                       ("--tls-client-ca", self.client_ca))
        return ServerTLS(self.cert, self.key, self.client_ca) if self.cert else None


@dataclass(frozen=True)
class DialingTLSFlags:
    """--tls-ca, --tls-client-cert and --tls-client-key: dial with TLS (mTLS with a cert)."""

    ca: str = flag("", "dial with TLS, trusting servers signed by this PEM CA")
    client_cert: str = flag("", "PEM certificate this service presents when it dials (mTLS)")
    client_key: str = flag("", "PEM private key of --tls-client-cert")

    def client_tls(self, server_name: str = "") -> ClientTLS:
        """The client TLS settings, checked (`enabled` False: plaintext)."""
        require(bool(self.client_cert) == bool(self.client_key),
                "--tls-client-cert and --tls-client-key go together (both or neither)")
        require(not self.client_cert or bool(self.ca), "--tls-client-cert (mTLS) needs --tls-ca")
        _require_files(("--tls-ca", self.ca), ("--tls-client-cert", self.client_cert),
                       ("--tls-client-key", self.client_key))
        return ClientTLS(self.ca, self.client_cert, self.client_key, server_name)
