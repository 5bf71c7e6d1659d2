"""OpenTelemetry spans for upstream attempts (GenAI semantic conventions) and the per-call state
that ties them to the call.

Why a context variable: the pipeline opens one CLIENT span ``chat {model}`` per upstream attempt, but
the tracer and metrics belong to the gateway (``ObservedBackend``), not to the pipeline. The observed
backend puts a :class:`CallTrace` in the call's context and :func:`attempt_span` picks it up, so
several gateways with different tracer providers can share a process (the tests do) and the
pipeline needs no telemetry arguments. With no call trace or no tracer, :func:`attempt_span` opens
no span at all. Prompts and completions are recorded only when the operator turns
``otel_record_content`` on; API keys and extra headers never.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from urllib.parse import urlsplit

from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import usage_pb2
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode, Tracer

from ..proto_json import has_field
from ..providers.base import ProviderError, Target
from .metrics import GatewayMetrics

__all__ = [
    "AttemptSpan", "CallTrace", "attempt_span", "current_call",
    "record_chunk", "record_response", "request_attributes", "server_attributes", "set_response_attributes",
]

Attributes = dict[str, str | int | float | bool | list[str]]

_REQUEST_PARAMS = (
    ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
    ("max_tokens", "gen_ai.request.max_tokens"), ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("seed", "gen_ai.request.seed"), ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"), ("n", "gen_ai.request.choice.count"),
)


class CallTrace:
    """One call's telemetry: the tracer and metrics to use, and what its attempts did."""

    __slots__ = ("attempts", "fallbacks", "metrics", "models", "retries", "tracer")

    def __init__(self, tracer: Tracer | None, metrics: GatewayMetrics | None) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.attempts = 0
        self.retries = 0
        self.fallbacks = 0
        self.models: list[str] = []

    def attempt_started(self, target: Target) -> None:
        model = target.requested_model or target.model
        if self.models:
            kind = "retries" if self.models[-1] == model else "fallbacks"
            setattr(self, kind, getattr(self, kind) + 1)
            if self.metrics is not None:
                counter = self.metrics.retries if kind == "retries" else self.metrics.fallbacks
                counter.add(1, {"gen_ai.provider.name": target.provider, "gen_ai.request.model": model})
        self.attempts += 1
        self.models.append(model)

    def attempt_failed(self, target: Target, error: ProviderError) -> None:
        if self.metrics is not None:
            self.metrics.upstream_errors.add(1, {"gen_ai.provider.name": target.provider,
                                                 "error.type": error.kind.value})


_CALL: ContextVar[CallTrace | None] = ContextVar("llmrpc_call_trace", default=None)


def current_call() -> ContextVar[CallTrace | None]:
    """The context variable :class:`~llmrpc_server.observability.ObservedBackend` sets per call."""
    return _CALL


class AttemptSpan:
    """The span of one attempt plus what a stream has told about its response so far."""

    __slots__ = ("finish_reasons", "recording", "span", "started")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.recording = span.is_recording()
        self.started = False
        self.finish_reasons: list[str] = []


_NO_SPAN = AttemptSpan(INVALID_SPAN)
_NO_ATTEMPT = nullcontext(_NO_SPAN)  # reusable: nullcontext keeps no state between uses


def request_attributes(req: pb.CompleteRequest, model: str) -> Attributes:
    """``gen_ai.request.*`` of a request (never its messages, key or headers)."""
    attributes: Attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
    for field, name in _REQUEST_PARAMS:
        if has_field(req, field):
            attributes[name] = getattr(req, field)
    if req.stop:
        attributes["gen_ai.request.stop_sequences"] = list(req.stop)
    return attributes


