"""Gateway vs direct upstream call: calls/s, p50/p99 latency and server CPU per request.

Run with ``make bench``. Everything runs on this machine: a fast local upstream process, the
gateway process(es) and this load generator. Server CPU per request is read from /proc. The other
benchmarks (``bench_load``, ``inprocess``, ``bench_cache``, ``bench_router``) run after it; they and
this module share their helpers through ``bench.common`` and never import this module.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import aiohttp
import grpc
import orjson
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.executor import Executor
from llmrpc_server.providers.base import HttpCall

from bench.aiohttp_executor import Executor as AiohttpExecutor
from bench.common import HERE, children, cpu_seconds, free_port, request, start, wait_port


@dataclass
class Result:
    name: str
    concurrency: int
    calls: int
    seconds: float
    latencies: list[float]
    server_cpu: float | None = None
    chunks: int = 1

    def row(self) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        cpu = "" if self.server_cpu is None else f"{self.server_cpu / self.calls * 1000:9.3f}"
        per_chunk = "" if self.server_cpu is None or self.chunks == 1 else \
            f"{self.server_cpu / (self.calls * self.chunks) * 1000:9.4f}"
        return (f"| {self.name:<28} | {self.concurrency:>4} | {self.calls / self.seconds:9.0f} | {p50:8.2f} | "
                f"{p99:8.2f} | {cpu:>9} | {per_chunk:>9} |")


async def drive(name: str, call: Callable[[], Awaitable[None]], concurrency: int, total: int,
                pids: list[int] | None, chunks: int = 1) -> Result:
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    for _ in range(min(20, total)):  # warm up connections and caches
        await call()
    cpu0 = cpu_seconds(pids) if pids else None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pids) - cpu0 if pids and cpu0 is not None else None
    return Result(name, concurrency, total, elapsed, latencies, cpu, chunks)


def echo_command(port: int, upstream: str | None = None) -> list[str]:
    """A bare grpc.aio server answering canned protos: the floor any gRPC gateway pays. With
    ``upstream``, the bare proxy: one HTTP call to it per unary request, nothing parsed."""
    return [sys.executable, str(HERE / "echo_server.py"), str(port), *([upstream] if upstream else [])]


@dataclass(frozen=True)
class Baselines:
    """The processes every gateway figure is compared with."""

    upstream: str  # base URL of the fast upstream
    echo: str  # address of the bare grpc.aio echo
    echo_pid: int
    proxy: str  # address of the bare grpc.aio -> HTTP proxy
    proxy_pid: int





CallPath = tuple[Callable[[], Awaitable[None]], list[int]]  # a call, and the server processes it runs through


async def interleaved(calls: dict[str, CallPath],
                      rounds: int) -> dict[str, tuple[float, float | None]]:
    """p50 latency (ms) and server CPU (ms/call) of each path at concurrency 1, the paths taking turns
    call by call so that every one sees the same machine: on a shared 2-core VM the floor drifts
    between back-to-back runs by more than the differences measured here."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(20):  # warm connections up
        for call, _pids in calls.values():
            await call()
    cpu0 = {name: cpu_seconds(pids) for name, (_call, pids) in calls.items()}
    for _ in range(rounds):
        for name, (call, _pids) in calls.items():
            started = time.perf_counter()
            await call()
            latencies[name].append(time.perf_counter() - started)
    return {name: (statistics.median(latencies[name]) * 1000,
                   (cpu_seconds(pids) - cpu0[name]) / rounds * 1000 if pids else None)
            for name, (_call, pids) in calls.items()}


@dataclass
class Suite:
    results: list[Result]
    # Interleaved unary p50 ms and server CPU ms/call at concurrency 1: the gRPC paths through grpc.aio
    # stubs, then (a second pass, so that each process's CPU belongs to one path) through sync stubs.
    conc1: dict[str, tuple[float, float | None]]
    conc1_sync: dict[str, tuple[float, float | None]]


