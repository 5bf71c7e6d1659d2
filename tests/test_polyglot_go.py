"""A Go program built on the committed gen/go package calls the gateway: unary with a deadline, a stream,
a structpb tool schema, decoded error details, bearer auth and a cancelled stream (examples/go)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.polyglot_native import Scenario, build_example, check_output, ensure_toolchain, run_example, scenario

# The first run installs the toolchain and compiles (gRPC itself, for Go); later runs reuse .polyglot-build.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def example() -> Path:
    ensure_toolchain("go")
    return build_example("go") / "llmrpc-example-go"


@pytest.fixture
def sc() -> Iterator[Scenario]:
    with scenario() as running:
        yield running


def test_go_example_against_the_gateway(example: Path, sc: Scenario) -> None:
    check_output(run_example([str(example)], sc.gateway.address), sc, "Go")


def _gen_go() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_go", Path(__file__).parent.parent / "scripts" / "gen_go.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_go_package_is_fresh_and_a_stale_file_is_caught(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_toolchain("go")
    gen_go = _gen_go()
    assert gen_go.stale_files() == []
    copy = tmp_path / "go"
    shutil.copytree(gen_go.GEN, copy)
    chat = copy / "llmrpc" / "v1" / "chat.pb.go"
    chat.write_text(chat.read_text().replace("type Message struct", "type Message2 struct", 1))
    (copy / "llmrpc" / "v1" / "leftover.pb.go").write_text("package llmrpcv1\n")
    monkeypatch.setattr(gen_go, "GEN", copy)
    assert gen_go.stale_files() == ["chat.pb.go", "leftover.pb.go"]
