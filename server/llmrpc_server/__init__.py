"""llmrpc gateway server: one gRPC completion() contract in front of every LLM provider."""

__all__: list[str] = []
