"""The gateway's own work without gRPC: the backend stack (observability -> cache -> pipeline ->
executor -> adapter) driven in-process against the local upstream, CPU per call from this process.

Subtracting this from the server-process figures of ``make bench`` separates the gateway's cost
from grpc.aio's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

from llmrpc_server.app import start_gateway
from llmrpc_server.config import Settings
from llmrpc_server.retry import Deadline
from llmrpc_server.validation import validate_request

from bench.common import HERE, free_port, request, start, wait_port


async def _measure(upstream: str, calls: int, streams: int) -> tuple[float, float]:
    settings = Settings(host="127.0.0.1", port=0, cache_path=":memory:",
                        env={"OPENAI_API_KEY": "sk-bench", "OPENAI_API_BASE": f"{upstream}/v1"})
    gateway = await start_gateway(settings)
    backend, req = gateway.observed, request(0)
    assert backend is not None

    def deadline() -> Deadline:
        return Deadline.smallest(caller_remaining=None, timeout=None, server_default=600)

    async def unary() -> None:
        validate_request(req)
        await backend.complete(req, deadline())

    async def stream() -> None:
        validate_request(req)
        async for _ in backend.stream(req, deadline(), include_usage=False):
            pass

    try:
        return await _cpu_per_call(unary, calls), await _cpu_per_call(stream, streams) / 50
    finally:
        await gateway.stop(0)


async def _cpu_per_call(call: Callable[[], Awaitable[None]], n: int, concurrency: int = 16) -> float:
    for _ in range(50):
        await call()
    started = time.process_time()
    for _ in range(n // concurrency):
        await asyncio.gather(*(call() for _ in range(concurrency)))
    return (time.process_time() - started) / (n // concurrency * concurrency) * 1000


def main() -> None:
    import uvloop

    port = free_port()
    upstream = start([sys.executable, str(HERE / "upstream.py"), str(port)], dict(os.environ))
    try:
        wait_port(port)
        unary, chunk = uvloop.run(_measure(f"http://127.0.0.1:{port}", 3000, 800))
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"gateway work without gRPC: {unary:.3f} ms CPU per unary call, {chunk:.4f} ms per streamed chunk")


if __name__ == "__main__":
    main()
