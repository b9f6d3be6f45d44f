# herald's commands. `make` alone lists them; CI runs the same targets.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

CARGO ?= cargo

include mk/chart.mk
include mk/fuzz.mk
include mk/bench.mk
include mk/js.mk
include mk/redis.mk

.PHONY: help run build test test-rust lint fmt cluster cluster-redis e2e

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort -u | \
		awk 'BEGIN {FS = ":.*## "}; !seen[$$1]++ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

run: ## Build and run one pod: WebSocket on :8080, gRPC on :9090, the demo chat, no Kubernetes
	$(CARGO) build --release --bin herald
	@echo "herald: open http://127.0.0.1:8080/demo (two tabs to chat); Ctrl-C stops it"
	target/release/herald serve --demo --client-publish --presence-topics='*'

build: ## Build the release binary
	$(CARGO) build --release --locked --bin herald

test: test-rust test-js chart-test deploy-check ## Run every test: Rust unit and integration tests, JavaScript client and demo, chart checks
	@echo "make test: all passed"

test-rust: nats-server redis-server ## Rust unit and integration tests (cargo nextest when installed)
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --all-targets --no-fail-fast; \
	else \
		$(CARGO) test --locked --all-targets --no-fail-fast; \
	fi
	$(CARGO) test --locked --doc

lint: ## rustfmt check, clippy with warnings as errors, and the fuzz targets still build
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(MAKE) fuzz-build

fmt: ## Format the code
	$(CARGO) fmt --all

e2e: ## Against the cluster KUBECONFIG names: install the chart, check cross-pod fan-out (not in make test)
	tests/e2e/cross_pod.sh

cluster: ## Run a local 3-pod cluster (static discovery on 127.0.0.1-3); Ctrl-C stops it
	$(CARGO) build --release --bin herald
	@peers=127.0.0.1:7070,127.0.0.2:7070,127.0.0.3:7070; pids=(); \
	trap 'kill $${pids[@]} 2>/dev/null; wait' EXIT INT TERM; \
	for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do \
		target/release/herald serve --http-addr=$$ip:8080 --grpc-addr=$$ip:9090 --peer-addr=$$ip:7070 \
			--discovery=static --peers=$$peers & pids+=($$!); \
	done; \
	echo "herald cluster up: ws://127.0.0.{1,2,3}:8080/ws, gRPC http://127.0.0.{1,2,3}:9090"; \
	wait

cluster-redis: redis-server ## The same 3 pods on the Redis backend (a redis-server on 127.0.0.1:6379, no discovery); Ctrl-C stops it
	$(CARGO) build --release --bin herald
	@pids=(); trap 'kill $${pids[@]} 2>/dev/null; wait' EXIT INT TERM; \
	$(REDIS_SERVER) --bind 127.0.0.1 --port 6379 --save '' --appendonly no & pids+=($$!); \
	for ip in 127.0.0.1 127.0.0.2 127.0.0.3; do \
		target/release/herald serve --http-addr=$$ip:8080 --grpc-addr=$$ip:9090 --peer-addr=$$ip:7070 \
			--broadcast=redis --redis-url=redis://127.0.0.1:6379 & pids+=($$!); \
	done; \
	echo "herald on Redis: ws://127.0.0.{1,2,3}:8080/ws, gRPC http://127.0.0.{1,2,3}:9090"; \
	wait
