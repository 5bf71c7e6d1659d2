"""SIGHUP reloads the config file of a real ``llmrpc-server`` subprocess (one process and
``--workers 2``): calls in flight finish on the old config, new calls use the new one, and a file
that does not load keeps the running config and logs why."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmrpc
import pytest
import yaml

from tests.process_support import ServerProcess
from tests.support import free_port, wait_serving
from tests.upstreams import FakeUpstream
from tests.upstreams import openai as oai
from tests.upstreams.server import StallReply

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream(default=oai.default_handler) as a, FakeUpstream(default=oai.default_handler) as b:
        yield a, b


def config(up: FakeUpstream, dep_id: str) -> dict[str, Any]:
    return {"model_list": [{"model_name": "gpt", "model_info": {"id": dep_id},
                            "litellm_params": {"model": "openai/gpt-4o", "api_base": up.url,
                                               "api_key": "os.environ/RELOAD_TEST_KEY"}}]}


def write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)  # as an editor or a config-management tool writes it: whole or not at all


def answered_by(client: llmrpc.Client) -> str:
    resp = client.completion(model="gpt", messages=MESSAGES)
    return str(resp._hidden_params["model_id"])


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELOAD_TEST_KEY", "sk-reload")


@pytest.mark.usefixtures("server_env")
def test_sighup_swaps_the_config_and_keeps_it_when_the_new_file_is_bad(
        tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = upstreams
    path = tmp_path / "config.yaml"
    write(path, config(a, "first"))
    port = free_port()
    server = ServerProcess(tmp_path, "--config", str(path), "--host", "127.0.0.1", "--port", str(port))
    try:
        wait_serving(f"127.0.0.1:{port}")
        with llmrpc.Client(f"127.0.0.1:{port}") as client:
            assert answered_by(client) == "first"
            # A call in flight across the reload finishes on the config it started with.
            a.enqueue(StallReply(seconds=1.5))
            in_flight: list[str] = []
            worker = threading.Thread(target=lambda: in_flight.append(answered_by(client)))
            worker.start()
            assert a.wait_for(lambda: len(a.requests) == 2, timeout=30)
            write(path, config(b, "second"))
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for("SIGHUP: reloaded")
            assert answered_by(client) == "second"
            worker.join(30)
            assert in_flight == ["first"]
            # A bad file: the running config stays, the log says why (the field's path).
            bad = config(a, "third")
            bad["model_list"][0]["litellm_params"]["rpm"] = "lots"
            write(path, bad)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for("not reloaded")
            assert "model_list[0].litellm_params.rpm: expected an integer" in server.stderr
            assert answered_by(client) == "second"
        assert {r.headers["authorization"] for r in [*a.requests, *b.requests]} == {"Bearer sk-reload"}
    finally:
        server.stop()


@pytest.mark.usefixtures("server_env")
def test_sighup_reloads_every_worker(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = upstreams
    path = tmp_path / "config.yaml"
    write(path, config(a, "first"))
    port = free_port()
    server = ServerProcess(tmp_path, "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "2")
    try:
        server.wait_for("listening on", count=2)
        wait_serving(f"127.0.0.1:{port}")
        write(path, config(b, "second"))
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("SIGHUP: reloaded", count=2)
        answers = set()
        for _ in range(12):  # fresh connections land on either worker
            with llmrpc.Client(f"127.0.0.1:{port}") as client:
                answers.add(answered_by(client))
        assert answers == {"second"}
        assert not a.requests
    finally:
        server.stop()


def test_missing_environment_variable_is_a_startup_error(tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELOAD_TEST_KEY", raising=False)
    path = tmp_path / "config.yaml"
    write(path, config(upstreams[0], "first"))
    server = ServerProcess(tmp_path, "--config", str(path), "--host", "127.0.0.1", "--port", "0")
    assert server.proc.wait(60) == 2
    server.stop()
    assert ("bad setting: model_list[0].litellm_params.api_key: environment variable RELOAD_TEST_KEY is not set"
            in server.stderr)
