"""Full sandbox connect flows per second, as a mobile app drives them through the API.

    .venv/bin/python -m tools.bench.flow --db sqlite [--duration 15] [--clients 1,4,8]

Each client is its own process with its own user and bearer token, and repeats, until the time is up:
1. `POST /api/v1/connect-attempts` (the app asks the sandbox, over HTTP, for a widget session);
2. `POST <widget url>/complete` with a new provider account and `success` (the sandbox commits the
   Terra user and delivers the signed `auth` webhook to the app over HTTP, from a thread);
3. `GET <status url>?wait=25` with `If-None-Match` until the attempt is `connected`.
The load generator is Python (wrk cannot chain dependent requests); it reports which step took how long.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
import uuid

from tools.bench import common


def client(base_url: str, token: str, seconds: float, max_flows: int, results) -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    flows, errors = [], []
    began = time.monotonic()
    deadline = began + seconds
    while time.monotonic() < deadline and len(flows) < max_flows:
        started = time.monotonic()
        try:
            created = session.post(base_url + "/api/v1/connect-attempts", json={}, timeout=30)
            if created.status_code != 201:
                errors.append(f"create {created.status_code}")
                continue
            attempt = created.json()
            after_create = time.monotonic()
            completed = requests.post(
                attempt["url"] + "/complete",
                timeout=30,
                json={"provider": "GARMIN", "account": f"acct-{uuid.uuid4().hex[:12]}", "outcome": "success"},
            )
            if completed.status_code != 200:
                errors.append(f"complete {completed.status_code}")
                continue
            after_complete = time.monotonic()
            status_url = base_url + attempt["status_url"]
            answer = session.get(status_url, timeout=30)
            polls = 1
            body: dict = {"terminal": False, "status": None}
            while answer.status_code in (200, 304):
                if answer.status_code == 200:
                    body = answer.json()
                if body["terminal"] or time.monotonic() > deadline + 30:
                    break
                answer = session.get(
                    status_url + "?wait=25", headers={"If-None-Match": answer.headers["ETag"]}, timeout=60
                )
                polls += 1
            if answer.status_code not in (200, 304) or body["status"] != "connected":
                errors.append(f"status {answer.status_code} {body.get('status')}")
                continue
            done = time.monotonic()
            flows.append(
                {
                    "total_ms": (done - started) * 1000,
                    "create_ms": (after_create - started) * 1000,
                    "complete_ms": (after_complete - after_create) * 1000,
                    "connected_ms": (done - after_complete) * 1000,
                    "polls": polls,
                    "ended": done,
                }
            )
        except requests.RequestException as error:
            errors.append(type(error).__name__)
    results.put({"flows": flows, "errors": errors, "began": began})


def arguments() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0], duration=15)
    p.add_argument(
        "--clients",
        type=common.concurrency_list,
        default=[1, 4, 8],
        help="concurrent clients, one process each (default 1,4,8)",
    )
    p.add_argument("--max-flows", type=int, default=5000, help="upper bound of flows per client per measurement")
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)

    with common.Run(args, "flow") as run:
        app = run.migrate()
        users = [common.seed_user(app, attempts=0) for _ in range(max(args.clients))]
        server = run.start_server(label="app")
        context = multiprocessing.get_context("spawn")
        rows = []
        run.results["cells"] = {}
        for clients in args.clients:
            queue = context.Queue()
            processes = [
                context.Process(
                    target=client, daemon=True, args=(server.url, users[i].token, args.duration, args.max_flows, queue)
                )
                for i in range(clients)
            ]
            for process in processes:
                process.start()
            outcomes = [queue.get(timeout=args.duration + 120) for _ in processes]
            for process in processes:
                process.join(timeout=10)
            flows = [flow for outcome in outcomes for flow in outcome["flows"]]
            errors = [error for outcome in outcomes for error in outcome["errors"]]
            if not flows:
                raise SystemExit(
                    f"no flow completed with {clients} clients; errors: {errors[:10]}\nsee {server.log_path}"
                )
            elapsed = max(flow["ended"] for flow in flows) - min(outcome["began"] for outcome in outcomes)
            rate = len(flows) / elapsed
            total = [f["total_ms"] for f in flows]
            rows.append(
                [
                    clients,
                    len(flows),
                    rate,
                    common.percentile(total, 50),
                    common.percentile(total, 99),
                    common.percentile([f["create_ms"] for f in flows], 50),
                    common.percentile([f["complete_ms"] for f in flows], 50),
                    common.percentile([f["connected_ms"] for f in flows], 50),
                    common.percentile([f["connected_ms"] for f in flows], 99),
                    len(errors),
                ]
            )
            print(
                f"  {clients} clients: {len(flows)} flows in {elapsed:.1f} s = {rate:.1f}/s; errors {errors[:5]}",
                flush=True,
            )
            run.results["cells"][str(clients)] = {
                "flows": len(flows),
                "flows_per_s": rate,
                "errors": errors[:50],
                "total_ms": sorted(total),
            }
        common.print_table(
            f"full sandbox connect flows ({args.db}, {args.duration:g} s per row; Python load generator)",
            [
                "clients",
                "flows",
                "flows/s",
                "p50 ms",
                "p99 ms",
                "create p50",
                "complete p50",
                "to connected p50",
                "to connected p99",
                "errors",
            ],
            rows,
        )


if __name__ == "__main__":
    main()
