"""Which environment variable holds each provider's key, for two client-side jobs.

Provider keys live on the gateway: it reads them from *its* environment. A caller that still has its
own key (``OPENAI_API_KEY`` in this process, as LiteLLM code expects) can opt in to sending it as the
call's ``api_key``: ``llmrpc.send_local_provider_keys = True`` or ``LLMRPC_SEND_LOCAL_KEYS=1``. Off by
default, because a key in the request travels to the gateway (use TLS when it is remote). The same
table lets the "no API key" error name the variable to set on the gateway.

The table mirrors the gateway's adapters (``env_keys``, first set wins); a test keeps them in step. The
client does not import the server package.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["PROVIDER_ENV_KEYS", "apply_local_key", "local_keys_enabled", "missing_key_hint", "provider_of"]

PROVIDER_ENV_KEYS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "openrouter": ("OPENROUTER_API_KEY", "OR_API_KEY"),
    "groq": ("GROQ_API_KEY",),
    "mistral": ("MISTRAL_AZURE_API_KEY", "MISTRAL_API_KEY"),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "together_ai": ("TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"),
    "fireworks_ai": ("FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"),
    "perplexity": ("PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"),
    "hosted_vllm": ("HOSTED_VLLM_API_KEY",),
    "lm_studio": ("LM_STUDIO_API_KEY",),
    "azure": ("AZURE_OPENAI_API_KEY", "AZURE_API_KEY"),
    "ollama_chat": ("OLLAMA_API_KEY",),
    "ollama": ("OLLAMA_API_KEY",),
    "mock": (),
}

# Bare model names LiteLLM routes without a prefix (the gateway's router has the same rules).
_BARE = (
    (re.compile(r"^(gpt-|o[1-9]|chatgpt-|text-|davinci|babbage|ft:gpt)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^gemini-"), "gemini"),
)
_TRUE = frozenset({"1", "true", "yes", "on"})


def provider_of(model: str, custom_llm_provider: str | None = None) -> str | None:
    """The provider prefix of ``model`` (``openai/gpt-4o`` -> ``openai``), bare names included."""
    if custom_llm_provider:
        return custom_llm_provider
    prefix, sep, _ = model.partition("/")
    if sep and prefix in PROVIDER_ENV_KEYS:
        return prefix
    return next((provider for pattern, provider in _BARE if pattern.match(model)), None)


def local_keys_enabled(setting: Any) -> bool:
    """``llmrpc.send_local_provider_keys``, else ``$LLMRPC_SEND_LOCAL_KEYS``."""
    if setting is not None:
        return bool(setting)
    return os.environ.get("LLMRPC_SEND_LOCAL_KEYS", "").strip().lower() in _TRUE


def apply_local_key(params: dict[str, Any], env: Mapping[str, str]) -> None:
    """Set ``api_key`` from this process's environment when the call has none."""
    if params.get("api_key") is not None or not isinstance(params.get("model"), str):
        return
    provider = provider_of(params["model"], params.get("custom_llm_provider"))
    for name in PROVIDER_ENV_KEYS.get(provider or "", ()):
        if env.get(name):
            params["api_key"] = env[name]
            return


def missing_key_hint(provider: str | None, target: str) -> str:
    """What to do about PROVIDER_API_KEY_MISSING, naming the variable to set on the gateway."""
    names = " or ".join(PROVIDER_ENV_KEYS.get(provider or "", ())) or "the provider's key variable"
    return (
        f"provider keys live on the llmrpc gateway ({target}), not in this process: set {names} in the "
        "gateway's environment, pass api_key=..., or set llmrpc.send_local_provider_keys = True "
        "(LLMRPC_SEND_LOCAL_KEYS=1) to send this process's own key"
    )
