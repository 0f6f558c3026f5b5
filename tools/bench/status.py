"""The mobile status endpoint, `GET /api/v1/connect-attempts/<id>` with a bearer token, against a bare
Flask JSON endpoint under the same gunicorn configuration, in the same run.

    .venv/bin/python -m tools.bench.status --db sqlite [--duration 10] [--concurrency 1,16,64] [--profile DIR]

Three rows per client count, measured in turn (bare, 200, 304) so drift hits all three alike:
- bare: `tools/bench/bare_app.py`'s `GET /json`;
- 200:  the status of a pending attempt, full JSON body;
- 304:  the same with `If-None-Match: <current ETag>` (what a poller sends between changes).
Targets: 200 at >= 60% of bare throughput, 304 at >= 75%.
"""

from __future__ import annotations

import argparse
from functools import partial

import requests

from tools.bench import common

TARGET_200 = 0.60
TARGET_304 = 0.75


def arguments() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0], duration=10)
    common.add_wrk_load_options(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)

    with common.Run(args, "status") as run:
        app = run.migrate()
        seeded = common.seed_user(app)
        attempt_id = seeded.attempt_ids[0]
        server = run.start_server(label="app")
        bare = run.start_server(common.BARE_SPEC, label="bare")
        status_url = f"{server.url}/api/v1/connect-attempts/{attempt_id}"
        auth = f"Authorization: Bearer {seeded.token}"

        first = requests.get(status_url, headers={"Authorization": f"Bearer {seeded.token}"}, timeout=10)
        first.raise_for_status()
        etag = first.headers["ETag"]
        check = requests.get(
            status_url, headers={"Authorization": f"Bearer {seeded.token}", "If-None-Match": etag}, timeout=10
        )
        assert check.status_code == 304, check.status_code
        print(f"status endpoint: 200 with ETag {etag}, 304 with If-None-Match; body {len(first.content)} bytes")

        cases = {
            "bare": (bare.url + "/json", []),
            "200": (status_url, [auth]),
            "304": (status_url, [auth, f"If-None-Match: {etag}"]),
        }
        servers = {"bare": bare, "200": server, "304": server}
        measured: dict[int, dict[str, common.LoadResult]] = {}
        for clients in args.concurrency:
            measured[clients] = {}
            for name, (url, headers) in cases.items():
                if args.warmup:
                    common.wrk(
                        url,
                        connections=clients,
                        duration=args.warmup,
                        headers=headers,
                        script="fixed.lua",
                        threads=args.threads,
                    )
                target = servers[name]
                result = common.measure(
                    target,
                    partial(
                        common.wrk,
                        url,
                        connections=clients,
                        duration=args.duration,
                        headers=headers,
                        script="fixed.lua",
                        threads=args.threads,
                    ),
                )
                measured[clients][name] = result
                print(
                    f"  {clients:>3} clients  {name:>4}: {result.rps:8.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  statuses {result.statuses} {result.errors or ''}  CPU {result.cpu}",
                    flush=True,
                )

        rows = []
        for clients, by_case in measured.items():
            b, ok, nm = by_case["bare"], by_case["200"], by_case["304"]
            rows.append(
                [
                    clients,
                    b.rps,
                    b.p50_ms,
                    b.p99_ms,
                    ok.rps,
                    ok.p50_ms,
                    ok.p99_ms,
                    common.pct(ok.rps / b.rps),
                    nm.rps,
                    nm.p50_ms,
                    nm.p99_ms,
                    common.pct(nm.rps / b.rps),
                    (
                        f"200 {common.verdict(ok.rps / b.rps >= TARGET_200)}, "
                        f"304 {common.verdict(nm.rps / b.rps >= TARGET_304)}"
                    ),
                ]
            )
        common.print_table(
            f"status endpoint vs bare Flask ({args.db}, {args.duration:g} s each, wrk -t{args.threads}; "
            f"targets 200 >= {common.pct(TARGET_200)}, 304 >= {common.pct(TARGET_304)} of bare req/s)",
            [
                "clients",
                "bare req/s",
                "p50 ms",
                "p99 ms",
                "200 req/s",
                "p50 ms",
                "p99 ms",
                "200/bare",
                "304 req/s",
                "p50 ms",
                "p99 ms",
                "304/bare",
                "targets",
            ],
            rows,
        )
        cpu_rows = [
            [
                clients,
                name,
                *common.rate_and_cpu(r),
            ]
            for clients, by_case in measured.items()
            for name, r in by_case.items()
        ]
        common.print_table(
            "CPU per request (ms) by process group; cores busy during the cell (of 2), and how many "
            "of them other work used",
            ["clients", "case", "req/s", "server CPU ms", "postgres CPU ms", "wrk CPU ms", "cores busy", "other cores"],
            cpu_rows,
        )
        run.results["cells"] = {str(c): {k: v.as_dict() for k, v in by.items()} for c, by in measured.items()}

        if args.profile:
            profile(run, server, cases, args)


def profile(run: common.Run, server: common.Server, cases: dict, args) -> None:
    """Profile the app's workers under the 200 and the 304 load (wall time, then CPU time)."""
    args.profile.mkdir(parents=True, exist_ok=True)
    clients = max(args.concurrency)
    seconds = max(args.duration, 10)
    for name in ("200", "304"):
        url, headers = cases[name]
        load = partial(
            common.wrk,
            url,
            connections=clients,
            duration=seconds,
            headers=headers,
            script="fixed.lua",
            threads=args.threads,
        )
        common.profile_server(
            server,
            load,
            seconds=seconds,
            out_prefix=args.profile / f"status-{name}-{args.db}",
            label=f"status {name} path, {clients} clients, {args.db}",
        )


if __name__ == "__main__":
    main()
