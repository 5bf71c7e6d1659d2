"""Request validation: every problem becomes a ``BadRequest`` field violation naming the field
(``messages[2].content_parts[0]``), so callers in any language see exactly what to fix."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb

from .errors import invalid_argument
from .proto_json import has_field, struct_to_dict
from .upstream_checks import upstream_violations

__all__ = ["ROLES", "validate_request"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NAME = re.compile(r"^[a-zA-Z0-9_.:-]{1,128}$")
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max", "disable"})
_FORMATS = frozenset({"text", "json_object", "json_schema"})
_THINKING = frozenset({"enabled", "disabled", "adaptive"})
_SEARCH_SIZES = frozenset({"low", "medium", "high"})
# extra_body is merged last into the upstream body: these keys would silently change the call's shape.
_RESERVED_BODY_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
_MAX_MODEL = 512
# field -> (low, high) for optional numeric knobs.
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "n": (1, 128),
    "max_tokens": (1, 10_000_000),
    "max_completion_tokens": (1, 10_000_000),
    "top_logprobs": (0, 20),
    "num_retries": (0, 10),
    "timeout": (1e-3, 86_400.0),
}

Violation = tuple[str, str]


def validate_request(req: pb.CompleteRequest, *, prefix: str = "") -> None:
    """Raise ``ServiceError(INVALID_ARGUMENT)`` listing every violation in ``req``."""
    violations = [(prefix + f, d) for f, d in _violations(req)]
    if violations:
        raise invalid_argument(violations)


def _violations(req: pb.CompleteRequest) -> Iterator[Violation]:
    # ListFields() names only what the caller set (usually model and messages): one C call instead
    # of a HasField probe per optional field, on the path of every request.
    present = {fd.name: value for fd, value in req.ListFields()}
    if not req.model.strip():
        yield "model", "required: name a model such as 'openai/gpt-4o-mini' or 'mock/echo'"
    messages = present.get("messages", ())
    if not messages:
        yield "messages", "at least one message is required"
    for i, msg in enumerate(messages):
        yield from _message(msg, f"messages[{i}]")
    yield from _knobs(req, present)
    if "tools" in present or "functions" in present or "tool_choice" in present:
        yield from _tools(req)
    if "response_format" in present:
        yield from _response_format(req.response_format)
    if "web_search_options" in present:
        yield from _web_search(req.web_search_options)
    for name in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        for i, model in enumerate(present.get(name, ())):
            if not model.strip():
                yield f"{name}[{i}]", "must name a model"
    if "extra_body" in present:
        for key in _RESERVED_BODY_KEYS.intersection(req.extra_body.fields):
            yield f"extra_body.{key}", f"{key!r} is set by the gateway; use the request field instead"
    if "model" in present and len(req.model) > _MAX_MODEL:
        yield "model", f"at most {_MAX_MODEL} characters"
    yield from upstream_violations(req, present)


def _web_search(opts: pb.WebSearchOptions) -> Iterator[Violation]:
    if opts.HasField("search_context_size") and opts.search_context_size not in _SEARCH_SIZES:
        yield ("web_search_options.search_context_size",
               f"must be one of {', '.join(sorted(_SEARCH_SIZES))}, got {opts.search_context_size!r}")
    if opts.user_location.type not in ("", "approximate"):
        yield "web_search_options.user_location.type", f"must be 'approximate', got {opts.user_location.type!r}"


def _knobs(req: pb.CompleteRequest, present: dict[str, Any]) -> Iterator[Violation]:
    for name, value in present.items():
        bounds = _RANGES.get(name)
        if bounds is not None:
            low, high = bounds
            if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
                yield name, f"must be between {low} and {high}, got {value}"
    for token, bias in req.logit_bias.items() if "logit_bias" in present else ():
        if not -100 <= bias <= 100:
            yield f"logit_bias[{token}]", f"must be between -100 and 100, got {bias}"
    if "reasoning_effort" in present and req.reasoning_effort not in _EFFORTS:
        yield "reasoning_effort", f"must be one of {', '.join(sorted(_EFFORTS))}"
    if "thinking" in present:
        if req.thinking.type not in _THINKING:
            yield "thinking.type", f"must be one of {', '.join(sorted(_THINKING))}"
        if req.thinking.HasField("budget_tokens") and req.thinking.budget_tokens < 0:
            yield "thinking.budget_tokens", "must not be negative"
    for i, stop in enumerate(present.get("stop", ())):
        if not stop:
            yield f"stop[{i}]", "must not be empty"
    if "cache" in present:
        for name in ("ttl", "s_maxage"):
            if has_field(req.cache, name) and not getattr(req.cache, name) >= 0:
                yield f"cache.{name}", "must not be negative"


def _message(msg: chat_pb2.Message, path: str) -> Iterator[Violation]:
    present = {fd.name for fd, _ in msg.ListFields()}
    role = msg.role
    if role not in ROLES:
        yield f"{path}.role", f"unknown role {role!r}; use one of {', '.join(sorted(ROLES))}"
    has_content, has_parts = "content" in present, "content_parts" in present
    if has_content and has_parts:
        yield f"{path}.content", "set either content or content_parts, not both"
    if role == "tool" and not msg.tool_call_id:
        yield f"{path}.tool_call_id", "required for role 'tool'"
    if role == "function" and not msg.name:
        yield f"{path}.name", "required for role 'function'"
    if role in ("user", "system", "developer") and not has_content and not has_parts:
        yield f"{path}.content", f"required for role {role!r}"
    if has_parts:
        for j, part in enumerate(msg.content_parts):
            yield from _part(part, f"{path}.content_parts[{j}]")
    if "tool_calls" in present:
        for j, call in enumerate(msg.tool_calls):
            if not call.function.name:
                yield f"{path}.tool_calls[{j}].function.name", "required"
            if call.type not in ("", "function"):
                yield f"{path}.tool_calls[{j}].type", "must be 'function'"
    if "thinking_blocks" in present:
        for j, block in enumerate(msg.thinking_blocks):
            if block.type not in ("thinking", "redacted_thinking"):
                yield f"{path}.thinking_blocks[{j}].type", "must be 'thinking' or 'redacted_thinking'"


def _part(part: chat_pb2.ContentPart, path: str) -> Iterator[Violation]:
    kind = part.WhichOneof("part")
    if kind is None:
        yield path, "set one of text, image_url, input_audio, file, refusal"
        return
    if part.type and part.type not in _PART_TYPES:
        yield f"{path}.type", f"unknown content part type {part.type!r}"
    elif part.type and part.type != kind:
        yield f"{path}.type", f"type {part.type!r} does not match the {kind!r} field that is set"
    if kind == "image_url" and not part.image_url.url:
        yield f"{path}.image_url.url", "required"
    if kind == "input_audio" and not part.input_audio.data:
        yield f"{path}.input_audio.data", "required"
    if kind == "file" and not (part.file.HasField("file_data") or part.file.HasField("file_id")):
        yield f"{path}.file", "set file_data or file_id"


def _tools(req: pb.CompleteRequest) -> Iterator[Violation]:
    names = set()
    for i, tool in enumerate(req.tools):
        path = f"tools[{i}]"
        if tool.type not in ("", "function"):
            yield f"{path}.type", "must be 'function'"
        yield from _function(tool.function, f"{path}.function")
        names.add(tool.function.name)
    for i, fn in enumerate(req.functions):
        yield from _function(fn, f"functions[{i}]")
    if req.HasField("tool_choice") and req.tool_choice.HasField("function"):
        if req.tool_choice.function.name not in names:
            yield "tool_choice.function.name", f"no tool named {req.tool_choice.function.name!r} in tools"


def _function(fn: chat_pb2.FunctionDefinition, path: str) -> Iterator[Violation]:
    if not _NAME.match(fn.name):
        yield f"{path}.name", "required; letters, digits, '_', '-', '.', ':' only, at most 128 characters"
    if fn.HasField("parameters"):
        yield from _schema(struct_to_dict(fn.parameters), f"{path}.parameters", need_object=True)


def _schema(schema: dict[str, object], path: str, *, need_object: bool) -> Iterator[Violation]:
    kind = schema.get("type")
    if need_object and kind not in (None, "object"):
        yield f"{path}.type", f"the parameters schema must have type 'object', got {kind!r}"
    props = schema.get("properties")
    if props is not None and not isinstance(props, dict):
        yield f"{path}.properties", "must be an object mapping names to schemas"
    elif isinstance(props, dict):
        for name, sub in props.items():
            if not isinstance(sub, dict):
                yield f"{path}.properties.{name}", "must be a schema object"
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        yield f"{path}.required", "must be a list of property names"


def _response_format(fmt: chat_pb2.ResponseFormat) -> Iterator[Violation]:
    if fmt.type not in _FORMATS:
        yield "response_format.type", f"must be one of {', '.join(sorted(_FORMATS))}"
    if fmt.type == "json_schema":
        if not fmt.json_schema.name:
            yield "response_format.json_schema.name", "required for type 'json_schema'"
        if not fmt.json_schema.HasField("schema"):
            yield "response_format.json_schema.schema", "required for type 'json_schema'"
        else:
            yield from _schema(struct_to_dict(fmt.json_schema.schema), "response_format.json_schema.schema",
                               need_object=False)
