"""The express lane: the whole-history GET and PUT of a subscriber in plain WSGI.

Nearly every request a client sends is one of two: ``GET`` or ``PUT
/metax/3.0/ui/user/stat/{id}`` (API.md sections 2-3) with a bearer token, a
plain id, ``isDelta=true|false`` or no query, a JSON body with a
Content-Length. For those, Flask's request and response objects, routing
and hooks cost more than the checks and the Redis call together (see
docs/performance.md). This lane answers them from the WSGI environ, with
the same functions the Flask views use: the token check, the id check, the
fast path's validation, the store, the error table and the observer.

It only *takes* what is plainly one of those requests and checks out
(method, path, query, media type, Content-Length, id, body); for anything
else, and for any check that fails, it hands the request on, untouched, to
the Flask app, which answers exactly as it does without the lane (the
check order included: routing, then the token, then the rest). Once the
token is checked the lane answers itself, as the Flask app would: the
token's refusal (401/403) before anything is written, and the store's
refusal or failure (409, 503, 500) after. ``tests/test_express.py`` holds
the two to the same status, headers, body and stored data.

``EXPRESS_LANE=0`` turns the lane off (every request goes through Flask).
"""

from __future__ import annotations

import time
from urllib.parse import unquote_to_bytes

import orjson
from werkzeug.http import HTTP_STATUS_CODES

from ..errors import ApiError
from ..rules import fastpath
from .auth import bearer_token, not_granted
from .errors import error_body, failure
from .views import PLAIN_DELTA, PREFIX, ROUTE, decode_id, get_body, put_answer

_PATH_START = PREFIX + "/"
# The Content-Type values the lane takes (check_content_type's common forms);
# any other goes to Flask, which accepts it or answers 415.
_JSON_TYPES = frozenset(
    (
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=utf-8",
        "application/json; charset=UTF-8",
        "application/json;charset=UTF-8",
    )
)
_STATUS = {code: f"{code} {text.upper()}" for code, text in HTTP_STATUS_CODES.items()}
_JSON = ("Content-Type", "application/json")


class _Pass(Exception):
    """Not for the lane: the Flask app answers."""


class _Replay:
    """A body stream handed on: the bytes the lane read, then the stream as
    the lane left it (or the error its read raised), so Flask reads what it
    would have read without the lane."""

    def __init__(self, head: bytes, stream, error: Exception | None = None):
        self.head = head
        self.stream = stream
        self.error = error

    def read(self, size=None):
        if self.error is not None and not self.head:
            raise self.error
        if size is None or size < 0:
            head, self.head = self.head, b""
            if self.error is not None:
                raise self.error
            return head + self.stream.read()
        if self.head:
            data, self.head = self.head[:size], self.head[size:]
            return data
        return self.stream.read(size)

    def readline(self, size=None):  # not used by the views; complete for WSGI
        return self.read(size)


class ExpressLane:
    """WSGI middleware in front of the Flask app (see the module's text)."""

    def __init__(self, app, inner):
        self.inner = inner
        self.settings = app.config["STAT"]
        self.store = app.extensions["stat_store"]
        self.verifier = app.extensions["stat_auth"]
        self.observer = app.extensions["stat_observer"]

    def __call__(self, environ, start_response):
        environ["stat.started"] = time.perf_counter()
        method = environ["REQUEST_METHOD"]
        if method == "PUT":
            take = self._put
        elif method == "GET":
            take = self._get
        else:
            return self.inner(environ, start_response)
        logged = None  # the subscriber, in the log once the token is good
        try:
            subscriber_id = _subscriber_id(environ)
            claims = self._claims(environ)
            logged = subscriber_id
            if claims["sub"] != subscriber_id and not self.verifier.is_admin(claims):
                raise not_granted()
            status, body = take(environ, subscriber_id)
            headers = {}
        except _Pass:
            return self.inner(environ, start_response)
        except Exception as exc:  # answered as the Flask app's handlers would
            status, reason, errors, headers = failure(
                exc, self.settings.RETRY_AFTER_SECONDS
            )
            body = orjson.dumps(error_body(status, reason, errors))
        request_id = self.observer.finish(environ, ROUTE, status, logged)
        response_headers = [_JSON, ("Content-Length", str(len(body)))]
        response_headers.extend(headers.items())
        response_headers.append(("X-Request-ID", request_id))
        start_response(_STATUS[status], response_headers)
        return [body]

    def _claims(self, environ) -> dict:
        try:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION", ""))
        except ApiError:
            raise _Pass from None  # no token: Flask answers (the same 401)
        return self.verifier.decode(token)

    def _put(self, environ, subscriber_id: str) -> tuple[int, bytes]:
        delta = PLAIN_DELTA.get(environ.get("QUERY_STRING", ""))
        length = environ.get("CONTENT_LENGTH", "")
        if (
            delta is None
            or environ.get("CONTENT_TYPE") not in _JSON_TYPES
            or not (length.isascii() and length.isdigit())
            or len(length) > 20  # int() refuses over 4,300 digits; Flask decides
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            raise _Pass
        size = int(length)
        if not 0 < size <= self.settings.MAX_BODY_BYTES:
            raise _Pass
        stream = environ["wsgi.input"]
        try:
            raw = stream.read(size)
        except Exception as exc:  # the server's framing or socket errors
            environ["wsgi.input"] = _Replay(b"", stream, exc)
            raise _Pass from None
        data = fastpath.NO
        if len(raw) == size:
            data = fastpath.load_body(raw, self.settings.MAX_ITEMS, subscriber_id)
        if data is fastpath.NO:
            environ["wsgi.input"] = _Replay(raw, stream)
            raise _Pass
        result = self.store.put(subscriber_id, data, delta=delta)
        return 200, orjson.dumps(put_answer(subscriber_id, delta, result))

    def _get(self, environ, subscriber_id: str) -> tuple[int, bytes]:
        if (
            environ.get("QUERY_STRING")
            or environ.get("CONTENT_LENGTH", "0") not in ("", "0")
            or "HTTP_TRANSFER_ENCODING" in environ
        ):
            raise _Pass
        return 200, get_body(subscriber_id, self.store.get_json(subscriber_id))


def _subscriber_id(environ) -> str:
    """The id of a plain request target under PREFIX, else _Pass."""
    uri = environ.get("RAW_URI") or ""
    if not uri.startswith(_PATH_START) or "#" in uri or environ.get("SCRIPT_NAME"):
        raise _Pass
    raw = uri.partition("?")[0][len(_PATH_START) :]
    try:
        # WSGI text holds one byte per character (views.request_target).
        return decode_id(unquote_to_bytes(raw.encode("latin-1")), "subscriber id")
    except (UnicodeError, ApiError):
        raise _Pass from None
