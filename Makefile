# The two commands of the README:
#   make run    install, migrate, and serve the app on http://127.0.0.1:5000 (SQLite + Terra sandbox)
#   make test   install, and run the whole test suite (set TEST_DATABASE_URL for PostgreSQL)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test mutation mobile-client install install-dev chromium clean

run: install
	$(BIN)/flask --app app db upgrade heads
	$(BIN)/gunicorn --config gunicorn.conf.py "app:create_app()"

test: install-dev chromium
	$(BIN)/pytest $(PYTEST_ARGS)

# Mutation testing of the security-critical code and the tests that guard it (pyproject.toml
# [tool.mutmut], docs/reliability.md). Tens of minutes: not part of `make test` or CI.
# MUTANTS picks the functions of those files that decide who may do what (mutmut name patterns).
MUTANTS ?= 'terra.signature.*' 'blueprints.webhooks.*' 'services.reference_ids.*' 'services.signing.*' \
	'services.event_handlers.x__owner*' 'services.event_handlers.x_apply_event*' \
	'services.attempts.x_attempt_token*' 'services.attempts.x_attempt_from_token*' \
	'services.attempts.x_record_return*' 'services.attempts.x_owned_*' 'services.attempts.x_poll_state*' \
	'services.attempts.x_confirm_redirect_user*' 'services.attempts.x_find_attempt_for_event*' \
	'blueprints.api.x__owned*' 'blueprints.api.x_caller*' 'blueprints.connect.*' \
	'mobile_redirects.deep_links.*' 'mobile_redirects.views.x__return_page*' 'app.x_register_blueprints*'
mutation: install-dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 $(MUTANTS)

# The stand-in mobile app (docs/mobile.md) against a running `make run`; it drives Debian's chromium.
mobile-client: install-dev chromium
	$(BIN)/flask --app app mobile-client $(ARGS)

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.installed

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used).
chromium:
	@test -x $(CHROMIUM) || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV) .pytest_cache mutants
