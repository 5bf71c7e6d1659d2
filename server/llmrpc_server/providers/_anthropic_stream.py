"""Anthropic answers -> OpenAI shapes: whole messages, SSE streams and errors.

- ``id`` is Anthropic's ``msg_…`` id (LiteLLM mints ``chatcmpl-…``; the real id is more useful).
- ``stop_reason``: end_turn/stop_sequence/pause_turn -> stop, max_tokens/model_context_window_exceeded/
  compaction -> length, tool_use -> tool_calls, refusal -> content_filter, unknown -> stop; the raw
  value is kept in ``provider_finish_reason``.
- Usage: ``prompt_tokens = input + cache_read + cache_creation`` (Anthropic's ``input_tokens`` leaves out
  cached tokens, OpenAI's and Gemini's prompt counts include them), cache counters copied
  to ``cached_tokens``/``cache_read_input_tokens`` and ``cache_write_tokens``/``cache_creation_input_tokens``.
- JSON mode: the ``json_tool_call`` input is the message content (finish ``stop``, no tool call).
- Tool arguments in whole answers are ``json.dumps(input)``, as LiteLLM writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrpc.v1 import chat_pb2, usage_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import loads
from ..tokens import count_text
from .base import ErrorKind, ProviderError, StreamEvent, StreamState
from .common import classify, new_completion_id, now
from .common import json_object as common_json_object

__all__ = [
    "JSON_TOOL_NAME",
    "AnthropicStream",
    "finish_reason",
    "http_error",
    "json_object",
    "parse_event",
    "response_from_anthropic",
    "stream_error",
    "usage_from_anthropic",
]

JSON_TOOL_NAME = "json_tool_call"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "compaction": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# error.type -> the HTTP status Anthropic uses for it (§2.7), for errors that arrive inside a 200.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
# error.type values that decide the kind whatever the status or message says.
_KIND_BY_TYPE = {
    "billing_error": ErrorKind.QUOTA,
    "overloaded_error": ErrorKind.OVERLOADED,
    "request_too_large": ErrorKind.TOO_LARGE,
}
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def finish_reason(raw: str | None) -> str:
    return _FINISH.get(raw or "", "stop")


def json_object(body: bytes | str) -> dict[str, Any]:
    return common_json_object(body, "anthropic")


# ---- usage -------------------------------------------------------------------------------------


def usage_numbers(data: Any) -> dict[str, int]:
    """The counters an Anthropic ``usage`` object reports (absent keys stay absent)."""
    if not isinstance(data, dict):
        return {}
    out = {k: int(data[k]) for k in _USAGE_KEYS if isinstance(data.get(k), int | float)}
    thinking = (data.get("output_tokens_details") or {}).get("thinking_tokens")
    if isinstance(thinking, int | float):
        out["thinking_tokens"] = int(thinking)
    searches = (data.get("server_tool_use") or {}).get("web_search_requests")
    if isinstance(searches, int | float):
        out["web_search_requests"] = int(searches)
    return out


def usage_from_anthropic(numbers: Mapping[str, int], reasoning: str = "") -> usage_pb2.Usage:
    """OpenAI-shaped usage; ``prompt_tokens`` counts cache reads and writes (Anthropic's doesn't).
    ``reasoning_tokens`` is what Anthropic reports, else (as LiteLLM does) the tokens of the thinking
    text ``reasoning``, capped at the completion; ``text_tokens`` the rest of the completion."""
    read = numbers.get("cache_read_input_tokens")
    write = numbers.get("cache_creation_input_tokens")
    prompt = numbers.get("input_tokens", 0) + (read or 0) + (write or 0)
    completion = numbers.get("output_tokens", 0)
    usage = usage_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    if read is not None:
        usage.prompt_tokens_details.cached_tokens = read
        usage.cache_read_input_tokens = read
    if write is not None:
        usage.prompt_tokens_details.cache_write_tokens = write
        usage.cache_creation_input_tokens = write
    if "thinking_tokens" in numbers:
        thinking = min(max(numbers["thinking_tokens"], 0), completion)
    else:
        thinking = min(count_text(reasoning), completion) if reasoning else 0
    usage.completion_tokens_details.reasoning_tokens = thinking
    usage.completion_tokens_details.text_tokens = completion - thinking
    if "web_search_requests" in numbers:
        usage.server_tool_use.web_search_requests = numbers["web_search_requests"]
    return usage


# ---- whole answers -----------------------------------------------------------------------------


def response_from_anthropic(data: dict[str, Any], json_wrapped: bool | None) -> pb.CompleteResponse:
    """A Messages API answer as a ``chat.completion``; ``json_wrapped`` is None outside JSON mode."""
    if data.get("type") == "error":
        raise stream_error(data)
    resp = pb.CompleteResponse(
        id=data.get("id") or new_completion_id(),
        object="chat.completion",
        created=now(),
        model=data.get("model") or "",
    )
    message, converted = _message(data.get("content") or [], json_wrapped)
    raw = data.get("stop_reason")
    reason = finish_reason(raw)
    if converted and not message.tool_calls and reason == "tool_calls":
        reason = "stop"
    choice = resp.choices.add(index=0, message=message, finish_reason=reason)
    if raw:
        choice.provider_finish_reason = raw
    if "usage" in data:
        thoughts = resp.choices[0].message.reasoning_content
        resp.usage.CopyFrom(usage_from_anthropic(usage_numbers(data["usage"]), thoughts))
    return resp


def _message(content: list[Any], json_wrapped: bool | None) -> tuple[chat_pb2.Message, bool]:
    """The assistant message and whether a ``json_tool_call`` became its content."""
    msg = chat_pb2.Message(role="assistant")
    texts: list[str] = []
    thoughts: list[str] = []
    citations: list[Any] = []
    json_text: str | None = None
    for block in (b for b in content if isinstance(b, dict)):
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
            if block.get("citations"):
                citations.append(block["citations"])
        elif kind in ("thinking", "redacted_thinking"):
            msg.thinking_blocks.append(_thinking(block))
            if kind == "thinking":
                thoughts.append(block.get("thinking") or "")
        elif kind == "tool_use" and json_wrapped is not None and block.get("name") == JSON_TOOL_NAME:
            json_text = _json_content(block.get("input"), json_wrapped)
        elif kind == "tool_use":
            msg.tool_calls.add(id=block.get("id") or "", type="function", function=chat_pb2.FunctionCall(
                name=block.get("name") or "", arguments=json.dumps(block.get("input") or {})))
    content_text = json_text if json_text is not None else "".join(texts)
    if content_text:
        msg.content = content_text
    if thoughts:
        msg.reasoning_content = "".join(thoughts)
    if citations:
        msg.provider_specific_fields.update({"citations": citations})
    return msg, json_text is not None


def _thinking(block: dict[str, Any]) -> chat_pb2.ThinkingBlock:
    if block.get("type") == "redacted_thinking":
        return chat_pb2.ThinkingBlock(type="redacted_thinking", data=block.get("data") or "")
    out = chat_pb2.ThinkingBlock(type="thinking", thinking=block.get("thinking") or "")
    if block.get("signature") is not None:
        out.signature = block["signature"]
    return out


def _json_content(value: Any, wrapped: bool) -> str:
    if wrapped and isinstance(value, dict) and "values" in value:
        value = value["values"]
    return json.dumps(value if value is not None else {})


# ---- streams -----------------------------------------------------------------------------------


@dataclass
class _Block:
    """One open content block: what it is and what it has sent so far."""

    kind: str  # "text" | "tool" | "json" | "thinking" | "other"
    tool_index: int = 0
    args_sent: bool = False
    buffer: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AnthropicStream:
    """Anthropic's own stream state: content blocks by index, usage so far, and the finish."""

    json_wrapped: bool | None
    usage: dict[str, int] = field(default_factory=dict)  # the largest of each counter seen so far
    blocks: dict[int, _Block] = field(default_factory=dict)
    tools: int = 0
    json_used: bool = False
    stop_reason: str | None = None
    finish_sent: bool = False
    thoughts: list[str] = field(default_factory=list)  # thinking text, for the reasoning-token estimate


