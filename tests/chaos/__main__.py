"""`make chaos`: a bounded soak of faults in random order under load (tests/chaos/harness.py).

Prints, per fault: queries sent, answered, defaults, errors by code, late (past the
SLO + 10 ms), lost (sent, never answered: must be 0) and the time to full capacity.
Exits 1 when a query or an acknowledged management change was lost, or the mesh did
not come back to full capacity after a fault.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import FAULTS, soak


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos")
    p.add_argument("--rounds", type=int, default=3, help="times each fault is injected")
    p.add_argument("--rate", type=float, default=40.0, help="queries per second (open loop)")
    p.add_argument("--slo-ms", type=int, default=100)
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = list(FAULTS) * args.rounds
    random.Random(args.seed).shuffle(names)
    print(f"chaos: {len(names)} faults (seed {args.seed}), {args.rate:g} q/s, "
          f"SLO {args.slo_ms} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        result = asyncio.run(soak(Path(workdir), names, args.rate, args.slo_ms))
    print(result.text())
    return 1 if result.lost or result.missing_changes or result.unrecovered else 0


if __name__ == "__main__":
    sys.exit(main())
