"""buf.gen.yaml generates every language with local plugins, and the committed gen/ts is what it generates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "protogen" / "node_modules" / ".bin" / "buf"
# The plugins buf.gen.yaml runs from PATH, and the Debian bookworm packages that provide them.
PLUGINS = {"protoc": "protobuf-compiler", "protoc-gen-go": "golang-goprotobuf-dev",
           "protoc-gen-go-grpc": "protoc-gen-go-grpc", "grpc_python_plugin": "protobuf-compiler-grpc"}


@pytest.fixture(scope="module")
def buf() -> Path:
    """The pinned generators (tools/protogen), installed as `make lint` does; fail, never skip."""
    if not BUF.exists():
        if shutil.which("npm") is None:
            pytest.fail("npm is required: apt-get install -y nodejs npm")
        subprocess.run(["make", "-s", "tools/protogen/node_modules/.installed-stamp"], cwd=ROOT, check=True,
                       capture_output=True, timeout=600)
    return BUF


def test_committed_typescript_package_is_fresh(buf: Path) -> None:
    result = subprocess.run([sys.executable, "scripts/gen_ts.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_gen_yaml_generates_every_language(buf: Path, tmp_path: Path) -> None:
    missing = [pkg for tool, pkg in PLUGINS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"code generators missing: apt-get install -y {' '.join(sorted(set(missing)))}")
    result = subprocess.run([str(buf), "generate", "--template", "buf.gen.yaml", "-o", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    gen = tmp_path / "gen"
    expected = [
        "ts/llmrpc/v1/completion_service_pb.js", "ts/google/rpc/error_details_pb.d.ts",
        "go/llmrpc/v1/completion_service.pb.go", "go/llmrpc/v1/completion_service_grpc.pb.go",
        "java/dev/llmrpc/v1/CompleteRequest.java",
        "python/llmrpc/v1/completion_service_pb2.py", "python/llmrpc/v1/completion_service_pb2_grpc.py",
    ]
    assert [p for p in expected if not (gen / p).is_file()] == []
    # google.rpc comes from Google's own packages in Go, Java and Python: never generated a second time there.
    assert [p for lang in ("go", "java", "python") for p in (gen / lang).rglob("*") if "google" in p.parts] == []
    go = (gen / "go/llmrpc/v1/chat.pb.go").read_text()
    assert "package llmrpcv1" in go
