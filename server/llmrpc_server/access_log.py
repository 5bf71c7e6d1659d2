"""The opt-in access log (``--access-log``): one line per RPC, logger ``llmrpc_server.access``.

    rpc=/llmrpc.v1.CompletionService/Complete model=mock/echo key=0 status=OK duration_ms=3.1 attempts=1 cache_hit=false

``key`` is the index of the ``--auth-tokens`` token the caller presented, or the ``key_alias`` of its
virtual key (``-`` without either); it never holds the token. The status comes from the RPC's end
(``context.add_done_callback``), so calls the caller cancelled or whose deadline expired are logged
as CANCELLED / DEADLINE_EXCEEDED even though no handler code ran to the end. Off by default: the
interceptor is only installed when asked.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from .keys.spec import KeyRing

__all__ = ["AccessLogInterceptor", "log"]

log = logging.getLogger("llmrpc_server.access")

_DETAILS_KEY = "grpc-status-details-bin"
_WITH_METADATA = (pb.CompleteResponse, pb.StreamCompleteResponse)


@dataclass(slots=True)
class _Entry:
    """What one RPC's line needs; filled in as the call goes, written when it ends."""

    method: str
    key: str
    start: float
    model: str = "-"
    attempts: int | None = None
    cache_hit: bool | None = None
    cancelled: bool = False  # the handler was cancelled: the caller went away or its deadline passed


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Outermost interceptor (so rejected credentials are logged too). It wraps the handler only to
    see the request's model and the response's metadata; the line is written when the RPC is done."""

    def __init__(self, tokens: tuple[str, ...], keys: KeyRing | None = None) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or "-"
        if handler is None or method.startswith("/grpc.health.v1.Health/"):
            return handler  # probes every few seconds would drown the calls
        key = self._key(details.invocation_metadata or ())
        if handler.response_streaming and not handler.request_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _logged_stream(handler.unary_stream, method, key),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if not handler.response_streaming and not handler.request_streaming:
            return grpc.unary_unary_rpc_method_handler(
                _logged_unary(handler.unary_unary, method, key),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # reflection's bidi stream: not a completion call

    def _key(self, metadata: Any) -> str:
        """Which configured token the caller sent, by index: an alias that is safe to log."""
        for name, value in metadata:
            if name not in ("authorization", "x-api-key") or not isinstance(value, str):
                continue
            token = value.removeprefix("Bearer ").removeprefix("bearer ").encode()
            for index, known in enumerate(self._tokens):
                if hmac.compare_digest(token, known):
                    return str(index)
            key = self._keys.find(token.decode()) if self._keys else None
            if key is not None:
                return _safe(key.alias)
        return "-"


def _logged_unary(behavior: Any, method: str, key: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        entry = _start(method, key, request, context)
        try:
            response = await behavior(request, context)
        except asyncio.CancelledError:
            entry.cancelled = True
            raise
        _note_response(entry, response)
        return response
    return call


def _logged_stream(behavior: Any, method: str, key: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        entry = _start(method, key, request, context)
        try:
            async for chunk in behavior(request, context):
                _note_response(entry, chunk)
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):  # grpc closes the generator of a cancelled stream
            entry.cancelled = True
            raise
    return call


def _start(method: str, key: str, request: Any, context: grpc.aio.ServicerContext) -> _Entry:
    entry = _Entry(method, key, time.perf_counter(), _model(request))
    context.add_done_callback(lambda ctx: _write(entry, ctx))
    return entry


def _model(request: Any) -> str:
    """CompleteRequest and GetSupportedParamsRequest carry ``model``; a stream's is one level down."""
    inner = getattr(request, "request", request)
    model = getattr(inner, "model", "")
    return model if isinstance(model, str) and model else "-"


def _note_response(entry: _Entry, response: Any) -> None:
    # CompleteResponse and StreamCompleteResponse carry ResponseMetadata (a stream: on one chunk).
    if isinstance(response, _WITH_METADATA) and response.HasField("metadata"):
        entry.attempts = response.metadata.attempts
        entry.cache_hit = response.metadata.cache_hit


def _write(entry: _Entry, context: grpc.aio.ServicerContext) -> None:
    try:
        status = _status(entry, context)
        attempts = entry.attempts if entry.attempts is not None else _attempts_from_error(context)
        log.info("rpc=%s model=%s key=%s status=%s duration_ms=%.1f attempts=%s cache_hit=%s",
                 entry.method, _safe(entry.model), entry.key, status,
                 (time.perf_counter() - entry.start) * 1000.0,
                 "-" if attempts is None else attempts,
                 "-" if entry.cache_hit is None else str(entry.cache_hit).lower())
    except Exception:  # a log line must never break the server
        log.exception("access log line failed")


def _status(entry: _Entry, context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if entry.cancelled or context.cancelled():
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "OK"


def _attempts_from_error(context: grpc.aio.ServicerContext) -> int | None:
    """A failed call's attempts travel in its ErrorInfo metadata (the status-details trailer)."""
    for name, value in context.trailing_metadata() or ():
        if name != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.metadata.get("attempts", "").isdigit():
                return int(info.metadata["attempts"])
    return None


def _safe(value: str) -> str:
    """The model is caller input: keep each line one line, one token."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in value[:200]) or "-"
