"""Bare grpc.aio baselines: the same service answering canned messages, no gateway work at all.

``echo_server.py PORT`` answers at once. ``echo_server.py PORT URL`` is the bare proxy: each unary call
first POSTs a fixed body to ``URL`` through the gateway's executor (pyreqwest) and reads the reply
(parsing nothing), the floor for any Python gRPC server that makes one HTTP call per request.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import grpc
import uvloop
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

CHUNK = pb.StreamCompleteResponse(
    id="chatcmpl-bench", object="chat.completion.chunk", created=1700000000, model="bench-model",
    choices=[chat_pb2.ChunkChoice(index=0, delta=chat_pb2.Delta(content="tok1 "))],
)
ANSWER = pb.CompleteResponse(
    id="chatcmpl-bench", object="chat.completion", created=1700000000, model="bench-model",
    choices=[chat_pb2.Choice(index=0, finish_reason="stop", message=chat_pb2.Message(
        role="assistant", content="The quick brown fox jumps over the lazy dog."))],
)


class Echo(pb_grpc.CompletionServiceServicer):
    async def Complete(self, request: pb.CompleteRequest, context: object) -> pb.CompleteResponse:
        return ANSWER

    async def StreamComplete(
        self, request: pb.StreamCompleteRequest, context: object
    ) -> AsyncIterator[pb.StreamCompleteResponse]:
        for _ in range(50):
            yield CHUNK


class Proxy(Echo):
    def __init__(self, url: str) -> None:
        from llmrpc_server.executor import Executor
        from llmrpc_server.providers.base import HttpCall

        self._executor = Executor()  # the gateway's own HTTP path (pyreqwest); started in the serving loop
        self._call = HttpCall(url, {"content-type": "application/json"},
                              {"model": "bench-model", "messages": [{"role": "user", "content": "Say something."}]})

    async def Complete(self, request: pb.CompleteRequest, context: object) -> pb.CompleteResponse:
        await self._executor.send(self._call, timeout=30)
        return ANSWER


async def serve(port: int, upstream: str | None) -> None:
    server = grpc.aio.server()
    servicer = Proxy(upstream) if upstream else Echo()
    if isinstance(servicer, Proxy):
        await servicer._executor.start()
    pb_grpc.add_CompletionServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
