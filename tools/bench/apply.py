"""What applying a recorded webhook event costs, by event type: CPU and wall time per event of the
applier alone, for this code and for an earlier commit's (`--before-ref`), in the same run, on the
same database.

    .venv/bin/python -m tools.bench.apply --db sqlite [--kinds auth,activity] [--events 3000] [--rounds 2]

For each event type, the benchmark records `--events` signed deliveries through the receiver (the app
in this process, its applier off; not measured), then applies them with `flask terra work
--until-empty` run as a process of its own, from this checkout or from the earlier commit's (a
temporary git worktree), and takes that process's CPU time (user + system, from wait4) and its wall
time, less those of a run that finds nothing to apply (start-up: imports, the app factory). (On
PostgreSQL the database server's own work is in the wall time only: its backend ends with the
process, and its CPU time with it.) The versions take turns,
`--rounds` times each, and the median round is reported: what drifts on a shared machine drifts for
both. A first, unmeasured round applies each user's first event, so that every measured round
applies the same mix (for `auth`: an authentication applied again, as Terra's retries are).

`--profile DIR` then applies one more round of each version under cProfile, keeps the profiles in DIR
and prints, per event, the cumulative time of the app's own functions that take the most: where
applying's time goes, before and after.
"""

from __future__ import annotations

import itertools
import os
import pstats
import subprocess
import time
from pathlib import Path

from tools.bench import common, webhooks

WORK = [common.PYTHON, "-m", "flask", "--app", "app", "terra", "work", "--until-empty"]
BEFORE_REF = "d3578bb"  # main before the cheaper apply (issue 24)


def arguments():
    p = common.parser(__doc__.splitlines()[0], duration=0, duration_help="unused")
    p.add_argument(
        "--kinds",
        type=webhooks.kind_list,
        default=list(webhooks.KINDS),
        help=f"event types (default all: {','.join(webhooks.KINDS)})",
    )
    p.add_argument("--events", type=int, default=3000, help="events applied per round (default %(default)s)")
    p.add_argument("--users", type=int, default=200, help="distinct users per event type (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds per version (default %(default)s)")
    p.add_argument(
        "--before-ref",
        default=BEFORE_REF,
        help="the commit measured beside this code (default %(default)s); 'none' to leave it out",
    )
    p.add_argument("--profile", type=Path, help="also profile one round of each version into this folder")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    if not 100 <= args.events <= 100_000 or not 1 <= args.rounds <= 20:
        raise SystemExit("--events must be between 100 and 100000, --rounds between 1 and 20")

    with common.Run(args, "apply") as run:
        app = run.migrate()
        versions = {"after": common.ROOT}
        if args.before_ref != "none":
            versions = {"before": webhooks.checkout(run, args.before_ref), **versions}
        receiver = recording_app(run)
        start_up = {name: apply_with(run, folder) for name, folder in versions.items()}
        print(
            "start-up (nothing to apply): " + ", ".join(f"{n} CPU {c * 1000:.0f} ms" for n, (c, _) in start_up.items())
        )
        nonces = itertools.count()
        rows, cells = [], {}
        for kind in args.kinds:
            bodies = webhooks.seed_bodies(app, kind, args.users)
            record(receiver, bodies, len(bodies), nonces)
            apply_with(run, common.ROOT)  # each user's first event, unmeasured
            measured: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
            for round_number in range(args.rounds):
                for name, folder in versions.items():
                    record(receiver, bodies, args.events, nonces)
                    cpu, wall = (
                        (spent - start) / args.events * 1000
                        for spent, start in zip(apply_with(run, folder), start_up[name], strict=True)
                    )
                    measured[name].append((cpu, wall))
                    print(
                        f"  {kind:>17} round {round_number + 1} {name:>6}: CPU {cpu:.3f} ms/event, wall {wall:.3f} ms",
                        flush=True,
                    )
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for name, folder in versions.items():
                    record(receiver, bodies, args.events, nonces)
                    profile = args.profile / f"apply-{kind}-{args.db}-{name}.prof"
                    apply_with(run, folder, profile)
                    print_profile(profile, folder, args.events, f"{kind}, {name}")
            cells[kind] = {name: median_round(rounds) for name, rounds in measured.items()}
            after = cells[kind]["after"]
            before = cells[kind].get("before")
            rows.append(
                [
                    kind,
                    *(before.values() if before else ["-"] * 3),
                    *after.values(),
                    common.pct(after["cpu_ms"] / before["cpu_ms"]) if before else "-",
                ]
            )
        common.print_table(
            f"applying one recorded event, by type ({args.db}; `flask terra work --until-empty`, {args.events} events "
            f"a round, median of {args.rounds}; before = {args.before_ref})",
            [
                "event",
                "before CPU ms",
                "before wall ms",
                "before ev/s",
                "CPU ms",
                "wall ms",
                "ev/s",
                "CPU after/before",
            ],
            rows,
        )
        run.results["cells"] = cells
        run.results["before_ref"] = args.before_ref


def median_round(rounds: list[tuple[float, float]]) -> dict[str, float]:
    """The round of median CPU (one round, not a mix of rounds), and its rate of applied events."""
    cpu, wall = sorted(rounds)[(len(rounds) - 1) // 2]
    return {"cpu_ms": cpu, "wall_ms": wall, "events_per_s": 1000 / wall}


def recording_app(run: common.Run):
    """The app in this process with its applier off, to record deliveries through its receiver."""
    from app import create_app

    app = create_app(environ=common.app_environ(run.database.url, 0, WEBHOOK_APPLY_IN_PROCESS="false"))
    common.quiet_logs()
    return app.test_client()


def record(client, bodies: list[bytes], count: int, nonces) -> None:
    """`count` deliveries, each a body never sent before (the inbox keeps a replay out)."""
    for body in common.never_sent(bodies, count, nonces):
        answer = client.post("/webhooks/terra", data=body, headers=common.signed_headers(body))
        assert answer.status_code == 200, (answer.status_code, answer.get_data()[:200])


def apply_with(run: common.Run, folder: Path, profile: Path | None = None) -> tuple[float, float]:
    """Run `flask terra work --until-empty` from `folder`'s code (under cProfile into `profile`, when
    given): its CPU seconds and wall seconds."""
    argv = WORK if profile is None else [common.PYTHON, "-m", "cProfile", "-o", str(profile), *WORK[1:]]
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=folder, env=run.environ(0), stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"`flask terra work` from {folder} exited with {process.returncode}")
    return usage.ru_utime + usage.ru_stime, wall


def print_profile(path: Path, folder: Path, events: int, label: str, top: int = 15) -> None:
    """The app's own functions (not the libraries', nor the imports at start-up) by cumulative time, in
    ms per applied event."""
    own = [
        (cumulative, Path(file).relative_to(folder), line, function)
        for (file, line, function), (_, _, _, cumulative, _) in pstats.Stats(str(path)).stats.items()
        if file.startswith(f"{folder}/") and not file.startswith(f"{folder}/.venv/") and function != "<module>"
    ]
    print(f"where applying's time goes ({label}; cProfile, cumulative ms per event): {path}")
    for cumulative, file, line, function in sorted(own, reverse=True)[:top]:
        print(f"  {cumulative / events * 1000:8.3f}  {function} ({file}:{line})")


if __name__ == "__main__":
    main()
