"""Memory of the app's worker processes under a steady load on the status endpoint.

    .venv/bin/python -m tools.bench.memory --db sqlite [--duration 600] [--interval 5] [--clients 16]

wrk loads the status endpoint (200 and 304 paths alternate, one wrk run each per interval) for
`--duration` seconds while this process reads each worker's RSS (VmRSS in /proc) every `--interval`
seconds. Reported per worker: RSS at the start (after warm-up), at the end, the maximum, and the slope
of a least-squares line through the samples of the second half of the run (KiB per minute), which is
what a leak shows as and warm-up does not.
"""

from __future__ import annotations

import time

import requests

from tools.bench import common


def slope_kib_per_min(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if not var:
        return 0.0
    return sum((t - mean_t) * (r - mean_r) for t, r in points) / var * 60


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__.splitlines()[0], duration=600, duration_help="seconds of load")
    p.add_argument("--interval", type=float, default=5, help="seconds between RSS samples (default 5)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--warmup", type=float, default=10, help="seconds of load before the first sample")
    args = p.parse_args(argv)
    if args.duration > 7200:
        raise SystemExit("--duration is capped at 7200 s")

    with common.Run(args, "memory") as run:
        app = run.migrate()
        seeded = common.seed_user(app)
        server = run.start_server(label="app")
        url = f"{server.url}/api/v1/connect-attempts/{seeded.attempt_ids[0]}"
        auth = f"Authorization: Bearer {seeded.token}"
        etag = requests.get(url, headers={"Authorization": f"Bearer {seeded.token}"}, timeout=10).headers["ETag"]
        cases = [[auth], [auth, f"If-None-Match: {etag}"]]
        workers = server.worker_pids()
        print(
            f"workers {workers}; warm-up {args.warmup:g} s, then {args.duration:g} s of load, "
            f"a sample every {args.interval:g} s",
            flush=True,
        )
        common.wrk(url, connections=args.clients, duration=args.warmup, headers=cases[0], script="fixed.lua")

        samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
        requests_done = 0
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < args.duration:
            for pid in workers:
                rss = common.rss_kib(pid)
                if rss is not None:
                    samples[pid].append((time.monotonic() - started, rss))
            seconds = min(args.interval, args.duration - (time.monotonic() - started))
            if seconds < 1:
                break
            result = common.wrk(
                url, connections=args.clients, duration=seconds, headers=cases[step % 2], script="fixed.lua"
            )
            requests_done += result.requests
            step += 1
            if step % max(1, int(60 / args.interval)) == 0:
                now = {pid: common.rss_kib(pid) for pid in workers}
                print(f"  {time.monotonic() - started:6.0f} s  {requests_done:,} requests  RSS KiB {now}", flush=True)
        for pid in workers:
            rss = common.rss_kib(pid)
            if rss is not None:
                samples[pid].append((time.monotonic() - started, rss))
        alive = [pid for pid in workers if common.rss_kib(pid) is not None]
        if len(alive) != len(workers) or set(server.worker_pids()) != set(workers):
            print(f"WARNING: workers changed during the run: {workers} -> {server.worker_pids()}")

        rows = []
        for pid, points in samples.items():
            if not points:
                continue
            second_half = [point for point in points if point[0] >= points[-1][0] / 2]
            rows.append(
                [
                    pid,
                    len(points),
                    points[0][1] / 1024,
                    points[-1][1] / 1024,
                    max(r for _, r in points) / 1024,
                    slope_kib_per_min(points),
                    slope_kib_per_min(second_half),
                ]
            )
        elapsed = time.monotonic() - started
        common.print_table(
            f"worker RSS under load on the status endpoint ({args.db}, {elapsed:.0f} s, {args.clients} clients, "
            f"{requests_done:,} requests, {requests_done / elapsed:.0f} req/s)",
            ["worker pid", "samples", "start MiB", "end MiB", "max MiB", "slope KiB/min", "2nd-half slope KiB/min"],
            rows,
        )
        run.results["samples"] = {str(pid): points for pid, points in samples.items()}
        run.results["requests"] = requests_done
        run.results["rows"] = rows


if __name__ == "__main__":
    main()
