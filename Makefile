# Tutorflow: `make up` runs the whole stack in the foreground; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PYTHONPATH := $(CURDIR)
# The Procfile's commands (gunicorn, celery) come from the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install services migrate seed urls up test test-hosts lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

services: install  ## PostgreSQL and Redis reachable? A clear message if not.
	@$(BIN)/python scripts/check_services.py

migrate: services
	$(BIN)/flask --app wsgi ensure-db

seed: migrate
	$(BIN)/flask --app wsgi seed-demo

# The local provider sandbox (Procfile: sandbox) stands in for Stripe under make up.
up urls: export STRIPE_API_BASE ?= http://127.0.0.1:12111

urls: install  ## where the stack's parts are and the development credentials
	@$(BIN)/flask --app wsgi urls

up: seed  ## API :8000, workers, beat, Flower :5555, provider sandbox :12111 — Ctrl-C stops all.
	@$(BIN)/flask --app wsgi urls
	@echo "Starting (Ctrl-C stops all; \`make urls\` prints the above again)."
	$(BIN)/honcho start -f Procfile

test: services  ## lint, types, alert rules, migration drift check and the whole suite (real PostgreSQL + Redis)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus (Debian ships it there)"; exit 1; }
	promtool check config ops/prometheus/prometheus.yml
	promtool test rules ops/prometheus/alerts_test.yml
	$(BIN)/pytest

test-hosts: services  ## the multi-host suite: network namespaces (root, iproute2), a Sentinel failover
	$(BIN)/pytest -m hosts tests/test_hosts.py tests/test_sentinel.py

bench: services  ## figures for BENCHMARKS.md (own database and Redis db)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || echo "no wrk: Python load generator"
	$(BIN)/python -m bench.run_all --output bench-report.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
