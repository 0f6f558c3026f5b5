"""What every benchmark shares: the fresh database, seed rows, the servers under the shipped gunicorn
configuration, the wrk load generator, py-spy profiles, and the printed tables.

Nothing here talks to anything but 127.0.0.1, and everything started is stopped by its own pid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import requests

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = Path(__file__).resolve().parent / "lua"
PYTHON = sys.executable
BENCH_SECRET_KEY = "bench-secret-key-0123456789abcdef-not-for-production"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/terra_connect_bench"
SIGNING_SECRET = "sandbox-signing-secret-not-for-production"  # the sandbox default; set explicitly below
APP_SPEC = "app:create_app()"
BARE_SPEC = "tools.bench.bare_app:create_app()"

if str(ROOT) not in sys.path:  # `python -m tools.bench.x` from the repository root already has it
    sys.path.insert(0, str(ROOT))


# -- arguments --------------------------------------------------------------------------------------


def parser(
    description: str, *, duration: float, duration_help: str = "seconds per measurement"
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db", choices=("sqlite", "postgresql"), required=True, help="the database to run against")
    p.add_argument("--duration", type=float, default=duration, help=f"{duration_help} (default {duration:g})")
    p.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
        help="the PostgreSQL database to DROP and recreate (default %(default)s); loopback only",
    )
    p.add_argument("--json", type=Path, help="also write the results to this file as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, SQLite file) and the database")
    p.add_argument(
        "--app-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the app's server, to measure a configuration variant "
        "(e.g. RATELIMIT_STORAGE_URI=redis://127.0.0.1:6379/15); repeatable",
    )
    return p


def add_wrk_load_options(p: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that load the server with wrk at several concurrencies."""
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 16, 64], help="client counts (default 1,16,64)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each measurement")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leaves the cores to the servers)")
    p.add_argument("--profile", type=Path, help="also profile the app's workers with py-spy into this folder")


def app_env_overrides(args: argparse.Namespace) -> dict[str, str]:
    extra = {}
    for item in args.app_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--app-env takes NAME=VALUE, not {item!r}")
        if "redis://" in value and not re.search(r"redis://(127\.0\.0\.1|localhost)[:/]", value):
            raise SystemExit("only a loopback redis may be used")
        extra[name] = value
    return extra


def command_line() -> str:
    """This benchmark's command as typed at the repository root: `.venv/bin/python -m tools.bench.x ...`
    (`python -m` names the module in __main__'s spec; a script run by its path has none)."""
    spec = sys.modules["__main__"].__spec__
    python = os.path.relpath(PYTHON, ROOT) if Path(PYTHON).is_relative_to(ROOT) else PYTHON
    return shlex.join([python, *(["-m", spec.name] if spec else [sys.argv[0]]), *sys.argv[1:]])


def concurrency_list(text: str) -> list[int]:
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or any(value < 1 or value > 256 for value in values):
        raise argparse.ArgumentTypeError("a comma-separated list of client counts between 1 and 256")
    return values


# -- the run: temp folder, database, processes --------------------------------------------------------


