"""Caller authentication when virtual keys are configured: admin tokens or a virtual key.

Replaces :class:`~llmrpc_server.interceptors.AuthInterceptor` (and, being caller authentication,
lifts protected mode). A caller presents ``authorization: Bearer <key>`` or ``x-api-key: <key>``:
an admin token (``general_settings.master_key``, ``--auth-tokens``) runs with no key and no limits;
a configured, unexpired virtual key runs with :data:`~.admission.CURRENT_KEY` set in the RPC's task;
anything else is UNAUTHENTICATED.

Why a handler wrapper and not a ``grpc.aio`` server interceptor: with any interceptor installed,
grpc.aio runs its interceptor chain (coroutines and a handler lookup through them) on every call;
:meth:`KeyGuard.wrap` wraps the service's handlers once, when they are registered, and the check
reads the metadata inside the call. Health and reflection are registered apart and stay open.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import grpc

from ..errors import ServiceError, to_status
from ..reasons import Reason
from .admission import CURRENT_KEY
from .spec import KeyRing, VirtualKey

__all__ = ["KeyGuard", "presented_credential"]

_INVALID = "missing or invalid gateway credentials: send 'authorization: Bearer <key>' or 'x-api-key: <key>'"
_ADMIN = object()  # the caller is an admin: no key, no limits


def presented_credential(metadata: Any) -> str | None:
    """The bearer token or ``x-api-key`` a caller sent, if any."""
    for name, value in metadata:
        if name == "authorization" and isinstance(value, str):
            return value.removeprefix("Bearer ").removeprefix("bearer ").strip()
        if name == "x-api-key" and isinstance(value, str):
            return value.strip()
    return None


class KeyGuard:
    """See the module docstring. ``keys`` is the live ring (a reload changes it in place)."""

    def __init__(self, admin_tokens: tuple[str, ...], keys: KeyRing,
                 clock: Callable[[], float] = time.time) -> None:
        self._admin = tuple(t.encode() for t in admin_tokens)
        self._keys = keys
        self._clock = clock

    def caller(self, metadata: Any) -> VirtualKey | object:
        """The caller's key, or ``_ADMIN``; UNAUTHENTICATED (a :class:`ServiceError`) for anyone else."""
        credential = presented_credential(metadata or ())
        if credential:
            token = credential.encode()
            for admin in self._admin:
                if hmac.compare_digest(token, admin):
                    return _ADMIN
            key = self._keys.find(credential)
            if key is not None and (key.expires is None or not key.expired(self._clock())):
                return key
            if key is not None:
                expired = datetime.fromtimestamp(key.expires or 0, UTC).isoformat()
                raise _unauthenticated(f"key {key.alias!r} expired at {expired}", key.alias)
        raise _unauthenticated(_INVALID, None)

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` checking its caller first, keeping its kind (unary or stream) and codec."""
        codec = {"request_deserializer": handler.request_deserializer,
                 "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary), **codec)
        return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream), **codec)

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        caller = self.caller

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                key = caller(context.invocation_metadata())
            except ServiceError as err:
                await context.abort_with_status(to_status(err))
            if key is not _ADMIN:  # each RPC runs in its own task (its own context copy): no reset
                CURRENT_KEY.set(key)  # type: ignore[arg-type]
            return await behavior(request, context)

        return guarded

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        caller = self.caller

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                key = caller(context.invocation_metadata())
            except ServiceError as err:
                await context.abort_with_status(to_status(err))
            if key is not _ADMIN:
                CURRENT_KEY.set(key)  # type: ignore[arg-type]
            # closed with this generator (a cancelled call), not later by the GC: the key's slot frees at once
            async with aclosing(behavior(request, context)) as items:
                async for item in items:
                    yield item

        return guarded


def _unauthenticated(message: str, alias: str | None) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, Reason.API_KEY_INVALID, message,
                        {"keyAlias": alias} if alias else {})
