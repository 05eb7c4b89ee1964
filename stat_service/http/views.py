"""HTTP views: thin wrappers that validate, call the store, and answer."""

from __future__ import annotations

from urllib.parse import quote_from_bytes, unquote_to_bytes

import orjson
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from ..errors import ApiError
from ..rules import fastpath, strictjson
from ..rules.schemas import id_problem, load_body, too_many_items
from ..storage.store import StatStore
from .auth import authorize, require_token
from .errors import error_response

PREFIX = "/metax/3.0/ui/user/stat"
ROUTE = f"{PREFIX}/<rest:_path>"  # also the metrics' route label
_PREFIX_BYTES = (PREFIX + "/").encode()

stat_bp = Blueprint("stat", __name__)
probes_bp = Blueprint("probes", __name__)


class RestOfPath(BaseConverter):
    """Everything after ``/stat/``, slashes and emptiness included."""

    regex = r"[\s\S]*"  # "." would stop at a newline (%0A): a 400, not a 404
    weight = 200
    part_isolating = False  # the id may contain "/" (API.md section 6)


def store() -> StatStore:
    return current_app.extensions["stat_store"]


def settings():
    return current_app.config["STAT"]


def request_target() -> bytes:
    """The request path as received, still percent-encoded, as bytes.

    PEP 3333 gives PATH_INFO as latin-1 text of the decoded bytes, but some
    servers (Werkzeug's) have already replaced invalid UTF-8 there, and a
    decoded path can no longer tell "/" from "%2F"; so the URI as received is
    preferred when the server passes it on (gunicorn and Werkzeug do).
    """
    environ = request.environ
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not uri:
        return quote_from_bytes(
            environ.get("PATH_INFO", "").encode("latin-1"), safe="/"
        ).encode()
    if "#" in uri:
        # A request target has no fragment (RFC 9112 section 3.2), and the
        # server's PATH_INFO already dropped it: refuse rather than guess.
        raise ApiError(400, "the request target must not contain '#'")
    path = uri.split("?", 1)[0]
    if not path.startswith("/") and "://" in path:  # absolute-form target
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    # WSGI text holds one byte per character.
    raw = path.encode("latin-1")
    script = quote_from_bytes(
        environ.get("SCRIPT_NAME", "").encode("latin-1"), safe="/"
    ).encode()
    return raw[len(script) :] if script and raw.startswith(script) else raw


def decode_id(raw: bytes, what: str) -> str:
    """An id from its percent-decoded bytes: strictly UTF-8, never U+FFFD, and
    usable (API.md section 6); else a 400 naming ``what``."""
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{what} is not valid UTF-8") from None
    problem = id_problem(value, what)
    if problem:
        raise ApiError(400, problem)
    return value


def subscriber_id_from_path() -> str:
    """The id as sent: the rest of the path, percent-decoded (section 6)."""
    raw = unquote_to_bytes(request_target())
    if not raw.startswith(_PREFIX_BYTES):
        raise ApiError(404, "not found")
    return decode_id(raw[len(_PREFIX_BYTES) :], "subscriber id")


def _check_query(allowed: frozenset = frozenset()) -> None:
    if not request.environ.get("QUERY_STRING"):
        return  # the common case, without building request.args
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise ApiError(400, f"unknown query parameter: {', '.join(unknown)}")


# The query strings of nearly every PUT, answered without parsing.
PLAIN_DELTA = {"": True, "isDelta=true": True, "isDelta=false": False}


def _is_delta() -> bool:
    plain = PLAIN_DELTA.get(request.environ.get("QUERY_STRING", ""))
    if plain is not None:
        return plain
    _check_query(frozenset(("isDelta",)))
    values = request.args.getlist("isDelta")
    if not values:
        return True
    if len(values) > 1:
        raise ApiError(400, "isDelta given more than once")
    value = values[0].lower()
    if value not in ("true", "false"):
        raise ApiError(400, "isDelta must be true or false")
    return value == "true"


def check_content_type(mimetype: str = "application/json") -> None:
    """The body's media type is ``mimetype``, with at most charset=utf-8."""
    if request.mimetype != mimetype:
        raise ApiError(415, f"Content-Type must be {mimetype}")
    params = request.mimetype_params
    if set(params) - {"charset"} or params.get("charset", "utf-8").lower() not in (
        "utf-8",
        "utf8",
    ):
        raise ApiError(415, "Content-Type may only carry charset=utf-8")