class Run(ExitStack):
    """One benchmark run. Leaving it stops every process it started and removes what it created."""

    def __init__(self, args: argparse.Namespace, name: str):
        super().__init__()
        self.args = args
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.database = Database(args.db, self.tmp, args.pg_url)
        self.processes: list[subprocess.Popen] = []
        self.results: dict[str, Any] = {
            "benchmark": name,
            "db": args.db,
            "command": command_line(),
            "options": vars(args),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(args.db, args.pg_url),
        }

    def __enter__(self) -> Self:
        super().__enter__()
        self.callback(self._cleanup)
        self.database.create()
        if self.args.db == "postgresql":
            from sqlalchemy.engine import make_url

            PG_DATABASE["name"] = make_url(self.database.url).database
        print_machine(self.results["machine"])
        print(f"work folder: {self.tmp}")
        return self

    def _cleanup(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        if self.args.json:
            self.results["load_after"] = load_average()
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps(self.results, indent=2, default=str))
            print(f"results written to {self.args.json}")
        print(f"load average at the end: {load_average()}")
        if not self.args.keep:
            self.database.drop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # servers

    def environ(self, port: int, **extra: str) -> dict[str, str]:
        return app_environ(self.database.url, port, **extra)

    def start_server(self, spec: str = APP_SPEC, *, label: str = "app", cwd: Path = ROOT, **extra_env: str) -> Server:
        """Serve `spec` under gunicorn with the gunicorn.conf.py of `cwd` (another checkout's, to
        measure its code in the same run)."""
        port = free_port()
        if spec == APP_SPEC:
            extra_env = {**app_env_overrides(self.args), **extra_env}
        env = {**self.environ(port, **extra_env)}
        log_path = self.tmp / f"{label}-{port}.log"
        log = self.enter_context(open(log_path, "w"))  # noqa: SIM115 (closed by the run's exit stack)
        process = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "--config", "gunicorn.conf.py", spec],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        server = Server(label=label, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        server.wait_healthy()
        return server

    def stop_server(self, server: Server) -> None:
        stop_process(server.process)
        if server.process in self.processes:
            self.processes.remove(server.process)

    def spawn(self, argv: Sequence[str], *, label: str) -> subprocess.Popen:
        """Run `argv` (an app command, say) in the app's environment on the run's database."""
        log = self.enter_context(open(self.tmp / f"{label}.log", "w"))  # noqa: SIM115 (closed by the run's exit stack)
        process = subprocess.Popen(
            list(argv), cwd=ROOT, env=self.environ(0), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append(process)
        return process

    def stop_spawned(self, process: subprocess.Popen) -> None:
        stop_process(process)
        self.processes.remove(process)

    # the app in this process (migrations, seeding, query plans)

    def flask_app(self):
        from app import create_app

        return create_app(environ=app_environ(self.database.url, 0))

    def migrate(self):
        """Apply the Alembic migrations exactly as the tests do; returns the app for seeding."""
        from flask_migrate import upgrade

        app = self.flask_app()
        with app.app_context():
            upgrade(revision="heads")
        quiet_logs()
        variant = app_env_overrides(self.args)
        if variant:
            self.results["variant"] = {"app_env": variant}
            print(f"VARIANT: app environment {variant}")
        return app


def app_environ(database_url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of the app (sandbox mode: no Terra credentials) for a benchmark run."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("TERRA_", "SANDBOX_", "DATABASE_URL", "WEB_CONCURRENCY", "GUNICORN_"))
    }
    url = f"http://127.0.0.1:{port}"
    env.update(
        APP_ENV="development",
        SECRET_KEY=BENCH_SECRET_KEY,
        DATABASE_URL=database_url,
        PUBLIC_BASE_URL=url,
        BIND=f"127.0.0.1:{port}",
        SANDBOX_SIGNING_SECRET=SIGNING_SECRET,
        # The benchmarks measure throughput, not the throttles (which would answer 429 instead).
        LOGIN_RATE_LIMIT="1000000 per minute",
        STATUS_RATE_LIMIT="1000000 per minute",
        CONNECT_RATE_LIMIT="1000000 per minute",
        SANDBOX_USER_CAP="100000000",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def quiet_logs() -> None:
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    for name in ("alembic", "sqlalchemy", "flask_migrate"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Database:
    """A fresh database: a SQLite file in the run's folder, or the PostgreSQL database named by
    --pg-url, dropped and recreated (loopback only)."""

    def __init__(self, kind: str, folder: Path, pg_url: str):
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{folder / 'bench.sqlite'}"
        else:
            from sqlalchemy.engine import make_url

            url = make_url(pg_url)
            if url.host not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit(f"--pg-url must point at loopback, not {url.host!r}")
            self.url = url.render_as_string(hide_password=False)

    def _admin(self):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        url = make_url(self.url)
        return url.database, create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def create(self) -> None:
        if self.kind != "postgresql":
            return
        from sqlalchemy import text

        name, admin = self._admin()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()

    def drop(self) -> None:
        if self.kind != "postgresql":
            return
        from sqlalchemy import text

        name, admin = self._admin()
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


@dataclass
class Server:
    label: str
    url: str
    process: subprocess.Popen
    log_path: Path

    def wait_healthy(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.label} server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200 and len(self.worker_pids()) >= 1:
                    # Every worker must be up, not just the first one that answered.
                    time.sleep(0.5)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.label} server did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        return children(self.process.pid)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(item) for item in text.split()]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process we started (gunicorn stops its own workers), SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in children(process.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.kill()
        process.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- seed rows ---------------------------------------------------------------------------------------


@dataclass
class Seeded:
    user_id: int
    reference_id: str
    token: str
    attempt_ids: list[str] = field(default_factory=list)
    session_ids: list[str] = field(default_factory=list)


def seed_user(app, email: str | None = None, *, attempts: int = 1, expires_in: timedelta = timedelta(days=2)) -> Seeded:
    """A user with a bearer token and `attempts` pending connect attempts (each with a Terra session id)."""
    from extensions import db
    from models import ConnectAttempt, User
    from models.time import utcnow
    from services.api_tokens import issue_token
    from terra_integration.reference_ids import new_reference_id

    with app.app_context():
        # The password is never used (the benchmarks hold bearer tokens); a real hash would cost 50 ms.
        user = User(
            email=email or f"bench-{uuid.uuid4().hex[:12]}@example.com",
            password_hash="bench:not-a-password",
            reference_id=new_reference_id(),
        )
        db.session.add(user)
        db.session.commit()
        token, _ = issue_token(user)
        seeded = Seeded(user_id=user.id, reference_id=user.reference_id, token=token)
        rows = []
        for _ in range(attempts):
            session_id = str(uuid.uuid4())
            row = ConnectAttempt(
                user_id=user.id, channel="mobile", terra_session_id=session_id, expires_at=utcnow() + expires_in
            )
            rows.append(row)
            seeded.session_ids.append(session_id)
        db.session.add_all(rows)
        db.session.commit()
        seeded.attempt_ids = [row.id for row in rows]
        db.session.remove()
    return seeded


def seed_connection(app, user_id: int, terra_user_id: str, provider: str = "GARMIN") -> None:
    from extensions import db
    from models import Connection

    with app.app_context():
        db.session.add(
            Connection(user_id=user_id, terra_user_id=terra_user_id, provider=provider, scopes="ACTIVITY_EXPORT")
        )
        db.session.commit()
        db.session.remove()


# -- webhook bodies, as Terra sends them ---------------------------------------------------------------


def terra_user(reference_id: str, user_id: str, provider: str = "GARMIN") -> dict:
    return {
        "user_id": user_id,
        "provider": provider,
        "reference_id": reference_id,
        "scopes": "ACTIVITY_EXPORT,HEALTH_EXPORT",
        "active": True,
        "last_webhook_update": None,
    }


def event_body(event_type: str, reference_id: str, terra_user_id: str, /, **fields: Any) -> bytes:
    """A Terra event of `event_type` about one Terra user, with `fields` beside its type and user."""
    event = {"type": event_type, "version": "2022-03-16", **fields, "user": terra_user(reference_id, terra_user_id)}
    return json.dumps(event, separators=(",", ":")).encode()


def auth_body(reference_id: str, terra_user_id: str, session_id: str) -> bytes:
    """A successful authentication through the widget session `session_id`: it connects that attempt."""
    return event_body(
        "auth",
        reference_id,
        terra_user_id,
        status="success",
        message="User has successfully authenticated",
        reference_id=reference_id,
        widget_session_id=session_id,
        flow_id=session_id,
    )


def data_body(kind: str, reference_id: str, terra_user_id: str) -> bytes:
    """A data event (`activity`, `daily`, `sleep`...) with one item of the sandbox's sample data."""
    from sandbox.sample_data import sample_items

    return event_body(kind, reference_id, terra_user_id, data=sample_items(kind))


# The account events the benchmarks send about a connected user, with what each needs besides its
# user to be applied: a `deauth` revokes the connection (again, idempotently, when repeated), a
# `permission_change` states the user's scopes (`terra_user`'s) and the change.
ACCOUNT_EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "deauth": {"status": "success", "message": "User has deauthenticated"},
    "permission_change": {"scopes_added": ["HEALTH_EXPORT"], "scopes_removed": []},
}


def account_body(event_type: str, reference_id: str, terra_user_id: str) -> bytes:
    return event_body(event_type, reference_id, terra_user_id, **ACCOUNT_EVENT_FIELDS[event_type])


def never_sent(bodies: list[bytes], count: int, nonces: Iterator[int]) -> list[bytes]:
    """`count` bodies taken from `bodies` in turn, each made one never sent before by a nonce of its
    own: the inbox refuses a body signed at the same second twice (as a replay)."""
    return [bodies[number % len(bodies)][:-1] + b',"bench_nonce":%d}' % next(nonces) for number in range(count)]


def signed_headers(body: bytes, trace_id: str | None = None) -> dict[str, str]:
    from terra_integration.signature import sign

    headers = {"Content-Type": "application/json", "X-Terra-Signature": sign(body, SIGNING_SECRET)}
    headers["X-Terra-Trace-Id"] = trace_id or str(uuid.uuid4())
    return headers


def write_webhook_data(path: Path, bodies: list[bytes], seconds_ahead: float) -> None:
    """The file webhooks.lua reads: every body, and its signature at timestamps 240 s apart covering
    the whole run, so each request can carry one within Terra's ±300 s tolerance."""
    from terra_integration.signature import sign

    start = int(time.time())
    stamps = [start + 240 * k for k in range(int(seconds_ahead // 240) + 2)]
    with open(path, "w") as out:
        for index, body in enumerate(bodies, start=1):
            text = body.decode()
            assert "\t" not in text and "\n" not in text
            out.write(f"B\t{text}\n")
            out.writelines(f"S\t{index}\t{stamp}\t{sign(body, SIGNING_SECRET, stamp)}\n" for stamp in stamps)


# -- wrk ---------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: install Debian's package (apt-get install -y wrk) and run again")
    print("wrk is missing: installing Debian's package", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, timeout=600)
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk did not install")
    return path


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    cpu: dict[str, float] = field(default_factory=dict)  # CPU ms per request by process group (CpuMeter)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "rps": round(self.rps, 1),
            "requests": self.requests,
            "seconds": round(self.seconds, 2),
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "max_ms": self.max_ms,
            "statuses": self.statuses,
            "errors": self.errors,
            "cpu_ms_per_request": self.cpu,
        }


def wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    headers: Iterable[str] = (),
    script: str = "report.lua",
    script_args: Sequence[str] = (),
    threads: int = 1,
    timeout_s: int = 30,
) -> LoadResult:
    """Run wrk against `url` (loopback only) for `duration` seconds; wrk's Lua prints one JSON line."""
    assert url.startswith("http://127.0.0.1:"), url
    binary = ensure_wrk()
    threads = max(1, min(threads, connections))
    argv = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA_DIR / script),
    ]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + timeout_s + 30, check=False)
    match = re.search(r"^BENCH_JSON (.+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(match.group(1))
    return LoadResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        statuses={str(key): value for key, value in (data.get("statuses") or {}).items()},
        errors={key: value for key, value in data["errors"].items() if value},
    )


