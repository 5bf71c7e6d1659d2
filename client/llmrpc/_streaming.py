"""Stream wrappers: a ``StreamComplete`` call as an iterator of ``ModelResponseStream``.

``CustomStreamWrapper`` (LiteLLM's name) wraps a sync call, ``AsyncCustomStreamWrapper``
a ``grpc.aio`` one. Both cancel the RPC when closed early (``close()``, a ``with``
block, garbage collection), so the gateway stops paying for tokens nobody reads.
A gRPC error mid-stream surfaces as the mapped llmrpc exception; the chunks
already yielded stay yielded.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import grpc

from ._decode import chunk_from_proto, hidden_params
from ._types import ModelResponseStream
from .exceptions import map_rpc_error
from .v1 import completion_service_pb2

__all__ = ["AsyncCustomStreamWrapper", "CustomStreamWrapper"]

_Chunk = completion_service_pb2.StreamCompleteResponse


class _SyncCall(Protocol):
    """What a sync ``StreamComplete`` call (grpc's rendezvous) is used for here."""

    def __next__(self) -> _Chunk: ...

    def cancel(self) -> bool: ...


class _AsyncCall(Protocol):
    """What a ``grpc.aio`` ``StreamComplete`` call is used for here; ``read()`` ends with ``grpc.aio.EOF``."""

    async def read(self) -> _Chunk | object: ...

    def cancel(self) -> bool: ...


_CallT = TypeVar("_CallT", _SyncCall, _AsyncCall)


class _StreamBase(Generic[_CallT]):
    """State shared by the sync and async wrappers."""

    def __init__(self, call: _CallT, *, model: str, target: str) -> None:
        self.model = model
        self.custom_llm_provider: str | None = None
        self.chunks: list[ModelResponseStream] = []  # every chunk yielded, for stream_chunk_builder
        self._hidden_params: dict[str, Any] = {}
        self._call: _CallT = call
        self._target = target
        self._pending: _Chunk | None = None
        self._done = False

    def _to_chunk(self, pb: _Chunk) -> ModelResponseStream:
        # The gateway puts its metadata on the first chunk, and the cost on the usage chunk;
        # every chunk carries a copy of what is known so far.
        if pb.HasField("metadata"):
            if not self._hidden_params:
                self._hidden_params = hidden_params(pb.metadata)
                self.custom_llm_provider = self._hidden_params["custom_llm_provider"]
            elif pb.metadata.HasField("cost_usd"):
                self._hidden_params = {**self._hidden_params, "response_cost": pb.metadata.cost_usd}
        chunk = chunk_from_proto(pb, self._hidden_params)
        self.chunks.append(chunk)
        return chunk

    def _mapped(self, err: grpc.RpcError) -> Exception:
        self._done = True
        return map_rpc_error(err, model=self.model, target=self._target, method="StreamComplete")

    def _cancel(self) -> None:
        if not self._done:
            self._done = True
            self._pending = None
            self._call.cancel()

    def __del__(self) -> None:
        # Best effort at interpreter exit or on a closed event loop.
        with contextlib.suppress(Exception):
            if hasattr(self, "_call"):
                self._cancel()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r} chunks={len(self.chunks)} done={self._done}>"


class CustomStreamWrapper(_StreamBase[_SyncCall]):
    """Iterate to get ``ModelResponseStream`` chunks; ``close()`` cancels the call."""

    def _start(self) -> CustomStreamWrapper:
        # Wait for the first chunk so errors before it raise from completion(),
        # as LiteLLM's do (the upstream status is known by then).
        self._pending = self._pull()
        return self

    def _pull(self) -> _Chunk | None:
        if self._done:
            return None
        try:
            return next(self._call)
        except StopIteration:
            self._done = True
            return None
        except grpc.RpcError as err:
            raise self._mapped(err) from err

    def __iter__(self) -> CustomStreamWrapper:
        return self

    def __next__(self) -> ModelResponseStream:
        pb, self._pending = self._pending, None
        if pb is None:
            pb = self._pull()
        if pb is None:
            raise StopIteration
        return self._to_chunk(pb)

    def close(self) -> None:
        """Cancel the call if it is still running (the gateway sees CANCELLED)."""
        self._cancel()

    def __enter__(self) -> CustomStreamWrapper:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncCustomStreamWrapper(_StreamBase[_AsyncCall]):
    """``async for`` to get ``ModelResponseStream`` chunks; ``aclose()`` cancels the call."""

    async def _start(self) -> AsyncCustomStreamWrapper:
        self._pending = await self._pull()
        return self

    async def _pull(self) -> _Chunk | None:
        if self._done:
            return None
        try:
            pb = await self._call.read()
        except grpc.RpcError as err:
            raise self._mapped(err) from err
        if not isinstance(pb, _Chunk):  # grpc.aio.EOF
            self._done = True
            return None
        return pb

    def __aiter__(self) -> AsyncCustomStreamWrapper:
        return self

    async def __anext__(self) -> ModelResponseStream:
        pb, self._pending = self._pending, None
        if pb is None:
            pb = await self._pull()
        if pb is None:
            raise StopAsyncIteration
        return self._to_chunk(pb)

    async def aclose(self) -> None:
        """Cancel the call if it is still running (the gateway sees CANCELLED)."""
        self._cancel()

    def close(self) -> None:
        self._cancel()

    async def __aenter__(self) -> AsyncCustomStreamWrapper:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cancel()
