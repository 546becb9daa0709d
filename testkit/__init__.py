"""What the tests and the benchmarks share: real mesh processes on loopback ports
(`testkit.mesh.Mesh`) and free ports (`testkit.ports`). Test-only helpers stay in
tests/helpers."""
