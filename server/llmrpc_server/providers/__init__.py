"""Provider adapters, one module each; OpenAI-shaped hosts share one codec and a table."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from .base import ErrorKind, HttpCall, ProviderAdapter, ProviderError, StreamEvent, StreamState, Target
from .mock import MockAdapter
from .openai import OpenAIAdapter, OpenAISpec

__all__ = [
    "ErrorKind",
    "HttpCall",
    "ProviderAdapter",
    "ProviderError",
    "StreamEvent",
    "StreamState",
    "Target",
    "default_adapters",
]

OPENAI = OpenAISpec(
    name="openai",
    default_base="https://api.openai.com/v1",
    env_keys=("OPENAI_API_KEY",),
    env_bases=("OPENAI_API_BASE", "OPENAI_BASE_URL"),
)


def default_adapters(env: Mapping[str, str] | None = None) -> dict[str, ProviderAdapter]:
    """Every built-in provider by its LiteLLM prefix; ``env`` is the server's environment snapshot
    (a few hosts take attribution headers from it)."""
    adapters: list[ProviderAdapter] = [OpenAIAdapter(OPENAI), MockAdapter()]
    for module in _ADAPTER_MODULES:
        adapters.extend(importlib.import_module(f"{__name__}.{module}").adapters(env))
    return {a.name: a for a in adapters}


# Modules that expose ``adapters() -> list[ProviderAdapter]``; add one name per provider module.
_ADAPTER_MODULES: tuple[str, ...] = ("compatible", "azure", "ollama", "anthropic", "gemini")
