"""Provider adapters, one module each; OpenAI-shaped hosts share one codec and a table.

Registration is one list: every module named in :data:`_ADAPTER_MODULES` exposes
``adapters(env) -> list[ProviderAdapter]``, the mock included. Whatever else the gateway needs to know
about a provider (an in-process transport, a request field it answers, how it is priced) is declared on
the adapter (see :class:`~.base.ProviderAdapter`) and read from here, never special-cased by name.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .base import (
    ErrorKind,
    HttpCall,
    ProviderAdapter,
    ProviderError,
    StreamEvent,
    StreamState,
    Target,
    Transport,
)

__all__ = [
    "ErrorKind",
    "HttpCall",
    "ProviderAdapter",
    "ProviderError",
    "StreamEvent",
    "StreamState",
    "Target",
    "default_adapters",
    "priced_as_requested",
    "transports",
]

# Modules that expose ``adapters(env) -> list[ProviderAdapter]``; add one name per provider module.
_ADAPTER_MODULES: tuple[str, ...] = ("openai", "compatible", "azure", "ollama", "anthropic", "gemini", "mock")


def default_adapters(env: Mapping[str, str] | None = None) -> dict[str, ProviderAdapter[Any]]:
    """Every built-in provider by its LiteLLM prefix; ``env`` is the server's environment snapshot
    (a few hosts take attribution headers from it)."""
    adapters: list[ProviderAdapter[Any]] = []
    for module in _ADAPTER_MODULES:
        adapters.extend(importlib.import_module(f"{__name__}.{module}").adapters(env))
    return {a.name: a for a in adapters}


def transports(adapters: Mapping[str, ProviderAdapter[Any]]) -> dict[str, Transport]:
    """The in-process transports the adapters bring, by the URL scheme of their ``default_base``:
    what the executor mounts instead of the network."""
    return {urlsplit(a.default_base).scheme: a.transport for a in adapters.values() if a.transport is not None}


@functools.cache
def priced_as_requested() -> frozenset[str]:
    """Providers whose calls cost what the provider of the requested model charges (adapter data;
    names do not depend on the environment)."""
    return frozenset(name for name, a in default_adapters().items() if a.priced_as_requested)
