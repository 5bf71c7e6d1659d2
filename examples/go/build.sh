#!/bin/sh
# Builds the example offline against Debian's Go sources (scripts/install_polyglot_toolchains.sh go):
#   examples/go/build.sh [OUT_DIR]   -> OUT_DIR/llmrpc-example-go   (default OUT_DIR: .polyglot-build/go)
# GOPATH mode (GO111MODULE=off) resolves imports from /usr/share/gocode, where Debian's golang-*-dev packages
# put their sources, so neither the module proxy nor a go.sum is needed. With the module proxy, `go run .`
# in this folder works too (go.mod replaces the generated package with ../../gen/go).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/.polyglot-build/go}" && cd "${1:-$ROOT/.polyglot-build/go}" && pwd)
# A private GOPATH whose github.com/llmrpc/llmrpc is this checkout.
mkdir -p "$OUT/gopath/src/github.com/llmrpc"
ln -sfn "$ROOT" "$OUT/gopath/src/github.com/llmrpc/llmrpc"
cd "$OUT/gopath/src/github.com/llmrpc/llmrpc/examples/go"
GO111MODULE=off GOPATH="$OUT/gopath:/usr/share/gocode" GOCACHE="$OUT/cache" GOFLAGS= \
    go build -o "$OUT/llmrpc-example-go" .
