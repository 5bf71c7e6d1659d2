"""Ollama's native chat API (``ollama_chat/<model>`` and ``ollama/<model>``): ``POST {base}/api/chat``,
NDJSON streams, tool-call arguments as objects without ids, counters on the final ``done`` object."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmrpc.v1 import chat_pb2, usage_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import loads, struct_to_dict
from ._think_tags import ThinkTagSplitter, split_think_tags
from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, StreamState, Target
from .chat_json import function_to_openai
from .common import classify, join_url, json_object, merge_headers, new_completion_id, now

__all__ = ["OLLAMA_PARAMS", "OllamaAdapter", "adapters"]

OLLAMA_PARAMS = frozenset(
    {
        "max_tokens", "max_completion_tokens", "top_p", "temperature", "seed", "frequency_penalty", "stop",
        "tools", "tool_choice", "functions", "response_format", "reasoning_effort",
    }
)
# extra_body keys that belong at the top level of the body; every other key is a model option.
_TOP_LEVEL = frozenset({"keep_alive", "format", "think", "tools", "template", "raw", "options", "messages"})
_ROLES = {"developer": "system", "function": "tool"}
_GPT_OSS_EFFORT = {
    "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high",
}


@dataclass(slots=True)
class OllamaStream:
    """Ollama's own stream state: ``<think>`` tags split out of the content, and tool calls so far."""

    think_tags: ThinkTagSplitter = field(default_factory=ThinkTagSplitter)
    tool_index: dict[str, int] = field(default_factory=dict)


class OllamaAdapter(ProviderAdapter[OllamaStream]):
    """Codec for Ollama's ``/api/chat``; one instance per prefix (``ollama_chat``, ``ollama``)."""

    supported_params: frozenset[str] = OLLAMA_PARAMS
    env_keys: tuple[str, ...] = ("OLLAMA_API_KEY",)
    env_bases: tuple[str, ...] = ("OLLAMA_API_BASE",)
    default_base: str = "http://localhost:11434"
    key_required: bool = False
    inline_media: bool = True  # http(s) image URLs are downloaded for it (see ``media``)

    def __init__(self, name: str) -> None:
        self.name = name

    # ---- request ---------------------------------------------------------------------------------

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall:
        body: dict[str, Any] = {"model": target.model, "messages": _messages(req), "stream": stream}
        body["options"] = _options(req)
        _add_format_tools_think(req, target.model, body)
        if req.HasField("extra_body"):
            _merge_extra(body, struct_to_dict(req.extra_body))
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        return HttpCall(url=_url(target.api_base), headers=merge_headers(headers, req.extra_headers), body=body,
                        stream_format="ndjson" if stream else "sse")

    # ---- unary reply -----------------------------------------------------------------------------

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        data = json_object(body, "ollama")
        if "error" in data:
            raise _error(200, {}, data, mid_stream=True)
        raw = data.get("message") if isinstance(data.get("message"), dict) else {}
        assert isinstance(raw, dict)
        message = chat_pb2.Message(role="assistant")
        # Reasoning arrives as "thinking" (think=true), or inline in <think> tags: as in the stream.
        inline, content = split_think_tags(str(raw.get("content") or ""))
        reasoning = str(raw.get("thinking") or "") + (inline or "")
        if content:
            message.content = content
        if reasoning:
            message.reasoning_content = reasoning
        for call in _tool_calls(raw):
            message.tool_calls.add().CopyFrom(call)
        resp = pb.CompleteResponse(
            id=new_completion_id(), object="chat.completion", created=now(),
            model=f"{self.name}/{data.get('model') or target.model}",
        )
        choice = resp.choices.add(index=0, finish_reason=_finish(data, bool(message.tool_calls)))
        choice.message.CopyFrom(message)
        if data.get("done_reason"):
            choice.provider_finish_reason = str(data["done_reason"])
        resp.usage.CopyFrom(_usage(data))
        return resp

    # ---- stream ----------------------------------------------------------------------------------

    def new_stream_state(self, req: pb.CompleteRequest, target: Target) -> StreamState[OllamaStream]:
        return StreamState(id=new_completion_id(), created=now(), model=f"{self.name}/{target.model}",
                           own=OllamaStream())

    def parse_stream_event(
        self, event: StreamEvent, state: StreamState[OllamaStream]
    ) -> Iterable[pb.StreamCompleteResponse]:
        data = json_object(event.data, "ollama")
        if "error" in data:
            raise _error(200, {}, data, mid_stream=True)
        raw = data.get("message") if isinstance(data.get("message"), dict) else {}
        assert isinstance(raw, dict)
        chunks: list[pb.StreamCompleteResponse] = []
        splitter = state.own.think_tags
        reasoning, content = splitter.feed(str(raw.get("content") or ""))
        delta = self._delta(raw, state, str(raw.get("thinking") or "") + reasoning, content)
        if delta is not None:
            chunks.append(delta)
        if data.get("done"):
            held = self._delta({}, state, *splitter.flush())
            chunks.extend([held] if held is not None else [])
            chunks.extend(self._finish_chunks(data, state))
        return chunks

    def _delta(self, raw: dict[str, Any], state: StreamState[OllamaStream], reasoning: str,
               content: str) -> pb.StreamCompleteResponse | None:
        chunk = _chunk(state)
        delta = chunk.choices.add(index=0).delta
        if reasoning:
            delta.reasoning_content = reasoning
        if content:
            delta.content = content
        for call in _tool_calls(raw):
            index = len(state.own.tool_index)
            state.own.tool_index[call.id] = index
            frag = delta.tool_calls.add(index=index, id=call.id, type="function")
            frag.function.name = call.function.name
            frag.function.arguments = call.function.arguments
        if not (delta.HasField("reasoning_content") or delta.HasField("content") or delta.tool_calls):
            return None
        _mark_role(chunk, state)
        return chunk

    def _finish_chunks(self, data: dict[str, Any], state: StreamState[OllamaStream]) -> list[pb.StreamCompleteResponse]:
        state.finished = True
        chunk = _chunk(state)
        choice = chunk.choices.add(index=0, finish_reason=_finish(data, bool(state.own.tool_index)))
        if data.get("done_reason"):
            choice.provider_finish_reason = str(data["done_reason"])
        _mark_role(chunk, state)
        usage_chunk = _chunk(state)
        usage_chunk.usage.CopyFrom(_usage(data))
        return [chunk, usage_chunk]

    def finish_stream(self, state: StreamState[OllamaStream]) -> Iterable[pb.StreamCompleteResponse]:
        return ()

    # ---- errors ----------------------------------------------------------------------------------

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        try:
            data = loads(body)
        except ValueError:
            data = {"error": body[:500].decode("utf-8", "replace")}
        return _error(status, headers, data if isinstance(data, dict) else {"error": str(data)})


