"""The status endpoint's latency as the tables grow: 1,000 and then 1,000,000 connect attempts and
connections (10 of each per seeded user), and the query plans of the queries the endpoint runs.

    .venv/bin/python -m tools.bench.scale --db postgresql [--duration 10] [--sizes 1000,1000000]

Each seeded user also gets a bearer token (so api_tokens grows to a tenth of that). Rows are bulk-inserted: on PostgreSQL with INSERT ... SELECT over generate_series (then ANALYZE, as
autovacuum would), on SQLite with executemany in batches inside one transaction (no ANALYZE: the
app never runs it). The server is restarted after each fill. The queries are captured from a real
request (a SQLAlchemy cursor event around the app's own code) and explained with their parameters.
Target: flat latency (p50 at the largest size within 25% of the smallest).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tools.bench import common

PER_USER = 10
BATCH = 50_000
FLAT = 1.25


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], duration=10)
    p.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=[1000, 1_000_000],
        help="row counts of attempts and of connections (default 1000,1000000)",
    )
    p.add_argument("--concurrency", type=common.concurrency_list, default=[1, 16], help="client counts (default 1,16)")
    p.add_argument("--warmup", type=float, default=2)
    args = p.parse_args(argv)
    if any(size < 10 or size > 5_000_000 for size in args.sizes):
        raise SystemExit("--sizes must be between 10 and 5,000,000")

    with common.Run(args, "scale") as run:
        app = run.migrate()
        seeded = common.seed_user(app, attempts=1)
        pending_id = seeded.attempt_ids[0]
        connected_id = seed_connected_attempt(app, seeded)
        auth = f"Authorization: Bearer {seeded.token}"
        measured: dict[int, dict[str, common.LoadResult]] = {}
        fill_seconds: dict[int, float] = {}
        plans_text = ""
        for size in sorted(args.sizes):
            started = time.monotonic()
            added = fill(run, size)
            fill_seconds[size] = time.monotonic() - started
            counts = table_counts(app)
            print(f"filled to {size:,} rows (+{added:,} in {fill_seconds[size]:.1f} s): {counts}", flush=True)
            server = run.start_server(label=f"app-{size}")
            url = f"{server.url}/api/v1/connect-attempts/{pending_id}"
            import requests

            etag = requests.get(url, headers={"Authorization": f"Bearer {seeded.token}"}, timeout=10).headers["ETag"]
            measured[size] = {}
            for clients in args.concurrency:
                for name, headers in (("200", [auth]), ("304", [auth, f"If-None-Match: {etag}"])):
                    if args.warmup:
                        common.wrk(url, connections=clients, duration=args.warmup, headers=headers, script="fixed.lua")
                    result = common.wrk(
                        url, connections=clients, duration=args.duration, headers=headers, script="fixed.lua"
                    )
                    measured[size][f"{name}/{clients}"] = result
                    print(
                        f"  {size:>9,} rows {clients:>3} clients {name}: {result.rps:7.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  {result.statuses}",
                        flush=True,
                    )
            run.stop_server(server)
            plans_text = explain_endpoint(app, seeded.token, pending_id, connected_id, args.db)

        headers = ["rows", "fill s"]
        keys = [f"{name}/{clients}" for clients in args.concurrency for name in ("200", "304")]
        for key in keys:
            headers += [f"{key} req/s", "p50 ms", "p99 ms"]
        rows = []
        for size, by_key in measured.items():
            row = [size, fill_seconds[size]]
            for key in keys:
                row += [by_key[key].rps, by_key[key].p50_ms, by_key[key].p99_ms]
            rows.append(row)
        smallest, largest = min(measured), max(measured)
        growth = {key: measured[largest][key].p50_ms / measured[smallest][key].p50_ms for key in keys}
        common.print_table(
            f"status endpoint latency by table size ({args.db}, {args.duration:g} s each; "
            f"'200/16' = 200 path at 16 clients)",
            headers,
            rows,
        )
        print(
            f"p50 growth from {smallest:,} to {largest:,} rows: "
            + ", ".join(f"{key} x{value:.2f}" for key, value in growth.items())
            + f" -> flat latency {common.verdict(all(value <= FLAT for value in growth.values()))} "
            f"(threshold x{FLAT})"
        )
        print(f"\nquery plans at {largest:,} rows:\n{plans_text}")
        run.results["cells"] = {str(size): {k: v.as_dict() for k, v in by.items()} for size, by in measured.items()}
        run.results["fill_seconds"] = fill_seconds
        run.results["growth"] = growth
        run.results["plans"] = plans_text


def seed_connected_attempt(app, seeded: common.Seeded) -> str:
    """One connected attempt with its connection, so the plans include the connection's lookup."""
    import uuid

    from extensions import db
    from models import ConnectAttempt, Connection
    from models.time import utcnow

    with app.app_context():
        connection = Connection(
            user_id=seeded.user_id, terra_user_id=str(uuid.uuid4()), provider="GARMIN", scopes="ACTIVITY_EXPORT"
        )
        db.session.add(connection)
        db.session.flush()
        attempt = ConnectAttempt(
            user_id=seeded.user_id,
            channel="mobile",
            terra_session_id=str(uuid.uuid4()),
            status="connected",
            connection_id=connection.id,
            version=2,
            expires_at=utcnow() + timedelta(days=2),
        )
        db.session.add(attempt)
        db.session.commit()
        attempt_id = attempt.id
        db.session.remove()
    return attempt_id


