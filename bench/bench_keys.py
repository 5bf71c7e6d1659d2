"""Virtual-key admission cost: server CPU per call with a limited key vs. the same calls without keys.

Why this figure: the key layer's own share of issue 13's budget (at most 0.1 ms of server CPU per call
for a 3-deployment router plus a limited key, measured by ``bench_router``); a lone server process
decides a key's admissions in memory, writing counts to the SQLite state file in batches.
Both servers are real processes answering ``mock/echo`` (no upstream I/O), so the difference is the
key layer's; CPU is read from ``/proc/<pid>/stat`` so the load generator's costs do not count.

    python -m bench.bench_keys [--calls 3000]     # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from bench.common import free_port, process_cpu_seconds

KEY = "sk-bench-0123456789abcdef"
CONCURRENCY = 8


async def _measure(address: str, pid: int, calls: int, metadata: list[tuple[str, str]]) -> float:
    """Server CPU milliseconds per call, ``CONCURRENCY`` calls at a time (after a warm-up)."""
    req = pb.CompleteRequest(model="mock/echo", messages=[chat_pb2.Message(role="user", content="hi")])
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        await channel.channel_ready()
        for _ in range(200):
            await stub.Complete(req, metadata=metadata)
        left = [calls]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await stub.Complete(req, metadata=metadata)

        cpu = process_cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return (process_cpu_seconds(pid) - cpu) / calls * 1000.0


def _serve(tmp: Path, config: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
            "--cache-path", str(tmp / "cache.sqlite"), "--log-level", "WARNING"]
    if config is not None:
        args += ["--config", str(config)]
    proc = subprocess.Popen(args, env={k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_")})
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(address) as channel:
                grpc.channel_ready_future(channel).result(timeout=1)
            return proc, address
        except grpc.FutureTimeoutError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


def run(calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config = tmp / "config.yaml"
        config.write_text(json.dumps({"keys": [{
            "key": KEY, "key_alias": "bench", "rpm_limit": 10_000_000, "tpm_limit": 10_000_000_000,
            "max_budget": 1_000_000, "budget_duration": "1d", "max_parallel_requests": 1000}]}))
        out: dict[str, float] = {}
        for label, cfg, meta in (("no_keys", None, []),
                                 ("limited_key", config, [("authorization", f"Bearer {KEY}")])):
            proc, address = _serve(tmp, cfg)
            try:
                out[f"{label}_cpu_ms_per_call"] = round(asyncio.run(_measure(address, proc.pid, calls, meta)), 4)
            finally:
                proc.terminate()
                proc.wait(30)
        out["key_overhead_cpu_ms_per_call"] = round(
            out["limited_key_cpu_ms_per_call"] - out["no_keys_cpu_ms_per_call"], 4)
        return out


def layer(calls: int) -> dict[str, float]:
    """In-process: CPU milliseconds the key layer (:class:`KeyedBackend` with a limited key, its store
    on a real file) adds to a call, around a backend that answers at once. Free of gRPC and of other
    processes' noise, unlike the server figures."""
    from llmrpc_server.config import Settings
    from llmrpc_server.keys import CURRENT_KEY, KeyedBackend, SqliteLimitStore, VirtualKey, hash_key
    from llmrpc_server.providers import default_adapters
    from llmrpc_server.resolve import Call, Resolver
    from llmrpc_server.retry import Deadline
    from llmrpc_server.router import Router

    class Answer:
        async def complete(self, call: Call, deadline: Deadline) -> pb.CompleteResponse:
            resp = pb.CompleteResponse(model="echo")
            resp.usage.total_tokens = 12
            resp.metadata.cost_usd = 1e-6
            return resp

        async def stream(self, call: Call, deadline: Deadline, *,
                         include_usage: bool) -> AsyncIterator[pb.StreamCompleteResponse]:
            """One usage chunk (the Backend protocol asks for both; this bench times unary calls)."""
            chunk = pb.StreamCompleteResponse(model="echo")
            chunk.usage.total_tokens = 12
            yield chunk

    key = VirtualKey(digest=hash_key(KEY), alias="bench", rpm_limit=10**9, tpm_limit=10**12, max_budget=1e9,
                     budget_duration=86400, max_parallel_requests=1000)
    settings = Settings()
    resolver = Resolver(Router(default_adapters(settings.env), settings.env), settings)
    req = pb.CompleteRequest(model="mock/echo")

    async def timed(backend: Any) -> float:
        deadline = Deadline(time.monotonic() + 600, "server")
        started = time.process_time()
        for _ in range(calls):
            await backend.complete(resolver.call(req), deadline)  # as the service does, per call
        return (time.process_time() - started) / calls * 1000.0

    async def both() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as name:
            store = SqliteLimitStore(str(Path(name) / "state.sqlite"))
            CURRENT_KEY.set(key)
            keyed = KeyedBackend(Answer(), store)
            await timed(keyed)  # warm-up: creates the file and the windows
            plain, limited = await timed(Answer()), await timed(keyed)
            store.close()
        return {"layer_cpu_ms_per_call": round(limited - plain, 4)}

    return asyncio.run(both())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    print(json.dumps({**layer(calls), **run(calls)}, indent=2))


if __name__ == "__main__":
    main()
