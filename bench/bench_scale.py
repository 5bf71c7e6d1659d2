"""Scale-out on one machine: throughput and CPU per call for 1 vs 2 gateway replicas behind real Envoy
(deploy/envoy/envoy.yaml with local ports), and one replica called directly for Envoy's share.

Every process's CPU is read from ``/proc/<pid>/stat`` around the measured calls: each replica, Envoy,
the fast upstream and this load generator, so the table says where a call's CPU goes. On a 2-core
machine all of them share the two cores, so the throughput ratio measures contention as much as scaling;
CPU per call is the figure that carries over to real deployments.

Then a cache hit served through Redis (``--redis-url``) against one served from the SQLite cache, each
by its own replica called directly: "distinct" reads every one of ``--hits`` stored prompts once (SQLite
reads its file; Redis one ``HMGET``), "same" reads one prompt ``--hits`` times (SQLite answers from its
one-second in-process memo; Redis has none). CPU per hit counts the replica and, for Redis, redis-server.

    make bench-scale            # or: python -m bench.bench_scale [--calls N] [--hits N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from bench.__main__ import HERE, free_port, start, wait_port
from tests.envoy_front import local_config, replica, run_envoy, wait_until
from tests.support import wait_serving

__all__ = ["main"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNKS = 50  # the bench upstream's stream length


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Row:
    setup: str
    kind: str
    concurrency: int
    calls: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]  # process label -> CPU seconds over the measured calls

    def line(self) -> str:
        lat = sorted(self.latencies)
        p50, p99 = statistics.median(lat) * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        per_call = {k: v / self.calls * 1000 for k, v in self.cpu.items()}
        replicas = " + ".join(f"{v:.3f}" for k, v in per_call.items() if k.startswith("replica"))
        server = sum(v for k, v in per_call.items() if k.startswith("replica"))
        return (f"| {self.setup} | {self.kind} | {self.concurrency} | {self.calls / self.seconds:.0f} | {p50:.2f} | "
                f"{p99:.2f} | {replicas} = {server:.3f} | {per_call.get('envoy', 0.0):.3f} | "
                f"{per_call['upstream']:.3f} | {per_call['load generator']:.3f} | {sum(per_call.values()):.3f} |")


def request() -> pb.CompleteRequest:
    return pb.CompleteRequest(model="openai/bench-model",
                              messages=[chat_pb2.Message(role="user", content="Say something.")])


@dataclass(frozen=True)
class Setup:
    name: str
    address: str
    pids: dict[str, int]  # every process a call through this setup touches


async def batch(setup: Setup, kind: str, concurrency: int, calls: int, row: Row) -> None:
    """``calls`` calls through ``setup`` at ``concurrency``, added to ``row`` (time, latencies, CPU)."""
    async with grpc.aio.insecure_channel(setup.address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)

        async def unary() -> None:
            await stub.Complete(request(), timeout=30)

        async def stream() -> None:
            n = 0
            async for _ in stub.StreamComplete(pb.StreamCompleteRequest(request=request()), timeout=30):
                n += 1
            assert n >= CHUNKS - 1

        call: Callable[[], Awaitable[None]] = unary if kind == "unary" else stream
        await asyncio.gather(*(call() for _ in range(concurrency)))  # connections and caches warm
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await call()
                row.latencies.append(time.perf_counter() - started)

        before = {k: cpu(p) for k, p in setup.pids.items()}
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        row.seconds += time.perf_counter() - started
        row.calls += calls
        for k, p in setup.pids.items():
            row.cpu[k] = row.cpu.get(k, 0.0) + cpu(p) - before[k]


@contextmanager
def envoy_in_front(ports: list[int], workdir: Path) -> Iterator[tuple[str, int]]:
    listen, admin = free_port(), free_port()
    with run_envoy(local_config(listen, admin, [("127.0.0.1", p) for p in ports]), workdir, listen, admin) as envoy:
        wait_until(lambda: envoy.healthy_replicas() == set(ports), 30, "Envoy to health-check the replicas")
        yield envoy.address, envoy.proc.pid


KINDS = (("unary", 32), (f"stream ({CHUNKS} chunks)", 16))


def run(calls: int, streams: int, rounds: int) -> list[Row]:
    """The setups take turns, a batch each per round, so that all of them see the same (shared,
    drifting) machine rather than one getting a quiet minute and the next a busy one."""
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        up_port = free_port()
        env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_API_BASE": f"http://127.0.0.1:{up_port}/v1",
               "LLMRPC_NUM_RETRIES": "0"}
        upstream = start([sys.executable, str(HERE / "upstream.py"), str(up_port)], dict(os.environ))
        stack.callback(upstream.wait, 30)
        stack.callback(upstream.terminate)
        wait_port(up_port)
        ports = [free_port(), free_port()]
        procs = [stack.enter_context(replica(port, {**env, "LLMRPC_CACHE_PATH": f"{tmp}/cache-{port}.sqlite"}))
                 for port in ports]
        for port in ports:
            wait_serving(f"127.0.0.1:{port}", timeout=120)
        base = {"upstream": upstream.pid, "load generator": os.getpid()}
        one = {**base, "replica 1": procs[0].pid}
        two = {**one, "replica 2": procs[1].pid}
        (tmp1 := Path(tmp) / "one").mkdir()
        (tmp2 := Path(tmp) / "two").mkdir()
        front1, envoy1 = stack.enter_context(envoy_in_front(ports[:1], tmp1))
        front2, envoy2 = stack.enter_context(envoy_in_front(ports, tmp2))
        setups = [Setup("1 replica, direct", f"127.0.0.1:{ports[0]}", one),
                  Setup("1 replica behind Envoy", front1, {**one, "envoy": envoy1}),
                  Setup("2 replicas behind Envoy", front2, {**two, "envoy": envoy2})]
        rows = {(s.name, kind): Row(s.name, kind, conc, 0, 0.0, [], {}) for s in setups for kind, conc in KINDS}
        for _ in range(rounds):
            for kind, conc in KINDS:
                total = calls if kind == "unary" else streams
                for setup in setups:
                    asyncio.run(batch(setup, kind, conc, total // rounds, rows[(setup.name, kind)]))
        return [rows[(s.name, kind)] for kind, _ in KINDS for s in setups]


def cache_request(text: str) -> pb.CompleteRequest:
    req = request()
    req.messages[0].content = text
    req.caching = True
    return req


@dataclass
class HitRow:
    store: str
    mode: str
    calls: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # replica + redis-server CPU seconds
    redis_cpu: float = 0.0  # redis-server's part

    def line(self) -> str:
        per_hit = self.cpu / self.calls * 1000
        redis = self.redis_cpu / self.calls * 1000
        return (f"| {self.store} | {self.mode} | {self.calls / self.seconds:.0f} | "
                f"{self.seconds / self.calls * 1000 * HIT_CONCURRENCY:.2f} | {per_hit - redis:.3f} | "
                f"{redis:.3f} | {per_hit:.3f} |")


HIT_CONCURRENCY = 8


async def hits(address: str, texts: list[str], pids: list[int], row: HitRow) -> None:
    """Every text once, ``HIT_CONCURRENCY`` at a time; each must be a hit."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        queue = list(reversed(texts))

        async def worker() -> None:
            while queue:
                resp = await stub.Complete(cache_request(queue.pop()), timeout=30)
                assert resp.metadata.cache_hit

        before = [cpu(p) for p in pids]
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(HIT_CONCURRENCY)))
        row.seconds += time.perf_counter() - started
        used = [cpu(p) - b for p, b in zip(pids, before, strict=True)]
        row.cpu += sum(used)
        row.redis_cpu += sum(used[1:])  # pids: the replica, then redis-server if any
        row.calls += len(texts)


