"""Test-only helpers: test models, certificates, Redis, outside tools, the in-process
mesh. What the benchmarks share with the tests is in testkit/."""
