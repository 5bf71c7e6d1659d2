"""LiteLLM's routing strategies: which of a model group's available deployments takes a call.

The candidates have already been filtered (not cooling down, under their ``rpm``/``tpm``, lowest
``order``); a strategy only ranks them:

- ``simple-shuffle`` (default): random, weighted by ``weight``, else by ``rpm``, else by ``tpm``
  (the first of these any candidate sets), else uniform.
- ``least-busy``: fewest calls in flight (ties random).
- ``latency-based-routing``: lowest mean latency of recent successes; a deployment with no sample
  yet counts as 0, so each one is tried (ties random).
- ``usage-based-routing`` / ``usage-based-routing-v2``: fewest tokens used this minute, then
  fewest requests (ties random).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .deployment_state import DeploymentState

__all__ = ["Rankable", "choose", "shuffle_weights"]

T = TypeVar("T", bound="Rankable")


class Rankable(Protocol):
    """What a strategy reads of a deployment."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float | None: ...

    @property
    def rpm(self) -> int | None: ...

    @property
    def tpm(self) -> int | None: ...


def choose(strategy: str, candidates: Sequence[T], state: DeploymentState,
           rng: random.Random) -> T:
    """The candidate ``strategy`` picks (``candidates`` is not empty)."""
    if len(candidates) == 1:
        return candidates[0]
    if strategy == "least-busy":
        return _lowest(candidates, lambda d: state.in_flight(d.id), rng)
    if strategy == "latency-based-routing":
        return _lowest(candidates, lambda d: state.mean_latency(d.id) or 0.0, rng)
    if strategy in ("usage-based-routing", "usage-based-routing-v2"):
        def used(d: T) -> tuple[int, int]:
            usage = state.usage(d.id)
            return usage.tokens, usage.requests
        return _lowest(candidates, used, rng)
    return _shuffle(candidates, rng)


def _shuffle(candidates: Sequence[T], rng: random.Random) -> T:
    weights = shuffle_weights(candidates)
    if weights is not None:
        return rng.choices(candidates, weights=weights)[0]
    return rng.choice(candidates)


def shuffle_weights(candidates: Sequence[Rankable]) -> list[float] | None:
    """simple-shuffle's weights: by ``weight``, else ``rpm``, else ``tpm`` (the first any candidate
    sets); None when none is set (uniform)."""
    for metric in ("weight", "rpm", "tpm"):
        weights = [float(getattr(d, metric) or 0) for d in candidates]
        if max(weights) > 0:
            return weights
    return None


def _lowest(candidates: Sequence[T], key: Callable[[T], Any], rng: random.Random) -> T:
    keyed = [(key(d), d) for d in candidates]
    best = min(k for k, _ in keyed)
    return rng.choice([d for k, d in keyed if k == best])
