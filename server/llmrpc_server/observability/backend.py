"""The observed backend: cost, spans, metrics and callbacks around every call.

Why a :class:`~llmrpc_server.backend.Backend` wrapper: it sits outside the cache, so it sees every
call the caller made (cache hits included) exactly once, with the final answer or error, and the
service and pipeline stay free of telemetry. What it adds per call:

* ``metadata.cost_usd`` (``pricing``; on the usage chunk for streams), always;
* the GenAI attributes of the call on the RPC's SERVER span, and a :class:`CallTrace` in the call's
  context so the pipeline's per-attempt CLIENT spans and retry/error counters find the tracer and
  metrics (``telemetry``) - only when a tracer or meter provider is configured;
* duration, token usage and time-to-first-chunk metrics - only with a meter provider;
* input/success/failure callback records, queued off the request path (``callbacks``).

Streams are observed chunk by chunk: usage, finish reasons and (only when a content-reading
callback is configured) the whole answer, folded by ``accumulate``, are kept as they pass; chunks are
never held back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import usage_pb2
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from ..accumulate import StreamAccumulator
from ..backend import Backend
from ..config import Settings
from ..credentials import caller_credentials
from ..errors import ServiceError
from ..pricing import call_cost
from ..providers.base import ProviderError
from ..redaction import redact
from ..resolve import Call
from ..retry import Deadline
from .callbacks import CallbackDispatcher, CallRecord
from .counters import Counters
from .metrics import GatewayMetrics
from .otel import Telemetry
from .spans import CallTrace, current_call, request_attributes, set_response_attributes

__all__ = ["ObservedBackend"]

_CALL = current_call()


class StreamTally:
    """What a stream has said so far, kept incrementally: the first chunk (id, model, metadata),
    usage and finish reasons; with ``collect_text``, the whole answer folded by
    :class:`~llmrpc_server.accumulate.StreamAccumulator` (as a unary call would have returned it)."""

    __slots__ = ("finish", "first", "folded", "meta", "usage")

    def __init__(self, *, collect_text: bool) -> None:
        self.first: pb.StreamCompleteResponse | None = None
        self.usage: usage_pb2.Usage | None = None
        self.finish: dict[int, str] = {}
        self.folded = StreamAccumulator() if collect_text else None
        self.meta: pb.ResponseMetadata | None = None  # the usage chunk's, with the cost

    @property
    def model(self) -> str:
        return self.first.model if self.first is not None else ""

    def add(self, chunk: pb.StreamCompleteResponse) -> None:
        if self.first is None:
            self.first = chunk
        if self.folded is not None:  # it keeps usage and finish reasons itself
            self.folded.add(chunk)
            return
        if chunk.HasField("usage"):
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish[choice.index] = choice.finish_reason

    def response(self) -> pb.CompleteResponse:
        """The stream as one ``chat.completion`` (messages only if collected), with the metadata of
        the usage chunk (it carries the cost), else of the first chunk."""
        first = self.first or pb.StreamCompleteResponse()
        meta = self.meta or first.metadata
        if self.folded is not None:
            resp = self.folded.build()
            resp.metadata.CopyFrom(meta)
            return resp
        resp = pb.CompleteResponse(id=first.id, object="chat.completion", created=first.created,
                                   model=first.model, metadata=meta)
        if self.usage is not None:
            resp.usage.CopyFrom(self.usage)
        for index in sorted(self.finish):
            resp.choices.add(index=index, finish_reason=self.finish[index]).message.role = "assistant"
        return resp


class _Call:
    """One call in flight: timing, ids, and its trace state."""

    __slots__ = ("_run_id", "key_alias", "model", "monotonic", "req", "span", "started", "stream", "trace")

    def __init__(self, req: pb.CompleteRequest, stream: bool, trace_state: CallTrace | None,
                 key_alias: str | None) -> None:
        self.req = req
        self.stream = stream
        self.model = req.model
        self.trace = trace_state
        self.key_alias = key_alias
        self._run_id = ""
        self.started = time.time()
        self.monotonic = time.perf_counter()
        traced = trace_state is not None and trace_state.tracer is not None
        self.span: Span = trace.get_current_span() if traced else trace.INVALID_SPAN

    @property
    def run_id(self) -> str:
        """The call's id in callbacks and on its span (made on first use: uuid4 is not free)."""
        if not self._run_id:
            self._run_id = str(uuid.uuid4())
        return self._run_id


