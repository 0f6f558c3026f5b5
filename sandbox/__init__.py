"""An embedded emulator of Terra's side of "Connect a User", mounted at /sandbox when the app runs
without Terra credentials. The app's Terra client calls it over real HTTP exactly as it calls Terra.

Modules: `api` (Terra's REST and widget-session endpoints), `widget` (the hosted widget pages and the
automation endpoint), `flows` (what a decision in the widget does), `user_events` (what happens to a
connected user later), `events` (webhook bodies), `delivery` (signed webhooks with retries), `faults`
(switchable failures of Terra's endpoints and of webhook delivery), `traffic` (a record of what the
sandbox received and sent), `console` (a page listing sandbox users), `providers` (the catalogue),
`payloads` (ping-mode downloads), `models` (the sandbox's tables).
"""

from __future__ import annotations

from flask import Flask


def init_sandbox(app: Flask) -> None:
    from extensions import csrf
    from sandbox import api, console, payloads, widget  # noqa: F401  (each adds its routes to the blueprint)
    from sandbox.blueprint import URL_PREFIX, bp
    from sandbox.traffic import install

    app.register_blueprint(bp, url_prefix=URL_PREFIX)
    install(app)
    # It stands in for an external service: its callers are API clients and Terra-hosted pages.
    csrf.exempt(bp)
