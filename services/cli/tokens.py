"""`tokens`: the credentials derived from the mesh secret, and new API keys.

  tokens container MODEL   the token containers of MODEL announce themselves with
  tokens selection         the token the selection service accepts (from frontends)
  tokens api-key           a new random API key and its SHA-256 (for apps create/keys)

The mesh secret is read from CLIPPER_MESH_SECRET only (never a flag: it would
stay in the shell's history). Output is JSON for api-key, the bare token otherwise,
so that `$(python -m services.cli tokens container m)` fills a variable or Secret.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from typing import Any

from services.common.credentials import (
    MIN_SECRET_CHARS,
    container_token,
    selection_token,
    sha256_hex,
)


def add_command(sub: Any) -> None:
    tokens = sub.add_parser(
        "tokens", help="print a credential derived from CLIPPER_MESH_SECRET, or a new API key",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="command", required=True)
    tokens.add_parser("container", help="a model's container token").add_argument("model")
    tokens.add_parser("selection", help="the selection service's token")
    tokens.add_parser("api-key", help="a new random API key and its SHA-256")


def print_token(args: argparse.Namespace) -> int:
    if args.command == "api-key":
        key = secrets.token_urlsafe(32)
        print(json.dumps({"key": key, "sha256": sha256_hex(key)}, indent=2))
        return 0
    secret = os.environ.get("CLIPPER_MESH_SECRET", "")
    if len(secret) < MIN_SECRET_CHARS:
        print(f"error: set CLIPPER_MESH_SECRET (the frontends' mesh secret, at least "
              f"{MIN_SECRET_CHARS} characters)", file=sys.stderr)
        return 2
    if args.command == "container":
        if not args.model:
            print("error: the model name is empty", file=sys.stderr)
            return 2
        print(container_token(secret, args.model))
    else:
        print(selection_token(secret))
    return 0
