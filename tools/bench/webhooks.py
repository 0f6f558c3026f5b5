"""Webhook ingestion, `POST /webhooks/terra`, against a bare Flask endpoint that only verifies the
signature (`terra_integration.signature.verify`), and against the code of an earlier commit
(`--before-ref`, default 731c9e5: the applier thread before deliveries were committed together; f7672f1
applied each event inside the request), checked out into a temporary git worktree, all under the same
gunicorn configuration, in the same run, on the same database. `--record-only` adds the app with no
applier running during the load: what the receiver alone can do.

    .venv/bin/python -m tools.bench.webhooks --db sqlite [--duration 10] [--concurrency 1,16,64] [--kinds auth,activity]
        [--record-only] [--separate-applier] [--profile DIR]

Every request is signed the way Terra signs (HMAC-SHA256 over `t.body`) and carries its own
X-Terra-Trace-Id, so the app records each one (none is a duplicate) and its applier threads apply it.
`--kinds` chooses the event types, each sent about a pool of users of its own:
- auth:     `auth` success events for users with a pending attempt; the first delivery per user
            creates the connection and connects the attempt, later ones re-apply idempotently;
- activity, daily, sleep: data events (one sample item) for users with a connection: stored, and the
            connection touched;
- deauth:   for users with a connection: the first revokes it, later ones re-apply idempotently;
- permission_change: for users with a connection: their scopes as stated, stored again each time.
Every receiver but verify-only acknowledges once its row is committed; after each of its cells the
benchmark waits until the appliers have applied every row (for `record`, which runs none, it applies
them itself), and reports how many were still waiting when the load stopped and how long applying
them took: "end-to-end ev/s", acknowledged and applied, counts the whole: recorded / (load + drain).
Targets: the app's acknowledgements at >= 40% of the verify-only endpoint's events/s, and their p99
under 50 ms at 64 clients.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import partial

import requests

from tools.bench import common

# The servers share one database: each applies only the rows it received itself (its receivers wake
# its appliers), never another's through the periodic sweep, which would run during another's cell.
ONLY_ITS_OWN = {"WEBHOOK_SWEEP_SECONDS": "3600"}
SEPARATE_APPLIER = [
    "nice",
    "-n",
    "10",
    common.PYTHON,
    "-m",
    "flask",
    "--app",
    "app",
    "terra",
    "work",
    "--poll-seconds",
    "0.05",
]
TARGET = 0.40
TARGET_P99_MS = 50  # at the highest concurrency
# The event types `--kinds` may name: `auth` for users with a pending attempt, the others for users
# with a connection (data events, and account events on it).
DATA_KINDS = ("activity", "daily", "sleep")
KINDS = ("auth", *DATA_KINDS, *common.ACCOUNT_EVENT_FIELDS)
BEFORE_REF = "731c9e5"  # main before the recorder (one transaction per delivery) and the write turns


def kind_list(text: str) -> list[str]:
    kinds = [item.strip() for item in text.split(",") if item.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(KINDS)}")
    return kinds


def arguments() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0], duration=10)
    common.add_wrk_load_options(p)
    p.add_argument(
        "--kinds",
        type=kind_list,
        default=["auth", "activity"],
        help=f"event types, measured in this order (default auth,activity; any of {','.join(KINDS)})",
    )
    p.add_argument("--users", type=int, default=200, help="distinct users (and Terra users) per event kind")
    p.add_argument(
        "--unique",
        type=int,
        default=12000,
        help="distinct signed bodies per load (default %(default)s); beyond them wrk repeats bodies, "
        "which the app answers as duplicates",
    )
    p.add_argument(
        "--record-only",
        action="store_true",
        help="also measure the app with no applier running during the load (WEBHOOK_APPLY_IN_PROCESS=false; "
        "the benchmark applies its rows after each cell): the receiver's own ceiling",
    )
    p.add_argument(
        "--separate-applier",
        action="store_true",
        help="also measure the app whose applier is a process of its own at a lower CPU priority "
        "(WEBHOOK_APPLY_IN_PROCESS=false and `nice flask terra work`), as a deployment can run it",
    )
    p.add_argument(
        "--before-ref",
        default=BEFORE_REF,
        help="the commit measured as 'before' (default %(default)s); 'none' to leave it out",
    )
    return p


def seed_bodies(app, kind: str, users: int) -> list[bytes]:
    """One body per user of `kind`'s own users, each seeded as its events need."""
    bodies = []
    for _ in range(users):
        terra_user_id = str(uuid.uuid4())
        if kind == "auth":
            pending = common.seed_user(app)
            bodies.append(common.auth_body(pending.reference_id, terra_user_id, pending.session_ids[0]))
            continue
        connected = common.seed_user(app, attempts=0)
        common.seed_connection(app, connected.user_id, terra_user_id)
        build = common.data_body if kind in DATA_KINDS else common.account_body
        bodies.append(build(kind, connected.reference_id, terra_user_id))
    return bodies