class ObservedBackend:
    """Wraps the backend the service calls; see the module docstring."""

    def __init__(self, inner: Backend, settings: Settings, telemetry: Telemetry,
                 counters: Counters | None = None, *,
                 cache_stats: Callable[[], Mapping[str, Any]] | None = None,
                 key_alias: Callable[[], str | None] = lambda: None) -> None:
        """``cache_stats``: the response cache's event counts, exported as a metric; ``key_alias``:
        the virtual key the current call runs under (the key layer sits above this one, so it is
        handed in rather than imported)."""
        self._inner = inner
        self._key_alias = key_alias
        provider = telemetry.tracer_provider
        self._tracer = provider.get_tracer("llmrpc_server") if provider is not None else None
        self._metrics = (GatewayMetrics(telemetry.meter_provider, cache_stats=cache_stats, counters=counters)
                         if telemetry.meter_provider is not None else None)
        self.callbacks = CallbackDispatcher.from_settings(settings, self._metrics)
        self._content = settings.otel_record_content
        self._grace = settings.grace
        self._collect = any(self.callbacks.wants(k) for k in ("success", "failure"))
        self._traced = self._tracer is not None or self._metrics is not None
        self._observing = self._traced or self._collect or self.callbacks.wants("input")

    async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse:
        if not self._observing:  # nothing configured: the cost is all there is to add
            resp = await self._inner.complete(call, deadline)
            _set_cost(resp.metadata, resp.model, resp.usage if resp.HasField("usage") else None)
            return resp
        observed = self._begin(call.req, stream=False)
        token = _CALL.set(observed.trace) if observed.trace is not None else None
        try:
            resp = await self._inner.complete(call, deadline)
        except BaseException as exc:
            self._failed(observed, exc)
            raise
        finally:
            if token is not None:
                _CALL.reset(token)
        _set_cost(resp.metadata, resp.model, resp.usage if resp.HasField("usage") else None)
        self._succeeded(observed, resp)
        return resp

    def stream(self, call: Call, deadline: Deadline, *,
               include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
        chunks = self._inner.stream(call, deadline, include_usage=include_usage)
        return self._observed(call.req, chunks) if self._observing else _priced(chunks)

    async def _observed(self, req: pb.CompleteRequest, chunks: AsyncIterator[pb.StreamCompleteResponse],
                        ) -> AsyncIterator[pb.StreamCompleteResponse]:
        call = self._begin(req, stream=True)
        if call.trace is not None:
            _CALL.set(call.trace)  # the handler's own context: no reset needed (see module telemetry)
        tally = StreamTally(collect_text=self._collect)
        try:
            async for chunk in chunks:
                if tally.first is None:
                    self._first_chunk(call)
                tally.add(chunk)
                if chunk.HasField("usage"):
                    chunk = _with_cost(chunk, tally.first)
                    tally.meta = chunk.metadata
                yield chunk
        except BaseException as exc:
            self._failed(call, exc)
            raise
        self._succeeded(call, tally.response())

    async def close(self) -> None:
        """Deliver queued callback events (within the drain grace) and stop the callback workers."""
        await self.callbacks.close(timeout=min(self._grace, 10.0))

    # ---- call lifecycle ------------------------------------------------------------------------
    def _begin(self, req: pb.CompleteRequest, *, stream: bool) -> _Call:
        call = _Call(req, stream, CallTrace(self._tracer, self._metrics) if self._traced else None,
                     self._key_alias())
        if call.span.is_recording():
            attributes: dict[str, Any] = dict(request_attributes(req, req.model))
            attributes.update({"gen_ai.request.stream": stream, "llmrpc.run_id": call.run_id})
            if req.HasField("user"):
                attributes["user.id"] = req.user
            if call.key_alias is not None:
                attributes["metadata.user_api_key_alias"] = call.key_alias  # LiteLLM's attribute name
            if self._content:
                attributes["gen_ai.input.messages"] = _messages_json(req)
            call.span.set_attributes(attributes)
        if self.callbacks.wants("input"):
            self.callbacks.submit(CallRecord("input", call.run_id, req, stream, call.started,
                                             trace_id=_trace_id(call.span), key_alias=call.key_alias))
        return call

    def _first_chunk(self, call: _Call) -> None:
        seconds = time.perf_counter() - call.monotonic
        if call.span.is_recording():
            call.span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)
        if self._metrics is not None:
            self._metrics.first_chunk.record(seconds, _metric_attrs(call, None, None))

    def _succeeded(self, call: _Call, resp: pb.CompleteResponse) -> None:
        meta = resp.metadata
        if call.span.is_recording():
            _span_success(call.span, resp, self._content)
        if self._metrics is not None:
            usage = resp.usage if resp.HasField("usage") else None
            self._metrics.call_done(
                _metric_attrs(call, meta, None), time.perf_counter() - call.monotonic,
                usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None,
                meta.cost_usd if meta.HasField("cost_usd") else None)
        if self.callbacks.wants("success"):
            self.callbacks.submit(CallRecord("success", call.run_id, call.req, call.stream, call.started,
                                             time.time(), resp, trace_id=_trace_id(call.span),
                                             key_alias=call.key_alias))

    def _failed(self, call: _Call, exc: BaseException) -> None:
        kind, code, message = _error_of(exc)
        if call.span.is_recording():
            call.span.set_attribute("error.type", kind)
            if isinstance(exc, ServiceError):
                call.span.set_attribute("rpc.grpc.status_code", exc.code.value[0])
            call.span.set_status(Status(StatusCode.ERROR, kind))
        if self._metrics is not None:
            self._metrics.call_done(_metric_attrs(call, None, kind), time.perf_counter() - call.monotonic,
                                    None, None, None)
        if self.callbacks.wants("failure"):
            # the pipeline already scrubbed upstream errors; this also covers the caller's own
            # credentials in errors raised before any upstream request
            message = redact(message, [v for _, v in caller_credentials(call.req.api_key, call.req.extra_headers)])
            self.callbacks.submit(CallRecord(
                "failure", call.run_id, call.req, call.stream, call.started, time.time(), None,
                error_type=kind, error_message=message, error_code=code, trace_id=_trace_id(call.span),
                key_alias=call.key_alias))


