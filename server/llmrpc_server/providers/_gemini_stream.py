"""Gemini answers -> llmrpc protos: ``GenerateContentResponse`` (unary and each SSE event), usage,
finish reasons and errors.

Parts map as LiteLLM maps them: non-thought text -> ``content``; ``thought: true`` parts ->
``reasoning_content`` plus ``thinking_blocks``; ``functionCall`` -> ``tool_calls`` (whole calls, ids
generated when Gemini sends none) with the part's ``thoughtSignature`` on the call's
``provider_specific_fields["thought_signature"]``. A signature on any other part signs the open
(unsigned) thinking block, or a signature-only block, so it can be sent back next turn. Every
signature is also listed in the message's ``provider_specific_fields["thought_signatures"]``.

Streams have no ``[DONE]``: a candidate is finished when its ``finishReason`` arrives (a prompt block,
``promptFeedback.blockReason`` without candidates, finishes the stream too); ``usageMetadata`` carries
running totals, so the last one seen is the stream's usage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmrpc.v1 import chat_pb2, usage_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import dumps, loads
from .base import ErrorKind, ProviderError, StreamEvent, StreamState
from .common import classify, new_completion_id, now

__all__ = [
    "GeminiStream",
    "finish_reason",
    "gemini_error",
    "parse_stream_event",
    "response_from_gemini",
    "usage_chunk",
    "usage_from_gemini",
]

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
# LiteLLM: these end in content_filter; MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL,
# TOO_MANY_TOOL_CALLS, FINISH_REASON_UNSPECIFIED and unknown values end in stop.
_FILTERED = frozenset(
    {
        "SAFETY", "RECITATION", "LANGUAGE", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
        "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER", "NO_IMAGE",
    }
)  # fmt: skip
# Unary candidates stopped for these have their content withheld (LiteLLM: content null).
_WITHHELD = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
     "IMAGE_PROHIBITED_CONTENT"}
)
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
# A 429 is a quota (not worth retrying soon) only when it is about money or a daily allowance.
_QUOTA_PHRASES = ("billing", "credit", "prepayment", "exceeded your current quota", "insufficient_quota")
_MODALITY_FIELDS = {"TEXT": "text_tokens", "AUDIO": "audio_tokens", "IMAGE": "image_tokens"}


def finish_reason(raw: str, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason for a Gemini ``finishReason`` (function calls present => tool_calls)."""
    if has_tool_calls:
        return "tool_calls"
    if raw in _FINISH:
        return _FINISH[raw]
    return "content_filter" if raw in _FILTERED or raw.startswith("IMAGE_") else "stop"


def new_call_id() -> str:
    """``call_<hex>``, for function calls Gemini sends without an id."""
    return f"call_{uuid.uuid4().hex[:24]}"


# ---- usage -------------------------------------------------------------------------------------


def usage_from_gemini(meta: Mapping[str, Any]) -> usage_pb2.Usage:
    """``promptTokenCount`` already includes cached tokens (tool-use prompt tokens are added);
    completion = candidates + thoughts, since Gemini's candidate count excludes thoughts."""
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = _count(meta, "candidatesTokenCount") + thoughts
    usage = usage_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    if meta.get("cachedContentTokenCount") is not None:
        cached = _count(meta, "cachedContentTokenCount")
        usage.prompt_tokens_details.cached_tokens = cached
        usage.cache_read_input_tokens = cached
    if meta.get("thoughtsTokenCount") is not None:
        usage.completion_tokens_details.reasoning_tokens = thoughts
    _modalities(usage.prompt_tokens_details, meta.get("promptTokensDetails"))
    _modalities(usage.completion_tokens_details, meta.get("candidatesTokensDetails"))
    return usage


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    return int(value) if isinstance(value, int | float) else 0


def _modalities(out: usage_pb2.PromptTokensDetails | usage_pb2.CompletionTokensDetails, details: Any) -> None:
    for item in details if isinstance(details, list) else ():
        name = _MODALITY_FIELDS.get(str(item.get("modality"))) if isinstance(item, dict) else None
        if name is not None and name in out.DESCRIPTOR.fields_by_name:
            setattr(out, name, getattr(out, name) + _count(item, "tokenCount"))


