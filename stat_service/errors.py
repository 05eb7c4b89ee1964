"""Every failure becomes one JSON shape: the MetaX error of the API contract."""

from __future__ import annotations

import logging

import redis
from flask import Flask, current_app, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from .metrics import REDIS_ERRORS

log = logging.getLogger(__name__)

MESSAGES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class ApiError(Exception):
    """An error answered with ``status``, a reason and optional headers."""

    def __init__(self, status: int, reason: str, *, errors=None, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.errors = errors
        self.headers = headers or {}


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


def _path(parts) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "_schema":
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _flatten(messages, parts=()):
    if isinstance(messages, dict):
        for key, value in messages.items():
            yield from _flatten(value, (*parts, key))
    elif (
        isinstance(messages, list)
        and messages
        and all(isinstance(m, str) for m in messages)
    ):
        for message in messages:
            yield f"{_path(parts)}: {message}"
    else:
        yield f"{_path(parts)}: {messages}"


def json_keys(messages):
    """marshmallow keys list positions by int; JSON objects need strings."""
    if isinstance(messages, dict):
        return {str(key): json_keys(value) for key, value in messages.items()}
    return messages


def validation_reason(messages, limit: int = 5) -> str:
    lines = sorted(_flatten(messages))
    reason = "; ".join(lines[:limit])
    if len(lines) > limit:
        reason += f"; and {len(lines) - limit} more"
    return reason


def _redis_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True  # includes BusyLoadingError
    if isinstance(
        exc, (redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError)
    ):
        return True
    text = str(exc)
    return text.startswith(
        ("OOM ", "MASTERDOWN", "BUSY ", "NOREPLICAS", "CLUSTERDOWN", "LOADING")
    )


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(
            exc.status, exc.reason, errors=exc.errors, headers=exc.headers
        )

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

    @app.errorhandler(redis.RedisError)
    def _redis(exc: redis.RedisError):
        if _redis_unavailable(exc):
            REDIS_ERRORS.labels("unavailable").inc()
            log.warning("redis unavailable: %s: %s", type(exc).__name__, exc)
            retry_after = str(current_app.config["STAT"].RETRY_AFTER_SECONDS)
            return error_response(
                503,
                "storage temporarily unavailable",
                headers={"Retry-After": retry_after},
            )
        REDIS_ERRORS.labels("error").inc()
        log.error("redis error", exc_info=exc)
        return error_response(500, "internal error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal error")