_State = StreamState[AnthropicStream]


_Chunks = list[pb.StreamCompleteResponse]


def parse_event(event: StreamEvent, state: _State) -> _Chunks:
    """One SSE event -> chunks. ``message_stop`` ends the stream; an ``error`` event raises."""
    data = json_object(event.data)
    kind = data.get("type") or event.event
    if kind == "error":
        raise stream_error(data)
    handler = _HANDLERS.get(str(kind))
    return handler(data, state) if handler is not None else []


def _chunk(state: _State, delta: chat_pb2.Delta | None = None) -> pb.StreamCompleteResponse:
    """A chunk with choice 0; the first one of the stream says ``role: assistant``."""
    chunk = pb.StreamCompleteResponse(
        id=state.id, object="chat.completion.chunk", created=state.created, model=state.model
    )
    choice = chunk.choices.add(index=0)
    if delta is not None:
        choice.delta.CopyFrom(delta)
    if 0 not in state.role_sent:
        choice.delta.role = "assistant"
        state.role_sent.add(0)
    return chunk


def _merge_usage(state: _State, data: Any) -> None:
    """Counts are cumulative: keep the largest value seen for each."""
    for key, value in usage_numbers(data).items():
        state.own.usage[key] = max(state.own.usage.get(key, 0), value)


