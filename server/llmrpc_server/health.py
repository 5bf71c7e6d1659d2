"""grpc.health.v1 for the gateway: grpc's reference servicer, except that Watch streams end once a
graceful shutdown has told them NOT_SERVING.

A Watch never ends by itself, and ``server.stop(grace)`` waits for every call in flight, so without
this each open watch (gRPC client-side health checking keeps one per connection) holds a draining
server for its whole ``--grace`` after the real calls have finished, and then ends UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

__all__ = ["DrainingHealthServicer"]


class DrainingHealthServicer(HealthServicer):  # type: ignore[misc]  # grpc_health ships no stubs
    """The reference servicer; on graceful shutdown every Watch sends its last status and ends OK."""

    def __init__(self) -> None:
        super().__init__()
        self._draining = asyncio.Event()
        self._open: set[asyncio.Task[Any]] = set()  # the handlers of the watches in flight

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._open.add(handler)
            handler.add_done_callback(self._open.discard)
        watch: asyncio.Future[Any] = asyncio.ensure_future(super().Watch(request, context))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({watch, draining}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        if not self._draining.is_set():
            watch.result()  # the watch ended on its own (the caller left): re-raise what it raised
            return
        # The cancelled watch may not have written the change yet: say it once more, then end.
        status = self._server_status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
        await context.write(health_pb2.HealthCheckResponse(status=status))

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING (for good), then end the watches."""
        await super().enter_graceful_shutdown()
        self._draining.set()

    async def watches_ended(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every watch told of the shutdown has returned, so that
        ``server.stop`` finds them finished: one still writing its last status when the server stops
        would end CANCELLED ("Cancelling all calls") instead of OK."""
        if self._open:
            await asyncio.wait(set(self._open), timeout=timeout)
