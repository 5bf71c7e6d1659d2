"""Reason names have one source, ``protos/llmrpc/v1/error_reason.proto``: the server's ``Reason`` enum
must match the generated ``ErrorReason`` (it refuses to import otherwise, and ``mypy`` makes every
``ServiceError`` take a ``Reason``), no server module spells a reason as a string, and every reason
the thin client maps to an exception class is one the contract defines, checked name by name."""

from __future__ import annotations

import ast
from pathlib import Path

import llmrpc.exceptions
import pytest
from llmrpc_server import reasons
from llmrpc_server.providers.base import ErrorKind
from llmrpc_server.reasons import Reason, contract_names

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server" / "llmrpc_server"
CLIENT_EXCEPTIONS = Path(llmrpc.exceptions.__file__)


def test_reason_is_the_generated_enum_less_its_prefix() -> None:
    assert {r.value for r in Reason} == contract_names()
    assert all(r.value == r.name for r in Reason)
    assert "UNSPECIFIED" not in contract_names()  # the proto3 zero value is no reason


def test_the_server_refuses_to_import_a_reason_list_that_drifted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reasons, "contract_names", lambda: contract_names() | {"NEW_IN_THE_PROTO"})
    with pytest.raises(ImportError, match="only in the proto \\['NEW_IN_THE_PROTO'\\]"):
        reasons._check()


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.name)
def test_every_error_kind_is_a_reason(kind: ErrorKind) -> None:
    assert isinstance(kind.value, Reason)


# Upstream vocabularies that happen to share a name with ours: Google's ErrorInfo reasons in Gemini's
# error bodies are read, never sent.
UPSTREAM_NAMES = {("providers/_gemini_stream.py", "API_KEY_INVALID")}


def _server_reason_literals() -> list[tuple[str, int, str]]:
    """Every string constant in the server package that is a reason name, outside ``reasons.py``."""
    names = contract_names()
    found = []
    for path in sorted(SERVER.rglob("*.py")):
        where = path.relative_to(SERVER).as_posix()
        if where == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                    and (where, node.value) not in UPSTREAM_NAMES):
                found.append((where, node.lineno, node.value))
    return found


def test_no_server_module_spells_a_reason_as_a_string() -> None:
    assert _server_reason_literals() == []


def _client_reason_literals() -> list[str]:
    """The reasons the client's exceptions module names: the keys of ``_BY_REASON`` and every
    string compared with a ``reason``."""
    tree = ast.parse(CLIENT_EXCEPTIONS.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id == "_BY_REASON" and isinstance(node.value, ast.Dict)):
            out += [k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "reason":
            out += [c.value for c in node.comparators if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return out


def test_the_client_source_is_read_as_expected() -> None:
    literals = _client_reason_literals()
    assert set(llmrpc.exceptions._BY_REASON) <= set(literals)
    assert {"PROVIDER_UNAVAILABLE", "PROVIDER_API_KEY_MISSING"} <= set(literals)  # compared with `reason`


@pytest.mark.parametrize("name", _client_reason_literals())
def test_every_reason_the_client_names_is_in_the_contract(name: str) -> None:
    assert name in contract_names()


def test_the_client_maps_every_reason_of_the_contract() -> None:
    assert contract_names() - set(_client_reason_literals()) == set()
