# Style Studio: `make run` runs the whole platform, `make test` runs every check.
# Both set up everything they need on a fresh machine (virtualenv, install, code generation).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
GENERATED := stylestudio/.generated
PROTOS := $(shell find protos -name '*.proto' 2>/dev/null)

.PHONY: run test soak install protos lint format bench clean pgbouncer chromium promtool dist

run: $(INSTALLED) $(GENERATED)
	$(PY) -m kit.launcher

test: $(INSTALLED) $(GENERATED) lint pgbouncer chromium promtool
	$(PY) -m pytest $(PYTEST_ARGS)

# System tools that checks need, from Debian's packages: $(call apt_install,COMMAND,PACKAGE) installs
# PACKAGE with apt-get (as root, else with sudo) when neither PATH nor /usr/sbin has COMMAND; the
# package lists are refreshed only when the first try fails.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
define apt_install
	@command -v $(1) >/dev/null 2>&1 || test -x /usr/sbin/$(1) || { \
	  echo "installing Debian's $(2) (for $(1))"; \
	  $(APT_GET) $(2) || { $(SUDO) apt-get update && $(APT_GET) $(2); }; }
endef

# pgbouncer (1.18 on bookworm): tests/platform/test_pgbouncer.py runs the platform through it.
pgbouncer:
	$(call apt_install,pgbouncer,pgbouncer)

# chromium: tests/gateway/test_operator_page.py drives it headless (through playwright, with no
# browser download of its own).
chromium:
	$(call apt_install,chromium,chromium)

# promtool, from the prometheus package: tests/deploy/test_prometheus.py checks the alert rules and
# scrape configuration in deploy/prometheus with it (and fails without it).
promtool:
	$(call apt_install,promtool,prometheus)

# Load + faults + invariants against a platform of its own (docs/operations.md, "Soak runs"):
# make soak DURATION=30m SEED=13 FAULT_EVERY=20s; the last line is `violations: N`.
DURATION ?= 2m
FAULT_EVERY ?= 20s
SEED ?=
USERS ?= 8
soak: $(INSTALLED) $(GENERATED)
	$(PY) -m bench.soak --duration $(DURATION) --fault-every $(FAULT_EVERY) --users $(USERS) $(if $(SEED),--seed $(SEED))

# The client package for internal callers (docs/clients.md): the stubs and a channel helper,
# versioned with the protos (protos/VERSION): $(DIST)/stylestudio_client-<version>-py3-none-any.whl
DIST ?= dist
dist: $(INSTALLED) $(GENERATED)
	$(PY) scripts/build_client.py --dist $(DIST)

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

protos: $(INSTALLED)
	$(PY) scripts/gen_protos.py

# The editable install maps the packages that existed when it ran: install again (no deps, a few
# seconds) once the generated `stylestudio` package exists, so console scripts such as
# `stylestudio` import it from any directory.
$(GENERATED): $(INSTALLED) $(PROTOS) scripts/gen_protos.py
	$(PY) scripts/gen_protos.py
	$(PY) -c "import sys, importlib.util; sys.path.remove(''); sys.exit(importlib.util.find_spec('stylestudio.common') is None)" 2>/dev/null \
	  || $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

lint: $(INSTALLED) $(GENERATED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy kit services gateway bench tests clients/python/src clients/python/examples
	$(PY) scripts/gen_protos.py --lint

format: $(INSTALLED)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf stylestudio dist .pytest_cache .ruff_cache .mypy_cache
