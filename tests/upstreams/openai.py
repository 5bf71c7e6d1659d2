"""OpenAI Chat Completions on the wire, also used for OpenAI-compatible hosts and Azure.

Builders return Reply objects whose bytes match what api.openai.com sends, so gateway adapters are tested
against the real shapes (chunk order, `usage:null` on chunks, the `choices:[]` usage chunk, `[DONE]`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .server import JSONReply, RecordedRequest, Reply, SSEReply, Then, dumps, split_text

CREATED = 1700000000
FINGERPRINT = "fp_fake"

ToolCall = tuple[str, str, str]  # (id, name, arguments JSON string)
StreamToolCall = tuple[str, str, Sequence[str] | str]  # (id, name, argument pieces)


def default_usage(
    prompt_tokens: int = 5, completion_tokens: int = 7, reasoning_tokens: int = 0
) -> dict[str, Any]:
    """Usage in the full shape OpenAI returns (reasoning tokens are inside completion_tokens)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def response_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers every OpenAI response carries; `x-request-id` feeds the SDK's request_id."""
    return {"x-request-id": "req_fake123", "openai-processing-ms": "12", "openai-version": "2020-10-01"} | (
        extra or {}
    )


def chat_completion(
    content: str | None = "hi",
    *,
    model: str = "gpt-4o-mini",
    tool_calls: Sequence[ToolCall] | None = None,
    finish_reason: str | None = None,
    reasoning_content: str | None = None,
    usage: dict[str, Any] | None = None,
    id: str = "chatcmpl-123",
    headers: dict[str, str] | None = None,
    logprobs: dict[str, Any] | None = None,
    extra_message: dict[str, Any] | None = None,
) -> JSONReply:
    """A unary `chat.completion`; finish_reason defaults to tool_calls when tools are called."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if tool_calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in tool_calls
        ]
    message |= extra_message or {}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop"),
    }
    body = {
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [choice],
        "usage": usage if usage is not None else default_usage(),
        "service_tier": "default",
        "system_fingerprint": FINGERPRINT,
    }
    return JSONReply(200, body, response_headers(headers))


class _Chunks:
    """Builds `data: {chunk}` events sharing id/model and the include_usage convention."""

    def __init__(self, id: str, model: str, include_usage: bool) -> None:
        self.id, self.model, self.include_usage = id, model, include_usage
        self.events: list[str] = []

    def add(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        self._emit([choice], None)

    def usage(self, usage: dict[str, Any]) -> None:
        self._emit([], usage)

    def _emit(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> None:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        self.events.append("data: " + dumps(chunk))


def _tool_call_deltas(tool_calls: Sequence[StreamToolCall]) -> list[dict[str, Any]]:
    """First fragment names the call with empty arguments; later ones carry only index + a piece."""
    deltas: list[dict[str, Any]] = []
    for index, (cid, name, pieces) in enumerate(tool_calls):
        head = {"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        for piece in [pieces] if isinstance(pieces, str) else pieces:
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas


def stream_error_event(
    message: str = "The server had an error while processing your request. Sorry about that!",
) -> str:
    """A mid-stream failure: a `data:` object with an `error` key after an HTTP 200."""
    return "data: " + dumps(
        {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    )


def chat_stream(
    pieces: Sequence[str] = ("Hel", "lo"),
    *,
    tool_calls: Sequence[StreamToolCall] | None = None,
    reasoning_pieces: Sequence[str] | None = None,
    include_usage: bool = True,
    usage: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    error_after: int | None = None,
    done: bool = True,
    delay: float = 0.0,
    first_delay: float = 0.0,
    then: Then = "close",
    model: str = "gpt-4o-mini",
    id: str = "chatcmpl-123",
    headers: dict[str, str] | None = None,
) -> SSEReply:
    """A streamed completion: role chunk, reasoning, content, tool-call fragments, finish chunk,
    usage chunk (`choices:[]`), `[DONE]`. `error_after=k` stops after k content chunks with an error
    event; `done=False` drops `[DONE]` (a truncated stream)."""
    chunks = _Chunks(id, model, include_usage)
    chunks.add({"role": "assistant", "content": ""})
    for piece in reasoning_pieces or ():
        chunks.add({"reasoning_content": piece})
    for n, piece in enumerate(pieces):
        if error_after is not None and n >= error_after:
            break
        chunks.add({"content": piece})
    events = chunks.events
    if error_after is not None:
        return _sse([*events, stream_error_event()], delay, first_delay, then, headers)
    for delta in _tool_call_deltas(tool_calls or ()):
        chunks.add(delta)
    chunks.add({}, finish_reason or ("tool_calls" if tool_calls else "stop"))
    if include_usage:
        chunks.usage(usage if usage is not None else default_usage())
    if done:
        events.append("data: [DONE]")
    return _sse(events, delay, first_delay, then, headers)


def _sse(
    events: list[str], delay: float, first_delay: float, then: Then, headers: dict[str, str] | None
) -> SSEReply:
    return SSEReply(events, 200, response_headers(headers), delay=delay, first_delay=first_delay, then=then)


# ---- errors (§1.7, §1.8) -------------------------------------------------------------------------
def error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONReply:
    """An error body `{"error": {message, type, param, code}}`."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONReply(status, body, response_headers(headers))


def rate_limited(
    retry_after: str | float | None = None, retry_after_ms: str | float | None = None
) -> JSONReply:
    """429 with the x-ratelimit-* set and optional retry hints (the SDK reads retry-after-ms first)."""
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    message = (
        "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 500, Used 500, Requested 1."
    )
    return error(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


def insufficient_quota() -> JSONReply:
    message = "You exceeded your current quota, please check your plan and billing details."
    return error(429, message, type="insufficient_quota", code="insufficient_quota")


def context_length_exceeded() -> JSONReply:
    message = (
        "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "130000 tokens. Please reduce the length of the messages."
    )
    return error(400, message, code="context_length_exceeded", param="messages")


def content_policy() -> JSONReply:
    message = "Your request was rejected as a result of our safety system."
    return error(400, message, code="content_policy_violation")


def model_not_found(model: str = "gpt-nope") -> JSONReply:
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error(404, message, code="model_not_found", param="model")


def invalid_api_key() -> JSONReply:
    return error(401, "Incorrect API key provided: sk-fake.", code="invalid_api_key")


def server_error(status: int = 500) -> JSONReply:
    message = "The server had an error while processing your request. Sorry about that!"
    return error(status, message, type="server_error")


# ---- default handler -----------------------------------------------------------------------------
def last_user_text(body: dict[str, Any]) -> str:
    """Text of the last user message (string content or the text parts of a parts list)."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            parts = content if isinstance(content, list) else []
            return "".join(
                p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text"
            )
    return ""


def default_handler(req: RecordedRequest) -> Reply:
    """Echo the last user message for any POST .../chat/completions (OpenAI, compatible hosts, Azure)."""
    if req.method != "POST" or not req.path.endswith("/chat/completions"):
        return error(404, f"Unknown request URL: {req.method} {req.path}.", code="unknown_url")
    try:
        body = req.json()
    except ValueError:
        return error(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return error(400, "'messages' is a required property", param="messages")
    deployment = re.search(r"/deployments/([^/]+)/", req.path)
    model = body.get("model") or (deployment.group(1) if deployment else "gpt-4o-mini")
    text = "echo: " + last_user_text(body)
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return chat_stream(split_text(text), include_usage=include_usage, model=model)
    return chat_completion(text, model=model)
