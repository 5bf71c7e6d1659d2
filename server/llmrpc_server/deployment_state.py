"""What the deployments router remembers between calls: per-deployment request/token counts of the
current minute (``rpm``/``tpm``), failures of the current minute, cooldowns, calls in flight and
recent latencies.

:class:`DeploymentState` is the interface; :class:`LocalDeploymentState` keeps everything in this
process; ``shared.deployments.RedisDeploymentState`` (``--redis-url``) shares cooldowns and rpm/tpm
with every replica. The methods are synchronous on purpose: they are on every routed call's path, so
the shared store mirrors its counters locally and syncs them in the background, as LiteLLM's
in-memory + Redis cache does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["DeploymentState", "LocalDeploymentState", "Usage"]

_LATENCY_SAMPLES = 10  # LiteLLM's latency strategy averages a deployment's recent calls too


@dataclass(frozen=True, slots=True)
class Usage:
    """A deployment's counts in the current minute."""

    requests: int = 0
    tokens: int = 0
    failures: int = 0


class DeploymentState(Protocol):
    """Counters and cooldowns by deployment id (``model_info.id`` or ``model_name#index``)."""

    def usage(self, deployment: str) -> Usage: ...

    def record_request(self, deployment: str) -> None: ...

    def record_tokens(self, deployment: str, tokens: int) -> None: ...

    def record_failure(self, deployment: str) -> int:
        """Count a failure; returns the failures of the current minute."""
        ...

    def cool_down(self, deployment: str, seconds: float) -> None: ...

    def cooldown_left(self, deployment: str) -> float:
        """Seconds the deployment stays out of rotation (0 when it is in)."""
        ...

    def started(self, deployment: str) -> None: ...

    def finished(self, deployment: str, latency_s: float | None) -> None:
        """A call ended; ``latency_s`` is set for a success (the latency strategy's sample)."""
        ...

    def in_flight(self, deployment: str) -> int: ...

    def mean_latency(self, deployment: str) -> float | None: ...


@dataclass
class _Slot:
    minute: int = -1
    since: float = 0.0  # the window [since, until) of the counts
    until: float = -1.0
    requests: int = 0
    tokens: int = 0
    failures: int = 0
    cooled_until: float = 0.0
    busy: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_SAMPLES))


class LocalDeploymentState:
    """:class:`DeploymentState` in this process's memory (fixed one-minute windows, as LiteLLM's
    per-minute keys)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, _Slot] = {}

    def _slot(self, deployment: str) -> _Slot:
        slot = self._slots.get(deployment)
        if slot is None:
            slot = self._slots[deployment] = _Slot()
        now = self._clock()
        if not slot.since <= now < slot.until:  # a new window: the counts start again
            minute = int(now // 60)
            slot.minute, slot.requests, slot.tokens, slot.failures = minute, 0, 0, 0
            slot.since, slot.until = minute * 60.0, minute * 60.0 + 60.0
        return slot

    def usage(self, deployment: str) -> Usage:
        slot = self._slot(deployment)
        return Usage(slot.requests, slot.tokens, slot.failures)

    def record_request(self, deployment: str) -> None:
        self._slot(deployment).requests += 1

    def record_tokens(self, deployment: str, tokens: int) -> None:
        self._slot(deployment).tokens += max(tokens, 0)

    def record_failure(self, deployment: str) -> int:
        slot = self._slot(deployment)
        slot.failures += 1
        return slot.failures

    def cool_down(self, deployment: str, seconds: float) -> None:
        slot = self._slot(deployment)
        slot.cooled_until = max(slot.cooled_until, self._clock() + seconds)

    def cooldown_left(self, deployment: str) -> float:
        slot = self._slots.get(deployment)
        if slot is None or not slot.cooled_until:  # never cooled (the common case): no clock read
            return 0.0
        return max(slot.cooled_until - self._clock(), 0.0)

    def started(self, deployment: str) -> None:
        self._slot(deployment).busy += 1

    def finished(self, deployment: str, latency_s: float | None) -> None:
        slot = self._slot(deployment)
        slot.busy = max(slot.busy - 1, 0)
        if latency_s is not None:
            slot.latencies.append(latency_s)

    def in_flight(self, deployment: str) -> int:
        slot = self._slots.get(deployment)
        return slot.busy if slot is not None else 0

    def mean_latency(self, deployment: str) -> float | None:
        slot = self._slots.get(deployment)
        if slot is None or not slot.latencies:
            return None
        return sum(slot.latencies) / len(slot.latencies)
