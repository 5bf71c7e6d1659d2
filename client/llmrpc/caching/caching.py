"""``Cache``: LiteLLM's ``litellm.caching.caching.Cache``, answered by the gateway's cache.

``llmrpc.cache = Cache(type="disk")`` keeps LiteLLM code working unchanged, but nothing is stored in
this process: every type (``local``, ``redis``, ``disk``, ``s3``...) maps onto the gateway's one
response cache (a SQLite file beside the gateway, shared by every caller). What the object decides is
LiteLLM's rule for each call: while ``llmrpc.cache`` is set, a call that does not set ``caching``
uses the cache (``caching=False`` opts out; ``cache={"no-cache": True}`` skips the read), and
``ttl`` and ``namespace`` become the call's cache controls (``cache={"ttl": ..., "namespace": ...}``,
which a call's own ``cache`` dict overrides). Storage arguments (``host``, ``port``, ``password``,
``disk_cache_dir``, bucket names...) are accepted and ignored: the gateway's operator chooses where
its cache lives.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CACHE_TYPES", "Cache", "apply_cache", "disable_cache", "enable_cache", "update_cache"]

# LiteLLMCacheType's values.
CACHE_TYPES = frozenset(
    {"local", "redis", "redis-semantic", "valkey-semantic", "s3", "disk", "qdrant-semantic", "azure-blob", "gcs"}
)
_MODES = frozenset({"default_on", "default_off"})
_DEFAULT_CALL_TYPES = (
    "completion", "acompletion", "embedding", "aembedding", "atranscription", "transcription",
    "atext_completion", "text_completion", "arerank", "rerank", "responses", "aresponses",
)  # fmt: skip


def _value(choice: Any) -> str:
    # LiteLLM passes enums (LiteLLMCacheType.DISK, CacheMode.default_on) or their string values.
    return str(getattr(choice, "value", choice))


class Cache:
    """LiteLLM's ``Cache`` constructor; the gateway does the caching (see the module docstring).

    :param type: LiteLLM's cache type; any of them means "the gateway's cache".
    :param mode: ``default_on`` (every call uses the cache unless it opts out) or ``default_off``
        (only calls with ``caching=True`` or ``cache={"use-cache": True}``).
    :param namespace: sent as each call's cache ``namespace`` (part of the gateway's cache key).
    :param ttl: sent as each call's cache ``ttl`` in seconds (else the gateway's ``--cache-ttl``).
    :param supported_call_types: the call types that use the cache (``completion``, ``acompletion``...).
    :param max_messages: calls with more messages than this are neither looked up nor stored (None: no limit).
    """

    def __init__(
        self,
        type: Any = "local",
        mode: Any = "default_on",
        host: str | None = None,
        port: str | int | None = None,
        password: str | None = None,
        namespace: str | None = None,
        ttl: float | None = None,
        default_in_memory_ttl: float | None = None,
        default_in_redis_ttl: float | None = None,
        similarity_threshold: float | None = None,
        supported_call_types: Iterable[str] | None = _DEFAULT_CALL_TYPES,
        disk_cache_dir: str | None = None,
        max_messages: int | None = 4,
        **kwargs: Any,
    ) -> None:
        cache_type = _value(type if type is not None else "local")
        if cache_type not in CACHE_TYPES:
            raise ValueError(f"unknown cache type {cache_type!r}; LiteLLM's types are {sorted(CACHE_TYPES)}")
        cache_mode = _value(mode if mode is not None else "default_on")
        if cache_mode not in _MODES:
            raise ValueError(f"unknown cache mode {cache_mode!r}; expected one of {sorted(_MODES)}")
        self.type = cache_type
        self.mode = cache_mode
        self.namespace = namespace
        self.ttl = ttl
        # LiteLLM lets the backend-specific default TTL win for its own backend.
        if cache_type == "local" and default_in_memory_ttl is not None:
            self.ttl = default_in_memory_ttl
        if cache_type in ("redis", "redis-semantic", "valkey-semantic") and default_in_redis_ttl is not None:
            self.ttl = default_in_redis_ttl
        self.supported_call_types = [_value(c) for c in supported_call_types or ()]
        self.max_messages = max_messages
        # Where LiteLLM would store entries; kept for introspection only (the gateway stores them).
        self.host, self.port, self.disk_cache_dir = host, port, disk_cache_dir
        self.similarity_threshold = similarity_threshold
        self.backend_kwargs = {k: v for k, v in kwargs.items() if "secret" not in k and "password" not in k}

    def __repr__(self) -> str:
        return f"Cache(type={self.type!r}, mode={self.mode!r}, namespace={self.namespace!r}, ttl={self.ttl!r})"

    def should_use_cache(self, **kwargs: Any) -> bool:
        """LiteLLM's rule: on in ``default_on`` mode, else only with ``cache={"use-cache": True}``;
        never past ``max_messages`` messages."""
        messages = kwargs.get("messages")
        if self.max_messages is not None and isinstance(messages, list) and len(messages) > self.max_messages:
            return False
        if self.mode == "default_on":
            return True
        controls = kwargs.get("cache")
        return isinstance(controls, Mapping) and controls.get("use-cache") is True

    def controls(self) -> dict[str, Any]:
        """The per-call cache controls this object stands for (``ttl``, ``namespace``)."""
        out: dict[str, Any] = {}
        if self.ttl is not None:
            out["ttl"] = self.ttl
        if self.namespace is not None:
            out["namespace"] = self.namespace
        return out


def apply_cache(params: dict[str, Any], cache: Any, call_type: str) -> None:
    """Turn ``llmrpc.cache`` into this call's ``caching`` / ``cache`` arguments, in place."""
    if not isinstance(cache, Cache) or params.get("caching") is False:
        return
    if call_type not in cache.supported_call_types:
        return
    explicit = params.get("caching") is True
    if not explicit and not cache.should_use_cache(**params):
        return
    params["caching"] = True
    own = params.get("cache")
    params["cache"] = {**cache.controls(), **(dict(own) if isinstance(own, Mapping) else {})}


def _set_cache(cache: Cache | None) -> None:
    # setattr: the package module is a SettingsModule, which sees the assignment like a user's.
    setattr(sys.modules["llmrpc"], "cache", cache)  # noqa: B010


def enable_cache(type: Any = "local", host: str | None = None, port: str | int | None = None,
                 password: str | None = None, supported_call_types: Iterable[str] | None = _DEFAULT_CALL_TYPES,
                 **kwargs: Any) -> None:
    """LiteLLM's ``enable_cache()``: set ``llmrpc.cache`` to a new :class:`Cache` unless one is set."""
    if getattr(sys.modules["llmrpc"], "cache", None) is None:
        update_cache(type, host, port, password, supported_call_types, **kwargs)


def update_cache(type: Any = "local", host: str | None = None, port: str | int | None = None,
                 password: str | None = None, supported_call_types: Iterable[str] | None = _DEFAULT_CALL_TYPES,
                 **kwargs: Any) -> None:
    """LiteLLM's ``update_cache()``: replace ``llmrpc.cache`` with a new :class:`Cache`."""
    _set_cache(Cache(type=type, host=host, port=port, password=password,
                     supported_call_types=supported_call_types, **kwargs))


def disable_cache() -> None:
    """LiteLLM's ``disable_cache()``: ``llmrpc.cache = None`` (the gateway's own default applies again)."""
    _set_cache(None)
