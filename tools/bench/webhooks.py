"""Webhook ingestion, `POST /webhooks/terra`, against a bare Flask endpoint that only verifies the
signature (`terra_integration.signature.verify`), under the same gunicorn configuration, in the same run.

    .venv/bin/python -m tools.bench.webhooks --db sqlite [--duration 10] [--concurrency 1,16,64] [--profile DIR]

Every request is signed the way Terra signs (HMAC-SHA256 over `t.body`) and carries its own
X-Terra-Trace-Id, so the app records and applies each one (none is a duplicate):
- auth:     `auth` success events for a pool of users, each with a pending attempt; the first delivery
            per user creates the connection and connects the attempt, later ones re-apply idempotently;
- activity: data events for users with a connection (recorded, and the connection touched).
Target: the app at >= 40% of the verify-only endpoint's events/s.
"""

from __future__ import annotations

import uuid
from functools import partial

import requests

from tools.bench import common

TARGET = 0.40
KINDS = ("auth", "activity")


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], duration=10)
    common.add_wrk_load_options(p)
    p.add_argument("--users", type=int, default=200, help="distinct users (and Terra users) per event kind")
    args = p.parse_args(argv)

    with common.Run(args, "webhooks") as run:
        app = run.migrate()
        bodies: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
        for _ in range(args.users):
            pending = common.seed_user(app)
            bodies["auth"].append(common.auth_body(pending.reference_id, str(uuid.uuid4()), pending.session_ids[0]))
            connected = common.seed_user(app, attempts=0)
            terra_user_id = str(uuid.uuid4())
            common.seed_connection(app, connected.user_id, terra_user_id)
            bodies["activity"].append(common.activity_body(connected.reference_id, terra_user_id))
        cells = len(KINDS) * len(args.concurrency) * 2 + (4 if args.profile else 0)
        ahead = cells * (args.duration + args.warmup + 5) + 600
        data = {}
        for kind in KINDS:
            data[kind] = run.tmp / f"{kind}.tsv"
            common.write_webhook_data(data[kind], bodies[kind], ahead)

        server = run.start_server(label="app")
        bare = run.start_server(common.BARE_SPEC, label="bare")
        for target in (server, bare):
            body = bodies["activity"][0]
            answer = requests.post(
                target.url + "/webhooks/terra", data=body, headers=common.signed_headers(body), timeout=10
            )
            assert answer.status_code == 200, (target.label, answer.status_code, answer.text)
        print(
            f"both receivers accept a signed event; bodies: auth {len(bodies['auth'][0])} B, "
            f"activity {len(bodies['activity'][0])} B"
        )

        def load(url: str, kind: str, clients: int, seconds: float) -> common.LoadResult:
            return common.wrk(
                url + "/webhooks/terra",
                connections=clients,
                duration=seconds,
                script="webhooks.lua",
                script_args=[str(data[kind]), common.random_tag()],
                threads=args.threads,
            )

        measured: dict[tuple[str, int], dict[str, common.LoadResult]] = {}
        for kind in KINDS:
            for clients in args.concurrency:
                cell = measured[(kind, clients)] = {}
                for name, target in (("verify", bare), ("app", server)):
                    if args.warmup:
                        load(target.url, kind, clients, args.warmup)
                    result = cell[name] = common.measure(
                        target, partial(load, target.url, kind, clients, args.duration)
                    )
                    print(
                        f"  {kind:>8} {clients:>3} clients {name:>6}: {result.rps:8.0f} events/s  "
                        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  statuses {result.statuses} "
                        f"{result.errors or ''}  CPU {result.cpu}",
                        flush=True,
                    )

        rows = []
        for (kind, clients), cell in measured.items():
            v, a = cell["verify"], cell["app"]
            ratio = a.rps / v.rps
            bad = sum(n for status, n in a.statuses.items() if status != "200")
            rows.append(
                [
                    kind,
                    clients,
                    v.rps,
                    v.p50_ms,
                    v.p99_ms,
                    a.rps,
                    a.p50_ms,
                    a.p99_ms,
                    common.pct(ratio),
                    bad,
                    common.verdict(ratio >= TARGET),
                ]
            )
        common.print_table(
            f"webhook ingestion vs verify-only ({args.db}, {args.duration:g} s each, unique trace ids; "
            f"target >= {common.pct(TARGET)})",
            [
                "event",
                "clients",
                "verify ev/s",
                "p50 ms",
                "p99 ms",
                "app ev/s",
                "p50 ms",
                "p99 ms",
                "app/verify",
                "non-200",
                "target",
            ],
            rows,
        )
        cpu_rows = [
            [
                kind,
                clients,
                name,
                r.rps,
                r.cpu["app_ms"],
                r.cpu["postgres_ms"],
                r.cpu["loadgen_ms"],
                r.cpu["cores_busy"],
                r.cpu["other_cores"],
            ]
            for (kind, clients), cell in measured.items()
            for name, r in cell.items()
        ]
        common.print_table(
            "CPU per event (ms) by process group; cores busy during the cell (of 2), and how many "
            "of them other work used",
            [
                "event",
                "clients",
                "receiver",
                "ev/s",
                "server CPU ms",
                "postgres CPU ms",
                "wrk CPU ms",
                "cores busy",
                "other cores",
            ],
            cpu_rows,
        )
        run.results["cells"] = {
            f"{k}/{c}": {n: r.as_dict() for n, r in cell.items()} for (k, c), cell in measured.items()
        }

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            clients = max(args.concurrency)
            seconds = max(args.duration, 10)
            for kind in KINDS:
                common.profile_server(
                    server,
                    partial(load, server.url, kind, clients, seconds),
                    seconds=seconds,
                    out_prefix=args.profile / f"webhooks-{kind}-{args.db}",
                    label=f"webhooks {kind}, {clients} clients, {args.db}",
                )

        run.stop_server(server)  # let in-flight requests finish before counting
        outcomes = inbox_outcomes(app)
        print(f"inbox after the run (event/outcome: count): {outcomes}")
        run.results["inbox_outcomes"] = outcomes


def inbox_outcomes(app) -> dict[str, int]:
    from sqlalchemy import func, select

    from extensions import db
    from models import WebhookEvent

    with app.app_context():
        rows = db.session.execute(
            select(WebhookEvent.event_type, WebhookEvent.outcome, func.count()).group_by(
                WebhookEvent.event_type, WebhookEvent.outcome
            )
        ).all()
        db.session.remove()
    return {f"{event_type}/{outcome}": count for event_type, outcome, count in rows}


if __name__ == "__main__":
    main()
