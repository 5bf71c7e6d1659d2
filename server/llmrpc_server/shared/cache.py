"""The response cache in Redis (``--redis-url``): one entry per cache key, shared by every replica.

An entry is a hash (kind, namespace, created, expires, payload) under ``llmrpc:cache:<key>``, written
with its TTL in one ``MULTI`` (``HSET`` + ``PEXPIRE``), so Redis expires it by itself. The keys,
``ttl``/``s-maxage``/``no-cache``/``no-store`` and the stored payloads (a response, or a stream's
chunks replayed as today) are the caching backend's, unchanged.

The size bound is Redis's: ``maxmemory`` with an LRU policy evicts the least recently used entries
(see the README's "Deploying"); entries larger than ``--cache-max-mb`` are not stored at all.

Unlike the SQLite cache there is no in-process memo: every hit is one ``HMGET`` round trip, so a
replaced entry or a ``FLUSHDB`` is seen at once by every replica. Coalescing of identical calls in
flight stays within a replica (the caching backend's); across replicas the second one is a miss until
the first one has stored its answer.

Redis down or slow: a lookup is a miss and a store is skipped (counted as ``errors``), see ``link``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

from redis.asyncio import Redis

from ..cache.store import CacheEntry
from ..config import Settings
from .link import RedisDown, RedisLink, run_once

__all__ = ["RedisResponseCache", "redis_cache_command", "redis_cache_stats", "redis_clear"]

PREFIX = "llmrpc:cache:"
_FIELDS = ("kind", "created", "expires", "payload")


class RedisResponseCache:
    """:class:`~llmrpc_server.cache.store.CacheStore` on Redis."""

    def __init__(self, link: RedisLink, max_bytes: int) -> None:
        self.link = link
        self.max_bytes = max_bytes
        self.totals: Counter[str] = Counter()
        self._writes: set[asyncio.Task[None]] = set()
        self._closed = False

    async def get(self, key: str, now: float, max_age: float | None) -> CacheEntry | None:
        entry = None if self._closed else await self._read(key)
        if entry is not None and (entry.expires <= now or (max_age is not None and now - entry.created > max_age)):
            entry = None
        self.totals["hits" if entry is not None else "misses"] += 1
        return entry

    async def _read(self, key: str) -> CacheEntry | None:
        async def read(client: Redis) -> list[Any]:
            return list(await client.hmget(PREFIX + key, list(_FIELDS)))

        try:
            kind, created, expires, payload = await self.link.call("cache", read)
        except RedisDown:
            self.totals["errors"] += 1
            return None
        if kind is None or created is None or expires is None or payload is None:
            return None
        return CacheEntry(kind.decode(), bytes(payload), float(created), float(expires))

    def put(self, key: str, namespace: str, kind: str, payload: bytes, now: float, ttl: float) -> None:
        if self._closed or ttl <= 0 or len(payload) > self.max_bytes:
            return
        task = asyncio.get_running_loop().create_task(self._write(key, namespace, kind, payload, now, ttl))
        self._writes.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, namespace: str, kind: str, payload: bytes, now: float, ttl: float) -> None:
        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(PREFIX + key, mapping={"kind": kind, "namespace": namespace, "created": repr(now),
                                                 "expires": repr(now + ttl), "payload": payload})
                pipe.pexpire(PREFIX + key, max(int(ttl * 1000), 1))
                await pipe.execute()

        try:
            await self.link.call("cache", write)
        except RedisDown:
            self.totals["errors"] += 1
            return
        self.totals["stores"] += 1

    async def flush(self) -> None:
        if self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def count(self, name: str) -> None:
        self.totals[name] += 1

    def stats(self) -> dict[str, int]:
        # evictions: Redis's own (INFO stats evicted_keys), not seen by a replica.
        return {name: self.totals[name] for name in ("hits", "misses", "stores", "evictions", "coalesced", "errors")}

    async def close(self) -> None:
        await self.flush()
        self._closed = True


async def redis_cache_stats(link: RedisLink) -> dict[str, Any]:
    """``cache stats`` with ``--redis-url``: entries, and Redis's memory bound and eviction counters."""
    async def read(client: Redis) -> dict[str, Any]:
        entries = 0
        async for _ in client.scan_iter(match=PREFIX + "*", count=1000):
            entries += 1
        memory, stats = await client.info("memory"), await client.info("stats")
        return {"redis": link.url, "entries": entries, "used_memory": memory.get("used_memory"),
                "maxmemory": memory.get("maxmemory"), "maxmemory_policy": memory.get("maxmemory_policy"),
                "evicted_keys": stats.get("evicted_keys"), "expired_keys": stats.get("expired_keys")}

    return await link.call("cache", read)


async def redis_clear(link: RedisLink) -> int:
    """``cache clear`` with ``--redis-url``: delete every cache entry (``SCAN`` + ``UNLINK``)."""
    async def clear(client: Redis) -> int:
        deleted, batch = 0, []
        async for name in client.scan_iter(match=PREFIX + "*", count=1000):
            batch.append(name)
            if len(batch) >= 500:
                deleted += await client.unlink(*batch)
                batch = []
        if batch:
            deleted += await client.unlink(*batch)
        return deleted

    return await link.call("cache", clear)


def redis_cache_command(settings: Settings, action: str) -> int:
    """``llmrpc-server cache stats|clear|prune`` on the Redis cache: JSON on stdout."""
    try:
        if action == "stats":
            result: dict[str, Any] = run_once(settings.redis_url, redis_cache_stats)
        elif action == "clear":
            result = {"cleared": run_once(settings.redis_url, redis_clear)}
        elif action == "prune":  # nothing to do: Redis expires entries at their TTL and evicts at maxmemory
            result = {"expired": 0, "evicted": 0}
        else:
            print(f"llmrpc-server: unknown cache action {action!r} (stats, clear or prune)", file=sys.stderr)
            return 2
    except RedisDown as exc:
        print(f"llmrpc-server: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0
