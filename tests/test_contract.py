"""The contract is a product: stubs are fresh, buf STANDARD lint passes, everything is commented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
