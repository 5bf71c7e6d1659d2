"""OpenAI Chat Completions wire format <-> llmrpc protos.

Shared by every OpenAI-shaped upstream (OpenAI, Azure, the compatible family and the in-process mock).
Field names match on both sides, so most of this is a straight copy; the work is in presence
(unset proto fields are not sent) and in the few shapes that differ (content parts, tool choice).
"""

from __future__ import annotations

import math
from typing import Any

from llmrpc.v1 import chat_pb2, usage_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import struct_to_dict
from .common import cache_control, new_completion_id

__all__ = [
    "body_from_request",
    "chunk_from_openai",
    "message_to_openai",
    "response_from_openai",
    "tool_choice_to_openai",
    "usage_from_openai",
]

# Optional scalars copied verbatim when the caller set them.
_SCALARS = frozenset({
    "temperature",
    "top_p",
    "n",
    "max_completion_tokens",
    "max_tokens",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "seed",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "service_tier",
    "store",
})
_MODES = {
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    chat_pb2.TOOL_CHOICE_MODE_NONE: "none",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}


def body_from_request(req: pb.CompleteRequest, model: str, *, keep_cache_control: bool = False) -> dict[str, Any]:
    """The OpenAI JSON body for ``req`` (without ``stream``; the adapter adds it)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_to_openai(m, keep_cache_control=keep_cache_control) for m in req.messages],
    }
    for fd, value in req.ListFields():  # only the fields the caller set
        if fd.name in _SCALARS:
            body[fd.name] = value
    if req.stop:
        body["stop"] = list(req.stop)
    if req.logit_bias:
        body["logit_bias"] = dict(req.logit_bias)
    if req.modalities:
        body["modalities"] = list(req.modalities)
    if req.provider_metadata:
        body["metadata"] = dict(req.provider_metadata)
    _add_structured(req, body)
    return body


def _add_structured(req: pb.CompleteRequest, body: dict[str, Any]) -> None:
    if req.HasField("response_format"):
        body["response_format"] = response_format_to_openai(req.response_format)
    if req.tools:
        body["tools"] = [{"type": "function", "function": function_to_openai(t.function)} for t in req.tools]
    if req.HasField("tool_choice"):
        body["tool_choice"] = tool_choice_to_openai(req.tool_choice)
    if req.functions:
        body["functions"] = [function_to_openai(f) for f in req.functions]
    if req.HasField("function_call"):
        choice = req.function_call
        body["function_call"] = (
            {"name": choice.function.name} if choice.HasField("function") else _MODES.get(choice.mode, "auto")
        )
    if req.HasField("audio"):
        body["audio"] = {"voice": req.audio.voice, "format": req.audio.format}
    if req.HasField("prediction"):
        body["prediction"] = {"type": req.prediction.type or "content", "content": req.prediction.content}
    if req.HasField("web_search_options"):
        body["web_search_options"] = web_search_to_openai(req.web_search_options)


def web_search_to_openai(opts: pb.WebSearchOptions) -> dict[str, Any]:
    """OpenAI ``web_search_options``, with only what the caller set."""
    out: dict[str, Any] = {}
    if opts.HasField("search_context_size"):
        out["search_context_size"] = opts.search_context_size
    if opts.HasField("user_location"):
        out["user_location"] = {"type": opts.user_location.type or "approximate",
                                "approximate": approximate_location(opts.user_location.approximate)}
    return out


def approximate_location(loc: pb.ApproximateLocation) -> dict[str, str]:
    """The parts of the location that are set."""
    return {fd.name: value for fd, value in loc.ListFields()}


def response_format_to_openai(fmt: chat_pb2.ResponseFormat) -> dict[str, Any]:
    """OpenAI ``response_format``."""
    if fmt.type != "json_schema":
        return {"type": fmt.type or "text"}
    schema: dict[str, Any] = {"name": fmt.json_schema.name, "schema": struct_to_dict(fmt.json_schema.schema)}
    if fmt.json_schema.HasField("description"):
        schema["description"] = fmt.json_schema.description
    if fmt.json_schema.HasField("strict"):
        schema["strict"] = fmt.json_schema.strict
    return {"type": "json_schema", "json_schema": schema}


def function_to_openai(fn: chat_pb2.FunctionDefinition) -> dict[str, Any]:
    """An OpenAI function declaration."""
    out: dict[str, Any] = {"name": fn.name}
    if fn.HasField("description"):
        out["description"] = fn.description
    if fn.HasField("parameters"):
        out["parameters"] = struct_to_dict(fn.parameters)
    if fn.HasField("strict"):
        out["strict"] = fn.strict
    return out


def tool_choice_to_openai(choice: chat_pb2.ToolChoice) -> Any:
    """OpenAI ``tool_choice``: a mode string or a named function."""
    if choice.HasField("function"):
        return {"type": "function", "function": {"name": choice.function.name}}
    return _MODES.get(choice.mode, "auto")


def message_to_openai(msg: chat_pb2.Message, *, keep_cache_control: bool = False) -> dict[str, Any]:
    """One OpenAI message. Thinking blocks and provider fields stay behind: OpenAI rejects them."""
    out: dict[str, Any] = {"role": msg.role}
    if msg.content_parts:
        out["content"] = [_part_to_openai(p, keep_cache_control) for p in msg.content_parts]
    elif msg.HasField("content"):
        out["content"] = msg.content
    else:
        out["content"] = None if msg.role == "assistant" else ""
    if msg.HasField("name"):
        out["name"] = msg.name
    if msg.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in msg.tool_calls
        ]
    if msg.HasField("tool_call_id"):
        out["tool_call_id"] = msg.tool_call_id
    if msg.HasField("function_call"):
        out["function_call"] = {"name": msg.function_call.name, "arguments": msg.function_call.arguments}
    if msg.HasField("refusal"):
        out["refusal"] = msg.refusal
    return out


def _part_to_openai(part: chat_pb2.ContentPart, keep_cache_control: bool) -> dict[str, Any]:
    kind = part.WhichOneof("part")
    out: dict[str, Any]
    if kind == "text":
        out = {"type": "text", "text": part.text}
    elif kind == "image_url":
        image: dict[str, Any] = {"url": part.image_url.url}
        if part.image_url.HasField("detail"):
            image["detail"] = part.image_url.detail
        out = {"type": "image_url", "image_url": image}
    elif kind == "input_audio":
        out = {"type": "input_audio", "input_audio": {"data": part.input_audio.data, "format": part.input_audio.format}}
    elif kind == "file":
        file = {k: getattr(part.file, k) for k in ("file_data", "file_id", "filename") if part.file.HasField(k)}
        out = {"type": "file", "file": file}
    else:
        out = {"type": "refusal", "refusal": part.refusal}
    if keep_cache_control and part.HasField("cache_control"):
        out["cache_control"] = cache_control(part.cache_control)
    return out


# ---- responses -------------------------------------------------------------------------------


def response_from_openai(data: dict[str, Any], *, created: int) -> pb.CompleteResponse:
    """An OpenAI ``chat.completion`` JSON object as a proto response."""
    resp = pb.CompleteResponse(
        id=data.get("id") or new_completion_id(),
        object="chat.completion",
        created=int(data.get("created") or created),
        model=data.get("model") or "",
    )
    _copy_envelope(data, resp)
    extras = _top_level_extras(data)
    for i, choice in enumerate(data.get("choices") or ()):
        out = resp.choices.add(index=int(choice.get("index", i)), finish_reason=_finish(choice.get("finish_reason")))
        _fill_message(out.message, choice.get("message") or {}, extras)
        if choice.get("logprobs"):
            _fill_logprobs(out.logprobs, choice["logprobs"])
    if data.get("usage"):
        resp.usage.CopyFrom(usage_from_openai(data["usage"]))
    return resp


def _copy_envelope(data: dict[str, Any], out: pb.CompleteResponse | pb.StreamCompleteResponse) -> None:
    if data.get("system_fingerprint"):
        out.system_fingerprint = data["system_fingerprint"]
    if data.get("service_tier"):
        out.service_tier = data["service_tier"]


def _top_level_extras(data: dict[str, Any]) -> dict[str, Any]:
    """Perplexity-style top-level citations travel on the message's provider_specific_fields."""
    return {k: data[k] for k in ("citations", "search_results") if data.get(k)}


