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


def error_response(status: int, reason: str, *, errors=None, headers=None):
    body = {
        "result": "error",
        "message": MESSAGES.get(status, "INTERNAL_ERROR"),
        "reason": reason,
    }
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
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


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(
            exc.status, exc.reason, errors=exc.errors, headers=exc.headers
        )

    @app.errorhandler(HistoryFull)
    def _full(exc: HistoryFull):
        return error_response(409, exc.reason)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        messages = json_keys(exc.messages)
        return error_response(400, validation_reason(exc.messages), errors=messages)

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

    @app.errorhandler(RedisClusterException)
    @app.errorhandler(redis.RedisError)
    def _redis(exc: Exception):
        retry_after = {
            "Retry-After": str(current_app.config["STAT"].RETRY_AFTER_SECONDS)
        }
        if isinstance(exc, NotReplicated):
            REDIS_ERRORS.labels("not_replicated").inc()
            log.warning("write not replicated: %s", exc)
            reason = (
                "write not confirmed by enough replicas in time; it may have "
                "been applied, and retrying it is safe"
            )
            return error_response(503, reason, headers=retry_after)
        if _redis_unavailable(exc):
            REDIS_ERRORS.labels("unavailable").inc()
            log.warning("redis unavailable: %s: %s", type(exc).__name__, exc)
            return error_response(
                503, "storage temporarily unavailable", headers=retry_after
            )
        REDIS_ERRORS.labels("error").inc()
        log.error("redis error", exc_info=exc)
        return error_response(500, "internal error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal error")
