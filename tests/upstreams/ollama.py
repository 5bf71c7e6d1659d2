"""Ollama native `/api/chat` on the wire.

NDJSON streaming (the default when `stream` is absent!), tool-call arguments as objects without ids,
counters only on the final `done:true` line, errors as `{"error": "..."}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .server import JSONReply, NDJSONReply, RecordedRequest, Reply, Then, split_text

ToolCall = tuple[str, dict[str, Any]]  # (name, arguments object)

CREATED_AT = "2024-01-01T00:00:00.000000Z"


def _message(
    content: str, thinking: str | None = None, tool_calls: Sequence[ToolCall] | None = None
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking is not None:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = [{"function": {"name": name, "arguments": args}} for name, args in tool_calls]
    return msg


def _final(done_reason: str, prompt_eval_count: int, eval_count: int) -> dict[str, Any]:
    """The counters that only the last (done) object carries; durations are in nanoseconds."""
    return {
        "done": True,
        "done_reason": done_reason,
        "total_duration": 500_000_000,
        "load_duration": 10_000_000,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": 50_000_000,
        "eval_count": eval_count,
        "eval_duration": 400_000_000,
    }


def chat(
    content: str = "hi",
    *,
    model: str = "llama3.2",
    thinking: str | None = None,
    tool_calls: Sequence[ToolCall] | None = None,
    done_reason: str = "stop",
    prompt_eval_count: int = 5,
    eval_count: int = 7,
) -> JSONReply:
    """A non-streamed reply (`"stream": false`)."""
    body = {"model": model, "created_at": CREATED_AT, "message": _message(content, thinking, tool_calls)}
    return JSONReply(200, body | _final(done_reason, prompt_eval_count, eval_count))


def chat_stream(
    pieces: Sequence[str] = ("Hel", "lo"),
    *,
    model: str = "llama3.2",
    thinking_pieces: Sequence[str] | None = None,
    tool_calls: Sequence[ToolCall] | None = None,
    done_reason: str = "stop",
    prompt_eval_count: int = 5,
    eval_count: int = 7,
    error_after: int | None = None,
    done: bool = True,
    delay: float = 0.0,
    first_delay: float = 0.0,
    then: Then = "close",
) -> NDJSONReply:
    """NDJSON: thinking pieces, content pieces, one line with whole tool calls, then the done line.
    `error_after=k` ends after k lines with an `{"error": ...}` line; `done=False` omits the done line."""
    messages = [_message("", thinking=t) for t in thinking_pieces or ()]
    messages += [_message(p) for p in pieces]
    if tool_calls:
        messages.append(_message("", tool_calls=tool_calls))
    head = {"model": model, "created_at": CREATED_AT}
    lines: list[dict[str, Any] | str] = [head | {"message": m, "done": False} for m in messages]
    if error_after is not None:
        lines = [*lines[:error_after], {"error": "an error was encountered while running the model"}]
    elif done:
        lines.append(head | {"message": _message("")} | _final(done_reason, prompt_eval_count, eval_count))
    return NDJSONReply(lines, delay=delay, first_delay=first_delay, then=then)


def error(status: int, message: str) -> JSONReply:
    """Ollama errors are just `{"error": "<msg>"}` with an HTTP status."""
    return JSONReply(status, {"error": message})


def model_not_found(model: str = "nope") -> JSONReply:
    return error(404, f'model "{model}" not found, try pulling it first')


def last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return str(msg.get("content") or "")
    return ""


def default_handler(req: RecordedRequest) -> Reply:
    """Echo for POST /api/chat; streams unless the body says `"stream": false`."""
    if req.method != "POST" or req.path != "/api/chat":
        return error(404, "404 page not found")
    try:
        body = req.json()
    except ValueError:
        return error(400, "invalid character in request body")
    if not isinstance(body, dict) or not body.get("model"):
        return error(400, "model is required")
    text, model = "echo: " + last_user_text(body), str(body["model"])
    if body.get("stream", True):
        return chat_stream(split_text(text), model=model)
    return chat(text, model=model)
