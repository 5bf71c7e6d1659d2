"""Google Gemini API (AI Studio, v1beta) on the wire.

lowerCamelCase JSON; streaming is `:streamGenerateContent?alt=sse` where every event is a complete
GenerateContentResponse carrying only new parts, finishReason on the last, running usage, no `[DONE]`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .server import JSONReply, RecordedRequest, Reply, SSEReply, Then, dumps, split_text

FunctionCall = tuple[str, dict[str, Any], str | None]  # (name, args, thoughtSignature)

_PATH = re.compile(
    r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


def default_usage(prompt: int = 5, candidates: int = 7, thoughts: int = 0) -> dict[str, Any]:
    """usageMetadata; candidatesTokenCount excludes thoughts, the total includes them."""
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _call_part(name: str, args: dict[str, Any], signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _parts(
    text: str | None, thoughts: Sequence[str] | None, function_calls: Sequence[FunctionCall] | None
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": t, "thought": True} for t in thoughts or ()]
    if text is not None:
        parts.append({"text": text})
    parts += [_call_part(*call) for call in function_calls or ()]
    return parts


def _response(
    parts: list[dict[str, Any]] | None,
    usage: dict[str, Any],
    finish_reason: str | None,
    model_version: str,
    response_id: str,
    grounding: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GenerateContentResponse; parts=None means a prompt-level response with no candidates."""
    body: dict[str, Any] = {}
    if parts is not None:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        if grounding is not None:
            candidate["groundingMetadata"] = grounding
        body["candidates"] = [candidate]
    body |= {"usageMetadata": usage, "modelVersion": model_version, "responseId": response_id}
    return body


def generate_content(
    text: str | None = "hi",
    *,
    thoughts: Sequence[str] | None = None,
    function_calls: Sequence[FunctionCall] | None = None,
    finish_reason: str | None = "STOP",
    usage: dict[str, Any] | None = None,
    model_version: str = "gemini-2.5-flash",
    prompt_blocked: str | None = None,
    response_id: str = "resp-1",
    grounding: dict[str, Any] | None = None,
) -> JSONReply:
    """A unary response; `prompt_blocked="SAFETY"` gives no candidates plus promptFeedback;
    `grounding` is the candidate's groundingMetadata (see `grounding_metadata`)."""
    if prompt_blocked is not None:
        return JSONReply(200, _blocked(prompt_blocked, model_version, response_id))
    usage = usage if usage is not None else default_usage(thoughts=4 if thoughts else 0)
    parts = _parts(text, thoughts, function_calls)
    return JSONReply(200, _response(parts, usage, finish_reason, model_version, response_id, grounding))


def grounding_metadata(sources: Sequence[tuple[str, str]], supports: Sequence[tuple[int, int, list[int]]],
                       ) -> dict[str, Any]:
    """Google Search grounding: `sources` are (uri, title); `supports` are (start, end, source indices).
    A zero startIndex is omitted, as proto3 JSON omits defaults."""
    def segment(start: int, end: int) -> dict[str, Any]:
        return ({"startIndex": start} if start else {}) | {"endIndex": end, "text": "..."}

    return {
        "webSearchQueries": ["who won euro 2024"],
        "searchEntryPoint": {"renderedContent": "<style>...</style>"},
        "groundingChunks": [{"web": {"uri": uri, "title": title}} for uri, title in sources],
        "groundingSupports": [{"segment": segment(start, end), "groundingChunkIndices": indices}
                              for start, end, indices in supports],
    }


def _blocked(reason: str, model_version: str, response_id: str) -> dict[str, Any]:
    feedback = {
        "blockReason": reason,
        "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}],
    }
    usage = {"promptTokenCount": 5, "totalTokenCount": 5}
    return {"promptFeedback": feedback} | _response(None, usage, None, model_version, response_id)


def _running(final: dict[str, Any], done: int, total: int) -> dict[str, Any]:
    """Usage after `done` of `total` events: candidates grow toward the final count."""
    if done >= total:
        return final
    candidates = min(done, int(final.get("candidatesTokenCount", 0)))
    prompt = int(final.get("promptTokenCount", 0))
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    }