async def run_suite(address: str, pids: list[int], base: Baselines, calls: int) -> Suite:
    """Per concurrency: direct HTTP to the upstream, bare grpc.aio echo, then the gateway."""
    results: list[Result] = []
    echo, upstream, echo_pids = base.echo, base.upstream, [base.echo_pid]
    req = request(0)
    stream_req = pb.StreamCompleteRequest(request=req)
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something."}]}
    lean = Executor()
    await lean.start()
    async with aiohttp.ClientSession() as http, grpc.aio.insecure_channel(address) as channel, \
            grpc.aio.insecure_channel(echo) as echo_channel, grpc.aio.insecure_channel(base.proxy) as proxy_channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        echo_stub = pb_grpc.CompletionServiceStub(echo_channel)
        proxy_stub = pb_grpc.CompletionServiceStub(proxy_channel)

        async def direct_unary() -> None:
            async with http.post(f"{upstream}/v1/chat/completions", json=body) as resp:
                await resp.json()

        async def direct_lean() -> None:
            await _lean_post(lean, f"{upstream}/v1/chat/completions", body)

        async def direct_stream() -> None:
            async with http.post(f"{upstream}/v1/chat/completions", json={**body, "stream": True}) as resp:
                async for _ in resp.content:
                    pass

        def unary(s: pb_grpc.CompletionServiceStub) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                await s.Complete(req)
            return call

        def stream(s: pb_grpc.CompletionServiceStub) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                async for _ in s.StreamComplete(stream_req):
                    pass
            return call

        for conc in (1, 16, 64):
            n = calls if conc > 1 else calls // 4
            results.append(await drive("direct HTTP unary", direct_unary, conc, n, None))
            results.append(await drive("bare grpc.aio echo unary", unary(echo_stub), conc, n, echo_pids))
            results.append(await drive("gateway unary", unary(stub), conc, n, pids))
        for conc in (1, 16, 64):
            n = calls // 5 if conc > 1 else calls // 20
            results.append(await drive("direct HTTP stream", direct_stream, conc, n, None, 50))
            results.append(await drive("bare grpc.aio echo stream", stream(echo_stub), conc, n, echo_pids, 50))
            results.append(await drive("gateway stream", stream(stub), conc, n, pids, 50))
        directs: dict[str, CallPath] = {DIRECT_AIOHTTP: (direct_unary, []), DIRECT_LEAN: (direct_lean, [])}
        conc1 = await interleaved({
            **directs, "bare grpc.aio echo": (unary(echo_stub), echo_pids),
            "bare grpc.aio proxy": (unary(proxy_stub), [base.proxy_pid]), "gateway": (unary(stub), pids),
        }, calls // 2)
        with grpc.insecure_channel(address) as sync_channel, grpc.insecure_channel(echo) as sync_echo, \
                grpc.insecure_channel(base.proxy) as sync_proxy:
            conc1_sync = await interleaved({
                **directs, "bare grpc.aio echo": (blocking(sync_echo, req), echo_pids),
                "bare grpc.aio proxy": (blocking(sync_proxy, req), [base.proxy_pid]),
                "gateway": (blocking(sync_channel, req), pids),
            }, calls // 2)
    await lean.close()
    return Suite(results, conc1, conc1_sync)


DIRECT_AIOHTTP, DIRECT_LEAN = "direct HTTP (aiohttp)", "direct HTTP (gateway executor, pyreqwest)"


async def _lean_post(executor: Executor | AiohttpExecutor, url: str, body: Mapping[str, object]) -> None:
    reply = await executor.send(HttpCall(url, {"content-type": "application/json"}, body), timeout=30)
    orjson.loads(reply.body)


def blocking(channel: grpc.Channel, req: pb.CompleteRequest) -> Callable[[], Awaitable[None]]:
    """A unary call through a sync stub (the transport of ``llmrpc.completion()``), awaitable so that it
    takes its turn in :func:`interleaved`; it blocks the loop, which is idle at concurrency 1 anyway."""
    stub = pb_grpc.CompletionServiceStub(channel)

    async def call() -> None:
        stub.Complete(req)
    return call


async def http_client_comparison(upstream: str, calls: int, concurrency: int = 16, rounds: int = 1) -> list[str]:
    """The executor's HTTP client against the alternatives: the same unary calls through httpx's
    default transport, aiohttp, pyreqwest alone, the gateway's executor (pyreqwest plus its limits,
    bounded reads and per-host slots) and the same executor on aiohttp (``bench/aiohttp_executor.py``),
    measuring this process's
    CPU per call (the cost the gateway would pay; pyreqwest's Tokio thread is in this process too).
    ``rounds`` > 1 repeats every client, in reversed order each other round, because this shared VM
    drifts between back-to-back runs."""
    import httpx
    from pyreqwest.client import ClientBuilder

    body = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something."}]}
    raw = orjson.dumps(body)
    url = f"{upstream}/v1/chat/completions"
    rows = []
    executor, candidate = Executor(), AiohttpExecutor()
    await executor.start()
    await candidate.start()
    rq = ClientBuilder().no_proxy().build()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as hx, aiohttp.ClientSession() as ah:
        async def with_executor() -> None:
            await _lean_post(executor, url, body)

        async def with_candidate() -> None:
            await _lean_post(candidate, url, body)

        async def with_pyreqwest() -> None:
            resp = await rq.post(url).header("content-type", "application/json").body_bytes(raw).build().send()
            orjson.loads(bytes(await resp.bytes()))

        async def with_httpx() -> None:
            (await hx.post(url, json=body)).json()

        async def with_aiohttp() -> None:
            async with ah.post(url, json=body) as resp:
                await resp.json()

        clients = [("httpx (default transport)", with_httpx), ("aiohttp", with_aiohttp),
                   ("pyreqwest", with_pyreqwest), ("executor on pyreqwest (used)", with_executor),
                   ("executor on aiohttp (candidate)", with_candidate)]
        for turn in range(rounds):
            rows += [f"| {name:<30} | {turn + 1} | {row}" for name, row in await _compare(
                clients if turn % 2 == 0 else clients[::-1], concurrency, calls)]
    await rq.close()
    await executor.close()
    await candidate.close()
    return rows


async def _compare(clients: list[tuple[str, Callable[[], Awaitable[None]]]], concurrency: int,
                   calls: int) -> list[tuple[str, str]]:
    """Each client in turn: (name, "conc | calls/s | p50 ms | client CPU ms/call |")."""
    rows = []
    for name, call in clients:
        cpu0 = time.process_time()
        result = await drive(name, call, concurrency, calls, None)
        cpu = (time.process_time() - cpu0) / (result.calls + 20) * 1000
        p50 = statistics.median(result.latencies) * 1000
        rate = result.calls / result.seconds
        rows.append((name, f"{concurrency} | {rate:8.0f} | {p50:6.2f} | {cpu:6.3f} |"))
    return sorted(rows)


async def stream_throughput(upstream: str, streams: int = 200, concurrency: int = 16, rounds: int = 1) -> list[str]:
    """50-chunk SSE streams read through the executor (on pyreqwest, and the candidate on aiohttp) and
    through aiohttp alone: streams/s and client CPU per chunk, the same upstream, ``rounds`` times."""
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "Say something."}], "stream": True}
    url = f"{upstream}/v1/chat/completions"
    executor, candidate = Executor(stream_idle_timeout=60), AiohttpExecutor(stream_idle_timeout=60)
    await executor.start()
    await candidate.start()
    rows = []
    async with aiohttp.ClientSession() as ah:
        def through(ex: Executor | AiohttpExecutor) -> Callable[[], Awaitable[None]]:
            async def read() -> None:
                async with ex.stream(HttpCall(url, {"content-type": "application/json"}, body), timeout=30) as up:
                    while await up.next_events(30) is not None:
                        pass
            return read

        async def with_aiohttp() -> None:
            async with ah.post(url, json=body) as resp:
                async for _ in resp.content:
                    pass

        clients = [("aiohttp", with_aiohttp), ("executor on pyreqwest (used)", through(executor)),
                   ("executor on aiohttp (candidate)", through(candidate))]
        for turn in range(rounds):
            for name, call in clients if turn % 2 == 0 else clients[::-1]:
                cpu0 = time.process_time()
                result = await drive(name, call, concurrency, streams, None)
                cpu = (time.process_time() - cpu0) / ((result.calls + 20) * 50) * 1000
                rows.append(f"| {name:<30} | {turn + 1} | {concurrency} | {result.calls / result.seconds:8.0f} | "
                            f"{statistics.median(result.latencies) * 1000:6.2f} | {cpu:6.4f} |")
    await executor.close()
    await candidate.close()
    return sorted(rows)