@dataclass
class Applied:
    """What a receiver recorded in a cell, and how long its events took to be applied after the load."""

    recorded: int
    waiting_at_end: int
    drain_s: float

    def end_to_end(self, load: common.LoadResult) -> float:
        """Events acknowledged and applied per second: recorded / (load + drain)."""
        return self.recorded / (load.seconds + self.drain_s)


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)

    with common.Run(args, "webhooks") as run:
        app = run.migrate()
        bodies = {kind: seed_bodies(app, kind, args.users) for kind in args.kinds}
        nonces = itertools.count()
        data = {kind: run.tmp / f"{kind}.tsv" for kind in args.kinds}

        def fresh_data(kind: str) -> None:
            """New bodies for the next load, signed now, each never sent before."""
            common.write_webhook_data(data[kind], common.never_sent(bodies[kind], args.unique, nonces), 0)

        server = run.start_server(label="app", **ONLY_ITS_OWN)
        bare = run.start_server(common.BARE_SPEC, label="bare")
        receivers = [("verify", bare)]
        if args.before_ref != "none":
            receivers.append(
                ("before", run.start_server(label="before", cwd=checkout(run, args.before_ref), **ONLY_ITS_OWN))
            )
        if args.record_only:
            receivers.append(
                ("record", run.start_server(label="record", WEBHOOK_APPLY_IN_PROCESS="false", **ONLY_ITS_OWN))
            )
        if args.separate_applier:
            apart = run.start_server(label="apart", WEBHOOK_APPLY_IN_PROCESS="false", **ONLY_ITS_OWN)
            receivers.append(("apart", apart))
        receivers.append(("app", server))
        probe = bodies[args.kinds[0]][0]
        for _, target in receivers:
            answer = requests.post(
                target.url + "/webhooks/terra", data=probe, headers=common.signed_headers(probe), timeout=10
            )
            assert answer.status_code == 200, (target.label, answer.status_code, answer.text)
        apply_left_over(app)
        sizes = ", ".join(f"{kind} {len(bodies[kind][0])} B" for kind in args.kinds)
        print(f"every receiver accepts a signed event; bodies: {sizes}")

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
        applied: dict[tuple[str, int], dict[str, Applied]] = {}
        for kind in args.kinds:
            for clients in args.concurrency:
                cell = measured[(kind, clients)] = {}
                applied_in_cell = applied[(kind, clients)] = {}
                for name, target in receivers:
                    # The separate applier runs during its receiver's cell only (it would apply any row).
                    worker = run.spawn(SEPARATE_APPLIER, label=f"applier-{kind}-{clients}") if name == "apart" else None
                    if args.warmup:
                        fresh_data(kind)
                        load(target.url, kind, clients, args.warmup)
                        apply_left_over(app)
                    fresh_data(kind)
                    recorded_before = inbox_size(app)
                    result = cell[name] = common.measure(
                        target, partial(load, target.url, kind, clients, args.duration)
                    )
                    print(
                        f"  {kind:>8} {clients:>3} clients {name:>6}: {result.rps:8.0f} events/s  "
                        f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  statuses {result.statuses} "
                        f"{result.errors or ''}  CPU {result.cpu}",
                        flush=True,
                    )
                    if name != "verify":
                        backlog = waiting(app)
                        # `record` runs no applier: its rows are applied here, timed as its drain.
                        settle = apply_left_over if name == "record" else wait_until_applied
                        started = time.monotonic()
                        settle(app)
                        done = applied_in_cell[name] = Applied(
                            inbox_size(app) - recorded_before, backlog, time.monotonic() - started
                        )
                        print(
                            f"           {done.recorded} recorded, {backlog} waiting at the end, applied "
                            f"{done.drain_s:.2f} s later: {done.end_to_end(result):.0f} events/s end to end"
                        )
                    if worker is not None:
                        run.stop_spawned(worker)

        top = max(args.concurrency)
        summary = {
            f"{kind}/{clients}": {
                name: receiver_summary(result, cell["verify"], applied[(kind, clients)].get(name))
                for name, result in cell.items()
            }
            for (kind, clients), cell in measured.items()
        }
        rows = []
        for key, cell in summary.items():
            kind, clients = key.split("/")
            for name, figures in cell.items():
                met = figures["ack_per_verify"] >= TARGET and (int(clients) != top or figures["p99_ms"] < TARGET_P99_MS)
                rows.append(
                    [
                        kind,
                        int(clients),
                        name,
                        figures["ack_rps"],
                        figures["p50_ms"],
                        figures["p99_ms"],
                        common.pct(figures["ack_per_verify"]),
                        *(
                            [
                                figures["end_to_end_rps"],
                                common.pct(figures["end_to_end_per_verify"]),
                                figures["waiting_at_end"],
                                figures["drain_s"],
                            ]
                            if name != "verify"
                            else ["-"] * 4
                        ),
                        figures["non_200"],
                        common.verdict(met) if name == "app" else "",
                    ]
                )
        common.print_table(
            f"webhooks acknowledged, and acknowledged and applied (end to end), vs verify-only ({args.db}, "
            f"{args.duration:g} s each, unique trace ids; target for the app: acknowledged >= {common.pct(TARGET)}, "
            f"p99 < {TARGET_P99_MS} ms at {top} clients)",
            [
                "event",
                "clients",
                "receiver",
                "ack ev/s",
                "p50 ms",
                "p99 ms",
                "ack/verify",
                "end-to-end ev/s",
                "end-to-end/verify",
                "waiting at end",
                "drain s",
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
                *common.rate_and_cpu(r),
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
        run.results["receivers"] = summary

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            clients = max(args.concurrency)
            seconds = max(args.duration, 10)
            for kind in args.kinds:
                fresh_data(kind)
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


def receiver_summary(result: common.LoadResult, verify: common.LoadResult, applied: Applied | None) -> dict:
    """One receiver's figures in one cell, as the JSON results keep them (`receivers`); the end-to-end
    ones are None for a receiver that applies nothing (verify-only). Fewer `recorded` than `requests`
    means wrk ran out of unique bodies (`--unique`) and repeated some, which the inbox answers as
    duplicates without recording them."""
    end_to_end = applied.end_to_end(result) if applied else None
    return {
        "ack_rps": round(result.rps, 1),
        "requests": result.requests,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "ack_per_verify": round(result.rps / verify.rps, 4),
        "end_to_end_rps": round(end_to_end, 1) if applied else None,
        "end_to_end_per_verify": round(end_to_end / verify.rps, 4) if applied else None,
        "recorded": applied.recorded if applied else None,
        "waiting_at_end": applied.waiting_at_end if applied else None,
        "drain_s": round(applied.drain_s, 2) if applied else None,
        "server_cpu_ms": result.cpu["app_ms"],
        "postgres_cpu_ms": result.cpu["postgres_ms"],
        "cores_busy": result.cpu["cores_busy"],
        "other_cores": result.cpu["other_cores"],
        "non_200": sum(n for status, n in result.statuses.items() if status != "200"),
    }


def checkout(run: common.Run, ref: str):
    """`ref` checked out into the run's folder (a detached git worktree, removed with the run)."""
    folder = run.tmp / f"checkout-{ref}"
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=common.ROOT, check=True)
    run.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(folder)], cwd=common.ROOT, check=False)
    return folder


def _count(app, *where) -> int:
    from sqlalchemy import func, select

    from extensions import db
    from models import WebhookEvent

    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(WebhookEvent).where(*where))
        db.session.remove()
    return count


def inbox_size(app) -> int:
    return _count(app)


def waiting(app) -> int:
    from models import WebhookEvent
    from terra_integration.models import EventOutcome

    return _count(app, WebhookEvent.outcome == EventOutcome.RECEIVED)


def apply_left_over(app) -> None:
    """Apply what the loads left recorded, here (the `record` receiver runs no applier), and wait
    for the servers' appliers to finish theirs."""
    from terra_integration.applier import drain

    with app.app_context():
        drain()
    wait_until_applied(app)


def wait_until_applied(app, timeout: float = 300) -> None:
    """Return once no recorded event is left to apply."""
    started = time.monotonic()
    while waiting(app):
        if time.monotonic() - started > timeout:
            raise SystemExit(f"events still waiting to be applied after {timeout} s")
        time.sleep(0.05)


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
