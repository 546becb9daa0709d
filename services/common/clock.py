"""The clock every deadline and latency measurement in the services reads.

`now()` is `time.monotonic()`: the clock the event loop's timers count on, at
full resolution. The services run on uvloop, whose `loop.time()` reads the same
clock but in whole milliseconds; a batcher learning a sub-millisecond model's
latency from it saw every batch take 0 or 1 ms. A deadline taken from `now()`
is a valid `asyncio.timeout_at` / `loop.call_at` time; such a timer fires once
the loop's millisecond clock passes it (as every uvloop timer does).
"""

from __future__ import annotations

import time
from collections.abc import Callable

now = time.monotonic

# A clock as its users take it: `now` by default, a test's own clock when injected
# (the registry's replica expiry, the quotas' buckets).
Now = Callable[[], float]

# Kept back from a deadline for an answer's way back (a hop over loopback or a pod
# network, and the frontend combining): the frontend settles its answer this long before
# the SLO, and gives a container this much less than the query has left.
REPLY_MARGIN_S = 0.002
