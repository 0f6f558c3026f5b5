"""The application factory. `flask --app app` and gunicorn (`app:create_app()`) both call `create_app`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, render_template, request
from sqlalchemy import event
from werkzeug.exceptions import BadHost, HTTPException, SecurityError
from werkzeug.middleware.proxy_fix import ProxyFix

from blueprints.status_fast_path import StatusFastPath
from config import FORWARDED_HEADERS, load_config, process_environment
from extensions import csrf, db, limiter, migrate, terra
from sandbox import init_sandbox  # the embedded Terra emulator: delete this, its call below and sandbox/ to drop it
from services.json_errors import json_error


def create_app(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    environ = process_environment() if environ is None else environ
    app.config.update(load_config(environ, app.instance_path))
    init_sandbox(app, environ)
    if overrides:
        app.config.update(overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_security_headers(app)
    register_commands(app)
    # In front of Flask, behind the proxy headers: polls with nothing new, answered without Flask.
    app.wsgi_app = StatusFastPath(app, app.wsgi_app, security_headers(app))
    if app.config["TRUSTED_PROXY_COUNT"]:
        # Only the headers the deployment says its proxy sets: a client's own X-Forwarded-Prefix or
        # -Port, passed on by a proxy that does not overwrite them, would move every page link.
        hops = app.config["TRUSTED_PROXY_COUNT"]
        trusted = {f"x_{name}": hops for name in app.config["TRUSTED_PROXY_HEADERS"]}
        app.wsgi_app = ProxyFix(app.wsgi_app, **{f"x_{name}": 0 for name in FORWARDED_HEADERS} | trusted)
    return app


def register_extensions(app: Flask) -> None:
    import models  # noqa: F401  (registers the tables with SQLAlchemy before migrations look)
    from services import api_tokens
    from services.event_handlers import ConnectionEvents

    db.init_app(app)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _use_sqlite_wal)
    migrate.init_app(app, db, directory=str(app.root_path + "/migrations"))
    csrf.init_app(app)
    limiter.init_app(app)
    terra.init_app(app, host=ConnectionEvents())  # the Terra client, and the webhook blueprint
    api_tokens.init_app(app)


def _use_sqlite_wal(dbapi_connection, _connection_record) -> None:
    # SQLite's default rollback journal makes every reader wait for the writer and every commit an
    # fsync of the journal and the file; with a write-ahead log, reads go on during a write and a
    # commit is one append. NORMAL in WAL mode: an app crash loses nothing committed, a power cut
    # or OS crash may lose the last commits (SQLite is the development default; production runs
    # PostgreSQL). docs/performance.md measured +35-50 % webhook throughput.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def register_blueprints(app: Flask) -> None:
    from blueprints.api import bp as api_bp
    from blueprints.auth import bp as auth_bp
    from blueprints.connect import bp as connect_bp
    from blueprints.health import bp as health_bp
    from mobile_redirects.views import bp as mobile_bp
    from terra_integration.webhooks import bp as webhooks_bp

    app.register_blueprint(health_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(connect_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(mobile_bp)
    csrf.exempt(webhooks_bp)  # authenticated by Terra's signature instead
    limiter.exempt(webhooks_bp)  # no limit applies to Terra's deliveries: skip the limiter's per-request look


def register_errorhandlers(app: Flask) -> None:
    def wants_json() -> bool:
        return request.path.startswith(("/webhooks/", "/api/")) or request.accept_mimetypes.best == "application/json"

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):
        if error.response is not None:  # already a complete answer (e.g. Authlib's RFC 6750 error)
            return error.response
        # The error's own headers (a 405's `Allow`) go into every answer; its Content-Type does not.
        headers = [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]
        if wants_json():
            code = (error.name or "error").lower().replace(" ", "_")
            return json_error(error.code, code, error.description, headers)
        if isinstance(error, (BadHost, SecurityError)):
            # A Host header that is malformed (an overlong or empty label) or not trusted leaves the
            # request without URL routing, so the page template (its url_for) cannot be rendered.
            return error.description, error.code, {"Content-Type": "text/plain; charset=utf-8"}
        return render_template("errors/error.html", error=error), error.code, headers

    @app.errorhandler(Exception)
    def handle_unexpected_error(error: Exception):
        # Log the details for operators; show the user a plain message, never a stack trace.
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side. Please try again."
        if wants_json():
            return json_error(500, "internal_error", message)
        return render_template("errors/error.html", error=None, message=message), 500


def security_headers(app: Flask) -> dict[str, str]:
    """The headers every answer carries (unless a view set its own), also those of the status fast path."""
    # Chrome applies form-action to the redirect after a form post too: "Connect" redirects to Terra's
    # widget (https), the sandbox's pages to http:// loopback addresses (never in production), and the
    # widget's consent form may redirect into the app's own scheme, so that scheme is allowed as a target.
    form_targets = "'self' https:" if app.config["APP_ENV"] == "production" else "'self' http: https:"
    if app.config["MOBILE_APP_SCHEME"]:
        form_targets += f" {app.config['MOBILE_APP_SCHEME']}:"
    headers = {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            f"frame-ancestors 'none'; form-action {form_targets}"
        ),
        "X-Content-Type-Options": "nosniff",
        # Our own forms need the Referer: over HTTPS, Flask-WTF's CSRF check requires a same-origin one.
        # Other sites never see our URLs (return pages carry signed attempt tokens in theirs).
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }
    if app.config["SESSION_COOKIE_SECURE"]:  # production: HTTPS only, remembered by the browser
        headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return headers


def register_security_headers(app: Flask) -> None:
    headers = security_headers(app)

    @app.after_request
    def set_security_headers(response):
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        if request.path.startswith("/api/"):  # every API answer, routing errors included
            response.headers["Cache-Control"] = "no-store"
        elif response.mimetype == "text/html":
            # Every page shows a user's data or holds a CSRF token of their session: never cached.
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def register_commands(app: Flask) -> None:
    from commands import register

    register(app)