def _on_message_start(data: dict[str, Any], state: _State) -> _Chunks:
    message = _dict(data.get("message"))
    state.id = message.get("id") or state.id
    state.model = message.get("model") or state.model
    _merge_usage(state, message.get("usage"))
    return []


def _on_block_start(data: dict[str, Any], state: _State) -> _Chunks:
    stream = state.own
    block = _dict(data.get("content_block"))
    kind = block.get("type")
    index = int(data.get("index") or 0)
    if kind == "text":
        stream.blocks[index] = _Block("text")
        return [_chunk(state, chat_pb2.Delta(content=block["text"]))] if block.get("text") else []
    if kind == "thinking":
        stream.blocks[index] = _Block("thinking")
        if not block.get("thinking") and not block.get("signature"):
            return []
        return [_thinking_chunk(state, block.get("thinking") or "", block.get("signature"))]
    if kind == "redacted_thinking":
        stream.blocks[index] = _Block("other")
        redacted = chat_pb2.ThinkingBlock(type="redacted_thinking", data=block.get("data") or "")
        return [_chunk(state, chat_pb2.Delta(thinking_blocks=[redacted]))]
    if kind == "tool_use":
        return _tool_start(block, index, state)
    stream.blocks[index] = _Block("other")  # server tools, citations-only blocks...: not mapped
    return []


def _tool_start(block: dict[str, Any], index: int, state: _State) -> _Chunks:
    stream = state.own
    if stream.json_wrapped is not None and block.get("name") == JSON_TOOL_NAME:
        stream.blocks[index] = _Block("json")
        stream.json_used = True
        return []
    info = stream.blocks[index] = _Block("tool", tool_index=stream.tools)
    stream.tools += 1
    frag = chat_pb2.ToolCallDelta(index=info.tool_index, id=block.get("id") or "", type="function")
    frag.function.name = block.get("name") or ""
    frag.function.arguments = ""
    chunks = [_chunk(state, chat_pb2.Delta(tool_calls=[frag]))]
    if block.get("input"):  # Anthropic starts with {}; a proxy may send the whole input here
        chunks += _tool_args(info, json.dumps(block["input"]), state)
    return chunks


def _tool_args(info: _Block, piece: str, state: _State) -> _Chunks:
    if not piece:
        return []
    info.args_sent = True
    frag = chat_pb2.ToolCallDelta(index=info.tool_index)
    frag.function.arguments = piece
    return [_chunk(state, chat_pb2.Delta(tool_calls=[frag]))]


def _thinking_chunk(state: _State, text: str, signature: Any = None) -> pb.StreamCompleteResponse:
    block = chat_pb2.ThinkingBlock(type="thinking", thinking=text)
    if signature is not None:
        block.signature = str(signature)
    delta = chat_pb2.Delta(thinking_blocks=[block])
    if text:
        delta.reasoning_content = text
        state.own.thoughts.append(text)
    return _chunk(state, delta)


def _on_block_delta(data: dict[str, Any], state: _State) -> _Chunks:
    delta = _dict(data.get("delta"))
    info = state.own.blocks.get(int(data.get("index") or 0)) or _Block("other")
    kind = delta.get("type")
    if kind == "text_delta" and delta.get("text"):
        return [_chunk(state, chat_pb2.Delta(content=delta["text"]))]
    if kind == "input_json_delta":
        return _json_piece(info, delta.get("partial_json") or "", state)
    if kind == "thinking_delta" and delta.get("thinking"):
        return [_thinking_chunk(state, delta["thinking"])]
    if kind == "signature_delta" and delta.get("signature"):
        return [_thinking_chunk(state, "", delta["signature"])]
    if kind == "citations_delta" and delta.get("citation") is not None:
        out = chat_pb2.Delta()
        out.provider_specific_fields.update({"citation": delta["citation"]})
        return [_chunk(state, out)]
    return []


