"""``llmrpc.caching``: LiteLLM's ``litellm.caching`` import path (``from llmrpc.caching.caching import Cache``)."""

from .caching import Cache

__all__ = ["Cache"]
