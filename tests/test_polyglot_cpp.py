"""A C++ program built from generated C++ stubs calls the gateway: unary with a deadline, a stream,
a JsonStringToMessage tool schema, decoded error details, bearer auth and a cancelled stream (examples/cpp)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polyglot_native import Scenario, build_example, check_output, ensure_toolchain, run_example, scenario

# The first run installs the toolchain and compiles the stubs; later runs reuse .polyglot-build.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def example() -> Path:
    ensure_toolchain("cpp")
    return build_example("cpp") / "llmrpc-example-cpp"


@pytest.fixture
def sc() -> Iterator[Scenario]:
    with scenario() as running:
        yield running


def test_cpp_example_against_the_gateway(example: Path, sc: Scenario) -> None:
    check_output(run_example([str(example)], sc.gateway.address), sc, "C++")