@functools.lru_cache(maxsize=256)
def server_attributes(api_base: str) -> dict[str, str | int]:
    """``server.address`` (the host alone) and ``server.port`` of an upstream: never the base URL's
    userinfo, path or query, which may hold credentials."""
    try:
        parts = urlsplit(api_base)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return {}
    out: dict[str, str | int] = {"server.address": parts.hostname} if parts.hostname else {}
    if port is not None:
        out["server.port"] = port
    return out


def attempt_span(target: Target, req: pb.CompleteRequest, *, stream: bool) -> AbstractContextManager[AttemptSpan]:
    """A CLIENT span ``chat {model}`` around one upstream attempt (none when tracing is off)."""
    call = _CALL.get()
    if call is None:  # nothing observes this call: a shared no-op, on the path of every attempt
        return _NO_ATTEMPT
    return _attempt_span(call, target, req, stream=stream)


@contextmanager
def _attempt_span(call: CallTrace, target: Target, req: pb.CompleteRequest, *, stream: bool,
                  ) -> Iterator[AttemptSpan]:
    call.attempt_started(target)
    if call.tracer is None:
        try:
            yield _NO_SPAN
        except ProviderError as exc:
            call.attempt_failed(target, exc)
            raise
        return
    attributes = request_attributes(req, target.model)
    attributes.update({"gen_ai.provider.name": target.provider, "gen_ai.request.stream": stream})
    attributes.update(server_attributes(target.api_base))
    if target.deployment:
        attributes["llmrpc.deployment"] = target.deployment
    with call.tracer.start_as_current_span(
        f"chat {target.model}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
        set_status_on_exception=False,
    ) as span:
        attempt = AttemptSpan(span)
        try:
            yield attempt
        except ProviderError as exc:
            call.attempt_failed(target, exc)
            span.set_attribute("error.type", exc.kind.value)
            if exc.status is not None:
                span.set_attribute("http.response.status_code", exc.status)
            span.set_status(Status(StatusCode.ERROR, exc.kind.value))
            raise
        if attempt.finish_reasons:
            span.set_attribute("gen_ai.response.finish_reasons", attempt.finish_reasons)


def record_response(attempt: AttemptSpan, resp: pb.CompleteResponse) -> None:
    """Response attributes of a unary attempt (model, id, finish reasons, token usage)."""
    if not attempt.recording:
        return
    set_response_attributes(attempt.span, resp.model, resp.id, resp.usage if resp.HasField("usage") else None)
    attempt.finish_reasons = [c.finish_reason for c in resp.choices if c.finish_reason]


def record_chunk(attempt: AttemptSpan, chunk: pb.StreamCompleteResponse) -> None:
    """Response attributes of a streamed attempt, one chunk at a time (nothing is buffered)."""
    if not attempt.recording:
        return
    if not attempt.started:
        attempt.started = True
        set_response_attributes(attempt.span, chunk.model, chunk.id, None)
    if chunk.HasField("usage"):
        set_response_attributes(attempt.span, "", "", chunk.usage)
    for choice in chunk.choices:
        if choice.finish_reason:
            attempt.finish_reasons.append(choice.finish_reason)


def set_response_attributes(span: Span, model: str, response_id: str, usage: usage_pb2.Usage | None) -> None:
    """``gen_ai.response.*`` and ``gen_ai.usage.*`` on a span."""
    if model:
        span.set_attribute("gen_ai.response.model", model)
    if response_id:
        span.set_attribute("gen_ai.response.id", response_id)
    if usage is None:
        return
    span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
    reads = usage.cache_read_input_tokens or usage.prompt_tokens_details.cached_tokens
    writes = usage.cache_creation_input_tokens or usage.prompt_tokens_details.cache_write_tokens
    if reads:
        span.set_attribute("gen_ai.usage.cache_read.input_tokens", reads)
    if writes:
        span.set_attribute("gen_ai.usage.cache_creation.input_tokens", writes)
    reasoning = usage.completion_tokens_details.reasoning_tokens
    if reasoning:
        span.set_attribute("gen_ai.usage.reasoning.output_tokens", reasoning)
