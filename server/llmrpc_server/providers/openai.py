"""OpenAI Chat Completions, and every host that speaks it (the compatible family is a table)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import dumps, loads
from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, StreamState, Target
from .chat_json import body_from_request, chunk_from_openai, response_from_openai
from .common import classify, join_url, json_object, merge_headers, new_completion_id, now

__all__ = ["OPENAI", "OPENAI_PARAMS", "OpenAIAdapter", "OpenAISpec", "OpenAIStream", "adapters", "openai_error"]

# The OpenAI Chat Completions request parameters, as proto field names.
OPENAI_PARAMS = frozenset(
    {
        "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
        "frequency_penalty", "logit_bias", "user", "response_format", "seed", "tools", "tool_choice",
        "parallel_tool_calls", "logprobs", "top_logprobs", "functions", "function_call", "reasoning_effort",
        "modalities", "audio", "service_tier", "store", "prediction", "provider_metadata", "web_search_options",
    }
)


@dataclass(frozen=True)
class OpenAISpec:
    """One OpenAI-shaped host: where it lives, which env vars configure it, what it accepts."""

    name: str
    default_base: str
    env_keys: tuple[str, ...]
    env_bases: tuple[str, ...] = ()
    supported_params: frozenset[str] = OPENAI_PARAMS
    key_required: bool = True
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    keep_cache_control: bool = False


OPENAI = OpenAISpec(
    name="openai",
    default_base="https://api.openai.com/v1",
    env_keys=("OPENAI_API_KEY",),
    env_bases=("OPENAI_API_BASE", "OPENAI_BASE_URL"),
)


@dataclass(slots=True)
class OpenAIStream:
    """The OpenAI family's own stream state: top-level extras already attached (Perplexity repeats
    ``citations`` on every chunk)."""

    extras_sent: set[str] = field(default_factory=set)


class OpenAIAdapter(ProviderAdapter[OpenAIStream]):
    """Codec for ``POST {base}/chat/completions`` with Bearer auth."""

    def __init__(self, spec: OpenAISpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.supported_params = spec.supported_params
        self.env_keys = spec.env_keys
        self.env_bases = spec.env_bases
        self.default_base = spec.default_base
        self.key_required = spec.key_required

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall:
        body = body_from_request(req, target.model, keep_cache_control=self.spec.keep_cache_control)
        if stream:
            body["stream"] = True
            if include_usage:
                body["stream_options"] = {"include_usage": True}
        self.adjust_body(body, req, target)
        if req.HasField("extra_body"):
            from ..proto_json import struct_to_dict

            body.update(struct_to_dict(req.extra_body))
        return HttpCall(url=self.url(target), headers=self.headers(req, target), body=body)

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        """Hook for hosts whose body differs slightly from OpenAI's."""

    def adjust_response(self, resp: pb.CompleteResponse, data: dict[str, Any]) -> None:
        """Hook for hosts whose unary reply carries extras the shared codec does not read."""

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        """Hook for hosts whose stream chunks need fixing; return None to drop the chunk."""
        return chunk

    def url(self, target: Target) -> str:
        return join_url(target.api_base, "chat", "completions")

    def headers(self, req: pb.CompleteRequest, target: Target) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.spec.extra_headers}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        if self.name == "openai" and req.HasField("organization"):  # as the openai SDK sends it
            headers["openai-organization"] = req.organization
        return merge_headers(headers, req.extra_headers)

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        data = json_object(body)
        if "error" in data and "choices" not in data:
            raise openai_error(200, {}, data)
        resp = response_from_openai(data, created=now())
        self.adjust_response(resp, data)
        return resp

    def new_stream_state(self, req: pb.CompleteRequest, target: Target) -> StreamState[OpenAIStream]:
        return StreamState(id="", created=now(), model=target.model, own=OpenAIStream())

    def parse_stream_event(
        self, event: StreamEvent, state: StreamState[OpenAIStream]
    ) -> Iterable[pb.StreamCompleteResponse]:
        if event.data == "[DONE]":
            state.finished = True
            return ()
        data = json_object(event.data)
        if "error" in data:
            raise _stream_error(data)
        if not state.id:
            state.id = data.get("id") or new_completion_id()
            state.created = int(data.get("created") or state.created)
        adjusted = self.adjust_chunk(
            chunk_from_openai(data, stream_id=state.id, created=state.created, model=state.model), data, state
        )
        if adjusted is None:
            return ()
        return (adjusted,)

    def finish_stream(self, state: StreamState[OpenAIStream]) -> Iterable[pb.StreamCompleteResponse]:
        return ()

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        try:
            data = loads(body)
        except ValueError:
            data = {"error": {"message": body[:500].decode("utf-8", "replace")}}
        return openai_error(status, headers, data if isinstance(data, dict) else {})


def openai_error(status: int, headers: Mapping[str, str], data: dict[str, Any]) -> ProviderError:
    """Classify an OpenAI-style error body ``{"error": {message, type, param, code}}``."""
    err = data.get("error")
    if isinstance(err, str):
        err = {"message": err}
    if not isinstance(err, dict):
        err = {"message": dumps(data)[:500].decode()} if data else {}
    code = err.get("code")
    return classify(
        status,
        str(err.get("message") or ""),
        headers,
        error_type=err.get("type"),
        error_code=None if code is None else str(code),
        param=err.get("param"),
    )


def _stream_error(data: dict[str, Any]) -> ProviderError:
    """A ``data: {"error": ...}`` event mid-stream (OpenAI; OpenRouter puts an HTTP code in it)."""
    err = data.get("error") if isinstance(data.get("error"), dict) else {"message": str(data.get("error"))}
    assert isinstance(err, dict)
    code = err.get("code")
    if isinstance(code, int) and code >= 400:
        return openai_error(code, {}, {"error": err})
    classified = openai_error(500, {}, {"error": err})
    if classified.kind is ErrorKind.UNAVAILABLE:
        classified.kind = ErrorKind.STREAM_ERROR
    return classified


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """OpenAI itself."""
    return [OpenAIAdapter(OPENAI)]
