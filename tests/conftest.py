"""Shared fixtures, in the style of Flask's tutorial (`app`, `client`, `auth`), plus `live_server`,
which serves the whole app (sandbox included) over real HTTP on loopback.

The database is SQLite in a temporary folder by default, or the PostgreSQL named by
TEST_DATABASE_URL. Either way the schema comes from the Alembic migrations, once per run, and every
test starts from empty tables.

The sandbox is a removable part of the app. Tests that need it are marked `sandbox`; in a copy of
the app without sandbox/, nothing plays Terra, so the apps built here run in live mode against a Terra
that refuses connections (LIVE_TERRA), and `pytest -m "not sandbox"` runs the tests that still apply
(tests/test_sandbox.py proves it on such a copy).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from werkzeug.serving import make_server

from app import create_app
from config import database_url
from extensions import db
from models.time import clock as app_clock
from terra_integration.applier import stop_in
from tests.helpers import terra_settings

TEST_SECRET_KEY = "test-secret-key-0123456789abcdef"
SANDBOX_INSTALLED = importlib.util.find_spec("sandbox") is not None
# Made-up credentials, and endpoints on a loopback port nothing listens on (9, "discard").
DEAD_TERRA = "http://127.0.0.1:9"
LIVE_TERRA = terra_settings(DEAD_TERRA)
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # the `flask` and `gunicorn` commands of this environment

# A developer's .env must not reach the tests: apps built here get their whole environment passed in,
# and the servers and commands started as subprocesses inherit this switch (config.load_env_file).
os.environ["FLASK_SKIP_DOTENV"] = "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "sandbox: needs the embedded Terra sandbox (sandbox/)")
    # Playwright's expect() gives up after 5 s; with a Chromium in each of the suite's processes on a
    # busy machine a page can take longer, so it waits as long as the pages' own 15 s timeout.
    expect.set_options(timeout=15_000)


# Seconds a module's tests take in all on 2 cores (junit, SQLite), for the modules that take more than a
# few: `make test` (--dist loadfile) hands them out first, so that the run does not end on one process
# still busy with a long module the other could have shared the time of. Only the order of the run
# depends on it: a module missing here, or a figure gone stale, costs time, never a result.
MODULE_SECONDS = {
    "tests/test_faults.py": 44,
    "tests/test_hostile_input.py": 35,
    "tests/test_mobile_devices.py": 26,
    "tests/test_browser.py": 25,
    "tests/test_api.py": 22,
    "tests/test_sandbox.py": 18,
    "tests/test_schemathesis.py": 12,
    "tests/test_production.py": 11,
    "tests/test_mobile_client.py": 10,
    "tests/test_openapi.py": 10,
    "tests/test_connect_flow.py": 9,
    "tests/test_generated_clients.py": 7,
    "tests/test_config.py": 5,
    "tests/test_reconciliation.py": 5,
    "tests/test_gunicorn.py": 5,
    "tests/test_inbox_applier.py": 4,
    "tests/test_auth.py": 4,
    "tests/test_poll_cost.py": 4,
    "tests/test_scale_out.py": 4,
    "tests/test_security.py": 4,
    "tests/test_concurrency.py": 4,
    "tests/test_data_arriving.py": 3,
}


def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, the longest modules first (MODULE_SECONDS; else 0.05 s a test). pytest-xdist's
    own order is by number of tests, which put modules of a few long browser and server tests last."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestModulesFirst(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:  # the first call: the work queue is complete, nothing handed out yet
                self.ordered = True
                units = sorted(
                    self.workqueue.items(), key=lambda unit: -MODULE_SECONDS.get(unit[0], 0.05 * len(unit[1]))
                )
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return LongestModulesFirst(config, log)


@pytest.fixture(scope="session")
def database_uri(tmp_path_factory, worker_id) -> str:
    """The run's database, migrated. Under pytest-xdist (`make test`) each process has its own: the
    SQLite file is in the process's own temporary folder, and TEST_DATABASE_URL's name gets the
    process's name appended (terra_connect_test_gw0, ...); `worker_id` is "master" without xdist."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        url = make_url(database_url({"DATABASE_URL": configured}, None))
        if worker_id != "master":
            url = url.set(database=f"{url.database}_{worker_id}")
        uri = url.render_as_string(hide_password=False)
        _recreate_postgres_database(uri)
    else:
        uri = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite'}"
    _migrate(uri)
    return uri


def _recreate_postgres_database(uri: str) -> None:
    url = make_url(uri)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()