def measure(server: Server, run_load) -> LoadResult:
    """`run_load()` (a wrk call) with the CPU it cost, per request: the server's processes, PostgreSQL's
    backends, the load generator, and the rest of the machine (other work sharing the two cores)."""
    meter = CpuMeter(server)
    meter.start()
    result = run_load()
    result.cpu = meter.stop(result.requests)
    return result


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


PG_DATABASE = {"name": None}  # the benchmark's database: only its backends are counted


def _postgres_pids() -> list[int]:
    """The PostgreSQL backends serving the benchmark's database (their process title names it), so
    that other databases' work on the same server is not counted."""
    name = PG_DATABASE["name"]
    if not name:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f" {name} " in title:
                pids.append(int(entry.name))
    return pids


def _machine_busy_seconds() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS, sum(values[:8]) / CLOCK_TICKS


class CpuMeter:
    def __init__(self, server: Server):
        self.server = server

    def _snapshot(self) -> dict[str, float]:
        import resource

        app_pids = [self.server.process.pid, *self.server.worker_pids()]
        busy, total = _machine_busy_seconds()
        children_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "app": {pid: _proc_cpu_seconds(pid) for pid in app_pids},
            "postgres": {pid: _proc_cpu_seconds(pid) for pid in _postgres_pids()},
            "loadgen": children_usage.ru_utime + children_usage.ru_stime,
            "busy": busy,
            "total": total,
            "wall": time.monotonic(),
        }

    def start(self) -> None:
        self.before = self._snapshot()

    def stop(self, requests_done: int) -> dict[str, float]:
        after = self._snapshot()
        delta = {}
        for key, value in after.items():
            if isinstance(value, dict):  # per pid: a process that ended is left out, a new one counts from 0
                delta[key] = sum(max(seconds - self.before[key].get(pid, 0.0), 0.0) for pid, seconds in value.items())
            else:
                delta[key] = value - self.before[key]
        n = max(requests_done, 1)
        other = delta["busy"] - delta["app"] - delta["postgres"] - delta["loadgen"]
        return {
            "app_ms": round(delta["app"] / n * 1000, 3),
            "postgres_ms": round(delta["postgres"] / n * 1000, 3),
            "loadgen_ms": round(delta["loadgen"] / n * 1000, 3),
            "cores_busy": round(delta["busy"] / delta["wall"], 2),
            "other_cores": round(max(other, 0) / delta["wall"], 2),
        }


