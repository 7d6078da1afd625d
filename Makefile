# Baton's everyday commands. `make run` is all a fresh clone needs; `make test` is what CI runs.
#
# Every recipe runs under `bash -eu -o pipefail` (see SHELL/.SHELLFLAGS), so any failing command
# fails the target, including a failure in the middle of a multi-line recipe.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.ONESHELL:

PYTHON_BIN ?= python3.11
# Debian's package puts it here; the browser tests launch this binary.
CHROMIUM ?= /usr/bin/chromium
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-x -k approvals"`.
PYTEST_ARGS ?=
# Seconds to wait for PostgreSQL and Redis after trying to start them.
SERVICE_WAIT ?= 60

PG_PORT ?= 5432
REDIS_PORT ?= 6379
PG_URL := postgres://127.0.0.1:$(PG_PORT)/test
REDIS_URL_TEST := redis://127.0.0.1:$(REDIS_PORT)/0

.PHONY: help venv install run test test-sqlite test-pg chromium promtool services lint bench clean

help:
	@echo "make run     install, migrate, load the demo and serve on http://$(HOST):$(PORT)/"
	@echo "make test    the full suite on SQLite + ORM broker and on PostgreSQL + Redis, side by side"
	@echo "make lint    ruff, mypy (strict) and the import contracts"
	@echo "make bench   the benchmark command"
	@echo "make clean   remove the SQLite database files and var/"

$(PY):
	$(PYTHON_BIN) -m venv $(VENV)

# The stamp makes `pip install` run only when pyproject.toml is newer than the last install.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv install: $(STAMP)

# HOST/PORT: where daphne listens; `serve` points the links in emails there too, unless
# BATON_BASE_URL is set (e.g. `make run PORT=8101`).
run: $(STAMP)
	$(PY) manage.py migrate --no-input
	$(PY) manage.py load_demo --history
	exec $(PY) manage.py serve --host $(HOST) --port $(PORT)

# Debian's prometheus package for promtool, which checks /metrics' output in the tests
# (tests/observability/test_metrics.py); only the binary is used, no service is started.
PROMTOOL ?= /usr/bin/promtool
promtool:
	@if [ ! -x $(PROMTOOL) ]; then
	  echo "== installing promtool (apt: prometheus) =="
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get update -q
	  apt-get install -y -q --no-install-recommends prometheus
	fi
	$(PROMTOOL) --version >/dev/null

# Debian's Chromium for the browser tests; playwright cannot download its own browser here.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then
	  echo "== installing Chromium (apt) =="
	  export DEBIAN_FRONTEND=noninteractive
	  apt-get update -q
	  apt-get install -y -q --no-install-recommends chromium
	fi
	# (stderr hidden: Debian's wrapper script prints a harmless shell warning on some machines)
	$(CHROMIUM) --version 2>/dev/null || { echo "Chromium at $(CHROMIUM) does not run" >&2; exit 1; }

# Make sure PostgreSQL and Redis answer, starting them if they don't. Writes "up" or "down" to
# var/services so the test target can decide; only CI=true turns "down" into a failure.
services:
	@mkdir -p var
	pg_up() { pg_isready -q -h 127.0.0.1 -p $(PG_PORT) -d test; }
	redis_up() { [ "$$(redis-cli -h 127.0.0.1 -p $(REDIS_PORT) ping 2>/dev/null)" = PONG ]; }
	if ! pg_up && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
	  echo "PostgreSQL does not answer; starting it"
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start || true
	fi
	if ! redis_up && command -v redis-server >/dev/null; then
	  echo "Redis does not answer; starting it"
	  mkdir -p /var/lib/redis /var/log/redis
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $(REDIS_PORT) --save "" --appendonly no \
	    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
	fi
	deadline=$$(( SECONDS + $(SERVICE_WAIT) ))
	until pg_up && redis_up; do
	  if (( SECONDS >= deadline )); then break; fi
	  sleep 1
	done
	if pg_up && redis_up; then echo up > var/services; else
	  pg_up && echo "PostgreSQL: up" || echo "PostgreSQL: NOT answering on 127.0.0.1:$(PG_PORT)"
	  redis_up && echo "Redis: up" || echo "Redis: NOT answering on 127.0.0.1:$(REDIS_PORT)"
	  echo down > var/services
	fi

