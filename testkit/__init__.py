"""What the tests and the benchmarks share: real mesh processes on loopback ports
(`testkit.mesh.Mesh`), a Redis server (`testkit.redis_server`), an OTLP receiver and test
model files. Free ports come from `services.common.processes.free_port`. Test-only
helpers stay in tests/helpers."""
