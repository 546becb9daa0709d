"""Tracing is configured from the OpenTelemetry environment variables, and off by default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.common import tracing


@pytest.fixture
def clean_tracing() -> Iterator[None]:
    yield
    tracing.shutdown_tracing()


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
     False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
     False),
])
def test_tracing_is_on_only_with_an_endpoint(environ: dict[str, str], wanted: bool) -> None:
    assert tracing.tracing_requested(environ) is wanted


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.setup_tracing("frontend") is False
    assert tracing.enabled is False


def test_service_name_and_sampler_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, clean_tracing: None,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-frontend")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    assert tracing.setup_tracing("frontend") is True
    provider = tracing._provider
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "edge-frontend"
    assert "TraceIdRatioBased{0.01}" in provider.sampler.get_description()
    assert provider.sampler.get_description().startswith("ParentBased")


def test_a_ratio_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "5")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        tracing.setup_tracing("frontend")
    assert tracing.enabled is False
