"""The sizing guide, docs/capacity.md: the benchmarks it needs, run on both databases, and the page
rendered from their JSON results, so that every figure on it comes from a command it names.

    .venv/bin/python -m tools.bench.capacity run [--out docs/capacity] [--quick] [--pg-url URL]
    .venv/bin/python -m tools.bench.capacity render [--data docs/capacity] [--out docs/capacity.md]

`run` runs the benchmarks of PLAN one after the other, on SQLite then on PostgreSQL, each writing its
JSON (`--json`) into the folder, which also gets `run.json` (when, how long, whether `--quick`).
`--quick` gives every benchmark tiny settings: it checks the plumbing, its figures size nothing.
`render` writes the page from that folder alone (same files, same page, byte for byte), and from the
app's shipped settings (config.py) for the PostgreSQL connection instance.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tools.bench import common

DATABASES = ("sqlite", "postgresql")
DB_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
DATA_DIR = common.ROOT / "docs" / "capacity"
PAGE = common.ROOT / "docs" / "capacity.md"
MANIFEST = "run.json"
ALL_KINDS = "auth,activity,daily,sleep,deauth,permission_change"
SIZING_CLIENTS = 16  # the concurrency whose end-to-end rates size an instance: Terra's deliveries overlap
END_TO_END_TARGET = 0.30  # the issue's: end-to-end at SIZING_CLIENTS on SQLite, over verify-only
SATURATED_CORES = 1.8  # cores busy (of 2) from which CPU, not waiting, bounds a rate
# Assumed load per connected Terra user, stated as assumptions on the page.
EVENTS_PER_USER_PER_DAY = (10, 30, 100)
PEAK_FACTOR = 10  # the peak hour's rate over the day's average: devices sync in bursts
# PostgreSQL's own defaults (postgresql.conf), not the app's: the budget assumes a server left at them.
PG_MAX_CONNECTIONS = 100
PG_SUPERUSER_RESERVED = 3


@dataclass(frozen=True)
class Step:
    """One benchmark of the guide: its JSON file is `<name>-<db>.json`. Options map to their values
    (None: a flag); `quick` replaces or adds some of them in `run --quick`."""

    name: str
    module: str
    options: dict[str, str | None]
    quick: dict[str, str]
    minutes: float  # about how long the full step takes on one database

    def argv(self, *, quick: bool) -> list[str]:
        options = {**self.options, **self.quick} if quick else self.options
        return [word for option, value in options.items() for word in (option, value) if word is not None]


WEBHOOKS = {
    "--before-ref": "none",  # the code of an earlier commit sizes nothing
    "--unique": "30000",  # more bodies than 10 s at 64 clients take, so that none is a duplicate
    "--warmup": "1",  # each warm-up's events are applied before the cell: a short one keeps the run short
}
WEBHOOKS_QUICK = {"--duration": "1", "--warmup": "0", "--users": "10", "--unique": "3000"}
PLAN = (
    Step(
        "webhooks-kinds",
        "webhooks",
        {"--kinds": ALL_KINDS, "--concurrency": str(SIZING_CLIENTS), **WEBHOOKS},
        WEBHOOKS_QUICK,
        4.5,
    ),
    Step(
        "webhooks-clients",
        "webhooks",
        {
            "--kinds": "auth,activity",
            "--concurrency": "1,16,64",
            "--record-only": None,
            "--separate-applier": None,
            **WEBHOOKS,
        },
        WEBHOOKS_QUICK,
        10,
    ),
    Step(
        "apply",
        "apply",
        {"--events": "2000", "--rounds": "2"},
        {"--events": "200", "--rounds": "1", "--kinds": "auth,activity"},
        5,
    ),
    Step("status", "status", {}, {"--duration": "1", "--warmup": "0"}, 2),
    Step(
        "wakeup",
        "wakeup",
        {"--rounds": "40", "--idle-waiters": "1000"},
        {"--rounds": "5", "--idle-waiters": "50"},
        1.5,
    ),
    Step("flow", "flow", {}, {"--duration": "2", "--clients": "1,2"}, 1),
)
FULL_RUN_MINUTES = round(sum(step.minutes for step in PLAN) * len(DATABASES))


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = p.add_subparsers(dest="command", required=True)
    run_command = commands.add_parser(
        "run", help=f"run the guide's benchmarks on both databases (about {FULL_RUN_MINUTES} minutes)"
    )
    run_command.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the JSON results")
    run_command.add_argument(
        "--quick", action="store_true", help="tiny settings: checks the plumbing, sizes nothing (about 8 minutes)"
    )
    run_command.add_argument(
        "--pg-url", default=common.DEFAULT_PG_URL, help="the PostgreSQL database to use (default %(default)s)"
    )
    render_command = commands.add_parser("render", help="write the page from the JSON results")
    render_command.add_argument("--data", type=Path, default=DATA_DIR, help="folder of the JSON results")
    render_command.add_argument("--out", type=Path, default=PAGE, help="the page to write")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    if args.command == "run":
        run_all(args.out, quick=args.quick, pg_url=args.pg_url)
    else:
        args.out.write_text(render(args.data))
        print(f"wrote {args.out}")


# -- run ---------------------------------------------------------------------------------------------


def shown_path(path: Path) -> str:
    """`path` as a command typed at the repository root names it."""
    path = path.resolve()
    return str(path.relative_to(common.ROOT)) if path.is_relative_to(common.ROOT) else str(path)


def step_argv(step: Step, db: str, out: Path, *, quick: bool, pg_url: str) -> list[str]:
    argv = [common.PYTHON, "-m", f"tools.bench.{step.module}", "--db", db, *step.argv(quick=quick)]
    if db == "postgresql" and pg_url != common.DEFAULT_PG_URL:
        argv += ["--pg-url", pg_url]
    return argv + ["--json", shown_path(out / f"{step.name}-{db}.json")]


def run_all(out: Path, *, quick: bool, pg_url: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    started, began = datetime.now(UTC), time.monotonic()
    print(f"{len(PLAN) * len(DATABASES)} benchmarks, {'quick' if quick else f'about {FULL_RUN_MINUTES} minutes'}")
    for db in DATABASES:
        for step in PLAN:
            argv = step_argv(step, db, out, quick=quick, pg_url=pg_url)
            print(f"== {shlex.join(argv)}  ({(time.monotonic() - began) / 60:.1f} min in; {common.load_average()})")
            subprocess.run(argv, cwd=common.ROOT, check=True)
    manifest = {
        "command": shlex.join([".venv/bin/python", "-m", "tools.bench.capacity", *sys.argv[1:]]),
        "quick": quick,
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round((time.monotonic() - began) / 60, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"done in {manifest['minutes']} minutes; now: .venv/bin/python -m tools.bench.capacity render")


# -- one instance, from the app's settings ----------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One instance as the app's settings make it (the shipped defaults, or `environ`'s): its threads,
    its long-polls, and the PostgreSQL connections it can open."""

    workers: int
    pool_size: int
    max_overflow: int
    worker_threads: int  # gunicorn's threads per worker: requests and long-polls
    long_polls_per_worker: int
    poll_after_s: float  # the interval the API tells apps to poll at
    applier_threads: int  # per process: the applier's queues (in each worker, or in `flask terra work`)
    apply_in_process: bool

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> Instance:
        from config import AppSettings, TerraSettings
        from settings_base import read_settings
        from terra_integration.applier import THREAD_NAMES

        app, terra = read_settings(AppSettings, environ), read_settings(TerraSettings, environ)
        return cls(
            workers=app.WEB_CONCURRENCY,
            pool_size=app.DATABASE_POOL_SIZE,
            max_overflow=app.DATABASE_MAX_OVERFLOW,
            worker_threads=app.worker_threads,
            long_polls_per_worker=app.STATUS_MAX_WAITERS,
            poll_after_s=app.STATUS_POLL_AFTER_MS / 1000,
            applier_threads=len(THREAD_NAMES),
            apply_in_process=terra.WEBHOOK_APPLY_IN_PROCESS,
        )

    @property
    def long_polls(self) -> int:
        return self.workers * self.long_polls_per_worker

    @property
    def pool_limit(self) -> int | None:
        """Connections one process's pool opens at most (None: no limit, DATABASE_MAX_OVERFLOW=-1)."""
        return None if self.max_overflow < 0 else self.pool_size + self.max_overflow

    @property
    def per_worker(self) -> int:
        """A worker's pool at its limit (or one connection per thread, without one: request threads,
        long-polls, the recorder and the applier's threads), plus the LISTEN connection of its attempt
        change feed (services/attempt_states.py), which is detached from the pool."""
        threads = self.worker_threads + 1 + self.applier_threads
        return (self.pool_limit if self.pool_limit is not None else threads) + 1

    @property
    def per_work_process(self) -> int:
        """`flask terra work`: one connection per applier thread, within its pool's limit."""
        return min(self.applier_threads, self.pool_limit if self.pool_limit is not None else self.applier_threads)

    @property
    def available(self) -> int:
        return PG_MAX_CONNECTIONS - PG_SUPERUSER_RESERVED

    def per_instance(self, work_processes: int) -> int:
        return self.workers * self.per_worker + work_processes * self.per_work_process

    def pool_limit_for(self, instances: int) -> int:
        """The largest DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW with which `instances` instances
        (each with one `flask terra work` when the workers do not apply) fit."""
        work = 0 if self.apply_in_process else self.per_work_process
        return (self.available // instances - work) // self.workers - 1


# -- render ------------------------------------------------------------------------------------------


def load(data: Path) -> tuple[dict, dict[tuple[str, str], dict]]:
    """The run's manifest, and each benchmark's results by (step name, database)."""
    manifest = json.loads((data / MANIFEST).read_text())
    results = {
        (step.name, db): json.loads((data / f"{step.name}-{db}.json").read_text()) for step in PLAN for db in DATABASES
    }
    return manifest, results


def number(value: float | None) -> str:
    return "-" if value is None else common.format_value(value)


def percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def round_down(value: float) -> int:
    """Down to two significant figures: a sizing figure should not promise more than it measured."""
    whole = int(value)
    scale = 10 ** max(len(str(whole)) - 2, 0)
    return whole // scale * scale


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else number(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def source(results: dict) -> list[str]:
    """Where a section's figures of one database come from: the command, when, which code, which machine."""
    machine = results["machine"]
    versions = [f"Python {machine['python']}"]
    if "sqlite" in machine:
        versions.append(f"SQLite {machine['sqlite']}")
    if "postgresql" in machine:
        versions.append(f"PostgreSQL {machine['postgresql']}")
    return [
        (
            f"{DB_NAMES[results['db']]}: run {results['started_at']}, code {machine.get('code', '?')}; "
            f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, {', '.join(versions)}; "
            f"load average {machine['load_before']} before, {results.get('load_after', '?')} after:"
        ),
        "",
        "```sh",
        results["command"],
        "```",
        "",
    ]


def sources(results: dict, name: str) -> list[str]:
    return [line for db in DATABASES for line in source(results[(name, db)])]


def receiver_cells(results: dict, receiver: str = "app") -> dict[tuple[str, int], dict]:
    """`receiver`'s figures by (event type, clients)."""
    cells = {}
    for key, by_receiver in results["receivers"].items():
        kind, clients = key.split("/")
        if receiver in by_receiver:
            cells[(kind, int(clients))] = by_receiver[receiver]
    return cells


def sustained_rate(results: dict) -> tuple[float, str]:
    """The lowest end-to-end rate of any event type at SIZING_CLIENTS clients, and that type."""
    cells = receiver_cells(results)
    kind = min(
        (kind for kind, clients in cells if clients == SIZING_CLIENTS),
        key=lambda k: cells[(k, SIZING_CLIENTS)]["end_to_end_rps"],
    )
    return cells[(kind, SIZING_CLIENTS)]["end_to_end_rps"], kind


def users_for(rate: float, events_per_day: int) -> int:
    return round_down(rate * 86_400 / (events_per_day * PEAK_FACTOR))


def status_floor(results: dict, case: str) -> float:
    """The lower of the 16- and 64-client rates of a status case (or of every concurrency measured)."""
    cells = results["cells"]
    measured = [cells[c][case]["rps"] for c in cells if int(c) >= SIZING_CLIENTS] or [
        cells[c][case]["rps"] for c in cells
    ]
    return min(measured)


def spread(values: Iterable[float]) -> str:
    values = sorted(values)
    low, high = number(values[0]), number(values[-1])
    return low if low == high else f"{low}–{high}"


def render(data: Path, environ: Mapping[str, str] | None = None) -> str:
    """The page, from the results in `data` and the app's shipped settings (or `environ`'s)."""
    manifest, results = load(data)
    instance = Instance.of(environ or {})
    lines = [
        "# Capacity: sizing one 2-core instance",
        "",
        "<!-- Generated by `.venv/bin/python -m tools.bench.capacity render` from docs/capacity/*.json;",
        "     tests/test_capacity_doc.py fails when this page and its data differ. Do not edit by hand. -->",
        "",
        (
            f"What one instance of the app takes, as shipped: `gunicorn.conf.py` with {instance.workers} worker "
            f"processes of {instance.worker_threads:,} threads (request threads and long-polls), the webhook applier "
            f"in each worker, on one machine of 2 cores, on SQLite and on PostgreSQL (the database on the same "
            f"machine). Every figure comes from the benchmark command printed under it (tools/bench/README.md), "
            f"with the date, the code and the machine it ran on; `.venv/bin/python -m tools.bench.capacity run` "
            f"runs them all (about {FULL_RUN_MINUTES} minutes, on a machine with nothing else to do) and "
            f"`.venv/bin/python -m tools.bench.capacity render` writes this page from their JSON results "
            f"(docs/capacity/). The full set took {manifest['minutes']} minutes from {manifest['started_at']} "
            f"(`{manifest['command']}`)."
        ),
        "",
    ]
    if manifest["quick"]:
        lines += [
            (
                "> **These figures come from a `--quick` run** (one-second loads, a few users and rounds), made to "
                "check the plumbing on a machine shared with other work. They size nothing: run "
                "`.venv/bin/python -m tools.bench.capacity run` on a quiet machine and render again."
            ),
            "",
        ]
    lines += summary_section(results, instance)
    lines += webhook_section(results)
    lines += apply_section(results)
    lines += status_section(results)
    lines += long_poll_section(results, instance)
    lines += users_section(results, instance)
    lines += applier_section(results)
    lines += budget_section(instance)
    return "\n".join(wrapped(lines)).rstrip("\n") + "\n"


UNBROKEN = re.compile(r"`[^`]*`|\d{4}-\d\d-\d\d \d\d:\d\d UTC")  # code spans (commands to copy) and times


def wrapped(lines: Iterable[str], width: int = 100) -> list[str]:
    """The prose lines wrapped at `width`, as the other pages are; tables, headings, code blocks and
    comments as they are. Code spans and times are never split (a command must stay on one line to be
    copied)."""
    out, in_code = [], False
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line or line.startswith(("|", "#", "```", "    ", "<!--", "     ")):
            out.append(line)
            continue
        quote = "> " if line.startswith("> ") else ""
        protected = re.sub(UNBROKEN, lambda span: span.group().replace(" ", "\0"), line.removeprefix(quote))
        for piece in textwrap.wrap(protected, width - len(quote), break_long_words=False, break_on_hyphens=False):
            out.append(quote + piece.replace("\0", " "))
    return out


def summary_section(results: dict, instance: Instance) -> list[str]:
    typical_events = EVENTS_PER_USER_PER_DAY[len(EVENTS_PER_USER_PER_DAY) // 2]
    columns = []
    for db in DATABASES:
        rate, kind = sustained_rate(results[("webhooks-kinds", db)])
        status, wakeup = results[("status", db)], results[("wakeup", db)]
        columns.append(
            [
                f"{number(rate)} (`{kind}`)",
                f"{number(status_floor(status, '200'))} / {number(status_floor(status, '304'))}",
                (
                    f"{number(wakeup['summary']['p50_ms'])} / {number(wakeup['summary']['p99_ms'])} ms "
                    f"({wakeup['options']['idle_waiters']:,} waiting)"
                ),
                f"{users_for(rate, typical_events):,}",
                f"{instance.per_instance(0)}" if db == "postgresql" else "-",
            ]
        )
    labels = [
        f"webhook events applied per second, sustained (slowest event type, {SIZING_CLIENTS} clients)",
        "status polls per second, 200 / 304 (lower of 16 and 64 clients)",
        "long-poll wake-up p50 / p99, with others waiting",
        f"connected Terra users at {typical_events} events a day each, peak hour {PEAK_FACTOR}× the average",
        f"PostgreSQL connections per instance (of {instance.available} under the default max_connections)",
    ]
    rows = [[label, *figures] for label, *figures in zip(labels, *columns)]
    return ["## Summary", "", *table(["one instance, 2 cores", *DB_NAMES.values()], rows)]


def webhook_section(results: dict) -> list[str]:
    lines = [
        "## 1. Webhook events, acknowledged and applied",
        "",
        (
            "Terra's deliveries to `POST /webhooks/terra`, signed, each with its own trace id and a body never "
            "sent before. The receiver answers 200 once the event is recorded (acknowledged); the applier "
            "threads in the same workers then apply it. **End-to-end** is the sustained rate: events recorded "
            "during the load over the load's time plus the time the appliers took to apply what was still "
            "waiting when it stopped. Acknowledged events per second hold only for a burst, while the backlog "
            "grows; the end-to-end rate is what an instance keeps up with. *End-to-end / verify* compares it "
            "with a Flask endpoint that only verifies the signature, in the same run."
        ),
        "",
        (
            "Each event type has users of its own: `auth` for users with a pending connect attempt (the first "
            "connects it, later ones re-apply), `activity`, `daily` and `sleep` data events for connected users "
            "(stored), `deauth` (the first revokes the connection, later ones re-apply it idempotently) and "
            "`permission_change` (the stated scopes stored) for connected users. The outcomes the inbox kept "
            "are listed under each table: every event should be `applied`. (`ignored` is what the handlers say of "
            "an `auth` for a Terra user already revoked, or of an event about a Terra user that a "
            "re-authentication replaced: the benchmark sends neither. A repeated `deauth` is applied again, "
            "leaving the connection revoked.)"
        ),
        "",
    ]
    for db in DATABASES:
        run = results[("webhooks-kinds", db)]
        cells = receiver_cells(run)
        verify = receiver_cells(run, "verify")
        lines += [f"**{DB_NAMES[db]}**, {SIZING_CLIENTS} clients:", ""]
        lines += table(
            [
                "event",
                "end-to-end ev/s",
                "acknowledged ev/s",
                "ack p50 ms",
                "ack p99 ms",
                "end-to-end / verify",
                "waiting at the end",
                "server CPU ms / event",
                "PostgreSQL CPU ms / event",
                "cores busy (of 2)",
            ],
            [
                [
                    f"`{kind}`",
                    cell["end_to_end_rps"],
                    cell["ack_rps"],
                    cell["p50_ms"],
                    cell["p99_ms"],
                    percent(cell["end_to_end_per_verify"]),
                    cell["waiting_at_end"],
                    cell["server_cpu_ms"],
                    cell["postgres_cpu_ms"] if db == "postgresql" else "-",
                    cell["cores_busy"],
                ]
                for (kind, _), cell in cells.items()
            ],
        )
        outcomes = ", ".join(f"`{name}` {count:,}" for name, count in sorted(run["inbox_outcomes"].items()))
        repeated = [kind for (kind, _), cell in cells.items() if cell["recorded"] < cell["requests"]]
        lines += [
            f"Verify-only: {spread(cell['ack_rps'] for cell in verify.values())} ev/s. Inbox at the end: {outcomes}."
        ]
        if repeated:
            lines += [
                (
                    f"Some bodies were sent twice ({', '.join(repeated)}: more requests than `--unique` bodies), "
                    "answered as duplicates and not recorded; the end-to-end rate counts recorded events only."
                )
            ]
        lines += ["", *limits(cells, db), ""]
    lines += ["Measured with:", "", *sources(results, "webhooks-kinds")]
    lines += [
        "### By concurrency",
        "",
        (
            "`auth` and `activity` at 1, 16 and 64 clients: one client is Terra delivering one event at a time; "
            "64, a burst of deliveries at once. *Receiver alone* is the app with no applier running during the "
            "load (`WEBHOOK_APPLY_IN_PROCESS=false`; the benchmark applies its events after the cell): what it "
            "acknowledges is the most any applier could follow."
        ),
        "",
    ]
    for db in DATABASES:
        run = results[("webhooks-clients", db)]
        cells, alone = receiver_cells(run), receiver_cells(run, "record")
        lines += [f"**{DB_NAMES[db]}**:", ""]
        lines += table(
            [
                "event",
                "clients",
                "end-to-end ev/s",
                "acknowledged ev/s",
                "ack p50 ms",
                "ack p99 ms",
                "end-to-end / verify",
                "receiver alone: ack ev/s",
                "receiver alone / verify",
                "waiting at the end",
                "drain s",
            ],
            [
                [
                    f"`{kind}`",
                    clients,
                    c["end_to_end_rps"],
                    c["ack_rps"],
                    c["p50_ms"],
                    c["p99_ms"],
                    percent(c["end_to_end_per_verify"]),
                    alone[(kind, clients)]["ack_rps"],
                    percent(alone[(kind, clients)]["ack_per_verify"]),
                    c["waiting_at_end"],
                    c["drain_s"],
                ]
                for (kind, clients), c in cells.items()
            ],
        )
    lines += [*receiver_ceiling(results), ""]
    lines += ["Measured with:", "", *sources(results, "webhooks-clients")]
    return lines


def receiver_ceiling(results: dict) -> list[str]:
    """The issue's end-to-end target against the by-concurrency run, and the ceiling the receiver alone
    (the app recording with no applier running) puts on it: an applied event was acknowledged first."""
    at_sizing = {
        db: {
            name: {
                kind: cell
                for (kind, clients), cell in receiver_cells(results[("webhooks-clients", db)], name).items()
                if clients == SIZING_CLIENTS
            }
            for name in ("app", "record", "verify")
        }
        for db in DATABASES
    }
    sqlite = at_sizing["sqlite"]
    reached = {kind: cell["end_to_end_per_verify"] for kind, cell in sqlite["app"].items()}
    met = min(reached.values()) >= END_TO_END_TARGET
    ceilings = {kind: cell["ack_per_verify"] for kind, cell in sqlite["record"].items()}
    below = [f"`{kind}`" for kind, share in ceilings.items() if share < END_TO_END_TARGET]
    text = (
        f"The issue's end-to-end target is {percent(END_TO_END_TARGET)} of verify-only or more (the applier in "
        f"the workers, SQLite, {SIZING_CLIENTS} clients). Here the app reaches "
        + ", ".join(f"{percent(share)} (`{kind}`)" for kind, share in reached.items())
        + f": {'met' if met else 'not met'}. The receiver alone, with no applier running, acknowledges only "
        + ", ".join(f"{percent(share)} (`{kind}`)" for kind, share in ceilings.items())
        + " of verify-only there: an event is acknowledged before it is applied, so no cheaper apply lifts the "
        "end-to-end rate above that. That is the floor the receiver puts under the cost of every event"
        + (
            f", and for {' and '.join(below)} it lies below the target itself: reaching the target takes a "
            "cheaper receiver, not only a cheaper apply. "
            if below
            else ". "
        )
    )
    for db in DATABASES:
        alone, verify = at_sizing[db]["record"].values(), at_sizing[db]["verify"].values()
        cpu = [cell["server_cpu_ms"] + cell["postgres_cpu_ms"] for cell in alone]
        busy = [cell["cores_busy"] for cell in alone]
        text += (
            f"On {DB_NAMES[db]} the receiver alone spends {spread(cpu)} ms of CPU per event"
            f"{' (its processes and PostgreSQL)' if db == 'postgresql' else ''}, against verify-only's "
            f"{spread(cell['server_cpu_ms'] for cell in verify)} ms, with {spread(busy)} of the 2 cores busy: "
            + (
                "the cores are saturated, so its CPU per event (parsing, verifying, recording and committing "
                "each delivery) bounds it. "
                if min(busy) >= SATURATED_CORES
                else "the cores are not saturated, so waits bound it "
                + (
                    "(SQLite's one writer at a time: each delivery's commit waits for the write turn). "
                    if db == "sqlite"
                    else "(each delivery's commit, a WAL flush). "
                )
            )
        )
    return [text.rstrip()]


def limits(cells: dict[tuple[str, int], dict], db: str) -> list[str]:
    """What bounds the end-to-end rate in this run, read from its CPU figures."""
    busy = [cell["cores_busy"] for cell in cells.values()]
    other = [cell["other_cores"] for cell in cells.values()]
    cpu = [cell["server_cpu_ms"] + cell["postgres_cpu_ms"] for cell in cells.values()]
    saturated = min(busy) >= SATURATED_CORES
    text = (
        f"What limits it: the app's processes{' and PostgreSQL' if db == 'postgresql' else ''} spent "
        f"{spread(cpu)} ms of CPU per acknowledged event, with {spread(busy)} of the 2 cores busy "
        f"(other work on the machine: {spread(other)} cores). "
    )
    if max(other) >= 0.3:
        text += (
            "Other work took part of the cores during the cells: this machine was shared, and the rates "
            "understate what an instance with the machine to itself does. "
        )
    if saturated:
        text += (
            "The cores were saturated: CPU bounds the rate, shared by the receivers and the appliers of "
            "the same two workers (one interpreter lock each)."
        )
    else:
        text += "The cores were not saturated in every cell: waits bound the rate there " + (
            "(SQLite's one writer at a time: the receivers' and the appliers' write turns)."
            if db == "sqlite"
            else "(commits, each a WAL flush, and the hand-over between receiver and applier threads)."
        )
    return [text]


def apply_section(results: dict) -> list[str]:
    before_refs = {results[("apply", db)]["before_ref"] for db in DATABASES}
    lines = [
        "## 2. What applying one event costs",
        "",
        (
            "The applier alone, by event type: the benchmark records deliveries through the receiver, then "
            "applies them with `flask terra work --until-empty`, one applier thread in a process of its own, "
            f"from this code (after) and from commit {', '.join(sorted(before_refs))} (before: the code before "
            "this round's cheaper apply), in turns in the same run. CPU and wall time are per event applied, "
            "less those of a run that finds nothing to apply, from the median round. The wall time includes "
            "the database's work; on PostgreSQL the CPU time leaves out the database server's, which runs in a "
            "process of its own. On SQLite an applying transaction holds the database's one write lock, so "
            "appliers apply one at a time however many there are: the applier's CPU time per event bounds how "
            "fast they apply, at most 1,000 / CPU ms events a second."
        ),
        "",
    ]
    for db in DATABASES:
        cells = results[("apply", db)]["cells"]
        rows = [apply_row(kind, cell.get("before"), cell["after"]) for kind, cell in cells.items()]
        lines += [f"**{DB_NAMES[db]}**:", ""]
        lines += table(
            ["event", "before CPU ms", "after CPU ms", "change", "after wall ms", "after ev/s (one thread)"], rows
        )
        if any(figure <= 0 for cell in cells.values() for version in cell.values() for figure in version.values()):
            lines += [
                (
                    "A `-`: what was left after taking off the start-up's time was not above zero: too few events "
                    "a round (`--events`) for how much the start-up varied on this machine."
                ),
                "",
            ]
        bounds = [
            f"{number(1000 / cpu_ms)} (`{kind}`)"
            for kind, cell in cells.items()
            if (cpu_ms := per_event(cell["after"]["cpu_ms"])) is not None
        ]
        if db == "sqlite" and bounds:
            lines += [
                f"So on SQLite this code applies at most {', '.join(bounds)} events a second, however many appliers run.",
                "",
            ]
    lines += ["Measured with:", "", *sources(results, "apply")]
    return lines


def per_event(value: float) -> float | None:
    """A figure per event less the start-up's, or None when nothing was left (the start-up varied more
    than the events took)."""
    return value if value > 0 else None


def apply_row(kind: str, before: dict | None, after: dict) -> list[object]:
    """One event type's costs; `before` is None when the run measured this code alone."""
    before_cpu = per_event(before["cpu_ms"]) if before else None
    after_cpu, after_wall = per_event(after["cpu_ms"]), per_event(after["wall_ms"])
    return [
        f"`{kind}`",
        before_cpu,
        after_cpu,
        f"{(after_cpu / before_cpu - 1) * 100:+.0f} %" if before_cpu and after_cpu else None,
        after_wall,
        1000 / after_wall if after_wall else None,
    ]


def status_section(results: dict) -> list[str]:
    lines = [
        "## 3. Status polls",
        "",
        (
            "`GET /api/v1/connect-attempts/<id>` with a bearer token, as an app polls its connect attempt: the "
            "200 path (the full answer) and the 304 path (`If-None-Match` with the current ETag, what a poll "
            "between changes gets), beside a bare Flask `GET /json` in the same run."
        ),
        "",
    ]
    for db in DATABASES:
        cells = results[("status", db)]["cells"]
        lines += [f"**{DB_NAMES[db]}**:", ""]
        lines += table(
            [
                "clients",
                "200 req/s",
                "200 p99 ms",
                "304 req/s",
                "304 p99 ms",
                "bare Flask req/s",
                "server CPU ms / 304",
            ],
            [
                [
                    int(clients),
                    by["200"]["rps"],
                    by["200"]["p99_ms"],
                    by["304"]["rps"],
                    by["304"]["p99_ms"],
                    by["bare"]["rps"],
                    by["304"]["cpu_ms_per_request"]["app_ms"],
                ]
                for clients, by in cells.items()
            ],
        )
    lines += ["Measured with:", "", *sources(results, "status")]
    return lines


def long_poll_section(results: dict, instance: Instance) -> list[str]:
    lines = [
        "## 4. Long-polls held at once, and their wake-up",
        "",
        (
            f"A long-poll (`?wait=25` with `If-None-Match`) sleeps in a thread of its own without a database "
            f"connection until its attempt changes. Each worker holds at most STATUS_MAX_WAITERS of them "
            f"({instance.long_polls_per_worker:,}), so an instance holds {instance.long_polls:,} at once; beyond that a long-poll is "
            f"answered at once and the app backs off (docs/mobile.md). The benchmark keeps other clients' "
            f"long-polls open (one user and token each) while it times, round after round, how long a poller "
            f"takes to see `connected` after the 200 of the webhook that connected its attempt."
        ),
        "",
    ]
    rows = []
    for db in DATABASES:
        run = results[("wakeup", db)]
        others = run["options"]["idle_waiters"]
        waiters = run.get("idle_waiters", {"at_once": 0, "failed": 0})
        turned_away = waiters["at_once"] + waiters["failed"]
        rows.append(
            [
                DB_NAMES[db],
                others,
                f"all {others:,}" if not turned_away else f"not all: {turned_away:,} polls turned away or failed",
                waiters["at_once"],
                waiters["failed"],
                len(run["rounds"]),
                run["summary"]["p50_ms"],
                run["summary"]["p99_ms"],
                run["summary"]["failed"],
            ]
        )
    lines += table(
        [
            "database",
            "other long-polls open",
            "held at once",
            "answered at once (no slot free)",
            "failed polls",
            "rounds",
            "wake-up p50 ms",
            "wake-up p99 ms",
            "failed rounds",
        ],
        rows,
    )
    lines += ["Measured with:", "", *sources(results, "wakeup")]
    lines += [
        (
            "Connect flows end to end (`tools.bench.flow`: create the attempt through the API, complete the "
            "sandbox widget, long-poll until `connected`), one process per client:"
        ),
        "",
    ]
    lines += table(
        ["database", "clients", "flows", "flows/s", "p50 ms", "p99 ms"],
        [
            [
                DB_NAMES[db],
                int(clients),
                cell["flows"],
                cell["flows_per_s"],
                common.percentile(cell["total_ms"], 50),
                common.percentile(cell["total_ms"], 99),
            ]
            for db in DATABASES
            for clients, cell in results[("flow", db)]["cells"].items()
        ],
    )
    lines += ["Measured with:", "", *sources(results, "flow")]
    return lines


def users_section(results: dict, instance: Instance) -> list[str]:
    lines = [
        "## 5. Connected Terra users per instance",
        "",
        (
            f"**Assumption** (not measured): each connected user's devices make Terra send a number of events a "
            f"day, and the busiest hour carries {PEAK_FACTOR} times the day's average rate, since devices sync in "
            f"bursts (mornings, after workouts) and Terra delivers what they bring at once. The instance must "
            f"apply the peak hour's events as they come, at its sustained end-to-end rate (section 1; the "
            f"slowest event type's at {SIZING_CLIENTS} clients, since a real stream mixes them):"
        ),
        "",
        f"    users = sustained events/s × 86,400 / (events per user per day × {PEAK_FACTOR})",
        "",
        (
            "rounded down to two significant figures. Acknowledging alone absorbs short bursts above this rate "
            "(the backlog is applied after them); the table is for the hour that does not let up."
        ),
        "",
    ]
    rates = {db: sustained_rate(results[("webhooks-kinds", db)]) for db in DATABASES}
    lines += table(
        ["events per user per day", f"peak-hour events/s per 1,000 users (×{PEAK_FACTOR})"]
        + [f"{DB_NAMES[db]}: users ({number(rates[db][0])} ev/s, `{rates[db][1]}`)" for db in DATABASES],
        [
            [
                events,
                events * PEAK_FACTOR * 1000 / 86_400,
                *(f"{users_for(rates[db][0], events):,}" for db in DATABASES),
            ]
            for events in EVENTS_PER_USER_PER_DAY
        ],
    )
    polling = {db: round_down(status_floor(results[("status", db)], "304") * instance.poll_after_s) for db in DATABASES}
    lines += [
        "The status side counts apps in a connect flow, not connected users: an app polls only while its user "
        f"connects. Polling every {instance.poll_after_s:g} s (STATUS_POLL_AFTER_MS, the interval the API tells apps "
        f"to keep), an instance answers "
        + " and ".join(f"{polling[db]:,} apps at once on {DB_NAMES[db]}" for db in DATABASES)
        + " (the 304 rate of section 3 × the interval); long-polling instead, "
        f"{instance.long_polls:,} apps at once (section 4), which cost a sleeping thread "
        "each and no CPU until their attempt changes. Those are apps in the middle of connecting, a small share "
        "of the connected users at any moment (a connect flow takes seconds to minutes, once per user and "
        "device): the events, not the polls, size an instance.",
        "",
        "From the runs of sections 1 and 3:",
        "",
        *sources(results, "webhooks-kinds"),
        *sources(results, "status"),
    ]
    return lines


def applier_section(results: dict) -> list[str]:
    lines = [
        "## 6. The applier as its own process",
        "",
        (
            "With `WEBHOOK_APPLY_IN_PROCESS=false` the web workers only record and acknowledge, and "
            "`flask terra work` applies (here at a lower CPU priority, `nice -n 10`, `--poll-seconds 0.05`, on "
            "the same machine). Same run, same load, against the shipped in-process applier:"
        ),
        "",
    ]
    changes: dict[str, list[float]] = {"end-to-end rate": [], "acknowledged rate": [], "acknowledgement p99": []}
    for db in DATABASES:
        run = results[("webhooks-clients", db)]
        inside, apart = receiver_cells(run), receiver_cells(run, "apart")
        rows = []
        for key, here in inside.items():
            other = apart.get(key)
            if other is None:
                continue
            for name, field in zip(changes, ("end_to_end_rps", "ack_rps", "p99_ms")):
                changes[name].append(other[field] / here[field] - 1)
            rows.append(
                [
                    f"`{key[0]}`",
                    key[1],
                    here["ack_rps"],
                    here["p99_ms"],
                    here["end_to_end_rps"],
                    other["ack_rps"],
                    other["p99_ms"],
                    other["end_to_end_rps"],
                    f"{changes['end-to-end rate'][-1] * 100:+.0f} %",
                ]
            )
        lines += [f"**{DB_NAMES[db]}**:", ""]
        lines += table(
            [
                "event",
                "clients",
                "in-process: ack ev/s",
                "ack p99 ms",
                "end-to-end ev/s",
                "separate: ack ev/s",
                "ack p99 ms",
                "end-to-end ev/s",
                "end-to-end change",
            ],
            rows,
        )
    lines += ["Measured with:", "", *sources(results, "webhooks-clients")]
    medians = {name: sorted(values)[len(values) // 2] for name, values in changes.items() if values}
    if not medians:
        return lines
    lines += [
        (
            "With the applier apart, the median change over these cells: "
            + ", ".join(f"{name} {change * 100:+.0f} %" for name, change in medians.items())
            + ". On one 2-core machine both ways share the same two cores: what the separate process gains by "
            "applying without pausing for the receivers, it takes from them."
        ),
        "",
        (
            "So on one machine: "
            + (
                "the separate process applies more events a second here, "
                if medians["end-to-end rate"] >= 0.1
                else "it does not apply more events a second, "
            )
            + (
                "and it helps the acknowledgements (the receivers have the interpreters to themselves): worth it "
                "where Terra's deliveries must be answered fast in bursts. "
                if medians["acknowledged rate"] >= 0.1 or medians["acknowledgement p99"] <= -0.1
                else "and it does not make the acknowledgements faster either: keep the applier in the workers. "
            )
            + "For more events a second, run `flask terra work` on an instance of its own (its own cores; on "
            "PostgreSQL any number of them claim rows side by side, each with its own connections, section 7), "
            "with `WEBHOOK_APPLY_IN_PROCESS=false` on the web instances. On SQLite everything stays on one "
            "machine with one writer at a time: a second process only adds a writer."
        ),
        "",
    ]
    return lines


def budget_section(instance: Instance) -> list[str]:
    limit = instance.pool_limit
    pool = (
        f"DATABASE_POOL_SIZE {instance.pool_size} + DATABASE_MAX_OVERFLOW {instance.max_overflow} = {limit}"
        if limit is not None
        else f"DATABASE_POOL_SIZE {instance.pool_size}, DATABASE_MAX_OVERFLOW -1 (no limit: up to one per thread)"
    )
    rows = [
        ["a worker's pool: request threads, long-polls' reads, the recorder and the applier threads", pool],
        ["a worker's LISTEN connection for attempt changes (services/attempt_states.py, outside the pool)", "1"],
        [f"one worker (WEB_CONCURRENCY = {instance.workers} of them)", f"{instance.per_worker}"],
        ["an instance: its workers", f"{instance.per_instance(0)}"],
        [
            f"each `flask terra work` process ({instance.applier_threads} applier threads, one connection each)",
            f"{instance.per_work_process}",
        ],
        [
            "an instance with one `flask terra work` beside it (WEBHOOK_APPLY_IN_PROCESS=false)",
            f"{instance.per_instance(1)}",
        ],
    ]
    each = instance.per_instance(0 if instance.apply_in_process else 1)
    fits = instance.available // each
    left = instance.available - fits * each
    lines = [
        "## 7. PostgreSQL connection budget",
        "",
        (
            "Computed from the settings the code ships with (config.py, gunicorn.conf.py, "
            "terra_integration/applier.py), not measured: the most connections each part can hold open at once."
        ),
        "",
        *table(["part", "connections"], rows),
        (
            f"PostgreSQL's default `max_connections` is {PG_MAX_CONNECTIONS}, of which "
            f"`superuser_reserved_connections` ({PG_SUPERUSER_RESERVED}) are kept for superusers: "
            f"{instance.available} for the app. So **{fits} instance{'s' if fits != 1 else ''}** with these settings "
            f"fit{'s' if fits == 1 else ''} under one server at its defaults, leaving {left} connections for "
            f"`flask db upgrade` and other `flask` commands (one each while they run); one more instance, such "
            f"as a new deploy's started before the old one stops, needs {each} "
            f"{'and does not fit' if left < each else 'and fits'}. For more instances, lower each worker's pool "
            f"(a request thread then waits for a "
            f"connection when all are taken), raise `max_connections`, or put PgBouncer in front:"
        ),
        "",
        *table(
            ["instances", "DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW at most"],
            [[instances, instance.pool_limit_for(instances)] for instances in (2, 3, 4)],
        ),
    ]
    return lines


if __name__ == "__main__":
    main()
