#!/bin/sh
# examples/cpp/build.sh [OUT_DIR] -> OUT_DIR/llmrpc-example-cpp (default OUT_DIR: .polyglot-build/cpp).
# Incremental: make rebuilds only what changed.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../.polyglot-build/cpp}
mkdir -p "$OUT"
make -s -C "$HERE" -j2 OUT="$(cd "$OUT" && pwd)"
