# Benchmarks: the end-to-end scenarios S1-S4 on a local 2-pod cluster, and
# the criterion micro-benchmarks of the hot paths.
#
# Included by the main Makefile. `make bench` writes
# bench/results/<UTC date>-<short commit>.md (committed) and raw JSON lines
# to bench/results/*.json (ignored).

PYTHON3 ?= python3
CARGO   ?= cargo

.PHONY: bench bench-quick bench-history bench-micro bench-floor bench-scale bench-churn

bench: ## Run S1-S4 on a local 2-pod cluster (127.0.0.1-2); results to bench/results/
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/run.py

bench-quick: ## A shorter `make bench` (fewer S2 steps, shorter runs), to try the harness
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/run.py --quick

bench-history: ## S1, S2 and S4 with history on and off, one sitting; report to bench/results/
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/run.py --history-cost

bench-scale: ## Cost of a publish against pod count (2, 4, 8, 16 pods on 127.0.0.x), three load shapes; report to bench/results/
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/scale.py

bench-churn: ## Presence churn: 1,000 joins and leaves a second across 3 pods beside a steady load, presence on and off; report to bench/results/
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/churn.py

bench-micro: ## Criterion micro-benchmarks: topic, frame encoding, hub fan-out and lookup, loopback write
	$(CARGO) bench --bench hot_paths

# The floor: S1's and S4's load shapes served by an ideal server (threads
# copying prepared frames to sockets), so herald's figures can be read
# against what this machine allows. About five minutes.
FLOOR_REPORT = bench/results/$(shell date -u +%Y-%m-%d)-floor-$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown).md

bench-floor: ## What an ideal server reaches on S1's and S4's load shapes on this machine; report to bench/results/
	@mkdir -p bench/results
	{ echo "# Machine floor (benches/floor.rs), $$(date -u '+%Y-%m-%d %H:%M') UTC"; echo; \
	  echo "- Machine: $$(nproc) CPUs, $$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $$(uname -r)"; \
	  echo "- Medians of 3 runs of 10 s per case, cases interleaved; latencies from the publish tick"; echo; \
	  $(CARGO) bench --bench floor; } > $(FLOOR_REPORT)
	@cat $(FLOOR_REPORT)

RESUME_REPORT = bench/results/$(shell date -u +%Y-%m-%d)-resume-$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown).md

.PHONY: bench-resume
bench-resume: ## Scenario R: rolling restart of 3 pods with 3,000 resuming users at 200 msg/s; report to bench/results/
	@mkdir -p bench/results
	$(CARGO) bench --bench resume > $(RESUME_REPORT)
	@cat $(RESUME_REPORT)

STORM_REPORT = bench/results/$(shell date -u +%Y-%m-%d)-storm-$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown).md

.PHONY: bench-storm
bench-storm: ## Resume storm: 5,000 users of a SIGKILLed pod resume 100 messages each at once; report to bench/results/
	@mkdir -p bench/results
	$(CARGO) bench --bench resume -- storm > $(STORM_REPORT)
	@cat $(STORM_REPORT)

# Broadcast backends side by side: S1, S2 and S4 on the mesh, on Redis and
# on Socket.IO with its Redis adapter (the reference server in
# bench/socketio, its packages installed from the committed lock file), then
# scenario R on the mesh and on Redis; one sitting, about 11 minutes after
# the builds.
NPM ?= npm
SOCKETIO_MODULES := bench/socketio/node_modules/.package-lock.json

.PHONY: socketio-deps bench-redis
socketio-deps: $(SOCKETIO_MODULES) ## Install the Socket.IO reference server's packages (npm ci in bench/socketio)

$(SOCKETIO_MODULES): bench/socketio/package.json bench/socketio/package-lock.json
	cd bench/socketio && $(NPM) ci --no-audit --no-fund
	touch $@

bench-redis: redis-server socketio-deps ## Broadcast backends: S1, S2, S4 on the mesh, Redis and Socket.IO + Redis adapter, then R on mesh and Redis; report to bench/results/
	$(CARGO) build --release --bin herald --bin herald-bench
	$(PYTHON3) bench/backends.py --redis-server=$(REDIS_SERVER)

# nats-server for `make bench-nats` and the harness's smoke test (tests/
# bench_smoke.rs): Debian's package, unpacked under target/ (no system
# install, no root needed once the package lists are there).
NATS_SERVER := target/tools/nats/usr/sbin/nats-server

.PHONY: nats-server bench-nats
nats-server: $(NATS_SERVER) ## Fetch nats-server into target/tools (Debian's package)

$(NATS_SERVER):
	rm -rf target/tools/nats && mkdir -p target/tools/nats
	cd target/tools/nats && { apt-get download nats-server 2>/dev/null || \
		{ apt-get update -qq && apt-get download nats-server; }; } && dpkg -x nats-server_*.deb .
	test -x $@

bench-nats: $(NATS_SERVER) ## The same scenarios against a 2-node NATS cluster, for comparison
	$(CARGO) build --release --bin herald-bench
	$(PYTHON3) bench/run.py --server=nats --nats-server=$(NATS_SERVER)
