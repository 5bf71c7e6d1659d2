"""LiteLLM's model-knowledge helpers, answered by the gateway so every language gets the same answers:
``token_counter``, ``get_model_info``, ``model_cost``, the ``supports_*`` checks, ``get_llm_provider``
and ``completion_cost``.

Token counts come from the gateway's offline tokenizer (``CountTokens``); limits, prices and
capabilities from its model table (``GetModelInfo``). Answers are cached per client and model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

import grpc
from google.protobuf.message import Message

from ._callbacks import with_trace
from ._client import Client, _client_for
from ._convert import _message_to_proto, _model_name, _param, _tool
from .exceptions import map_rpc_error
from .v1 import completion_service_pb2 as pb

__all__ = [
    "completion_cost",
    "get_llm_provider",
    "get_model_info",
    "model_cost",
    "supports_audio_input",
    "supports_audio_output",
    "supports_function_calling",
    "supports_parallel_function_calling",
    "supports_pdf_input",
    "supports_prompt_caching",
    "supports_reasoning",
    "supports_response_schema",
    "supports_system_messages",
    "supports_tool_choice",
    "supports_vision",
    "supports_web_search",
    "token_counter",
]

_DEADLINE_S = 30.0
_FLAGS = (
    "supports_function_calling", "supports_parallel_function_calling", "supports_tool_choice", "supports_vision",
    "supports_reasoning", "supports_response_schema", "supports_prompt_caching", "supports_system_messages",
    "supports_web_search", "supports_audio_input", "supports_audio_output", "supports_pdf_input",
)  # fmt: skip
_NUMBERS = (
    "max_tokens", "max_input_tokens", "max_output_tokens", "input_cost_per_token", "output_cost_per_token",
    "cache_read_input_token_cost", "cache_creation_input_token_cost", "search_cost_per_request",
)  # fmt: skip
_info_cache: dict[tuple[str, str], dict[str, Any]] = {}
_info_lock = threading.Lock()


@overload
def _call(client: Client, request: pb.CountTokensRequest, model: str) -> pb.CountTokensResponse: ...
@overload
def _call(client: Client, request: pb.GetModelInfoRequest, model: str) -> pb.GetModelInfoResponse: ...
@overload
def _call(client: Client, request: pb.ListModelsRequest, model: str) -> pb.ListModelsResponse: ...
def _call(client: Client, request: Message, model: str) -> Message:
    """The unary RPC named for the request's type (``CountTokensRequest`` -> ``CountTokens``)."""
    method = type(request).__name__.removesuffix("Request")
    try:
        reply: Message = getattr(client._sync_stub(), method)(
            request, timeout=_DEADLINE_S, metadata=with_trace(client._metadata)
        )
    except grpc.RpcError as err:
        raise map_rpc_error(err, model=model, target=client.target, method=method) from err
    return reply


def token_counter(
    model: str = "",
    custom_tokenizer: Any = None,
    text: str | list[str] | None = None,
    messages: Sequence[Any] | None = None,
    count_response_tokens: bool | None = False,
    tools: Sequence[Any] | None = None,
    *,
    custom_llm_provider: str | None = None,
    client: Client | None = None,
    **_ignored: Any,
) -> int:
    """``litellm.token_counter()`` (same argument order): prompt tokens of ``messages`` (framing included)
    or of ``text``, counted offline by the gateway (OpenAI models with their own encoding, others with
    cl100k_base). ``custom_tokenizer`` is not supported (the gateway owns the tokenizers) and is ignored;
    ``count_response_tokens=True`` leaves ``tools`` out, as LiteLLM does."""
    if text is not None and messages is not None:
        raise ValueError("text and messages cannot both be set")
    if text is None and messages is None:
        raise ValueError("Either text or messages must be provided")
    request = pb.CountTokensRequest(model=_model_name(model, custom_llm_provider))
    if text is not None:
        request.text = text if isinstance(text, str) else "".join(t for t in text if isinstance(t, str))
    else:
        request.messages.extend(_message_to_proto(i, m) for i, m in enumerate(messages or ()))
        with _param("tools"):
            request.tools.extend(_tool(t) for t in (() if count_response_tokens else tools or ()))
    reply = _call(_client_for({"client": client}), request, request.model)
    return int(reply.prompt_tokens)


def get_model_info(
    model: str, custom_llm_provider: str | None = None, *, client: Client | None = None
) -> dict[str, Any]:
    """``litellm.get_model_info()``: provider, limits, prices and capabilities, as a dict with LiteLLM's
    keys. Raises ``Exception`` (as LiteLLM does) for a model the gateway knows nothing about."""
    name = _model_name(model, custom_llm_provider)
    gateway = _client_for({"client": client})
    key = (gateway.target, name)
    with _info_lock:
        cached = _info_cache.get(key)
    if cached is None:
        request = pb.GetModelInfoRequest(model=name)
        cached = _info_dict(_call(gateway, request, name).model_info)
        with _info_lock:
            _info_cache[key] = cached
    if cached["input_cost_per_token"] is None and not any(cached[f] is not None for f in _FLAGS):
        raise Exception(  # LiteLLM raises a bare Exception here too
            f"This model isn't mapped yet. model={model}, custom_llm_provider={cached['litellm_provider']}."
        )
    return dict(cached)


