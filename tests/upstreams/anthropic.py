"""Anthropic Messages on the wire.

Streams use named SSE events (`event: x` + `data: {...}`) with per-block start/delta/stop, a `ping`,
cumulative usage on `message_delta`, and no `[DONE]`; errors can arrive as an `error` event after a 200.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .server import JSONReply, RecordedRequest, Reply, SSEReply, Then, dumps, split_text

Thinking = tuple[str, str]  # (thinking text, signature)
StreamThinking = tuple[Sequence[str] | str, str]  # (thinking pieces, signature)
ToolUse = tuple[str, str, dict[str, Any]]  # (id, name, input)
StreamToolUse = tuple[str, str, Sequence[str] | dict[str, Any]]  # (id, name, partial_json pieces | input)

REQUEST_ID = "req_fake01"


def default_usage(
    input_tokens: int = 5, output_tokens: int = 7, cache_read: int = 0, cache_write: int = 0
) -> dict[str, Any]:
    """Usage as returned by the API (input_tokens excludes cache reads/writes)."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }


def response_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"request-id": REQUEST_ID} | (extra or {})


def _infer_stop(stop_reason: str | None, tool_uses: object) -> str:
    return stop_reason or ("tool_use" if tool_uses else "end_turn")


def message(
    text: str | None = "hi",
    *,
    thinking: Sequence[Thinking] | None = None,
    redacted: Sequence[str] | None = None,
    tool_uses: Sequence[ToolUse] | None = None,
    stop_reason: str | None = None,
    stop_sequence: str | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "claude-x",
    id: str = "msg_01",
    headers: dict[str, str] | None = None,
) -> JSONReply:
    """A unary message; blocks in order thinking, redacted_thinking, text, tool_use.
    stop_reason defaults to tool_use when tools are used, else end_turn."""
    content: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": t, "signature": sig} for t, sig in thinking or ()
    ]
    content += [{"type": "redacted_thinking", "data": data} for data in redacted or ()]
    if text is not None:
        content.append({"type": "text", "text": text})
    content += [
        {"type": "tool_use", "id": tid, "name": name, "input": inp} for tid, name, inp in tool_uses or ()
    ]
    body = {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _infer_stop(stop_reason, tool_uses),
        "stop_sequence": stop_sequence,
        "usage": usage if usage is not None else default_usage(),
    }
    return JSONReply(200, body, response_headers(headers))


def event(name: str, data: dict[str, Any]) -> str:
    """One named SSE event (text without the trailing blank line)."""
    return f"event: {name}\ndata: {dumps(data)}"


def overloaded_event() -> str:
    return event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


