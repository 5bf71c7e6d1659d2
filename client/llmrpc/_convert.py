"""Pure conversion of ``completion()``'s arguments into a ``CompleteRequest``.

The client stays thin: it converts what it can and leaves validation to the
server. Only a value protobuf cannot hold (``temperature="hot"``) fails here, as
``BadRequestError`` naming the parameter, before any RPC. Answers go the other
way in ``_decode``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel

from ._litellm_params import LITELLM_OWN_PARAMS
from .exceptions import BadRequestError
from .v1 import chat_pb2, completion_service_pb2

__all__ = ["build_request", "stream_options_to_proto"]

_Setter = Callable[[Any, Any], None]

# ---------------------------------------------------------------- requests

# completion() arguments that are proto3 `optional` scalars of the same name.
_SCALARS = frozenset(
    {
        "timeout", "temperature", "top_p", "n", "max_completion_tokens", "max_tokens",
        "presence_penalty", "frequency_penalty", "user", "seed", "parallel_tool_calls",
        "logprobs", "top_logprobs", "deployment_id", "api_version", "api_key", "api_base",
        "reasoning_effort", "service_tier", "store", "caching", "num_retries",
        "mock_response", "drop_params", "organization",
    }
)  # fmt: skip
_STRING_LISTS = frozenset({"modalities", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks"})
# Arguments the client consumes itself; everything else unknown goes to extra_body.
_CLIENT_ONLY = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "client",
        "extra_body",
        "base_url",
        "custom_llm_provider",
    }
)
# LiteLLM's other names for request fields: (alias, field), the field winning when both are set.
_ALIASES = (("max_retries", "num_retries"), ("request_timeout", "timeout"), ("headers", "extra_headers"))
# Arguments that need more than a copy before the request is built; most calls have none of them.
_LITELLM_SPECIAL = frozenset(
    {"max_retries", "request_timeout", "stream_timeout", "headers", "additional_drop_params", "mock_tool_calls"}
)
_MOCK_TOOL_CALLS_TEXT = "This is a mock request"  # LiteLLM's mock_response when only tool calls are mocked
_TOOL_CHOICE_MODES = {
    "auto": chat_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": chat_pb2.TOOL_CHOICE_MODE_NONE,
    "required": chat_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def build_request(params: Mapping[str, Any]) -> completion_service_pb2.CompleteRequest:
    """``completion()``'s arguments (named ones and ``**kwargs``, flattened) -> request."""
    req = completion_service_pb2.CompleteRequest()
    with _param("model"):
        req.model = _model_name(params["model"], params.get("custom_llm_provider"))
    values = dict(params)
    if values.get("api_base") is None:  # LiteLLM takes either spelling
        values["api_base"] = values.get("base_url")
    if not _LITELLM_SPECIAL.isdisjoint(values):
        _litellm_kwargs(values)
    extra: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or name in _CLIENT_ONLY:
            continue
        with _param(name):
            if name in _SCALARS:
                setattr(req, name, value)
            elif name in _STRING_LISTS:
                getattr(req, name).extend(value)
            elif name in _REQUEST_SETTERS:
                _REQUEST_SETTERS[name](req, value)
            elif name in LITELLM_OWN_PARAMS:  # LiteLLM's own (tags=, litellm_call_id=...): never sent
                continue
            else:  # provider-specific kwargs (top_k=40), as LiteLLM forwards them
                extra[name] = value
    extra.pop("model_list", None)
    if values.get("model_list"):
        with _param("model_list"):
            _model_list(req, values["model_list"])
    extra.update(values.get("extra_body") or {})
    if extra:
        with _param("extra_body"):
            req.extra_body.update(extra)
    return req


def _model_list(req: completion_service_pb2.CompleteRequest, entries: Any) -> None:
    """LiteLLM's ``model_list=[{"model_name": ..., "litellm_params": {...}, "model_info": {...}}]``:
    the gateway routes the call over these deployments (their keys and bases are the caller's)."""
    for i, entry in enumerate(entries):
        item = _as_dict(entry)
        unknown = set(item) - {"model_name", "litellm_params", "model_info"}
        if unknown:
            raise ValueError(f"model_list[{i}]: unknown keys {sorted(unknown)}")
        dep = req.model_list.add(model_name=str(item.get("model_name") or ""))
        dep.litellm_params.update(_as_dict(item.get("litellm_params") or {}))
        dep.model_info.update(_as_dict(item.get("model_info") or {}))