# One pass: SQLite file + django-q2 ORM broker + in-memory channel layer, browser tests included.
test-sqlite: $(STAMP) chromium promtool
	@echo
	echo "== SQLite + ORM broker ==   (BATON_QUEUE=baton-test-sqlite, no DATABASE_URL or REDIS_URL; browser tests included)"
	env -u DATABASE_URL -u REDIS_URL BATON_QUEUE=baton-test-sqlite \
	  $(PY) -m pytest $(PYTEST_ARGS)

# The scale-out pass: PostgreSQL + Redis broker + channels-redis. The browser tests already ran
# on SQLite; the server-side code they drive is the same here.
test-pg: $(STAMP) promtool
	@echo
	echo "== PostgreSQL + Redis ==   (DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_URL_TEST) BATON_QUEUE=baton-test-pg; -m \"not browser\")"
	DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_URL_TEST) BATON_QUEUE=baton-test-pg \
	  $(PY) -m pytest -m "not browser" $(PYTEST_ARGS)

# Both passes, side by side: each mostly waits on its own worker processes, browser and
# database, so on two cores the pair takes little longer than the slower one alone (and CI's
# clock is what counts). Each pass has its own queue, database and Redis database, so neither
# sees the other's work. Lines are printed as they come, tagged [sqlite] or [pg]; each pass's
# whole output is kept in var/test-sqlite.log and var/test-pg.log, and the end of each (its
# failures and summary) is printed again at the end, untangled. The PostgreSQL pass is skipped
# (loudly) only outside CI when the services are down; the target fails if either pass did.
test: $(STAMP) chromium promtool
	@$(MAKE) --no-print-directory services
	pass() {
	  local name=$$1 target=$$2
	  set +e
	  $(MAKE) --no-print-directory $$target 2>&1 | tee var/test-$$name.log | sed -u "s/^/[$$name] /"
	  echo $${PIPESTATUS[0]} > var/test-$$name.rc
	}
	rm -f var/test-sqlite.rc var/test-pg.rc
	pass sqlite test-sqlite &
	if [ "$$(cat var/services)" = up ]; then
	  pass pg test-pg &
	  pg=run
	elif [ "$${CI:-}" = true ]; then
	  echo "!! PostgreSQL/Redis do not answer on 127.0.0.1 and CI=true: failing." >&2
	  pg="FAILED (services down)"
	else
	  echo
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
	  echo "!! SKIPPING the PostgreSQL + Redis pass: the services do not answer on 127.0.0.1 !!"
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
	  pg="SKIPPED (services down)"
	fi
	wait
	outcome() { [ "$$(cat var/test-$$1.rc 2>/dev/null)" = 0 ] && echo passed || echo FAILED; }
	for name in sqlite pg; do
	  if [ -f var/test-$$name.rc ]; then
	    echo
	    echo "== the end of the $$name pass (all of it: var/test-$$name.log) =="
	    awk '/=+ FAILURES =+|short test summary info/ { keep = 1 } keep' var/test-$$name.log | tail -n 80 | grep . || tail -n 3 var/test-$$name.log
	  fi
	done
	sqlite=$$(outcome sqlite)
	if [ "$$pg" = run ]; then pg=$$(outcome pg); fi
	echo
	echo "== summary: SQLite + ORM broker: $$sqlite; PostgreSQL + Redis: $$pg =="
	[ "$$sqlite" = passed ] && { [ "$$pg" = passed ] || [ "$${pg#SKIPPED}" != "$$pg" ]; }

# mypy is strict (pyproject.toml); lint-imports checks the layers of the core ([tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff check orchestration dashboard approvals
	$(VENV)/bin/mypy orchestration dashboard approvals
	$(VENV)/bin/lint-imports --no-logo

bench: $(STAMP)
	$(PY) manage.py bench

clean:
	rm -f db.sqlite3 db.sqlite3-* test_db*.sqlite3 test_db*.sqlite3-*
	rm -rf var/
