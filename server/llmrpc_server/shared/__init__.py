"""State shared by every replica through Redis (``--redis-url``): the response cache, virtual keys'
counters and spend, and the deployments router's cooldowns and usage. Each is a Redis implementation of
the interface its SQLite or in-process version has (``CacheStore``, ``LimitStore``,
``DeploymentState``); ``link`` holds the connection pool, the timeouts and the failure handling.

Import this package only when ``--redis-url`` is set: it imports the ``redis`` client.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..observability.counters import Counters
from .cache import RedisResponseCache
from .deployments import RedisDeploymentState
from .limits import RedisLimitStore
from .link import RedisDown, RedisLink

__all__ = ["RedisDeploymentState", "RedisDown", "RedisLimitStore", "RedisLink", "RedisResponseCache",
           "SharedState", "shared_state"]


@dataclass
class SharedState:
    """The Redis-backed stores of one gateway process (one connection pool)."""

    link: RedisLink
    cache: RedisResponseCache
    router: RedisDeploymentState

    def limits(self) -> RedisLimitStore:
        return RedisLimitStore(self.link)

    async def close(self) -> None:
        await self.router.close()
        await self.link.close()


def shared_state(settings: Settings, counters: Counters) -> SharedState:
    """The stores of ``settings.redis_url`` (call inside the running loop; nothing connects yet)."""
    link = RedisLink(settings.redis_url, settings.redis_timeout, settings.redis_failure == "fail-closed", counters)
    cache = RedisResponseCache(link, int(settings.cache_max_mb * 1024 * 1024))
    router = RedisDeploymentState(link)
    router.start()
    return SharedState(link, cache, router)
