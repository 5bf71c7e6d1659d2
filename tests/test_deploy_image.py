"""The container image as far as it can be tested without a container engine: the Dockerfile's shape,
and its ENTRYPOINT + CMD and HEALTHCHECK command lines, as written, run against the local install with
the image's ENV (the port and cache path overridden, as `docker run -e` would)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dockerfile_parse import DockerfileParser
from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb
from llmrpc.v1 import completion_service_pb2_grpc as pb_grpc

from tests.envoy_front import wait_until
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "image-test-token"


def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, one list per FROM."""
    out: list[list[dict[str, Any]]] = []
    for item in DockerfileParser(str(ROOT)).structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out and item["instruction"] != "COMMENT":
            out[-1].append(item)
    return out


def values(stage: list[dict[str, Any]], instruction: str) -> list[str]:
    return [str(item["value"]) for item in stage if item["instruction"] == instruction]


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form; shell form would need a shell the test does not assume."""
    argv = json.loads(value)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), value
    return argv


def healthcheck_argv() -> list[str]:
    (value,) = values(stages()[-1], "HEALTHCHECK")
    return exec_form(value.split(" CMD ", 1)[1])


def test_dockerfile_builds_from_the_checkout_in_two_slim_stages_and_runs_as_non_root() -> None:
    parser = DockerfileParser(str(ROOT))
    assert parser.is_multistage and all("slim" in image for image in parser.parent_images)
    build, final = stages()[0], stages()[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    for value in values(build, "COPY"):
        *sources, _dest = value.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert f"!{source}" in ignored, f"{source} is excluded from the build context by .dockerignore"
    assert any('pip install ".[server]"' in v for v in values(build, "RUN"))
    assert any(v.startswith("--from=build ") for v in values(final, "COPY"))
    (user,) = values(final, "USER")
    assert int(user.split(":")[0]) != 0
    assert values(final, "EXPOSE") == ["50051"]
    assert parser.envs["LLMRPC_HOST"] == "[::]" and parser.envs["LLMRPC_PORT"] == "50051"
    assert "LLMRPC_ALLOW_UNAUTHENTICATED" not in parser.envs  # callers must authenticate unless told otherwise


def image_command() -> list[str]:
    final = stages()[-1]
    (entrypoint,) = values(final, "ENTRYPOINT")
    (cmd,) = values(final, "CMD")
    argv = exec_form(entrypoint) + exec_form(cmd)
    local = shutil.which(argv[0], path=str(Path(sys.executable).parent))  # the image's PATH puts its venv first
    assert local is not None, f"{argv[0]} is not installed in this environment"
    return [local, *argv[1:]]


def run_healthcheck(env: dict[str, str]) -> int:
    argv = healthcheck_argv()
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode


@pytest.fixture
def image_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    port = free_port()
    image_env = {k: v for k, v in DockerfileParser(str(ROOT)).envs.items() if k != "PATH"}
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_") and not k.endswith("_API_KEY")}
    # As `docker run -e LLMRPC_PORT=... -e LLMRPC_CACHE_PATH=... -e LLMRPC_AUTH_TOKENS=...` (a Secret in k8s).
    env = {**inherited, **image_env, "LLMRPC_PORT": str(port), "LLMRPC_CACHE_PATH": str(tmp_path / "cache.sqlite"),
           "LLMRPC_AUTH_TOKENS": TOKEN}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(image_command(), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, env
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


def test_image_command_serves_with_auth_and_its_healthcheck_follows_the_server(
    image_process: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    proc, env = image_process
    wait_until(lambda: run_healthcheck(env) == 0, 60, "the HEALTHCHECK command to pass")
    request = pb.CompleteRequest(model="mock/echo", messages=[chat_pb2.Message(role="user", content="hi")])
    # The image listens on [::]: reach it over IPv6 loopback as well as IPv4.
    for host in ("127.0.0.1", "[::1]"):
        with grpc.insecure_channel(f"{host}:{env['LLMRPC_PORT']}") as channel:
            stub = pb_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Complete(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            resp = stub.Complete(request, timeout=10, metadata=[("authorization", f"Bearer {TOKEN}")])
            assert resp.choices[0].message.content.endswith("hi")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert run_healthcheck(env) != 0
