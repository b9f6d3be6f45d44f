# The JavaScript client (clients/js/) and the demo page (clients/demo/):
# tests with Node's test runner against real pods, and a headless Chromium
# test of the demo.
#
# Included by the main Makefile. The test tooling (ws, playwright-core,
# esbuild) is its own npm package in tests/js/ with a committed lockfile;
# the client itself has no dependencies. The browser is Debian's chromium,
# never one downloaded by a tool.

NODE     ?= node
NPM      ?= npm
CHROMIUM ?= /usr/bin/chromium
JS_TESTS := tests/js
# Touched after each `npm ci`, so a changed lockfile installs again.
JS_DEPS  := $(JS_TESTS)/node_modules/.installed

.PHONY: test-js js-deps js-size

test-js: js-deps $(CHROMIUM) ## JavaScript client and demo tests: Node against real pods, headless Chromium
	$(CARGO) build --bin herald
	cd $(JS_TESTS) && HERALD_BIN=$(CURDIR)/target/debug/herald CHROMIUM=$(CHROMIUM) \
		$(NODE) --test --test-concurrency=1 --test-timeout=60000 node/ browser/

js-deps: $(JS_DEPS) ## Install the JavaScript test tooling (npm ci in tests/js)

$(JS_DEPS): $(JS_TESTS)/package-lock.json $(JS_TESTS)/package.json
	cd $(JS_TESTS) && $(NPM) ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
	test -x $@

js-size: js-deps ## The client's size: raw, minified, minified + gzipped
	@raw=$$(wc -c < clients/js/herald.js); \
	min=$$($(JS_TESTS)/node_modules/.bin/esbuild --minify --log-level=warning clients/js/herald.js | wc -c); \
	gz=$$($(JS_TESTS)/node_modules/.bin/esbuild --minify --log-level=warning clients/js/herald.js | gzip -9 | wc -c); \
	echo "clients/js/herald.js: $$raw bytes raw, $$min minified, $$gz minified + gzipped (esbuild --minify | gzip -9)"