def _info_dict(info: pb.ModelInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": info.key,
        "litellm_provider": info.provider,
        "mode": info.mode or "chat",
        "supported_openai_params": list(info.supported_openai_params),
    }
    for field in (*_NUMBERS, *_FLAGS):
        out[field] = getattr(info, field) if info.HasField(field) else None  # type: ignore[arg-type]
    out["_provider_model"] = info.provider_model
    return out


def _supports(flag: str) -> Any:
    def check(model: str, custom_llm_provider: str | None = None, *, client: Client | None = None) -> bool:
        try:
            return bool(get_model_info(model, custom_llm_provider, client=client)[flag])
        except Exception as exc:  # unknown model: False, as LiteLLM answers
            if "isn't mapped yet" in str(exc):
                return False
            raise

    check.__name__ = flag
    check.__doc__ = f"``litellm.{flag}()``: from the gateway's model table; False for unknown models."
    return check


supports_function_calling = _supports("supports_function_calling")
supports_parallel_function_calling = _supports("supports_parallel_function_calling")
supports_tool_choice = _supports("supports_tool_choice")
supports_vision = _supports("supports_vision")
supports_reasoning = _supports("supports_reasoning")
supports_response_schema = _supports("supports_response_schema")
supports_prompt_caching = _supports("supports_prompt_caching")
supports_system_messages = _supports("supports_system_messages")
supports_web_search = _supports("supports_web_search")
supports_audio_input = _supports("supports_audio_input")
supports_audio_output = _supports("supports_audio_output")
supports_pdf_input = _supports("supports_pdf_input")


def get_llm_provider(
    model: str,
    custom_llm_provider: str | None = None,
    api_base: str | None = None,
    api_key: str | None = None,
    *,
    client: Client | None = None,
) -> tuple[str, str, str | None, str | None]:
    """``litellm.get_llm_provider()``: ``(model, provider, api_key, api_base)``. The gateway resolves the
    provider; keys and bases live on the gateway, so only the ones passed in come back."""
    name = _model_name(model, custom_llm_provider)
    request = pb.GetModelInfoRequest(model=name)
    info = _call(_client_for({"client": client}), request, name).model_info
    return info.provider_model, info.provider, api_key, api_base


def completion_cost(
    completion_response: Any = None,
    model: str | None = None,
    custom_llm_provider: str | None = None,
    prompt: str = "",
    messages: Sequence[Any] | None = None,
    completion: str = "",
    *,
    client: Client | None = None,
    **_ignored: Any,
) -> float:
    """``litellm.completion_cost()`` (same leading argument order): the cost the gateway computed for the response (its
    ``_hidden_params["response_cost"]``), else the model's token prices times the response's usage,
    else times the tokens of ``prompt``/``messages`` and ``completion``."""
    if completion_response is not None:
        hidden = getattr(completion_response, "_hidden_params", None) or {}
        if hidden.get("response_cost") is not None:
            return float(hidden["response_cost"])
        model = model or _qualified(completion_response, hidden) or None
    if not model:
        raise ValueError("completion_cost needs a model or a completion_response")
    prompt_tokens, completion_tokens, cached = _token_counts(
        completion_response, model, prompt, messages, completion, custom_llm_provider, client)
    info = get_model_info(model, custom_llm_provider, client=client)
    input_price = info["input_cost_per_token"] or 0.0
    cached_price = info["cache_read_input_token_cost"]
    return float(
        (prompt_tokens - cached) * input_price
        + cached * (input_price if cached_price is None else cached_price)
        + completion_tokens * (info["output_cost_per_token"] or 0.0)
    )


def _qualified(response: Any, hidden: Mapping[str, Any]) -> str:
    model = str(_get(response, "model") or "")
    provider = str(hidden.get("custom_llm_provider") or "")
    return model if not provider or model.startswith(f"{provider}/") else f"{provider}/{model}"


def _token_counts(
    response: Any, model: str, prompt: str, messages: Sequence[Any] | None, completion: str,
    provider: str | None, client: Client | None,
) -> tuple[int, int, int]:
    usage = _get(response, "usage") if response is not None else None
    if usage is not None and (_get(usage, "total_tokens") or 0) > 0:
        details = _get(usage, "prompt_tokens_details")
        cached = (_get(details, "cached_tokens") if details is not None else None) or 0
        return int(_get(usage, "prompt_tokens") or 0), int(_get(usage, "completion_tokens") or 0), int(cached)
    if messages:
        counted = token_counter(model, messages=messages, custom_llm_provider=provider, client=client)
    else:
        counted = token_counter(model, text=prompt, custom_llm_provider=provider, client=client) if prompt else 0
    out = token_counter(model, text=completion, custom_llm_provider=provider, client=client) if completion else 0
    return counted, out, 0


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


class _ModelCost(Mapping[str, dict[str, Any]]):
    """``litellm.model_cost``, read lazily from the gateway: ``model_cost["gpt-4o"]`` asks it once per
    model. Iterating lists only the models looked up so far (the gateway has no model list yet)."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, Any]] = {}

    def __getitem__(self, model: str) -> dict[str, Any]:
        if model not in self._seen:
            try:
                self._seen[model] = get_model_info(model)
            except Exception as exc:
                if "isn't mapped yet" in str(exc):
                    raise KeyError(model) from None
                raise
        return self._seen[model]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._seen))

    def __len__(self) -> int:
        return len(self._seen)


model_cost: Mapping[str, dict[str, Any]] = _ModelCost()
