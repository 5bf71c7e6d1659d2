"""``llmrpc.caching``: LiteLLM's ``litellm.caching`` import path (``from llmrpc.caching.caching import Cache``)."""

from .caching import Cache, disable_cache, enable_cache, update_cache

__all__ = ["Cache", "disable_cache", "enable_cache", "update_cache"]
