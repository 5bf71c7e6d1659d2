"""Regenerate the committed TypeScript package gen/ts from protos/ (``make gen-ts``).

Runs only the protoc-gen-es entry of buf.gen.yaml (so TypeScript needs no Go or Java toolchain), with the
generators pinned in tools/protogen. ``--check`` generates into a temporary directory and fails when a
committed file differs, is missing or is left over, so a stale package cannot land.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "buf.gen.yaml"
OUT = ROOT / "gen" / "ts"
BUF = ROOT / "tools" / "protogen" / "node_modules" / ".bin" / "buf"
# Generated files live in one folder per proto package root; package.json and README.md are hand-written.
GENERATED_ROOTS = ("llmrpc", "google")


def _ts_template() -> dict[str, Any]:
    template: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    plugins = [p for p in template["plugins"] if str(p.get("local", "")).endswith("protoc-gen-es")]
    if len(plugins) != 1:
        raise SystemExit("buf.gen.yaml must have exactly one protoc-gen-es plugin")
    return {**template, "plugins": plugins}


def generate(dest: Path) -> Path:
    """Generate under ``dest`` (as if it were the repository root) and return the TypeScript folder."""
    if not BUF.exists():
        raise SystemExit("code generators missing: run `npm ci --prefix tools/protogen` (or `make gen-ts`)")
    subprocess.run([str(BUF), "generate", "--template", json.dumps(_ts_template()), "-o", str(dest)], cwd=ROOT,
                   check=True)
    return dest / OUT.relative_to(ROOT)


def _files(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for root in GENERATED_ROOTS for p in (base / root).rglob("*") if p.is_file()}


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = sorted(_files(fresh) | _files(OUT))
        return [n for n in names if not (OUT / n).exists() or not (fresh / n).exists()
                or not filecmp.cmp(fresh / n, OUT / n, shallow=False)]


def main() -> None:
    if "--check" in sys.argv:
        stale = stale_files()
        if stale:
            raise SystemExit(f"gen/ts is stale, run `make gen-ts`: {stale}")
        print("gen/ts is fresh")
        return
    for root in GENERATED_ROOTS:  # files of a deleted proto must not linger
        shutil.rmtree(OUT / root, ignore_errors=True)
    generate(ROOT)


if __name__ == "__main__":
    main()