async def store(address: str, texts: list[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CompletionServiceStub(channel)
        for i in range(0, len(texts), 32):
            await asyncio.gather(*(stub.Complete(cache_request(t), timeout=30) for t in texts[i:i + 32]))


def run_cache(count: int, rounds: int) -> list[HitRow]:
    """One replica on SQLite, one on Redis, the same upstream; the two take turns per round."""
    from tests.redis_support import RedisServer

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        up_port = free_port()
        upstream = start([sys.executable, str(HERE / "upstream.py"), str(up_port)], dict(os.environ))
        stack.callback(upstream.wait, 30)
        stack.callback(upstream.terminate)
        wait_port(up_port)
        redis = RedisServer(Path(tmp)).start()
        stack.callback(redis.kill)
        assert redis.proc is not None
        env = {"OPENAI_API_KEY": "sk-bench", "OPENAI_API_BASE": f"http://127.0.0.1:{up_port}/v1",
               "LLMRPC_NUM_RETRIES": "0", "LLMRPC_CACHE_PATH": f"{tmp}/cache.sqlite"}
        ports = {"SQLite": free_port(), "Redis": free_port()}
        procs = {"SQLite": stack.enter_context(replica(ports["SQLite"], env)),
                 "Redis": stack.enter_context(replica(ports["Redis"], env, "--redis-url", redis.url))}
        pids = {"SQLite": [procs["SQLite"].pid], "Redis": [procs["Redis"].pid, redis.proc.pid]}
        for port in ports.values():
            wait_serving(f"127.0.0.1:{port}", timeout=120)
        texts = {name: [f"{name} prompt {i}" for i in range(count)] for name in ports}
        for name, port in ports.items():
            asyncio.run(store(f"127.0.0.1:{port}", texts[name]))
        rows = {(name, mode): HitRow(name, mode) for mode in ("distinct", "same") for name in ports}
        per_round = count // rounds
        for r in range(rounds):
            for name, port in ports.items():
                distinct = texts[name][r * per_round:(r + 1) * per_round]
                asyncio.run(hits(f"127.0.0.1:{port}", distinct, pids[name], rows[(name, "distinct")]))
                same = [texts[name][0]] * per_round
                asyncio.run(hits(f"127.0.0.1:{port}", same, pids[name], rows[(name, "same")]))
        return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="unary calls per setup")
    parser.add_argument("--streams", type=int, default=400, help="streams per setup")
    parser.add_argument("--rounds", type=int, default=5, help="turns the setups take")
    parser.add_argument("--hits", type=int, default=2000, help="cache hits per store and mode (0: skip)")
    parser.add_argument("--only-cache", action="store_true", help="only the Redis vs SQLite cache hits")
    args = parser.parse_args()
    started, load0 = time.monotonic(), os.getloadavg()[0]
    if not args.only_cache:
        scale(args, started, load0)
    if args.hits:
        cache_table(args.hits, args.rounds)
    print(f"- wall time {time.monotonic() - started:.0f} s")


def cache_table(count: int, rounds: int) -> None:
    if shutil.which("redis-server") is None:
        print("\nredis-server is not installed (sh scripts/install_redis.sh): no Redis vs SQLite cache figures")
        return
    rows = run_cache(count, rounds)
    print(f"\n### a cache hit through Redis vs SQLite (one replica each, called directly, concurrency "
          f"{HIT_CONCURRENCY})\n")
    print("| store | keys | hits/s | mean ms/hit | replica CPU ms/hit | redis-server | all |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    by = {(r.store, r.mode): r for r in rows}
    for mode in ("distinct", "same"):
        redis, sqlite = by[("Redis", mode)], by[("SQLite", mode)]
        cpu_ratio = (redis.cpu / redis.calls) / (sqlite.cpu / sqlite.calls)
        rate_ratio = (redis.calls / redis.seconds) / (sqlite.calls / sqlite.seconds)
        print(f"- {mode} keys: Redis / SQLite CPU per hit = {cpu_ratio:.2f}x, hits/s = {rate_ratio:.2f}x")


def scale(args: argparse.Namespace, started: float, load0: float) -> None:
    rows = run(args.calls, args.streams, args.rounds)
    load1 = os.getloadavg()[0]
    print(f"\n### scale-out behind Envoy ({os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f}; "
          "Envoy --concurrency 1)\n")
    print("| setup | kind | conc | calls/s | p50 ms | p99 ms | replicas' CPU ms/call | Envoy | upstream | "
          "load generator | all |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    by = {(r.setup, r.kind): r for r in rows}
    for kind in sorted({r.kind for r in rows}):
        one, two = by[("1 replica behind Envoy", kind)], by[("2 replicas behind Envoy", kind)]
        ratio = (two.calls / two.seconds) / (one.calls / one.seconds)
        print(f"- {kind}: 2 replicas / 1 replica throughput = {ratio:.2f}x")


if __name__ == "__main__":
    main()
