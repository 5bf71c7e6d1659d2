"""The OpenAI-compatible family: one table of hosts, plus small subclasses where a host's body or reply
really differs from OpenAI's.

Every host speaks ``POST {base}/chat/completions`` with a Bearer key; a row says where the host lives,
which env vars configure it (LiteLLM's order) and which OpenAI parameters it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from llmrpc.v1 import completion_service_pb2 as pb

from .base import ProviderAdapter, StreamState, Target
from .common import cache_control, join_url
from .openai import OpenAIAdapter, OpenAISpec, OpenAIStream

__all__ = ["COMPAT_PARAMS", "FAMILY", "adapters", "family_specs"]

# OpenAI chat parameters a generic compatible host understands (OpenAI-only ones left out:
# modalities, audio, service_tier, store, prediction, metadata, reasoning_effort). Not `user`: LiteLLM
# does not send it to these hosts (and drops it silently, as the gateway does).
COMPAT_PARAMS = frozenset(
    {
        "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens", "presence_penalty",
        "frequency_penalty", "logit_bias", "response_format", "seed", "tools", "tool_choice",
        "parallel_tool_calls", "logprobs", "top_logprobs", "functions", "function_call",
    }
)
_MISTRAL_PARAMS = frozenset(
    {
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "tools", "tool_choice", "seed", "stop",
        "response_format", "parallel_tool_calls",
    }
)
_XAI_PARAMS = frozenset(
    {
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "n", "parallel_tool_calls",
        "presence_penalty", "response_format", "seed", "temperature", "tool_choice", "tools", "top_logprobs",
        "top_p", "user", "stop", "frequency_penalty", "reasoning_effort",
    }
)
_FIREWORKS_PARAMS = frozenset(
    {
        "tools", "tool_choice", "max_completion_tokens", "max_tokens", "temperature", "top_p",
        "frequency_penalty", "presence_penalty", "n", "stop", "response_format", "user", "logprobs",
    }
)
_PERPLEXITY_PARAMS = frozenset(
    {
        "frequency_penalty", "max_tokens", "max_completion_tokens", "presence_penalty", "response_format",
        "temperature", "top_p", "reasoning_effort", "web_search_options",
    }
)

# OpenRouter app attribution headers (LiteLLM reads OR_SITE_URL / OR_APP_NAME with these defaults).
OR_SITE_URL = "https://litellm.ai"
OR_APP_NAME = "liteLLM"


def family_specs(env: Mapping[str, str] | None = None) -> list[OpenAISpec]:
    """The family table. ``env`` only feeds OpenRouter's attribution headers (defaults otherwise)."""
    env = env or {}
    openrouter_headers = {
        "HTTP-Referer": env.get("OR_SITE_URL") or OR_SITE_URL,
        "X-Title": env.get("OR_APP_NAME") or OR_APP_NAME,
    }
    return [
        OpenAISpec("openrouter", "https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY", "OR_API_KEY"),
                   ("OPENROUTER_API_BASE",), COMPAT_PARAMS | {"reasoning_effort", "web_search_options"},
                   extra_headers=openrouter_headers, keep_cache_control=True),
        OpenAISpec("groq", "https://api.groq.com/openai/v1", ("GROQ_API_KEY",), ("GROQ_API_BASE",),
                   COMPAT_PARAMS | {"reasoning_effort", "service_tier"}),
        OpenAISpec("mistral", "https://api.mistral.ai/v1", ("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY"),
                   ("MISTRAL_AZURE_API_BASE", "MISTRAL_API_BASE"), _MISTRAL_PARAMS),
        OpenAISpec("deepseek", "https://api.deepseek.com/beta", ("DEEPSEEK_API_KEY",), ("DEEPSEEK_API_BASE",),
                   COMPAT_PARAMS),
        OpenAISpec("xai", "https://api.x.ai/v1", ("XAI_API_KEY",), ("XAI_API_BASE",), _XAI_PARAMS),
        OpenAISpec("together_ai", "https://api.together.xyz/v1",
                   ("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"),
                   ("TOGETHER_AI_API_BASE",), COMPAT_PARAMS),
        OpenAISpec("fireworks_ai", "https://api.fireworks.ai/inference/v1",
                   ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
                   ("FIREWORKS_API_BASE",), _FIREWORKS_PARAMS),
        OpenAISpec("perplexity", "https://api.perplexity.ai", ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"),
                   ("PERPLEXITY_API_BASE",), _PERPLEXITY_PARAMS),
        OpenAISpec("hosted_vllm", "", ("HOSTED_VLLM_API_KEY",), ("HOSTED_VLLM_API_BASE",),
                   COMPAT_PARAMS | {"reasoning_effort"}, key_required=False),
        OpenAISpec("lm_studio", "http://localhost:1234/v1", ("LM_STUDIO_API_KEY",), ("LM_STUDIO_API_BASE",),
                   COMPAT_PARAMS, key_required=False),
    ]


