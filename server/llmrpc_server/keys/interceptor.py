"""Caller authentication when virtual keys are configured: admin tokens or a virtual key.

Replaces :class:`~llmrpc_server.interceptors.AuthInterceptor` (and, being caller authentication,
lifts protected mode). A caller presents ``authorization: Bearer <key>`` or ``x-api-key: <key>``:
an admin token (``general_settings.master_key``, ``--auth-tokens``) runs with no key and no limits;
a configured, unexpired virtual key runs with :data:`~.admission.CURRENT_KEY` set in the RPC's task;
anything else is UNAUTHENTICATED. Health and reflection stay open.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import grpc

from ..errors import ServiceError, to_status
from ..reasons import Reason
from .admission import CURRENT_KEY
from .spec import KeyRing, VirtualKey

__all__ = ["VirtualKeyInterceptor", "presented_credential"]

_OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_INVALID = "missing or invalid gateway credentials: send 'authorization: Bearer <key>' or 'x-api-key: <key>'"


def presented_credential(metadata: Any) -> str | None:
    """The bearer token or ``x-api-key`` a caller sent, if any."""
    for name, value in metadata:
        if name == "authorization" and isinstance(value, str):
            return value.removeprefix("Bearer ").removeprefix("bearer ").strip()
        if name == "x-api-key" and isinstance(value, str):
            return value.strip()
    return None


class VirtualKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """See the module docstring. Handlers wrapped for a key are made once per (method, key)."""

    def __init__(self, admin_tokens: tuple[str, ...], keys: KeyRing,
                 clock: Callable[[], float] = time.time) -> None:
        self._admin = tuple(t.encode() for t in admin_tokens)
        self._keys = keys
        self._clock = clock
        self._wrapped: dict[tuple[str, str], tuple[grpc.RpcMethodHandler, VirtualKey, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        handler = await continuation(details)
        if handler is None or method.startswith(_OPEN_METHODS):
            return handler
        credential = presented_credential(details.invocation_metadata or ())
        if credential:
            token = credential.encode()
            if any(hmac.compare_digest(token, admin) for admin in self._admin):
                return handler
            key = self._keys.find(credential)
            if key is not None and not key.expired(self._clock()):
                cached = self._wrapped.get((method, key.digest))
                if cached is None or cached[0] is not handler or cached[1] is not key:  # reloaded
                    cached = self._wrapped[(method, key.digest)] = (handler, key, _under_key(handler, key))
                return cached[2]
            if key is not None:
                expired = datetime.fromtimestamp(key.expires or 0, UTC).isoformat()
                return _rejecting(handler, f"key {key.alias!r} expired at {expired}", key.alias)
        return _rejecting(handler, _INVALID, None)


def _with_key(behavior: Callable[..., Any], key: VirtualKey, streaming: bool) -> Callable[..., Any]:
    # Each RPC runs in its own task (its own context copy): setting the key needs no reset.
    if streaming:
        async def keyed_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            CURRENT_KEY.set(key)
            # closed with this generator (a cancelled call), not later by the GC: the key's slot frees at once
            async with aclosing(behavior(request, context)) as items:
                async for item in items:
                    yield item

        return keyed_stream

    async def keyed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        CURRENT_KEY.set(key)
        return await behavior(request, context)

    return keyed


def _under_key(handler: grpc.RpcMethodHandler, key: VirtualKey) -> grpc.RpcMethodHandler:
    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_with_key(handler.unary_unary, key, False), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_with_key(handler.unary_stream, key, True), **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_with_key(handler.stream_unary, key, False), **codec)
    return grpc.stream_stream_rpc_method_handler(_with_key(handler.stream_stream, key, True), **codec)


def _rejecting(handler: grpc.RpcMethodHandler, message: str, alias: str | None) -> grpc.RpcMethodHandler:
    status = to_status(ServiceError(grpc.StatusCode.UNAUTHENTICATED, Reason.API_KEY_INVALID, message,
                                    {"keyAlias": alias} if alias else {}))

    async def reject_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator, matching streaming handlers

    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject_stream, **codec)
    return grpc.unary_unary_rpc_method_handler(reject_unary, **codec)
