"""The deployments router's state in Redis (``--redis-url``): cooldowns and per-minute usage shared by
every replica, so a deployment one replica saw failing is cooled down for all, and ``usage-based-routing``
sees the requests and tokens of every replica.

The :class:`~llmrpc_server.deployment_state.DeploymentState` methods are synchronous (they run on
every routed call), so this state mirrors Redis: calls update a :class:`LocalDeploymentState` and
queue the deltas, and a background task every ``SYNC_INTERVAL`` pushes them (``HINCRBY`` on the
deployment's minute hash, cooldowns as keys with a ``PX`` TTL) and reads back the totals and the
cooldowns of every deployment seen, in one pipeline. So another replica's counts and cooldowns arrive
at most ``SYNC_INTERVAL`` (plus a Redis round trip) late. Calls in flight (``least-busy``) and
latencies (``latency-based-routing``) stay per replica: they describe this replica's connections.

Redis down: the last totals go stale after a minute, and the replica routes on its own counters,
which it keeps all along; queued deltas of the current minute are pushed once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from ..deployment_state import LocalDeploymentState, Usage
from .link import RedisDown, RedisLink

__all__ = ["SYNC_INTERVAL", "RedisDeploymentState"]

log = logging.getLogger("llmrpc_server.redis")
PREFIX = "llmrpc:deployment:"
SYNC_INTERVAL = 0.2  # seconds between pushes of local deltas and reads of the shared totals
_FIELDS = ("requests", "tokens", "failures")


class RedisDeploymentState:
    """:class:`~llmrpc_server.deployment_state.DeploymentState` shared through Redis."""

    def __init__(self, link: RedisLink, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.local = LocalDeploymentState(monotonic)
        self._clock = clock
        self._monotonic = monotonic
        self._pending: Counter[tuple[int, str, str]] = Counter()  # (minute, deployment, field) -> delta
        self._cool: dict[str, float] = {}  # deployment -> cooldown seconds to push
        self._shared: dict[str, tuple[int, Usage]] = {}  # deployment -> (minute, totals of every replica)
        self._shared_cool: dict[str, float] = {}  # deployment -> monotonic end of the shared cooldown
        self._seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def _minute(self) -> int:
        return int(self._clock() // 60)

    def _add(self, deployment: str, name: str, value: int) -> None:
        self._seen.add(deployment)
        self._pending[(self._minute(), deployment, name)] += value

    # ---- DeploymentState ---------------------------------------------------------------------
    def usage(self, deployment: str) -> Usage:
        self._seen.add(deployment)
        minute = self._minute()
        shared = self._shared.get(deployment)
        if shared is None or shared[0] != minute:
            return self.local.usage(deployment)
        totals = shared[1]
        pending = [self._pending[(minute, deployment, name)] for name in _FIELDS]
        return Usage(totals.requests + pending[0], totals.tokens + pending[1], totals.failures + pending[2])

    def record_request(self, deployment: str) -> None:
        self.local.record_request(deployment)
        self._add(deployment, "requests", 1)

    def record_tokens(self, deployment: str, tokens: int) -> None:
        self.local.record_tokens(deployment, tokens)
        self._add(deployment, "tokens", max(tokens, 0))

    def record_failure(self, deployment: str) -> int:
        self.local.record_failure(deployment)
        self._add(deployment, "failures", 1)
        return self.usage(deployment).failures

    def cool_down(self, deployment: str, seconds: float) -> None:
        self.local.cool_down(deployment, seconds)
        self._seen.add(deployment)
        self._cool[deployment] = max(self._cool.get(deployment, 0.0), seconds)

    def cooldown_left(self, deployment: str) -> float:
        self._seen.add(deployment)
        shared = max(self._shared_cool.get(deployment, 0.0) - self._monotonic(), 0.0)
        return max(self.local.cooldown_left(deployment), shared)

    def started(self, deployment: str) -> None:
        self.local.started(deployment)

    def finished(self, deployment: str, latency_s: float | None) -> None:
        self.local.finished(deployment, latency_s)

    def in_flight(self, deployment: str) -> int:
        return self.local.in_flight(deployment)

    def mean_latency(self, deployment: str) -> float | None:
        return self.local.mean_latency(deployment)

    # ---- synchronisation ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the background sync (inside the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            if self._seen and self.link.up:
                try:
                    await self.sync()
                except RedisDown:
                    pass  # counted and logged by the link; the deltas stay queued
                except Exception:  # the sync must never stop for good
                    log.exception("router state sync failed")

    async def sync(self) -> None:
        """Push the queued deltas and cooldowns, read the totals and cooldowns of every deployment seen."""
        minute = self._minute()
        for stale in [k for k in self._pending if k[0] < minute]:  # a finished minute's counts no longer matter
            del self._pending[stale]
        pending, cool, seen = dict(self._pending), dict(self._cool), sorted(self._seen)

        async def exchange(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for (m, dep, name), value in pending.items():
                    pipe.hincrby(f"{PREFIX}{m}:{dep}", name, value)
                    pipe.expire(f"{PREFIX}{m}:{dep}", 120)
                for dep, seconds in cool.items():
                    ms = max(int(seconds * 1000), 1)
                    pipe.set(f"{PREFIX}cool:{dep}", 1, px=ms, nx=True)
                    pipe.pexpire(f"{PREFIX}cool:{dep}", ms, gt=True)  # the longer cooldown wins (Redis 7)
                for dep in seen:
                    pipe.hmget(f"{PREFIX}{minute}:{dep}", list(_FIELDS))
                    pipe.pttl(f"{PREFIX}cool:{dep}")
                return list(await pipe.execute())

        started = self._monotonic()
        replies = await self.link.call("router", exchange)
        self._pending.subtract(pending)
        self._pending = +self._pending  # drop zeros
        for dep in cool:
            if self._cool.get(dep) == cool[dep]:
                del self._cool[dep]
        reads = replies[len(replies) - 2 * len(seen):]
        for i, dep in enumerate(seen):
            counts, ttl = reads[2 * i], reads[2 * i + 1]
            values = [int(v) if v is not None else 0 for v in counts]
            self._shared[dep] = (minute, Usage(*values))
            self._shared_cool[dep] = started + ttl / 1000 if ttl > 0 else 0.0

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
