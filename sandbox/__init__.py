"""An embedded emulator of Terra's side of "Connect a User", mounted at /sandbox when the app runs
without Terra credentials. The app's Terra client calls it over real HTTP exactly as it calls Terra.

It is a removable part: the app knows of it only through `init_sandbox` in app.py. It brings its own
settings (`settings`), pages (templates/sandbox/) and tables (`models`), which its own Alembic branch
(migrations/, branch label `sandbox`) creates; to drop the sandbox from a database it created, run
`flask db downgrade sandbox@base` before deleting this folder.

Modules: `api` (Terra's REST and widget-session endpoints), `widget` (the hosted widget pages and the
automation endpoint), `sdk` (generateAuthToken, and a stand-in for the mobile SDK's initConnection),
`flows` (what a decision in the widget does), `user_events` (what happens to a
connected user later), `events` (webhook bodies), `delivery` (signed webhooks with retries), `faults`
(switchable failures of Terra's endpoints and of webhook delivery), `traffic` (a record of what the
sandbox received and sent), `data_requests` (Terra's data endpoints and their rate limits),
`sdk` (generateAuthToken and the mobile SDK's initConnection), `console` (a page listing sandbox
users), `providers` (the catalogue), `payloads` (ping-mode downloads), `models` (the sandbox's
tables), `settings` (its settings), `commands` (`flask sandbox serve`: the sandbox as Terra for
another app).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from alembic.config import Config
from flask import Flask

from extensions import csrf, migrate

MIGRATIONS = os.path.join(os.path.dirname(__file__), "migrations")


@migrate.configure
def add_migrations(config: Config) -> Config:
    """`flask db` sees the sandbox's migration branch next to the app's own history."""
    locations = config.get_version_locations_list() or [config.get_main_option("script_location") + "/versions"]
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join([*locations, MIGRATIONS]))
    return config


def init_sandbox(app: Flask, environ: Mapping[str, str]) -> None:
    """Register the sandbox with the app: its tables always, so that a database it created stays
    upgradable once live credentials are set; its settings and routes only without credentials."""
    from sandbox import models  # noqa: F401  (its tables, for its migrations)
    from sandbox.commands import sandbox_commands

    app.cli.add_command(sandbox_commands)  # in live mode too, to say why it cannot serve
    if app.config["TERRA_MODE"] != "sandbox":
        return
    from sandbox import api, console, data_requests, payloads, sdk, widget  # noqa: F401  (each adds its routes to the blueprint)
    from sandbox.blueprint import URL_PREFIX, bp
    from sandbox.settings import SandboxSettings
    from sandbox.traffic import install
    from settings_base import read_settings

    # Filled in, not overwritten: Terra endpoints set in the environment still win.
    for key, value in read_settings(SandboxSettings, environ).flask_config(app.config["PUBLIC_BASE_URL"]).items():
        app.config.setdefault(key, value)
    app.register_blueprint(bp, url_prefix=URL_PREFIX)
    install(app)
    # It stands in for an external service: its callers are API clients and Terra-hosted pages.
    csrf.exempt(bp)
