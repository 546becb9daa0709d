"""Pieces shared by every service: errors, config, servers, tensors, telemetry."""
