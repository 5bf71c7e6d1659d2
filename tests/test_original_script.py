"""The issue's LiteLLM script, unchanged but for ``litellm`` -> ``llmrpc``, run as a program: twice
through the real gateway (one upstream call, the second is a cache hit) with its Lunary events sent
from the script's own process; and the same script with ``litellm`` against the same fakes, compared."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream, JSONReply, RecordedRequest, Reply
from tests.upstreams import openai as oai

SCRIPT = '''\
import llmrpc
import openai
import os
from llmrpc.caching.caching import Cache
llmrpc.cache = Cache(type="disk")
os.environ["LUNARY_PUBLIC_KEY"] = "your-lunary-public-key"
llmrpc.input_callback = ["lunary"]
llmrpc.success_callback = ["lunary"]
llmrpc.failure_callback = ["lunary"]
try:
    response = llmrpc.completion(model="openai/mistral", api_key="sk-1234", api_base="http://0.0.0.0:4000",
        temperature=0.7, messages=[{"role": "user", "content": "Hello, whats the weather in San Francisco??"}],
        caching=True, user="ishaan_litellm", num_retries=5)
    print(response)
except openai.OpenAIError as e:
    print(e)
'''
QUESTION = "Hello, whats the weather in San Francisco??"
# Every key the lunary SDK's track_event puts in an event.
EVENT_KEYS = {
    "event", "type", "name", "userId", "userProps", "tags", "threadTags", "runId", "parentRunId", "timestamp",
    "message", "input", "output", "error", "feedback", "runtime", "tokensUsage", "metadata", "params",
    "templateId", "appId", "threadMetadata",
}  # fmt: skip


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=oai.default_handler) as up:
        yield up


@pytest.fixture
def lunary() -> Iterator[FakeUpstream]:
    def accept(req: RecordedRequest) -> Reply:
        return JSONReply(200, {"ok": True})

    with FakeUpstream(accept) as server:
        yield server


@pytest.fixture
def gateway() -> Iterator[GatewayThread]:
    # No provider keys on the gateway: the script brings its own api_key and api_base.
    with GatewayThread(gateway_settings({})) as gw:
        yield gw


def run_script(source: str, cwd: Path, lunary: FakeUpstream, gateway: GatewayThread) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "LUNARY_API_URL": lunary.url,
        "LLMRPC_SERVER": gateway.address, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    done = subprocess.run([sys.executable, "-c", source], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def lunary_events(server: FakeUpstream) -> list[dict[str, Any]]:
    for request in server.requests:
        assert request.path == "/v1/runs/ingest"
        assert request.headers["authorization"] == "Bearer your-lunary-public-key"
    return [event for request in server.requests for event in request.json()["events"]]


def twice(source: str, tmp: Path, upstream: FakeUpstream, lunary: FakeUpstream,
          gateway: GatewayThread) -> tuple[list[str], list[dict[str, Any]]]:
    tmp.mkdir()
    source = source.replace("http://0.0.0.0:4000", upstream.url)
    outputs = [run_script(source, tmp, lunary, gateway) for _ in range(2)]
    return outputs, lunary_events(lunary)


def test_script_twice_makes_one_upstream_call_and_reports_to_lunary(
        tmp_path: Path, upstream: FakeUpstream, lunary: FakeUpstream, gateway: GatewayThread) -> None:
    outputs, events = twice(SCRIPT, tmp_path / "llmrpc", upstream, lunary, gateway)
    assert len(upstream.requests) == 1  # the second run is answered by the gateway's cache
    sent = upstream.requests[0]
    assert sent.headers["authorization"] == "Bearer sk-1234"
    assert sent.json() == {"model": "mistral", "messages": [{"role": "user", "content": QUESTION}],
                           "temperature": 0.7, "user": "ishaan_litellm"}
    for out in outputs:
        assert out.startswith("ModelResponse(id='chatcmpl-123'") and f"content='echo: {QUESTION}'" in out
    assert [e["event"] for e in events] == ["start", "end", "start", "end"]
    for start, end in (events[0:2], events[2:4]):
        assert set(start) == set(end) == EVENT_KEYS
        assert start["runId"] == end["runId"] and start["type"] == end["type"] == "llm"
        assert start["name"] == "mistral" and start["userId"] == "ishaan_litellm"
        assert start["input"] == {"role": "user", "content": QUESTION} and start["params"] == {"temperature": 0.7}
        assert end["output"] == {"role": "assistant", "content": f"echo: {QUESTION}"}
        assert end["tokensUsage"] == {"completion": 7, "prompt": 5}
    assert events[0]["runId"] != events[2]["runId"]
    assert all("sk-1234" not in r.body.decode() for r in lunary.requests)


@pytest.mark.timeout(600)
def test_litellm_runs_the_same_script_the_same_way(
        tmp_path: Path, upstream: FakeUpstream, lunary: FakeUpstream, gateway: GatewayThread) -> None:
    pytest.importorskip("litellm", reason="the parity extra (make install) installs LiteLLM")
    ours, our_events = twice(SCRIPT, tmp_path / "llmrpc", upstream, lunary, gateway)
    our_calls = len(upstream.requests)
    upstream.reset()
    lunary.reset()
    theirs, their_events = twice(SCRIPT.replace("llmrpc", "litellm"), tmp_path / "litellm", upstream, lunary,
                                 gateway)
    assert our_calls == len(upstream.requests) == 1
    shared = (
        "ModelResponse(id='chatcmpl-123', created=1700000000, model='mistral', object='chat.completion', "
        "system_fingerprint='fp_fake', choices=[Choices(finish_reason='stop', index=0, "
        f"message=Message(content='echo: {QUESTION}', role='assistant', tool_calls=None, function_call=None",
        "usage=Usage(completion_tokens=7, prompt_tokens=5, total_tokens=12, "
        "completion_tokens_details=CompletionTokensDetailsWrapper(accepted_prediction_tokens=0, audio_tokens=0, "
        "reasoning_tokens=0, rejected_prediction_tokens=0, text_tokens=None",
        "service_tier='default')",
    )
    for out in ours + theirs:
        assert all(piece in out for piece in shared), out
    assert [e["event"] for e in our_events] == [e["event"] for e in their_events] == ["start", "end"] * 2
    for mine, litellm_event in zip(our_events, their_events, strict=True):
        assert set(mine) == set(litellm_event) == EVENT_KEYS
        for key in ("type", "userId", "input", "output", "tokensUsage", "error", "parentRunId", "tags"):
            assert mine[key] == litellm_event[key], key
        assert {k for k, v in mine.items() if v is not None} - {"metadata", "params"} == {
            k for k, v in litellm_event.items() if v is not None} - {"metadata", "params"}
    assert our_events[0]["name"] == their_events[0]["name"] == "mistral"  # (LiteLLM's cache hit keeps the prefix)
    assert their_events[0]["runtime"] == "litellm" and our_events[0]["runtime"] == "llmrpc"
