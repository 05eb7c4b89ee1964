"""HTTP views of MetaX's activity family (API.md section 9): one item, or a page.

Paths are ``/metax/2.1/activity/{list}/{subscriber}[/{asset}]``, each id one
path segment: the path as received is split on "/" first, then each
segment is percent-decoded, so no routing on the decoded path can do it.
One Flask rule takes them all and ``ENDPOINTS`` routes them: an unknown
list or a wrong number of segments is 404, a method the path does not list
is 405, both before authentication (as for every route). Then the token,
the ids, the parameters (query string, or for PUT and DELETE a form body;
unknown, repeated or bad ones are 400), and one store call: one Lua script.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote_to_bytes

from flask import current_app, jsonify, request
from marshmallow import ValidationError
from werkzeug.routing import Rule

from ..errors import ApiError
from ..rules import fastpath, strictjson
from ..rules.cursors import CursorError, Cursors
from ..rules.schemas import Count, Rating
from .auth import authenticate
from .observability import UNMATCHED
from .views import (
    check_content_type,
    decode_id,
    read_body,
    request_target,
    store,
    subscriber,
)

ACTIVITY = "/metax/2.1/activity"
ENDPOINT = "activity.dispatch"  # of the family's one URL rule
_ACTIVITY_BYTES = (ACTIVITY + "/").encode()
FORM = "application/x-www-form-urlencoded"
PAGE_SIZE = 50  # default `limit`
PAGE_SIZE_MAX = 500
TYPES = ("vod", "episodic", "episode")  # MetaX's `type`: accepted, ignored
PAUSE_IGNORED_BELOW_MS = 10_000  # as in MetaX: shorter positions are not kept
_MAX_FIELDS = 8  # parameters in a query or a form body (none takes more than 3)
_LIMIT = re.compile(r"[1-9][0-9]{0,2}")
# A parameter that becomes a body field is read as that field's JSON value
# would be, then checked by the same marshmallow field (_field_value).
_COUNT = Count()
_RATING = Rating()
# The same rules compiled (rules/fastpath.py); marshmallow runs when they say no.
_FAST_CHECKS = {
    field: fastpath.compile_field_check(field) for field in (_COUNT, _RATING)
}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    view: Callable  # view(subscriber_id, asset_id or None, params) -> response
    params: tuple[str, ...]  # the parameters it takes besides `type`


def _cursors() -> Cursors:
    return current_app.extensions["stat_cursors"]


# --- parameters -------------------------------------------------------------------


def _pairs(raw: bytes, where: str) -> list[tuple[str, str]]:
    """Name/value pairs of a query string or form body, strictly UTF-8."""
    if not raw:
        return []
    try:
        # Percent-encoded UTF-8 is ASCII on the wire; anything else is refused.
        return parse_qsl(
            raw.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError included
        raise ApiError(
            400, f"the {where} is not valid percent-encoded UTF-8 name=value pairs"
        ) from None


def _add(params: dict, pairs, accepted: tuple[str, ...]) -> None:
    for name, value in pairs:
        if name not in accepted and name != "type":
            takes = ", ".join((*accepted, "type"))
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise ApiError(400, f"unknown parameter: {shown} (this one takes {takes})")
        if name in params:
            raise ApiError(400, f"{name} given more than once")
        params[name] = value


def _parameters(accepted: tuple[str, ...], method: str) -> dict[str, str]:
    """The request's parameters: the query string, and a form body for PUT
    and DELETE; each at most once, all of them known.

    In the order of section 1: the query, then the body's media type, its
    size, its encoding, and last the values.
    """
    params: dict[str, str] = {}
    query = request.environ.get("QUERY_STRING", "").encode("latin-1")
    _add(params, _pairs(query, "query"), accepted)
    announced = request.content_length  # None: chunked, or no body at all
    if announced:
        _body_allowed(method)
        check_content_type(FORM)
    body = read_body()
    if body:
        _body_allowed(method)
        check_content_type(FORM)
        _add(params, _pairs(body, "form body"), accepted)
    kind = params.get("type")
    if kind is not None and kind not in TYPES:
        raise ValidationError({"type": [f"Must be one of: {', '.join(TYPES)}."]})
    return params


def _body_allowed(method: str) -> None:
    if method == "GET":
        raise ApiError(
            400, "a GET takes no body: send its parameters in the query string"
        )


def _field_value(params: dict, name: str, field, *, required: bool = False):
    """A parameter read as the body field ``field`` would read its JSON value:
    the same rules and the same messages, under the parameter's name."""
    text = params.get(name)
    if text is None:
        if required:
            raise ValidationError({name: ["Missing data for required field."]})
        return None
    value = fastpath.number(text)
    if value is not fastpath.NO and _FAST_CHECKS[field](value):
        return value
    try:
        if not strictjson.JSON_NUMBER.fullmatch(text):
            raise strictjson.JSONBodyError(text)
        value = strictjson.loads(text.encode())
    except strictjson.JSONBodyError:  # not a number, or a literal too long
        raise ValidationError({name: [field.error_messages["invalid"]]}) from None
    try:
        return field.deserialize(value)
    except ValidationError as exc:
        raise ValidationError({name: exc.messages}) from None