# ---- unary -------------------------------------------------------------------------------------


def response_from_gemini(data: Mapping[str, Any], *, model: str) -> pb.CompleteResponse:
    """A ``GenerateContentResponse`` as a ``chat.completion``."""
    if "candidates" not in data and "promptFeedback" not in data:
        raise ProviderError(ErrorKind.BAD_RESPONSE, "upstream answer has no candidates and no promptFeedback")
    resp = pb.CompleteResponse(
        id=str(data.get("responseId") or new_completion_id()), object="chat.completion", created=now(),
        model=str(data.get("modelVersion") or model),
    )
    candidates = [c for c in data.get("candidates") or () if isinstance(c, dict)]
    if not candidates:
        resp.choices.append(_blocked_choice(data))
    for i, candidate in enumerate(candidates):
        resp.choices.append(_choice(candidate, i))
    if isinstance(data.get("usageMetadata"), dict):
        resp.usage.CopyFrom(usage_from_gemini(data["usageMetadata"]))
    return resp


def _blocked_choice(data: Mapping[str, Any]) -> chat_pb2.Choice:
    """No candidates: the prompt was blocked (content unset, content_filter)."""
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    choice = chat_pb2.Choice(index=0, finish_reason="content_filter" if reason else "stop")
    choice.message.role = "assistant"
    if reason:
        choice.provider_finish_reason = str(reason)
    return choice


def _choice(candidate: Mapping[str, Any], i: int) -> chat_pb2.Choice:
    raw = str(candidate.get("finishReason") or "")
    msg = _message(_parts(candidate))
    if raw in _WITHHELD:
        msg.ClearField("content")
    choice = chat_pb2.Choice(
        index=int(candidate.get("index", i)), finish_reason=finish_reason(raw, bool(msg.tool_calls))
    )
    choice.message.CopyFrom(msg)
    choice.message.annotations.extend(grounding_annotations(candidate))
    if raw:
        choice.provider_finish_reason = raw
    if isinstance(candidate.get("logprobsResult"), dict):
        _fill_logprobs(choice.logprobs, candidate["logprobsResult"])
    return choice


def grounding_annotations(candidate: Mapping[str, Any]) -> list[chat_pb2.Annotation]:
    """Google Search grounding as OpenAI ``url_citation`` annotations: one per (supported span, web
    source) pair, the span's indices as Gemini gives them."""
    meta = candidate.get("groundingMetadata")
    if not isinstance(meta, dict):
        return []
    chunks = [c.get("web") if isinstance(c, dict) else None for c in meta.get("groundingChunks") or ()]
    out: list[chat_pb2.Annotation] = []
    for support in meta.get("groundingSupports") or ():
        if not isinstance(support, dict):
            continue
        segment: dict[str, Any] = support["segment"] if isinstance(support.get("segment"), dict) else {}
        for i in support.get("groundingChunkIndices") or ():
            web = chunks[i] if isinstance(i, int) and 0 <= i < len(chunks) else None
            if isinstance(web, dict):
                out.append(chat_pb2.Annotation(type="url_citation", url_citation=chat_pb2.UrlCitation(
                    start_index=int(segment.get("startIndex") or 0), end_index=int(segment.get("endIndex") or 0),
                    title=str(web.get("title") or ""), url=str(web.get("uri") or ""))))
    return out


