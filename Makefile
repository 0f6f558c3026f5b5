# The two commands of the README:
#   make run    install, migrate, and serve the app on http://127.0.0.1:5000 (SQLite + Terra sandbox)
#   make test   install, and run the whole test suite (set TEST_DATABASE_URL for PostgreSQL)
# Both install from the locks (requirements.txt, requirements-dev.txt: every package pinned, with its
# hashes) through uv; `make lock` regenerates the locks from requirements.in and requirements-dev.in.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CHROMIUM_PATH ?= /usr/bin/chromium
UV_VERSION := 0.13.8
UV     := $(BIN)/uv
PIP_INSTALL_UV := --quiet --disable-pip-version-check uv==$(UV_VERSION)
# `install`, not `sync`: run and test share the venv, and neither may remove the other's packages.
# Bytecode is compiled at install, as pip does; else every process (each gunicorn worker, each test
# server) compiles its imports anew wherever bytecode is not written (PYTHONDONTWRITEBYTECODE).
UV_INSTALL := $(UV) pip install --quiet --python $(BIN)/python --require-hashes --compile-bytecode
# Universal locks (every platform, Python 3.11 and later); a pin already in a lock stays unless the
# .in file needs another version.
UV_COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
              --custom-compile-command "make lock"

.PHONY: run test mutation lint lock mobile-client screenshots install install-dev chromium java node nginx clean

run: install
	$(BIN)/flask --app app db upgrade heads
	$(BIN)/gunicorn --config gunicorn.conf.py "app:create_app()"

# The suite runs in TEST_PROCESSES processes (pytest-xdist), each with its own database
# (tests/conftest.py): one more than the CPUs, since a test spends part of its time waiting for a
# server, a browser or PostgreSQL (on 2 cores, 3 processes took 2 min 20 s / 2 min 39 s on SQLite /
# PostgreSQL, 2 took 2 min 31 s / 2 min 46 s to 3 min 03 s). A test module runs whole in one process
# (--dist loadfile): its module-wide servers start once, and each module that flushes a Redis
# database has its own.
TEST_PROCESSES ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')
test: install-dev chromium java node nginx
	$(BIN)/pytest --numprocesses $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# Mutation testing of the security-critical code and the tests that guard it (pyproject.toml
# [tool.mutmut], docs/reliability.md). Tens of minutes: not part of `make test` or CI.
# MUTANTS picks the functions of those files that decide who may do what (mutmut name patterns).
MUTANTS ?= 'terra_integration.signature.*' 'terra_integration.webhooks.*' 'terra_integration.reference_ids.*' \
	'terra_integration.signing.*' 'terra_integration.inbox.x_apply_event*' \
	'services.attempts.x_attempt_token*' 'services.attempts.x_attempt_from_token*' \
	'services.attempts.x_record_return*' 'services.attempts.x_owned_*' 'services.attempts.x_poll_state*' \
	'services.attempts.x_confirm_redirect_user*' 'services.attempts.x_find_attempt_for_event*' \
	'blueprints.api.x__owned*' 'blueprints.api.x_caller*' 'blueprints.connect.*' \
	'mobile_redirects.deep_links.*' 'mobile_redirects.views.x__return_page*' 'app.x_register_blueprints*'
mutation: install-dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 $(MUTANTS)

lint: install-dev
	$(BIN)/ruff check
	$(BIN)/ruff format --check

lock: | $(UV)
	$(UV_COMPILE) requirements.in -o requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt

# The stand-in mobile app (docs/mobile.md) against a running `make run`; it drives Debian's chromium.
mobile-client: install-dev chromium
	$(BIN)/python -m tools.mobile_client $(ARGS)

# docs/walkthrough.md's pictures, taken anew into docs/images/ (a fresh app, Debian's chromium).
screenshots: install-dev chromium
	$(BIN)/python -m tools.screenshots

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# uv, pinned, is the one package pip installs; uv installs everything else from the locks. The venv
# gets no pip of its own (ensurepip was the slowest step of a fresh install): the interpreter's pip
# installs uv into it, or, for an interpreter without pip, a pip given to the venv after all.
$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)

$(UV): | $(BIN)/python
	$(PYTHON) -m pip --python $(BIN)/python install $(PIP_INSTALL_UV) 2>/dev/null \
	  || { $(BIN)/python -m ensurepip --default-pip >/dev/null && $(BIN)/python -m pip install $(PIP_INSTALL_UV); }

$(VENV)/.installed: requirements.txt | $(UV)
	$(UV_INSTALL) -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(UV)
	$(UV_INSTALL) -r requirements-dev.txt
	touch $@ $(VENV)/.installed

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used), or the
# one CHROMIUM_PATH names (the tests read it too).
chromium:
	@test -x $(CHROMIUM_PATH) || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# openapi-generator (tests/test_generated_clients.py) is a Java program: Debian's Java runtime, unless
# a java is on PATH already.
java:
	@command -v java >/dev/null || { \
	  echo "Installing Debian's Java runtime for the generated-client tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq default-jre-headless; }

# The generated-client tests type-check and run a TypeScript sample (tests/typescript_client/): Debian's
# Node.js and npm, unless a node is on PATH already. The test installs the sample's packages itself
# (npm ci, from its package-lock.json).
node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "Installing Debian's Node.js and npm for the generated-client tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; }

# tests/test_production.py runs the app behind Debian's nginx, as docs/deploy.md configures it: nginx-light
# (every module that page uses) where the release has it, else nginx. The tests run their own nginx, as
# an ordinary process on a port of their own; the package may also start its service on port 80.
nginx:
	@test -x /usr/sbin/nginx || { \
	  echo "Installing Debian's nginx for the production tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq; \
	  PACKAGE=$$(apt-cache show nginx-light >/dev/null 2>&1 && echo nginx-light || echo nginx); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$PACKAGE; }

clean:
	rm -rf $(VENV) .pytest_cache mutants
