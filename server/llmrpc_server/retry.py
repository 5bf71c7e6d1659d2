"""Retry timing and the whole-call deadline (pure; the pipeline sleeps).

Backoff follows the OpenAI SDK: honour ``retry-after-ms`` / ``retry-after`` when 0 < v <= 60 s,
else ``min(0.5 * 2**n, 8) * (1 - 0.25 * jitter)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Deadline", "backoff_delay"]

INITIAL_DELAY = 0.5
MAX_DELAY = 8.0
MAX_RETRY_AFTER = 60.0


def backoff_delay(retry_number: int, retry_after: float | None, *,
                  rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry ``retry_number`` (0-based)."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    return float(min(INITIAL_DELAY * 2.0**retry_number, MAX_DELAY) * (1 - 0.25 * rand()))


@dataclass(frozen=True, slots=True)
class Deadline:
    """When the whole call must end, and which bound set it ("caller", "timeout" or "server")."""

    expires_at: float  # time.monotonic() seconds
    source: str

    @classmethod
    def smallest(cls, *, caller_remaining: float | None, timeout: float | None, server_default: float,
                 margin: float = 0.05) -> Deadline:
        """The tightest of the caller's gRPC deadline (minus a margin so we answer before gRPC
        cancels), the request's ``timeout`` and the server default."""
        bounds = [(server_default, "server")]
        if timeout is not None:
            bounds.append((timeout, "timeout"))
        if caller_remaining is not None:
            bounds.append((max(caller_remaining - margin, 0.0), "caller"))
        seconds, source = min(bounds)
        return cls(time.monotonic() + seconds, source)

    def remaining(self) -> float:
        return max(self.expires_at - time.monotonic(), 0.0)
