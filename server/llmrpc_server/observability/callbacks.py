"""LiteLLM-style ``input_callback`` / ``success_callback`` / ``failure_callback`` on the server.

Why a queue per handler: a callback is somebody else's code or somebody else's service (Lunary). It
must never slow or fail a call, so the request path only appends a :class:`CallRecord` (references,
no copying or serialising) to each interested handler's bounded queue, or counts a drop when the
queue is full. A worker task per handler turns records into payloads and runs the handler: coroutine
functions on the loop with a timeout, plain functions on the handler's own thread, so a handler that
sleeps or hangs stalls only its own queue. Failures and drops are counted (``failures``/``dropped``
and the ``llmrpc.callback.*`` metrics).

Built-in names: ``otel`` (OpenTelemetry export, see ``observability.otel``; nothing is queued), ``log`` (one
JSON line per event on stdout, logger ``llmrpc_server.calls``), ``lunary`` (Lunary's ingestion API,
``LUNARY_PUBLIC_KEY``, ``LUNARY_API_URL``). Anything else is an import path (``pkg.mod:func`` or
``pkg.mod.func``) of ``func(kwargs, completion_response, start_time, end_time)`` as in LiteLLM.
Payloads never contain API keys, extra headers or extra body.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from google.protobuf import json_format
from llmrpc.v1 import completion_service_pb2 as pb

from ..config import Settings
from ..egress import proxies_from_env
from ..executor import Executor
from ..proto_json import dumps, has_field, struct_to_dict
from ..providers.base import HttpCall
from ..providers.chat_json import message_to_openai
from .metrics import GatewayMetrics

__all__ = ["CallRecord", "CallbackDispatcher", "LogHandler", "LunaryHandler", "payload", "response_dict"]

log = logging.getLogger("llmrpc_server")
_HANDLER_TIMEOUT = 30.0
_KINDS = ("input", "success", "failure")
_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "seed", "presence_penalty",
           "frequency_penalty", "reasoning_effort", "service_tier", "parallel_tool_calls")


@dataclass(slots=True, eq=False)
class CallRecord:
    """One callback event. Built on the request path from references only; read on the loop later."""

    kind: str  # "input", "success" or "failure"
    run_id: str
    request: pb.CompleteRequest
    stream: bool
    started: float  # unix seconds
    ended: float | None = None
    response: pb.CompleteResponse | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    trace_id: str | None = None
    key_alias: str | None = None  # the caller's virtual key (its alias: never the key)
    _payloads: dict[bool, dict[str, Any]] = field(default_factory=dict)

    def payload(self, content: bool) -> dict[str, Any]:
        """LiteLLM's callback ``kwargs`` for this event (computed once per shape)."""
        if content not in self._payloads:
            self._payloads[content] = payload(self, content=content)
        return self._payloads[content]


def payload(record: CallRecord, *, content: bool) -> dict[str, Any]:
    """``kwargs`` as LiteLLM's custom callbacks get them, minus anything secret."""
    req = record.request
    metadata = struct_to_dict(req.metadata) if req.HasField("metadata") else {}
    # LiteLLM's proxy puts the caller's key alias here; a caller's own value could impersonate a key
    metadata.pop("user_api_key_alias", None)
    if record.key_alias is not None:
        metadata["user_api_key_alias"] = record.key_alias
    meta = record.response.metadata if record.response is not None else None
    out: dict[str, Any] = {
        "event": record.kind, "run_id": record.run_id, "call_type": "completion", "model": req.model,
        "stream": record.stream, "user": req.user if req.HasField("user") else None, "metadata": metadata,
        "litellm_params": {"metadata": metadata}, "trace_id": record.trace_id,
        "optional_params": {p: getattr(req, p) for p in _PARAMS if has_field(req, p)},
        "start_time": _iso(record.started), "end_time": _iso(record.ended) if record.ended else None,
    }
    if content:
        out["messages"] = [message_to_openai(m) for m in req.messages]
    if meta is not None:
        out.update({
            "custom_llm_provider": meta.provider, "provider_model": meta.provider_model,
            "cache_hit": meta.cache_hit, "attempts": meta.attempts, "api_base": meta.api_base or None,
            "response_cost": meta.cost_usd if meta.HasField("cost_usd") else None,
        })
    if record.kind == "failure":
        out["exception"] = {"type": record.error_type, "code": record.error_code,
                            "message": record.error_message}
    return out


