"""Google AI Studio Gemini API: ``models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, key in ``x-goog-api-key``.

Requests are built here (messages -> ``contents`` + ``systemInstruction``, tools with cleaned
schemas, ``generationConfig``, ``thinkingConfig``); responses, stream events and errors are read in
``_gemini_stream``. Thought signatures round-trip: a ``functionCall`` part's signature travels on the
tool call's ``provider_specific_fields["thought_signature"]`` (LiteLLM's ``call_..__thought__<sig>``
ids are read too), other parts' signatures on ``thinking_blocks[].signature``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import loads, struct_to_dict
from ._gemini_schema import clean_schema
from ._gemini_stream import GeminiStream, gemini_error, parse_stream_event, response_from_gemini, usage_chunk
from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, StreamState, Target
from .common import join_url, json_object, merge_headers, now

__all__ = ["GEMINI_PARAMS", "GeminiAdapter", "adapters", "body_from_request", "media_part"]

GEMINI_PARAMS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "tools", "tool_choice",
        "response_format", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
        "reasoning_effort", "thinking", "parallel_tool_calls", "modalities", "web_search_options",
    }
)  # fmt: skip

# reasoning_effort -> thinkingBudget for Gemini <= 2.5 (LiteLLM; xhigh/max are ours: 24576 is the
# largest budget every 2.5 thinking model accepts).
_BUDGETS = {"minimal": 128, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 24576}
_NO_THINKING = frozenset({"none", "disable"})
_MODES = {
    chat_pb2.TOOL_CHOICE_MODE_AUTO: "AUTO",
    chat_pb2.TOOL_CHOICE_MODE_NONE: "NONE",
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: "ANY",
}
# extra_body keys with a known home (snake_case LiteLLM kwargs and the wire's camelCase).
_GENERATION_KEYS = {
    "top_k": "topK", "topK": "topK", "media_resolution": "mediaResolution",
    "mediaResolution": "mediaResolution", "speech_config": "speechConfig", "speechConfig": "speechConfig",
    "response_mime_type": "responseMimeType", "responseMimeType": "responseMimeType",
    "thinking_config": "thinkingConfig", "thinkingConfig": "thinkingConfig",
}  # fmt: skip
# CompleteRequest optional scalars copied into generationConfig.
_CONFIG_FIELDS = {
    "temperature": "temperature", "top_p": "topP", "n": "candidateCount", "seed": "seed",
    "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty",
    "logprobs": "responseLogprobs", "top_logprobs": "logprobs",
}  # fmt: skip
_TOP_KEYS = {
    "safety_settings": "safetySettings", "cached_content": "cachedContent", "tool_config": "toolConfig",
    "system_instruction": "systemInstruction",
}  # fmt: skip
_MIME_BY_EXTENSION = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
    "heic": "image/heic", "heif": "image/heif", "pdf": "application/pdf", "txt": "text/plain",
    "mp3": "audio/mp3", "wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp4": "video/mp4",
    "mov": "video/mov", "mpeg": "video/mpeg", "webm": "video/webm",
}  # fmt: skip
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?:;[^,]*)?,(?P<data>.*)$", re.DOTALL)
_THOUGHT_ID_SEPARATOR = "__thought__"  # LiteLLM 2026 packs the signature into the tool call id
# Google's documented placeholder for Gemini 3 histories whose function calls carry no signature
# (e.g. a conversation started on another provider).
_SKIP_SIGNATURE = "skip_thought_signature_validator"


class GeminiAdapter(ProviderAdapter[GeminiStream]):
    """Codec for the Gemini API (v1beta) with ``x-goog-api-key`` auth."""

    name = "gemini"
    supported_params: frozenset[str] = GEMINI_PARAMS
    env_keys: tuple[str, ...] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    env_bases: tuple[str, ...] = ("GEMINI_API_BASE",)
    default_base = "https://generativelanguage.googleapis.com"
    key_required = True

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall:
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        body = body_from_request(req, target.model)
        return HttpCall(url=_url(target, stream), headers=merge_headers(headers, req.extra_headers), body=body,
                        stream_format="sse")

    def new_stream_state(self, req: pb.CompleteRequest, target: Target) -> StreamState[GeminiStream]:
        return StreamState(id="", created=now(), model=target.model, own=GeminiStream())

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        data = json_object(body)
        if "error" in data and "candidates" not in data:
            code = data["error"].get("code") if isinstance(data["error"], dict) else None
            raise gemini_error(code if isinstance(code, int) and code >= 400 else 500, {}, data)
        return response_from_gemini(data, model=target.model)

    def parse_stream_event(
        self, event: StreamEvent, state: StreamState[GeminiStream]
    ) -> Iterable[pb.StreamCompleteResponse]:
        return parse_stream_event(event, state)

    def finish_stream(self, state: StreamState[GeminiStream]) -> Iterable[pb.StreamCompleteResponse]:
        if state.finished:  # the usage a finished stream reported
            return (usage_chunk(state),)
        return ()

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        try:
            data: Any = loads(body)
        except ValueError:
            data = {"error": {"message": body[:500].decode("utf-8", "replace")}}
        return gemini_error(status, headers, data)


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """The ``gemini/`` provider."""
    return [GeminiAdapter()]


def _url(target: Target, stream: bool) -> str:
    """``{base}[/v1beta]/models/{model}:generateContent``; the model is one encoded path segment
    (``models/x`` and ``tunedModels/x`` names keep their collection), so it cannot change the path."""
    version = () if re.search(r"/v1(beta|alpha)?$", urlsplit(target.api_base).path.rstrip("/")) else ("v1beta",)
    collection, sep, name = target.model.partition("/")
    if not (sep and collection in ("models", "tunedModels")):
        collection, name = "models", target.model
    if stream:
        return join_url(target.api_base, *version, collection, name, suffix=":streamGenerateContent",
                        query={"alt": "sse"})
    return join_url(target.api_base, *version, collection, name, suffix=":generateContent")


def _is_gemini_3(model: str) -> bool:
    return model.removeprefix("models/").startswith("gemini-3")


# ---- request body ------------------------------------------------------------------------------


def body_from_request(req: pb.CompleteRequest, model: str) -> dict[str, Any]:
    """The ``GenerateContentRequest`` JSON for ``req``."""
    system, contents = _contents(req.messages, gemini_3=_is_gemini_3(model))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t.function) for t in req.tools]}]
    if req.HasField("web_search_options"):  # grounding with Google Search; no options to map
        body.setdefault("tools", []).append({"googleSearch": {}})
    if req.HasField("tool_choice"):
        body["toolConfig"] = {"functionCallingConfig": _tool_choice(req.tool_choice)}
    config = _generation_config(req, model)
    if config:
        body["generationConfig"] = config
    if req.HasField("extra_body"):
        _merge_extra_body(body, struct_to_dict(req.extra_body))
    return body


def _contents(
    messages: Iterable[chat_pb2.Message], *, gemini_3: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents); consecutive turns of one role are merged."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        if msg.role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(msg) if t)
            continue
        if msg.role == "assistant":
            role, parts = "model", _model_parts(msg, i, names, gemini_3=gemini_3)
        elif msg.role in ("tool", "function"):
            role, parts = "user", _tool_result_parts(msg, names)
        else:
            role, parts = "user", _user_parts(msg)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _texts(msg: chat_pb2.Message) -> list[str]:
    if msg.HasField("content"):
        return [msg.content]
    return [p.text if p.HasField("text") else p.refusal for p in msg.content_parts if p.WhichOneof("part") in
            ("text", "refusal")]


def _user_parts(msg: chat_pb2.Message) -> list[dict[str, Any]]:
    if msg.HasField("content") or not msg.content_parts:
        parts = [{"text": msg.content}] if msg.content else []
    else:
        parts = [p for p in (_content_part(part) for part in msg.content_parts) if p is not None]
    if not any(p.get("text") for p in parts):
        parts.append({"text": " "})  # LiteLLM: Gemini rejects user turns without text
    return parts


def _content_part(part: chat_pb2.ContentPart) -> dict[str, Any] | None:
    kind = part.WhichOneof("part")
    if kind == "text":
        return {"text": part.text} if part.text else None
    if kind == "refusal":
        return {"text": part.refusal} if part.refusal else None
    if kind == "image_url":
        fmt = part.image_url.format if part.image_url.HasField("format") else None
        return media_part(part.image_url.url, fmt)
    if kind == "input_audio":
        fmt = part.input_audio.format or "wav"
        mime = fmt if "/" in fmt else f"audio/{fmt}"
        return {"inlineData": {"mimeType": mime, "data": part.input_audio.data}}
    if kind == "file":
        fmt = part.file.format if part.file.HasField("format") else None
        source = part.file.file_data if part.file.HasField("file_data") else part.file.file_id
        return media_part(source, fmt)
    return None


def media_part(url: str, mime: str | None) -> dict[str, Any]:
    """A data URL becomes ``inlineData``; anything else (https, gs://, a Files API URI) ``fileData``.
    Pure: nothing is downloaded."""
    match = _DATA_URL.match(url)
    if match is not None:
        mime = mime or match["mime"] or "application/octet-stream"
        return {"inlineData": {"mimeType": mime, "data": match["data"]}}
    file_data: dict[str, Any] = {"fileUri": url}
    extension = url.split("?", 1)[0].rsplit(".", 1)[-1].lower() if "." in url.rsplit("/", 1)[-1] else ""
    mime = mime or _MIME_BY_EXTENSION.get(extension)
    if mime:
        file_data["mimeType"] = mime
    return {"fileData": file_data}


def _model_parts(
    msg: chat_pb2.Message, index: int, names: dict[str, str], *, gemini_3: bool
) -> list[dict[str, Any]]:
    """Thought parts (those with a signature), text, then function calls with their signatures."""
    parts: list[dict[str, Any]] = []
    loose: list[str] = []  # signatures that were not on a thought part: they go on the text
    for block in msg.thinking_blocks:
        if block.type != "thinking" or not block.HasField("signature") or not block.signature:
            continue
        if block.thinking:
            parts.append({"text": block.thinking, "thought": True, "thoughtSignature": block.signature})
        else:
            loose.append(block.signature)
    texts = [{"text": t} for t in _texts(msg) if t]
    if texts and loose:
        texts[0]["thoughtSignature"] = loose[0]
    parts += texts
    calls = [_function_call_part(call, index, j, names) for j, call in enumerate(msg.tool_calls)]
    if msg.HasField("function_call"):
        legacy = chat_pb2.ToolCall(function=msg.function_call)
        calls.append(_function_call_part(legacy, index, len(calls), names))
    if gemini_3 and calls and not any("thoughtSignature" in c for c in calls):
        calls[0]["thoughtSignature"] = _SKIP_SIGNATURE
    return parts + calls


def _function_call_part(call: chat_pb2.ToolCall, index: int, j: int, names: dict[str, str]) -> dict[str, Any]:
    name = call.function.name
    if call.id:
        names[call.id] = name
    args = _arguments(call.function.arguments, index, j)
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    signature = _signature(call)
    if signature:
        part["thoughtSignature"] = signature
    return part


def _signature(call: chat_pb2.ToolCall) -> str | None:
    field = call.provider_specific_fields.fields.get("thought_signature")
    if field is not None and field.WhichOneof("kind") == "string_value" and field.string_value:
        return field.string_value
    _, sep, packed = call.id.partition(_THOUGHT_ID_SEPARATOR)
    return packed if sep and packed else None


def _arguments(arguments: str, index: int, j: int) -> dict[str, Any]:
    """``functionCall.args`` is an object: the JSON arguments string, parsed."""
    if not arguments.strip():
        return {}
    try:
        args = loads(arguments)
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise ProviderError(
            ErrorKind.BAD_REQUEST,
            f"messages[{index}].tool_calls[{j}].function.arguments must be a JSON object for Gemini",
            param=f"messages[{index}].tool_calls[{j}].function.arguments",
        )
    return args


def _tool_result_parts(msg: chat_pb2.Message, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """A tool result: ``functionResponse`` named after the call it answers, plus any media parts."""
    call_id = msg.tool_call_id if msg.HasField("tool_call_id") else ""
    name = names.get(call_id) or (msg.name if msg.HasField("name") else "") or call_id
    text = "".join(_texts(msg))
    parts: list[dict[str, Any]] = [{"functionResponse": {"name": name, "response": {"content": text}}}]
    for part in msg.content_parts:
        if part.WhichOneof("part") in ("image_url", "file", "input_audio"):
            media = _content_part(part)
            if media is not None:
                parts.append(media)
    return parts


# ---- tools -------------------------------------------------------------------------------------


def _declaration(fn: chat_pb2.FunctionDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fn.name}
    if fn.HasField("description"):
        out["description"] = fn.description
    if fn.HasField("parameters"):
        params = clean_schema(struct_to_dict(fn.parameters))
        # Gemini rejects an OBJECT without properties; a function without arguments has none.
        if params.get("properties") or params.get("type") not in (None, "object"):
            out["parameters"] = params
    return out


def _tool_choice(choice: chat_pb2.ToolChoice) -> dict[str, Any]:
    if choice.HasField("function"):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": _MODES.get(choice.mode, "AUTO")}


# ---- generationConfig --------------------------------------------------------------------------


def _generation_config(req: pb.CompleteRequest, model: str) -> dict[str, Any]:
    config = {_CONFIG_FIELDS[fd.name]: value for fd, value in req.ListFields() if fd.name in _CONFIG_FIELDS}
    if req.HasField("max_completion_tokens"):
        config["maxOutputTokens"] = req.max_completion_tokens
    elif req.HasField("max_tokens"):
        config["maxOutputTokens"] = req.max_tokens
    if req.stop:
        config["stopSequences"] = list(req.stop)
    if req.modalities:
        config["responseModalities"] = [m.upper() for m in req.modalities]
    if req.HasField("response_format"):
        config.update(_response_format(req.response_format))
    thinking = _thinking_config(req, model)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _response_format(fmt: chat_pb2.ResponseFormat) -> dict[str, Any]:
    """JSON Schema goes to ``responseJsonSchema`` as given (it takes $ref, anyOf, additionalProperties);
    ``strict`` is dropped (LiteLLM, Gemini 2.0+)."""
    if fmt.type == "json_object":
        return {"responseMimeType": "application/json"}
    if fmt.type != "json_schema":
        return {}
    out: dict[str, Any] = {"responseMimeType": "application/json"}
    if fmt.json_schema.HasField("schema"):
        schema = struct_to_dict(fmt.json_schema.schema)
        schema.pop("strict", None)
        out["responseJsonSchema"] = schema
    return out


def _thinking_config(req: pb.CompleteRequest, model: str) -> dict[str, Any] | None:
    if req.HasField("thinking"):
        return _thinking_param(req.thinking)
    if not req.HasField("reasoning_effort"):
        return None
    effort = req.reasoning_effort
    if _is_gemini_3(model):
        return _thinking_level(effort, model)
    if effort in _NO_THINKING:
        return {"thinkingBudget": 0, "includeThoughts": False}
    budget = _BUDGETS.get(effort, _BUDGETS["medium"])
    if effort == "minimal" and "flash-lite" in model:
        budget = 512  # flash-lite's smallest non-zero budget (LiteLLM)
    return {"thinkingBudget": budget, "includeThoughts": True}


def _thinking_param(thinking: chat_pb2.ThinkingConfig) -> dict[str, Any]:
    """Anthropic-style ``thinking``: enabled/adaptive show thoughts; disabled is a zero budget."""
    if thinking.type == "disabled":
        return {"thinkingBudget": 0, "includeThoughts": False}
    budget = thinking.budget_tokens if thinking.HasField("budget_tokens") else None
    if budget is None:
        budget = -1 if thinking.type == "adaptive" else None  # -1: Gemini's dynamic budget
    config: dict[str, Any] = {"includeThoughts": budget != 0}
    if budget is not None:
        config["thinkingBudget"] = budget
    return config


def _thinking_level(effort: str, model: str) -> dict[str, Any]:
    """Gemini 3 takes a level instead of a budget (LiteLLM 2026 mapping)."""
    flash = "flash" in model
    if effort in _NO_THINKING:
        return {"thinkingLevel": "minimal" if flash else "low", "includeThoughts": False}
    if effort == "minimal":
        level = "minimal" if flash else "low"
    elif effort == "medium":
        level = "medium" if flash or "3.1-pro" in model else "high"
    else:
        level = "low" if effort == "low" else "high"
    return {"thinkingLevel": level, "includeThoughts": True}


def _merge_extra_body(body: dict[str, Any], extra: dict[str, Any]) -> None:
    """LiteLLM-style provider kwargs: known keys go where Gemini wants them, the rest top level.
    A whole ``generationConfig`` is merged first, so single keys (``top_k``) win over it whatever
    order the Struct delivered them in."""
    for key, value in sorted(extra.items(), key=lambda kv: kv[0] not in ("generationConfig", "generation_config")):
        if key in _GENERATION_KEYS:
            body.setdefault("generationConfig", {})[_GENERATION_KEYS[key]] = value
        elif key in ("generationConfig", "generation_config") and isinstance(value, dict):
            body.setdefault("generationConfig", {}).update(value)
        elif key == "tools" and isinstance(value, list):
            body.setdefault("tools", []).extend(value)  # e.g. [{"googleSearch": {}}] beside functions
        else:
            body[_TOP_KEYS.get(key, key)] = value