def print_table(title: str, suite: Suite) -> None:
    results = suite.results
    print(f"\n### {title}\n")
    print("| path (streams: 50 chunks)    | conc |  calls/s |  p50 ms  |  p99 ms  | server CPU ms/call | ms/chunk |")
    print("|------------------------------|------|----------|----------|----------|-----------|-----------|")
    for r in results:
        print(r.row())
    for direct, _echo, gw in zip(results[::3], results[1::3], results[2::3], strict=True):
        if gw.concurrency == 1 and gw.chunks > 1:
            added = statistics.median(gw.latencies) - statistics.median(direct.latencies)
            print(f"- {gw.name}: added p50 latency vs direct HTTP at concurrency 1 = {added * 1000:.2f} ms")
    for client, conc1 in (("grpc.aio stubs", suite.conc1), ("sync stubs", suite.conc1_sync)):
        print(f"\nunary at concurrency 1, gRPC through {client}, the paths taking turns call by call:\n")
        print(conc1_table(conc1))


def conc1_table(conc1: dict[str, tuple[float, float | None]]) -> str:
    """Added p50 against both direct clients: aiohttp (the issue's reference client) and the gateway's
    own HTTP path (the executor on pyreqwest)."""
    aiohttp_p50, lean_p50 = conc1[DIRECT_AIOHTTP][0], conc1[DIRECT_LEAN][0]
    rows = ["| path | p50 ms | added vs direct aiohttp, ms | added vs direct executor, ms | server CPU ms/call |",
            "|---|---|---|---|---|"]
    for name, (p50, cpu) in conc1.items():
        rows.append(f"| {name} | {p50:.2f} | {p50 - aiohttp_p50:.2f} | {p50 - lean_p50:.2f} | "
                    f"{'' if cpu is None else f'{cpu:.3f}'} |")
    return "\n".join(rows)


