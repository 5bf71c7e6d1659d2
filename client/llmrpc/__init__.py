"""llmrpc."""
