"""Operator commands: `flask --app app <command>`."""

from __future__ import annotations

import threading
import time

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from extensions import db, terra
from models import WebhookEvent
from terra_integration.models import EventOutcome


def register(app: Flask) -> None:
    app.cli.add_command(webhook_events)
    app.cli.add_command(terra_commands)


@click.group("terra", help="Keep connections in step with Terra.")
def terra_commands() -> None:
    pass


@terra_commands.command("reconcile")
@with_appcontext
def reconcile_connections() -> None:
    """Reconcile every user with a connection that is not revoked against Terra's userInfo (run it on
    a schedule, e.g. every 6 hours). One user's failure is reported and the sweep goes on; the exit
    status is 1 when any user failed."""
    from models import User
    from services.reconciliation import reconcile, users_to_sweep

    user_ids = users_to_sweep()
    failures = 0
    for number, user_id in enumerate(user_ids, 1):
        try:
            changed = reconcile(db.session.get(User, user_id), terra.client)
        except Exception as error:  # noqa: BLE001 (one user's failure must not stop the sweep)
            db.session.rollback()
            failures += 1
            click.echo(f"[{number}/{len(user_ids)}] user {user_id}: failed ({type(error).__name__}: {error})", err=True)
            continue
        click.echo(f"[{number}/{len(user_ids)}] user {user_id}: {changed} connection(s) changed")
    click.echo(f"Reconciled {len(user_ids) - failures} of {len(user_ids)} users; {failures} failed.")
    if failures:
        raise SystemExit(1)


@terra_commands.command("send-data-requests")
@with_appcontext
def send_data_requests() -> None:
    """Ask Terra again for the history requests it throttled, once their Retry-After has passed (run it
    every minute). The exit status is 1 when one of them failed."""
    from services.data_requests import send_due

    sent = send_due(terra.client)
    for request in sent:
        click.echo(f"data request {request.id}: {request.status}" + (f" ({request.detail})" if request.detail else ""))
    click.echo(f"Asked again for {len(sent)} throttled data request(s).")
    if any(request.status == "failed" for request in sent):
        raise SystemExit(1)


@terra_commands.command("work")
@with_appcontext
@click.option("--until-empty", is_flag=True, help="Stop once no event is left to apply, instead of waiting for more.")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="How often to look for newly recorded events (this process is not woken by the web workers).",
)
def work(until_empty: bool, poll_seconds: float) -> None:
    """Apply recorded webhook events from the inbox, as a process of its own: alongside the web
    workers' applier threads, or instead of them (WEBHOOK_APPLY_IN_PROCESS=false). Any number may run
    at once on PostgreSQL; each claims its own rows. s3_payload downloads are taken by a thread of
    their own, so that a slow one holds up no other event (terra_integration/applier.py)."""
    from terra_integration.applier import DOWNLOADS, EVENTS, drain

    app = current_app._get_current_object()

    def take(queue: str | None) -> None:
        while True:
            with app.app_context():
                applied = drain(queue=queue)
            if applied:
                click.echo(f"applied {applied} event(s)")
            if until_empty:
                return
            time.sleep(poll_seconds)

    if until_empty:
        take(None)  # both queues, in turn, once
        return

    threading.Thread(target=take, args=(DOWNLOADS,), name="terra-inbox-downloads", daemon=True).start()
    take(EVENTS)


@click.group("webhooks", help="Inspect and replay the webhook inbox.")
def webhook_events() -> None:
    pass


@webhook_events.command("list")
@with_appcontext
@click.option("--failed", is_flag=True, help="Only events whose application failed.")
@click.option("--limit", default=20, show_default=True)
def list_events(failed: bool, limit: int) -> None:
    query = select(WebhookEvent).order_by(WebhookEvent.received_at.desc()).limit(limit)
    if failed:
        query = query.where(WebhookEvent.outcome == EventOutcome.FAILED)
    for event in db.session.scalars(query):
        click.echo(
            f"{event.received_at:%Y-%m-%d %H:%M:%S}  {event.outcome:<8}  {event.event_type:<24}  "
            f"{event.trace_id}  {event.detail or ''}"
        )


@webhook_events.command("replay")
@with_appcontext
@click.argument("trace_ids", nargs=-1)
@click.option("--failed", is_flag=True, help="Replay every event whose application failed.")
def replay_events(trace_ids: tuple[str, ...], failed: bool) -> None:
    """Apply recorded events again; safe because applying is idempotent."""
    from terra_integration.inbox import apply_recorded

    query = select(WebhookEvent).order_by(WebhookEvent.id)
    if failed:
        query = query.where(WebhookEvent.outcome == EventOutcome.FAILED)
    elif trace_ids:
        query = query.where(WebhookEvent.trace_id.in_(trace_ids))
    else:
        raise click.UsageError("name trace ids or pass --failed")
    for event in db.session.scalars(query).all():
        outcome = apply_recorded(event)
        click.echo(f"{event.trace_id}: {outcome} {event.detail or ''}")