def _parts(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _message(parts: list[dict[str, Any]]) -> chat_pb2.Message:
    msg = chat_pb2.Message(role="assistant")
    texts: list[str] = []
    thoughts: list[str] = []
    signatures: list[str] = []
    images: list[dict[str, Any]] = []
    for part in parts:
        signature = str(part.get("thoughtSignature") or "")
        if signature:
            signatures.append(signature)
        if isinstance(part.get("functionCall"), dict):
            msg.tool_calls.append(_tool_call(part["functionCall"], signature))
        elif part.get("thought"):
            thoughts.append(str(part.get("text") or ""))
            block = msg.thinking_blocks.add(type="thinking", thinking=thoughts[-1])
            if signature:
                block.signature = signature
        else:
            if "text" in part:
                texts.append(str(part["text"] or ""))
            elif isinstance(part.get("inlineData"), dict):
                _media_out(msg, part["inlineData"], images)
            if signature:
                _sign(msg.thinking_blocks, signature)
    if texts:
        msg.content = "".join(texts)
    if thoughts:
        msg.reasoning_content = "".join(thoughts)
    extras: dict[str, Any] = {"thought_signatures": signatures, "images": images}
    if signatures or images:
        msg.provider_specific_fields.update({k: v for k, v in extras.items() if v})
    return msg


def _tool_call(call: Mapping[str, Any], signature: str) -> chat_pb2.ToolCall:
    arguments = dumps(call.get("args") or {}).decode()
    out = chat_pb2.ToolCall(
        id=str(call.get("id") or new_call_id()), type="function",
        function=chat_pb2.FunctionCall(name=str(call.get("name") or ""), arguments=arguments),
    )
    if signature:
        out.provider_specific_fields.update({"thought_signature": signature})
    return out


def _sign(blocks: Any, signature: str) -> None:
    """A signature on a non-thought part closes the open thinking block (as the stream builder does)."""
    if blocks and blocks[-1].type == "thinking" and not blocks[-1].HasField("signature"):
        blocks[-1].signature = signature
    else:
        blocks.add(type="thinking", thinking="", signature=signature)


def _media_out(msg: chat_pb2.Message, blob: Mapping[str, Any], images: list[dict[str, Any]]) -> None:
    """Generated media: images as data URLs in provider_specific_fields["images"] (LiteLLM's
    ``message.images``), audio as ``message.audio``."""
    mime, data = str(blob.get("mimeType") or ""), str(blob.get("data") or "")
    if mime.startswith("audio/"):
        msg.audio.id = f"audio_{uuid.uuid4().hex[:24]}"
        msg.audio.data = msg.audio.data + data
    else:
        url = f"data:{mime or 'application/octet-stream'};base64,{data}"
        images.append({"type": "image_url", "image_url": {"url": url}, "index": len(images)})


def _fill_logprobs(out: chat_pb2.ChoiceLogprobs, result: Mapping[str, Any]) -> None:
    """``logprobsResult.chosenCandidates[i]`` with ``topCandidates[i].candidates`` as alternatives."""
    raw_tops = result.get("topCandidates")
    tops: list[Any] = raw_tops if isinstance(raw_tops, list) else []
    for i, chosen in enumerate(result.get("chosenCandidates") or ()):
        entry = out.content.add(**_token(chosen))
        alternatives = tops[i].get("candidates") if i < len(tops) and isinstance(tops[i], dict) else None
        for alt in alternatives or ():
            entry.top_logprobs.add(**_token(alt))


def _token(candidate: Any) -> dict[str, Any]:
    data = candidate if isinstance(candidate, dict) else {}
    token = str(data.get("token") or "")
    logprob = float(data.get("logProbability") or 0.0)
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


# ---- streaming ---------------------------------------------------------------------------------


@dataclass
class _Candidate:
    """Per-candidate stream bookkeeping."""

    tools: int = 0
    signatures: list[str] = field(default_factory=list)
    finished: bool = False


@dataclass(slots=True)
class GeminiStream:
    """Gemini's own stream state: each candidate's bookkeeping, and the last running usage reported."""

    candidates: dict[int, _Candidate] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)


_State = StreamState[GeminiStream]


def parse_stream_event(event: StreamEvent, state: _State) -> list[pb.StreamCompleteResponse]:
    """One SSE event (a whole ``GenerateContentResponse`` with only the new parts), or a raw JSON
    document the API wrote without ``data:`` (errors); errors raise ``ProviderError``."""
    try:
        data = loads(event.data)
    except ValueError as exc:
        kind = ErrorKind.STREAM_ERROR if event.event == "raw" else ErrorKind.BAD_RESPONSE
        raise ProviderError(kind, f"upstream stream sent invalid JSON: {event.data[:200]!r}") from exc
    chunks: list[pb.StreamCompleteResponse] = []
    for item in data if isinstance(data, list) else [data]:
        chunks.extend(_stream_response(item, state))
    return chunks


