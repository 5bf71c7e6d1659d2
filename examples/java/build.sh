#!/bin/sh
# examples/java/build.sh [OUT_DIR] -> OUT_DIR/llmrpc-example-java (default OUT_DIR: .polyglot-build/java).
# Incremental: javac runs again only when a source or a proto changed.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../.polyglot-build/java}
mkdir -p "$OUT"
make -s -C "$HERE" OUT="$(cd "$OUT" && pwd)"
