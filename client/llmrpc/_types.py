"""Response objects shaped like LiteLLM's (``litellm.types.utils``).

Pydantic models with attribute access, dict access (``resp["choices"][0]``,
``.get()``, ``in``), ``model_dump()``, ``json()`` (a dict, as in LiteLLM), and the openai SDK's
``to_dict()`` / ``to_json()``. Their dumps validate as
``openai.types.chat.ChatCompletion`` / ``ChatCompletionChunk``.

Like LiteLLM, a few keys appear only when they hold something (``logprobs``,
``annotations``, ``audio``, ``service_tier``, the usage of a stream chunk...);
they are listed in each class's ``_omit_if_none`` and read as ``None`` otherwise.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    model_serializer,
)

__all__ = [
    "ChatCompletionDeltaToolCall",
    "ChatCompletionMessageToolCall",
    "Choices",
    "CompletionTokensDetailsWrapper",
    "Delta",
    "Function",
    "Message",
    "ModelResponse",
    "ModelResponseStream",
    "PromptTokensDetailsWrapper",
    "ServerToolUse",
    "StreamingChoices",
    "Usage",
]


class _Object(BaseModel):
    """Base: LiteLLM's ``OpenAIObject`` conveniences on a pydantic model."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    _omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._omit_if_none:
            if key in data and data[key] is None:
                del data[key]
        return data

    def __repr_args__(self) -> Any:
        return [(k, v) for k, v in super().__repr_args__() if not (k in self._omit_if_none and v is None)]

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        if key in type(self).model_fields:
            return not (key in self._omit_if_none and getattr(self, key) is None)
        return key in (self.__pydantic_extra__ or {})

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __str__(self) -> str:
        # LiteLLM prints `ModelResponse(id=..., choices=[Choices(...)])`, not pydantic's bare fields.
        return repr(self)

    def json(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """``model_dump()``: a dict, as LiteLLM's ``ModelResponse.json()`` returns."""
        return self.model_dump(**kwargs)

    def to_dict(self, *, mode: Literal["json", "python"] = "python", use_api_names: bool = True,
                exclude_unset: bool = False, exclude_defaults: bool = False, exclude_none: bool = False,
                warnings: bool = True) -> dict[str, Any]:
        """The ``openai`` SDK models' ``to_dict()`` (every field unless asked otherwise)."""
        return self.model_dump(mode=mode, by_alias=use_api_names, exclude_unset=exclude_unset,
                               exclude_defaults=exclude_defaults, exclude_none=exclude_none, warnings=warnings)

    def to_json(self, *, indent: int | None = 2, use_api_names: bool = True, exclude_unset: bool = False,
                exclude_defaults: bool = False, exclude_none: bool = False, warnings: bool = True) -> str:
        """The ``openai`` SDK models' ``to_json()``: indented JSON text."""
        return self.model_dump_json(indent=indent, by_alias=use_api_names, exclude_unset=exclude_unset,
                                    exclude_defaults=exclude_defaults, exclude_none=exclude_none,
                                    warnings=warnings)


class Function(_Object):
    """A function call's name and JSON arguments (also a streamed fragment of one)."""

    arguments: str = ""
    name: str | None = None


class ChatCompletionMessageToolCall(_Object):
    """A whole tool call on a response message."""

    _omit_if_none = frozenset({"provider_specific_fields"})
    id: str | None = None
    type: str = "function"
    function: Function = Field(default_factory=Function)
    provider_specific_fields: dict[str, Any] | None = None


class ChatCompletionDeltaToolCall(_Object):
    """A tool-call fragment in a stream chunk; fragments share an ``index``."""

    _omit_if_none = frozenset({"provider_specific_fields"})
    id: str | None = None
    function: Function = Field(default_factory=Function)
    type: str | None = None
    index: int = 0
    provider_specific_fields: dict[str, Any] | None = None


class Message(_Object):
    """The assistant's message. Append it to ``messages`` as-is for the next turn."""

    _omit_if_none = frozenset({"annotations", "audio"})
    content: str | None = None
    role: str = "assistant"
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    function_call: Function | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None
    provider_specific_fields: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    refusal: str | None = None


class Delta(_Object):
    """What one stream chunk adds to a choice's message."""

    _omit_if_none = frozenset(
        {"reasoning_content", "thinking_blocks", "provider_specific_fields", "annotations", "audio"}
    )
    content: str | None = None
    role: str | None = None
    function_call: Function | None = None
    tool_calls: list[ChatCompletionDeltaToolCall] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None
    provider_specific_fields: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class Choices(_Object):
    """One choice of a whole response."""

    _omit_if_none = frozenset({"logprobs", "provider_specific_fields"})
    finish_reason: str = "stop"
    index: int = 0
    message: Message = Field(default_factory=Message)
    logprobs: dict[str, Any] | None = None
    provider_specific_fields: dict[str, Any] | None = None


class StreamingChoices(_Object):
    """One choice of a stream chunk."""

    _omit_if_none = frozenset({"logprobs", "provider_specific_fields"})
    finish_reason: str | None = None
    index: int = 0
    delta: Delta = Field(default_factory=Delta)
    logprobs: dict[str, Any] | None = None
    provider_specific_fields: dict[str, Any] | None = None


class PromptTokensDetailsWrapper(_Object):
    """Breakdown of the prompt tokens (OpenAI fields plus LiteLLM's)."""

    audio_tokens: int | None = None
    cached_tokens: int | None = None
    text_tokens: int | None = None
    image_tokens: int | None = None
    cache_creation_tokens: int | None = None


class CompletionTokensDetailsWrapper(_Object):
    """Breakdown of the completion tokens."""

    accepted_prediction_tokens: int | None = None
    audio_tokens: int | None = None
    reasoning_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    text_tokens: int | None = None


class ServerToolUse(_Object):
    """Tools the provider ran on its side (Anthropic's web search), as LiteLLM reports them."""

    web_search_requests: int | None = None


class Usage(_Object):
    """Token accounting; the two cache counters sit at the top level, as in LiteLLM."""

    _omit_if_none = frozenset({"server_tool_use"})
    completion_tokens: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens_details: CompletionTokensDetailsWrapper | None = None
    prompt_tokens_details: PromptTokensDetailsWrapper | None = None
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    server_tool_use: ServerToolUse | None = None


def _new_id() -> str:
    return f"chatcmpl-{uuid.uuid4()}"


def _now() -> int:
    return int(time.time())


class ModelResponse(_Object):
    """A whole completion (``object == "chat.completion"``).

    ``_hidden_params`` holds what the gateway did (provider, attempts, cost...);
    ``_response_ms`` the call's wall time seen by the client.
    """

    _omit_if_none = frozenset({"service_tier"})
    id: str = Field(default_factory=_new_id)
    created: int = Field(default_factory=_now)
    model: str | None = None
    object: str = "chat.completion"
    system_fingerprint: str | None = None
    choices: list[Choices] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    service_tier: str | None = None
    _hidden_params: dict[str, Any] = PrivateAttr(default_factory=dict)
    _response_ms: float | None = PrivateAttr(default=None)


class ModelResponseStream(_Object):
    """One stream chunk (``object == "chat.completion.chunk"``).

    The last chunk of a stream with ``include_usage`` has ``choices == []`` and ``usage``.
    """

    _omit_if_none = frozenset({"usage", "service_tier"})
    id: str = Field(default_factory=_new_id)
    created: int = Field(default_factory=_now)
    model: str | None = None
    object: str = "chat.completion.chunk"
    system_fingerprint: str | None = None
    choices: list[StreamingChoices] = Field(default_factory=list)
    usage: Usage | None = None
    service_tier: str | None = None
    _hidden_params: dict[str, Any] = PrivateAttr(default_factory=dict)
