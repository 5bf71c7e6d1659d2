"""OpenTelemetry SDK setup from the standard ``OTEL_*`` environment variables.

Why here and not ``opentelemetry-instrument``: the gateway must cost nothing when nobody looks, so
the default is *no* SDK at all (``OTEL_TRACES_EXPORTER`` and ``OTEL_METRICS_EXPORTER`` default to
``none``): no tracer provider means no server interceptor and no spans; no meter provider means no
instruments. The providers are handed to the gateway explicitly instead of being made global, so
several gateways (or tests) can live in one process. A global SDK provider someone else installed
(``opentelemetry-instrument``) is used when the variables are unset.

Exporters: ``console`` (local debugging), ``otlp`` (the ``llmrpc[otlp]`` extra; endpoint, headers
and protocol from ``OTEL_EXPORTER_OTLP_*``), for metrics also ``prometheus`` (the
``llmrpc[prometheus]`` extra; or set ``metrics_port``). Listing the ``otel`` callback makes ``otlp``
the default, as LiteLLM's ``otel`` callback does.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

from ..config import Settings

__all__ = ["Telemetry", "configure"]

log = logging.getLogger("llmrpc_server")


@dataclass
class Telemetry:
    """The providers a gateway reports to; ``None`` turns that signal off (the default)."""

    tracer_provider: trace.TracerProvider | None = None
    meter_provider: metrics.MeterProvider | None = None
    _closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    def shutdown(self) -> None:
        """Flush and stop what :func:`configure` created (never providers passed in from outside)."""
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # shutdown must not fail the gateway's stop
                log.warning("telemetry shutdown step failed", exc_info=True)
        self._closers.clear()


def configure(settings: Settings) -> Telemetry:
    """Providers from ``settings.env``'s ``OTEL_*`` variables and ``metrics_port``."""
    env = settings.env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    wants_otel = "otel" in (*settings.input_callback, *settings.success_callback, *settings.failure_callback)
    default = "otlp" if wants_otel else "none"
    telemetry = Telemetry()
    resource = _resource(env)
    telemetry.tracer_provider = _tracer_provider(env, default, resource, telemetry)
    telemetry.meter_provider = _meter_provider(settings, default, resource, telemetry)
    return telemetry


def _names(env: Mapping[str, str], var: str, default: str) -> list[str]:
    raw = env.get(var, "").strip() or default
    return [n.strip().lower() for n in raw.split(",") if n.strip() and n.strip().lower() != "none"]


def _resource(env: Mapping[str, str]) -> Resource:
    attributes: dict[str, str] = {}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    name = env.get("OTEL_SERVICE_NAME") or attributes.get("service.name")
    attributes["service.name"] = name or "llmrpc-server"
    return Resource.create(attributes)


def _tracer_provider(env: Mapping[str, str], default: str, resource: Resource,
                     telemetry: Telemetry) -> trace.TracerProvider | None:
    if not env.get("OTEL_TRACES_EXPORTER") and default == "none":
        existing = trace.get_tracer_provider()
        return existing if isinstance(existing, SdkTracerProvider) else None
    names = _names(env, "OTEL_TRACES_EXPORTER", default)
    if not names:
        return None
    provider = SdkTracerProvider(resource=resource)
    for name in names:
        provider.add_span_processor(_span_processor(name, env))
    telemetry._closers.append(provider.shutdown)
    return provider


def _span_processor(name: str, env: Mapping[str, str]) -> SpanProcessor:
    if name == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout))  # today's stdout, not import time's
    if name == "otlp":
        return BatchSpanProcessor(_otlp("trace_exporter", "OTLPSpanExporter", env, "TRACES"))
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (none, console or otlp)")


def _meter_provider(settings: Settings, default: str, resource: Resource,
                    telemetry: Telemetry) -> metrics.MeterProvider | None:
    env = settings.env
    if not env.get("OTEL_METRICS_EXPORTER") and default == "none" and not settings.metrics_port:
        existing = metrics.get_meter_provider()
        return existing if isinstance(existing, SdkMeterProvider) else None
    names = _names(env, "OTEL_METRICS_EXPORTER", default)
    if settings.metrics_port and "prometheus" not in names:
        names.append("prometheus")
    readers = [_metric_reader(name, settings, telemetry) for name in names]
    if not readers:
        return None
    provider = SdkMeterProvider(metric_readers=readers, resource=resource)
    telemetry._closers.insert(0, provider.shutdown)  # after the Prometheus server is closed
    return provider


def _metric_reader(name: str, settings: Settings, telemetry: Telemetry) -> MetricReader:
    if name == "console":
        return PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stdout))
    if name == "otlp":
        exporter = _otlp("metric_exporter", "OTLPMetricExporter", settings.env, "METRICS")
        return PeriodicExportingMetricReader(exporter)
    if name == "prometheus":
        return _prometheus(settings, telemetry)
    raise ValueError(f"OTEL_METRICS_EXPORTER: unknown exporter {name!r} (none, console, otlp or prometheus)")


def _otlp(module: str, cls: str, env: Mapping[str, str], signal: str) -> Any:
    """The OTLP exporter for ``OTEL_EXPORTER_OTLP_[signal_]PROTOCOL`` (grpc unless http/protobuf)."""
    protocol = (env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc")
    package = "proto.http" if protocol.startswith("http") else "proto.grpc"
    try:
        mod = __import__(f"opentelemetry.exporter.otlp.{package}.{module}", fromlist=[cls])
    except ImportError as exc:
        extra = "opentelemetry-exporter-otlp-proto-http" if package == "proto.http" else "llmrpc[otlp]"
        raise ValueError(f"the otlp exporter needs `pip install '{extra}'`") from exc
    return getattr(mod, cls)()


def _prometheus(settings: Settings, telemetry: Telemetry) -> MetricReader:
    """A Prometheus reader on its own registry, served on ``metrics_port`` when set."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as exc:
        raise ValueError("Prometheus metrics need `pip install 'llmrpc[prometheus]'`") from exc
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    if settings.metrics_port:
        host = settings.host.strip("[]") or "0.0.0.0"
        try:
            server, _ = start_http_server(settings.metrics_port, addr=host, registry=registry)
        except OSError as exc:
            raise ValueError(f"cannot serve metrics on port {settings.metrics_port}: {exc}") from exc
        telemetry._closers.append(server.server_close)
        telemetry._closers.append(server.shutdown)
    return reader