def _stream_response(data: Any, state: _State) -> Iterable[pb.StreamCompleteResponse]:
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.BAD_RESPONSE, "upstream stream sent JSON that is not an object")
    if "error" in data:
        raise _stream_error(data)
    if not state.id:
        state.id = str(data.get("responseId") or new_completion_id())
        state.model = str(data.get("modelVersion") or state.model)
    if isinstance(data.get("usageMetadata"), dict):
        state.own.usage = data["usageMetadata"]
    chunk = _new_chunk(state)
    candidates = [c for c in data.get("candidates") or () if isinstance(c, dict)]
    for i, candidate in enumerate(candidates):
        choice = _chunk_choice(candidate, i, state)
        if choice is not None:
            chunk.choices.append(choice)
    feedback = data.get("promptFeedback")
    if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
        chunk.choices.append(_blocked_chunk_choice(str(feedback["blockReason"]), state))
    tracked = _tracked(state)
    state.finished = bool(tracked) and all(c.finished for c in tracked.values())
    return (chunk,) if chunk.choices else ()


def _tracked(state: _State) -> dict[int, _Candidate]:
    return state.own.candidates


def _new_chunk(state: _State) -> pb.StreamCompleteResponse:
    return pb.StreamCompleteResponse(
        id=state.id, object="chat.completion.chunk", created=state.created, model=state.model
    )


def _chunk_choice(candidate: Mapping[str, Any], i: int, state: _State) -> chat_pb2.ChunkChoice | None:
    index = int(candidate.get("index", i))
    track = _tracked(state).setdefault(index, _Candidate())
    choice = chat_pb2.ChunkChoice(index=index)
    _fill_delta(choice.delta, _parts(candidate), track)
    choice.delta.annotations.extend(grounding_annotations(candidate))
    if isinstance(candidate.get("logprobsResult"), dict):
        _fill_logprobs(choice.logprobs, candidate["logprobsResult"])
    raw = str(candidate.get("finishReason") or "")
    if raw:
        choice.finish_reason = finish_reason(raw, track.tools > 0)
        choice.provider_finish_reason = raw
        if track.signatures:
            choice.delta.provider_specific_fields.update({"thought_signatures": track.signatures})
        track.finished = True
    if not (choice.delta.ListFields() or choice.HasField("finish_reason") or choice.HasField("logprobs")):
        return None
    if index not in state.role_sent:
        choice.delta.role = "assistant"
        state.role_sent.add(index)
    return choice


def _fill_delta(delta: chat_pb2.Delta, parts: list[dict[str, Any]], track: _Candidate) -> None:
    images: list[dict[str, Any]] = []
    for part in parts:
        signature = str(part.get("thoughtSignature") or "")
        if signature:
            track.signatures.append(signature)
        if isinstance(part.get("functionCall"), dict):
            _call_delta(delta, part["functionCall"], signature, track)
            continue
        text = str(part.get("text") or "")
        if part.get("thought"):
            if text:
                delta.reasoning_content = delta.reasoning_content + text
            if text or signature:
                block = delta.thinking_blocks.add(type="thinking", thinking=text)
                if signature:
                    block.signature = signature
            continue
        if text:
            delta.content = delta.content + text
        if isinstance(part.get("inlineData"), dict):
            _media_out(chat_pb2.Message(), part["inlineData"], images)
        if signature:
            delta.thinking_blocks.add(type="thinking", thinking="", signature=signature)
    if images:
        delta.provider_specific_fields.update({"images": images})


def _call_delta(delta: chat_pb2.Delta, call: Mapping[str, Any], signature: str, track: _Candidate) -> None:
    """Gemini sends whole calls: an OpenAI-style opening fragment, then the arguments."""
    index, track.tools = track.tools, track.tools + 1
    first = delta.tool_calls.add(index=index, id=str(call.get("id") or new_call_id()), type="function")
    first.function.name = str(call.get("name") or "")
    if signature:
        first.provider_specific_fields.update({"thought_signature": signature})
    delta.tool_calls.add(index=index).function.arguments = dumps(call.get("args") or {}).decode()


