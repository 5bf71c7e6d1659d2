"""Resilience counters of this server process: how often the pipeline retried, fell back, broke a
stream after partial output, hit the stream idle timeout or ran into the caller's deadline.

Plain integers, one :class:`Counters` per gateway (``Pipeline.counters``, also ``Gateway.counters``),
bumped on the serving loop by ``pipeline.py``; observability exports them as the metric
``llmrpc.resilience.events`` and tests read them directly::

    gateway.counters.total(counters.STREAMS_BROKEN)

Each bump carries a reason, the ``ErrorInfo`` reason of the failure that caused it
(``RATE_LIMITED``, ``PROVIDER_UNREACHABLE``, ...).
"""

from __future__ import annotations

from collections import Counter

__all__ = [
    "DEADLINE_EXCEEDED",
    "FALLBACKS",
    "NAMES",
    "REDIS_FAILURES",
    "RETRIES",
    "STREAMS_BROKEN",
    "STREAM_IDLE_TIMEOUTS",
    "Counters",
]

RETRIES = "retries"
"""An attempt was followed by another attempt of the same model (after the backoff)."""
FALLBACKS = "fallbacks"
"""A model's attempts were spent and the call moved on to a fallback model."""
STREAMS_BROKEN = "streams_broken"
"""A stream failed after its first chunk reached the caller (no retry or fallback possible)."""
STREAM_IDLE_TIMEOUTS = "stream_idle_timeouts"
"""An upstream stream sent nothing (not even headers) for ``stream_idle_timeout`` seconds."""
DEADLINE_EXCEEDED = "deadline_exceeded"
"""A call ended because the caller's gRPC deadline ran out."""

REDIS_FAILURES = "redis_failures"
"""A Redis command failed or timed out (``--redis-url``); the reason is the store: cache, limits, router."""

NAMES = (RETRIES, FALLBACKS, STREAMS_BROKEN, STREAM_IDLE_TIMEOUTS, DEADLINE_EXCEEDED, REDIS_FAILURES)


class Counters:
    """Monotonic counts per (name, reason)."""

    def __init__(self) -> None:
        self._values: Counter[tuple[str, str]] = Counter()

    def incr(self, name: str, reason: str = "") -> None:
        self._values[(name, reason)] += 1

    def total(self, name: str) -> int:
        return sum(v for (n, _), v in self._values.items() if n == name)

    def by_reason(self, name: str) -> dict[str, int]:
        return {reason: v for (n, reason), v in self._values.items() if n == name}

    def snapshot(self) -> dict[str, int]:
        """Totals of every counter, zeros included."""
        return {name: self.total(name) for name in NAMES}
