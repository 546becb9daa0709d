"""A stand-in service for the supervisor's tests: `python -m tests.helpers.short_lived`.

It binds `--port` on 127.0.0.1, prints the ready line every service prints, and then
exits with `--exit-code` after `--exit-after-s` (never, by default). On SIGTERM it
exits 0, or with `--ignore-sigterm` goes on as if nothing happened.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

from services.common.server import READY_PREFIX


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--exit-after-s", type=float, default=-1.0)
    p.add_argument("--exit-code", type=int, default=3)
    p.add_argument("--ignore-sigterm", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm
                  else lambda signum, frame: sys.exit(0))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen()
    print(f"{READY_PREFIX} service=short_lived port={listener.getsockname()[1]}", flush=True)
    print("serving", file=sys.stderr, flush=True)
    started = time.monotonic()
    while args.exit_after_s < 0 or time.monotonic() - started < args.exit_after_s:
        time.sleep(0.01)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
