"""Anthropic Messages API: ``POST {base}/v1/messages``, after LiteLLM's ``anthropic/``.

This module builds requests (messages, system, tools, thinking, JSON mode); answers, streams and
errors are decoded in :mod:`._anthropic_stream`. Decisions where LiteLLM versions differ:

- Auth: the key goes in ``x-api-key`` whether it came from ``ANTHROPIC_API_KEY`` or
  ``ANTHROPIC_AUTH_TOKEN`` (the router does not say which); Bearer users pass ``extra_headers`` with
  their own ``api_key`` (a credential header is refused without one: see ``upstream_checks``).
- ``max_tokens``: the caller's ``max_completion_tokens``, else ``max_tokens``, else 4096, or
  ``budget_tokens + 4096`` when thinking is enabled with a budget (LiteLLM 2025 rule).
- ``reasoning_effort``: minimal/low 1024, medium 2048, high 4096, xhigh 8192, max 16384 thinking
  tokens; none/disable send no thinking (LiteLLM 2026 table). An explicit ``thinking`` wins.
- ``response_format`` json_object/json_schema: a synthetic ``json_tool_call`` tool, forced unless
  thinking is on; a non-object schema is wrapped as ``{"values": schema}`` and unwrapped on output.
- Images and PDFs by http(s) URL are sent as ``url`` sources (a pure adapter downloads nothing).
- Tool blocks in the history without ``tools``: a ``dummy_tool`` is declared (LiteLLM 2026).
- The history is not repaired (no ``"."`` first user turn); Anthropic's own error comes back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from ..proto_json import struct_to_dict
from ..tokens import preload_tokenizer
from . import _anthropic_stream as wire
from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, StreamState, Target
from .chat_json import approximate_location
from .common import cache_control, join_url, new_completion_id, now

__all__ = [
    "ANTHROPIC_PARAMS",
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicAdapter",
    "adapters",
    "body_from_request",
    "json_mode",
]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
FILES_BETA = "files-api-2025-04-14"

# LiteLLM's get_supported_openai_params("anthropic/...") as proto field names.
ANTHROPIC_PARAMS = frozenset(
    {
        "temperature", "top_p", "stop", "max_tokens", "max_completion_tokens", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "user", "reasoning_effort", "thinking", "web_search_options",
    }
)  # fmt: skip
# web_search_options.search_context_size -> the web_search tool's max_uses, as LiteLLM maps it.
_SEARCH_MAX_USES = {"low": 1, "medium": 5, "high": 10}

_EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192, "max": 16384}
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": True}
_DUMMY_TOOL: dict[str, Any] = {
    "name": "dummy_tool", "description": "This is a dummy tool call", "input_schema": _EMPTY_SCHEMA,
}  # fmt: skip
_TOOL_CHOICES = {
    chat_pb2.TOOL_CHOICE_MODE_AUTO: {"type": "auto"},
    chat_pb2.TOOL_CHOICE_MODE_NONE: {"type": "none"},
    chat_pb2.TOOL_CHOICE_MODE_REQUIRED: {"type": "any"},
}
# LiteLLM skips `user` values that look like an email or a phone number (Anthropic asks for opaque ids).
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[\d\s()-]{7,}")


def adapters(env: Mapping[str, str] | None = None) -> list[AnthropicAdapter]:
    """The provider module entry point (see ``providers/__init__.py``)."""
    return [AnthropicAdapter()]


@dataclass(frozen=True, slots=True)
class JsonMode:
    """The synthetic tool that carries ``response_format`` output; ``wrapped`` for non-object schemas."""

    schema: dict[str, Any]
    wrapped: bool = False
    description: str | None = None


class AnthropicAdapter(ProviderAdapter[wire.AnthropicStream]):
    """Codec for ``POST {base}/v1/messages`` with ``x-api-key`` auth."""

    name: str = "anthropic"
    supported_params: frozenset[str] = ANTHROPIC_PARAMS
    env_keys: tuple[str, ...] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    env_bases: tuple[str, ...] = ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    default_base: str = "https://api.anthropic.com"
    key_required: bool = True

    def build_request(
        self, req: pb.CompleteRequest, target: Target, *, stream: bool, include_usage: bool = False
    ) -> HttpCall:
        body, betas = body_from_request(req, target.model)
        if stream:
            body["stream"] = True
        if req.HasField("extra_body"):
            body.update(struct_to_dict(req.extra_body))
        if "thinking" in body:  # its reasoning tokens may be counted: load the tokenizer while the model thinks
            preload_tokenizer()
        headers = request_headers(req, target, betas)
        return HttpCall(url=messages_url(target.api_base), headers=headers, body=body)

    def parse_response(self, body: bytes, req: pb.CompleteRequest, target: Target) -> pb.CompleteResponse:
        mode = json_mode(req)
        return wire.response_from_anthropic(wire.json_object(body), None if mode is None else mode.wrapped)

    def new_stream_state(self, req: pb.CompleteRequest, target: Target) -> StreamState[wire.AnthropicStream]:
        mode = json_mode(req)
        own = wire.AnthropicStream(None if mode is None else mode.wrapped)
        return StreamState(id=new_completion_id(), created=now(), model=target.model, own=own)

    def parse_stream_event(
        self, event: StreamEvent, state: StreamState[wire.AnthropicStream]
    ) -> Iterable[pb.StreamCompleteResponse]:
        return wire.parse_event(event, state)

    def finish_stream(self, state: StreamState[wire.AnthropicStream]) -> Iterable[pb.StreamCompleteResponse]:
        return ()

    def map_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        return wire.http_error(status, headers, body)


# ---- URL and headers ---------------------------------------------------------------------------


def messages_url(api_base: str) -> str:
    """``{base}/v1/messages``; a base that already names ``/v1`` or the endpoint is kept (LiteLLM)."""
    path = urlsplit(api_base).path.rstrip("/")
    if path.endswith("/v1/messages"):
        return join_url(api_base)
    return join_url(api_base, "messages") if path.endswith("/v1") else join_url(api_base, "v1", "messages")


def request_headers(req: pb.CompleteRequest, target: Target, betas: Iterable[str] = ()) -> dict[str, str]:
    """``x-api-key``, ``anthropic-version``, content type, then the caller's headers; the caller's
    ``anthropic-beta`` list is merged with the betas this request needs."""
    headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    wanted = list(betas)
    for key, value in req.extra_headers.items():
        if key.lower() == "anthropic-beta":
            wanted = [b.strip() for b in value.split(",") if b.strip()] + wanted
        else:
            headers[key.lower()] = value
    if wanted:
        headers["anthropic-beta"] = ",".join(dict.fromkeys(wanted))
    return headers


# ---- body --------------------------------------------------------------------------------------


def body_from_request(req: pb.CompleteRequest, model: str) -> tuple[dict[str, Any], set[str]]:
    """The Messages API body (without ``stream``) and the ``anthropic-beta`` values it needs."""
    converted = MessageConverter().convert(req.messages)
    thinking = thinking_config(req)
    body: dict[str, Any] = {
        "model": model, "messages": converted.messages, "max_tokens": max_tokens(req, thinking),
    }  # fmt: skip
    if converted.system:
        body["system"] = converted.system
    if thinking is not None:
        body["thinking"] = thinking
    for name in ("temperature", "top_p"):
        if req.HasField(name):
            body[name] = getattr(req, name)
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.HasField("user") and not (_EMAIL.fullmatch(req.user) or _PHONE.fullmatch(req.user)):
        body["metadata"] = {"user_id": req.user}
    thinking_on = thinking is not None and thinking.get("type") in ("enabled", "adaptive")
    _add_tools(req, body, thinking_on)
    return body, converted.betas


def thinking_config(req: pb.CompleteRequest) -> dict[str, Any] | None:
    """``thinking`` passed through, else one derived from ``reasoning_effort``, else None."""
    if req.HasField("thinking"):
        out: dict[str, Any] = {"type": req.thinking.type}
        if req.thinking.HasField("budget_tokens"):
            out["budget_tokens"] = req.thinking.budget_tokens
        return out
    if req.HasField("reasoning_effort") and req.reasoning_effort in _EFFORT_BUDGETS:
        return {"type": "enabled", "budget_tokens": _EFFORT_BUDGETS[req.reasoning_effort]}
    return None


def max_tokens(req: pb.CompleteRequest, thinking: dict[str, Any] | None) -> int:
    """The caller's limit, else 4096 (plus the thinking budget when thinking is enabled)."""
    if req.HasField("max_completion_tokens"):
        return req.max_completion_tokens
    if req.HasField("max_tokens"):
        return req.max_tokens
    budget = (thinking or {}).get("budget_tokens") if (thinking or {}).get("type") == "enabled" else None
    return DEFAULT_MAX_TOKENS + budget if isinstance(budget, int) else DEFAULT_MAX_TOKENS


