"""Webhook ingestion, `POST /webhooks/terra`, against a bare Flask endpoint that only verifies the
signature (`terra_integration.signature.verify`), and against the code of an earlier commit
(`--before-ref`, default 731c9e5: the applier thread before deliveries were committed together; f7672f1
applied each event inside the request), checked out into a temporary git worktree, all under the same
gunicorn configuration, in the same run, on the same database. `--record-only` adds the app with no
applier running during the load: what the receiver alone can do.

    .venv/bin/python -m tools.bench.webhooks --db sqlite [--duration 10] [--concurrency 1,16,64] [--record-only] [--profile DIR]

Every request is signed the way Terra signs (HMAC-SHA256 over `t.body`) and carries its own
X-Terra-Trace-Id, so the app records each one (none is a duplicate) and its applier threads apply it:
- auth:     `auth` success events for a pool of users, each with a pending attempt; the first delivery
            per user creates the connection and connects the attempt, later ones re-apply idempotently;
- activity: data events for users with a connection (recorded, and the connection touched).
The app acknowledges once the row is committed; after each of its cells the benchmark waits until the
appliers have applied every row, and reports how many were still waiting when the load stopped and how
long applying them took ("applied ev/s" counts the whole: events / (load + drain)).
Targets: the app's acknowledgements at >= 40% of the verify-only endpoint's events/s, and their p99
under 50 ms at 64 clients.
"""

from __future__ import annotations

import itertools
import subprocess
import time
import uuid
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
COMPARED = ("before", "record", "apart")  # the receivers shown beside the app, when measured
TARGET = 0.40
TARGET_P99_MS = 50  # at the highest concurrency
KINDS = ("auth", "activity")
BEFORE_REF = "731c9e5"  # main before the recorder (one transaction per delivery) and the write turns


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], duration=10)
    common.add_wrk_load_options(p)
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
        nonces = itertools.count()
        data = {kind: run.tmp / f"{kind}.tsv" for kind in KINDS}

        def fresh_data(kind: str) -> None:
            """New bodies for the next load, signed now: the inbox refuses a body signed at the same
            second twice (as a replay), so each request must carry one never sent before."""
            variants = [
                bodies[kind][number % len(bodies[kind])][:-1] + b',"bench_nonce":%d}' % next(nonces)
                for number in range(args.unique)
            ]
            common.write_webhook_data(data[kind], variants, 0)

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
        for _, target in receivers:
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
        drains: dict[tuple[str, int], tuple[int, int, float]] = {}
        for kind in KINDS:
            for clients in args.concurrency:
                cell = measured[(kind, clients)] = {}
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
                    if worker is not None:
                        wait_until_applied(app)
                        run.stop_spawned(worker)
                    if name == "record":
                        apply_left_over(app)
                    if name == "app":
                        backlog = waiting(app)
                        drain_s = wait_until_applied(app)
                        recorded = inbox_size(app) - recorded_before
                        drains[(kind, clients)] = (recorded, backlog, drain_s)
                        print(
                            f"           {recorded} recorded, {backlog} waiting at the end, applied {drain_s:.2f} s later"
                        )

        rows = []
        top = max(args.concurrency)
        for (kind, clients), cell in measured.items():
            v, a = cell["verify"], cell["app"]
            recorded, backlog, drain_s = drains[(kind, clients)]
            ratio = a.rps / v.rps
            bad = sum(n for status, n in a.statuses.items() if status != "200")
            met = ratio >= TARGET and (clients != top or a.p99_ms < TARGET_P99_MS)
            others = []
            for name in COMPARED:
                other = cell.get(name)
                others += [other.rps, other.p99_ms, common.pct(other.rps / v.rps)] if other else ["-"] * 3
            rows.append(
                [
                    kind,
                    clients,
                    v.rps,
                    *others,
                    a.rps,
                    a.p50_ms,
                    a.p99_ms,
                    common.pct(ratio),
                    recorded / (args.duration + drain_s),
                    backlog,
                    drain_s,
                    bad,
                    common.verdict(met),
                ]
            )
        common.print_table(
            f"webhook acknowledgements vs verify-only and vs {args.before_ref} ({args.db}, {args.duration:g} s each, "
            f"unique trace ids; target >= {common.pct(TARGET)}, p99 < {TARGET_P99_MS} ms at {top} clients)",
            [
                "event",
                "clients",
                "verify ev/s",
                *(f"{name} {column}" for name in COMPARED for column in ("ev/s", "p99", "/verify")),
                "app ev/s",
                "p50 ms",
                "p99 ms",
                "app/verify",
                "applied ev/s",
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
        run.results["drains"] = {
            f"{k}/{c}": {"recorded": recorded, "waiting_at_end": backlog, "drain_s": drain_s}
            for (k, c), (recorded, backlog, drain_s) in drains.items()
        }

        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            clients = max(args.concurrency)
            seconds = max(args.duration, 10)
            for kind in KINDS:
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


def wait_until_applied(app, timeout: float = 300) -> float:
    """Seconds until no recorded event is left to apply."""
    started = time.monotonic()
    while waiting(app):
        if time.monotonic() - started > timeout:
            raise SystemExit(f"events still waiting to be applied after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


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
