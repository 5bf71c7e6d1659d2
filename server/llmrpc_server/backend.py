"""The interface every layer of the backend chain implements.

``app.start_gateway`` composes the chain, outermost first: keys (admission) → observability →
cache → pipeline. Each layer holds the next one as a :class:`Backend` and knows nothing above it.
A call travels down as a :class:`~llmrpc_server.resolve.Call`: the request, and its route resolved
at most once for every layer that needs it (the cache's key, the pipeline's attempts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llmrpc.v1 import completion_service_pb2 as pb

from .resolve import Call
from .retry import Deadline

__all__ = ["Backend"]


class Backend(Protocol):
    """What the service calls. :class:`Pipeline` is the innermost backend; caching and
    observability wrap it with the same interface (``app.start_gateway`` composes them)."""

    async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse: ...

    def stream(self, call: Call, deadline: Deadline, *,
               include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]: ...
