"""``llmrpc.integrations``: LiteLLM's import path for ``CustomLogger``."""

from .custom_logger import CustomLogger

__all__ = ["CustomLogger"]
