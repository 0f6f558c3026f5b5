"""The baselines: a bare Flask app served by the same gunicorn configuration as the real one.

    gunicorn --config gunicorn.conf.py "bench.bare_app:create_app()"

- `GET /json` answers a small JSON object: the ceiling for any JSON endpoint on this stack
  (gunicorn gthread, Flask, Werkzeug, the access log), with no database, no authentication.
- `POST /webhooks/terra` reads the raw body and checks its signature with `terra_integration.signature.verify`,
  nothing else: the ceiling for the webhook receiver.
- `GET /healthz` so the benchmarks can wait for it the way they wait for the app.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request

from terra_integration import signature

DEFAULT_SECRET = "sandbox-signing-secret-not-for-production"


def create_app() -> Flask:
    app = Flask(__name__)
    secret = os.environ.get("SANDBOX_SIGNING_SECRET", DEFAULT_SECRET)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/json")
    def small_json():
        return jsonify(status="pending", terminal=False, version=1)

    @app.post("/webhooks/terra")
    def verify_only():
        body = request.get_data(cache=False)
        header = next((request.headers[name] for name in signature.HEADER_NAMES if name in request.headers), None)
        try:
            signature.verify(body, header, secret)
        except signature.SignatureError as error:
            return jsonify(error={"code": "invalid_signature", "message": str(error)}), 401
        return jsonify(status="verified", trace_id=request.headers.get("X-Terra-Trace-Id"))

    return app
