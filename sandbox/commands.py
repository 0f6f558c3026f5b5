"""`flask --app app sandbox serve`: the sandbox as Terra for another app, such as a copy of
terra_integration/ in yours (docs/copy-into-your-app.md, "Trying your copy against the sandbox")."""

from __future__ import annotations

import os

import click
from flask import current_app
from flask.cli import with_appcontext
from flask_migrate import upgrade
from werkzeug.serving import run_simple

from config import ServerSettings
from settings_base import read_settings

# The settings another app's TerraIntegration needs, each as the sandbox fills it in (sandbox/settings.py).
OTHER_APPS_SETTINGS = (
    "TERRA_DEV_ID",
    "TERRA_API_KEY",
    "TERRA_SIGNING_SECRET",
    "TERRA_API_BASE_URL",
    "TERRA_WIDGET_SESSION_URL",
    "TERRA_LEGACY_WIDGET_URL",
)


@click.group("sandbox", help="The embedded Terra sandbox.")
def sandbox_commands() -> None:
    pass


@sandbox_commands.command("serve")
@with_appcontext
def serve() -> None:
    """Play Terra for another app: migrate this app's database, print the other app's settings (as
    FLASK_* variables, which Flask's from_prefixed_env reads), and serve at PORT (or BIND), delivering
    the sandbox's webhooks to SANDBOX_WEBHOOK_URL, which must name the other app's webhook."""
    config = current_app.config
    if config["TERRA_MODE"] != "sandbox":
        raise click.ClickException(
            "the sandbox runs only without Terra credentials: unset TERRA_DEV_ID, TERRA_API_KEY and TERRA_SIGNING_SECRET"
        )
    if config["SANDBOX_WEBHOOK_URL"] in ("", config["PUBLIC_BASE_URL"] + "/webhooks/terra"):  # off, or this app
        raise click.ClickException(
            "set SANDBOX_WEBHOOK_URL to the other app's webhook, such as http://127.0.0.1:8000/webhooks/terra "
            "(every webhook of this sandbox goes there)"
        )
    host, _, port = read_settings(ServerSettings, os.environ).bind_address.rpartition(":")
    if not port.isdigit():
        raise click.ClickException("set PORT, or BIND as host:port: the sandbox serves over TCP")
    upgrade(revision="heads")
    click.echo(
        f"The sandbox plays Terra at {config['PUBLIC_BASE_URL']}/sandbox, delivering webhooks to {config['SANDBOX_WEBHOOK_URL']}."
    )
    click.echo("The other app's settings (Flask's from_prefixed_env reads FLASK_*):")
    for name in OTHER_APPS_SETTINGS:
        click.echo(f"FLASK_{name}={config[name]}")
    # Threads: the other app calls the sandbox while the sandbox's deliveries call the other app.
    run_simple(host, int(port), current_app._get_current_object(), threaded=True)
