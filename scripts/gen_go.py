"""Regenerate the committed Go package ``gen/go/llmrpc/v1`` from protos/ (``make proto-go``).

``--check`` regenerates into a temporary directory and fails when a committed file differs, so a stale
Go package cannot land. The plugins are the ones Debian bookworm ships (scripts/install_polyglot_toolchains.sh
installs them); their versions are pinned below and recorded in every generated file's header, because
another plugin version writes different code and the check would then report noise instead of staleness.
"""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PINNED", "generate", "main", "stale_files", "tool_versions"]

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen" / "go"
PACKAGE = Path("llmrpc") / "v1"
MODULE = "github.com/llmrpc/llmrpc/gen/go"
INSTALL_HINT = "install them with `sudo scripts/install_polyglot_toolchains.sh go`"

# Tool -> (command printing its version, the version the committed code was generated with).
PINNED: dict[str, tuple[list[str], str]] = {
    "protoc": (["protoc", "--version"], "3.21.12"),
    "protoc-gen-go": (["protoc-gen-go", "--version"], "1.28.1"),
    "protoc-gen-go-grpc": (["protoc-gen-go-grpc", "--version"], "1.0"),
}


def tool_versions() -> dict[str, str]:
    """The version each plugin reports; exits with the install command when one is missing."""
    found: dict[str, str] = {}
    for name, (cmd, _) in PINNED.items():
        if shutil.which(cmd[0]) is None:
            raise SystemExit(f"{name} is not installed; {INSTALL_HINT}")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        match = re.search(r"(\d+(?:\.\d+)+)", out)
        found[name] = match.group(1) if match else out.strip()
    return found


def _check_pins(found: dict[str, str]) -> None:
    wrong = {name: v for name, v in found.items() if v != PINNED[name][1]}
    if wrong:
        want = {name: PINNED[name][1] for name in wrong}
        raise SystemExit(f"gen/go is pinned to {want} but found {wrong}; {INSTALL_HINT} (Debian bookworm)")


def _record_grpc_versions(path: Path, found: dict[str, str]) -> None:
    """protoc-gen-go records its versions in the header; protoc-gen-go-grpc 1.0 does not, so add the same."""
    first, rest = path.read_text().split("\n", 1)
    header = (f"// versions:\n// \tprotoc-gen-go-grpc v{found['protoc-gen-go-grpc']}\n"
              f"// \tprotoc             v{found['protoc']}\n")
    path.write_text(f"{first}\n{header}{rest}")


def generate(out: Path) -> None:
    """Write the Go package for protos/llmrpc/v1 under ``out`` (the module root)."""
    found = tool_versions()
    _check_pins(found)
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    subprocess.run(
        ["protoc", f"-I{PROTOS}", f"--go_out={out}", f"--go_opt=module={MODULE}", f"--go-grpc_out={out}",
         f"--go-grpc_opt=module={MODULE}", *files],
        check=True,
    )
    for grpc_file in (out / PACKAGE).glob("*_grpc.pb.go"):
        _record_grpc_versions(grpc_file, found)


def stale_files() -> list[str]:
    """Generated files that are missing, extra or different in gen/go/llmrpc/v1."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE
        names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in (GEN / PACKAGE).glob("*.go")})
        return [n for n in names if not (GEN / PACKAGE / n).exists() or not (fresh / n).exists()
                or not filecmp.cmp(fresh / n, GEN / PACKAGE / n, shallow=False)]


def main() -> None:
    if "--check" in sys.argv:
        stale = stale_files()
        if stale:
            raise SystemExit(f"gen/go is stale, run `make proto-go`: {stale}")
        print("gen/go is fresh")
        return
    for old in (GEN / PACKAGE).glob("*.go"):
        old.unlink()
    generate(GEN)


if __name__ == "__main__":
    main()
