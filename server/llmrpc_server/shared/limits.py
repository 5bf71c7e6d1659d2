"""Virtual keys' counters and spend in Redis (``--redis-url``): limits that hold across replicas.

Admission is one Lua script, so checking every limit and counting the call is atomic however many
replicas ask at once: budget first, then ``rpm_limit`` and ``tpm_limit`` (one-minute windows aligned to
the clock minute, keys that expire two minutes later), then ``max_parallel_requests`` (a sorted set of
leases scored by their expiry, so a lease of a crashed replica ends at its call's deadline). The rpm
count is taken by the script itself, so ``rpm_limit: 5`` admits exactly 5 calls per minute across every
replica. Tokens, spend and the end of a lease are written after the call in one ``MULTI``
(``INCRBY``/``HINCRBYFLOAT``/``ZREM``), so concurrent calls never lose an update; as with SQLite, calls
admitted together may overshoot ``tpm_limit`` / ``max_budget`` by what they use.

Redis down or slow (see ``link``): with ``--redis-failure fail-open`` (default) the calls are admitted
by this replica's own counters (an in-memory :class:`SqliteLimitStore`) until Redis answers again, so
each replica enforces the limits on its own share: N replicas may admit up to N times a limit
meanwhile. With ``fail-closed`` admission raises :class:`StoreUnavailable` (the call gets UNAVAILABLE).
Usage that cannot be written to Redis goes to the local counters (and is missing from the shared spend).
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from ..keys.spec import VirtualKey
from ..keys.store import (
    MINUTE,
    SPEND_HISTORY,
    Decision,
    SpendRow,
    SqliteLimitStore,
    StoreUnavailable,
    budget_window,
)
from .link import RedisDown, RedisLink

__all__ = ["RedisLimitStore", "spend_rows"]

PREFIX = "llmrpc:key:"
WINDOW_TTL = 2 * MINUTE  # a minute window's key outlives its minute (then Redis drops it)

# KEYS: spend hash, rpm counter, tpm counter, leases zset.
# ARGV: max_budget, rpm_limit, tpm_limit, max_parallel ("" = none), now, lease, lease_expires, window ttl.
# Returns {limit, current} when refused, {} when admitted (and counted).
_ADMIT = """
local function num(v) return tonumber(v) or 0 end
if ARGV[1] ~= '' then
  local spent = num(redis.call('HGET', KEYS[1], 'spend'))
  if spent >= tonumber(ARGV[1]) then return {'max_budget', tostring(spent)} end
end
if ARGV[2] ~= '' then
  local used = num(redis.call('GET', KEYS[2]))
  if used >= tonumber(ARGV[2]) then return {'rpm_limit', tostring(used)} end
end
if ARGV[3] ~= '' then
  local used = num(redis.call('GET', KEYS[3]))
  if used >= tonumber(ARGV[3]) then return {'tpm_limit', tostring(used)} end
end
if ARGV[4] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
  local running = redis.call('ZCARD', KEYS[4])
  if running >= tonumber(ARGV[4]) then return {'max_parallel_requests', tostring(running)} end
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[6])
  -- the set lives as long as its latest lease (a lease with an earlier deadline must not shorten it)
  local latest = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('EXPIREAT', KEYS[4], math.ceil(tonumber(latest[2])))
