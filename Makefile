# Market Watch — run `make help`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# A second PostgreSQL version for the DB-facing tests, used only when reachable (CI machine has 15).
SECOND_PG_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create the virtualenv and install everything (idempotent)

.PHONY: run
run: $(STAMP) ## Run the whole platform on embedded defaults (replays the bundled day when offline: make run ARGS="--replay sample")
	$(BIN)/mw up $(ARGS)

.PHONY: browser
browser: ## Install Debian's chromium for the browser test when missing
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installable: the browser test will be skipped"

.PHONY: test
test: $(STAMP) browser ## Run the whole test suite on real components (embedded PostgreSQL 18 + broker; plus PostgreSQL 15 when present)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@if $(BIN)/python -c "import asyncio,asyncpg,sys; asyncio.run(asyncpg.connect('$(SECOND_PG_URL)', timeout=3))" 2>/dev/null; then \
		echo "== DB-facing tests again on a second PostgreSQL version ($(SECOND_PG_URL)) =="; \
		MW_TEST_DATABASE_URL=$(SECOND_PG_URL) $(BIN)/python -m pytest -m "integration and not chaos" tests/integration -p no:randomly -q; \
	else echo "== second PostgreSQL not reachable: skipped the second-version run =="; fi

.PHONY: lint
lint: $(STAMP) ## ruff (lint + format check), mypy strict, pip-audit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pip-audit --skip-editable --progress-spinner off || echo "pip-audit: see findings above (needs the registry)"

.PHONY: fmt
fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: bench
bench: $(STAMP) ## Run the benchmarks in bench/ (numbers for the README)
	bash bench/run_all.sh

.PHONY: replay
replay: $(STAMP) ## Replay the bundled real crash day through the whole pipeline
	$(BIN)/mw replay sample

.PHONY: clean
clean: ## Stop nothing, remove caches (keeps .mw state)
	rm -rf .pytest_cache .mypy_cache .ruff_cache test-artifacts
