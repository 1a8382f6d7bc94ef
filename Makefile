# One task runner. Every target creates the virtualenv and node_modules on first use.
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run cluster test test-fast gen fmt lint typecheck bench install system-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# ffmpeg for audio.transcode and its tests; Node.js for buf and the TypeScript client;
# PostgreSQL 15 and PgBouncer (in /usr/sbin, off a non-root PATH) for the postgres store's
# tests, which start their own cluster (not the `main` one the package may create);
# Chromium for the dashboard's browser tests (Playwright drives it; it downloads no browser).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	test -x /usr/lib/postgresql/15/bin/postgres || missing="$$missing postgresql-15"; \
	command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || missing="$$missing pgbouncer"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

clients/typescript/node_modules/.installed: clients/typescript/package.json clients/typescript/package-lock.json
	npm ci --prefix clients/typescript --no-audit --no-fund
	touch $@

install: system-deps $(STAMP) node_modules/.installed clients/typescript/node_modules/.installed

run: $(STAMP)
	$(VENV)/bin/jobcontrol-server --with-worker --http-listen 127.0.0.1:8080

# sqld, two servers and two workers on loopback, as on separate machines (README);
# `make cluster STORE=postgres` runs them on a throwaway PostgreSQL instead of sqld.
cluster: install
	$(PY) scripts/cluster.py$(if $(STORE), --store $(STORE))

test: install
	$(PY) -m pytest

# The edit-test loop: everything but the slow stress tests and the end-to-end fault runs.
# CI runs `make test`, which includes them.
test-fast: install
	$(PY) -m pytest -m "not slow" --ignore=tests/e2e

gen: $(STAMP) node_modules/.installed clients/typescript/node_modules/.installed
	$(PY) scripts/gen_protos.py
	$(BUF) generate

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	$(BUF) format -w

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/mypy

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(BENCH_STAMP)
	$(PY) -m bench