def _migrate(uri: str) -> None:
    from flask_migrate import upgrade

    app = create_app(environ=_environ(uri))
    with app.app_context():
        upgrade(revision="heads")
        db.engine.dispose()


def _environ(uri: str, **extra: str) -> dict[str, str]:
    terra = {} if SANDBOX_INSTALLED else LIVE_TERRA
    return {"APP_ENV": "testing", "SECRET_KEY": TEST_SECRET_KEY, "DATABASE_URL": uri, **terra, **extra}


_tables_in: dict[str, frozenset[str]] = {}  # database URL -> its tables, looked up once per run


def _empty_tables(app) -> None:
    with app.app_context():
        url = db.engine.url.render_as_string(hide_password=False)
        if url not in _tables_in:
            _tables_in[url] = frozenset(inspect(db.engine).get_table_names()) - {"alembic_version"}
        names = _tables_in[url]
        # A server still applying a late webhook may lock the same rows in another order: PostgreSQL
        # then ends one of the two transactions as deadlocked, and emptying again succeeds.
        for tries_left in reversed(range(3)):
            try:
                with db.engine.begin() as connection:
                    for table in reversed(db.metadata.sorted_tables):
                        if table.name in names:
                            connection.execute(table.delete())
                break
            except OperationalError as error:
                if tries_left == 0 or "deadlock detected" not in str(error):
                    raise
        db.engine.dispose()


@pytest.fixture
def app(database_uri, tmp_path):
    # No applier thread: tests apply recorded webhook events in their own thread, when they choose
    # (tests.helpers.deliver, apply_inbox). The live servers below run the thread, as gunicorn does.
    app = create_app({"WTF_CSRF_ENABLED": False, "WEBHOOK_APPLY_IN_PROCESS": False}, environ=_environ(database_uri))
    app.instance_path = str(tmp_path)
    yield app
    _empty_tables(app)


@pytest.fixture
def advance_clock() -> Iterator[Callable[[float], None]]:
    """Move the app's clock (models/time.py) forward instead of sleeping; the live servers run in this
    process and read it too. The clock is back to the real time after the test."""

    def advance(seconds: float) -> None:
        app_clock.offset += timedelta(seconds=seconds)

    yield advance
    app_clock.offset = timedelta()


@pytest.fixture
def client(app):
    return app.test_client()


class AuthActions:
    def __init__(self, client):
        self._client = client

    def register(self, email="ada@example.com", password="correct horse battery"):
        return self._client.post("/auth/register", data={"email": email, "password": password})

    def login(self, email="ada@example.com", password="correct horse battery"):
        return self._client.post("/auth/login", data={"email": email, "password": password})

    def logout(self):
        return self._client.post("/auth/logout")


@pytest.fixture
def auth(client):
    return AuthActions(client)


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    """Serve `server` (Werkzeug's, or http.server's for a stub) from a thread until the block ends."""
    # serve_forever looks for shutdown every poll_interval (0.5 s by default): each server's
    # teardown would wait that long, and the suite starts hundreds of them.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def stub_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], ThreadingHTTPServer]]:
    """Serve a handler class on a loopback port until the test ends: a stand-in for Terra, a storage
    host or a webhook receiver. Its URL is http://127.0.0.1:<server.server_port>."""
    with ExitStack() as servers:

        def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
            return servers.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)))

        yield serve


class LiveServer:
    """The app on a real port: the Terra client, the sandbox and webhooks all go over HTTP."""

    def __init__(self, database_uri: str, **environ: str):
        self.http = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.app = create_app(
            environ=_environ(
                database_uri,
                PUBLIC_BASE_URL=self.url,
                SANDBOX_WEBHOOK_RETRY_BASE_SECONDS="0.05",
                SANDBOX_WEBHOOK_RETRY_CAP_SECONDS="0.5",
                **environ,
            )
        )

    def _dispatch(self, environ, start_response):
        return self.app(environ, start_response)


def serve_live_server(servers: ExitStack, database_uri: str, **environ: str) -> LiveServer:
    """Start the app on a real port until `servers` closes."""
    server = LiveServer(database_uri, **environ)
    # Its applier thread stops after the server: else it goes on in the next tests' database.
    servers.callback(stop_in, server.app)
    servers.enter_context(serving(server.http))
    return server


@pytest.fixture
def start_live_server(database_uri):
    """Start the app on a real port with extra environment, e.g. TERRA_WIDGET_API=legacy."""
    started: list[LiveServer] = []
    with ExitStack() as servers:

        def start(**environ: str) -> LiveServer:
            started.append(serve_live_server(servers, database_uri, **environ))
            return started[-1]

        yield start
    if started:
        _empty_tables(started[0].app)


