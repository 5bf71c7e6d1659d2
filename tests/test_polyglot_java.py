"""A Java program built from grpc-java stubs (javac over Debian's jars, no Maven) calls the gateway: unary
with a deadline, a stream, a JsonFormat-parsed Struct tool schema, decoded error details, bearer auth and a
cancelled stream (examples/java)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polyglot_native import Scenario, build_example, check_output, ensure_toolchain, run_example, scenario

# The first run installs the toolchain and compiles (javac); later runs reuse .polyglot-build.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def example() -> Path:
    ensure_toolchain("java")
    return build_example("java") / "llmrpc-example-java"


@pytest.fixture
def sc() -> Iterator[Scenario]:
    with scenario() as running:
        yield running


def test_java_example_against_the_gateway(example: Path, sc: Scenario) -> None:
    check_output(run_example([str(example)], sc.gateway.address), sc, "Java")
