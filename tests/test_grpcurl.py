"""A person debugging with grpcurl: list, describe and call through server reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import GatewayThread

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
pytestmark = pytest.mark.skipif(not Path(GRPCURL).exists(), reason="grpcurl not installed")


def grpcurl(address: str, *args: str, body: dict[str, object] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext"]
    if body is not None:
        cmd += ["-d", json.dumps(body)]
    return subprocess.run([*cmd, address, *args], capture_output=True, text=True, timeout=60, check=False)


def test_list_shows_service_health_and_reflection(mock_gateway: GatewayThread) -> None:
    out = grpcurl(mock_gateway.address, "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                  "llmrpc.v1.CompletionService"]


def test_describe_shows_documented_rpcs(mock_gateway: GatewayThread) -> None:
    out = grpcurl(mock_gateway.address, "describe", "llmrpc.v1.CompletionService")
    assert out.returncode == 0, out.stderr
    assert "rpc Complete ( .llmrpc.v1.CompleteRequest ) returns ( .llmrpc.v1.CompleteResponse )" in out.stdout
    assert "rpc StreamComplete" in out.stdout and "stream .llmrpc.v1.StreamCompleteResponse" in out.stdout
    field = grpcurl(mock_gateway.address, "describe", "llmrpc.v1.CompleteRequest")
    assert "double temperature = 4;" in field.stdout and "repeated .llmrpc.v1.Message messages = 2;" in field.stdout


def test_complete_with_an_openai_shaped_body(mock_gateway: GatewayThread) -> None:
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 0.7,
            "max_tokens": 64}
    out = grpcurl(mock_gateway.address, "llmrpc.v1.CompletionService/Complete", body=body)
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)
    assert resp["object"] == "chat.completion"
    assert resp["choices"][0]["message"]["content"].endswith("You said: Hello!")
    assert resp["usage"]["total_tokens"] == 30


def test_stream_complete_prints_chunks(mock_gateway: GatewayThread) -> None:
    body = {"request": {"model": "mock/echo", "messages": [{"role": "user", "content": "Hi"}]},
            "stream_options": {"include_usage": True}}
    out = grpcurl(mock_gateway.address, "llmrpc.v1.CompletionService/StreamComplete", body=body)
    assert out.returncode == 0, out.stderr
    chunks = [json.loads(c) for c in out.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c.get("choices", []))
    assert text.endswith("You said: Hi")
    assert chunks[-1]["usage"]["total_tokens"] == 30 and "choices" not in chunks[-1]


def test_semantic_error_shows_status_and_details(mock_gateway: GatewayThread) -> None:
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "x"}], "temperature": 7}
    out = grpcurl(mock_gateway.address, "llmrpc.v1.CompletionService/Complete", body=body)
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "temperature" in out.stderr


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"max_tokens": "-5"}, "max_tokens"),  # proto JSON accepts numbers as strings
        ({"tools": [{"function": {"name": "f", "parameters": {"type": "object", "properties": "oops"}}}]},
         "tools[0].function.parameters.properties"),
        ({"tools": [{"function": {"name": "f", "parameters": {"type": "object", "required": "city"}}}]},
         "tools[0].function.parameters.required"),
        ({"messages": [{"role": "user", "content_parts": [{"image_url": {"url": ""}}]}]},
         "messages[0].content_parts[0].image_url.url"),
    ],
)
def test_wrong_types_that_reach_the_server_name_the_field(
    mock_gateway: GatewayThread, patch: dict[str, object], field: str
) -> None:
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "x"}], **patch}
    out = grpcurl(mock_gateway.address, "llmrpc.v1.CompletionService/Complete", body=body)
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and field in out.stderr


def test_wrong_json_types_are_rejected_by_grpcurl_and_the_server_keeps_serving(mock_gateway: GatewayThread) -> None:
    """grpcurl refuses type errors in typed fields while encoding, before anything is sent."""
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}
    out = grpcurl(mock_gateway.address, "llmrpc.v1.CompletionService/Complete", body=body)
    assert out.returncode != 0 and "hot" in out.stderr
    health = grpcurl(mock_gateway.address, "grpc.health.v1.Health/Check", body={})
    assert json.loads(health.stdout)["status"] == "SERVING"


PROTOSET_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def protoset() -> Path:
    """`make protoset`, exactly as the README tells a person debugging to run it."""
    subprocess.run(["make", "-s", "protoset"], cwd=PROTOSET_ROOT, check=True, capture_output=True, timeout=300)
    return PROTOSET_ROOT / "llmrpc.protoset"


def _details(stderr: str) -> dict[str, dict[str, Any]]:
    """grpcurl prints each decoded status detail as `  N)\t{json}`; keyed by its `@type` name."""
    found = [json.loads(line.split("\t", 1)[1]) for line in stderr.splitlines() if ")\t{" in line]
    return {d["@type"].rsplit("/", 1)[-1]: d for d in found}


def _call_with_protoset(address: str, protoset: Path, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", "-protoset", str(protoset), "-d", json.dumps(body), address,
                           "llmrpc.v1.CompletionService/Complete"], capture_output=True, text=True, timeout=60,
                          check=False)


def test_protoset_decodes_error_details(mock_gateway: GatewayThread, protoset: Path) -> None:
    """Without reflection, grpcurl decodes ErrorInfo and BadRequest only from the vendored google/rpc protos."""
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "x"}], "temperature": 7}
    out = _call_with_protoset(mock_gateway.address, protoset, body)
    assert out.returncode != 0 and "InvalidArgument" in out.stderr
    assert "not recognized" not in out.stderr, out.stderr
    details = _details(out.stderr)
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_REQUEST"
    assert details["google.rpc.ErrorInfo"]["domain"] == "llmrpc.dev"
    assert details["google.rpc.BadRequest"]["fieldViolations"][0]["field"] == "temperature"


def test_missing_provider_key_names_the_env_vars_in_error_info(start_gateway: Any, protoset: Path) -> None:
    """error_reason.proto promises metadata `envVars` (comma-separated) on PROVIDER_API_KEY_MISSING."""
    gw = start_gateway(env={})
    body = {"model": "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}
    out = _call_with_protoset(gw.address, protoset, body)
    assert "FailedPrecondition" in out.stderr, out.stderr
    info = _details(out.stderr)["google.rpc.ErrorInfo"]
    assert info["reason"] == "PROVIDER_API_KEY_MISSING"
    assert info["metadata"]["envVars"] == "ANTHROPIC_API_KEY,ANTHROPIC_AUTH_TOKEN"
