"""The error vocabulary of the API contract (the MetaX error shape), without Flask.

Every error answered is ``{"result": "error", "message", "reason"[, "errors"]}``
with ``message`` from ``MESSAGES``. ``ApiError`` carries one through the
views, ``validation_reason`` and ``json_keys`` turn marshmallow's messages
into the reason and the errors. Used by the HTTP face (http/errors.py writes
the answers), by gunicorn's own error pages (serving/pages.py) and by the
bulk tool's rejects.
"""

from __future__ import annotations

MESSAGES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
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


_UNKNOWN_FIELD = ["Unknown field."]  # marshmallow's message for RAISE


def _path(parts, *, unknown: bool = False) -> str:
    out = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "_schema" and not (unknown and i == len(parts) - 1):
            # marshmallow's key for whole-object errors, unless it is the
            # name of an unknown field sent as "_schema"
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
        path = _path(parts, unknown=messages == _UNKNOWN_FIELD)
        for message in messages:
            yield f"{path}: {message}"
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