def _litellm_kwargs(values: dict[str, Any]) -> None:
    """LiteLLM's own keyword arguments that mean something for the call, turned into request fields
    (the rest of LiteLLM's own arguments are dropped by ``build_request``)."""
    stream_timeout = values.pop("stream_timeout", None)
    if values.get("stream") and values.get("timeout") is None and stream_timeout is not None:
        values["timeout"] = stream_timeout
    for alias, field in _ALIASES:
        value = values.pop(alias, None)
        if value is None:
            continue
        if field == "extra_headers":  # LiteLLM merges headers= under extra_headers=
            values[field] = {**_as_dict(value), **_as_dict(values.get(field) or {})}
        elif values.get(field) is None:
            values[field] = value
    for name in values.pop("additional_drop_params", None) or ():
        if name not in ("model", "messages"):
            values.pop(name, None)
    calls = values.pop("mock_tool_calls", None)
    if calls:  # LiteLLM answers from its mock with these tool calls; so does the gateway's mock
        if values.get("mock_response") is None:
            values["mock_response"] = _MOCK_TOOL_CALLS_TEXT
        values["extra_body"] = {**(values.get("extra_body") or {}), "mock_tool_calls": [_as_dict(c) for c in calls]}


def stream_options_to_proto(value: Mapping[str, Any] | None) -> completion_service_pb2.StreamOptions:
    options = completion_service_pb2.StreamOptions()
    if value is not None:
        with _param("stream_options"):
            _fill(options, _as_dict(value), ("include_usage",))
    return options


def _model_name(model: str, provider: str | None) -> str:
    # LiteLLM's custom_llm_provider= is the same as a "provider/" prefix.
    if provider and not model.startswith(f"{provider}/"):
        return f"{provider}/{model}"
    return model


@contextmanager
def _param(path: str) -> Iterator[None]:
    try:
        yield
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadRequestError(
            f"Invalid value for parameter {path!r}: {exc}",
            reason="INVALID_REQUEST",
            metadata={"param": path},
            field_violations=[(path, str(exc))],
        ) from exc


def _as_dict(value: Any) -> dict[str, Any]:
    # Users pass response objects straight back (pydantic, ours or openai's).
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "model_dump"):
        dumped: dict[str, Any] = value.model_dump()
        return dumped
    raise TypeError(f"expected a dict, got {type(value).__name__}")


