"""Local callbacks (LiteLLM's ``input_callback``, ``success_callback``, ``failure_callback`` and
``callbacks`` lists on ``llmrpc``) and trace propagation.

Entries are LiteLLM's: functions (``func(kwargs)`` as a call starts, ``func(kwargs, completion_response,
start_time, end_time)`` when it ends), ``CustomLogger`` instances (``llmrpc.integrations.custom_logger``;
``log_pre_api_call``, ``log_success_event``, ``log_failure_event``, and their ``async_`` forms for
``acompletion()``), and the name ``"lunary"`` (see ``_lunary``). They all run in the caller's process,
off the calling thread: on one background thread, coroutines as tasks on the caller's loop, so a slow
or failing callback never slows or fails the call; a stream's success fires when it is exhausted, with
the rebuilt response. ``kwargs`` never holds ``api_key``, ``extra_headers`` or ``client``. An unknown
name fails the call before anything is sent, naming the known ones.

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
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar, cast

from ._chunk_builder import stream_chunk_builder
from ._lunary import lunary_logger
from ._settings import call_params
from ._streaming import AsyncCustomStreamWrapper, CustomStreamWrapper
from ._types import ModelResponse
from .integrations.custom_logger import CustomLogger

__all__ = [
    "aobserved", "callbacks", "failure_callback", "input_callback", "observed", "success_callback", "with_trace",
]

# LiteLLM's lists: functions, CustomLogger instances, or the names in _NAMED ("lunary").
input_callback: list[Any] = []
success_callback: list[Any] = []
failure_callback: list[Any] = []
callbacks: list[Any] = []

log = logging.getLogger("llmrpc")
_SECRET_PARAMS = ("api_key", "extra_headers", "client")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_tasks: set[asyncio.Task[Any]] = set()
R = TypeVar("R")
# Callback names that run in this process (LiteLLM's string callbacks).
_NAMED: dict[str, Callable[[], Any]] = {"lunary": lunary_logger}
# LiteLLM's per-call callback lists (completion(..., success_callback=[f])): used here, never sent.
_DYNAMIC = ("input_callback", "success_callback", "failure_callback", "callbacks", "logger_fn")
# The call's OpenAI parameters, LiteLLM's kwargs["optional_params"].
_OPTIONAL = (
    "temperature", "top_p", "n", "stream", "stream_options", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format", "seed", "tools",
    "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "reasoning_effort", "thinking",
    "modalities", "audio", "prediction", "web_search_options", "service_tier", "store", "extra_body",
)  # fmt: skip


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


def _registered(name: str) -> list[Any]:
    """The list as the user last set it (``llmrpc.success_callback = [...]`` rebinds the name)."""
    package = sys.modules.get("llmrpc")
    value = getattr(package, name, None) if package is not None else None
    return list(value or ())


def _resolve(entry: Any) -> Any:
    """A list entry as something to call: a function, a logger object, or None (nothing to do)."""
    if isinstance(entry, str):
        if entry in _NAMED:
            return _NAMED[entry]()
        if entry == "cache":  # LiteLLM's Cache registers itself so; the gateway does the caching here
            return None
        raise ValueError(
            f"unknown callback {entry!r}: llmrpc runs {sorted(_NAMED)} in this process, plus functions and "
            "CustomLogger instances; the gateway runs more (its --success-callback: otel, log, lunary)"
        )
    if _is_logger(entry) or callable(entry):
        return entry
    raise TypeError(f"callback {entry!r} is neither a function, a CustomLogger nor a known name")


def _is_logger(entry: Any) -> bool:
    return isinstance(entry, CustomLogger) or (
        not inspect.isroutine(entry) and hasattr(entry, "log_success_event")
    )


def _entries(kind: str, dynamic: Mapping[str, Any]) -> list[Any]:
    """``<kind>_callback`` plus ``callbacks``, the module's then the call's own, resolved, each object once."""
    out: list[Any] = []
    names = (f"{kind}_callback", "callbacks")
    listed = [*_registered(names[0]), *_registered(names[1]), *(dynamic.get(names[0]) or ()),
              *(dynamic.get(names[1]) or ())]
    if kind == "input" and dynamic.get("logger_fn") is not None:  # LiteLLM's logger_fn(model_call_details)
        listed.append(dynamic["logger_fn"])
    for entry in listed:
        resolved = _resolve(entry)
        if resolved is not None and not any(resolved is seen for seen in out):
            out.append(resolved)
    return out


def _any_registered() -> bool:
    return any(_registered(name) for name in ("input_callback", "success_callback", "failure_callback",
                                              "callbacks"))


class _Watch:
    """One call's callback state: arguments, start time, and whether it already reported."""

    def __init__(self, params: Mapping[str, Any], call_type: str, dynamic: Mapping[str, Any]) -> None:
        self.is_async = call_type == "acompletion"
        # Resolved first: an unknown name fails the call before anything is sent.
        self.input = _entries("input", dynamic)
        self.on_success, self.on_failure = _entries("success", dynamic), _entries("failure", dynamic)
        self.start = datetime.now()
        self.kwargs = {k: v for k, v in params.items() if k not in _SECRET_PARAMS}
        self.kwargs.update(call_type=call_type, litellm_call_id=str(uuid.uuid4()), start_time=self.start,
                           optional_params={k: params[k] for k in _OPTIONAL if params.get(k) is not None},
                           litellm_params={"metadata": params.get("metadata") or {}})
        self.cost: float | None = None
        self.done = False

    def begin(self) -> None:
        kwargs = {**self.kwargs, "log_event_type": "pre_api_call"}
        for entry in self.input:
            if _is_logger(entry):
                _call(entry, "log_pre_api_call", self.kwargs.get("model"), self.kwargs.get("messages"), kwargs)
                if self.is_async and not getattr(entry, "inline", False):
                    _call(entry, "async_log_pre_api_call", self.kwargs.get("model"),
                          self.kwargs.get("messages"), kwargs)
            else:
                _call(entry, None, kwargs)

    def success(self, response: ModelResponse | None) -> None:
        if self.done:
            return
        self.done = True
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = self.cost if self.cost is not None else hidden.get("response_cost")
        kwargs = {**self.kwargs, "response_cost": cost, "cache_hit": hidden.get("cache_hit"),
                  "log_event_type": "post_api_call"}
        if self.kwargs.get("stream"):
            kwargs["complete_streaming_response"] = response
        self._report("log_success_event", self.on_success, kwargs, response)

    def failure(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        kwargs = {**self.kwargs, "exception": exc, "log_event_type": "post_api_call",
                  "traceback_exception": "".join(traceback.format_exception(exc))}
        self._report("log_failure_event", self.on_failure, kwargs, None)

    def _report(self, method: str, entries: list[Any], kwargs: dict[str, Any], response: Any) -> None:
        end = datetime.now()
        for entry in self.input:
            if _is_logger(entry) and not getattr(entry, "inline", False):
                _call(entry, "log_post_api_call", kwargs, None, self.start, None)
        for entry in entries:
            if not _is_logger(entry):
                _call(entry, None, kwargs, response, self.start, end)
            elif self.is_async and not getattr(entry, "inline", False):
                _call(entry, f"async_{method}", kwargs, response, self.start, end)
            else:
                _call(entry, method, kwargs, response, self.start, end)

    def note(self, pb: Any) -> None:
        """A raw stream chunk: the gateway puts the call's cost on the usage chunk."""
        if pb.HasField("usage") and pb.metadata.HasField("cost_usd"):
            self.cost = pb.metadata.cost_usd


def _call(entry: Any, method: str | None, *args: Any) -> None:
    """Run one hook off the calling thread: coroutines as tasks on the caller's loop, the rest on the
    callback thread. A logger marked ``inline`` (Lunary: it only queues) runs here, in call order."""
    target = entry if method is None else getattr(entry, method, None)
    if target is None:
        return
    if getattr(entry, "inline", False):
        _guarded(target, *args)
    elif inspect.iscoroutinefunction(target) and _running_loop() is not None:
        task = asyncio.get_running_loop().create_task(_guarded_async(target, *args))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    else:
        _executor().submit(_guarded, target, *args)


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


def _debug(what: str, value: Any) -> None:
    if log.isEnabledFor(logging.DEBUG):
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in _SECRET_PARAMS}
        log.debug("llmrpc %s: %r", what, value)


