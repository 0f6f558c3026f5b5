# The two commands of the README:
#   make run    install, migrate, and serve the app on http://127.0.0.1:5000 (SQLite + Terra sandbox)
#   make test   install, and run the whole test suite (set TEST_DATABASE_URL for PostgreSQL)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test mobile-client install install-dev chromium clean

run: install
	$(BIN)/flask --app app db upgrade heads
	$(BIN)/gunicorn --config gunicorn.conf.py "app:create_app()"

test: install-dev chromium
	$(BIN)/pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) .pytest_cache