def json_mode(req: pb.CompleteRequest) -> JsonMode | None:
    """The synthetic ``json_tool_call`` for ``response_format`` json_object/json_schema, else None."""
    if not req.HasField("response_format") or req.response_format.type not in ("json_object", "json_schema"):
        return None
    spec = req.response_format.json_schema
    schema = struct_to_dict(spec.schema) if spec.HasField("schema") else {}
    description = spec.description if spec.HasField("description") else None
    if req.response_format.type == "json_object" or not schema:
        return JsonMode(dict(_JSON_OBJECT_SCHEMA), description=description)
    if schema.get("type", "object") == "object":
        return JsonMode(schema, description=description)
    wrapped = {"type": "object", "properties": {"values": schema}, "required": ["values"]}
    return JsonMode(wrapped, wrapped=True, description=description)


def _add_tools(req: pb.CompleteRequest, body: dict[str, Any], thinking_on: bool) -> None:
    tools = [tool_to_anthropic(t) for t in req.tools]
    choice = tool_choice_to_anthropic(req.tool_choice) if req.HasField("tool_choice") else None
    mode = json_mode(req)
    if mode is not None:
        tool: dict[str, Any] = {"name": wire.JSON_TOOL_NAME, "input_schema": mode.schema}
        if mode.description:
            tool["description"] = mode.description
        tools.append(tool)
        if not thinking_on:  # Anthropic refuses forced tool use while thinking
            choice = {"type": "tool", "name": wire.JSON_TOOL_NAME}
    if req.HasField("web_search_options"):
        tools.append(web_search_tool(req.web_search_options))
    if not tools and _history_has_tools(body["messages"]):
        tools.append(dict(_DUMMY_TOOL))
    if not tools:
        return  # Anthropic rejects tool_choice without tools
    body["tools"] = tools
    if req.HasField("parallel_tool_calls") and (choice or {}).get("type") != "none":
        choice = dict(choice or {"type": "auto"})
        choice["disable_parallel_tool_use"] = not req.parallel_tool_calls
    if choice is not None:
        body["tool_choice"] = choice