# ---- per-host behaviour --------------------------------------------------------------------------


class OpenRouterAdapter(OpenAIAdapter):
    """Usage accounting always on; ``reasoning_effort`` as OpenRouter's ``reasoning.effort``; message-level
    cache_control moved to the last content block; ``reasoning_details`` kept on stream deltas."""

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        body.setdefault("usage", {"include": True})
        if "reasoning_effort" in body:
            body["reasoning"] = {"effort": body.pop("reasoning_effort")}
        for msg, out in zip(req.messages, body["messages"], strict=True):
            if msg.HasField("cache_control"):
                _move_cache_control(out, cache_control(msg.cache_control))

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        for raw, out in zip(data.get("choices") or (), chunk.choices, strict=False):
            details = (raw.get("delta") or {}).get("reasoning_details")
            if details:
                out.delta.provider_specific_fields.update({"reasoning_details": details})
        return chunk


def _move_cache_control(message: dict[str, Any], marker: dict[str, Any]) -> None:
    content = message.get("content")
    if isinstance(content, list) and content:
        content[-1]["cache_control"] = marker
    elif isinstance(content, str):
        message["content"] = [{"type": "text", "text": content, "cache_control": marker}]


class GroqAdapter(OpenAIAdapter):
    """Groq rejects null keys on assistant messages (``content: null`` beside tool calls)."""

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        for msg in body["messages"]:
            if msg.get("role") == "assistant":
                for key in [k for k, v in msg.items() if v is None]:
                    del msg[key]


class MistralAdapter(OpenAIAdapter):
    """``tool_choice`` required/named -> "any", ``seed`` -> ``random_seed``, ``max_completion_tokens`` ->
    ``max_tokens``; messages lose ``name`` and nulls, text-only part lists become strings, empty assistant
    turns are dropped; the base always ends in ``/v1``."""

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        choice = body.get("tool_choice")
        if choice is not None and choice not in ("auto", "none"):
            body["tool_choice"] = "any"
        if "seed" in body:
            body["random_seed"] = body.pop("seed")
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        body["messages"] = [m for m in map(_mistral_message, body["messages"]) if m is not None]

    def url(self, target: Target) -> str:
        if urlsplit(target.api_base).path.rstrip("/").endswith("/v1"):
            return join_url(target.api_base, "chat", "completions")
        return join_url(target.api_base, "v1", "chat", "completions")


def _mistral_message(msg: dict[str, Any]) -> dict[str, Any] | None:
    msg.pop("name", None)
    content = msg.get("content")
    if isinstance(content, list) and all(p.get("type") == "text" for p in content):
        msg["content"] = "".join(p.get("text", "") for p in content)
    out = {k: v for k, v in msg.items() if v is not None}
    if out.get("role") == "assistant" and not out.get("content") and not out.get("tool_calls"):
        return None
    return out


class DeepSeekAdapter(OpenAIAdapter):
    """``reasoning_content`` already passes through (and is never sent back: the shared codec drops it);
    DeepSeek's ``prompt_cache_hit_tokens`` fill ``cached_tokens`` when the details object is missing."""

    def adjust_response(self, resp: pb.CompleteResponse, data: dict[str, Any]) -> None:
        _deepseek_cache(resp, data)

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        _deepseek_cache(chunk, data)
        return chunk


