"""`make bench`: run every benchmark, print the figures, write bench-results/report.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import mesh_latency


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--queries", type=int, default=1000)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [mesh_latency.run(out, args.queries)]
    report = "# Benchmark report\n\n" + "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(report)
    print(report)
    print(f"written to {out / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