# ---- request helpers -----------------------------------------------------------------------------


def _url(base: str) -> str:
    if urlsplit(base).path.rstrip("/").endswith("/api/chat"):
        return join_url(base)
    return join_url(base, "api", "chat")


def _options(req: pb.CompleteRequest) -> dict[str, Any]:
    """LiteLLM's option map: max tokens -> num_predict, frequency_penalty -> repeat_penalty."""
    options: dict[str, Any] = {}
    if req.HasField("max_completion_tokens"):
        options["num_predict"] = req.max_completion_tokens
    elif req.HasField("max_tokens"):
        options["num_predict"] = req.max_tokens
    for name in ("temperature", "top_p", "seed"):
        if req.HasField(name):
            options[name] = getattr(req, name)
    if req.HasField("frequency_penalty"):
        options["repeat_penalty"] = req.frequency_penalty
    if req.stop:
        options["stop"] = list(req.stop)
    return options


def _add_format_tools_think(req: pb.CompleteRequest, model: str, body: dict[str, Any]) -> None:
    fmt = req.response_format
    if req.HasField("response_format") and fmt.type == "json_object":
        body["format"] = "json"
    elif req.HasField("response_format") and fmt.type == "json_schema" and fmt.json_schema.HasField("schema"):
        body["format"] = struct_to_dict(fmt.json_schema.schema)
    functions = [t.function for t in req.tools] or list(req.functions)
    if functions:
        body["tools"] = [{"type": "function", "function": _function(f)} for f in functions]
    if req.HasField("reasoning_effort"):
        body["think"] = _think(req.reasoning_effort, model)


def _function(fn: chat_pb2.FunctionDefinition) -> dict[str, Any]:
    out = function_to_openai(fn)
    out.pop("strict", None)
    return out


def _think(effort: str, model: str) -> bool | str:
    """``think``: false for "none"; the level string for gpt-oss (which ignores booleans); else true."""
    if effort == "none":
        return False
    if "gpt-oss" in model.lower():
        return _GPT_OSS_EFFORT.get(effort, "medium")
    return True


