"""Regenerate the committed Python stubs from protos/ (``make proto``).

``--check`` regenerates into a temporary directory and fails when the committed
files differ, so a stale stub cannot land.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client"
STUB_DIR = Path("llmrpc") / "v1"


def _plugin(name: str) -> str:
    """mypy-protobuf's plugins live beside this interpreter; the venv need not be on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def generate(out: Path) -> None:
    (out / STUB_DIR).mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / STUB_DIR).glob("*.proto"))
    common = [f"-I{PROTOS}", f"-I{include}"]
    _protoc(*common, f"--python_out={out}", f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--mypy_out={out}", *files)
    # gRPC stubs only for the protos that declare a service: the others' would be empty modules.
    services = _with_services(common, files)
    _protoc(*common, f"--grpc_python_out={out}", f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--mypy_grpc_out={out}", *services)
    grpc_modules = {f"{Path(name).stem}_pb2_grpc{ext}" for name in services for ext in (".py", ".pyi")}
    for leftover in (out / STUB_DIR).glob("*_pb2_grpc.py*"):  # a service no longer declared
        if leftover.name not in grpc_modules:
            leftover.unlink()
    (out / STUB_DIR / "__init__.py").write_text('"""Generated llmrpc.v1 protobuf and gRPC stubs (make proto)."""\n')


def _protoc(*args: str) -> None:
    if protoc.main(["protoc", *args]) != 0:
        raise SystemExit("protoc failed")


def _with_services(common: list[str], files: list[str]) -> list[str]:
    """The ``files`` that declare a service, as protoc itself parses them (a descriptor set)."""
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "set.binpb"
        _protoc(*common, f"--descriptor_set_out={descriptors}", *files)
        parsed = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    return [f.name for f in parsed.file if f.service]


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / STUB_DIR
        names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in (OUT / STUB_DIR).glob("*") if p.is_file()})
        return [n for n in names if not (OUT / STUB_DIR / n).exists() or not (fresh / n).exists()
                or not filecmp.cmp(fresh / n, OUT / STUB_DIR / n, shallow=False)]


def main() -> None:
    if "--check" in sys.argv:
        stale = stale_files()
        if stale:
            raise SystemExit(f"generated stubs are stale, run `make proto`: {stale}")
        print("stubs are fresh")
        return
    generate(OUT)


if __name__ == "__main__":
    main()
