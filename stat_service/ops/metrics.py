"""Prometheus metrics of the service (prometheus_client; no Flask here)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_CHILDREN: dict = {}  # (metric, label values) -> its child, looked up once


def child(metric, *values: str):
    """``metric.labels(*values)``, found once per process: prometheus_client
    checks and locks on every ``labels`` call, which a hot path pays per
    request."""
    key = (metric, values)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*values)
    return found


# Method labels are bounded: any token is a method, the rest count as OTHER.
METHOD_LABELS = frozenset(("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"))

REQUESTS = Counter(
    "stat_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "stat_http_request_duration_seconds",
    "Time from the request reaching the app to its response, by route template.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REDIS_ERRORS = Counter(
    "stat_redis_errors_total",
    "Redis failures met by requests: unavailable (answered 503) or error (500).",
    ["kind"],
)
SCRIPT_CALLS = Counter(
    "stat_redis_script_calls_total",
    "Lua script calls, by script and outcome (ok or error).",
    ["script", "outcome"],
)

# Serving (stat_service/serving/worker.py): live gauges are summed over live workers.
CONNECTIONS_OPEN = Gauge(
    "stat_connections_open",
    "Client connections open, idle and slow ones included.",
    multiprocess_mode="livesum",
)
REQUESTS_IN_FLIGHT = Gauge(
    "stat_requests_in_flight",
    "Requests running in the app (at most MAX_IN_FLIGHT per worker).",
    multiprocess_mode="livesum",
)
REQUESTS_QUEUED = Gauge(
    "stat_requests_queued",
    "Requests read whole and waiting for a turn to run.",
    multiprocess_mode="livesum",
)
READ_TIMEOUTS = Counter(
    "stat_request_read_timeouts_total",
    "Requests not fully arrived by REQUEST_READ_TIMEOUT: answered 408, or "
    "closed (a connection that sent nothing).",
    ["outcome"],
)
SHED = Counter(
    "stat_requests_shed_total",
    "Requests answered 503 without running: no turn within QUEUE_TIMEOUT.",
)
