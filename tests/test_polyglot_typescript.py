"""examples/typescript (the committed gen/ts package, protobuf-es v2 + Connect over gRPC) against the real
gateway and a fake OpenAI: type-checked and compiled with tsc, then run.

Checks the answer, JSON.stringify on a response (int64s are strings via jstype), OpenAI field names from
toJson(useProtoFieldName), a tool's JSON schema arriving upstream intact and a Struct coming back, decoded
ErrorInfo/BadRequest, bearer auth, a deadline, and a cancelled stream reaching the upstream as a dropped
connection.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polyglot_js import CITATIONS, WEATHER_SCHEMA, handler, npm_install
from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "typescript"
TOKEN = "tok-ts"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=handler) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayThread]:
    env = {"OPENAI_API_KEY": "sk-server", "OPENAI_API_BASE": upstream.url}
    with GatewayThread(gateway_settings(env, auth_tokens=(TOKEN,))) as gw:
        yield gw


@pytest.fixture(scope="module")
def built() -> None:
    # npm copies file: dependencies (.npmrc install-links); drop the copy so this run uses gen/ts as committed.
    shutil.rmtree(EXAMPLE / "node_modules" / "@llmrpc" / "protos", ignore_errors=True)
    npm_install(EXAMPLE)
    tsc = subprocess.run([str(EXAMPLE / "node_modules" / ".bin" / "tsc"), "-p", "."], cwd=EXAMPLE,
                         capture_output=True, text=True, timeout=120, check=False)
    assert tsc.returncode == 0, f"tsc failed:\n{tsc.stdout}\n{tsc.stderr}"


def run_demo(gateway: GatewayThread, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMRPC_SERVER": gateway.address, "LLMRPC_TOKEN": token, "LLMRPC_MODEL": "openai/gpt-4o",
           "LLMRPC_KEYLESS_MODEL": "anthropic/claude-sonnet-4-5"}
    return subprocess.run(["node", "dist/demo.js"], cwd=EXAMPLE, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_typescript_example_end_to_end(built: None, gateway: GatewayThread, upstream: FakeUpstream) -> None:
    upstream.reset()
    out = run_demo(gateway, TOKEN)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)

    unary = result["unary"]
    assert unary["content"] == "echo: Hello from TypeScript" and unary["index"] == 0
    assert unary["created"].isdigit() and unary["stringified"] is True
    choice = unary["openai_json"]["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert unary["openai_json"]["usage"]["total_tokens"] == 12

    assert result["stream"] == {"text": "echo: Stream to TypeScript", "usage": {"prompt_tokens": 5,
                                                                              "total_tokens": 12}}

    sent = [r.json() for r in upstream.requests if r.method == "POST" and "tools" in r.json()]
    assert [t["function"]["parameters"] for t in sent[0]["tools"]] == [WEATHER_SCHEMA]
    assert result["tool"] == {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}],
                              "provider_specific_fields": {"citations": CITATIONS}}

    bad = result["bad_request"]
    assert (bad["code"], bad["reason"], bad["domain"]) == ("InvalidArgument", "INVALID_REQUEST", "llmrpc.dev")
    assert bad["field_violations"] == ["temperature"]
    missing = result["key_missing"]
    assert (missing["code"], missing["reason"]) == ("FailedPrecondition", "PROVIDER_API_KEY_MISSING")
    assert missing["metadata"]["envVars"] == "ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN"

    assert result["deadline"] == "DeadlineExceeded"
    assert result["cancel"] == {"code": "Canceled", "seen": 3}  # for-await throws at the next chunk
    assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=10)


def test_typescript_example_without_the_right_token_is_refused(built: None, gateway: GatewayThread) -> None:
    out = run_demo(gateway, "not-the-token")
    assert out.returncode != 0
    assert "missing or invalid gateway credentials" in out.stderr