def stream_generate_content(
    pieces: Sequence[str] = ("Hel", "lo"),
    *,
    thoughts: Sequence[str] | None = None,
    function_calls: Sequence[FunctionCall] | None = None,
    finish_reason: str = "STOP",
    usage: dict[str, Any] | None = None,
    model_version: str = "gemini-2.5-flash",
    response_id: str = "resp-1",
    error_after: int | None = None,
    delay: float = 0.0,
    first_delay: float = 0.0,
    then: Then = "close",
    grounding: dict[str, Any] | None = None,
) -> SSEReply:
    """SSE events: one per thought piece, one per text piece, one with all function calls;
    finishReason, final usage and `grounding` ride on the last. `error_after=k` ends after k events with a raw
    multi-line error JSON (no `data:` prefix), as the API does mid-stream."""
    final = usage if usage is not None else default_usage(thoughts=4 if thoughts else 0)
    batches = [[{"text": t, "thought": True}] for t in thoughts or ()]
    batches += [[{"text": p}] for p in pieces]
    if function_calls:
        batches.append([_call_part(*call) for call in function_calls])
    batches = batches or [[{"text": ""}]]
    events: list[str] = []
    for n, parts in enumerate(batches, start=1):
        if error_after is not None and n > error_after:
            events.append(
                json.dumps(_error_body(500, "INTERNAL", "An internal error has occurred."), indent=2)
            )
            break
        last = n == len(batches)
        body = _response(
            parts,
            _running(final, n, len(batches)),
            finish_reason if last else None,
            model_version,
            response_id,
            grounding if last else None,
        )
        events.append("data: " + dumps(body))
    return SSEReply(events, 200, {}, delay=delay, first_delay=first_delay, then=then)


# ---- errors (§3.5) -------------------------------------------------------------------------------
def _error_body(code: int, status: str, message: str, reason: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason is not None:
        err["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            }
        ]
    return {"error": err}


def error(code: int, status: str, message: str, reason: str | None = None) -> JSONReply:
    """`{"error":{code,message,status,details:[ErrorInfo]}}`."""
    return JSONReply(code, _error_body(code, status, message, reason))


def api_key_invalid() -> JSONReply:
    return error(
        400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
    )


def resource_exhausted() -> JSONReply:
    return error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")


def unavailable() -> JSONReply:
    return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def not_found(model: str = "gemini-nope") -> JSONReply:
    message = f"models/{model} is not found for API version v1beta, or is not supported for generateContent."
    return error(404, "NOT_FOUND", message)


# ---- default handler -----------------------------------------------------------------------------
def last_user_text(body: dict[str, Any]) -> str:
    """Text parts of the last user Content (role may be omitted for single-turn requests)."""
    for content in reversed(body.get("contents") or []):
        if isinstance(content, dict) and content.get("role", "user") == "user":
            parts = content.get("parts") or []
            return "".join(p.get("text", "") for p in parts if isinstance(p, dict) and not p.get("thought"))
    return ""


def default_handler(req: RecordedRequest) -> Reply:
    """Echo for POST /v1beta/models/{model}:generateContent | :streamGenerateContent[?alt=sse]."""
    match = _PATH.match(req.path)
    if req.method != "POST" or match is None:
        return error(404, "NOT_FOUND", f"Method not found: {req.method} {req.path}")
    try:
        body = req.json()
    except ValueError:
        return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    if not isinstance(body, dict) or not body.get("contents"):
        return error(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified")
    text, model = "echo: " + last_user_text(body), match["model"]
    if match["method"] == "generateContent":
        return generate_content(text, model_version=model)
    stream = stream_generate_content(split_text(text), model_version=model)
    if req.query.get("alt") == "sse":
        return stream
    # Without alt=sse the API streams one JSON array of responses.
    return JSONReply(200, "[" + ",\n".join(e.removeprefix("data: ") for e in stream.events) + "]")
