"""Shared by the Go, C++ and Java client tests: the toolchain, the build, the gateway they call and what
every example must print.

Each example (examples/<lang>) runs one scenario against the real gateway, which talks to a fake OpenAI
upstream and requires a bearer token; it prints one ``name: value`` line per result. The fake upstream
answers tools with a tool call, streams slowly (and never ends) when ``extra_body`` carries ``mock_delay``,
and holds the "Still there?" call until it has seen the cancelled stream's connection dropped, so the
example's own cancel (not its exit) is what the upstream observed."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import GatewayThread, gateway_settings
from tests.upstreams import Exchange, FakeUpstream, RecordedRequest, Reply, split_text
from tests.upstreams import openai as oai

__all__ = ["SCHEMA", "TOKEN", "Scenario", "build_example", "check_output", "ensure_toolchain", "run_example",
           "scenario"]

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".polyglot-build"  # gitignored; build outputs are reused by the next run
TOKEN = "polyglot-s3cret"
MODEL = "openai/gpt-4o-mini"
TOOL_ARGS = '{"city":"Paris"}'
SLOW_TEXT = " ".join(f"word{i}" for i in range(40))
# The JSON Schema every example builds with its language's Struct helper; the server restores integral
# numbers (Struct carries doubles), so the upstream must receive exactly this.
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"},
                   "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}
SEEN_CANCEL = "the upstream saw the cancelled stream dropped"


def ensure_toolchain(lang: str) -> None:
    """Install the language's Debian packages when missing (as root); otherwise fail with the command."""
    script = ROOT / "scripts" / "install_polyglot_toolchains.sh"
    done = subprocess.run(["sh", str(script), lang], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{lang} toolchain missing: {done.stderr.strip()}", pytrace=False)


def build_example(lang: str) -> Path:
    """Run examples/<lang>/build.sh into .polyglot-build/<lang>; returns that folder."""
    out = BUILD / lang
    done = subprocess.run(["sh", str(ROOT / "examples" / lang / "build.sh"), str(out)], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"building examples/{lang} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return out


@dataclass
class _AfterDisconnect(Reply):
    """Answers once the upstream has counted a dropped stream (at most `limit` seconds), saying whether it did."""

    upstream: FakeUpstream
    limit: float = 5.0  # under the examples' 10 s deadline, so a missed cancel reads as such

    async def respond(self, ex: Exchange) -> web.StreamResponse:
        waited = 0.0
        while self.upstream.disconnects == 0 and waited < self.limit:
            await ex.wait(0.05)
            waited += 0.05
        text = SEEN_CANCEL if self.upstream.disconnects else "no dropped stream seen"
        return await oai.chat_completion(text).respond(ex)


def _handler(upstream: FakeUpstream) -> Any:
    def handle(req: RecordedRequest) -> Reply:
        body = req.json()
        if body.get("tools"):
            return oai.chat_completion(None, tool_calls=[("call_1", "get_weather", TOOL_ARGS)])
        if body.get("stream") and body.get("mock_delay"):
            return oai.chat_stream(split_text(SLOW_TEXT), delay=0.2, then="hang")
        if oai.last_user_text(body) == "Still there?":
            return _AfterDisconnect(upstream)
        return oai.default_handler(req)

    return handle


@dataclass
class Scenario:
    upstream: FakeUpstream
    gateway: GatewayThread


@contextmanager
def scenario() -> Iterator[Scenario]:
    """A fake OpenAI upstream and the real gateway in front of it, requiring bearer token TOKEN."""
    upstream = FakeUpstream()
    upstream.default = _handler(upstream)
    env = {"OPENAI_API_KEY": "sk-server-key", "OPENAI_API_BASE": ""}
    with upstream:
        env["OPENAI_API_BASE"] = upstream.url
        with GatewayThread(gateway_settings(env, auth_tokens=(TOKEN,))) as gateway:
            yield Scenario(upstream, gateway)


def run_example(argv: list[str], address: str, timeout: float = 120) -> dict[str, list[str]]:
    """Run a built example against ``address`` with the token; its ``name: value`` lines, grouped by name."""
    env = {**os.environ, "LLMRPC_TOKEN": TOKEN}
    done = subprocess.run([*argv, address, MODEL], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"example failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    lines: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        name, sep, value = line.partition(": ")
        if sep:
            lines.setdefault(name, []).append(value)
    return lines


def check_output(out: dict[str, list[str]], sc: Scenario, lang: str) -> None:
    """Everything an example must have done, checked against what it printed and what the upstream got."""
    assert out["unary"] == [f"echo: Hello from {lang}"]
    unary = json.loads(out["unary_json"][0])  # printed with OpenAI (proto) field names
    assert unary["choices"][0]["message"]["content"] == f"echo: Hello from {lang}"
    assert unary["choices"][0]["finish_reason"] == "stop" and unary["usage"]["total_tokens"] == 12
    assert out["stream"] == [f"echo: Stream from {lang}"] and len(out["delta"]) >= 2
    assert out["stream_usage"] == ["12"]
    # The Struct round trip: the schema the example built is what the upstream received.
    assert out["tool_call"] == [f"get_weather {TOOL_ARGS}"]
    tool_requests = [r.json() for r in sc.upstream.requests if r.json().get("tools")]
    assert [r["tools"][0]["function"]["parameters"] for r in tool_requests] == [SCHEMA]
    assert type(tool_requests[0]["tools"][0]["function"]["parameters"]["properties"]["days"]["minimum"]) is int
    assert tool_requests[0]["tools"][0]["function"]["name"] == "get_weather"
    # Decoded from grpc-status-details-bin; the invalid request never reached the upstream.
    assert out["error"] == ["INVALID_ARGUMENT INVALID_REQUEST temperature"]
    assert not [r for r in sc.upstream.requests if "temperature" in r.json()]
    assert out["unauthenticated"] == ["UNAUTHENTICATED API_KEY_INVALID"]
    # The cancel reached the upstream while the example was still running.
    assert out["cancelled"] == ["after 2 deltas (CANCELLED)"]
    assert out["after_cancel"] == [SEEN_CANCEL]
    assert sc.upstream.disconnects == 1