# -- bulk fill --------------------------------------------------------------------------------------


def fill(run: common.Run, size: int) -> int:
    """Add seed rows until there are `size` seeded attempts and `size` seeded connections."""
    if run.args.db == "postgresql":
        return fill_postgresql(run.database.url, size)
    return fill_sqlite(Path(run.database.url.removeprefix("sqlite:///")), size)


def fill_postgresql(url: str, size: int) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        have = connection.execute(
            text("SELECT count(*) FROM connections WHERE terra_user_id LIKE 'seed-terra-%'")
        ).scalar()
        if have >= size:
            return 0
        first, last = have + 1, size
        users_have = connection.execute(text("SELECT count(*) FROM users WHERE email LIKE 'seed-%'")).scalar()
        users_need = -(-size // PER_USER)
        last_user = connection.execute(text("SELECT coalesce(max(id), 0) FROM users")).scalar()
        if users_need > users_have:
            connection.execute(
                text(
                    "INSERT INTO users (email, password_hash, reference_id, created_at) "
                    "SELECT 'seed-' || g || '@example.com', 'seed', 'seed-ref-' || g, now() AT TIME ZONE 'utc' "
                    "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS g"
                ),
                {"a": users_have + 1, "b": users_need},
            )
            # One bearer token per seeded user, so the token lookup runs against a table of realistic size.
            connection.execute(
                text(
                    "INSERT INTO api_tokens (user_id, token_hash, created_at, expires_at) "
                    "SELECT id, md5('token-a-' || id) || md5('token-b-' || id), now() AT TIME ZONE 'utc', "
                    "now() AT TIME ZONE 'utc' + interval '30 days' FROM users WHERE id > :last AND email LIKE 'seed-%'"
                ),
                {"last": last_user},
            )
        last_connection = connection.execute(text("SELECT coalesce(max(id), 0) FROM connections")).scalar()
        connection.execute(
            text(
                "INSERT INTO connections (user_id, terra_user_id, provider, status, scopes, created_at, updated_at, "
                "last_event_at) "
                "SELECT u.id, 'seed-terra-' || g, 'GARMIN', 'active', 'ACTIVITY_EXPORT', now() AT TIME ZONE 'utc', "
                "now() AT TIME ZONE 'utc', NULL "
                "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) AS g JOIN users u ON u.email = 'seed-' || ((g - 1) / CAST(:per AS bigint) + 1) || '@example.com'"
            ),
            {"a": first, "b": last, "per": PER_USER},
        )
        connection.execute(
            text(
                "INSERT INTO connect_attempts (id, user_id, channel, terra_session_id, widget_url, status, version, "
                "created_at, updated_at, expires_at, connection_id) "
                "SELECT substr(md5('attempt-' || c.terra_user_id), 1, 22), c.user_id, 'mobile', "
                "'seed-session-' || substr(c.terra_user_id, 12), NULL, 'connected', 2, now() AT TIME ZONE 'utc', "
                "now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc' + interval '15 minutes', c.id "
                "FROM connections c WHERE c.id > :last AND c.terra_user_id LIKE 'seed-terra-%'"
            ),
            {"last": last_connection},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()
    return last - first + 1


def fill_sqlite(path: Path, size: int) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        have = db.execute("SELECT count(*) FROM connections WHERE terra_user_id LIKE 'seed-terra-%'").fetchone()[0]
        if have >= size:
            return 0
        now = datetime.now(UTC).replace(tzinfo=None)
        stamp = now.isoformat(sep=" ")
        expires = (now + timedelta(minutes=15)).isoformat(sep=" ")
        db.execute("BEGIN")
        users_have = db.execute("SELECT count(*) FROM users WHERE email LIKE 'seed-%'").fetchone()[0]
        users_need = -(-size // PER_USER)
        base_user = db.execute("SELECT coalesce(max(id), 0) FROM users").fetchone()[0]
        _batched(
            db,
            "INSERT INTO users (id, email, password_hash, reference_id, created_at) VALUES (?, ?, ?, ?, ?)",
            (
                (base_user + k - users_have, f"seed-{k}@example.com", "seed", f"seed-ref-{k}", stamp)
                for k in range(users_have + 1, users_need + 1)
            ),
        )
        import hashlib

        later = (now + timedelta(days=30)).isoformat(sep=" ")
        _batched(
            db,
            "INSERT INTO api_tokens (user_id, token_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
            (
                (base_user + k - users_have, hashlib.sha256(f"token-{k}".encode()).hexdigest(), stamp, later)
                for k in range(users_have + 1, users_need + 1)
            ),
        )
        # Seed user k has id user_id_of[k]: look them up once, in one query.
        user_ids = dict(
            db.execute(
                "SELECT CAST(substr(email, 6, instr(email, '@') - 6) AS INTEGER), id FROM users "
                "WHERE email LIKE 'seed-%'"
            )
        )
        base_connection = db.execute("SELECT coalesce(max(id), 0) FROM connections").fetchone()[0]
        first = have + 1
        _batched(
            db,
            "INSERT INTO connections (id, user_id, terra_user_id, provider, status, scopes, created_at, "
            "updated_at) VALUES (?, ?, ?, 'GARMIN', 'active', 'ACTIVITY_EXPORT', ?, ?)",
            (
                (base_connection + g - have, user_ids[(g - 1) // PER_USER + 1], f"seed-terra-{g}", stamp, stamp)
                for g in range(first, size + 1)
            ),
        )
        _batched(
            db,
            "INSERT INTO connect_attempts (id, user_id, channel, terra_session_id, status, version, "
            "created_at, updated_at, expires_at, connection_id) "
            "VALUES (?, ?, 'mobile', ?, 'connected', 2, ?, ?, ?, ?)",
            (
                (
                    hashlib.md5(f"attempt-seed-terra-{g}".encode()).hexdigest()[:22],
                    user_ids[(g - 1) // PER_USER + 1],
                    f"seed-session-{g}",
                    stamp,
                    stamp,
                    expires,
                    base_connection + g - have,
                )
                for g in range(first, size + 1)
            ),
        )
        db.execute("COMMIT")
        return size - first + 1
    finally:
        db.close()


def _batched(db: sqlite3.Connection, statement: str, rows) -> None:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            db.executemany(statement, batch)
            batch.clear()
    if batch:
        db.executemany(statement, batch)


def table_counts(app) -> dict[str, int]:
    from sqlalchemy import text

    from extensions import db

    with app.app_context():
        counts = {
            name: db.session.execute(text(f"SELECT count(*) FROM {name}")).scalar()
            for name in ("users", "connections", "connect_attempts", "api_tokens")
        }
        db.session.remove()
        db.engine.dispose()
    return counts


# -- query plans ------------------------------------------------------------------------------------


def explain_endpoint(app, token: str, pending_id: str, connected_id: str, kind: str) -> str:
    """Run the endpoint in-process for a pending and a connected attempt (200, then 304), capture every
    statement it sends, and explain each distinct one with its parameters."""
    from sqlalchemy import event

    from extensions import db

    captured: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    lines = []
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            client = app.test_client()
            for attempt_id in (pending_id, connected_id):
                url = f"/api/v1/connect-attempts/{attempt_id}"
                first = client.get(url, headers={"Authorization": f"Bearer {token}"})
                client.get(url, headers={"Authorization": f"Bearer {token}", "If-None-Match": first.headers["ETag"]})
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
        seen = set()
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement, parameters in captured:
                key = " ".join(statement.split())
                if key in seen or not key.upper().startswith(("SELECT", "UPDATE", "INSERT", "DELETE")):
                    continue
                seen.add(key)
                prefix = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN "
                cursor.execute(prefix + statement, parameters)
                plan = cursor.fetchall()
                lines.append("-- " + _short(key))
                if kind == "sqlite":
                    lines += [f"   {row[-1]}" for row in plan]
                else:
                    lines += [f"   {row[0]}" for row in plan]
            raw.rollback()
        finally:
            raw.close()
        db.session.remove()
        db.engine.dispose()
    return "\n".join(lines)


def _short(sql: str) -> str:
    import re

    sql = re.sub(r"SELECT .+? FROM", "SELECT ... FROM", sql, count=1)
    return sql if len(sql) < 220 else sql[:217] + "..."


if __name__ == "__main__":
    main()
