# Tutorflow: `make up` runs the whole stack in the foreground; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
export PYTHONPATH := $(CURDIR)
# The Procfile's commands (gunicorn, celery) come from the venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install services prerequisites migrate seed urls up simulate test test-slow test-hosts test-rabbitmq lint bench bench-volume clean

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

urls: install  ## where the stack's parts are and the development credentials
	@$(BIN)/flask --app wsgi urls

up: seed  ## API :8000, workers, beat, Flower :5555, provider sandbox :12111 — Ctrl-C stops all.
	@$(BIN)/flask --app wsgi urls
	@echo "Starting (Ctrl-C stops all; \`make urls\` prints the above again)."
	@$(BIN)/python -m scripts.up

# Students buying against the running stack (`make up` in another terminal): a summary
# of how every payment ended; non-zero if any was not fulfilled (scripts/simulate.py).
PAYMENTS ?= 50
simulate: install  ## PAYMENTS students check out, pay and confirm against make up's stack
	$(BIN)/python -m scripts.simulate --payments $(PAYMENTS)

# promtool (required), chromium (the browser tests), and patroni, etcd and iptables (the
# PostgreSQL failover in test-hosts): installed with apt-get when run as root on Debian,
# else the command to run is printed (scripts/prerequisites.sh).
prerequisites:
	@scripts/prerequisites.sh

# Two test processes, each with its own database and Redis database (tests/conftest.py).
TEST_PROCESSES ?= 2

test: services prerequisites  ## lint, types, alert rules, migration drift check and the whole suite (real PostgreSQL + Redis)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	promtool check config ops/prometheus/prometheus.yml
	promtool test rules ops/prometheus/alerts_test.yml
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist worksteal

test-slow: services  ## the long runs kept out of `make test` (soak, restarts, schemathesis's every check)
	$(BIN)/pytest -m slow

test-hosts: services prerequisites  ## the multi-host suite: network namespaces (root, iproute2), a Sentinel failover, a PostgreSQL failover (Patroni)
	$(BIN)/pytest -m hosts tests/test_hosts.py tests/test_sentinel.py tests/test_pg_failover.py

# The broker matrix: the delivery, retry, dead-letter and crash tests again on RabbitMQ
# (quorum queues), in a vhost of their own made for the run and deleted after it.
RABBITMQ_VHOST ?= tutorflow_test
BROKER_TESTS := tests/test_worker_pipeline.py tests/test_faults.py tests/test_dead_letters.py \
	tests/test_concurrency.py tests/test_outbox_relay.py tests/test_rabbitmq.py tests/test_poison.py
test-rabbitmq: services  ## the worker tests on RabbitMQ (rabbitmqctl: the vhost)
	-@rabbitmqctl -q delete_vhost $(RABBITMQ_VHOST) >/dev/null 2>&1
	@rabbitmqctl -q add_vhost $(RABBITMQ_VHOST)
	@rabbitmqctl -q set_permissions -p $(RABBITMQ_VHOST) guest '.*' '.*' '.*'
	TEST_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/$(RABBITMQ_VHOST) \
		$(BIN)/pytest -m worker $(BROKER_TESTS); status=$$?; \
		rabbitmqctl -q delete_vhost $(RABBITMQ_VHOST); exit $$status

bench: services  ## figures for BENCHMARKS.md (own database and Redis db)
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || echo "no wrk: Python load generator"
	@command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null || echo "no valgrind: no instruction count"
	$(BIN)/python -m bench.run_all --output bench-report.md

# Issue 25's "cost as the data grows" alone (`make bench` runs it too): confirm, home,
# availability and the top-up on a database with 1,000,000 sessions beside one with next
# to no history, plans included (bench/volume.py; three rounds, the best of each
# figure; about 4 minutes, seeding included).
bench-volume: services  ## the same paths with a million sessions and without, side by side, with their plans
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null || true
	$(BIN)/python -m bench.volume --rounds 3 | tee bench-volume-report.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
