"""Local callbacks (``llmrpc.success_callback`` / ``llmrpc.failure_callback``) and trace propagation.

LiteLLM users register ``func(kwargs, completion_response, start_time, end_time)`` in
``litellm.success_callback`` / ``failure_callback``; the same lists exist here and run on the
caller's side (the gateway has its own, see the README). They run on a background thread (coroutine
functions as tasks on the caller's loop), so a slow or failing callback never slows or fails the
call; a stream's success fires when it is exhausted, with the rebuilt response. ``kwargs`` never
holds ``api_key`` or ``extra_headers``.

When the caller has OpenTelemetry loaded and a span is active, its W3C trace context goes to the
gateway as gRPC metadata (``traceparent``), so the gateway's spans join the caller's trace.
OpenTelemetry stays optional: nothing is imported unless the caller already imported it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

from ._chunk_builder import stream_chunk_builder
from ._streaming import AsyncCustomStreamWrapper, CustomStreamWrapper
from ._types import ModelResponse

__all__ = ["aobserved", "failure_callback", "observed", "success_callback", "with_trace"]

success_callback: list[Callable[..., Any]] = []
failure_callback: list[Callable[..., Any]] = []

log = logging.getLogger("llmrpc")
_SECRET_PARAMS = ("api_key", "extra_headers", "client")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_tasks: set[asyncio.Task[Any]] = set()
R = TypeVar("R")


def with_trace(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus ``traceparent``/``tracestate`` when an OpenTelemetry span is active."""
    if "opentelemetry.trace" not in sys.modules:
        return metadata
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


def _registered(name: str) -> list[Callable[..., Any]]:
    """The list as the user last set it (``llmrpc.success_callback = [...]`` rebinds the name)."""
    package = sys.modules.get("llmrpc")
    value = getattr(package, name, None) if package is not None else None
    return list(value or ())


class _Watch:
    """One call's callback state: arguments, start time, and whether it already reported."""

    def __init__(self, params: Mapping[str, Any], call_type: str) -> None:
        self.kwargs = {k: v for k, v in params.items() if k not in _SECRET_PARAMS}
        self.kwargs["call_type"] = call_type
        self.kwargs["litellm_params"] = {"metadata": params.get("metadata") or {}}
        self.start = datetime.now()
        self.cost: float | None = None
        self.done = False

    def success(self, response: ModelResponse | None) -> None:
        if self.done:
            return
        self.done = True
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = self.cost if self.cost is not None else hidden.get("response_cost")
        kwargs = {**self.kwargs, "response_cost": cost, "cache_hit": hidden.get("cache_hit")}
        if self.kwargs.get("stream"):
            kwargs["complete_streaming_response"] = response
        _dispatch(_registered("success_callback"), kwargs, response, self.start)

    def failure(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        _dispatch(_registered("failure_callback"), {**self.kwargs, "exception": exc}, None, self.start)

    def note(self, pb: Any) -> None:
        """A raw stream chunk: the gateway puts the call's cost on the usage chunk."""
        if pb.HasField("usage") and pb.metadata.HasField("cost_usd"):
            self.cost = pb.metadata.cost_usd


def _dispatch(callbacks: list[Callable[..., Any]], kwargs: dict[str, Any], response: Any,
              start: datetime) -> None:
    end = datetime.now()
    for callback in callbacks:
        if inspect.iscoroutinefunction(callback) and _running_loop() is not None:
            task = asyncio.get_running_loop().create_task(_guarded_async(callback, kwargs, response, start, end))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)
        else:
            _executor().submit(_guarded, callback, kwargs, response, start, end)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="llmrpc-callbacks")
        return _pool


def _guarded(callback: Callable[..., Any], *args: Any) -> None:
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    except Exception:
        log.warning("llmrpc callback %r failed", callback, exc_info=True)


async def _await(result: Awaitable[Any]) -> None:
    await result


async def _guarded_async(callback: Callable[..., Any], *args: Any) -> None:
    try:
        await callback(*args)
    except Exception:
        log.warning("llmrpc callback %r failed", callback, exc_info=True)


class _WatchedStream(CustomStreamWrapper):
    """A sync stream that reports to its :class:`_Watch` when it ends or fails."""

    _watch: _Watch

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except StopIteration:
            self._watch.success(stream_chunk_builder(self.chunks))
            raise
        except Exception as exc:
            self._watch.failure(exc)
            raise

    def _to_chunk(self, pb: Any) -> Any:
        self._watch.note(pb)
        return super()._to_chunk(pb)


class _WatchedAsyncStream(AsyncCustomStreamWrapper):
    """An async stream that reports to its :class:`_Watch` when it ends or fails."""

    _watch: _Watch

    async def __anext__(self) -> Any:
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            self._watch.success(stream_chunk_builder(self.chunks))
            raise
        except Exception as exc:
            self._watch.failure(exc)
            raise

    def _to_chunk(self, pb: Any) -> Any:
        self._watch.note(pb)
        return super()._to_chunk(pb)


def _watched(result: Any, watch: _Watch) -> Any:
    # The stream wrappers are built inside the client; adopting the watched subclass in place keeps
    # the client's code unchanged (same fields, no slots, so the class swap is safe).
    if isinstance(result, AsyncCustomStreamWrapper):
        result.__class__ = _WatchedAsyncStream
        cast(_WatchedAsyncStream, result)._watch = watch
    elif isinstance(result, CustomStreamWrapper):
        result.__class__ = _WatchedStream
        cast(_WatchedStream, result)._watch = watch
    else:
        watch.success(result)
    return result


def observed(method: Callable[[Any, Mapping[str, Any]], R]) -> Callable[[Any, Mapping[str, Any]], R]:
    """Wrap ``Client._complete`` so registered callbacks see each call (free when none are)."""
    @functools.wraps(method)
    def wrapper(self: Any, params: Mapping[str, Any]) -> R:
        if not (_registered("success_callback") or _registered("failure_callback")):
            return method(self, params)
        watch = _Watch(params, "completion")
        try:
            result = method(self, params)
        except Exception as exc:
            watch.failure(exc)
            raise
        return _watched(result, watch)  # type: ignore[no-any-return]
    return wrapper


def aobserved(method: Callable[[Any, Mapping[str, Any]], Awaitable[R]],
              ) -> Callable[[Any, Mapping[str, Any]], Awaitable[R]]:
    """Wrap ``Client._acomplete`` like :func:`observed`."""
    @functools.wraps(method)
    async def wrapper(self: Any, params: Mapping[str, Any]) -> R:
        if not (_registered("success_callback") or _registered("failure_callback")):
            return await method(self, params)
        watch = _Watch(params, "acompletion")
        try:
            result = await method(self, params)
        except Exception as exc:
            watch.failure(exc)
            raise
        return _watched(result, watch)  # type: ignore[no-any-return]
    return wrapper
