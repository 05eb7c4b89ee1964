"""Every failure becomes one JSON shape: the MetaX error of the API contract.

``register(app)`` installs the handlers; ``error_response`` writes an answer.
The vocabulary (messages, ``ApiError``, validation reasons) is errors.py's.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, current_app, jsonify
from marshmallow import ValidationError
from redis.exceptions import RedisClusterException
from werkzeug.exceptions import HTTPException

from ..errors import MESSAGES, ApiError, json_keys, validation_reason
from ..ops.metrics import REDIS_ERRORS
from ..storage.client import NotReplicated
from ..storage.store import HistoryFull

log = logging.getLogger("stat_service.errors")


def error_body(status: int, reason: str, errors=None) -> dict:
    """The MetaX error object (API.md section 5)."""
    body = {
        "result": "error",
        "message": MESSAGES.get(status, "INTERNAL_ERROR"),
        "reason": reason,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def error_response(status: int, reason: str, *, errors=None, headers=None):
    response = jsonify(error_body(status, reason, errors))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# Replies that mean "not now": an outage, a failover, a full or busy server.
# redis-py turns the codes it knows (OOM, MASTERDOWN, CLUSTERDOWN, MOVED/ASK,
# TRYAGAIN, READONLY, LOADING) into classes and strips them from the text.
_UNAVAILABLE = (
    redis.ConnectionError,  # includes BusyLoadingError and MaxConnectionsError
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.OutOfMemoryError,
    # CLUSTERDOWN, MASTERDOWN, and redirections past redis-py's limit (the
    # cluster client follows MOVED/ASK itself; a MOVED on a plain client is a
    # misconfiguration, left a 500)
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,  # no node serves the slot (yet)
)


def _redis_unavailable(exc: Exception) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    return str(exc).startswith(("BUSY ", "NOREPLICAS", "MASTERDOWN", "OOM "))


def failure(exc: Exception, retry_after: int) -> tuple[int, str, object, dict]:
    """(status, reason, errors, headers) of the answer to ``exc``, any
    exception but Werkzeug's HTTPException; logged and counted here.

    One table for the Flask app's error handlers and the express lane.
    """
    if isinstance(exc, ApiError):
        return exc.status, exc.reason, exc.errors, exc.headers or {}
    if isinstance(exc, HistoryFull):
        return 409, exc.reason, None, {}
    if isinstance(exc, ValidationError):
        messages = json_keys(exc.messages)
        return 400, validation_reason(exc.messages), messages, {}
    if isinstance(exc, (RedisClusterException, redis.RedisError)):
        retry = {"Retry-After": str(retry_after)}
        if isinstance(exc, NotReplicated):
            REDIS_ERRORS.labels("not_replicated").inc()
            log.warning("write not replicated: %s", exc)
            reason = (
                "write not confirmed by enough replicas in time; it may have "
                "been applied, and retrying it is safe"
            )
            return 503, reason, None, retry
        if _redis_unavailable(exc):
            REDIS_ERRORS.labels("unavailable").inc()
            log.warning("redis unavailable: %s: %s", type(exc).__name__, exc)
            return 503, "storage temporarily unavailable", None, retry
        REDIS_ERRORS.labels("error").inc()
        log.error("redis error", exc_info=exc)
        return 500, "internal error", None, {}
    log.error("unhandled error", exc_info=exc)
    return 500, "internal error", None, {}


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        if status == 413:
            reason = (
                f"body larger than {current_app.config['STAT'].MAX_BODY_BYTES} bytes"
            )
        else:
            reason = exc.description or MESSAGES.get(status, "error")
        if status not in MESSAGES:
            status = 400 if 400 <= status < 500 else 500
        return error_response(status, reason, headers=headers)

    @app.errorhandler(Exception)
    def _other(exc: Exception):
        retry_after = current_app.config["STAT"].RETRY_AFTER_SECONDS
        status, reason, errors, headers = failure(exc, retry_after)
        return error_response(status, reason, errors=errors, headers=headers)