def response_dict(resp: pb.CompleteResponse, *, content: bool) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` dict (message content only when ``content``)."""
    choices = []
    for choice in resp.choices:
        item: dict[str, Any] = {"index": choice.index, "finish_reason": choice.finish_reason or None}
        if content:
            item["message"] = message_to_openai(choice.message)
        choices.append(item)
    out: dict[str, Any] = {"id": resp.id, "object": "chat.completion", "created": resp.created,
                           "model": resp.model, "choices": choices}
    if resp.HasField("usage"):
        out["usage"] = json_format.MessageToDict(resp.usage, preserving_proto_field_name=True)
    return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class Handler(Protocol):
    """A callback target: gets batches of records of the kinds it was registered for."""

    name: str
    batch_size: int

    async def __call__(self, records: Sequence[CallRecord]) -> None: ...

    async def close(self) -> None: ...


class LogHandler:
    """``log``: one JSON line per event on stdout (logger ``llmrpc_server.calls``, no prefix)."""

    name = "log"
    batch_size = 100

    def __init__(self, content: bool) -> None:
        self._content = content
        self.logger = logging.getLogger("llmrpc_server.calls")
        if not self.logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger.addHandler(handler)
            self.logger.setLevel(logging.INFO)
            self.logger.propagate = False

    async def __call__(self, records: Sequence[CallRecord]) -> None:
        for record in records:
            line = record.payload(self._content).copy()
            line.pop("litellm_params", None)
            if record.response is not None:
                line["response"] = response_dict(record.response, content=self._content)
            self.logger.info(dumps(line).decode())

    async def close(self) -> None:
        return None


class FunctionHandler:
    """An imported ``func(kwargs, completion_response, start_time, end_time)``; plain functions run
    on a thread of their own, coroutine functions on the loop."""

    batch_size = 1

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        self.name = name
        self._func = func
        self._async = inspect.iscoroutinefunction(func)
        self._pool = None if self._async else ThreadPoolExecutor(1, thread_name_prefix=f"callback-{name}")

    async def __call__(self, records: Sequence[CallRecord]) -> None:
        for record in records:
            args = _function_args(record)
            if self._pool is None:
                await self._func(*args)
            else:
                await asyncio.get_running_loop().run_in_executor(self._pool, self._func, *args)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _function_args(record: CallRecord) -> tuple[Any, ...]:
    response = response_dict(record.response, content=True) if record.response is not None else None
    ended = datetime.fromtimestamp(record.ended, UTC) if record.ended else None
    return record.payload(True), response, datetime.fromtimestamp(record.started, UTC), ended


class LunaryHandler:
    """``lunary``: Lunary's ingestion API (``POST {LUNARY_API_URL}/v1/runs/ingest``), the endpoint its
    SDKs batch to, called with the gateway's own HTTP client: no SDK threads or global state per process.
    Without ``input_callback=lunary`` the ``start`` event is sent together with ``end``/``error``."""

    name = "lunary"
    batch_size = 50

    def __init__(self, env: Mapping[str, str], *, sends_start: bool) -> None:
        key = env.get("LUNARY_PUBLIC_KEY") or env.get("LUNARY_APP_ID")
        if not key:
            raise ValueError("the lunary callback needs LUNARY_PUBLIC_KEY")
        self._key = key
        self._url = (env.get("LUNARY_API_URL") or "https://api.lunary.ai").rstrip("/") + "/v1/runs/ingest"
        self._sends_start = sends_start
        self._proxies = proxies_from_env(env)  # the same egress proxy as upstream calls
        self._http: Executor | None = None

    async def __call__(self, records: Sequence[CallRecord]) -> None:
        events = [event for record in records for event in self.events(record)]
        if not events:
            return
        if self._http is None:  # created on first use, inside the loop that runs the callbacks
            self._http = Executor(max_connections=4, proxies=self._proxies)
            await self._http.start()
        headers = {"authorization": f"Bearer {self._key}", "content-type": "application/json"}
        reply = await self._http.send(HttpCall(self._url, headers, {"events": events}), timeout=_HANDLER_TIMEOUT)
        if reply.status >= 300:
            raise RuntimeError(f"lunary ingestion answered HTTP {reply.status}")

    def events(self, record: CallRecord) -> list[dict[str, Any]]:
        """Lunary ``llm`` run events for one record: start, end or error."""
        data = record.payload(True)
        meta = data["metadata"]
        base = {"type": "llm", "runId": record.run_id, "parentRunId": meta.get("parent_run_id"),
                "name": record.request.model, "userId": data["user"] or meta.get("user_id"),
                "tags": meta.get("tags"), "runtime": "llmrpc"}
        start = {**base, "event": "start", "timestamp": data["start_time"], "input": data["messages"],
                 "params": data["optional_params"], "metadata": meta or None}
        if record.kind == "input":
            return [start]
        out = [] if self._sends_start else [start]
        end = {**base, "timestamp": data["end_time"]}
        if record.kind == "failure":
            out.append({**end, "event": "error", "error": {"message": data["exception"]["message"],
                                                           "stack": data["exception"]["type"]}})
        elif record.response is not None:
            out.append({**end, "event": "end", **_lunary_output(record.response)})
        return out

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _lunary_output(resp: pb.CompleteResponse) -> dict[str, Any]:
    output = message_to_openai(resp.choices[0].message) if resp.choices else None
    usage = {"prompt": resp.usage.prompt_tokens, "completion": resp.usage.completion_tokens} \
        if resp.HasField("usage") else None
    meta = resp.metadata
    extra = {"cost": meta.cost_usd} if meta.HasField("cost_usd") else {}
    return {"output": output, "tokensUsage": usage, **extra}


@dataclass(eq=False)
class _Slot:
    handler: Handler
    kinds: frozenset[str]
    queue: asyncio.Queue[CallRecord]
    task: asyncio.Task[None] | None = None


class CallbackDispatcher:
    """Routes call records to handlers through bounded queues; see the module docstring."""

    def __init__(self, handlers: Sequence[tuple[Handler, frozenset[str]]], *, queue_size: int,
                 metrics: GatewayMetrics | None = None) -> None:
        self._slots = [_Slot(h, kinds, asyncio.Queue(max(queue_size, 1))) for h, kinds in handlers]
        self._by_kind = {k: [s for s in self._slots if k in s.kinds] for k in _KINDS}
        self._metrics = metrics
        self.failures: dict[str, int] = {s.handler.name: 0 for s in self._slots}
        self.dropped: dict[str, int] = {s.handler.name: 0 for s in self._slots}

    @classmethod
    def from_settings(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> CallbackDispatcher:
        """Handlers for the ``*_callback`` settings (``otel`` needs none: it is the SDK setup)."""
        lists = {"input": settings.input_callback, "success": settings.success_callback,
                 "failure": settings.failure_callback}
        kinds: dict[str, set[str]] = {}
        for kind, names in lists.items():
            for name in (n.strip() for n in names):
                if name and name != "otel":
                    kinds.setdefault(name, set()).add(kind)
        handlers = [(_make_handler(name, ks, settings), frozenset(ks)) for name, ks in kinds.items()]
        return cls(handlers, queue_size=settings.callback_queue_size, metrics=metrics)

    def wants(self, kind: str) -> bool:
        """Whether any handler takes ``kind`` events (so the caller can skip building them)."""
        return bool(self._by_kind[kind])

    def submit(self, record: CallRecord) -> None:
        """Queue ``record`` for its handlers without waiting; a full queue drops and counts it."""
        for slot in self._by_kind[record.kind]:
            if slot.task is None:
                slot.task = asyncio.get_running_loop().create_task(self._work(slot))
            try:
                slot.queue.put_nowait(record)
            except asyncio.QueueFull:
                self._count(self.dropped, slot.handler.name, 1)

    async def _work(self, slot: _Slot) -> None:
        while True:
            batch = [await slot.queue.get()]
            while len(batch) < slot.handler.batch_size and not slot.queue.empty():
                batch.append(slot.queue.get_nowait())
            try:
                await asyncio.wait_for(slot.handler(batch), _HANDLER_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._count(self.failures, slot.handler.name, len(batch))
                log.warning("callback %s failed (%s); %d event(s) lost", slot.handler.name,
                            type(exc).__name__, len(batch))
            finally:
                for _ in batch:
                    slot.queue.task_done()

    def _count(self, counts: dict[str, int], name: str, n: int) -> None:
        counts[name] += n
        if self._metrics is not None:
            metrics = self._metrics
            counter = metrics.callback_dropped if counts is self.dropped else metrics.callback_failures
            counter.add(n, {"llmrpc.callback": name})

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout`` seconds), then stop the workers and handlers."""
        joins = [asyncio.ensure_future(slot.queue.join()) for slot in self._slots if slot.task is not None]
        if joins:
            _, late = await asyncio.wait(joins, timeout=timeout)
            for join in late:
                join.cancel()
        for slot in self._slots:
            if slot.task is not None:
                slot.task.cancel()
                await asyncio.gather(slot.task, return_exceptions=True)
            await slot.handler.close()


def _make_handler(name: str, kinds: set[str], settings: Settings) -> Handler:
    if name == "log":
        return LogHandler(settings.otel_record_content)
    if name == "lunary":
        return LunaryHandler(settings.env, sends_start="input" in kinds)
    return FunctionHandler(name, _import(name))


def _import(path: str) -> Callable[..., Any]:
    """``pkg.mod:attr`` or ``pkg.mod.attr`` -> the callable, or a ValueError naming the setting."""
    module, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not sep or not module or not attr:
        raise ValueError(f"callback {path!r}: neither a built-in (otel, log, lunary) nor 'module:function'")
    try:
        target: Any = importlib.import_module(module)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"callback {path!r}: cannot import it ({exc})") from exc
    if not callable(target):
        raise ValueError(f"callback {path!r} is not callable")
    return target  # type: ignore[no-any-return]
