"""Where the status endpoint's and the webhook receiver's cost comes from, measured in-process.

    .venv/bin/python -m tools.bench.breakdown --db sqlite [--requests 1500]

No server and no load generator: one thread sends requests through Flask's test client, so the
numbers are the app's own CPU time per request (time.process_time, all of its threads) and the
database work it asks for (statements, connection checkouts, each of which costs a pool pre-ping
round trip while pool_pre_ping is on, and commits), free of GIL contention. Wall times include
the database's own work (and fsyncs), and other work on the machine.

Each row is a variant of the app made without touching its code, to size what each setting costs:
- as shipped;
- no limiter hooks: RATELIMIT_ENABLED=False (Flask-Limiter, kept for sign-ins, checks every request);
- no token cache: API_TOKEN_CACHE_SECONDS=0 (the bearer token is read from the database every time);
- pre-ping: pool_pre_ping on (one round trip per checkout; off since the fixes);
- no expire-on-commit: the session keeps loaded attributes after a commit (no re-SELECT).
"""

from __future__ import annotations

import time
import uuid

from tools.bench import common

# name: (app.config overrides, extra environment, keep attributes loaded after a commit)
VARIANTS = {
    "as shipped": ({}, {}, False),
    "no limiter hooks": ({"RATELIMIT_ENABLED": False}, {}, False),
    "no token cache": ({}, {"API_TOKEN_CACHE_SECONDS": "0"}, False),
    "pre-ping": ({}, {"DATABASE_POOL_PRE_PING": "1"}, False),
    "no expire-on-commit": ({}, {}, True),
}


class Counters:
    def __init__(self, engine):
        from sqlalchemy import event

        self.statements = self.checkouts = self.commits = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, *args):
        self.statements += 1

    def _commit(self, *args):
        self.commits += 1

    def _checkout(self, *args):
        self.checkouts += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.statements, self.checkouts, self.commits


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], duration=0, duration_help="unused")
    p.add_argument("--requests", type=int, default=1500, help="requests per case and variant (default 1500)")
    p.add_argument(
        "--pyinstrument",
        type=common.Path,
        help="also profile each case of the as-shipped app with pyinstrument; call trees into this folder",
    )
    args = p.parse_args(argv)
    if not 10 <= args.requests <= 100_000:
        raise SystemExit("--requests must be between 10 and 100000")

    with common.Run(args, "breakdown") as run:
        app = run.migrate()
        status_user = common.seed_user(app)
        auth_bodies, activity_bodies = [], []
        for _ in range(100):
            pending = common.seed_user(app)
            auth_bodies.append(common.auth_body(pending.reference_id, str(uuid.uuid4()), pending.session_ids[0]))
            connected = common.seed_user(app, attempts=0)
            terra_user_id = str(uuid.uuid4())
            common.seed_connection(app, connected.user_id, terra_user_id)
            activity_bodies.append(common.data_body("activity", connected.reference_id, terra_user_id))
        status_path = f"/api/v1/connect-attempts/{status_user.attempt_ids[0]}"
        bearer = {"Authorization": f"Bearer {status_user.token}"}

        rows = []
        results = {}
        for variant, (overrides, extra_environ, keep_loaded) in VARIANTS.items():
            from app import create_app
            from extensions import db

            flask_app = create_app(overrides, environ=common.app_environ(run.database.url, 5000, **extra_environ))
            common.quiet_logs()
            factory = db.session.session_factory
            previous = factory.kw.get("expire_on_commit", True)
            factory.kw["expire_on_commit"] = not keep_loaded
            try:
                with flask_app.app_context():
                    counters = Counters(db.engine)
                cases = request_cases(flask_app.test_client(), status_path, bearer, auth_bodies, activity_bodies)
                for case, send in cases.items():
                    expected = 304 if case == "status 304" else 200
                    for i in range(min(100, args.requests)):  # warm caches (SQLAlchemy's statement cache)
                        assert send(i).status_code == expected
                    before = counters.snapshot()
                    cpu, wall = time.process_time(), time.perf_counter()
                    for i in range(args.requests):
                        answer = send(i)
                        assert answer.status_code == expected, (case, answer.status_code, answer.get_data()[:200])
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    after = counters.snapshot()
                    n = args.requests
                    per = [(a - b) / n for a, b in zip(after, before)]
                    rows.append([variant, case, cpu / n * 1000, wall / n * 1000, per[0], per[1], per[2]])
                    results[f"{variant}/{case}"] = {
                        "cpu_ms": cpu / n * 1000,
                        "wall_ms": wall / n * 1000,
                        "statements": per[0],
                        "checkouts": per[1],
                        "commits": per[2],
                    }
                    print(
                        f"  {variant:>20} {case:>16}: CPU {cpu / n * 1000:6.3f} ms, wall {wall / n * 1000:6.3f} ms, "
                        f"{per[0]:.1f} statements, {per[1]:.1f} checkouts, {per[2]:.1f} commits",
                        flush=True,
                    )
                if args.pyinstrument and variant == "as shipped":
                    profile_cases(cases, args)
                with flask_app.app_context():
                    db.session.remove()
                    db.engine.dispose()
            finally:
                factory.kw["expire_on_commit"] = previous
        common.print_table(
            f"in-process cost per request ({args.db}, {args.requests} requests each, one thread, Flask test client)",
            ["variant", "case", "CPU ms", "wall ms", "statements", "checkouts", "commits"],
            rows,
        )
        run.results["cells"] = results


def request_cases(
    client, status_path: str, bearer: dict, auth_bodies: list[bytes], activity_bodies: list[bytes]
) -> dict:
    """Case name -> a function of the request number that sends one request of that case."""
    etag = client.get(status_path, headers=bearer).headers["ETag"]
    return {
        "status 200": lambda i: client.get(status_path, headers=bearer),
        "status 304": lambda i: client.get(status_path, headers={**bearer, "If-None-Match": etag}),
        "webhook auth": lambda i: _post(client, auth_bodies[i % len(auth_bodies)]),
        "webhook activity": lambda i: _post(client, activity_bodies[i % len(activity_bodies)]),
    }


def profile_cases(cases: dict, args) -> None:
    """pyinstrument call trees of each case (CPU and waits of this one thread), kept as text files."""
    from pyinstrument import Profiler

    args.pyinstrument.mkdir(parents=True, exist_ok=True)
    for case, send in cases.items():
        profiler = Profiler(interval=0.0002)
        profiler.start()
        for i in range(args.requests):
            send(i)
        profiler.stop()
        out = args.pyinstrument / f"{case.replace(' ', '-')}-{args.db}.txt"
        out.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
        print(f"  pyinstrument call tree of {case}: {out}")


def _post(client, body: bytes):
    return client.post("/webhooks/terra", data=body, headers=common.signed_headers(body))


if __name__ == "__main__":
    main()
