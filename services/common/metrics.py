"""Metrics with OpenTelemetry, exposed for Prometheus at http://HOST:PORT/metrics.

Each service declares its instruments at import (`meter(...)` returns the
global API meter, which binds to the real provider once `serve_metrics` has
run) and calls `serve_metrics` from its `__main__` when a metrics port is set.
The Prometheus exporter appends units and `_total` to names:
`clipper.queries` becomes `clipper_queries_total`.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)
# A model container's resource attributes: its `target_info` carries them as the labels
# clipper_model and clipper_model_version (comma-separated when the process serves several
# models; its batch and refusal metrics name their model in a `model` label).
MODEL_ATTRIBUTE = "clipper.model"
VERSION_ATTRIBUTE = "clipper.model.version"
MODEL_METRIC_LABEL = "model"


def meter(name: str) -> metrics.Meter:
    return metrics.get_meter(name)


def serve_metrics(service: str, host: str, port: int,
                  attributes: Mapping[str, str] | None = None) -> int | None:
    """Install the meter provider and serve /metrics on `port` (0: any free; < 0: off).
    `attributes` describe the process (its `target_info` labels, e.g. a container's model).

    Returns the bound port, or None when metrics are off."""
    if port < 0:
        return None
    reader = PrometheusMetricReader()
    resource = Resource.create({"service.name": f"clipper-{service}", **(attributes or {})})
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    logger.info("metrics at http://%s:%d/metrics", host, bound)
    return bound


Samples = list[tuple[str, dict[str, str], float]]


def read_metrics(url: str, timeout_s: float = 5.0) -> Samples:
    """A service's metrics as (sample name, labels, value), read from its /metrics URL
    (for tests, benchmarks and tools that watch a service from outside)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse_metrics(response.read().decode())


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text exposition."""
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """`read_metrics` of a service on `host:port`."""
    return read_metrics(f"http://{host}:{port}/metrics")


def sample(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(value for sample_name, sample_labels, value in samples
               if sample_name == name
               and all(sample_labels.get(k) == v for k, v in labels.items()))