async def _priced(chunks: AsyncIterator[pb.StreamCompleteResponse]) -> AsyncIterator[pb.StreamCompleteResponse]:
    """A stream with only its cost added (nothing else configured)."""
    first = None
    async for chunk in chunks:
        if first is None:
            first = chunk
        yield _with_cost(chunk, first) if chunk.HasField("usage") else chunk


def _with_cost(chunk: pb.StreamCompleteResponse, first: pb.StreamCompleteResponse | None,
               ) -> pb.StreamCompleteResponse:
    """The usage chunk, copied (chunks may be shared with the cache), with the first chunk's metadata
    and the call's cost."""
    out = pb.StreamCompleteResponse()
    out.CopyFrom(chunk)
    if first is not None and first is not chunk:
        out.metadata.CopyFrom(first.metadata)
    _set_cost(out.metadata, (chunk if first is None else first).model, out.usage)
    return out


def _set_cost(meta: pb.ResponseMetadata, model: str, usage: usage_pb2.Usage | None) -> None:
    """``cost_usd`` from the usage; a cache hit keeps the 0 the cache set; unknown prices stay unset."""
    if meta.cache_hit or usage is None:
        return
    cost = call_cost(meta, model, usage)
    if cost is not None:
        meta.cost_usd = cost
    else:
        meta.ClearField("cost_usd")


def _span_success(span: Span, resp: pb.CompleteResponse, content: bool) -> None:
    meta = resp.metadata
    span.set_attribute("gen_ai.provider.name", meta.provider)
    set_response_attributes(span, resp.model, resp.id, resp.usage if resp.HasField("usage") else None)
    reasons = [c.finish_reason for c in resp.choices if c.finish_reason]
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
    span.set_attributes({"llmrpc.cache_hit": meta.cache_hit, "llmrpc.attempts": meta.attempts})
    if meta.HasField("cost_usd"):
        span.set_attribute("llmrpc.cost_usd", meta.cost_usd)
    if content:
        span.set_attribute("gen_ai.output.messages", _outputs_json(resp))


def _metric_attrs(call: _Call, meta: pb.ResponseMetadata | None, error: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": call.model,
                             "gen_ai.request.stream": call.stream}
    if meta is not None:
        attrs.update({"gen_ai.provider.name": meta.provider, "gen_ai.response.model": meta.provider_model,
                      "llmrpc.cache_hit": meta.cache_hit})
    if error is not None:
        attrs["error.type"] = error
    return attrs


def _error_of(exc: BaseException) -> tuple[str, str | None, str]:
    """(error.type, gRPC code name, message) of a failed call; never the request's secrets."""
    if isinstance(exc, ServiceError):
        return exc.reason, exc.code.name, exc.message
    if isinstance(exc, ProviderError):
        return exc.kind.value, None, exc.message
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED", "CANCELLED", "the caller cancelled the call"
    return type(exc).__qualname__, "INTERNAL", f"internal error ({type(exc).__name__})"


def _trace_id(span: Span) -> str | None:
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None


def _messages_json(req: pb.CompleteRequest) -> str:
    """``gen_ai.input.messages`` (semantic-conventions shape: role and parts)."""
    from ..proto_json import dumps
    from ..providers.chat_json import message_to_openai

    return dumps([_semconv_message(message_to_openai(m)) for m in req.messages]).decode()


def _outputs_json(resp: pb.CompleteResponse) -> str:
    from ..proto_json import dumps
    from ..providers.chat_json import message_to_openai

    out = []
    for choice in resp.choices:
        message = _semconv_message(message_to_openai(choice.message))
        message["finish_reason"] = choice.finish_reason
        out.append(message)
    return dumps(out).decode()


def _semconv_message(msg: dict[str, Any]) -> dict[str, Any]:
    content = msg.get("content")
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        parts.extend({"type": "text", "content": p["text"]} if p.get("type") == "text"
                     else {"type": p.get("type")} for p in content)
    for call in msg.get("tool_calls") or ():
        parts.append({"type": "tool_call", "id": call["id"], "name": call["function"]["name"],
                      "arguments": call["function"]["arguments"]})
    if msg.get("tool_call_id"):
        parts = [{"type": "tool_call_response", "id": msg["tool_call_id"], "response": content}]
    return {"role": msg["role"], "parts": parts}