def web_search_tool(opts: pb.WebSearchOptions) -> dict[str, Any]:
    """OpenAI ``web_search_options`` as Anthropic's server-side search tool; Anthropic runs the searches
    and answers with cited text (server tool blocks are not tool calls for the caller to run)."""
    tool: dict[str, Any] = {"type": "web_search_20250305", "name": "web_search"}
    if opts.HasField("search_context_size"):
        tool["max_uses"] = _SEARCH_MAX_USES[opts.search_context_size]
    if opts.HasField("user_location"):
        tool["user_location"] = {"type": "approximate", **approximate_location(opts.user_location.approximate)}
    return tool


def tool_to_anthropic(tool: chat_pb2.Tool) -> dict[str, Any]:
    """``{name, description?, input_schema, cache_control?}``; no parameters = an empty object schema."""
    fn = tool.function
    out: dict[str, Any] = {"name": fn.name}
    if fn.HasField("description"):
        out["description"] = fn.description
    schema = struct_to_dict(fn.parameters) if fn.HasField("parameters") else {}
    out["input_schema"] = {"type": "object", **schema} if schema else dict(_EMPTY_SCHEMA)
    if tool.HasField("cache_control"):
        out["cache_control"] = cache_control(tool.cache_control)
    return out


def tool_choice_to_anthropic(choice: chat_pb2.ToolChoice) -> dict[str, Any] | None:
    """auto / none / required -> any / a named function -> ``{type: tool, name}``."""
    if choice.HasField("function"):
        return {"type": "tool", "name": choice.function.name}
    mode = _TOOL_CHOICES.get(choice.mode)
    return None if mode is None else dict(mode)


