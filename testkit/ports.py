"""Free loopback ports, for a process that must be told its port before it starts."""

from __future__ import annotations

from services.common.processes import free_port

__all__ = ["free_port"]