def read_body() -> bytes:
    """The whole request body (maybe empty), at most MAX_BODY_BYTES (else 413)."""
    # Werkzeug answers 413 when Content-Length is over MAX_CONTENT_LENGTH,
    # but silently stops a chunked body at the limit: look one byte further.
    limit = settings().MAX_BODY_BYTES
    try:
        raw = request.get_data(cache=False)
        over = (
            request.content_length is None
            and len(raw) >= limit
            and request.environ["wsgi.input"].read(1)
        )
    except HTTPException:
        raise  # Werkzeug's 413 for a Content-Length over the limit
    except Exception:  # the server's framing errors (gunicorn's InvalidChunkSize)
        raise ApiError(400, "request body could not be read") from None
    if over:
        raise ApiError(413, f"body larger than {limit} bytes")
    if request.content_length is not None and len(raw) < request.content_length:
        raise ApiError(400, "body shorter than its Content-Length")
    return raw


def _body(subscriber_id: str) -> dict:
    """The validated PUT body: the fast path's when it takes it, else the
    strict parser's and the schema's (which then say what is wrong)."""
    raw = read_body()
    if not raw:
        raise ApiError(400, "body is empty: send a JSON object")
    data = fastpath.load_body(raw, settings().MAX_ITEMS, subscriber_id)
    if data is not fastpath.NO:
        return data
    try:
        data = strictjson.loads(raw)
    except strictjson.JSONBodyError as exc:
        raise ApiError(400, str(exc)) from None
    problem = too_many_items(data, settings().MAX_ITEMS)
    if problem:
        raise ApiError(413, problem)
    return load_body(data, subscriber_id)


def subscriber(subscriber_id: str) -> str:
    """Note the subscriber for the request log, then check the token's grant."""
    g.subscriber_id = subscriber_id  # for the request log (hashed there)
    authorize(subscriber_id)
    return subscriber_id


def _subscriber() -> str:
    return subscriber(subscriber_id_from_path())


@stat_bp.put(ROUTE, provide_automatic_options=False)
@require_token
def put_stat(_path):
    subscriber_id = _subscriber()
    delta = _is_delta()
    check_content_type()
    body = _body(subscriber_id)
    result = store().put(subscriber_id, body, delta=delta)
    return jsonify(put_answer(subscriber_id, delta, result))


def put_answer(subscriber_id: str, delta: bool, result) -> dict:
    """The body of a PUT's 200 (API.md section 3), also the express lane's."""
    return {
        "result": "success",
        "subscriber_id": subscriber_id,
        "is_delta": delta,
        "favorites": result.favorites,
        "view_data": result.view_data,
        "evicted": result.evicted,
    }


def get_body(subscriber_id: str, history: bytes) -> bytes:
    """The body of a GET's 200 (API.md section 2), also the express lane's:
    the history's JSON object (``StatStore.get_json``) with ``result`` and
    ``subscriber_id`` in front, as ``jsonify`` would write the merged dict."""
    return b"".join(
        (
            b'{"result":"success","subscriber_id":',
            orjson.dumps(subscriber_id),
            b",",
            memoryview(history)[1:],
        )
    )


@stat_bp.get(ROUTE, provide_automatic_options=False)
@require_token
def get_stat(_path):
    subscriber_id = _subscriber()
    _check_query()
    body = get_body(subscriber_id, store().get_json(subscriber_id))
    return current_app.response_class(body, content_type="application/json")


@stat_bp.delete(ROUTE, provide_automatic_options=False)
@require_token
def delete_stat(_path):
    subscriber_id = _subscriber()
    _check_query()
    store().delete(subscriber_id)
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]  # no body, so no media type either
    return response


@probes_bp.get("/healthz")
def healthz():
    """Liveness: the process answers; Redis is not consulted."""
    return jsonify(status="ok")


@probes_bp.get("/readyz")
def readyz():
    """Readiness: Redis answers PING within the client's timeouts."""
    try:
        store().ping()
    except Exception as exc:  # any failure means "do not route traffic here"
        current_app.logger.warning("readyz: redis not ready: %s", exc)
        return error_response(
            503,
            "storage not reachable",
            headers={"Retry-After": str(settings().RETRY_AFTER_SECONDS)},
        )
    return jsonify(status="ready")
