"""Shared by the polyglot example tests: the Node toolchain, npm installs, and the fake upstream's script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.upstreams import RecordedRequest, Reply
from tests.upstreams import openai as oai

__all__ = ["CITATIONS", "WEATHER_SCHEMA", "handler", "npm_install", "require_node"]

# The schema the examples send with their tool (kept in step by the tests' assertions).
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}, "unit": {"type": "string",
                                                                                  "enum": ["c", "f"]}},
    "required": ["city"],
}
CITATIONS = ["https://weather.example/paris"]


def require_node() -> None:
    """The toolchain is part of the test: fail (never skip) with the command that installs it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js >= 18 and npm are required: apt-get install -y nodejs npm")


def npm_install(folder: Path) -> None:
    """Install the example's locked dependencies into its own node_modules (reused by later runs)."""
    require_node()
    result = subprocess.run(["npm", "install", "--prefer-offline", "--no-audit", "--no-fund"], cwd=folder,
                            capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        pytest.fail(f"`npm install` in {folder} failed:\n{result.stdout}\n{result.stderr}")


def handler(req: RecordedRequest) -> Reply:
    """Echo, except: a slow long stream for the cancellation step, a tool call (with citations, which come
    back as a Struct) when tools are offered."""
    body = req.json() if req.method == "POST" else {}
    if isinstance(body, dict) and body.get("stream") and oai.last_user_text(body) == "Count to 200 slowly":
        return oai.chat_stream([f"{i} " for i in range(200)], delay=0.05)
    if isinstance(body, dict) and body.get("tools"):
        reply = oai.chat_completion(None, tool_calls=[("call_1", "get_weather", '{"city": "Paris"}')])
        assert isinstance(reply.body, dict)
        reply.body["citations"] = CITATIONS
        return reply
    return oai.default_handler(req)
