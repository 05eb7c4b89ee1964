"""Prometheus metrics of the service (prometheus_client; no Flask here)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
