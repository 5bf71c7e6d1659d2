"""Two real server processes on one cache file: what one stores, the other serves, and concurrent
writers from both processes neither fail nor lose entries (WAL mode, busy timeout)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llmrpc
import pytest

from tests.support import free_port, wait_serving
from tests.upstreams import FakeUpstream, openai

MODEL = "openai/gpt-4o-mini"


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def entries(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        count: int = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    return count


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[FakeUpstream, Path, list[str]]]:
    path = tmp_path / "cache.sqlite"
    with FakeUpstream(default=openai.default_handler) as upstream:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env.update(OPENAI_API_KEY="sk-test", OPENAI_API_BASE=upstream.url)
        ports = [free_port(), free_port()]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
                 "--cache-path", str(path), "--grace", "2"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            for port in ports
        ]
        try:
            addresses = [f"127.0.0.1:{port}" for port in ports]
            for address in addresses:
                wait_serving(address)
            yield upstream, path, addresses
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                assert proc.wait(20) == 0
            logs = b"".join(proc.stdout.read() for proc in procs if proc.stdout is not None)
            assert b"response cache" not in logs, logs.decode()  # no cache warning from either process
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
                if proc.stdout is not None:
                    proc.stdout.close()


def ask(address: str, text: str) -> Any:
    with llmrpc.Client(address) as client:
        return llmrpc.completion(model=MODEL, messages=[{"role": "user", "content": text}], caching=True,
                                 client=client)


def test_one_process_serves_what_the_other_stored(servers: tuple[FakeUpstream, Path, list[str]]) -> None:
    upstream, path, (first, second) = servers
    stored = ask(first, "shared")
    assert stored._hidden_params["cache_hit"] is False
    wait_until(lambda: entries(path) == 1)  # the store is written just after the answer is sent
    hit = ask(second, "shared")
    assert hit._hidden_params["cache_hit"] is True
    assert (hit.id, hit.choices[0].message.content) == (stored.id, "echo: shared")
    assert len(upstream.requests) == 1


def test_both_processes_write_concurrently(servers: tuple[FakeUpstream, Path, list[str]]) -> None:
    upstream, path, addresses = servers
    jobs = [(addresses[n % 2], f"question {n}") for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    assert [a.choices[0].message.content for a in answers] == [f"echo: {text}" for _, text in jobs]
    wait_until(lambda: entries(path) == 40)
    swapped = [(addresses[(n + 1) % 2], text) for n, (_, text) in enumerate(jobs)]
    with ThreadPoolExecutor(8) as pool:
        hits = list(pool.map(lambda job: ask(*job), swapped))
    assert all(h._hidden_params["cache_hit"] for h in hits)
    assert len(upstream.requests) == 40


def test_opening_a_fresh_file_at_once_never_disables_the_cache(tmp_path: Path) -> None:
    # Two workers starting together on a new cache file race to switch it to WAL; SQLite fails the
    # loser at once instead of waiting. Separate connections in threads race the same way.
    from threading import Barrier

    from llmrpc_server.cache.store import SqliteStore

    for attempt in range(40):
        path = str(tmp_path / f"fresh-{attempt}.sqlite")
        stores = [SqliteStore(path, 1 << 20) for _ in range(3)]
        barrier = Barrier(len(stores))

        def put(store: SqliteStore, barrier: Barrier = barrier) -> None:
            barrier.wait()
            store.put(f"key-{id(store)}", "ns", "unary", b"payload", now=time.time(), ttl=60.0)

        with ThreadPoolExecutor(len(stores)) as pool:
            list(pool.map(put, stores))
        assert [s.totals["errors"] for s in stores] == [0, 0, 0], f"attempt {attempt}"
        assert entries(Path(path)) == 3
