# Everything a fresh machine needs is installed by these targets: `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp changes whenever a dependency file changes, so `make test` reinstalls only then.
DEPS_HASH := $(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(DEPS_HASH)
NODE_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup lint iac test test-unit test-integration test-e2e reliability deps-audit mutation sandbox sandbox-down demo sdk-samples sdk-samples-ci bench bench-sweep-10k clean

# chromium (Debian's package): the browser test of the HTML compliance report.
setup: $(STAMP) $(NODE_STAMP)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# --prefer-offline: the lock file pins every version and its integrity; npm's cached metadata is used where
# the machine has it instead of asking the registry again for each of the ~450 packages.
$(NODE_STAMP): package.json package-lock.json
	npm ci --prefer-offline --no-audit --no-fund --loglevel=error
	@rm -f node_modules/.installed-*
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/bandit --quiet --recursive --severity-level medium controller function_app.py

# checkov runs in its own virtualenv (.venv-iac): its pinned dependency tree conflicts with the app's.
iac:
	bash infra/check.sh

# The set-up, the lint, the IaC checks and the official SDK samples run side by side (pip, npm and checkov's
# virtualenv wait mostly on downloads and disk, the samples mostly on the vault's pollers and their own
# sleeps; --output-sync keeps each one's output together), then the suite on PYTEST_WORKERS processes
# (pytest-xdist; what a test must respect: tests/conftest.py, "Parallel runs"). --durations keeps the suite's
# time visible: the slowest tests are listed above pytest's closing line.
PYTEST_WORKERS ?= 2
test:
	@$(MAKE) --no-print-directory -j4 --output-sync=target setup lint iac sdk-samples-ci
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --durations=15

test-unit: $(STAMP)
	$(VENV)/bin/pytest -m unit

test-integration: setup
	$(VENV)/bin/pytest -m integration

test-e2e: setup
	$(VENV)/bin/pytest -m e2e

# The reliability suite (tests/reliability/) at full size; `make test` runs it at its CI size. Each scenario
# prints one JSON line of figures.
reliability: setup
	RELIABILITY_SIZE=full $(VENV)/bin/pytest tests/reliability -m reliability --timeout=3600

# The dependency set against known vulnerabilities (pip-audit, PyPI's advisory service). Where that service
# cannot be reached within a few seconds (an offline machine), the review is skipped with a message saying
# so instead of hanging or failing.
PIP_AUDIT_SERVICE ?= https://pypi.org/pypi/pip/json
deps-audit: $(STAMP)
	@if timeout 8 $(PY) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
			'$(PIP_AUDIT_SERVICE)' >/dev/null 2>&1; then \
		$(VENV)/bin/pip-audit --skip-editable --progress-spinner off; \
	else \
		echo "deps-audit: SKIPPED: pip-audit's vulnerability service ($(PIP_AUDIT_SERVICE)) cannot be reached from here"; \
	fi
# Mutation testing of the pure core (README "Mutation testing"): one line per module, tens of minutes.
# Workers: MUTATION_WORKERS (default 2; the machine is shared).
MUTATION_WORKERS ?= 2
mutation: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-mutation.txt
	$(PY) mutation/run.py --max-children $(MUTATION_WORKERS)

# The local sandbox (emulated Azure, README "Local sandbox"), a program of its own run from the checkout:
# started in the background in .sandbox/; then `source .sandbox/env` and
# `.venv/bin/python -m emulators status|seed rotation|down`.
sandbox: setup
	$(PY) -m emulators up --dir .sandbox

sandbox-down:
	@if [ -x $(PY) ]; then $(PY) -m emulators down --dir .sandbox; fi

# The main job: its own sandbox (a temporary directory), the rotation scenario end to end, every line
# computed from a real response; the sandbox is stopped at the end.
demo: setup
	$(PY) -m emulators.demo

# The official samples of the pinned azure-keyvault-keys, azure-storage-blob and azure-monitor-query, unmodified,
# against a sandbox of their own (emulators/sdk_samples.py; the sdists are downloaded once into
# .cache/sdk-samples), 6 at a time (SDK_SAMPLES_JOBS); the slowest sample sleeps 60 s. Expected failures, each
# with its reason, are in emulators/sdk_samples_expected.json: `sdk-samples` runs them too (to see that each still
# fails), `sdk-samples-ci` (part of `make test`) runs only the samples expected to pass.
SDK_SAMPLES_JOBS ?= 6
sdk-samples: setup
	$(PY) -m emulators.sdk_samples --jobs $(SDK_SAMPLES_JOBS)

sdk-samples-ci: $(STAMP) $(NODE_STAMP)
	$(PY) -m emulators.sdk_samples --jobs $(SDK_SAMPLES_JOBS) --skip-expected-failures

# Benchmarks: each prints one JSON line of figures (medians; the machine is shared).
bench: setup
	$(PY) bench/rotation_latency.py
	$(PY) bench/rewrap_bench.py
	$(PY) bench/audit_bench.py
	$(PY) bench/sweep_bench.py
	$(PY) bench/drift_bench.py
	$(PY) bench/adoption_scale.py --consumers 1000

# The sweep at 10x the accounts (about 40 minutes here, most of it building the estate).
bench-sweep-10k: setup
	$(PY) bench/sweep_bench.py --accounts 10000 --runs 1

clean: sandbox-down
	rm -rf $(VENV) node_modules .mypy_cache .pytest_cache .ruff_cache .hypothesis .sandbox .mutation
