"""The gateway's metrics, as OpenTelemetry instruments (GenAI semantic conventions where they exist).

Why OpenTelemetry's metrics API rather than prometheus_client directly: one set of instruments
feeds OTLP, the console and Prometheus alike (the exporter is chosen by ``OTEL_METRICS_EXPORTER`` or
``metrics_port``, see ``observability.otel``). With no meter provider the gateway keeps no
:class:`GatewayMetrics` at all, so disabled metrics cost nothing per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .counters import NAMES, Counters

__all__ = ["GatewayMetrics"]

# Bucket boundaries the GenAI semantic conventions recommend.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_FIRST_CHUNK_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                        10.0)

Attributes = dict[str, str | int | float | bool]


class GatewayMetrics:
    """Every instrument the gateway records; one instance per gateway."""

    def __init__(self, provider: MeterProvider, *,
                 cache_stats: Callable[[], Mapping[str, Any]] | None = None,
                 counters: Counters | None = None) -> None:
        meter = provider.get_meter("llmrpc_server")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "Tokens used per call, by gen_ai.token.type",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", "s", "Duration of a call, retries and fallbacks included",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS)
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", "s", "Time from the call to its first chunk",
            explicit_bucket_boundaries_advisory=_FIRST_CHUNK_BUCKETS)
        self.retries = meter.create_counter(
            "llmrpc.upstream.retries", "{attempt}", "Upstream attempts that repeated the previous model")
        self.fallbacks = meter.create_counter(
            "llmrpc.upstream.fallbacks", "{attempt}", "Upstream attempts on a fallback model")
        self.upstream_errors = meter.create_counter(
            "llmrpc.upstream.errors", "{attempt}", "Failed upstream attempts by error.type")
        self.cost = meter.create_counter("llmrpc.cost", "USD", "Cost of answered calls")
        self.callback_failures = meter.create_counter(
            "llmrpc.callback.failures", "{event}", "Callback events whose handler raised or timed out")
        self.callback_dropped = meter.create_counter(
            "llmrpc.callback.dropped", "{event}", "Callback events dropped because the queue was full")
        if counters is not None:
            meter.create_observable_counter(
                "llmrpc.resilience.events", [_observe_counters(counters)], "{event}",
                "Broken streams, stream idle timeouts, expired caller deadlines, retries and fallbacks, by reason")
        if cache_stats is not None:
            meter.create_observable_counter(
                "llmrpc.cache.events", [_observe(cache_stats)], "{event}",
                "Response cache hits, misses, stores, evictions, coalesced, errors")

    def call_done(self, attrs: Attributes, seconds: float, input_tokens: int | None,
                  output_tokens: int | None, cost: float | None) -> None:
        """One finished call (``attrs`` carries ``error.type`` when it failed)."""
        self.duration.record(seconds, attrs)
        if input_tokens is not None:
            self.tokens.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
        if output_tokens is not None:
            self.tokens.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})
        if cost:
            self.cost.add(cost, attrs)


def _observe_counters(counters: Counters) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """The pipeline's counters by name and ErrorInfo reason."""
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {"llmrpc.event": name, "error.type": reason or "none"})
                for name in NAMES for reason, value in counters.by_reason(name).items()]
    return callback


def _observe(stats: Callable[[], Mapping[str, Any]]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """Numeric entries of the cache's ``stats()`` as observations labelled ``llmrpc.cache.event``."""
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        try:
            values = stats()
        except Exception:  # a broken stats() must not break the metrics export
            return []
        return [Observation(v, {"llmrpc.cache.event": k}) for k, v in values.items()
                if isinstance(v, int | float) and not isinstance(v, bool)]
    return callback