def _blocked_chunk_choice(reason: str, state: _State) -> chat_pb2.ChunkChoice:
    _tracked(state).setdefault(0, _Candidate()).finished = True
    choice = chat_pb2.ChunkChoice(index=0, finish_reason="content_filter", provider_finish_reason=reason)
    if 0 not in state.role_sent:
        choice.delta.role = "assistant"
        state.role_sent.add(0)
    return choice


def usage_chunk(state: _State) -> pb.StreamCompleteResponse:
    """The final no-choices chunk with the last running usage the stream reported."""
    chunk = _new_chunk(state)
    chunk.usage.CopyFrom(usage_from_gemini(state.own.usage))
    return chunk


# ---- errors ------------------------------------------------------------------------------------


def gemini_error(status: int, headers: Mapping[str, str], data: Any) -> ProviderError:
    """Classify ``{"error": {code, message, status, details: [ErrorInfo, QuotaFailure, RetryInfo]}}``."""
    err = _error_object(data)
    message = str(err.get("message") or "")
    raw_details = err.get("details")
    details = [d for d in raw_details if isinstance(d, dict)] if isinstance(raw_details, list) else []
    reason = next((str(d["reason"]) for d in details if d.get("reason")), None)
    grpc_status = str(err["status"]) if err.get("status") else None
    error = classify(status, message, headers, error_type=grpc_status, error_code=reason)
    if reason in _AUTH_REASONS or grpc_status == "UNAUTHENTICATED":
        error.kind = ErrorKind.AUTH
    elif status == 429 or grpc_status == "RESOURCE_EXHAUSTED":
        error.kind = _exhausted_kind(message, details)
    elif error.kind is ErrorKind.OVERLOADED and status in (500, 503):
        error.kind = ErrorKind.UNAVAILABLE  # "The model is overloaded" is a plain 503 (LiteLLM: 503 class)
    delay = _retry_delay(details)
    if delay is not None and error.retry_after is None:
        error.retry_after = delay
    return error


def _error_object(data: Any) -> dict[str, Any]:
    if isinstance(data, list) and data:
        data = data[0]  # the streaming endpoint without alt=sse wraps everything in an array
    if not isinstance(data, dict):
        return {"message": str(data)[:500]} if data else {}
    err = data.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    return {"message": dumps(data)[:500].decode("utf-8", "replace")} if data else {}


def _exhausted_kind(message: str, details: list[dict[str, Any]]) -> ErrorKind:
    """RESOURCE_EXHAUSTED: a per-day quota or a billing message is QUOTA; per-minute limits, a
    RetryInfo, or the generic "Resource has been exhausted (e.g. check quota)" are RATE_LIMIT."""
    quotas = [
        f"{v.get('quotaId', '')} {v.get('quotaMetric', '')}".lower()
        for d in details if str(d.get("@type", "")).endswith("QuotaFailure")
        for v in d.get("violations") or () if isinstance(v, dict)
    ]  # fmt: skip
    if any("perday" in q or "per_day" in q for q in quotas):
        return ErrorKind.QUOTA
    if quotas or _retry_delay(details) is not None:
        return ErrorKind.RATE_LIMIT
    text = message.lower()
    return ErrorKind.QUOTA if any(p in text for p in _QUOTA_PHRASES) else ErrorKind.RATE_LIMIT


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    """``RetryInfo.retryDelay`` ("37s", "1.5s") in seconds."""
    for detail in details:
        delay = detail.get("retryDelay")
        if not str(detail.get("@type", "")).endswith("RetryInfo"):
            continue
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(float(delay[:-1]), 0.0)
            except ValueError:
                return None
    return None


def _stream_error(data: dict[str, Any]) -> ProviderError:
    """An error inside a 200 stream; without an HTTP code of its own it is a stream error."""
    code = _error_object(data).get("code")
    if isinstance(code, int) and code >= 400:
        return gemini_error(code, {}, data)
    error = gemini_error(500, {}, data)
    if error.kind is ErrorKind.UNAVAILABLE:
        error.kind = ErrorKind.STREAM_ERROR
    return error
