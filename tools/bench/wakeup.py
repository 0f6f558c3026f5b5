"""Wake-up latency of the status long-poll: from the 200 of the `auth` webhook that connects an attempt
to the moment a long-polling client (`GET ...?wait=25` with `If-None-Match`) sees `connected`.

    .venv/bin/python -m tools.bench.wakeup --db sqlite [--rounds 100] [--duration 180]

The app runs under the shipped gunicorn configuration with 2 worker processes. The poller and the
webhook poster are two separate processes (so the wake-up has to cross processes through the
database, as it does in production); both time with CLOCK_MONOTONIC, which all processes share.
Each round: the poller sends its long-poll, the poster waits a random 200-400 ms (so the webhook
lands at a random phase of whatever periodic check the server makes), posts the signed `auth` event, and
notes when its 200 arrived; the poller notes when its answer arrived. Targets: p50 < 100 ms,
p99 < 500 ms. The poller and the `--idle-waiters` behave as docs/mobile.md asks of an app: a 304
that comes back within a second (the server had no waiter slot free) is re-sent after 2 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import time
import uuid
from urllib.parse import urlsplit

from tools.bench import common

TARGET_P50_MS = 100
TARGET_P99_MS = 500
POLL_AFTER_S = 2.0  # the app's default poll_after_ms (STATUS_POLL_AFTER_MS)
IDLE_STAGGER_S = 10.0  # the idle waiters' first long-polls are spread over this long


def poller(base_url: str, token: str, pipe) -> None:
    """Long-poll one attempt per round as docs/mobile.md tells an app to: re-issue a long-poll that
    ends with a 304, after POLL_AFTER_S when it came back fast (no news, or no waiter slot free on
    the server); report when the first request went out and when (and with what) the news came."""
    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    while True:
        message = pipe.recv()
        if message is None:
            return
        attempt_id, etag, wait = message
        give_up = time.monotonic() + wait + 30
        first = True
        while True:
            connection = http.client.HTTPConnection(host, port, timeout=wait + 30)
            try:
                asked = time.monotonic()
                connection.request(
                    "GET",
                    f"/api/v1/connect-attempts/{attempt_id}?wait={wait}",
                    headers={"Authorization": f"Bearer {token}", "If-None-Match": etag},
                )
                if first:
                    pipe.send(("sent", asked))
                    first = False
                response = connection.getresponse()
                body = response.read()
                seen = time.monotonic()
            except (OSError, http.client.HTTPException) as error:
                pipe.send(("error", time.monotonic(), None, f"{type(error).__name__}: {error}"))
                break
            finally:
                connection.close()
            if response.status != 304 or seen > give_up:
                status = json.loads(body).get("status") if response.status == 200 else None
                pipe.send(("seen", seen, response.status, status))
                break
            if seen - asked < 1:
                time.sleep(POLL_AFTER_S)


def poster(base_url: str, pipe) -> None:
    """Post each signed webhook it is handed; report when it was sent and when its 200 came back."""
    import requests

    session = requests.Session()
    while True:
        body = pipe.recv()
        if body is None:
            return
        headers = common.signed_headers(body)
        started = time.monotonic()
        try:
            response = session.post(base_url + "/webhooks/terra", data=body, headers=headers, timeout=30)
            answered = time.monotonic()
            pipe.send((started, answered, response.status_code, response.json().get("status")))
        except Exception as error:  # noqa: BLE001 (reported, the round is counted as failed)
            pipe.send((started, time.monotonic(), None, f"{type(error).__name__}: {error}"))


def idle_waiters(base_url: str, waiters: list[tuple[str, str]], seconds: float, ready, outcomes) -> None:
    """Hold one long-poll open on each (token, attempt id) of `waiters` (pending attempts nobody
    changes; one user and token each, as each phone is its own app user: a caller holds at most
    STATUS_MAX_WAITERS_PER_TOKEN), re-issuing each as it times out, for `seconds`: phones waiting on
    their own connect flows. Counts in
    `outcomes` the long-polls answered after a second or more ([0]: held until their wait ended, or
    queued that long for a thread), at once ([1]: no waiter slot free), or failed ([2])."""
    import threading

    host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    deadline = time.monotonic() + seconds

    def hold(token: str, attempt_id: str) -> None:
        # Phones start waiting at different moments, and so re-issue at different moments.
        time.sleep(random.uniform(0, IDLE_STAGGER_S))
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection(host, port, timeout=60)
            try:
                connection.request(
                    "GET",
                    f"/api/v1/connect-attempts/{attempt_id}?wait=25",
                    headers={"Authorization": f"Bearer {token}", "If-None-Match": '"1"'},
                )
                asked = time.monotonic()
                connection.getresponse().read()
                at_once = time.monotonic() - asked < 1
                with outcomes.get_lock():
                    outcomes[1 if at_once else 0] += 1
                if at_once:  # no waiter slot free: back off as an app does
                    time.sleep(POLL_AFTER_S)
            except (OSError, http.client.HTTPException):
                with outcomes.get_lock():
                    outcomes[2] += 1
                time.sleep(0.5)
            finally:
                connection.close()

    threads = [threading.Thread(target=hold, args=waiter, daemon=True) for waiter in waiters]
    for thread in threads:
        thread.start()
    ready.set()
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0) + 30)


def arguments() -> argparse.ArgumentParser:
    p = common.parser(__doc__.splitlines()[0], duration=180, duration_help="upper bound of the whole measurement, s")
    p.add_argument("--rounds", type=int, default=100, help="webhook/long-poll rounds (default 100)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    p.add_argument(
        "--idle-waiters",
        type=int,
        default=0,
        help="other clients holding long-polls open on their own pending attempts (default 0, at most "
        "2000); each one sleeps in a worker thread for up to 25 s",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    if not 0 <= args.idle_waiters <= 2000:
        raise SystemExit("--idle-waiters must be between 0 and 2000")

    with common.Run(args, "wakeup") as run:
        app = run.migrate()
        seeded = common.seed_user(app, attempts=args.rounds)
        bodies = [
            common.auth_body(seeded.reference_id, str(uuid.uuid4()), session_id) for session_id in seeded.session_ids
        ]
        server = run.start_server(label="app", WEB_CONCURRENCY=str(args.workers))
        print(f"app: {len(server.worker_pids())} worker processes")

        context = multiprocessing.get_context("spawn")
        waiters = None
        idle_outcomes = context.Array("i", 3)
        if args.idle_waiters:
            others = [common.seed_user(app) for _ in range(args.idle_waiters)]
            ready = context.Event()
            waiters = context.Process(
                target=idle_waiters,
                daemon=True,
                args=(
                    server.url,
                    [(other.token, other.attempt_ids[0]) for other in others],
                    args.duration,
                    ready,
                    idle_outcomes,
                ),
            )
            waiters.start()
            ready.wait(30)
            time.sleep(IDLE_STAGGER_S + 2)  # let their requests reach the server
            print(f"{args.idle_waiters} other clients hold long-polls open")
        poll_end, poll_child = context.Pipe()
        post_end, post_child = context.Pipe()
        children = [
            context.Process(target=poller, args=(server.url, seeded.token, poll_child), daemon=True),
            context.Process(target=poster, args=(server.url, post_child), daemon=True),
        ]
        for child in children:
            child.start()
        rounds: list[dict] = []
        deadline = time.monotonic() + args.duration
        try:
            for index, attempt_id in enumerate(seeded.attempt_ids):
                if time.monotonic() > deadline:
                    print(f"stopping after {index} rounds: --duration {args.duration:g} s reached")
                    break
                poll_end.send((attempt_id, '"1"', 25))
                if not poll_end.poll(60):
                    raise RuntimeError("the poller did not send its request")
                poll_end.recv()  # the poller's request is on its way
                time.sleep(random.uniform(0.2, 0.4))
                post_end.send(bodies[index])
                if not post_end.poll(65):
                    raise RuntimeError("the webhook poster got no answer")
                started, answered, http_status, outcome = post_end.recv()
                if not poll_end.poll(65):
                    raise RuntimeError("the long-poll did not return")
                _, seen, poll_status, attempt_status = poll_end.recv()
                rounds.append(
                    {
                        "webhook_ms": (answered - started) * 1000,
                        "wakeup_ms": (seen - answered) * 1000,
                        "from_send_ms": (seen - started) * 1000,
                        "ok": http_status == 200 and poll_status == 200 and attempt_status == "connected",
                        "detail": f"webhook {http_status} {outcome}; poll {poll_status} {attempt_status}",
                    }
                )
        finally:
            poll_end.send(None)
            post_end.send(None)
            for child in children:
                child.join(timeout=10)
                if child.is_alive():
                    child.terminate()
            if waiters is not None:
                waiters.terminate()
                waiters.join(timeout=10)

        good = [r for r in rounds if r["ok"]]
        failed = [r["detail"] for r in rounds if not r["ok"]]
        if failed:
            print(f"{len(failed)} rounds did not end in `connected`: {failed[:5]}")
        if not good:
            raise SystemExit("no successful round")
        rows = []
        for key, label in (
            ("wakeup_ms", "webhook 200 -> poller sees connected"),
            ("from_send_ms", "webhook sent -> poller sees connected"),
            ("webhook_ms", "webhook request itself"),
        ):
            values = [r[key] for r in good]
            rows.append(
                [
                    label,
                    len(values),
                    min(values),
                    common.percentile(values, 50),
                    common.percentile(values, 90),
                    common.percentile(values, 99),
                    max(values),
                ]
            )
        wake = [r["wakeup_ms"] for r in good]
        p50, p99 = common.percentile(wake, 50), common.percentile(wake, 99)
        common.print_table(
            f"long-poll wake-up ({args.db}, {args.workers} workers, {args.idle_waiters} other long-polls open, "
            f"poller and poster in separate processes; "
            f"targets p50 < {TARGET_P50_MS} ms, p99 < {TARGET_P99_MS} ms)",
            ["interval (ms)", "rounds", "min", "p50", "p90", "p99", "max"],
            rows,
        )
        print(
            f"p50 {p50:.1f} ms: {common.verdict(p50 < TARGET_P50_MS)}; p99 {p99:.1f} ms: "
            f"{common.verdict(p99 < TARGET_P99_MS)}; failed rounds: {len(failed)}"
        )
        if args.idle_waiters:
            held, at_once, failed_polls = idle_outcomes[:]
            print(
                f"the {args.idle_waiters} other clients' long-polls, as they ended: {held} answered after 1 s or "
                f"more (held to the end of their wait, or queued), {at_once} at once (no waiter slot free), "
                f"{failed_polls} failed (connection errors)"
            )
            run.results["idle_waiters"] = {"held": held, "at_once": at_once, "failed": failed_polls}
        run.results["rounds"] = rounds
        run.results["summary"] = {"p50_ms": p50, "p99_ms": p99, "failed": len(failed)}


if __name__ == "__main__":
    main()
