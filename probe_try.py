import asyncio, sys
import numpy as np
from benchmarks.loadgen import FrontendUnary, open_loop
from benchmarks.mesh_latency import start_mesh, stop_mesh
from benchmarks.harness import workdir
from services.common.processes import start_service
async def main():
    value = np.ones(64, np.float32)
    with workdir() as w:
        if sys.argv[1] == "echo":
            p = start_service("benchmarks.echo_server", ["--port", "0"]); addr = p.address
        else:
            proc, addr, _ = start_mesh(w / "mesh", "--slo-ms", "20")
        async with FrontendUnary(addr, "digits", value, channels=int(sys.argv[2])) as c:
            for rate in [50, 100, 200, 400, 800]:
                r = await open_loop(c.send, rate, 2.0, 0.02)
                fails = sum(not o.ok for o in r.outcomes)
                print(sys.argv[1], rate, "p50 %.1f p99 %.1f within %.4f fails %d" % (r.percentile_ms(50), r.percentile_ms(99), r.within_slo, fails))
        if sys.argv[1] == "echo": p.stop()
        else: stop_mesh(proc)
asyncio.run(main())
