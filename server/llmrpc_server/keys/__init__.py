"""Virtual keys (LiteLLM's ``keys``): per-caller keys with model allowlists, rate limits and budgets.

``spec`` parses the config's ``keys:`` section, ``store`` keeps counters and spend (SQLite, or Redis
with ``--redis-url``, behind one :class:`~.store.LimitStore` interface), ``admission`` holds calls to
their key's rules, ``guard`` finds the key of each call, and ``command`` is
``llmrpc-server keys new|spend``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from .admission import CURRENT_KEY, KeyedBackend, current_key_alias, current_model_filter
from .guard import KeyGuard
from .spec import KeyRing, VirtualKey, hash_key, parse_duration, parse_keys
from .store import Decision, LimitStore, SqliteLimitStore

__all__ = [
    "CURRENT_KEY",
    "Decision",
    "KeyGuard",
    "KeyRing",
    "KeyedBackend",
    "LimitStore",
    "SqliteLimitStore",
    "VirtualKey",
    "configured_keys",
    "current_key_alias",
    "current_model_filter",
    "hash_key",
    "parse_duration",
    "parse_keys",
    "state_path",
]


def configured_keys(settings: Settings) -> KeyRing:
    """The proxy config's virtual keys (empty without a proxy config or a ``keys:`` section)."""
    return parse_keys(settings.proxy.keys if settings.proxy is not None else ())


def state_path(settings: Settings) -> str:
    """The SQLite state file: ``--state-path``, else ``state.sqlite`` beside the response cache."""
    if settings.state_path:
        return settings.state_path
    return str(Path(settings.cache_path).with_name("state.sqlite"))