@pytest.fixture
def live_server(start_live_server) -> LiveServer:
    return start_live_server()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(
    command: list[str],
    *,
    health_url: str,
    env: dict[str, str],
    log_path: Path,
    cwd: Path = ROOT,
    verify: bool | str = True,
) -> Iterator[subprocess.Popen]:
    """Run a server as a subprocess until the block ends, once `health_url` answers 200 (`verify`: the
    CA bundle for https). Its output goes to `log_path`; it fails the test if the process exits early."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def healthy():
                assert process.poll() is None, log_path.read_text()
                try:
                    return requests.get(health_url, timeout=2, verify=verify).status_code == 200
                except requests.RequestException:  # not listening yet, or a worker still booting
                    return False

            # Each gunicorn worker imports the app: on a busy machine, booting takes tens of seconds.
            wait_for(healthy, timeout=90, interval=0.2)
            yield process
        finally:
            # A clean shutdown is not under test: the server and every process it started (gunicorn's
            # workers, a reloader) end at once. Even gunicorn's quick shutdown (SIGINT) took seconds.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def gunicorn(database_uri: str, log_folder: Path, **extra_env: str) -> Iterator[str]:
    """The app under the shipped gunicorn configuration (several worker processes) on a free port,
    with extra environment, until the block ends; yields its URL. Its output goes to
    log_folder/gunicorn-<port>.log."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "SECRET_KEY": TEST_SECRET_KEY,
        "DATABASE_URL": database_uri,
        "PUBLIC_BASE_URL": url,
        "BIND": f"127.0.0.1:{port}",
        "SANDBOX_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        **extra_env,
    }
    with server_process(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"],
        health_url=url + "/healthz",
        env=env,
        log_path=log_folder / f"gunicorn-{port}.log",
    ):
        yield url


@pytest.fixture
def start_gunicorn(database_uri, tmp_path):
    """Start gunicorn (see `gunicorn`) for this test, with extra environment; returns its URL."""
    with ExitStack() as servers:
        yield lambda **extra_env: servers.enter_context(gunicorn(database_uri, tmp_path, **extra_env))


@pytest.fixture
def gunicorn_server(start_gunicorn) -> str:
    return start_gunicorn()


class Browser:
    """A requests.Session that fills in CSRF tokens the way a browser submits the real forms."""

    CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = requests.Session()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.http.get(self._url(path), timeout=10, **kwargs)

    def submit(self, page_path: str, action: str, data: dict | None = None, **kwargs) -> requests.Response:
        """Load `page_path`, take its CSRF token, and post `data` to `action`."""
        page = self.get(page_path)
        match = self.CSRF.search(page.text)
        assert match, f"no CSRF token on {page_path}"
        return self.http.post(
            self._url(action), data={"csrf_token": match.group(1), **(data or {})}, timeout=10, **kwargs
        )

    def register(self, email="ada@example.com", password="correct horse battery") -> requests.Response:
        return self.submit("/auth/register", "/auth/register", {"email": email, "password": password})

    def login(self, email="ada@example.com", password="correct horse battery") -> requests.Response:
        return self.submit("/auth/login", "/auth/login", {"email": email, "password": password})

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base_url + path


@pytest.fixture
def browser(live_server) -> Browser:
    return Browser(live_server.url)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll until `predicate()` is truthy and return its value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# CI's PostgreSQL server (.ci/run), for the tests that need PostgreSQL on a run on SQLite too.
POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/terra_connect_test"


@pytest.fixture
def postgres_database(worker_id) -> Iterator[str]:
    """A PostgreSQL database of the test's own: on TEST_DATABASE_URL's server, or on the local one when
    the suite runs on SQLite. No server is a failure, never a skip: CI's SQLite pass runs this too."""
    configured = os.environ.get("TEST_DATABASE_URL", "")
    server = make_url(database_url({"DATABASE_URL": configured}, None) if configured else POSTGRES_SERVER)
    if server.get_backend_name() != "postgresql":
        server = make_url(POSTGRES_SERVER)
    uri = server.set(database=f"{server.database}_own_{worker_id}").render_as_string(hide_password=False)
    try:
        _recreate_postgres_database(uri)
    except OperationalError as error:
        pytest.fail(f"this test needs the PostgreSQL server at {server.host}:{server.port}: {error}")
    yield uri
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(uri).database}" WITH (FORCE)'))
    admin.dispose()
