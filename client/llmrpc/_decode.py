"""Hand-written conversion of answers (protos) into the ``_types`` objects.

Not ``json_format``: it is several times slower on this hot path, and it would
not restore integral numbers or LiteLLM's key layout anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from ._types import (
    ChatCompletionDeltaToolCall,
    ChatCompletionMessageToolCall,
    Choices,
    CompletionTokensDetailsWrapper,
    Delta,
    Function,
    Message,
    ModelResponse,
    ModelResponseStream,
    PromptTokensDetailsWrapper,
    ServerToolUse,
    StreamingChoices,
    Usage,
)
from .v1 import chat_pb2, completion_service_pb2, usage_pb2

__all__ = ["chunk_from_proto", "hidden_params", "response_from_proto", "struct_to_dict", "usage_from_proto"]


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> plain dict; integral numbers come back as ints (Struct only has doubles).

    The server's ``proto_json.struct_to_dict`` is the same function (the client cannot import the
    server); ``tests/test_struct_numbers.py`` holds both to the same answers.
    """
    return {key: _value_to_python(value) for key, value in struct.fields.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        # is_integer() is False for inf and nan, so they stay floats (int() would raise); past 2**53 a
        # double no longer holds every integer, so the sender's int cannot be known: keep the float.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value_to_python(item) for item in value.list_value.values]
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def _opt(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _opt_struct(message: Any, field: str) -> dict[str, Any] | None:
    return struct_to_dict(getattr(message, field)) if message.HasField(field) else None


def response_from_proto(pb: completion_service_pb2.CompleteResponse) -> ModelResponse:
    response = ModelResponse(
        id=pb.id,
        created=pb.created,
        model=pb.model,
        object=pb.object or "chat.completion",
        system_fingerprint=_opt(pb, "system_fingerprint"),
        choices=[_choice_from_proto(choice) for choice in pb.choices],
        usage=usage_from_proto(pb.usage) if pb.HasField("usage") else Usage(),
        service_tier=_opt(pb, "service_tier"),
    )
    response._hidden_params = hidden_params(pb.metadata)
    return response


def chunk_from_proto(
    pb: completion_service_pb2.StreamCompleteResponse, hidden: Mapping[str, Any]
) -> ModelResponseStream:
    has_usage = pb.HasField("usage")
    choices = [_streaming_choice(choice) for choice in pb.choices]
    if not choices and has_usage:  # LiteLLM's usage chunk has one empty choice: choices[0] never fails
        choices = [StreamingChoices(index=0, delta=Delta())]
    chunk = ModelResponseStream(
        id=pb.id,
        created=pb.created,
        model=pb.model,
        object=pb.object or "chat.completion.chunk",
        system_fingerprint=_opt(pb, "system_fingerprint"),
        choices=choices,
        usage=usage_from_proto(pb.usage) if has_usage else None,
        service_tier=_opt(pb, "service_tier"),
    )
    chunk._hidden_params = dict(hidden)
    if pb.HasField("hidden_usage"):  # usage without include_usage: hidden, as LiteLLM keeps it
        chunk._hidden_params["usage"] = usage_from_proto(pb.hidden_usage)
    return chunk


def hidden_params(meta: completion_service_pb2.ResponseMetadata) -> dict[str, Any]:
    """``ResponseMetadata`` -> LiteLLM's ``_hidden_params`` keys plus the gateway's own."""
    return {
        "custom_llm_provider": meta.provider or None,
        # LiteLLM's model_id is the deployment that answered (model_info.id).
        "model_id": _opt(meta.attempt_log[-1], "deployment") if meta.attempt_log else None,
        "api_base": _opt(meta, "api_base"),
        "provider_model": meta.provider_model or None,
        "provider_request_id": _opt(meta, "provider_request_id"),
        "cache_hit": meta.cache_hit,
        "attempts": meta.attempts,
        "attempt_log": [
            {
                "model": attempt.model,
                "provider": attempt.provider,
                "outcome": attempt.outcome,
                "upstream_http_status": _opt(attempt, "upstream_http_status"),
                "latency_ms": attempt.latency_ms,
                "deployment": _opt(attempt, "deployment"),
            }
            for attempt in meta.attempt_log
        ],
        "upstream_latency_ms": _opt(meta, "upstream_latency_ms"),
        "response_cost": _opt(meta, "cost_usd"),
    }


_COMPLETION_DETAILS = tuple(f for f in CompletionTokensDetailsWrapper.model_fields if f != "reasoning_tokens")


def usage_from_proto(pb: usage_pb2.Usage) -> Usage:
    # Both details are always objects, with reasoning_tokens and cached_tokens 0 when the provider
    # reports none (as LiteLLM's usage has them): an absent sub-message reads as all defaults.
    prompt = pb.prompt_tokens_details
    completion = pb.completion_tokens_details
    # A provider-reported cost appears as the extra field the upstream sent (``usage.cost``).
    extra = {"cost": pb.cost} if pb.HasField("cost") else {}
    return Usage(
        **extra,
        completion_tokens=pb.completion_tokens,
        prompt_tokens=pb.prompt_tokens,
        total_tokens=pb.total_tokens,
        completion_tokens_details=CompletionTokensDetailsWrapper(
            **{f: _opt(completion, f) for f in _COMPLETION_DETAILS}, reasoning_tokens=completion.reasoning_tokens
        ),
        prompt_tokens_details=PromptTokensDetailsWrapper(
            audio_tokens=_opt(prompt, "audio_tokens"),
            cached_tokens=prompt.cached_tokens,
            text_tokens=_opt(prompt, "text_tokens"),
            image_tokens=_opt(prompt, "image_tokens"),
            cache_creation_tokens=_opt(prompt, "cache_write_tokens"),
        ),
        cache_creation_input_tokens=pb.cache_creation_input_tokens,
        cache_read_input_tokens=pb.cache_read_input_tokens,
        server_tool_use=ServerToolUse(web_search_requests=_opt(pb.server_tool_use, "web_search_requests"))
        if pb.HasField("server_tool_use")
        else None,
    )


def _choice_from_proto(pb: chat_pb2.Choice) -> Choices:
    raw_reason = _opt(pb, "provider_finish_reason")
    return Choices(
        finish_reason=pb.finish_reason or "stop",
        index=pb.index,
        message=_message_from_proto(pb.message),
        logprobs=_logprobs(pb.logprobs) if pb.HasField("logprobs") else None,
        provider_specific_fields=None if raw_reason is None else {"provider_finish_reason": raw_reason},
    )


def _streaming_choice(pb: chat_pb2.ChunkChoice) -> StreamingChoices:
    raw_reason = _opt(pb, "provider_finish_reason")
    return StreamingChoices(
        finish_reason=_opt(pb, "finish_reason"),
        index=pb.index,
        delta=_delta(pb.delta),
        logprobs=_logprobs(pb.logprobs) if pb.HasField("logprobs") else None,
        provider_specific_fields=None if raw_reason is None else {"provider_finish_reason": raw_reason},
    )


def _message_from_proto(pb: chat_pb2.Message) -> Message:
    content = _opt(pb, "content")
    if content is None and pb.content_parts:
        content = "".join(part.text for part in pb.content_parts) or None
    return Message(
        content=content,
        role=pb.role or "assistant",
        tool_calls=[_tool_call_from_proto(call) for call in pb.tool_calls] or None,
        function_call=Function(name=pb.function_call.name, arguments=pb.function_call.arguments)
        if pb.HasField("function_call")
        else None,
        reasoning_content=_opt(pb, "reasoning_content"),
        thinking_blocks=[_thinking_dict(block) for block in pb.thinking_blocks] or None,
        provider_specific_fields=_opt_struct(pb, "provider_specific_fields"),
        annotations=[_annotation_dict(note) for note in pb.annotations] or None,
        audio=_audio_dict(pb.audio) if pb.HasField("audio") else None,
        refusal=_opt(pb, "refusal"),
    )


def _delta(pb: chat_pb2.Delta) -> Delta:
    return Delta(
        content=_opt(pb, "content"),
        role=_opt(pb, "role"),
        function_call=Function(name=_opt(pb.function_call, "name"), arguments=pb.function_call.arguments)
        if pb.HasField("function_call")
        else None,
        tool_calls=[_tool_call_delta(call) for call in pb.tool_calls] or None,
        refusal=_opt(pb, "refusal"),
        reasoning_content=_opt(pb, "reasoning_content"),
        thinking_blocks=[_thinking_dict(block) for block in pb.thinking_blocks] or None,
        provider_specific_fields=_opt_struct(pb, "provider_specific_fields"),
        annotations=[_annotation_dict(note) for note in pb.annotations] or None,
    )


def _tool_call_from_proto(pb: chat_pb2.ToolCall) -> ChatCompletionMessageToolCall:
    return ChatCompletionMessageToolCall(
        id=pb.id,
        type=pb.type or "function",
        function=Function(name=pb.function.name, arguments=pb.function.arguments),
        provider_specific_fields=_opt_struct(pb, "provider_specific_fields"),
    )


def _tool_call_delta(pb: chat_pb2.ToolCallDelta) -> ChatCompletionDeltaToolCall:
    return ChatCompletionDeltaToolCall(
        id=_opt(pb, "id"),
        function=Function(name=_opt(pb.function, "name"), arguments=pb.function.arguments),
        type=_opt(pb, "type"),
        index=pb.index,
        provider_specific_fields=_opt_struct(pb, "provider_specific_fields"),
    )


def _thinking_dict(pb: chat_pb2.ThinkingBlock) -> dict[str, Any]:
    if pb.type == "redacted_thinking":
        return {"type": "redacted_thinking", "data": pb.data}
    return {"type": pb.type or "thinking", "thinking": pb.thinking, "signature": _opt(pb, "signature")}


def _annotation_dict(pb: chat_pb2.Annotation) -> dict[str, Any]:
    cite = pb.url_citation
    return {
        "type": pb.type or "url_citation",
        "url_citation": {
            "start_index": cite.start_index,
            "end_index": cite.end_index,
            "title": cite.title,
            "url": cite.url,
        },
    }


def _audio_dict(pb: chat_pb2.MessageAudio) -> dict[str, Any]:
    return {"id": pb.id, "data": pb.data, "expires_at": pb.expires_at, "transcript": pb.transcript}


def _logprobs(pb: chat_pb2.ChoiceLogprobs) -> dict[str, Any]:
    def token(t: Any, top: bool) -> dict[str, Any]:
        entry = {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes) or None}
        if top:
            entry["top_logprobs"] = [token(alt, False) for alt in t.top_logprobs]
        return entry

    return {
        "content": [token(t, True) for t in pb.content] or None,
        "refusal": [token(t, True) for t in pb.refusal] or None,
    }
