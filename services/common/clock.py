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

now = time.monotonic
