"""Gunicorn integration: errors gunicorn answers itself come out as MetaX JSON.

Gunicorn rejects some requests before the app sees them (a request line or
header too long or malformed, a bad chunk size) and writes an HTML page for
them; the contract says every error is JSON. ``install()`` swaps gunicorn's
page writer for one that writes the MetaX error shape.
"""

from __future__ import annotations

import orjson
from gunicorn import util

from ..errors import MESSAGES


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    if status_int in MESSAGES:
        message = MESSAGES[status_int]
    else:  # 431 and the like: still a client error of the MetaX vocabulary
        message = "BAD_REQUEST" if status_int < 500 else "INTERNAL_ERROR"
    body = orjson.dumps(
        {"result": "error", "message": message, "reason": mesg or reason}
    )
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Called in the gunicorn master before the workers fork."""
    util.write_error = write_json_error
