"""Load without loss: 1,000 concurrent streams against a slow upstream (20 chunks, 50 ms apart) all
complete with every chunk, in order, with no errors, and leave nothing behind on the gateway.

The upstream runs in its own process (bench/bench_load.py), the gateway in this one, and the
callers share one grpc.aio channel on the test's event loop. ``make bench`` reports the same
scenario's wall time, RSS and descriptors for a separate gateway process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from llmrpc_server.observability import counters

from bench.bench_load import CHUNKS, run_streams, slow_upstream
from tests.support import GatewayThread, gateway_settings

STREAMS = 1000


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with slow_upstream() as base:
        env = {"OPENAI_API_KEY": "sk-load", "OPENAI_API_BASE": base}
        with GatewayThread(gateway_settings(env, max_connections=STREAMS + 50)) as gw:
            yield gw


async def _loop_tasks() -> int:
    return len(asyncio.all_tasks()) - 1


@pytest.mark.timeout(90)
async def test_a_thousand_concurrent_streams_lose_nothing(gateway: GatewayThread) -> None:
    await run_streams(gateway.address, 10)  # warm: channel, pool, imports
    tasks_before = gateway.run(_loop_tasks())
    broken_before = gateway.counters.total(counters.STREAMS_BROKEN)

    outcome = await run_streams(gateway.address, STREAMS)

    assert dict(outcome.errors) == {}
    assert outcome.complete == STREAMS
    assert outcome.seconds >= CHUNKS * 0.05  # really concurrent and really slow upstream-side
    assert gateway.counters.total(counters.STREAMS_BROKEN) == broken_before
    for _ in range(100):
        if gateway.run(_loop_tasks()) <= tasks_before:
            break
        await asyncio.sleep(0.05)
    assert gateway.run(_loop_tasks()) <= tasks_before
