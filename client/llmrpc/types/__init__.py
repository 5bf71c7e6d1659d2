"""``llmrpc.types``: LiteLLM's ``litellm.types`` import path (``from llmrpc.types.utils import ModelResponse``)."""

__all__: list[str] = []