def observed(method: Callable[[Any, Mapping[str, Any]], R]) -> Callable[[Any, Mapping[str, Any]], R]:
    """Wrap ``Client._complete``: apply the module's settings, then let registered callbacks see the
    call (free when none are)."""
    @functools.wraps(method)
    def wrapper(self: Any, params: Mapping[str, Any]) -> R:
        params, watch = _begin(params, "completion")
        try:
            result = method(self, params)
        except Exception as exc:
            _failed(watch, exc)
            raise
        return _done(result, watch)
    return wrapper


def aobserved(method: Callable[[Any, Mapping[str, Any]], Awaitable[R]],
              ) -> Callable[[Any, Mapping[str, Any]], Awaitable[R]]:
    """Wrap ``Client._acomplete`` like :func:`observed`."""
    @functools.wraps(method)
    async def wrapper(self: Any, params: Mapping[str, Any]) -> R:
        params, watch = _begin(params, "acompletion")
        try:
            result = await method(self, params)
        except Exception as exc:
            _failed(watch, exc)
            raise
        return _done(result, watch)
    return wrapper


def _begin(params: Mapping[str, Any], call_type: str) -> tuple[dict[str, Any], _Watch | None]:
    """The call's parameters with the module settings applied, and its watch (``None`` when no
    callback is registered, globally or for this call)."""
    params = call_params(params, call_type)
    dynamic = {name: params.pop(name) for name in _DYNAMIC if name in params}
    _debug("request", params)
    watch = _Watch(params, call_type, dynamic) if _any_registered() or any(dynamic.values()) else None
    if watch is not None:
        watch.begin()
    return params, watch


def _failed(watch: _Watch | None, exc: Exception) -> None:
    _debug("error", exc)
    if watch is not None:
        watch.failure(exc)


def _done(result: R, watch: _Watch | None) -> R:
    _debug("response", result)
    return result if watch is None else _watched(result, watch)