def _history_has_tools(messages: list[dict[str, Any]]) -> bool:
    return any(
        block.get("type") in ("tool_use", "tool_result") for msg in messages for block in msg["content"]
    )


# ---- messages ----------------------------------------------------------------------------------


@dataclass
class Converted:
    """Top-level ``system`` blocks, alternating ``messages`` and the betas the content needs."""

    system: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    betas: set[str] = field(default_factory=set)


class MessageConverter:
    """OpenAI messages -> Anthropic (LiteLLM ``anthropic_messages_pt``): system/developer lifted out,
    tool results as user ``tool_result`` blocks, consecutive same-role turns merged."""

    def __init__(self) -> None:
        self.out = Converted()
        self._function_id = ""

    def convert(self, messages: Iterable[chat_pb2.Message]) -> Converted:
        for i, msg in enumerate(messages):
            path = f"messages[{i}]"
            if msg.role in ("system", "developer"):
                self.out.system.extend(_with_cache(self._content(msg, path), msg))
                continue
            role, blocks = self._turn(msg, i, path)
            self._append(role, _with_cache(blocks, msg))
        _strip_final_assistant(self.out.messages)
        return self.out

    def _append(self, role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        turns = self.out.messages
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    def _turn(self, msg: chat_pb2.Message, i: int, path: str) -> tuple[str, list[dict[str, Any]]]:
        if msg.role == "assistant":
            return "assistant", self._assistant(msg, i, path)
        if msg.role in ("tool", "function"):
            tool_use_id = msg.tool_call_id if msg.HasField("tool_call_id") else self._function_id
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id or msg.name}
            if msg.content_parts:
                result["content"] = self._content(msg, path)
            else:
                result["content"] = msg.content
            return "user", [result]
        return "user", self._content(msg, path)

    def _assistant(self, msg: chat_pb2.Message, i: int, path: str) -> list[dict[str, Any]]:
        blocks = [_thinking_block(b) for b in msg.thinking_blocks]  # first, unchanged (signatures)
        blocks += self._content(msg, path)
        for j, call in enumerate(msg.tool_calls):
            args = _tool_input(call.function.arguments, f"{path}.tool_calls[{j}].function.arguments")
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": args})
        if msg.HasField("function_call"):
            self._function_id = f"toolu_function_call_{i}"
            args = _tool_input(msg.function_call.arguments, f"{path}.function_call.arguments")
            name = msg.function_call.name
            blocks.append({"type": "tool_use", "id": self._function_id, "name": name, "input": args})
        return blocks

    def _content(self, msg: chat_pb2.Message, path: str) -> list[dict[str, Any]]:
        if not msg.content_parts:
            return [{"type": "text", "text": msg.content}] if msg.content else []
        blocks = []
        for j, part in enumerate(msg.content_parts):
            block = self._part(part, f"{path}.content_parts[{j}]")
            if block is not None:
                if part.HasField("cache_control"):
                    block["cache_control"] = cache_control(part.cache_control)
                blocks.append(block)
        return blocks

    def _part(self, part: chat_pb2.ContentPart, path: str) -> dict[str, Any] | None:
        kind = part.WhichOneof("part")
        if kind in ("text", "refusal"):
            text = part.text if kind == "text" else part.refusal
            return {"type": "text", "text": text} if text else None  # Anthropic rejects empty text blocks
        if kind == "image_url":
            fmt = part.image_url.format if part.image_url.HasField("format") else None
            return media_block(part.image_url.url, fmt, path, document=False)
        if kind == "file":
            return self._file(part.file, path)
        raise ProviderError(
            ErrorKind.BAD_REQUEST, f"anthropic does not accept {kind} content ({path})", param=path
        )

    def _file(self, file: chat_pb2.File, path: str) -> dict[str, Any]:
        fmt = file.format if file.HasField("format") else None
        if file.HasField("file_data"):
            data = file.file_data
            if not data.startswith(("data:", "http://", "https://")):  # bare base64: a PDF unless told
                data = f"data:{fmt or 'application/pdf'};base64,{data}"
            return media_block(data, fmt, path, document=True)
        self.out.betas.add(FILES_BETA)
        return {"type": "document", "source": {"type": "file", "file_id": file.file_id}}


