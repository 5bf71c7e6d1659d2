# llmrpc developer commands. `make run` and `make test` install everything they need first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 50051
# Code generators pinned in tools/protogen (buf, protoc-gen-es), installed there from the npm registry or cache.
PROTOGEN := tools/protogen/node_modules/.installed-stamp
BUF := tools/protogen/node_modules/.bin/buf

.PHONY: install run test lint proto proto-check protoset bench bench-scale faults clean gen-ts proto-go

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,parity]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install llmrpc[server,dev,parity] (editable; parity = LiteLLM for the parity tests)

run: install ## run the gateway on its embedded defaults (mock provider, SQLite cache, keys from env)
	$(BIN)/llmrpc-server --port $(PORT)

test: install ## lint + the whole test suite (what .ci/run runs)
	$(MAKE) lint
	@# The shared-state tests need Debian's redis-server: installed here when root, else the command is printed.
	sh scripts/install_redis.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install $(PROTOGEN) ## ruff, mypy --strict, import layers, buf lint + breaking (FILE) vs main, generated stubs fresh
	$(BIN)/ruff check client server tests bench scripts
	$(BIN)/mypy client/llmrpc server/llmrpc_server
	$(BIN)/lint-imports --no-cache  # the backend chain imports one way: pyproject.toml [tool.importlinter]
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/python scripts/gen_ts.py --check
	@# gen/go needs Debian's protoc-gen-go/-grpc: installed here when root, else the command is printed.
	sh scripts/install_polyglot_toolchains.sh go
	$(BIN)/python scripts/gen_go.py --check
	$(BUF) lint protos
	@# Contract changes must be additive: compare with main (when the clone has it).
	@if git rev-parse --verify -q main >/dev/null; then \
		$(BUF) breaking protos --against '.git#branch=main,subdir=protos'; fi

proto: install ## regenerate client/llmrpc/v1, gen/ts and gen/go from protos/
	$(BIN)/python scripts/gen_proto.py
	$(MAKE) gen-ts
	$(MAKE) proto-go

proto-go: install ## regenerate the Go package gen/go/llmrpc/v1 from protos/ (Debian's pinned plugins)
	sh scripts/install_polyglot_toolchains.sh go
	$(BIN)/python scripts/gen_go.py

protoset: $(PROTOGEN) ## descriptor set for `grpcurl -protoset llmrpc.protoset` (decodes google.rpc details)
	$(BUF) build protos -o llmrpc.protoset

$(PROTOGEN): tools/protogen/package-lock.json
	npm ci --prefix tools/protogen --no-audit --no-fund
	touch $@

gen-ts: install $(PROTOGEN) ## regenerate the committed TypeScript package gen/ts (protobuf-es) from protos/
	$(BIN)/python scripts/gen_ts.py

bench: install ## gateway vs direct upstream call, same run; then 1,000 concurrent slow streams
	$(BIN)/python -m bench

bench-scale: install ## 1 vs 2 replicas behind real Envoy (calls/s, CPU per call of every process), cache hit via Redis vs SQLite
	-sh scripts/install_redis.sh  # the Redis cache figures are skipped without it
	$(BIN)/python -m bench.bench_scale

faults: install ## the fault-injection suite: upstream faults, fallbacks, timeouts
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_faults.py tests/test_fallbacks.py tests/test_timeouts.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache llmrpc.protoset .polyglot-build
