"""A Prometheus rule file as a Prometheus Operator `PrometheusRule`.

`python -m services.cli prometheus-rule deploy/observability/alerts.yaml` prints the
resource that deploy/components/monitoring applies: the rule file is its `spec`,
word for word (comments included), indented under it. So the rule file stays the one
copy that people edit and `promtool check rules` reads; tests/deploy fails when the
component's copy is not what this prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.cli import k8s

RULE_NAME = "clipper-alerts"


def prometheus_rule(rules: str, source: str) -> str:
    """The PrometheusRule (YAML) whose spec is the rule file `rules` (YAML text of a
    mapping with `groups`); `source` names the file in the header comment."""
    if not rules.lstrip().startswith(("groups:", "#")) or "\n---" in rules:
        raise ValueError(f"{source}: expected one YAML document with top-level `groups:`")
    header = (f"# Printed by `python -m services.cli prometheus-rule {source}`:\n"
              "# edit that file and print this one again, never this one.\n"
              "apiVersion: monitoring.coreos.com/v1\n"
              "kind: PrometheusRule\n"
              "metadata:\n"
              f"  name: {RULE_NAME}\n"
              "  labels:\n"
              + "".join(f"    {k}: {v}\n" for k, v in k8s.PART_OF.items())
              + "spec:\n")
    body = "".join(f"  {line}" if line.strip() else line
                   for line in rules.splitlines(keepends=True))
    return header + body


def add_command(sub: Any) -> None:
    cmd = sub.add_parser("prometheus-rule",
                         help="print a Prometheus rule file as a PrometheusRule resource")
    cmd.add_argument("rules", type=Path,
                     help="the rule file (e.g. deploy/observability/alerts.yaml)")


def print_rule(args: argparse.Namespace) -> int:
    path: Path = args.rules
    try:
        print(prometheus_rule(path.read_text(), str(path)), end="")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