def _fill(target: Any, data: Mapping[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if data.get(field) is not None:
            setattr(target, field, data[field])


def _set_messages(req: completion_service_pb2.CompleteRequest, messages: Any) -> None:
    for index, raw in enumerate(messages):
        req.messages.append(_message_to_proto(index, raw))


def _message_to_proto(index: int, raw: Any) -> chat_pb2.Message:
    msg = chat_pb2.Message()
    if not isinstance(raw, Mapping) and not hasattr(raw, "model_dump"):
        return msg  # not a message at all: the server names the missing role
    for key, value in _as_dict(raw).items():
        setter = _MESSAGE_SETTERS.get(key)
        if setter is not None and value is not None:
            with _param(f"messages[{index}].{key}"):
                setter(msg, value)
    return msg


def _scalar(name: str) -> _Setter:
    def set_scalar(target: Any, value: Any) -> None:
        setattr(target, name, value)

    return set_scalar


def _set_content(msg: chat_pb2.Message, content: Any) -> None:
    if isinstance(content, str):
        msg.content = content
    elif isinstance(content, list | tuple):
        msg.content_parts.extend(_content_part(part) for part in content)
    else:
        raise TypeError(f"content must be a string or a list of parts, got {type(content).__name__}")


def _content_part(raw: Any) -> chat_pb2.ContentPart:
    data = _as_dict(raw)
    part = chat_pb2.ContentPart(type=data.get("type") or "")
    kind = (
        part.type
        if part.type in _PART_SETTERS
        else next((k for k in _PART_SETTERS if data.get(k) is not None), None)
    )
    if kind is not None and data.get(kind) is not None:
        _PART_SETTERS[kind](part, data[kind])
    if data.get("cache_control") is not None:
        _set_cache_control(part, data["cache_control"])
    return part


def _set_image_url(part: chat_pb2.ContentPart, value: Any) -> None:
    if isinstance(value, str):
        part.image_url.url = value
    else:
        _fill(part.image_url, _as_dict(value), ("url", "detail", "format"))


def _set_cache_control(target: Any, value: Any) -> None:
    _fill(target.cache_control, _as_dict(value), ("type", "ttl"))


def _sub_message(name: str, fields: tuple[str, ...]) -> _Setter:
    def set_sub_message(target: Any, value: Any) -> None:
        sub = getattr(target, name)
        sub.SetInParent()  # an all-default dict still means "set"
        _fill(sub, _as_dict(value), fields)

    return set_sub_message


_PART_SETTERS: dict[str, _Setter] = {
    "text": _scalar("text"),
    "image_url": _set_image_url,
    "input_audio": _sub_message("input_audio", ("data", "format")),
    "file": _sub_message("file", ("file_data", "file_id", "filename", "format")),
    "refusal": _scalar("refusal"),
}


def _function_call(target: Any, value: Any) -> None:
    data = _as_dict(value)
    args = data.get("arguments")
    target.SetInParent()
    _fill(target, {"name": data.get("name"), "arguments": _arguments_text(args)}, ("name", "arguments"))


def _arguments_text(args: Any) -> str | None:
    return args if args is None or isinstance(args, str) else json.dumps(args)


def _tool_call(raw: Any) -> chat_pb2.ToolCall:
    data = _as_dict(raw)
    call = chat_pb2.ToolCall()
    _fill(call, data, ("id", "type"))
    if data.get("function") is not None:
        _function_call(call.function, data["function"])
    if data.get("provider_specific_fields") is not None:
        call.provider_specific_fields.update(data["provider_specific_fields"])
    return call


def _thinking_block(raw: Any) -> chat_pb2.ThinkingBlock:
    block = chat_pb2.ThinkingBlock()
    _fill(block, _as_dict(raw), ("type", "thinking", "signature", "data"))
    return block


def _annotation(raw: Any) -> chat_pb2.Annotation:
    data = _as_dict(raw)
    note = chat_pb2.Annotation(type=data.get("type") or "")
    if data.get("url_citation") is not None:
        _fill(note.url_citation, _as_dict(data["url_citation"]), ("start_index", "end_index", "title", "url"))
    return note


def _struct_field(name: str) -> _Setter:
    def set_struct(target: Any, value: Any) -> None:
        getattr(target, name).update(_as_dict(value))

    return set_struct


_MESSAGE_SETTERS: dict[str, _Setter] = {
    "role": _scalar("role"),
    "content": _set_content,
    "name": _scalar("name"),
    "tool_call_id": _scalar("tool_call_id"),
    "refusal": _scalar("refusal"),
    "reasoning_content": _scalar("reasoning_content"),
    "tool_calls": lambda m, v: m.tool_calls.extend(_tool_call(t) for t in v),
    "function_call": lambda m, v: _function_call(m.function_call, v),
    "thinking_blocks": lambda m, v: m.thinking_blocks.extend(_thinking_block(b) for b in v),
    "annotations": lambda m, v: m.annotations.extend(_annotation(a) for a in v),
    "audio": _sub_message("audio", ("id", "data", "expires_at", "transcript")),
    "provider_specific_fields": _struct_field("provider_specific_fields"),
    "cache_control": _set_cache_control,
}


def _function_definition(target: chat_pb2.FunctionDefinition, raw: Any) -> None:
    data = _as_dict(raw)
    _fill(target, data, ("name", "description", "strict"))
    if data.get("parameters") is not None:
        target.parameters.update(data["parameters"])


def _tool(raw: Any) -> chat_pb2.Tool:
    data = _as_dict(raw)
    tool = chat_pb2.Tool(type=data.get("type") or "")
    if data.get("function") is not None:
        _function_definition(tool.function, data["function"])
    if data.get("cache_control") is not None:
        _set_cache_control(tool, data["cache_control"])
    return tool


def _functions(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    for raw in value:
        _function_definition(req.functions.add(), raw)


def _choice(name: str) -> _Setter:
    """``tool_choice`` / ``function_call``: a mode string, or one named function."""

    def set_choice(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
        choice = getattr(req, name)
        if isinstance(value, str):
            if value not in _TOOL_CHOICE_MODES:
                raise ValueError(f"expected one of {sorted(_TOOL_CHOICE_MODES)} or a function, got {value!r}")
            choice.mode = _TOOL_CHOICE_MODES[value]
            return
        data = _as_dict(value)
        function = _as_dict(data["function"]) if data.get("function") is not None else data
        choice.function.name = function["name"]

    return set_choice


def _response_format(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    if isinstance(value, type) and issubclass(value, BaseModel):
        # As LiteLLM (and the openai SDK's parse()) send a pydantic class: OpenAI's strict schema.
        value = {
            "type": "json_schema",
            "json_schema": {"schema": to_strict_json_schema(value), "name": value.__name__, "strict": True},
        }
    data = _as_dict(value)
    req.response_format.type = data.get("type") or ""
    if data.get("json_schema") is not None:
        schema = _as_dict(data["json_schema"])
        _fill(req.response_format.json_schema, schema, ("name", "description", "strict"))
        if schema.get("schema") is not None:
            req.response_format.json_schema.schema.update(schema["schema"])


def _set_stop(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    req.stop.extend([value] if isinstance(value, str) else value)


def _set_logit_bias(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    for token, bias in _as_dict(value).items():
        req.logit_bias[str(token)] = bias


def _set_prediction(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    data = _as_dict(value)
    content = data.get("content")
    if isinstance(content, list):  # OpenAI also allows a list of text parts
        content = "".join(_as_dict(part).get("text") or "" for part in content)
    req.prediction.SetInParent()
    _fill(req.prediction, {"type": data.get("type"), "content": content}, ("type", "content"))


def _set_web_search_options(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    data = _as_dict(value)
    opts = req.web_search_options
    opts.SetInParent()  # {} still means "search"
    _fill(opts, data, ("search_context_size",))
    if data.get("user_location") is not None:
        location = _as_dict(data["user_location"])
        opts.user_location.SetInParent()
        _fill(opts.user_location, location, ("type",))
        if location.get("approximate") is not None:
            approximate = opts.user_location.approximate
            approximate.SetInParent()
            _fill(approximate, _as_dict(location["approximate"]), ("city", "country", "region", "timezone"))


def _set_cache(req: completion_service_pb2.CompleteRequest, value: Any) -> None:
    data = _as_dict(value)
    req.cache.SetInParent()
    keys = {"no_cache": "no-cache", "no_store": "no-store", "ttl": "ttl", "namespace": "namespace"}
    _fill(req.cache, {field: data.get(key) for field, key in keys.items()}, tuple(keys))
    s_maxage = data.get("s-maxage", data.get("s-max-age"))
    if s_maxage is not None:
        req.cache.s_maxage = s_maxage


def _set_string_map(name: str) -> _Setter:
    def set_map(req: Any, value: Any) -> None:
        getattr(req, name).update(_as_dict(value))

    return set_map


_REQUEST_SETTERS: dict[str, _Setter] = {
    "messages": _set_messages,
    "stop": _set_stop,
    "logit_bias": _set_logit_bias,
    "response_format": _response_format,
    "tools": lambda r, v: r.tools.extend(_tool(t) for t in v),
    "tool_choice": _choice("tool_choice"),
    "functions": _functions,
    "function_call": _choice("function_call"),
    "thinking": _sub_message("thinking", ("type", "budget_tokens")),
    "audio": _sub_message("audio", ("voice", "format")),
    "prediction": _set_prediction,
    "web_search_options": _set_web_search_options,
    "cache": _set_cache,
    "metadata": _struct_field("metadata"),
    "extra_headers": _set_string_map("extra_headers"),
    "provider_metadata": _set_string_map("provider_metadata"),
}
