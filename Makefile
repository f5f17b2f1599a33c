# Everything a fresh machine needs is installed by these targets: `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp changes whenever a dependency file changes, so `make test` reinstalls only then.
DEPS_HASH := $(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NODE_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup lint iac test test-unit test-integration test-e2e clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@rm -f node_modules/.installed-*
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# checkov runs in its own virtualenv (.venv-iac): its pinned dependency tree conflicts with the app's.
iac:
	bash infra/check.sh

test: setup lint iac
	$(VENV)/bin/pytest

test-unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

test-integration: setup
	$(VENV)/bin/pytest -m integration

test-e2e: setup
	$(VENV)/bin/pytest -m e2e

clean:
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache .hypothesis
