# The Helm chart, the plain manifests rendered from it, and the container image.
#
# Included by the main Makefile; also usable alone: `make -f mk/chart.mk help`.
# Every recipe works under plain sh as well as under the main Makefile's
# strict bash.

CHART_MK := $(lastword $(MAKEFILE_LIST))

PYTHON3    ?= python3
VENV       ?= .venv
CARGO      ?= cargo
DOCKER     ?= docker
CHART_DIR  ?= helm/herald
DEPLOY_DIR ?= deploy
HERALD_BIN ?= target/debug/herald
# The crate version: the first `version = "..."` line of Cargo.toml is the
# [package] one.
VERSION    ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)

VENV_STAMP := $(VENV)/.stamp
CHART_REQUIREMENTS := tests/chart/requirements.txt

.PHONY: venv chart-test deploy-manifests deploy-check image

# Reinstalls only when the pinned requirements change.
$(VENV_STAMP): $(CHART_REQUIREMENTS)
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(CHART_REQUIREMENTS)
	touch $@

venv: $(VENV_STAMP) ## Create .venv with the pinned Python tools the chart checks use

chart-test: venv ## Lint and validate the chart, and check its args with `herald serve --check-config`
	$(CARGO) build --bin herald
	HERALD_BIN=$(HERALD_BIN) $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/chart

deploy-manifests: venv ## Regenerate deploy/ from the chart (defaults, with a user-created JWT Secret)
	$(VENV)/bin/python tests/chart/render_deploy.py $(DEPLOY_DIR)

# deploy/README.md is written by hand, so the diff leaves it out.
deploy-check: venv ## Fail if deploy/ is not what the chart renders now
	@tmp=$$(mktemp -d) && \
	$(VENV)/bin/python tests/chart/render_deploy.py "$$tmp" && \
	if diff -ru --exclude=README.md $(DEPLOY_DIR) "$$tmp"; then rm -rf "$$tmp"; else \
		rm -rf "$$tmp"; \
		echo "deploy/ is out of date with $(CHART_DIR): run 'make deploy-manifests' and commit the result." >&2; \
		exit 1; \
	fi

image: ## Build the container image herald:<crate version> (needs Docker; not run in CI)
	$(DOCKER) build -t herald:$(VERSION) .

# When this file is the whole Makefile, give it the help the main one has.
ifeq ($(firstword $(MAKEFILE_LIST)),$(CHART_MK))
.DEFAULT_GOAL := help
.PHONY: help
help: ## Show these targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN { FS = ":.*## " } { printf "  %-18s %s\n", $$1, $$2 }'
endif
