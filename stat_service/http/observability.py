"""Per-request observability: Prometheus metrics, one JSON log line, request ids.

Metrics use prometheus_client. Under gunicorn, ``gunicorn.conf.py`` sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker starts, so every worker
writes its samples there and ``/metrics`` adds them up across workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from ..ops.metrics import LATENCY, METHOD_LABELS, REQUESTS, child

access_log = logging.getLogger("stat_service.access")
log = logging.getLogger("stat_service.observability")

# A client's X-Request-ID is kept when it is short and plain; else a new one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
UNMATCHED = "<unmatched>"

metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.get("/metrics")
def metrics():
    """Prometheus text format, summed over every gunicorn worker."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def subscriber_hash(subscriber_id: str) -> str:
    """The subscriber as logs show it: 16 hex digits of its SHA-256."""
    digest = hashlib.sha256(subscriber_id.encode())
    return digest.hexdigest()[:16]


class Observer:
    """Counts, times and logs one finished request; gives its request id."""

    def __init__(self, log_subscribers: bool):
        self.log_subscribers = log_subscribers

    def finish(self, environ, route: str, status: int, subscriber_id) -> str:
        """The request id to send back (the client's when usable)."""
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = sent if _REQUEST_ID.fullmatch(sent) else os.urandom(16).hex()
        try:
            self._count_and_log(environ, route, status, subscriber_id, request_id)
        except Exception:  # the answer stands: its write may already be done
            log.error("request not counted or logged", exc_info=True)
        return request_id

    def _count_and_log(self, environ, route, status, subscriber_id, request_id):
        elapsed = time.perf_counter() - environ.get("stat.started", 0.0)
        method = environ["REQUEST_METHOD"]
        if method not in METHOD_LABELS:
            method = "OTHER"  # any token is a method: keep label values bounded
        child(REQUESTS, route, method, str(status)).inc()
        child(LATENCY, route, method).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            fields = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "request_id": request_id,
            }
            if subscriber_id is not None and self.log_subscribers:
                fields["subscriber"] = subscriber_hash(subscriber_id)
            access_log.info("request", extra={"fields": fields})


def install(app: Flask) -> None:
    """Time every request, give it an id, count it and log it on the way out."""
    observer = Observer(app.config["STAT"].LOG_SUBSCRIBER_IDS == "hash")
    app.extensions["stat_observer"] = observer
    inner = app.wsgi_app

    def timed(environ, start_response):
        # Started here rather than in a before_request hook: cheaper, and it
        # covers Flask's own routing and request set-up too.
        environ["stat.started"] = time.perf_counter()
        return inner(environ, start_response)

    app.wsgi_app = timed

    @app.after_request
    def _finish(response):
        environ = request.environ
        # A view that routes further (the activity family) names the template.
        route = environ.get("stat.route")
        if route is None:
            rule = request.url_rule
            route = rule.rule if rule is not None else UNMATCHED
        subscriber_id = g.get("subscriber_id")
        request_id = observer.finish(
            environ, route, response.status_code, subscriber_id
        )
        response.headers["X-Request-ID"] = request_id
        return response
