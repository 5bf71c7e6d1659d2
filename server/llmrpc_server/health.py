"""grpc.health.v1 for the gateway: grpc's reference servicer, except that Watch streams end once a
graceful shutdown has told them NOT_SERVING.

A Watch never ends by itself, and ``server.stop(grace)`` waits for every call in flight, so without
this each open watch (gRPC client-side health checking keeps one per connection) holds a draining
server for its whole ``--grace`` after the real calls have finished, and then ends UNAVAILABLE.

Watch is written here rather than wrapped around the reference one: ending that one means
cancelling it, and a cancel that lands inside its ``context.write`` leaves the call unable to send
anything more, so the stream hung until the grace period ran out (seen on a loaded machine).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["DrainingHealthServicer"]


class DrainingHealthServicer(HealthServicer):  # type: ignore[misc]  # grpc_health ships no stubs
    """The reference servicer; on graceful shutdown every Watch sends its last status and ends OK."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Condition()  # notified on every status change and on shutdown
        self._draining = False
        self._open: set[asyncio.Task[Any]] = set()  # the handlers of the watches in flight

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        await super().set(service, status)
        await self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING (for good), then end the watches."""
        await super().enter_graceful_shutdown()
        self._draining = True
        await self._notify()

    async def watches_ended(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every watch told of the shutdown has returned, so that
        ``server.stop`` finds them finished rather than cancelling them."""
        if self._open:
            await asyncio.wait(set(self._open), timeout=timeout)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._open.add(handler)
            handler.add_done_callback(self._open.discard)
        last: int | None = None
        while True:
            async with self._changed:
                status = self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                if status == last and not self._draining:
                    await self._changed.wait()
                    continue
                draining = self._draining
            if status != last:  # written outside the lock: a slow reader must not block set()
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if draining:
                return

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