def _finish(reason: Any) -> str:
    if not reason:
        return ""
    return "stop" if reason == "error" else str(reason)


def _fill_message(out: chat_pb2.Message, msg: dict[str, Any], extras: dict[str, Any]) -> None:
    out.role = msg.get("role") or "assistant"
    if msg.get("content") is not None:
        out.content = _text(msg["content"])
    if msg.get("refusal") is not None:
        out.refusal = msg["refusal"]
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning:
        out.reasoning_content = reasoning
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        out.tool_calls.add(
            id=call.get("id") or "", type=call.get("type") or "function",
            function=chat_pb2.FunctionCall(name=fn.get("name") or "", arguments=_args(fn.get("arguments"))),
        )
    if msg.get("function_call"):
        fc = msg["function_call"]
        out.function_call.name = fc.get("name") or ""
        out.function_call.arguments = _args(fc.get("arguments"))
    for ann in msg.get("annotations") or ():
        if ann.get("type") == "url_citation" and isinstance(ann.get("url_citation"), dict):
            citation = chat_pb2.UrlCitation(**_citation(ann["url_citation"]))
            out.annotations.add(type="url_citation", url_citation=citation)
    extra = dict(extras)
    if msg.get("reasoning_details"):
        extra["reasoning_details"] = msg["reasoning_details"]
    if extra:
        out.provider_specific_fields.update(extra)