end
if ARGV[2] ~= '' then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
return {}
"""


def _opt(value: float | int | None) -> str:
    return "" if value is None else repr(value)


class RedisLimitStore:
    """:class:`~llmrpc_server.keys.store.LimitStore` on Redis, with per-replica counters as the
    fail-open fallback."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.local = SqliteLimitStore(":memory:")  # this replica's counters while Redis is down
        self._local_leases: set[str] = set()
        self._admit_script = link.client.register_script(_ADMIT)

    @staticmethod
    def _keys(key: VirtualKey, now: float) -> tuple[str, str, str, str]:
        minute = math.floor(now / MINUTE) * MINUTE
        start, _ = budget_window(key, now)
        base = PREFIX + key.digest
        return (f"{base}:spend:{start:.0f}", f"{base}:rpm:{minute:.0f}", f"{base}:tpm:{minute:.0f}",
                f"{base}:leases")

    async def admit(self, key: VirtualKey, now: float, lease: str, lease_expires: float) -> Decision:
        keys = self._keys(key, now)
        args: list[str | int] = [_opt(key.max_budget), _opt(key.rpm_limit), _opt(key.tpm_limit),
                                 _opt(key.max_parallel_requests), repr(now), lease or "-", repr(lease_expires),
                                 WINDOW_TTL]

        async def run(client: Redis) -> list[bytes]:
            return list(await self._admit_script(keys=list(keys), args=args, client=client))

        try:
            refused = await self.link.call("limits", run)
        except RedisDown as exc:
            if self.link.fail_closed:
                raise StoreUnavailable(str(exc)) from exc
            decision = await self.local.admit(key, now, lease, lease_expires)
            if decision.admitted and lease:
                self._local_leases.add(lease)
            return decision
        if not refused:
            return Decision(True)
        limit, current = refused[0].decode(), float(refused[1])
        minute = math.floor(now / MINUTE) * MINUTE
        if limit == "max_budget":
            start, length = budget_window(key, now)
            return Decision(False, limit, current, float(key.max_budget or 0), start + length - now if length else None)
        allowed = {"rpm_limit": key.rpm_limit, "tpm_limit": key.tpm_limit,
                   "max_parallel_requests": key.max_parallel_requests}[limit]
        retry = minute + MINUTE - now if limit != "max_parallel_requests" else None
        return Decision(False, limit, current, float(allowed or 0), retry)

    async def record(self, key: VirtualKey, now: float, lease: str, tokens: int, cost: float) -> None:
        if lease in self._local_leases or not self.link.up:
            self._local_leases.discard(lease)
            await self.local.record(key, now, lease, tokens, cost)
            return
        spend, _, tpm, leases = self._keys(key, now)
        _, length = budget_window(key, now)

        async def write(client: Redis) -> None:
            async with client.pipeline(transaction=True) as pipe:
                if key.tpm_limit is not None and tokens > 0:
                    pipe.incrby(tpm, tokens)
                    pipe.expire(tpm, WINDOW_TTL)
                pipe.hincrbyfloat(spend, "spend", max(cost, 0.0))
                pipe.hincrby(spend, "requests", 1)
                pipe.hset(spend, "length", length)  # for `keys spend`
                if length:  # a lifetime budget's spend never expires
                    pipe.expire(spend, length + SPEND_HISTORY)
                if key.max_parallel_requests is not None and lease:
                    pipe.zrem(leases, lease)
                await pipe.execute()

        try:
            await self.link.call("limits", write)
        except RedisDown:
            await self.local.record(key, now, lease, tokens, cost)

    async def release(self, key: VirtualKey, lease: str) -> None:
        if not lease or key.max_parallel_requests is None:
            return
        if lease in self._local_leases:
            self._local_leases.discard(lease)
            await self.local.release(key, lease)
            return
        leases = self._keys(key, 0.0)[3]

        async def drop(client: Redis) -> None:
            await client.zrem(leases, lease)

        try:
            await self.link.call("limits", drop)
        except RedisDown as exc:  # the lease ends at its deadline instead
            raise StoreUnavailable(str(exc)) from exc

    async def spend(self, key: VirtualKey, now: float) -> float:
        spend = self._keys(key, now)[0]

        async def read(client: Redis) -> bytes | str | None:
            value: bytes | str | None = await client.hget(spend, "spend")
            return value

        try:
            value = await self.link.call("limits", read)
        except RedisDown:
            return await self.local.spend(key, now)
        return float(value) if value is not None else 0.0

    def close(self) -> None:
        self.local.close()


async def spend_rows(link: RedisLink) -> list[SpendRow]:
    """Every budget window recorded in Redis, newest first per key (``keys spend``)."""
    async def scan(client: Redis) -> list[SpendRow]:
        rows = []
        async for name in client.scan_iter(match=PREFIX + "*:spend:*", count=1000):
            digest, _, start = name.decode().removeprefix(PREFIX).partition(":spend:")
            spend, requests, length = await client.hmget(name, ["spend", "requests", "length"])
            if spend is not None:
                rows.append(SpendRow(digest, float(start), int(length or 0), float(spend), int(requests or 0)))
        return sorted(rows, key=lambda r: (r.digest, -r.start))

    return await link.call("limits", scan)
