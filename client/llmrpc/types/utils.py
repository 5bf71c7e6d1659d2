"""LiteLLM's ``litellm.types.utils`` import path for the response types (the classes are ``llmrpc``'s)."""

from .._types import *  # noqa: F403  (every response type: _types.__all__)
from .._types import __all__ as __all__
