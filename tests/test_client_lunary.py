"""The ``"lunary"`` string callback, run in the caller's process: Lunary's run events (the JSON the
lunary SDK sends for LiteLLM) posted to a fake Lunary on 127.0.0.1, off the calling thread; a Lunary
that is down never touches the call; unknown names fail before anything is sent."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import llmrpc
import pytest
from llmrpc._lunary import lunary_logger

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, JSONReply, RecordedRequest, Reply, closed_port_url
from tests.upstreams import openai as oai

KEY = "pk-lunary-client-test"
SECRET = "sk-caller-SECRET-42"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env)) as gw:
        yield gw


@pytest.fixture
def lunary(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    def accept(req: RecordedRequest) -> Reply:
        return JSONReply(200, {"ok": True})

    with FakeUpstream(accept) as server:
        monkeypatch.setenv("LUNARY_API_URL", server.url)
        monkeypatch.setenv("LUNARY_PUBLIC_KEY", KEY)
        saved = llmrpc.input_callback, llmrpc.success_callback, llmrpc.failure_callback, llmrpc.callbacks
        yield server
        llmrpc.input_callback, llmrpc.success_callback, llmrpc.failure_callback, llmrpc.callbacks = saved
        lunary_logger().flush(5)


@pytest.fixture
def client(gateway: GatewayThread, upstream: FakeUpstream) -> Iterator[llmrpc.Client]:
    upstream.reset()
    with llmrpc.Client(gateway.address) as c:
        yield c


def events(server: FakeUpstream, n: int) -> list[dict[str, Any]]:
    lunary_logger().flush(5)  # what an exiting process does (atexit)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = [e for r in list(server.requests) for e in r.json()["events"]]
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"Lunary got {len(server.requests)} request(s), expected {n} events")


def sdk_uuid(value: str) -> str:
    return str(uuid.UUID(hashlib.sha256(f"{value}{KEY}".encode()).hexdigest()[:32]))


def test_success_sends_start_and_end_with_the_calls_details(lunary: FakeUpstream, client: llmrpc.Client) -> None:
    llmrpc.success_callback = ["lunary"]
    response = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, user="alice", api_key=SECRET,
                                 temperature=0.2, metadata={"tags": ["t1"], "parent_run_id": "parent-1"})
    start, end = events(lunary, 2)
    assert lunary.requests[0].path == "/v1/runs/ingest"
    assert lunary.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert (start["event"], end["event"]) == ("start", "end") and start["runId"] == end["runId"]
    assert start["type"] == "llm" and start["name"] == "gpt-4o-mini" and start["userId"] == "alice"
    assert start["tags"] == ["t1"] and start["parentRunId"] == sdk_uuid("parent-1")
    assert start["input"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert start["params"] == {"temperature": 0.2}
    assert start["metadata"] == {"tags": ["t1"], "parent_run_id": "parent-1"}
    assert end["output"] == {"role": "assistant", "content": response.choices[0].message.content}
    assert end["tokensUsage"] == {"completion": response.usage.completion_tokens,
                                  "prompt": response.usage.prompt_tokens}
    assert all(SECRET not in r.body.decode() and KEY not in r.body.decode() for r in lunary.requests)


def test_run_ids_are_derived_as_the_lunary_sdk_derives_them(lunary: FakeUpstream, client: llmrpc.Client) -> None:
    sdk = pytest.importorskip("lunary.utils", reason="the parity extra installs the lunary SDK")
    llmrpc.success_callback = ["lunary"]
    seen: list[dict[str, Any]] = []
    llmrpc.callbacks = [lambda kwargs, *rest: seen.append(kwargs)]
    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    start, _ = events(lunary, 2)
    assert seen and start["runId"] == str(sdk.create_uuid_from_string(seen[0]["litellm_call_id"] + KEY))


def test_input_callback_sends_start_first_and_only_once(lunary: FakeUpstream, client: llmrpc.Client) -> None:
    llmrpc.input_callback = ["lunary"]
    llmrpc.success_callback = ["lunary"]
    client.completion(model="openai/gpt-4o-mini", messages=MESSAGES[1:])
    got = events(lunary, 2)
    time.sleep(0.2)
    assert [e["event"] for e in got] == ["start", "end"]
    assert got[0]["input"] == {"role": "user", "content": "Hi there"}  # one message: a dict, as LiteLLM sends it


def test_failure_sends_start_and_error(lunary: FakeUpstream, client: llmrpc.Client,
                                       upstream: FakeUpstream) -> None:
    llmrpc.failure_callback = ["lunary"]
    upstream.enqueue(oai.error(400, "bad things", code="bad"))
    with pytest.raises(llmrpc.BadRequestError):
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, user="bob")
    start, error = events(lunary, 2)
    assert (start["event"], error["event"]) == ("start", "error") and start["userId"] == "bob"
    assert "BadRequestError" in error["error"]["stack"] and error["runId"] == start["runId"]


async def test_acompletion_and_streams_report_too(lunary: FakeUpstream, client: llmrpc.Client) -> None:
    llmrpc.success_callback = ["lunary"]
    await client.acompletion(model="openai/gpt-4o-mini", messages=MESSAGES)
    stream = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES, stream=True,
                               stream_options={"include_usage": True})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    got = events(lunary, 4)
    assert [e["event"] for e in got] == ["start", "end", "start", "end"]
    assert got[3]["output"] == {"role": "assistant", "content": text} and got[3]["tokensUsage"]["completion"] > 0


def test_lunary_down_never_touches_the_call(monkeypatch: pytest.MonkeyPatch, lunary: FakeUpstream,
                                            client: llmrpc.Client, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LUNARY_API_URL", closed_port_url())
    llmrpc.success_callback = ["lunary"]
    failed = lunary_logger()._sender.failed
    response = client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert response.choices[0].message.content
    lunary_logger().flush(10)
    assert lunary_logger()._sender.failed == failed + 2
    assert "lunary: sending 2 event(s) failed" in caplog.text


def test_unknown_name_fails_first_call_naming_the_known_ones(lunary: FakeUpstream, client: llmrpc.Client,
                                                             upstream: FakeUpstream) -> None:
    llmrpc.success_callback = ["langfuse"]
    with pytest.raises(ValueError, match=r"unknown callback 'langfuse'.*\['lunary'\]"):
        client.completion(model="openai/gpt-4o-mini", messages=MESSAGES)
    assert upstream.requests == []
