"""Gunicorn settings, driven by environment variables (see the README)."""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
# Redis calls give up after about a second, far inside this.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "10000"))
max_requests_jitter = int(os.environ.get("GUNICORN_MAX_REQUESTS_JITTER", "1000"))
# An empty GUNICORN_ACCESSLOG turns the access log off.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# Request bodies are capped by MAX_BODY_BYTES in the app; bound header sizes here.
limit_request_line = 8190
# Gunicorn's control socket has one default path per user, which several
# instances on one machine (tests, benchmarks) would fight over: opt in.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


def on_starting(server):
    from stat_service import ConfigError, check_config
    from stat_service.embedded import ensure_redis

    ensure_redis(server.log)
    try:
        check_config()  # one clear line now, not a traceback per worker later
    except ConfigError as exc:
        server.log.error("configuration error: %s", exc)
        raise SystemExit(2) from None