def _page_size(params: dict) -> int:
    text = params.get("limit")
    if text is None:
        return PAGE_SIZE
    if not _LIMIT.fullmatch(text) or int(text) > PAGE_SIZE_MAX:
        raise ValidationError(
            {"limit": [f"Must be an integer from 1 to {PAGE_SIZE_MAX}."]}
        )
    return int(text)


def _after(params: dict, kind: str, subscriber_id: str):
    text = params.get("after")
    if text is None:
        return None
    try:
        return _cursors().read(kind, subscriber_id, text)
    except CursorError as exc:
        raise ApiError(400, str(exc)) from None


def _next(kind: str, subscriber_id: str, page: list, size: int, position):
    """The page trimmed to ``size``, and the cursor after it (None at the end):
    the store was asked for one item more, to know whether more follow."""
    if len(page) <= size:
        return page, None
    page = page[:size]
    return page, _cursors().make(kind, subscriber_id, position(page[-1]))


# --- the views --------------------------------------------------------------------


def list_favorites(subscriber_id: str, _asset, params: dict):
    size = _page_size(params)
    after = _after(params, "fav", subscriber_id)
    total, page = store().favorites_page(subscriber_id, size + 1, after)
    page, cursor = _next("fav", subscriber_id, page, size, lambda item: item[1])
    return jsonify(
        result="success",
        subscriber_id=subscriber_id,
        favorites=[guid for guid, _ in page],
        total=total,
        next=cursor,
    )


def _record_position(record: dict) -> tuple[int, str]:
    return record.get("last_played_on", -1), record["asset_id"]


def _list_records(kind: str, subscriber_id: str, params: dict):
    size = _page_size(params)
    after = _after(params, kind, subscriber_id)
    total, page = store().records_page(subscriber_id, kind, size + 1, after)
    page, cursor = _next(kind, subscriber_id, page, size, _record_position)
    return jsonify(
        result="success",
        subscriber_id=subscriber_id,
        view_data=page,
        total=total,
        next=cursor,
    )


def list_watched(subscriber_id: str, _asset, params: dict):
    return _list_records("watch", subscriber_id, params)


def list_continue(subscriber_id: str, _asset, params: dict):
    return _list_records("continue", subscriber_id, params)


def _put_field(subscriber_id: str, asset_id: str, name: str, value):
    """Write one field as a delta PUT of that one field would (section 1)."""
    body = {"view_data": [{"asset_id": asset_id, name: value}]}
    return store().put(subscriber_id, body, delta=True)


def _item(subscriber_id: str, asset_id: str, **fields):
    """The 200 of a one-item request: who and which, then ``fields``."""
    return jsonify(
        result="success", subscriber_id=subscriber_id, asset_id=asset_id, **fields
    )


def add_favorite(subscriber_id: str, asset_id: str, _params):
    added, count = store().add_favorite(subscriber_id, asset_id)
    return _item(subscriber_id, asset_id, added=added, favorites=count, evicted=0)


def remove_favorite(subscriber_id: str, asset_id: str, _params):
    removed, count = store().remove_favorite(subscriber_id, asset_id)
    return _item(subscriber_id, asset_id, removed=removed, favorites=count, evicted=0)


def mark_watched(subscriber_id: str, asset_id: str, params: dict):
    played = _field_value(params, "last_played_on", _COUNT)
    if played is None:
        played = time.time_ns() // 1_000_000
    result = _put_field(subscriber_id, asset_id, "last_played_on", played)
    return _item(subscriber_id, asset_id, last_played_on=played, evicted=result.evicted)