def _json_piece(info: _Block, piece: str, state: _State) -> _Chunks:
    if info.kind == "tool":
        return _tool_args(info, piece, state)
    if info.kind != "json" or not piece:
        return []
    info.args_sent = True
    if state.own.json_wrapped:  # unwrapped at block stop
        info.buffer.append(piece)
        return []
    return [_chunk(state, chat_pb2.Delta(content=piece))]


def _on_block_stop(data: dict[str, Any], state: _State) -> _Chunks:
    info = state.own.blocks.pop(int(data.get("index") or 0), None)
    if info is None or (info.args_sent and not info.buffer):
        return []
    if info.kind == "tool":  # a call without arguments still gets valid JSON
        frag = chat_pb2.ToolCallDelta(index=info.tool_index)
        frag.function.arguments = "{}"
        return [_chunk(state, chat_pb2.Delta(tool_calls=[frag]))]
    if info.kind == "json":
        raw = "".join(info.buffer) or "{}"
        try:
            text = _json_content(loads(raw), bool(state.own.json_wrapped))
        except ValueError:
            text = raw
        return [_chunk(state, chat_pb2.Delta(content=text))]
    return []


def _finish_chunk(state: _State) -> pb.StreamCompleteResponse:
    stream = state.own
    reason = finish_reason(stream.stop_reason)
    if reason == "tool_calls" and stream.json_used and not stream.tools:
        reason = "stop"
    chunk = _chunk(state)
    chunk.choices[0].finish_reason = reason
    if stream.stop_reason:
        chunk.choices[0].provider_finish_reason = stream.stop_reason
    stream.finish_sent = True
    return chunk


def _on_message_delta(data: dict[str, Any], state: _State) -> _Chunks:
    _merge_usage(state, data.get("usage"))
    delta = _dict(data.get("delta"))
    if not delta.get("stop_reason"):
        return []
    state.own.stop_reason = str(delta["stop_reason"])
    return [] if state.own.finish_sent else [_finish_chunk(state)]


def _on_message_stop(data: dict[str, Any], state: _State) -> _Chunks:
    state.finished = True
    chunks = [] if state.own.finish_sent else [_finish_chunk(state)]
    chunks.append(pb.StreamCompleteResponse(
        id=state.id, object="chat.completion.chunk", created=state.created, model=state.model,
        usage=usage_from_anthropic(state.own.usage, "".join(state.own.thoughts)),
    ))
    return chunks


_HANDLERS: dict[str, Callable[[dict[str, Any], _State], _Chunks]] = {
    "message_start": _on_message_start,
    "content_block_start": _on_block_start,
    "content_block_delta": _on_block_delta,
    "content_block_stop": _on_block_stop,
    "message_delta": _on_message_delta,
    "message_stop": _on_message_stop,
}


# ---- errors ------------------------------------------------------------------------------------


def anthropic_error(status: int, headers: Mapping[str, str], data: Any, fallback: str = "") -> ProviderError:
    """Classify ``{"type":"error","error":{"type","message"},"request_id"}`` (§2.7)."""
    body = data if isinstance(data, dict) else {}
    err = _dict(body.get("error"))
    error_type = err.get("type") if isinstance(err.get("type"), str) else None
    message = str(err.get("message") or fallback or "")
    out = classify(status, message, headers, error_type=error_type, request_id_header="request-id")
    if error_type in _KIND_BY_TYPE and out.kind not in (ErrorKind.CONTEXT_WINDOW, ErrorKind.CONTENT_POLICY):
        out.kind = _KIND_BY_TYPE[error_type]
    if out.request_id is None and isinstance(body.get("request_id"), str):
        out.request_id = body["request_id"]
    return out


def http_error(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx answer; a body that is not Anthropic's error JSON is quoted in the message."""
    try:
        data = loads(body)
    except ValueError:
        data = None
    return anthropic_error(status, headers, data, fallback=body[:500].decode("utf-8", "replace"))


def stream_error(data: dict[str, Any]) -> ProviderError:
    """An ``error`` event after HTTP 200: classified by ``error.type`` as if it had its usual status;
    a generic server failure is a stream error. ``status`` stays unset (the HTTP status was 200)."""
    err = _dict(data.get("error"))
    status = _STATUS_BY_TYPE.get(str(err.get("type")), 500)
    out = anthropic_error(status, {}, data, fallback="the upstream stream failed")
    if out.kind is ErrorKind.UNAVAILABLE:
        out.kind = ErrorKind.STREAM_ERROR
    out.status = None
    return out
