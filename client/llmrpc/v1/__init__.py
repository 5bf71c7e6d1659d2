"""Generated llmrpc.v1 protobuf and gRPC stubs (make proto)."""
