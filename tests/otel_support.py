"""Test support for observability: a gateway with explicit in-memory OpenTelemetry providers.

The providers are passed to ``start_gateway`` rather than installed globally, so these tests do not
change what any other test's gateway does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from llmrpc_server.app import start_gateway
from llmrpc_server.config import Settings
from llmrpc_server.observability.otel import Telemetry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.support import GatewayThread, gateway_settings

__all__ = ["Otel", "TelemetryGateway", "otel", "start_observed"]


class TelemetryGateway(GatewayThread):
    """:class:`GatewayThread` whose gateway reports to the given providers."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        super().__init__(settings)
        self.telemetry = telemetry

    def start(self) -> TelemetryGateway:
        self._thread.start()
        self.gateway = self.run(start_gateway(self.settings, self.telemetry))
        return self


class Otel:
    """In-memory span exporter and metric reader behind one tracer and one meter provider."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self) -> Telemetry:
        return Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def wait_spans(self, servers: int = 1, timeout: float = 5.0) -> list[ReadableSpan]:
        """Finished spans once ``servers`` SERVER spans ended (they end after the reply is sent)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = list(self.spans.get_finished_spans())
            if sum(s.kind is SpanKind.SERVER for s in spans) >= servers or time.monotonic() > deadline:
                return spans
            time.sleep(0.01)

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """name -> [(attributes, data point)] of everything recorded so far."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(
                        (dict(p.attributes or {}), p) for p in metric.data.data_points)
        return out


def of_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is kind]


@pytest.fixture
def otel() -> Otel:
    """Fresh providers per test (a meter provider keeps the first instrument of each name)."""
    return Otel()


@pytest.fixture
def start_observed(otel: Otel) -> Iterator[Callable[..., TelemetryGateway]]:
    """Factory like ``start_gateway`` but reporting to ``otel``."""
    started: list[TelemetryGateway] = []

    def start(env: dict[str, str] | None = None, **overrides: Any) -> TelemetryGateway:
        gw = TelemetryGateway(gateway_settings(env, **overrides), otel.telemetry()).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
