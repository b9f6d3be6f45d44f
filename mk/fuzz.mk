# Fuzzing: cargo-fuzz targets in fuzz/ for the parsers that see untrusted
# input (client frames, the peer wire, tokens and where an upgrade carries
# them, topic patterns). CI only builds them (`make fuzz-build`, part of
# `make lint`), so they cannot rot; run `make fuzz` before a release or
# after touching those parsers. A crash leaves its input in
# fuzz/artifacts/<target>/; turn it into a unit test.
#
# Included by the main Makefile; also usable alone: `make -f mk/fuzz.mk fuzz`.
#
# cargo-fuzz wants nightly for its `-Z` flags. The stable toolchain ships
# the same compiler, and RUSTC_BOOTSTRAP=1 lets it accept them; it is set
# for these cargo-fuzz commands only, never for the main build. The
# sanitizer is off by default: herald forbids unsafe code, so AddressSanitizer
# would only watch dependencies, at half the speed. FUZZ_SANITIZER=address
# turns it on.

CARGO          ?= cargo
FUZZ_SECONDS   ?= 60
FUZZ_SANITIZER ?= none
FUZZ_TARGETS   ?= client_frame peer_frame jwt_token upgrade_token topic_patterns
FUZZ_DIR       := $(dir $(lastword $(MAKEFILE_LIST)))../fuzz

.PHONY: fuzz fuzz-build

fuzz-build: ## Build the fuzz targets without running them (stable, no sanitizer), and check their format
	$(CARGO) fmt --manifest-path $(FUZZ_DIR)/Cargo.toml -- --check
	$(CARGO) build --locked --manifest-path $(FUZZ_DIR)/Cargo.toml --target-dir target --bins

fuzz: ## Run each fuzz target for FUZZ_SECONDS (default 60)
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
		dict=$(FUZZ_DIR)/dicts/$$target.dict; \
		if [ -f "$$dict" ]; then dict="-dict=$$dict"; else dict=; fi; \
		echo "fuzz: $$target for $(FUZZ_SECONDS)s"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir $(FUZZ_DIR) --sanitizer $(FUZZ_SANITIZER) \
			$$target -- -max_total_time=$(FUZZ_SECONDS) $$dict || exit 1; \
	done
	@echo "fuzz: every target ran $(FUZZ_SECONDS)s without a crash"