def remove_watched(subscriber_id: str, asset_id: str, _params):
    removed = store().remove_record(subscriber_id, asset_id)
    return _item(subscriber_id, asset_id, removed=removed, evicted=0)


def _stored_pause_ms(subscriber_id: str, asset_id: str) -> int:
    record = store().get_record(subscriber_id, asset_id) or {}
    return record.get("pause_time", 0) * 1000


def get_pause_time(subscriber_id: str, asset_id: str, _params):
    return _item(
        subscriber_id, asset_id, time=_stored_pause_ms(subscriber_id, asset_id)
    )


def set_pause_time(subscriber_id: str, asset_id: str, params: dict):
    milliseconds = _field_value(params, "time", _COUNT, required=True)
    evicted = 0
    ignored = milliseconds < PAUSE_IGNORED_BELOW_MS
    if ignored:
        stored = _stored_pause_ms(subscriber_id, asset_id)
    else:
        seconds = milliseconds // 1000
        evicted = _put_field(subscriber_id, asset_id, "pause_time", seconds).evicted
        stored = seconds * 1000
    return _item(subscriber_id, asset_id, time=stored, ignored=ignored, evicted=evicted)


def set_review(subscriber_id: str, asset_id: str, params: dict):
    score = _field_value(params, "score", _RATING, required=True)
    result = _put_field(subscriber_id, asset_id, "user_rating", score)
    return _item(subscriber_id, asset_id, user_rating=score, evicted=result.evicted)


_PAGE = ("limit", "after")
# (list, ids in the path) -> method -> endpoint
ENDPOINTS: dict[tuple[str, int], dict[str, Endpoint]] = {
    ("fav", 1): {"GET": Endpoint(list_favorites, _PAGE)},
    ("fav", 2): {
        "PUT": Endpoint(add_favorite, ()),
        "DELETE": Endpoint(remove_favorite, ()),
    },
    ("watch", 1): {"GET": Endpoint(list_watched, _PAGE)},
    ("watch", 2): {
        "PUT": Endpoint(mark_watched, ("last_played_on",)),
        "DELETE": Endpoint(remove_watched, ()),
    },
    ("continue", 1): {"GET": Endpoint(list_continue, _PAGE)},
    ("pausetime", 2): {
        "GET": Endpoint(get_pause_time, ()),
        "PUT": Endpoint(set_pause_time, ("time",)),
    },
    ("review", 2): {"PUT": Endpoint(set_review, ("score",))},
}


def route_template(list_name: str, ids: int) -> str:
    """The path template of an endpoint, as the OpenAPI document and the
    metrics' ``route`` label write it."""
    tail = "/{subscriber_id}" + ("/{asset_id}" if ids == 2 else "")
    return f"{ACTIVITY}/{list_name}{tail}"


def install(app) -> None:
    """One URL rule for the whole family, matching every method: dispatch()
    answers 404 and 405 (with the path's own Allow) itself. Flask's routes
    name their methods, so this rule is made with Werkzeug directly."""
    app.url_map.add(Rule(f"{ACTIVITY}/<rest:_path>", endpoint=ENDPOINT))
    app.view_functions[ENDPOINT] = dispatch


def dispatch(_path):
    environ = request.environ
    target = request_target()
    segments = target[len(_ACTIVITY_BYTES) :].split(b"/")
    list_name = unquote_to_bytes(segments[0]).decode("latin-1")
    methods = ENDPOINTS.get((list_name, len(segments) - 1))
    if not target.startswith(_ACTIVITY_BYTES) or methods is None:
        environ["stat.route"] = UNMATCHED
        raise ApiError(404, "not found")
    environ["stat.route"] = route_template(list_name, len(segments) - 1)
    method = "GET" if request.method == "HEAD" else request.method
    endpoint = methods.get(method)
    if endpoint is None:
        allowed = sorted(methods) + (["HEAD"] if "GET" in methods else [])
        raise ApiError(
            405,
            "The method is not allowed for the requested URL.",
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    authenticate()
    subscriber_id = subscriber(
        decode_id(unquote_to_bytes(segments[1]), "subscriber id")
    )
    asset_id = None
    if len(segments) == 3:
        asset_id = decode_id(unquote_to_bytes(segments[2]), "asset id")
    params = _parameters(endpoint.params, method)
    return endpoint.view(subscriber_id, asset_id, params)