def rate_and_cpu(result) -> list:
    """A measured cell's rate, then its CPU figures in the order the CPU tables list them (app,
    postgres, load generator, cores busy, other cores: the order the CPU sampler reports them)."""
    return [result.rps, *result.cpu.values()]


# -- profiles ----------------------------------------------------------------------------------------


def py_spy(pid: int, seconds: float, out: Path, *, mode: str = "wall", rate: int = 250) -> subprocess.Popen:
    """Start sampling a gunicorn master and its workers (`--subprocesses`) for `seconds`: raw collapsed stacks.

    mode "wall": every thread, idle or not (`--idle`): where a request's time goes, waits included.
    mode "gil": only the thread holding the GIL (`--gil`): where the workers' Python CPU time goes,
    which is what bounds throughput when the cores are busy."""
    binary = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(binary).exists():
        raise SystemExit("py-spy is missing: .venv/bin/uv pip install -r tools/bench/requirements.txt")
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    argv.append("--idle" if mode == "wall" else "--gil")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(
    path: Path, *, within: str | None = "full_dispatch_request", top: int = 25, skip: tuple[str, ...] = ()
) -> list[tuple[str, float]]:
    """Share of samples spent inside each function, inclusive, counted from the frame `within` down
    (samples whose stack does not pass through `within` are left out; None: all samples, all frames).
    In "wall" mode that is wall time, waits included; in "gil" mode it is Python CPU time."""
    inclusive: Counter[str] = Counter()
    total = 0
    for stack, n in _samples(path, within):
        total += n
        frames = stack.split(";")
        start = 0 if within is None else next(i for i, frame in enumerate(frames) if within in frame)
        seen = set()
        for frame in frames[start:]:
            name = _frame_name(frame)
            if name not in seen and not any(word in name for word in skip):
                seen.add(name)
                inclusive[name] += n
    if not total:
        return []
    return [(name, count / total) for name, count in inclusive.most_common(top)]