def _text(content: Any) -> str:
    """Content is a string, but some compatible hosts send a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _args(arguments: Any) -> str:
    """Arguments are a JSON string; Azure sends null and some hosts an object."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    from ..proto_json import dumps

    return dumps(arguments).decode()


def _citation(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "start_index": int(c.get("start_index") or 0),
        "end_index": int(c.get("end_index") or 0),
        "title": c.get("title") or "",
        "url": c.get("url") or "",
    }


def _fill_logprobs(out: chat_pb2.ChoiceLogprobs, data: dict[str, Any]) -> None:
    for key in ("content", "refusal"):
        for tok in data.get(key) or ():
            entry = getattr(out, key).add(
                token=tok.get("token", ""), logprob=float(tok.get("logprob", 0.0)), bytes=tok.get("bytes") or []
            )
            for top in tok.get("top_logprobs") or ():
                entry.top_logprobs.add(
                    token=top.get("token", ""), logprob=float(top.get("logprob", 0.0)), bytes=top.get("bytes") or []
                )


def usage_from_openai(data: dict[str, Any]) -> usage_pb2.Usage:
    """OpenAI usage; ``cached_tokens`` is mirrored to LiteLLM's top-level ``cache_read_input_tokens``, and a
    provider-reported ``cost`` is kept."""
    prompt = int(data.get("prompt_tokens") or 0)
    completion = int(data.get("completion_tokens") or 0)
    usage = usage_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(data.get("total_tokens") or prompt + completion),
    )
    details = data.get("prompt_tokens_details") or {}
    for key in ("cached_tokens", "cache_write_tokens", "audio_tokens", "text_tokens", "image_tokens"):
        if details.get(key) is not None:
            setattr(usage.prompt_tokens_details, key, int(details[key]))
    cdetails = data.get("completion_tokens_details") or {}
    for key in ("reasoning_tokens", "audio_tokens", "accepted_prediction_tokens", "rejected_prediction_tokens",
                "text_tokens"):
        if cdetails.get(key) is not None:
            setattr(usage.completion_tokens_details, key, int(cdetails[key]))
    cached = details.get("cached_tokens")
    if cached is not None:
        usage.cache_read_input_tokens = int(cached)
    written = details.get("cache_write_tokens")
    if written is not None:
        usage.cache_creation_input_tokens = int(written)
    cost = data.get("cost")  # OpenRouter reports what the call cost
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
        usage.cost = float(cost)
    return usage


# ---- stream chunks ---------------------------------------------------------------------------


def chunk_from_openai(data: dict[str, Any], *, stream_id: str, created: int, model: str) -> pb.StreamCompleteResponse:
    """One OpenAI ``chat.completion.chunk`` as a proto chunk (ids and model kept stable per stream)."""
    chunk = pb.StreamCompleteResponse(
        id=stream_id, object="chat.completion.chunk", created=created, model=data.get("model") or model
    )
    _copy_envelope(data, chunk)
    for i, choice in enumerate(data.get("choices") or ()):
        out = chunk.choices.add(index=int(choice.get("index", i)))
        out.delta.SetInParent()  # OpenAI always sends a delta, even an empty one
        _fill_delta(out.delta, choice.get("delta") or {})
        if choice.get("finish_reason"):
            out.finish_reason = _finish(choice["finish_reason"])
        if choice.get("logprobs"):
            _fill_logprobs(out.logprobs, choice["logprobs"])
    if data.get("usage"):
        chunk.usage.CopyFrom(usage_from_openai(data["usage"]))
    return chunk


def _fill_delta(out: chat_pb2.Delta, delta: dict[str, Any]) -> None:
    if delta.get("role"):
        out.role = delta["role"]
    if delta.get("content") is not None:
        out.content = _text(delta["content"])
    if delta.get("refusal") is not None:
        out.refusal = delta["refusal"]
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if reasoning:
        out.reasoning_content = reasoning
    for i, call in enumerate(delta.get("tool_calls") or ()):
        frag = out.tool_calls.add(index=int(call.get("index", i)))
        if call.get("id"):
            frag.id = call["id"]
        if call.get("type"):
            frag.type = call["type"]
        fn = call.get("function") or {}
        if fn.get("name"):
            frag.function.name = fn["name"]
        frag.function.arguments = _args(fn.get("arguments"))
    if delta.get("function_call"):
        fc = delta["function_call"]
        if fc.get("name"):
            out.function_call.name = fc["name"]
        out.function_call.arguments = _args(fc.get("arguments"))
