"""The contract is a product: stubs are fresh, buf STANDARD lint passes, everything is commented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run([sys.executable, "scripts/gen_proto.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node) is not installed")
def test_buf_lint_standard_is_clean() -> None:
    result = subprocess.run(["npx", "--yes", "@bufbuild/buf", "lint", "protos"], cwd=ROOT, capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "set.pb"
    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTOS)) for p in sorted((PROTOS / "llmrpc" / "v1").glob("*.proto"))]
    assert protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", "--include_source_info",
                        f"--descriptor_set_out={out}", *files]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _undocumented(fd: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Paths of messages, fields, enums, values, services and methods without a leading comment."""
    commented = {tuple(loc.path) for loc in fd.source_code_info.location if loc.leading_comments.strip()}
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in commented:
            missing.append(f"{fd.name}: {name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        check(path, prefix)
        for i, field in enumerate(msg.field):
            check((*path, 2, i), f"{prefix}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            if nested.options.map_entry:
                continue  # synthesized by protoc for map<> fields
            walk_message(nested, (*path, 3, i), f"{prefix}.{nested.name}")

    for i, msg in enumerate(fd.message_type):
        walk_message(msg, (4, i), msg.name)
    for i, enum in enumerate(fd.enum_type):
        check((5, i), enum.name)
        for j, value in enumerate(enum.value):
            check((5, i, 2, j), f"{enum.name}.{value.name}")
    for i, service in enumerate(fd.service):
        check((6, i), service.name)
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_message_field_and_rpc_has_a_comment(tmp_path: Path) -> None:
    missing = [m for fd in _descriptor_set(tmp_path).file for m in _undocumented(fd)]
    assert missing == []


def test_every_int64_is_a_string_in_javascript(tmp_path: Path) -> None:
    """protobuf-es maps a plain int64 to bigint, which JSON.stringify cannot serialize: every 64-bit integer field
    carries jstype = JS_STRING (a string, as in proto JSON; the wire is unchanged)."""
    wide = {descriptor_pb2.FieldDescriptorProto.TYPE_INT64, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
            descriptor_pb2.FieldDescriptorProto.TYPE_SINT64, descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64,
            descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64}

    def fields(msgs: Iterable[descriptor_pb2.DescriptorProto], prefix: str) -> Iterator[tuple[str, Any]]:
        for msg in msgs:
            yield from ((f"{prefix}{msg.name}.{f.name}", f) for f in msg.field)
            yield from fields(msg.nested_type, f"{prefix}{msg.name}.")

    plain = [name for fd in _descriptor_set(tmp_path).file for name, f in fields(fd.message_type, "")
             if f.type in wide and f.options.jstype != descriptor_pb2.FieldOptions.JS_STRING]
    assert plain == []


def test_vendored_google_rpc_protos_match_what_the_server_sends(tmp_path: Path) -> None:
    """protos/google/rpc (copied from googleapis-common-protos) declares the same messages, fields and numbers as
    the package the server encodes error details with, so every language decodes them the same."""
    from google.rpc import error_details_pb2, status_pb2

    out = tmp_path / "rpc.pb"
    include = Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={out}",
                        "google/rpc/status.proto", "google/rpc/error_details.proto"]) == 0
    vendored = {fd.name: fd for fd in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}

    def shape(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple[str, int, int, str]]]:
        out: dict[str, list[tuple[str, int, int, str]]] = {}
        todo = [(m, m.name) for m in fd.message_type]
        while todo:
            msg, name = todo.pop()
            out[name] = [(f.name, f.number, f.type, f.type_name) for f in msg.field]
            todo += [(n, f"{name}.{n.name}") for n in msg.nested_type]
        return out

    for module in (status_pb2, error_details_pb2):
        shipped = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(shipped)
        assert shape(vendored[shipped.name]) == shape(shipped), shipped.name
    assert "Apache License" in (PROTOS / "google" / "rpc" / "LICENSE").read_text()
