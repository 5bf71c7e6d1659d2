"""Everything the gateway reports about its calls: the observing backend layer (``backend``),
spans (``spans``), metrics (``metrics``), resilience counters (``counters``), LiteLLM-style
callbacks (``callbacks``) and OpenTelemetry provider setup (``otel``)."""

from __future__ import annotations

from .backend import ObservedBackend
from .counters import Counters
from .otel import Telemetry, configure

__all__ = ["Counters", "ObservedBackend", "Telemetry", "configure"]