def http_clients_only(calls: int, rounds: int) -> None:
    """``python -m bench --http-clients``: the local upstream and the client comparison, nothing else."""
    port = free_port()
    upstream = start([sys.executable, str(HERE / "upstream.py"), str(port)], dict(os.environ))
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}"
        print("| client | round | conc | calls/s | p50 ms | client CPU ms/call |\n|---|---|---|---|---|---|")
        print("\n".join(asyncio.run(http_client_comparison(url, calls, rounds=rounds))))
        print("\n| client | round | conc | streams/s | p50 ms | client CPU ms/chunk |\n|---|---|---|---|---|---|")
        print("\n".join(asyncio.run(stream_throughput(url, rounds=rounds))))
    finally:
        upstream.terminate()
        upstream.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="processes for the multi-process run")
    parser.add_argument("--rounds", type=int, default=3, help="--http-clients: rounds, each client in turn")
    parser.add_argument("--http-clients", action="store_true",
                        help="only the HTTP-client comparison (unary CPU per call, stream throughput)")
    args = parser.parse_args()
    if args.http_clients:
        http_clients_only(args.calls, args.rounds)
        return
    up_port, gw_port, echo_port, proxy_port = free_port(), free_port(), free_port(), free_port()
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "OPENAI_API_BASE": f"http://127.0.0.1:{up_port}/v1",
           "LLMRPC_CACHE_PATH": "/tmp/llmrpc-bench-cache.sqlite", "LLMRPC_NUM_RETRIES": "0"}
    upstream = f"http://127.0.0.1:{up_port}"
    procs = [start([sys.executable, str(HERE / "upstream.py"), str(up_port)], env), start(echo_command(echo_port), env),
             start(echo_command(proxy_port, f"{upstream}/v1/chat/completions"), env)]
    base = Baselines(upstream, f"127.0.0.1:{echo_port}", procs[1].pid, f"127.0.0.1:{proxy_port}", procs[2].pid)
    try:
        for port in (up_port, echo_port, proxy_port):
            wait_port(port)
        gw = start([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(gw_port)], env)
        procs.append(gw)
        wait_port(gw_port)
        results = asyncio.run(run_suite(f"127.0.0.1:{gw_port}", [gw.pid], base, args.calls))
        print_table("one gateway process", results)
        print("\n### HTTP client for the executor (client CPU per call, same upstream)\n")
        print("| client | round | conc | calls/s | p50 ms | client CPU ms/call |\n|---|---|---|---|---|---|")
        print("\n".join(asyncio.run(http_client_comparison(upstream, args.calls))))
        print("\n### streams through the executor's HTTP client (50 chunks, client CPU per chunk)\n")
        print("| client | round | conc | streams/s | p50 ms | client CPU ms/chunk |\n|---|---|---|---|---|---|")
        print("\n".join(asyncio.run(stream_throughput(upstream))))
        gw.terminate()
        gw.wait(30)
        multi_port = free_port()
        multi = start([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(multi_port),
                       "--workers", str(args.workers)], env)
        procs.append(multi)
        wait_port(multi_port)
        time.sleep(1.0)
        results = asyncio.run(run_suite(f"127.0.0.1:{multi_port}", children(multi.pid), base, args.calls))
        print_table(f"{args.workers} gateway processes on one port (SO_REUSEPORT)", results)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    from bench.bench_load import run_load

    print("\n### load: 1,000 concurrent streams, 20 chunks 50 ms apart\n")
    print(run_load().report())
    from bench.inprocess import main as inprocess_bench

    print("\n### the gateway's own work, without gRPC (in-process)\n")
    inprocess_bench()
    from bench.bench_cache import main as cache_bench

    print("\n### response cache (hits, CPU per hit, coalescing)\n")
    cache_bench()
    from bench.bench_router import run_router_bench

    print("\n### a 3-deployment model group and a virtual key with limits vs no config\n")
    router = run_router_bench()
    print(router.report())
    if not router.met:
        sys.exit("target missed: router + limited key server CPU per call (see above)")


if __name__ == "__main__":
    main()
