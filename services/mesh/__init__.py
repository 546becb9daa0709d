"""The local mesh: every service as a local process, with the digits example models."""