def _samples(path: Path, within: str | None) -> Iterable[tuple[str, int]]:
    """(stack, sample count) of each sample in a py-spy raw file whose stack passes through `within`
    (None: all)."""
    for line in path.read_text().splitlines():
        stack, count = _sample(line)
        if stack is not None and (within is None or within in stack):
            yield stack, count


def _sample(line: str) -> tuple[str | None, int]:
    """One line of py-spy's raw output: (stack, sample count); (None, 0) for a line that is not one
    (a frame name can contain spaces and newlines, which split a sample across lines)."""
    stack, _, count = line.rpartition(" ")
    return (stack, int(count)) if count.isdigit() and stack else (None, 0)


def leaf_profile(path: Path, *, within: str | None = None, top: int = 15) -> list[tuple[str, float]]:
    """Share of samples by the innermost frame (self time), among stacks through `within` (None: all)."""
    leaves: Counter[str] = Counter()
    total = 0
    for stack, count in _samples(path, within):
        total += count
        leaves[_frame_name(stack.split(";")[-1])] += count
    return [(name, count / total) for name, count in leaves.most_common(top)] if total else []


def profile_server(server: Server, load, *, seconds: float, out_prefix: Path, label: str) -> None:
    """Run `load()` (which should last about `seconds`) twice under py-spy: once sampling wall time,
    once sampling the GIL holder; print where the time goes and keep the raw stacks."""
    for mode in ("wall", "gil"):
        out = out_prefix.with_name(f"{out_prefix.name}-{mode}.txt")
        sampler = py_spy(server.process.pid, seconds + 2, out, mode=mode)
        time.sleep(0.5)  # let py-spy attach to every worker before the load starts
        load()
        sampler.wait(timeout=seconds + 60)
        if not out.exists():
            print(f"py-spy wrote nothing to {out}")
            continue
        if mode == "wall":
            print_profile(
                f"{label}: wall time inside request handling, inclusive (py-spy --idle; {out})",
                summarize_profile(out, top=30),
            )
            print_profile(
                f"{label}: wall time inside request handling, by innermost frame",
                leaf_profile(out, within="full_dispatch_request"),
            )
        else:
            print_profile(
                f"{label}: Python CPU time of the workers (GIL holder), inclusive (py-spy --gil; {out})",
                summarize_profile(
                    out,
                    within=None,
                    top=40,
                    skip=("_bootstrap", "Thread.run", "<module>", "run (gunicorn", "main (", "process "),
                ),
            )
            print_profile(
                f"{label}: Python CPU time of the workers, by innermost frame",
                [row for row in leaf_profile(out, top=16) if not row[0].startswith("process ")],
            )


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; drop the line, shorten the path.
    match = re.match(r"(.+?) \((.+?)(?::\d+)?\)$", frame.strip())
    if not match:
        return frame.strip()
    function, file = match.groups()
    file = file.replace(str(ROOT) + "/", "")
    file = re.sub(r".*/site-packages/", "", file)
    file = re.sub(r".*/lib/python3\.\d+/", "", file)
    return f"{function} ({file})"


