# Two commands on a fresh machine: `make run` (the daemon on the shipped config) and `make test` (the whole suite).
# Both set everything up first; set-up steps are stamped so they run again only when their inputs change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= config/baileys-supervisor.yaml
PYTEST_ARGS ?=

.PHONY: setup setup-test run test test-py test-node demo bench clean

# `make run` needs only the runtime packages; the test extras (pytest, hypothesis, schemathesis: ~40 packages more)
# come with the targets that run tests.
setup: $(VENV)/.installed node_worker/node_modules/.installed
setup-test: setup $(VENV)/.installed-test
	bash scripts/test-system-deps.sh  # PostgreSQL + chromium for the cluster and console tests (apt when root)

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "needs Python >= 3.11 (PYTHON=$(PYTHON) is older; e.g. make run PYTHON=python3.11)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV); echo "cannot create $(VENV): install python3-venv (apt install python3-venv)" >&2; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

node_worker/node_modules/.installed: node_worker/package.json node_worker/package-lock.json
	@command -v npm >/dev/null || { echo "needs Node.js >= 20 with npm (https://nodejs.org or NodeSource)" >&2; exit 1; }
	cd node_worker && npm ci --no-audit --no-fund
	touch $@

run: setup
	$(VENV)/bin/baileys-supervisor run --config $(CONFIG)

# The whole suite: the worker's node tests, the simulator's node tests (real Baileys against it), then pytest
# (unit, integration, and the end-to-end tests of daemon + real worker + real Baileys + simulator).
test: setup-test
	cd node_worker && node --test
	node --test tests/wa_sim/test/
	$(PY) -m pytest $(PYTEST_ARGS)

test-py: setup-test
	$(PY) -m pytest $(PYTEST_ARGS)

test-node: setup-test
	cd node_worker && node --test
	node --test tests/wa_sim/test/

# The whole pairing flow without a phone (simulator + daemon + real worker on a temporary storage); DEMO_ARGS=--auto
# skips the keypress.
demo: setup
	$(PY) scripts/demo.py $(DEMO_ARGS)

bench: setup-test  # prints numbers (docs/benchmarks.md); needs wrk (apt) and supervisord (pip) for api_load
	$(PY) bench/respawn.py
	$(PY) bench/daemon_idle.py
	$(PY) bench/api_load.py
	$(PY) bench/e2e_latency.py --scan-delay 2 --variant 'no_prewarm={"prewarm": false}'
	$(PY) bench/worker_rss.py --tenants 50 --tmpdir /dev/shm  # connected worker RSS: previous vs current flags
	$(PY) bench/real_fleet.py $(FLEET_ARGS)  # real workers: ~20 min, 200 x ~80 MiB; e.g. FLEET_ARGS="--tenants 50 --tmpdir /dev/shm"
	$(PY) bench/messages_out.py  # sending: POST -> server ack vs in-process Baileys, outbox throughput across 20 tenants

clean:
	rm -rf $(VENV) node_worker/node_modules
