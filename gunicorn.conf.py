"""Gunicorn settings, driven by environment variables (docs/operations.md)."""

import multiprocessing
import os
import shutil
import tempfile

# Metrics: every worker writes its samples under PROMETHEUS_MULTIPROC_DIR and
# /metrics sums them. It must be set before the app (prometheus_client) is
# imported anywhere, hence here, at the top. A directory of our own is made
# when none is given, and wiped at start either way (stale samples of an
# earlier run would be added in).
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="stat-metrics-")
metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
# gevent-based: a slow or idle connection costs a greenlet, not a worker; the
# whole request is read under REQUEST_READ_TIMEOUT before the app runs, and
# at most MAX_IN_FLIGHT requests run at once per worker (docs/operations.md:
# Slow clients and overload).
worker_class = os.environ.get(
    "GUNICORN_WORKER_CLASS", "stat_service.serving.worker.StatWorker"
)
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Connections one worker holds open (idle and slow ones too) before it stops
# accepting; the others accept meanwhile.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# Redis calls give up after about a second, far inside this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
# Off by default: nothing here leaks, and every recycled worker leaves its
# metric sample files behind (read at each /metrics scrape until restart).
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000"))
# Heartbeat files in memory, not on a disk that may stall.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# Which proxies may set X-Forwarded-* (comma-separated IPs, or *).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# Everything on stdout, in LOG_FORMAT (json by default), like the app's logs.
logger_class = "stat_service.ops.logs.GunicornLogger"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# The app logs one JSON line per request; gunicorn's access log is opt-in.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
limit_request_line = 8190
# Room for large RS256/ES256 tokens carrying many claims.
limit_request_field_size = int(os.environ.get("GUNICORN_LIMIT_FIELD_SIZE", "16384"))
# Gunicorn's control socket has one default path per user, which several
# instances on one machine (tests, benchmarks) would fight over: opt in.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def on_starting(server):
    for name in os.listdir(metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(metrics_dir, name))

    from stat_service import ConfigError, check_config
    from stat_service.local.embedded import ensure_redis
    from stat_service.serving import pages
    from stat_service.storage.client import detect_at_start

    pages.install()  # gunicorn's own error pages as MetaX JSON, not HTML

    ensure_redis(server.log)
    try:
        check_config()  # one clear line now, not a traceback per worker later
        detect_at_start(server.log)
    except ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        raise SystemExit(2) from None


def child_exit(server, worker):
    # Live gauges of a dead worker must not count (counters are kept).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
