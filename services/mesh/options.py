"""The launcher's own flags (`python -m services.mesh --help`); no environment defaults."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from services.common.config import (
    NON_NEGATIVE,
    POSITIVE,
    Check,
    ConfigError,
    build_parser,
    config_from_namespace,
    flag,
    require,
)

PORT = Check(lambda v: 0 <= v <= 65535, "out of range")


@dataclass(frozen=True)
class MeshOptions:
    port: int = flag(1337, "frontend port (0: any free port)", check=PORT)
    state_dir: str = flag(".run", "state files, trained models and logs")
    replicas: int = flag(1, "replicas of each model", check=POSITIVE)
    cohost: bool = flag(False, "serve all the models from one container process per "
                        "replica (each model still its own replica and batcher, all on one "
                        "stream from the frontend), instead of one process per model")
    slo_ms: int = flag(100, "SLO of the application digits", check=POSITIVE)
    grace_s: float = flag(10.0, "each service's grace period when the mesh stops (past it "
                          "plus 5 s, a service is killed)", check=NON_NEGATIVE)
    max_restarts_per_min: int = flag(5, "a service that exits more often is left down",
                                     check=NON_NEGATIVE)
    max_backoff_s: float = flag(30.0, "longest wait before a restart (from 0.5 s, doubling "
                                "per quick exit)", check=NON_NEGATIVE)
    tls_ca: str = flag("", "TLS on every channel: the CA file")
    tls_cert: str = flag("", "certificate every service serves and presents (names "
                         "127.0.0.1, server and client use)")
    tls_key: str = flag("", "key of --tls-cert")
    tls_throwaway: bool = flag(False, "make a throwaway CA and certificate in "
                               "<state-dir>/tls/ and use them")
    mtls: bool = flag(False, "with TLS: require client certificates")


def parse_args(argv: list[str] | None = None, description: str | None = None) -> MeshOptions:
    """The launcher's options, checked (exit 2 with usage when they cannot be used)."""
    p = build_parser(MeshOptions, None, prog="python -m services.mesh",
                     description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        opts = config_from_namespace(MeshOptions, None, p.parse_args(argv))
        if opts.tls_throwaway:
            opts = _throwaway_tls(opts)
        require(all((opts.tls_ca, opts.tls_cert, opts.tls_key)) or not any(
            (opts.tls_ca, opts.tls_cert, opts.tls_key, opts.mtls)),
            "TLS needs --tls-ca, --tls-cert and --tls-key (or --tls-throwaway)")
    except ConfigError as exc:
        p.error(str(exc))
    return opts


def _throwaway_tls(opts: MeshOptions) -> MeshOptions:
    """`opts` with a CA and certificate made in <state-dir>/tls/ for this mesh."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ConfigError("--tls-throwaway needs the cryptography package "
                          "(pip install -e '.[dev]')") from None
    from services.mesh.certs import make_ca, make_leaf

    tls_dir = Path(opts.state_dir) / "tls"
    ca = make_ca(tls_dir, "ca", days=7)
    leaf = make_leaf(tls_dir, "mesh", ca, days=7)
    return replace(opts, tls_ca=str(ca.cert), tls_cert=str(leaf.cert), tls_key=str(leaf.key))
