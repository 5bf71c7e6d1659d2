"""Server interceptors: caller authentication (optional) and OpenTelemetry (when configured)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import TracerProvider

from .config import Settings
from .errors import ServiceError, to_status

__all__ = ["AuthInterceptor", "build_interceptors"]

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
        grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID",
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


def build_interceptors(settings: Settings, tracer_provider: TracerProvider | None = None,
                       ) -> list[grpc.aio.ServerInterceptor]:
    """The access log (opt-in) outermost, so that it sees every status; OTel next (so rejected calls
    are traced too; only with a tracer provider, so that tracing off costs nothing; it continues the
    caller's W3C trace context from the metadata), then auth."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.access_log:
        from .access_log import AccessLogInterceptor

        interceptors.append(AccessLogInterceptor(settings.auth_tokens))
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        from .telemetry import SpanStatusInterceptor

        interceptors.append(aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider, filter_=filters.negate(filters.health_check())))
        interceptors.append(SpanStatusInterceptor())
    if settings.auth_tokens:
        interceptors.append(AuthInterceptor(settings.auth_tokens))
    return interceptors
