"""A Node.js service generates stubs from protos/ at runtime and calls the gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import GatewayThread

NODE_DIR = Path(__file__).parent / "node"
pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="Node.js is not installed")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True,
                       timeout=300)
    return NODE_DIR / "node_modules"


def test_node_client_unary_stream_and_error(node_modules: Path, mock_gateway: GatewayThread) -> None:
    out = subprocess.run(["node", str(NODE_DIR / "complete.mjs"), mock_gateway.address], capture_output=True,
                         text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["unary"]["choices"][0]["message"]["content"].endswith("You said: Hello from Node")
    assert result["unary"]["usage"]["total_tokens"] == 30
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in result["chunks"] if c.get("choices"))
    assert text.endswith("You said: Hello from Node")
    assert result["chunks"][-1]["usage"]["prompt_tokens"] == 10
    assert result["error"]["code"] == 3  # INVALID_ARGUMENT
    assert "messages" in result["error"]["details"]
