"""OpenTelemetry spans for upstream attempts (GenAI semantic conventions).

Uses only the OpenTelemetry API: without a configured SDK the tracer is a no-op and costs next to
nothing on the hot path. Prompts, completions and API keys are never recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llmrpc.v1 import completion_service_pb2 as pb
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .providers.base import ProviderError, Target

__all__ = ["attempt_span", "record_response"]

_tracer = trace.get_tracer("llmrpc_server")


@contextmanager
def attempt_span(target: Target, req: pb.CompleteRequest, *, stream: bool) -> Iterator[Span]:
    """A CLIENT span ``chat {model}`` around one upstream attempt."""
    attributes: dict[str, str | int | float | bool] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": target.provider,
        "gen_ai.request.model": target.model,
        "server.address": target.api_base,
        "llmrpc.stream": stream,
    }
    for name in ("temperature", "top_p", "max_tokens", "seed"):
        if req.HasField(name):
            attributes[f"gen_ai.request.{name}"] = getattr(req, name)
    with _tracer.start_as_current_span(
        f"chat {target.model}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except ProviderError as exc:
            span.set_attribute("error.type", exc.kind.value)
            span.set_status(Status(StatusCode.ERROR, exc.kind.value))
            raise


def record_response(span: Span, resp: pb.CompleteResponse | pb.StreamCompleteResponse) -> None:
    """Response attributes (model, id, finish reasons, token usage)."""
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.response.model", resp.model)
    span.set_attribute("gen_ai.response.id", resp.id)
    if resp.HasField("usage"):
        span.set_attribute("gen_ai.usage.input_tokens", resp.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", resp.usage.completion_tokens)
    reasons = [c.finish_reason for c in resp.choices if c.finish_reason]
    if reasons:
        span.set_attribute("gen_ai.response.finish_reasons", reasons)
