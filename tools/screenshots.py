"""`make screenshots`: take docs/walkthrough.md's pictures anew (docs/images/<step>.png).

It serves the app the way a fresh clone runs it (development, the embedded sandbox, a new SQLite
database in a temporary folder) on a free loopback port, and takes the walkthrough's steps
(tools/walkthrough.py) in Debian's headless Chromium, one picture per step.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

import click
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from tools.mobile_client import CHROMIUM_ARGS
from tools.walkthrough import walk_through

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def serve_fresh_app(folder: Path):
    """The app on a free loopback port with an empty, migrated database; returns (server, url)."""
    from flask_migrate import upgrade

    from app import create_app
    from extensions import db

    server = make_server("127.0.0.1", 0, None, threaded=True)
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
def main(out: Path, chromium: str) -> None:
    """Take one picture per walkthrough step into OUT."""
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per step, not per request

    def picture(step, page) -> None:
        page.screenshot(path=out / f"{step.image}.png", full_page=True)
        click.echo(f"{step.image}.png: {step.shows}")

    with tempfile.TemporaryDirectory() as folder:
        server, url = serve_fresh_app(Path(folder))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
                walk_through(browser, url, picture)
                browser.close()
        finally:
            server.shutdown()


if __name__ == "__main__":
    main()
