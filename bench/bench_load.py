"""Load without loss: 1,000 concurrent streams against a slow upstream (20 chunks, 50 ms apart)
through one gateway process. Reports the wall time, the gateway's peak RSS and open descriptors
(from /proc), and checks that every stream got every chunk, in order, with no errors.

``python -m bench.bench_load [--streams N]``; ``make bench`` runs it after the latency tables.
``tests/test_load.py`` drives the same upstream and client against an in-process gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
from aiohttp import web
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

__all__ = ["LoadResult", "StreamsOutcome", "run_load", "run_streams", "slow_upstream"]

STREAMS, CHUNKS, INTERVAL = 1000, 20, 0.05
ROOT = Path(__file__).resolve().parent.parent


# ---- the slow upstream (its own process) -----------------------------------------------------------


def _event(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk(tag: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    return _event({"id": f"chatcmpl-{tag}", "object": "chat.completion.chunk", "created": 1700000000,
                   "model": "slow", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def upstream_app(chunks: int, interval: float) -> web.Application:
    """OpenAI-compatible: streams ``chunks`` pieces ``"<user text>:<i>|"``, ``interval`` seconds apart."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tag = str(body["messages"][-1]["content"])
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk(tag, {"role": "assistant", "content": ""}))
        for i in range(chunks):
            await asyncio.sleep(interval)
            await resp.write(_chunk(tag, {"content": f"{tag}:{i}|"}))
        await resp.write(_chunk(tag, {}, "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def serve_upstream(port: int, chunks: int, interval: float) -> None:
    web.run_app(upstream_app(chunks, interval), host="127.0.0.1", port=port, backlog=4096, print=None,
                access_log=None)


@contextmanager
def slow_upstream(chunks: int = CHUNKS, interval: float = INTERVAL) -> Iterator[str]:
    """Run the slow upstream in a subprocess; yields its base URL (``.../v1``)."""
    from bench.common import free_port, wait_port

    port = free_port()
    cmd = [sys.executable, "-m", "bench.bench_load", "--serve-upstream", str(port), "--chunks", str(chunks),
           "--interval", str(interval)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


# ---- the callers (one event loop, one channel) -----------------------------------------------------


@dataclass
class StreamsOutcome:
    """What the callers saw."""

    streams: int
    seconds: float
    complete: int = 0  # streams with every chunk, in order, and an OK status
    errors: Counter[str] = field(default_factory=Counter)


async def _one_stream(stub: pb_grpc.CompletionServiceStub, n: int, chunks: int) -> str | None:
    """None when stream ``n`` got exactly its chunks in order; else what went wrong."""
    tag = f"s{n}"
    req = pb.StreamCompleteRequest(request=pb.CompleteRequest(
        model="openai/slow", messages=[chat_pb2.Message(role="user", content=tag)]))
    got: list[str] = []
    try:
        async for chunk in stub.StreamComplete(req, timeout=120):
            got.extend(c.delta.content for c in chunk.choices if c.delta.content)
    except grpc.aio.AioRpcError as err:
        return f"{err.code().name}: {err.details()}"
    expected = [f"{tag}:{i}|" for i in range(chunks)]
    return None if got == expected else f"wrong chunks ({len(got)} of {chunks})"


async def run_streams(address: str, streams: int = STREAMS, chunks: int = CHUNKS) -> StreamsOutcome:
    """``streams`` concurrent StreamComplete calls over one grpc.aio channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        await channel.channel_ready()
        started = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(stub, n, chunks) for n in range(streams)))
        outcome = StreamsOutcome(streams, time.perf_counter() - started)
    for problem in results:
        if problem is None:
            outcome.complete += 1
        else:
            outcome.errors[problem] += 1
    return outcome


# ---- one gateway process under load -------------------------------------------------------------------


@dataclass
class LoadResult:
    outcome: StreamsOutcome
    rss_mb_idle: float
    rss_mb_peak: float
    fds_idle: int
    fds_peak: int
    fds_after: int
    cpu_seconds: float  # the gateway's CPU time during the run

    def report(self) -> str:
        o = self.outcome
        lines = [
            f"### {o.streams} concurrent streams x {CHUNKS} chunks, {INTERVAL * 1000:.0f} ms apart (one gateway)",
            "",
            "| wall s | complete | errors | gateway CPU s | RSS MB idle / peak | fds idle / peak / after |",
            "|--------|----------|--------|---------------|--------------------|-------------------------|",
            f"| {o.seconds:6.2f} | {o.complete:8d} | {sum(o.errors.values()):6d} | {self.cpu_seconds:13.2f} | "
            f"{self.rss_mb_idle:8.1f} / {self.rss_mb_peak:<7.1f} | "
            f"{self.fds_idle:8d} / {self.fds_peak:5d} / {self.fds_after:<5d} |",
        ]
        lines += [f"- error: {count} x {problem}" for problem, count in o.errors.most_common(5)]
        return "\n".join(lines)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _sample(pid: int, peaks: dict[str, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks["rss"] = max(peaks["rss"], rss_mb(pid))
        peaks["fds"] = max(peaks["fds"], open_fds(pid))
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            pass


async def _drive(address: str, pid: int, streams: int) -> tuple[StreamsOutcome, dict[str, float]]:
    peaks = {"rss": 0.0, "fds": 0.0}
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(pid, peaks, stop))
    try:
        outcome = await run_streams(address, streams)
    finally:
        stop.set()
        await sampler
    return outcome, peaks


def run_load(streams: int = STREAMS) -> LoadResult:
    """Slow upstream + one real gateway process (``python -m llmrpc_server``) + the callers."""
    from bench.common import cpu_seconds, free_port, wait_port

    with slow_upstream() as base:
        port = free_port()
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "OPENAI_API_BASE": base, "LLMRPC_NUM_RETRIES": "0",
               "LLMRPC_CACHE_PATH": "/tmp/llmrpc-bench-load.sqlite", "LLMRPC_MAX_CONNECTIONS": str(streams + 100)}
        cmd = [sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port)]
        gateway = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            asyncio.run(run_streams(f"127.0.0.1:{port}", 10))  # warm up
            idle_rss, idle_fds = rss_mb(gateway.pid), open_fds(gateway.pid)
            cpu = cpu_seconds([gateway.pid])
            outcome, peaks = asyncio.run(_drive(f"127.0.0.1:{port}", gateway.pid, streams))
            cpu = cpu_seconds([gateway.pid]) - cpu
            time.sleep(1.0)
            after = open_fds(gateway.pid)
        finally:
            gateway.terminate()
            gateway.wait(30)
    return LoadResult(outcome, idle_rss, peaks["rss"], idle_fds, int(peaks["fds"]), after, cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=CHUNKS, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=INTERVAL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.chunks, args.interval)
        return
    result = run_load(args.streams)
    print()
    print(result.report())


if __name__ == "__main__":
    main()