class _Stream:
    """Accumulates events, numbering content blocks; `broken` once the scripted error was emitted."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.index = 0
        self.broken = False

    def add(self, name: str, **data: Any) -> None:
        self.events.append(event(name, {"type": name, **data}))

    def block(
        self, start: dict[str, Any], deltas: Sequence[dict[str, Any]], fail_after: int | None = None
    ) -> None:
        """start, deltas, stop; with `fail_after=k`, k deltas then an error event and nothing more."""
        if self.broken:
            return
        self.add("content_block_start", index=self.index, content_block=start)
        if self.index == 0:
            self.add("ping")
        for delta in deltas[:fail_after]:
            self.add("content_block_delta", index=self.index, delta=delta)
        if fail_after is not None:
            self.events.append(overloaded_event())
            self.broken = True
            return
        self.add("content_block_stop", index=self.index)
        self.index += 1


def _pieces(value: Sequence[str] | str) -> Sequence[str]:
    return [value] if isinstance(value, str) else value


def _tool_pieces(value: Sequence[str] | dict[str, Any]) -> Sequence[str]:
    return [dumps(value)] if isinstance(value, dict) else value


def message_stream(
    pieces: Sequence[str] | None = ("Hel", "lo"),
    *,
    thinking: Sequence[StreamThinking] | None = None,
    redacted: Sequence[str] | None = None,
    tool_uses: Sequence[StreamToolUse] | None = None,
    stop_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "claude-x",
    id: str = "msg_01",
    error_after: int | None = None,
    delay: float = 0.0,
    first_delay: float = 0.0,
    then: Then = "close",
    headers: dict[str, str] | None = None,
) -> SSEReply:
    """A streamed message (§2.6). `pieces=None` means no text block. `error_after=k` emits an
    overloaded `error` event after k text deltas and ends the stream there."""
    final = usage if usage is not None else default_usage()
    start_usage = {k: v for k, v in final.items() if k != "output_tokens"} | {"output_tokens": 1}
    start: dict[str, Any] = {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    s = _Stream()
    s.add("message_start", message=start)
    for text, sig in thinking or ():
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(text)]
        s.block(
            {"type": "thinking", "thinking": ""}, [*deltas, {"type": "signature_delta", "signature": sig}]
        )
    for data in redacted or ():
        s.block({"type": "redacted_thinking", "data": data}, [])
    if pieces is not None:
        s.block(
            {"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces], error_after
        )
    for tid, name, inp in tool_uses or ():
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _tool_pieces(inp)]
        s.block({"type": "tool_use", "id": tid, "name": name, "input": {}}, deltas)
    if not s.broken:
        delta = {"stop_reason": _infer_stop(stop_reason, tool_uses), "stop_sequence": None}
        usage_delta = {"output_tokens": final["output_tokens"]}
        s.add("message_delta", delta=delta, usage=usage_delta)
        s.add("message_stop")
    return SSEReply(s.events, 200, response_headers(headers), delay=delay, first_delay=first_delay, then=then)


# ---- errors (§2.7) -------------------------------------------------------------------------------
def error(status: int, type: str, message: str, *, headers: dict[str, str] | None = None) -> JSONReply:
    """`{"type":"error","error":{type,message},"request_id":...}`."""
    body = {"type": "error", "error": {"type": type, "message": message}, "request_id": REQUEST_ID}
    return JSONReply(status, body, response_headers(headers))


def overloaded() -> JSONReply:
    return error(529, "overloaded_error", "Overloaded")


def rate_limited(retry_after: str | float | None = None) -> JSONReply:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2025-01-01T00:00:30Z",
    }
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    message = "Number of request tokens has exceeded your per-minute rate limit"
    return error(429, "rate_limit_error", message, headers=headers)


def prompt_too_long() -> JSONReply:
    return error(400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum")


def invalid_api_key() -> JSONReply:
    return error(401, "authentication_error", "invalid x-api-key")


def api_error() -> JSONReply:
    return error(500, "api_error", "Internal server error")


# ---- default handler -----------------------------------------------------------------------------
def last_user_text(body: dict[str, Any]) -> str:
    """Text of the last user turn: string content or its text blocks (tool_result blocks ignored)."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            blocks = content if isinstance(content, list) else []
            return "".join(
                b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def _validate(req: RecordedRequest) -> dict[str, Any] | Reply:
    """Reject what the real API rejects up front: missing anthropic-version or required fields."""
    if "anthropic-version" not in req.headers:
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    try:
        body = req.json()
    except ValueError:
        return error(400, "invalid_request_error", "There was an error parsing the body of your request")
    for required in ("model", "max_tokens", "messages"):
        if not isinstance(body, dict) or required not in body:
            return error(400, "invalid_request_error", f"{required}: Field required")
    checked: dict[str, Any] = body
    return checked


def default_handler(req: RecordedRequest) -> Reply:
    """Echo the last user message for POST .../v1/messages, streaming when `"stream": true`."""
    if req.method != "POST" or not req.path.endswith("/v1/messages"):
        return error(404, "not_found_error", f"Not Found: {req.method} {req.path}")
    body = _validate(req)
    if isinstance(body, Reply):
        return body
    text = "echo: " + last_user_text(body)
    model = str(body["model"])
    if body.get("stream"):
        return message_stream(split_text(text), model=model)
    return message(text, model=model)
