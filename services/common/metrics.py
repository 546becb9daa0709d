"""Metrics with OpenTelemetry, exposed for Prometheus at http://HOST:PORT/metrics.

Each service declares its instruments at import (`meter(...)` returns the
global API meter, which binds to the real provider once `serve_metrics` has
run) and calls `serve_metrics` from its `__main__` when a metrics port is set.
The Prometheus exporter appends units and `_total` to names:
`clipper.queries` becomes `clipper_queries_total`.
"""

from __future__ import annotations

import logging

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

logger = logging.getLogger(__name__)


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def serve_metrics(service: str, host: str, port: int) -> int | None:
    """Install the meter provider and serve /metrics on `port` (0: any free; < 0: off).

    Returns the bound port, or None when metrics are off."""
    if port < 0:
        return None
    reader = PrometheusMetricReader()
    resource = Resource.create({"service.name": f"clipper-{service}"})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    logger.info("metrics at http://%s:%d/metrics", host, bound)
    return bound