def media_block(url: str, fmt: str | None, path: str, *, document: bool) -> dict[str, Any]:
    """An ``image`` or ``document`` block: data URLs become base64 sources, http(s) URLs url sources.
    PDFs are documents whichever part carried them."""
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, path)
        media_type = fmt or media_type
        kind = "image" if media_type.startswith("image/") else "document"
        return {"type": kind, "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        is_pdf = fmt == "application/pdf" or url.split("?", 1)[0].lower().endswith(".pdf")
        kind = "document" if document or is_pdf else "image"
        return {"type": kind, "source": {"type": "url", "url": url}}
    raise ProviderError(
        ErrorKind.BAD_REQUEST, f"{path}: expected an http(s) URL or a base64 data URL", param=path
    )


def _parse_data_url(url: str, path: str) -> tuple[str, str]:
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding.lower() != "base64" or not media_type:
        message = f"{path}: expected a data URL like data:<mime type>;base64,<data>"
        raise ProviderError(ErrorKind.BAD_REQUEST, message, param=path)
    return media_type.lower(), data


def _thinking_block(block: chat_pb2.ThinkingBlock) -> dict[str, Any]:
    if block.type == "redacted_thinking":
        return {"type": "redacted_thinking", "data": block.data}
    out: dict[str, Any] = {"type": "thinking", "thinking": block.thinking}
    if block.HasField("signature"):
        out["signature"] = block.signature
    return out


def _tool_input(arguments: str, path: str) -> dict[str, Any]:
    """``json.loads(arguments)``; empty arguments are ``{}``. Anthropic needs an object."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError as exc:
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{path} is not valid JSON: {exc}", param=path) from exc
    if not isinstance(value, dict):
        raise ProviderError(ErrorKind.BAD_REQUEST, f"{path} must be a JSON object", param=path)
    return value


def _with_cache(blocks: list[dict[str, Any]], msg: chat_pb2.Message) -> list[dict[str, Any]]:
    """A message-level ``cache_control`` goes on the message's last block."""
    if blocks and msg.HasField("cache_control"):
        blocks[-1]["cache_control"] = cache_control(msg.cache_control)
    return blocks


def _strip_final_assistant(turns: list[dict[str, Any]]) -> None:
    """Anthropic rejects a final assistant (prefill) turn whose text ends in whitespace."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    content = turns[-1]["content"]
    for block in content:
        if block.get("type") == "text":
            block["text"] = block["text"].rstrip()
    content[:] = [b for b in content if b.get("type") != "text" or b["text"]]
    if not content:
        turns.pop()