def print_profile(title: str, rows: list[tuple[str, float]]) -> None:
    print(f"\n{title}")
    for name, share in rows:
        print(f"  {share * 100:5.1f}%  {name}")


# -- facts about the machine, and tables -------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_info(db: str, pg_url: str) -> dict:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    info = {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_before": load_average(),
        "db": db,
    }
    from importlib.metadata import version

    for package in ("gunicorn", "flask", "sqlalchemy"):
        info[package] = version(package)
    if db == "postgresql":
        try:
            from sqlalchemy import create_engine, text
            from sqlalchemy.engine import make_url

            engine = create_engine(make_url(pg_url).set(database="postgres"))
            with engine.connect() as connection:
                info["postgresql"] = connection.execute(text("SHOW server_version")).scalar()
            engine.dispose()
        except Exception as error:  # noqa: BLE001
            info["postgresql"] = f"unreachable: {error}"
    else:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        # Pages and their data (docs/capacity/, which a run is writing) change no measurement.
        dirty = subprocess.run(
            ["git", "status", "--short", "--untracked-files=no", "--", ".", ":(exclude)docs"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        info["code"] = f"{head.stdout.strip()} + {len(dirty.stdout.splitlines())} modified files"
    except OSError:
        pass
    wrk_path = shutil.which("wrk")
    if wrk_path:
        first = subprocess.run([wrk_path, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()
        info["wrk"] = first[0].split(" [")[0] if first else "?"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def print_machine(info: dict) -> None:
    parts = [f"{info['cores']} cores", f"{info['memory_gib']} GiB", f"Python {info['python']}"]
    if "postgresql" in info:
        parts.append(f"PostgreSQL {info['postgresql']}")
    if "sqlite" in info:
        parts.append(f"SQLite {info['sqlite']}")
    if "gunicorn" in info:
        parts.append(f"gunicorn {info['gunicorn']}")
    if "wrk" in info:
        parts.append(info["wrk"])
    print("machine: " + ", ".join(parts) + f"; load average {info['load_before']}; code {info.get('code', '?')}")


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[format_value(value) for value in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(
            "| "
            + " | ".join(value.rjust(w) if _numeric(value) else value.ljust(w) for value, w in zip(row, widths))
            + " |"
        )
    sys.stdout.flush()


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(value: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,.]+%?", value))


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def random_tag() -> str:
    return secrets.token_hex(4)
