"""examples/node (grpc-js + proto-loader, protos loaded at runtime) against the real gateway and a fake OpenAI.

Checks what a Node service actually gets: the answer, a tool's JSON schema arriving upstream intact (proto-loader
silently empties a plain-object Struct; the example's toStruct fixes it), a Struct coming back, decoded
ErrorInfo/BadRequest from the status-details trailer, bearer auth, a deadline, and a cancelled stream reaching
the upstream as a dropped connection.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polyglot_js import CITATIONS, WEATHER_SCHEMA, handler, npm_install
from tests.support import GatewayThread, gateway_settings
from tests.upstreams import FakeUpstream

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
TOKEN = "tok-node"


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
def installed() -> None:
    npm_install(EXAMPLE)


def run_demo(gateway: GatewayThread, token: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMRPC_SERVER": gateway.address, "LLMRPC_TOKEN": token, "LLMRPC_MODEL": "openai/gpt-4o",
           "LLMRPC_KEYLESS_MODEL": "anthropic/claude-sonnet-4-5"}
    return subprocess.run(["node", "demo.mjs"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_node_example_end_to_end(installed: None, gateway: GatewayThread, upstream: FakeUpstream) -> None:
    upstream.reset()
    out = run_demo(gateway, TOKEN)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)

    unary = result["unary"]
    assert unary["content"] == "echo: Hello from Node"
    assert unary["index"] == 0 and unary["finish_reason"] == "stop"  # proto-loader defaults: true
    assert unary["usage"]["total_tokens"] == 12 and unary["created"].isdigit()  # longs: String

    assert result["stream"]["text"] == "echo: Stream to Node"
    assert result["stream"]["usage"]["prompt_tokens"] == 5

    sent = [r.json() for r in upstream.requests if r.method == "POST" and "tools" in r.json()]
    assert [t["function"]["parameters"] for t in sent[0]["tools"]] == [WEATHER_SCHEMA]  # Struct survived
    tool = result["tool"]
    assert tool["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert tool["provider_specific_fields"] == {"citations": CITATIONS}  # and came back through fromStruct

    bad = result["bad_request"]
    assert (bad["code"], bad["reason"], bad["domain"]) == ("INVALID_ARGUMENT", "INVALID_REQUEST", "llmrpc.dev")
    assert bad["field_violations"][0]["field"] == "temperature"
    missing = result["key_missing"]
    assert (missing["code"], missing["reason"]) == ("FAILED_PRECONDITION", "PROVIDER_API_KEY_MISSING")
    assert missing["metadata"]["envVars"] == "ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN"

    assert result["deadline"] == "DEADLINE_EXCEEDED"
    # Chunks already in flight may still arrive after cancel(); far fewer than the 200 the upstream would send.
    assert result["cancel"]["code"] == "CANCELLED" and 3 <= result["cancel"]["seen"] < 100
    assert upstream.wait_for(lambda: upstream.disconnects >= 1, timeout=10)  # the upstream saw the drop


def test_node_example_without_the_right_token_is_refused(installed: None, gateway: GatewayThread) -> None:
    out = run_demo(gateway, "not-the-token")
    assert out.returncode != 0
    assert "UNAUTHENTICATED" in out.stderr
