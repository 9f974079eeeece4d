# quotaplane: the two commands are `make run` and `make test`; both do their own set-up.
# Needs only Python 3.11+ with venv and pip (and network access to PyPI on first use).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run serve test chromium lint typecheck generate check-generated bench-quota bench-envoy bench-key-flood clean help

help:
	@echo "make run    - set up, then run quotaplane on embedded defaults (valkey + SQLite)"
	@echo "make test   - set up, then run linters, type checks and the whole test suite"
	@echo "              (as root, apt-get installs chromium for the portal's browser tests)"
	@echo "make generate - regenerate the Python code of protos/ into clients/"
	@echo "make bench-quota - CheckQuota requests/s, latency and CPU per call: quotaplane vs a trivial handler"
	@echo "make bench-key-flood - DB transactions per 1,000 random API keys, a tenant's latency"
	@echo "make bench-envoy - requests/s, latency, CPU per decision through Envoy: every ext_authz path"
	@echo "                   (needs h2load and a Redis; BENCH_ARGS=\"--duration 3\" to pass flags)"

# The virtualenv is (re)built whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

generate: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-generated: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

run: $(STAMP) generate
	$(BIN)/python scripts/run_stack.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check server clients scripts tests envoy $(wildcard bench)
	$(BIN)/ruff format --check server clients scripts tests envoy $(wildcard bench)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy server/quotaplane clients/quotaplane_client clients/examples scripts

# The portal's browser tests drive Debian's Chromium (never a downloaded browser): installed here
# when missing and we are root with apt-get; otherwise those tests skip and say why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (apt-get) for the portal's browser tests"; \
	  { apt-get install -y --no-install-recommends chromium \
	    || { apt-get update && apt-get install -y --no-install-recommends chromium; }; } \
	    >/dev/null 2>&1 || echo "could not install chromium: the browser tests will skip"; \
	fi

test: $(STAMP) check-generated lint typecheck chromium
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest $(PYTEST_ARGS)

# Needs h2load (Debian package nghttp2-client) and a Redis at redis://127.0.0.1:6379/0 (or
# BENCH_ARGS="--redis-url ..."); see bench/RESULTS.md.
bench-quota: $(STAMP)
	$(BIN)/python bench/quota_load.py $(BENCH_ARGS)

bench-envoy: $(STAMP)
	$(BIN)/python bench/envoy_load.py $(BENCH_ARGS)

# Needs the Postgres and Redis on 127.0.0.1 (or BENCH_ARGS="--postgres-url ... --redis-url ...").
bench-key-flood: $(STAMP)
	$(BIN)/python bench/key_flood.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .data