def _merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> None:
    """LiteLLM's provider kwargs: ``keep_alive``/``format``/``think`` at the top level, the rest
    (``top_k``, ``num_ctx``, ...) are model options."""
    for key, value in extra.items():
        if key == "options" and isinstance(value, dict):
            body["options"].update(value)
        elif key in _TOP_LEVEL:
            body[key] = value
        else:
            body["options"][key] = value


def _messages(req: pb.CompleteRequest) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for msg in req.messages:
        for call in msg.tool_calls:
            names[call.id] = call.function.name
        out.append(_message(msg, names))
    return out


def _message(msg: chat_pb2.Message, tool_names: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _ROLES.get(msg.role, msg.role), "content": _text(msg)}
    images = [_image(p.image_url.url) for p in msg.content_parts if p.WhichOneof("part") == "image_url"]
    if images:
        out["images"] = images
    if msg.HasField("reasoning_content"):
        out["thinking"] = msg.reasoning_content
    if msg.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
            for c in msg.tool_calls
        ]
    if msg.role in ("tool", "function"):
        name = tool_names.get(msg.tool_call_id) if msg.HasField("tool_call_id") else None
        name = name or (msg.name if msg.HasField("name") else None)
        if name:
            out["tool_name"] = name
    return out


def _text(msg: chat_pb2.Message) -> str:
    if msg.content_parts:
        return "".join(p.text for p in msg.content_parts if p.WhichOneof("part") == "text")
    return msg.content if msg.HasField("content") else ""


def _image(url: str) -> str:
    """Ollama takes raw base64; a data URL is stripped to its payload. http(s) URLs arrive here
    already downloaded unless ``--fetch-media off``; anything else is refused."""
    if url.startswith("data:") and "," in url:
        return url.split(",", 1)[1]
    raise ProviderError(
        ErrorKind.BAD_REQUEST, "ollama accepts images only as base64 data URLs (the gateway downloads http(s) "
        "URLs unless --fetch-media is off)", param="messages"
    )


def _arguments(arguments: str) -> Any:
    """Ollama wants tool-call arguments as an object; the OpenAI side carries a JSON string."""
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError as exc:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"tool call arguments are not valid JSON: {exc}",
                            param="messages") from exc


# ---- reply helpers -------------------------------------------------------------------------------


def _tool_calls(raw: dict[str, Any]) -> list[chat_pb2.ToolCall]:
    """Whole tool calls with generated ids (``call_<hex>``) and arguments re-encoded as JSON strings."""
    calls: list[chat_pb2.ToolCall] = []
    for call in raw.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        text = args if isinstance(args, str) else json.dumps({} if args is None else args, ensure_ascii=False)
        calls.append(chat_pb2.ToolCall(
            id=str(call.get("id") or f"call_{uuid.uuid4().hex}"), type="function",
            function=chat_pb2.FunctionCall(name=str(fn.get("name") or ""), arguments=text),
        ))
    return calls


def _finish(data: dict[str, Any], has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if data.get("done_reason") == "length" else "stop"


def _usage(data: dict[str, Any]) -> usage_pb2.Usage:
    prompt = int(data.get("prompt_eval_count") or 0)
    completion = int(data.get("eval_count") or 0)
    return usage_pb2.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _chunk(state: StreamState[OllamaStream]) -> pb.StreamCompleteResponse:
    return pb.StreamCompleteResponse(id=state.id, object="chat.completion.chunk", created=state.created,
                                     model=state.model)


def _mark_role(chunk: pb.StreamCompleteResponse, state: StreamState[OllamaStream]) -> None:
    if 0 not in state.role_sent:
        chunk.choices[0].delta.role = "assistant"
        state.role_sent.add(0)


def _error(
    status: int, headers: Mapping[str, str], data: dict[str, Any], *, mid_stream: bool = False
) -> ProviderError:
    """Ollama errors are ``{"error": "<message>"}``. Inside a 200 body or a stream there is no status,
    so the message decides: known phrases keep their class, a missing model is NOT_FOUND, the rest is
    a stream error."""
    err = data.get("error")
    message = err.get("message") if isinstance(err, dict) else err
    text = str(message or "") or f"ollama returned HTTP {status}"
    if not mid_stream:
        return classify(status, text, headers)
    classified = classify(400, text, headers)
    classified.status = None
    if classified.kind is ErrorKind.BAD_REQUEST:
        classified.kind = ErrorKind.NOT_FOUND if "not found" in text.lower() else ErrorKind.STREAM_ERROR
    return classified


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """``ollama_chat/`` and ``ollama/`` (both on the native chat endpoint)."""
    return [OllamaAdapter("ollama_chat"), OllamaAdapter("ollama")]