def _deepseek_cache(out: pb.CompleteResponse | pb.StreamCompleteResponse, data: dict[str, Any]) -> None:
    usage = data.get("usage") or {}
    hit = usage.get("prompt_cache_hit_tokens")
    if hit is None or not out.HasField("usage") or out.usage.prompt_tokens_details.HasField("cached_tokens"):
        return
    out.usage.prompt_tokens_details.cached_tokens = int(hit)
    out.usage.cache_read_input_tokens = int(hit)


_XAI_NO_STOP = ("grok-3-mini", "grok-4", "grok-code-fast")
_XAI_NO_FREQUENCY_PENALTY = ("grok-4", "grok-code-fast")


class XAIAdapter(OpenAIAdapter):
    """``stop`` (grok-3-mini, grok-4*, grok-code-fast*) and ``frequency_penalty`` (grok-4*,
    grok-code-fast*) are dropped silently; tool ``strict`` and message ``name`` stripped;
    ``max_completion_tokens`` -> ``max_tokens``; reasoning tokens reported outside completion_tokens are
    folded in; ``finish_reason:""`` beside tool calls means ``tool_calls``."""

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        if any(m in target.model for m in _XAI_NO_STOP):
            body.pop("stop", None)
        if any(m in target.model for m in _XAI_NO_FREQUENCY_PENALTY):
            body.pop("frequency_penalty", None)
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
        for tool in body.get("tools") or ():
            tool["function"].pop("strict", None)
        for msg in body["messages"]:
            msg.pop("name", None)

    def adjust_response(self, resp: pb.CompleteResponse, data: dict[str, Any]) -> None:
        _fold_reasoning(resp)
        for choice in resp.choices:
            if not choice.finish_reason and choice.message.tool_calls:
                choice.finish_reason = "tool_calls"

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        _fold_reasoning(chunk)
        return chunk


def _fold_reasoning(out: pb.CompleteResponse | pb.StreamCompleteResponse) -> None:
    """xAI counts reasoning outside completion_tokens but inside total_tokens; OpenAI counts it inside."""
    if not out.HasField("usage"):
        return
    usage = out.usage
    reasoning = usage.completion_tokens_details.reasoning_tokens
    if reasoning and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + reasoning:
        usage.completion_tokens += reasoning


class FireworksAdapter(OpenAIAdapter):
    """Models are prefixed ``accounts/fireworks/models/``; ``tool_choice:"required"`` -> ``"any"``;
    ``json_schema`` -> ``{type:"json_object", schema}``; ``max_completion_tokens`` -> ``max_tokens``."""

    def adjust_body(self, body: dict[str, Any], req: pb.CompleteRequest, target: Target) -> None:
        if not body["model"].startswith("accounts/"):
            body["model"] = f"accounts/fireworks/models/{body['model']}"
        if body.get("tool_choice") == "required":
            body["tool_choice"] = "any"
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            body["response_format"] = {"type": "json_object", "schema": fmt["json_schema"].get("schema", {})}
        if "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")


class PerplexityAdapter(OpenAIAdapter):
    """Top-level ``citations`` / ``search_results`` ride on ``provider_specific_fields`` (the shared codec
    does it for unary replies; streams repeat them on every chunk, so they are attached once)."""

    def adjust_chunk(
        self, chunk: pb.StreamCompleteResponse, data: dict[str, Any], state: StreamState[OpenAIStream]
    ) -> pb.StreamCompleteResponse | None:
        sent = state.own.extras_sent
        extras = {k: data[k] for k in ("citations", "search_results") if data.get(k) and k not in sent}
        if extras and chunk.choices:
            chunk.choices[0].delta.provider_specific_fields.update(extras)
            sent.update(extras)
        return chunk


FAMILY: dict[str, Callable[[OpenAISpec], OpenAIAdapter]] = {
    "openrouter": OpenRouterAdapter,
    "groq": GroqAdapter,
    "mistral": MistralAdapter,
    "deepseek": DeepSeekAdapter,
    "xai": XAIAdapter,
    "fireworks_ai": FireworksAdapter,
    "perplexity": PerplexityAdapter,
}


def adapters(env: Mapping[str, str] | None = None) -> list[ProviderAdapter[Any]]:
    """One adapter per row of the family table."""
    return [FAMILY.get(spec.name, OpenAIAdapter)(spec) for spec in family_specs(env)]
