"""One Redis connection pool for every shared store, and what happens when Redis is down or slow.

Why a circuit and not just timeouts: every command already has a short ``--redis-timeout``, but with
Redis unreachable each call would still pay it. After a failure the link stays *open* (Redis is not
asked) for ``RETRY_AFTER`` seconds, then the next command tries again; one success closes it. So an
outage costs one timeout per ``RETRY_AFTER`` per replica, and recovery needs no restart.

Every operation that could not use Redis (it failed, or was skipped while the circuit is open) is
counted (``Counters`` name ``redis_failures``, reason = the store: cache, limits, router; exported as
``llmrpc.resilience.events``) and logged as a warning at most once per ``WARN_EVERY`` seconds per
store; the first success after an outage is logged too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from ..observability.counters import REDIS_FAILURES, Counters

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["CLI_TIMEOUT", "RETRY_AFTER", "RedisDown", "RedisLink", "redacted", "run_once"]

log = logging.getLogger("llmrpc_server.redis")
T = TypeVar("T")

RETRY_AFTER = 1.0  # seconds Redis is left alone after a failure before the next command tries it
WARN_EVERY = 30.0  # seconds between warnings about the same store
POOL_SIZE = 64  # connections per replica; a command waits at most --redis-timeout for a free one
HEALTH_CHECK_INTERVAL = 5  # seconds a pooled connection may idle before it is PINGed before use
CLI_TIMEOUT = 5.0  # the `cache` and `keys` commands' per-command timeout (they may scan many keys)


class RedisDown(Exception):
    """Redis did not answer in time (or the link is open after a recent failure)."""


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path if parts.hostname else ''}"


class RedisLink:
    """The client (``redis.asyncio`` with a bounded pool) plus failure accounting. Create it inside the
    running loop: the pool's connections belong to it."""

    def __init__(self, url: str, timeout: float, fail_closed: bool, counters: Counters,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import redis.asyncio as aioredis  # here: without --redis-url the package is never imported
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = redacted(url)
        self.timeout = timeout
        self.fail_closed = fail_closed
        self.counters = counters
        self._clock = clock
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=HEALTH_CHECK_INTERVAL,
            # One immediate retry on a new connection: a pooled socket may predate a Redis restart.
            retry=Retry(NoBackoff(), 1))
        self.client: Redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() disconnects it
        self._open_until = 0.0
        self._down = False
        self._warned: dict[str, float] = {}

    @property
    def up(self) -> bool:
        """False while the circuit is open (a recent failure): callers skip Redis without waiting."""
        return self._clock() >= self._open_until

    async def call(self, store: str, op: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``op(client)`` within the timeout; :class:`RedisDown` (counted, logged) when it fails."""
        from redis.exceptions import RedisError

        if not self.up:
            exc = RedisDown(f"Redis at {self.url} failed less than {RETRY_AFTER:.0f}s ago")
            self._degraded(store, exc)
            raise exc
        try:
            # The socket timeouts bound each read and connect; this bounds the whole command (pool wait,
            # the retry) so a slow Redis costs a caller at most a few timeouts.
            async with asyncio.timeout(self.timeout * 4):
                result = await op(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(store, exc)
            raise RedisDown(f"Redis at {self.url}: {type(exc).__name__}: {exc}") from exc
        if self._down:
            self._down = False
            log.warning("Redis at %s answers again: shared state is back in use", self.url)
        return result

    def failed(self, store: str, exc: BaseException) -> None:
        """Count a failure, open the circuit, warn (rate-limited per store)."""
        self._open_until = self._clock() + RETRY_AFTER
        self._down = True
        self._degraded(store, exc)

    def _degraded(self, store: str, exc: BaseException) -> None:
        self.counters.incr(REDIS_FAILURES, store)
        now = self._clock()
        if now - self._warned.get(store, -WARN_EVERY) >= WARN_EVERY:
            self._warned[store] = now
            what = {"cache": "response cache misses", "router": "router uses this replica's counters",
                    "limits": "key limits refuse calls (fail-closed)" if self.fail_closed
                    else "key limits use this replica's counters (fail-open)"}.get(store, "")
            log.warning("Redis at %s unavailable for the %s (%s; retried every %.0fs): %s: %s",
                        self.url, store, what, RETRY_AFTER, type(exc).__name__, exc)

    async def close(self) -> None:
        await self.client.aclose()


def run_once(url: str, op: Callable[[RedisLink], Awaitable[T]]) -> T:
    """For the CLI: ``op`` on a fresh link in a fresh loop (raises :class:`RedisDown`)."""
    async def main() -> T:
        link = RedisLink(url, CLI_TIMEOUT, True, Counters())
        try:
            return await op(link)
        finally:
            await link.close()

    return asyncio.run(main())
