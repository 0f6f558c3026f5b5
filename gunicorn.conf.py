"""gunicorn settings for `make run` and deployments: `gunicorn --config gunicorn.conf.py "app:create_app()"`.

Threaded workers (gthread) because the app makes outbound HTTP calls to Terra (and, in sandbox
mode, to the sandbox it serves itself): a sync worker would block on its own request and deadlock.
"""

import os

bind = os.environ.get("BIND", "127.0.0.1:" + os.environ.get("PORT", "5000"))
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Above the longest request we make: a Terra call's timeout, and later the status long-poll (25 s).
timeout = 60
graceful_timeout = 30
accesslog = "-"
# Query strings carry signed attempt tokens; log the path only.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
