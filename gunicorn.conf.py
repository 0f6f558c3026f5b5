"""gunicorn settings for `make run` and deployments: `gunicorn --config gunicorn.conf.py "app:create_app()"`.

Threaded workers (gthread) because the app makes outbound HTTP calls to Terra (and, in sandbox
mode, to the sandbox it serves itself): a sync worker would block on its own request and deadlock.
"""

import os
import sys

from config import ConfigError, ServerSettings, load_config, load_env_file, read_settings

# The same .env as the app and the `flask` command, read before the settings below (PORT, BIND, ...).
load_env_file()
server_settings = read_settings(ServerSettings, os.environ)
# The app derives PUBLIC_BASE_URL from the same address in development (config.py).
bind = server_settings.bind_address
worker_class = "gthread"
# One worker process per core: Python runs one thread at a time per process (the GIL).
workers = server_settings.WEB_CONCURRENCY
# Threads, not CPU, run out first: a status long-poll holds its thread for up to 25 s while it
# sleeps (without a database connection, until its attempt changes). At most STATUS_MAX_WAITERS
# (1000) threads sleep in long-polls, so GUNICORN_THREADS (32) are always left for webhooks and
# other calls, however many apps wait (docs/performance.md).
threads = server_settings.worker_threads
# Connections a worker keeps open at once (sleeping long-polls, kept-alive clients) before it stops
# accepting more: room for every thread and as many idle keep-alive connections.
worker_connections = 2 * threads
# Above the longest request we serve: the status long-poll (25 s) and a Terra call's timeout (10 s).
timeout = 60
graceful_timeout = 30
import re

from gunicorn.glogging import Logger

accesslog = "-"
# Query strings carry signed attempt tokens; log the path only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
# So do the return pages' paths (/connect/return/success/<token>): the token is logged as "…".
RETURN_PAGE_TOKEN = re.compile(r"^(/(?:connect|mobile)/return/(?:success|failure)/)[^/]+")


class TokenRedactingLogger(Logger):
    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["U"] = RETURN_PAGE_TOKEN.sub(r"\1…", atoms["U"])
        return atoms


logger_class = TokenRedactingLogger


INSTANCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "instance")  # the app's (Flask's default)


def on_starting(server):
    # The settings are checked once, here, before any worker starts: a refusal to start is one message
    # and a quick exit 1, not a traceback from every worker that gunicorn keeps starting.
    try:
        load_config(os.environ, INSTANCE_PATH)
    except ConfigError as refusal:
        server.log.error("Refusing to start: %s", refusal)
        sys.exit(1)


def post_worker_init(worker):
    # Each worker process applies recorded webhook events in a thread of its own
    # (terra_integration/applier.py), so `make run` needs no other process. Off with
    # WEBHOOK_APPLY_IN_PROCESS=false (then run `flask terra work`).
    from terra_integration.applier import start_in

    start_in(worker.wsgi)


def worker_exit(server, worker):
    from terra_integration.applier import stop_in

    # A worker whose app did not load has no applier to stop.
    if hasattr(worker, "wsgi"):
        stop_in(worker.wsgi)
