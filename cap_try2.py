import asyncio, sys
import numpy as np
from benchmarks.loadgen import ContainerStream, open_loop
from benchmarks.harness import start_container, BATCHERS, workdir, TOKENS
async def main():
    with workdir() as w:
        p = start_container(w, "benchmarks.models:Synthetic", BATCHERS[sys.argv[1]])
        async with ContainerStream(p.address, TOKENS["CLIPPER_CONTAINER_TOKEN"], np.ones(4, np.float32), 0.02) as s:
            for rate in [100, 100, 200, 400, 800, 1600]:
                r = await open_loop(s.send, rate, 3.0, 0.02)
                fails = sum(not o.ok for o in r.outcomes); late = sum(o.ok and o.latency_s > 0.02 for o in r.outcomes)
                print(sys.argv[1], rate, "n", r.count, "p50 %.1f" % r.percentile_ms(50), "fails", fails, "late", late, "within %.4f" % r.within_slo)
        p.stop()
asyncio.run(main())
