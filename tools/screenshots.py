"""`make screenshots`: take docs/walkthrough.md's pictures anew (docs/images/<step>.png).

It serves the app the way a fresh clone runs it (development, the embedded sandbox, a new SQLite
database in a temporary folder) on http://127.0.0.1:5000, the address `make run` serves and the
walkthrough's text gives (the sandbox console shows it in the pictures), and takes the walkthrough's
steps (tools/walkthrough.py) in Debian's headless Chromium, one picture per step. `--only` keeps the
pictures of some steps and leaves the others as they are.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from pathlib import Path

import click
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from tools.mobile_client import CHROMIUM_ARGS
from tools.walkthrough import FLOWS, walk_through

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


DOCUMENTED_PORT = 5000  # `make run`'s, in docs/walkthrough.md's addresses


def serve_fresh_app(folder: Path, port: int = 0):
    """The app on loopback `port` (0: a free one) with an empty, migrated database; returns (server, url)."""
    from flask_migrate import upgrade

    from app import create_app
    from extensions import db

    if port:
        # Asked first: werkzeug's make_server ends the process on a port in use, with its own advice.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as error:
                raise click.ClickException(
                    f"cannot serve on 127.0.0.1:{port} ({error.strerror}): the pictures show the walkthrough's "
                    "address, so stop what uses the port (`make run`?) and try again"
                ) from None
    server = make_server("127.0.0.1", port, None, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    app = create_app(
        environ={
            "APP_ENV": "development",
            "SECRET_KEY": "walkthrough-screenshots-not-a-secret",
            "DATABASE_URL": f"sqlite:///{folder / 'walkthrough.sqlite'}",
            "PUBLIC_BASE_URL": url,
        }
    )
    app.instance_path = str(folder)
    with app.app_context():
        upgrade(revision="heads")
        db.engine.dispose()
    server.app = app
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, url


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=IMAGES, show_default=True)
@click.option("--chromium", default=lambda: os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"), show_default=True)
@click.option("--only", multiple=True, help="Keep only this step's picture (e.g. web-09-sandbox-console); repeatable.")
def main(out: Path, chromium: str, only: tuple[str, ...]) -> None:
    """Take one picture per walkthrough step into OUT (every step runs: each starts where the last ended)."""
    unknown = set(only) - {step.image for steps in FLOWS for step in steps}
    if unknown:
        raise click.BadParameter(f"no such step: {', '.join(sorted(unknown))}", param_hint="--only")
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per step, not per request

    def picture(step, page) -> None:
        if only and step.image not in only:
            return
        page.screenshot(path=out / f"{step.image}.png", full_page=True)
        click.echo(f"{step.image}.png: {step.shows}")

    with tempfile.TemporaryDirectory() as folder:
        server, url = serve_fresh_app(Path(folder), DOCUMENTED_PORT)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
                walk_through(browser, url, picture)
                browser.close()
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
