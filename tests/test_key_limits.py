"""Virtual keys' rate limits: ``rpm_limit`` (counted at admission), ``tpm_limit`` (counted after each call),
``max_parallel_requests`` (a stream's slot frees when it ends or is cancelled). Windows are tested with an
injected clock on the store; through the real server, refusals are RESOURCE_EXHAUSTED with QuotaFailure and
RetryInfo, and limits hold across ``--workers 2`` and a restart (a real ``llmrpc-server`` subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import llmrpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc
from llmrpc_server.keys import SqliteLimitStore, VirtualKey, hash_key

from tests.keys_support import MESSAGES, client_for, keyed_gateway
from tests.process_support import ServerProcess
from tests.support import free_port, wait_serving
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai
from tests.upstreams.server import StallReply

KEY = "sk-limits-0123456789"
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def key(**limits: Any) -> VirtualKey:
    return VirtualKey(digest=hash_key(KEY), alias="k", **limits)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteLimitStore(str(tmp_path / "state.sqlite"))
    yield s
    s.close()


# ---- the store, with an injected clock ----------------------------------------------------------

def test_rpm_counts_admissions_in_fixed_minute_windows(store: SqliteLimitStore) -> None:
    k = key(rpm_limit=2)
    assert store.admit_sync(k, T0 + 1, "a", T0 + 100).admitted
    assert store.admit_sync(k, T0 + 2, "b", T0 + 100).admitted
    refused = store.admit_sync(k, T0 + 15, "c", T0 + 100)
    assert not refused.admitted and refused.limit == "rpm_limit" and refused.current == 2
    assert refused.retry_after == pytest.approx(45.0)  # when the minute ends
    assert store.admit_sync(k, T0 + 60, "d", T0 + 200).admitted  # a new window


def test_tpm_counts_tokens_after_each_call(store: SqliteLimitStore) -> None:
    k = key(tpm_limit=100)
    assert store.admit_sync(k, T0, "a", T0 + 100).admitted
    store.record_sync(k, T0 + 1, "a", 60, 0.0)
    assert store.admit_sync(k, T0 + 2, "b", T0 + 100).admitted  # 60 < 100: admitted, may overshoot
    store.record_sync(k, T0 + 3, "b", 60, 0.0)
    refused = store.admit_sync(k, T0 + 4, "c", T0 + 100)
    assert (refused.admitted, refused.limit, refused.current, refused.retry_after) == (False, "tpm_limit", 120, 56)
    assert store.admit_sync(k, T0 + 61, "d", T0 + 200).admitted


def test_parallel_leases_end_with_the_call_or_its_deadline(store: SqliteLimitStore) -> None:
    k = key(max_parallel_requests=2)
    assert store.admit_sync(k, T0, "a", T0 + 10).admitted
    assert store.admit_sync(k, T0, "b", T0 + 500).admitted
    refused = store.admit_sync(k, T0 + 1, "c", T0 + 10)
    assert (refused.admitted, refused.limit, refused.current, refused.retry_after) == (
        False, "max_parallel_requests", 2, None)
    store.release_sync(k, "b")
    assert store.admit_sync(k, T0 + 1, "c", T0 + 10).admitted
    assert not store.admit_sync(k, T0 + 2, "d", T0 + 10).admitted
    assert store.admit_sync(k, T0 + 11, "d", T0 + 20).admitted  # a and c passed their deadlines


def test_a_dead_process_leases_end_when_the_file_is_opened(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")
    k = key(max_parallel_requests=1)
    child = subprocess.run([sys.executable, "-c", (
        "import sys, time; from llmrpc_server.keys import SqliteLimitStore, VirtualKey, hash_key;"
        f"s = SqliteLimitStore({path!r});"
        f"k = VirtualKey(digest=hash_key({KEY!r}), alias='k', max_parallel_requests=1);"
        "assert s.admit_sync(k, time.time(), 'lease-of-dead', time.time() + 3600).admitted")],
        check=True, capture_output=True)
    assert child.returncode == 0
    store = SqliteLimitStore(path)
    try:
        assert store.admit_sync(k, time.time(), "mine", time.time() + 60).admitted
    finally:
        store.close()


def test_two_processes_share_the_counters(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")
    code = (
        "import sys; from llmrpc_server.keys import SqliteLimitStore, VirtualKey, hash_key;"
        f"s = SqliteLimitStore({path!r});"
        f"k = VirtualKey(digest=hash_key({KEY!r}), alias='k', rpm_limit=50);"
        f"print(sum(s.admit_sync(k, {T0} + 1, f'l{{i}}', {T0} + 9).admitted for i in range(40)))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    admitted = sum(int(p.communicate(timeout=120)[0]) for p in procs)
    assert admitted == 50  # exactly the limit, whichever process got each one


def test_a_lone_process_counts_in_memory_and_hands_over_exact_counts(tmp_path: Path) -> None:
    """One process on the file decides in memory; another process joining gets the file, with every
    admission and lease of the first in it, within the hand-over."""
    path = str(tmp_path / "state.sqlite")
    rpm, parallel = key(rpm_limit=50), VirtualKey(digest=hash_key(KEY + "-p"), alias="p", max_parallel_requests=1)
    code = (
        "import sys, time; from llmrpc_server.keys import SqliteLimitStore, VirtualKey, hash_key;"
        f"s = SqliteLimitStore({path!r});"
        f"k = VirtualKey(digest=hash_key({KEY!r}), alias='k', rpm_limit=50);"
        f"p = VirtualKey(digest=hash_key({KEY + '-p'!r}), alias='p', max_parallel_requests=1);"
        f"n = sum(s.admit_sync(k, {T0} + 1, f'l{{i}}', {T0} + 9).admitted for i in range(40));"
        f"print(n, s.admit_sync(p, {T0} + 1, 'other', {T0} + 9).limit); s.close()")

    async def run() -> tuple[list[bool], str, str]:
        store = SqliteLimitStore(path)
        try:
            admitted = [(await store.admit(rpm, T0 + 1, f"m{i}", T0 + 9)).admitted for i in range(30)]
            admitted.append((await store.admit(parallel, T0 + 1, "mine", T0 + 9)).admitted)
            assert store.exclusive  # nothing written per call so far
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(child.communicate(), 60)
            after = (await store.admit(rpm, T0 + 2, "late", T0 + 9)).limit  # the other process's count too
            return admitted, out.decode(), after
        finally:
            store.close()

    admitted, child_out, refused_by = asyncio.run(run())
    assert all(admitted) and child_out.split() == ["20", "max_parallel_requests"] and refused_by == "rpm_limit"


def test_a_second_store_in_the_process_takes_over_from_an_exclusive_one(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite")
    k = key(rpm_limit=5)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    first = SqliteLimitStore(path)
    try:
        for i in range(3):
            assert asyncio.run_coroutine_threadsafe(first.admit(k, T0 + 1, f"a{i}", T0 + 9), loop).result(10).admitted
        assert first.exclusive
        second = SqliteLimitStore(path)  # this thread, no loop: asks the first (on its loop) to hand over
        try:
            assert [second.admit_sync(k, T0 + 1, f"b{i}", T0 + 9).admitted for i in range(3)] == [True, True, False]
        finally:
            second.close()
        assert not first.exclusive
    finally:
        loop.call_soon_threadsafe(first.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---- through the server -------------------------------------------------------------------------

def _quota_details(err: grpc.RpcError) -> tuple[list[Any], list[Any]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    quota = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    retry = []
    for d in status.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            d.Unpack(info)
            retry.append(info)
    return quota, retry


def test_rpm_limit_through_the_server(tmp_path: Path) -> None:
    with keyed_gateway([{"key": KEY, "key_alias": "ci", "rpm_limit": 2}], str(tmp_path / "s.sqlite")) as gw:
        with client_for(gw, KEY) as client:
            client.completion(model="mock/echo", messages=MESSAGES)
            list(client.completion(model="mock/echo", messages=MESSAGES, stream=True))
            with pytest.raises(llmrpc.RateLimitError) as info:
                client.completion(model="mock/echo", messages=MESSAGES)
        with grpc.insecure_channel(gw.address) as channel, pytest.raises(grpc.RpcError) as raw:
            pb_grpc.CompletionServiceStub(channel).Complete(
                pb.CompleteRequest(model="mock/echo", messages=[{"role": "user", "content": "hi"}]),
                metadata=[("authorization", f"Bearer {KEY}")], timeout=10)
    err = info.value
    if err.metadata.get("limit") is None:  # the minute turned between the calls: nothing to check here
        pytest.skip("a minute boundary fell between the calls")
    assert err.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "RATE_LIMITED"
    assert err.metadata["limit"] == "rpm_limit" and err.metadata["keyAlias"] == "ci"
    assert err.retry_after is not None and 0 <= err.retry_after <= 60
    assert "rpm_limit of 2" in str(err) and KEY not in str(err)
    quota, retry = _quota_details(raw.value)
    assert quota and retry and raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tpm_limit_counts_a_stream_usage_even_when_the_caller_did_not_ask(tmp_path: Path) -> None:
    with FakeUpstream(default=oai.default_handler) as up, keyed_gateway(
            [{"key": KEY, "key_alias": "ci", "tpm_limit": 20}], str(tmp_path / "s.sqlite"),
            env={"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": up.url}) as gw, client_for(gw, KEY) as client:
        chunks = list(client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True))
        assert all(getattr(c, "usage", None) is None for c in chunks)  # not asked for: not shown
        assert up.requests[-1].json()["stream_options"] == {"include_usage": True}  # but counted: 12 tokens
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)  # 12 < 20: admitted -> 24
        with pytest.raises(llmrpc.RateLimitError) as info:
            client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    if info.value.metadata.get("current") != "24":
        pytest.skip("a minute boundary fell between the calls")
    assert info.value.metadata["limit"] == "tpm_limit"


def test_parallel_limit_frees_a_cancelled_stream_slot(tmp_path: Path) -> None:
    with FakeUpstream(default=oai.default_handler) as up, keyed_gateway(
            [{"key": KEY, "key_alias": "ci", "max_parallel_requests": 1}], str(tmp_path / "s.sqlite"),
            env={"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": up.url}) as gw:
        up.enqueue(StallReply(seconds=60))
        with grpc.insecure_channel(gw.address) as channel, client_for(gw, KEY) as other:
            request = pb.StreamCompleteRequest(request=pb.CompleteRequest(
                model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]))
            stream = pb_grpc.CompletionServiceStub(channel).StreamComplete(
                request, metadata=[("x-api-key", KEY)], timeout=120)
            drain = threading.Thread(target=_drain, args=(stream,), daemon=True)
            drain.start()
            assert up.wait_for(lambda: len(up.requests) == 1, timeout=30)  # admitted, stalled upstream
            with pytest.raises(llmrpc.RateLimitError) as info:
                other.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
            assert info.value.metadata["limit"] == "max_parallel_requests"
            assert info.value.metadata["current"] == "1" and info.value.retry_after is None
            stream.cancel()  # the caller goes away: the slot frees
            drain.join(30)
            deadline = time.monotonic() + 30
            while True:
                try:
                    other.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
                    break
                except llmrpc.RateLimitError:  # the server has not seen the cancellation yet
                    assert time.monotonic() < deadline
                    time.sleep(0.1)


def _drain(stream: Any) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError:  # cancelled by the test
        pass


def test_admin_callers_have_no_limits(tmp_path: Path) -> None:
    with keyed_gateway([{"key": KEY, "key_alias": "ci", "rpm_limit": 0}], str(tmp_path / "s.sqlite"),
                       auth_tokens=("admin-token",)) as gw:
        with client_for(gw, KEY) as client, pytest.raises(llmrpc.RateLimitError):
            client.completion(model="mock/echo", messages=MESSAGES)
        with client_for(gw, "admin-token") as client:
            for _ in range(3):
                client.completion(model="mock/echo", messages=MESSAGES)


# ---- a real server: --workers 2 and a restart ---------------------------------------------------

def test_limits_hold_across_workers_and_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lifetime budget: no clock window can turn during the test. gpt-4o-mini at 5 + 7 tokens costs
    # 4.95e-6 USD a call, so a 2.7e-5 budget admits exactly 6 sequential calls.
    with FakeUpstream(default=oai.default_handler) as up:
        monkeypatch.setenv("OPENAI_API_BASE", up.url)
        monkeypatch.setenv("LIMITS_TEST_KEY", KEY)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({
            "environment_variables": {"OPENAI_API_KEY": "sk-server"},
            "keys": [{"key": "os.environ/LIMITS_TEST_KEY", "key_alias": "shared", "max_budget": 2.7e-5}],
        }))
        port = free_port()
        server = ServerProcess(tmp_path, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "2")
        try:
            server.wait_for("listening on", count=2)
            wait_serving(f"127.0.0.1:{port}")
            for _ in range(4):  # fresh connections land on either worker
                with client_for_address(port, KEY) as client:
                    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
        finally:
            server.stop()
        server = ServerProcess(tmp_path, "--config", str(config), "--host", "127.0.0.1", "--port", str(port))
        try:  # a restart: the spend is in state.sqlite
            server.wait_for("listening on")
            wait_serving(f"127.0.0.1:{port}")
            with client_for_address(port, KEY) as client:
                for _ in range(2):
                    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
                with pytest.raises(llmrpc.BudgetExceededError) as info:
                    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
        finally:
            server.stop()
    assert len(up.requests) == 6
    assert float(info.value.metadata["spend"]) == pytest.approx(6 * 4.95e-6)
    assert (tmp_path / "state.sqlite").exists()  # beside the cache (LLMRPC_CACHE_PATH)


def test_rpm_limit_holds_across_workers(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"keys": [{"key": KEY, "key_alias": "small", "rpm_limit": 3}]}))
    port = free_port()
    server = ServerProcess(tmp_path, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "2")
    try:
        server.wait_for("listening on", count=2)
        wait_serving(f"127.0.0.1:{port}")
        for _attempt in range(3):  # a minute boundary between the calls restarts the count: try again
            outcomes = []
            for _ in range(5):  # fresh connections land on either worker
                with client_for_address(port, KEY) as client:
                    try:
                        client.completion(model="mock/echo", messages=MESSAGES)
                        outcomes.append("ok")
                    except llmrpc.RateLimitError:
                        outcomes.append("limited")
            if outcomes == ["ok"] * 3 + ["limited"] * 2:
                break
            time.sleep(max(0.0, 61 - time.time() % 60))  # into a fresh window
        assert outcomes == ["ok"] * 3 + ["limited"] * 2, outcomes
    finally:
        server.stop()


def client_for_address(port: int, key: str) -> llmrpc.Client:
    return llmrpc.Client(f"127.0.0.1:{port}", metadata=[("authorization", f"Bearer {key}")])


def test_an_unusable_state_file_fails_limited_keys_closed(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    keys = [{"key": KEY, "key_alias": "limited", "rpm_limit": 100},
            {"key": "sk-unlimited-0123456789", "key_alias": "open"}]
    with keyed_gateway(keys, str(blocker / "state.sqlite")) as gw:
        with client_for(gw, KEY) as client, pytest.raises(llmrpc.ServiceUnavailableError) as info:
            client.completion(model="mock/echo", messages=MESSAGES)
        assert info.value.grpc_code == grpc.StatusCode.UNAVAILABLE and info.value.reason == "KEY_STORE_UNAVAILABLE"
        assert "cannot be checked" in str(info.value) and KEY not in str(info.value)
        with client_for(gw, "sk-unlimited-0123456789") as client:  # nothing to enforce: served, spend not kept
            assert client.completion(model="mock/echo", messages=MESSAGES).choices[0].message.content
