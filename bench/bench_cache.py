"""Response-cache benchmarks against a real server process.

Why these figures: a hit must be much cheaper than the upstream call it replaces, so the budget is
server CPU per hit (target <= 0.7 ms, read from ``/proc/<pid>/stat`` so client costs do not count)
and p50 hit latency at concurrency 1 (target <= 1 ms); coalescing must turn 100 identical concurrent
requests into exactly 1 upstream call. Most of a hit's cost is gRPC's own per-call overhead, so
compare with the echo benchmark's figures for a call that does nothing.

    python bench/bench_cache.py            # starts a fake upstream and a server, prints JSON
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from tests.upstreams import FakeUpstream

MODEL = "openai/gpt-4o-mini"
COALESCE_DELAY = 0.2  # seconds the fake upstream takes to answer in the coalescing run


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(text: str) -> pb.CompleteRequest:
    message = chat_pb2.Message(role="user", content=text)
    return pb.CompleteRequest(model=MODEL, messages=[message], caching=True)


def _latency_p50(address: str, reqs: list[pb.CompleteRequest]) -> float:
    """Median milliseconds per hit, one call at a time, through the sync stub (the thin client's)."""
    samples = []
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        for req in reqs:
            started = time.perf_counter()
            resp = stub.Complete(req)
            samples.append(time.perf_counter() - started)
            assert resp.metadata.cache_hit
    return statistics.median(samples) * 1000.0


async def _run_all(stub: pb_grpc.CompletionServiceStub, reqs: list[pb.CompleteRequest], concurrency: int,
                   server_pid: int, hits: bool = True) -> tuple[float, float]:
    """Calls per second and server CPU milliseconds per call, ``concurrency`` at a time."""
    pending = list(reversed(reqs))

    async def worker() -> None:
        while pending:
            resp = await stub.Complete(pending.pop())
            assert resp.metadata.cache_hit is hits

    cpu, started = cpu_seconds(server_pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, cpu_seconds(server_pid) - cpu
    return len(reqs) / wall, cpu / len(reqs) * 1000.0


async def _coalescing(stub: pb_grpc.CompletionServiceStub, upstream: FakeUpstream, n: int) -> int:
    """Upstream requests made for ``n`` identical concurrent cacheable requests."""
    from tests.upstreams import StallReply, openai

    before = len(upstream.requests)
    default = upstream.default
    upstream.default = lambda rec: StallReply(COALESCE_DELAY, then=openai.default_handler(rec))
    try:
        req = request(f"coalesce {time.time_ns()}")
        answers = await asyncio.gather(*(stub.Complete(req) for _ in range(n)))
    finally:
        upstream.default = default
    assert len({a.id for a in answers}) == 1
    return len(upstream.requests) - before


async def _bench(address: str, server_pid: int, upstream: FakeUpstream, hits: int, concurrency: int,
                 coalesce: int, cold: int) -> dict[str, Any]:
    run = time.time_ns()
    hot = request(f"hot {run}")
    cold_reqs = [request(f"cold {run} {n}") for n in range(cold)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        await stub.Complete(hot)  # the miss that stores the entry
        await _run_all(stub, cold_reqs, concurrency, server_pid, hits=False)  # store the cold entries
        await asyncio.to_thread(_latency_p50, address, [hot] * 200)  # warm-up
        p50 = await asyncio.to_thread(_latency_p50, address, [hot] * 2000)
        p50_file = await asyncio.to_thread(_latency_p50, address, cold_reqs[: cold // 2])
        rate, cpu_ms = await _run_all(stub, [hot] * hits, concurrency, server_pid)
        file_rate, file_cpu_ms = await _run_all(stub, cold_reqs[cold // 2:], concurrency, server_pid)
        upstream_calls = await _coalescing(stub, upstream, coalesce)
    return {
        "cache_hits_per_s": round(rate),
        "cache_server_cpu_ms_per_hit": round(cpu_ms, 3),
        "cache_hit_p50_ms_concurrency_1": round(p50, 3),
        f"cache_coalescing_upstream_calls_for_{coalesce}": upstream_calls,
        "cache_file_hits_per_s": round(file_rate),
        "cache_server_cpu_ms_per_file_hit": round(file_cpu_ms, 3),
        "cache_file_hit_p50_ms_concurrency_1": round(p50_file, 3),
        "targets": {"cpu_ms_per_hit": 0.7, "p50_ms": 1.0, "upstream_calls": 1},
    }


def run_cache_bench(address: str, server_pid: int, upstream: FakeUpstream, *, hits: int = 5000,
                    concurrency: int = 32, coalesce: int = 100, cold: int = 2000) -> dict[str, Any]:
    """Run every cache benchmark against the server at ``address`` (process ``server_pid``), whose
    OpenAI upstream is ``upstream``; returns the figures as a flat dict.

    "Hits" repeat one hot request, served from the in-process memo after its first read; "file hits"
    read ``cold`` distinct entries once each, so every one is a SQLite read on the cache thread."""
    return asyncio.run(_bench(address, server_pid, upstream, hits, concurrency, coalesce, cold))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fake upstreams live in tests/
    from tests.support import free_port, wait_serving
    from tests.upstreams import FakeUpstream, openai

    with FakeUpstream(default=openai.default_handler) as upstream, tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(OPENAI_API_KEY="sk-bench", OPENAI_API_BASE=upstream.url, LLMRPC_LOG_LEVEL="WARNING")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port",
                                 str(port), "--cache-path", str(Path(tmp) / "cache.sqlite")], env=env)
        try:
            wait_serving(f"127.0.0.1:{port}")
            print(json.dumps(run_cache_bench(f"127.0.0.1:{port}", proc.pid, upstream), indent=2))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
