"""Server interceptors: caller authentication (optional), protected mode, OpenTelemetry (when configured)."""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, TracerProvider

from .config import Settings
from .errors import ServiceError, to_status
from .keys.spec import KeyRing
from .protected import REFUSAL, bearer_tokens, is_local_peer, needs_peer_check, parse_peer
from .reasons import Reason

__all__ = ["AuthInterceptor", "ProtectedModeInterceptor", "SpanStatusInterceptor", "build_interceptors"]

_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Requires ``authorization: Bearer <token>`` (or ``x-api-key``) on every RPC except health and
    reflection. ``intercept_service`` sees only the method and metadata, so it answers with a
    rejecting handler of the same kind (unary or stream) as the real one."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if method.startswith(_OPEN_METHODS) or self._authorized(details.invocation_metadata or ()):
            return await continuation(details)
        handler = await continuation(details)
        return _rejecting(handler)

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata:
            token = value.removeprefix("Bearer ").removeprefix("bearer ") if key == "authorization" else value
            if key in ("authorization", "x-api-key"):
                if any(hmac.compare_digest(token.encode(), t) for t in self._tokens):
                    return True
        return False


def _rejecting(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    status = to_status(ServiceError(
        grpc.StatusCode.UNAUTHENTICATED, Reason.API_KEY_INVALID,
        "missing or invalid gateway credentials: send 'authorization: Bearer <token>'",
    ))

    async def reject_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator, matching streaming handlers

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            reject_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        reject_unary,
        request_deserializer=handler.request_deserializer if handler else None,
        response_serializer=handler.response_serializer if handler else None,
    )


class ProtectedModeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Protected mode: every RPC but health and reflection answers only local callers (see ``protected``).
    The caller's address is known only inside the call (``context.peer()``), so the real handler is
    wrapped in one that checks it first, keeping its kind (unary or stream, coroutine or generator)."""

    def __init__(self) -> None:
        # method -> (the service's handler, its wrapper): wrap once per method, not once per call
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or method.startswith(_OPEN_METHODS):
            return handler
        cached = self._wrapped.get(method)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method] = (handler, _peer_checked(handler))
        return cached[1]


async def _require_local_peer(context: grpc.aio.ServicerContext) -> None:
    peer = context.peer()
    if not is_local_peer(peer):
        address = parse_peer(peer).ip
        await context.abort_with_status(to_status(ServiceError(
            grpc.StatusCode.UNAUTHENTICATED, Reason.API_KEY_INVALID, REFUSAL,
            metadata={"protectedMode": "true", "callerAddress": str(address) if address else peer},
        )))


def _checked(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await _require_local_peer(context)
            async for item in behavior(request, context):
                yield item

        return checked_stream

    async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _require_local_peer(context)
        return await behavior(request, context)

    return checked


def _peer_checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_checked(handler.unary_unary), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_checked(handler.unary_stream), **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_checked(handler.stream_unary), **codec)
    return grpc.stream_stream_rpc_method_handler(_checked(handler.stream_stream), **codec)


class SpanStatusInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,unused-ignore]
    """Marks the SERVER span of an aborted RPC with its gRPC status. Goes right after the OTel
    interceptor, whose context wrapper sees ``abort`` but not ``abort_with_status`` (what the service
    uses), so a rejected request would otherwise look OK in the trace."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                _marked_stream(handler.unary_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            _marked_unary(handler.unary_unary), request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _marked_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: Any) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            _mark_aborted(context)
            raise
    return unary


def _marked_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            _mark_aborted(context)
            raise
    return stream


def _mark_aborted(context: Any) -> None:
    span = trace.get_current_span()
    code = context.code()
    if span.is_recording() and isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(Status(StatusCode.ERROR, code.name))


def build_interceptors(settings: Settings, tracer_provider: TracerProvider | None = None,
                       keys: KeyRing | None = None) -> list[grpc.aio.ServerInterceptor]:
    """The access log (opt-in) outermost, so that it sees every status; OTel next (so rejected calls
    are traced too; only with a tracer provider, so that tracing off costs nothing; it continues the
    caller's W3C trace context from the metadata), then auth by admin tokens, or protected mode when
    no caller authentication is configured. With virtual ``keys`` (which take admin tokens too) callers
    are checked inside the service's handlers instead (``keys.KeyGuard``)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.access_log:
        from .access_log import AccessLogInterceptor

        interceptors.append(AccessLogInterceptor(bearer_tokens(settings), keys))
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        interceptors.append(aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider, filter_=filters.negate(filters.health_check())))
        interceptors.append(SpanStatusInterceptor())
    if keys:
        pass  # checked by keys.KeyGuard around the service's handlers: no interceptor on the call path
    elif tokens := bearer_tokens(settings):
        interceptors.append(AuthInterceptor(tokens))
    if needs_peer_check(settings):
        interceptors.append(ProtectedModeInterceptor())
    return interceptors
