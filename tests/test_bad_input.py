"""Bad requests are refused with the MetaX error shape and write nothing."""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import math
import socket
import time
import uuid
from dataclasses import dataclass

import pytest
import redis

from stat_service.storage.records import hash_tag
from tests.conftest import PATH, SECRET, SUB, bearer
from tests.harness import PROMPT, Reply, Service, _chunked, _head, _read_reply
from tests.support import MESSAGES, dump

MAX_ITEMS = 10
MAX_BODY_BYTES = 16384  # room for the 5000-digit and 1000-deep bodies below
MAX_SAFE = 2**53 - 1
INT_FIELDS = ("play_count", "view_time", "pause_time", "last_played_on")


SEED = {
    "favorites": ["f1", "f2"],
    "view_data": [
        {"asset_id": "a1", "play_count": 2, "last_played_on": 1764000000000},
        {"asset_id": "a2", "pause_time": 310, "user_rating": 3.5},
    ],
}
VALID = b'{"favorites": ["x1"], "view_data": [{"asset_id": "a1", "play_count": 9}]}'


@pytest.fixture(autouse=True)
def _small_limits(settings):
    settings["MAX_ITEMS"] = MAX_ITEMS
    settings["MAX_BODY_BYTES"] = MAX_BODY_BYTES


@dataclass(frozen=True)
class Req:
    """One request; every field but the one under test is valid."""

    method: str = "PUT"
    path: str = PATH + SUB
    query: str = ""
    data: bytes | None = VALID
    content_type: str | None = "application/json"
    admin: bool = False
    chunked: bool = False  # no Content-Length, as with Transfer-Encoding: chunked
    # Raw HTTP only (RAW_CASES, through gunicorn):
    headers: tuple[tuple[str, str], ...] = ()  # more header lines, as given
    content_length: str | None = None  # sent instead of the body's real length
    wire_body: bytes | None = None  # sent as is, framed only by ``headers``
    second_auth: str | None = None  # "same" token again, or an "admin" one


def send(client, req: Req):
    headers = bearer(admin=True) if req.admin else bearer()
    kwargs = {"method": req.method, "headers": headers}
    if req.content_type is not None:
        headers["Content-Type"] = req.content_type
    if req.chunked:
        kwargs["input_stream"] = io.BytesIO(req.data)
        kwargs["environ_base"] = {"wsgi.input_terminated": True}
    elif req.data is not None and req.method == "PUT":
        kwargs["data"] = req.data
    url = req.path + ("?" + req.query if req.query else "")
    return client.open(url, **kwargs)


def case(name, req, status=400, errors_at=None, marks=()):
    return pytest.param(req, status, errors_at, id=name, marks=marks)


def raw(name, data: bytes, status=400, errors_at=None):
    return case(name, Req(data=data), status, errors_at)


def body(name, obj, status=400, errors_at=None):
    data = json.dumps(obj, allow_nan=False, ensure_ascii=False).encode()
    return case(name, Req(data=data), status, errors_at)


def item(name, errors_at=None, **fields):
    """A body of one view_data object, asset "a9" unless given."""
    obj = {"asset_id": "a9", **fields}
    return body(name, {"view_data": [obj]}, errors_at=errors_at)


def item_raw(name, fields: str):
    """Like ``item``, the object's other members written as raw JSON text."""
    return raw(name, b'{"view_data": [{"asset_id": "a9", ' + fields.encode() + b"}]}")


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def deep_objects(n: int) -> bytes:
    return b'{"a": ' * n + b"1" + b"}" * n


DOC = '{"favorites": ["x1"]}'
OVER_LIMIT = b'{"favorites": ["x1"]' + b" " * MAX_BODY_BYTES + b"}"
JUST_OVER_LIMIT = b'{"favorites": ["x1"]' + b" " * (MAX_BODY_BYTES - 20) + b"}"
assert len(JUST_OVER_LIMIT) == MAX_BODY_BYTES + 1

CONTENT_TYPES = [
    case(f"content-type-{name}", Req(content_type=value), 415)
    for name, value in [
        ("missing", None),
        ("text-plain", "text/plain"),
        ("form", "application/x-www-form-urlencoded"),
        ("merge-patch+json", "application/merge-patch+json"),
        ("charset-latin-1", "application/json; charset=latin-1"),
        ("charset-utf-16", "application/json; charset=utf-16"),
        ("unknown-parameter", "application/json; foo=bar"),
        ("text-json", "text/json"),
        ("empty", ""),
        ("vnd-api+json", "application/vnd.api+json"),
        ("problem+json", "application/problem+json"),
        ("json-patch+json", "application/json-patch+json"),
        ("json-seq", "application/json-seq"),
        ("multipart", "multipart/form-data; boundary=x"),
        ("list-of-types", "application/json, text/plain"),
        ("charset-ascii", "application/json; charset=us-ascii"),
    ]
]

BODIES = [
    raw("body-empty", b""),
    raw("body-whitespace-only", b"  \n"),
    raw("body-truncated", b'{"favorites": ["x1"'),
    raw("body-truncated-in-string", b'{"favorites": ["x1'),
    raw("body-truncated-after-key", b'{"favorites"'),
    raw("body-truncated-in-escape", b'{"favorites": ["\\u00'),
    raw("body-truncated-in-utf-8-sequence", b'{"favorites": ["caf\xc3'),
    raw("body-cut-in-half", VALID[: len(VALID) // 2]),
    raw("body-malformed-unquoted-key", b"{favorites: []}"),
    raw("body-single-quotes", b"{'favorites': []}"),
    raw("body-trailing-comma", b'{"favorites": ["x1",]}'),
    raw("body-trailing-garbage", DOC.encode() + b" x"),
    raw("body-two-documents", DOC.encode() * 2),
    raw("body-two-documents-newline-separated", DOC.encode() + b"\n" + DOC.encode()),
    raw("body-nul-after-document", DOC.encode() + b"\x00"),
    raw("body-nul-before-document", b"\x00" + DOC.encode()),
    raw("body-utf-32-le-with-bom", codecs.BOM_UTF32_LE + DOC.encode("utf-32-le")),
    raw("body-utf-16-le-with-bom", codecs.BOM_UTF16_LE + DOC.encode("utf-16-le")),
    raw("body-utf-16-be-with-bom", codecs.BOM_UTF16_BE + DOC.encode("utf-16-be")),
    raw("body-utf-16-le-without-bom", DOC.encode("utf-16-le")),
    raw("body-utf-16-be-without-bom", DOC.encode("utf-16-be")),
    raw("body-utf-8-bom", codecs.BOM_UTF8 + DOC.encode()),
    raw("body-invalid-utf-8-byte", b'{"favorites": ["x\xff"]}'),
    raw("body-overlong-utf-8", b'{"favorites": ["x\xc0\xaf"]}'),
    raw("body-utf-8-encoded-surrogate", b'{"favorites": ["x\xed\xa0\x80"]}'),
    raw("body-latin-1-text", '{"favorites": ["café"]}'.encode("latin-1")),
    raw("body-invalid-utf-8-in-key", b'{"fav\xffes": []}'),
    raw("body-invalid-utf-8-outside-strings", b'{"favorites": []\xff}'),
    raw("body-utf-8-above-U+10FFFF", b'{"favorites": ["x\xf4\x90\x80\x80"]}'),
    raw("body-utf-8-lone-continuation-byte", b'{"favorites": ["x\x80"]}'),
    item_raw("value-nan", '"user_rating": NaN'),
    item_raw("value-infinity", '"user_rating": Infinity'),
    item_raw("value-minus-infinity", '"user_rating": -Infinity'),
    item_raw("value-nan-in-integer-field", '"play_count": NaN'),
    item_raw("value-overflowing-float-1e999", '"user_rating": 1e999'),
    item_raw("value-overflowing-float-in-integer", '"view_time": -1e999'),
    raw("value-nan-in-unknown-field", b'{"x": NaN}'),
    raw("value-infinity-in-favorites", b'{"favorites": [Infinity]}'),
    raw("duplicate-key-top-level", b'{"favorites": ["x1"], "favorites": ["x2"]}'),
    item_raw("duplicate-key-in-view-data", '"play_count": 1, "play_count": 2'),
    item_raw("duplicate-asset-id-key", '"asset_id": "a8"'),
    raw(
        "duplicate-key-same-value",
        b'{"favorites": ["x1"], "favorites": ["x1"]}',
    ),
    raw(
        "duplicate-key-escaped-spelling",
        b'{"favorites": ["x1"], "\\u0066avorites": ["x2"]}',
    ),
    raw("nesting-1000-in-unknown-field", b'{"x": ' + deep(1000) + b"}"),
    raw("nesting-1000-in-favorites", b'{"favorites": ' + deep(1000) + b"}"),
    raw("nesting-1000-as-body", deep(1000)),
    raw("nesting-1000-in-view-data", b'{"view_data": ' + deep(1000) + b"}"),
    item_raw(
        "nesting-1000-in-view-data-field", '"play_count": ' + "[" * 1000 + "]" * 1000
    ),
    raw("nesting-1000-objects", deep_objects(1000)),
    raw(
        "nesting-1000-objects-in-view-data",
        b'{"view_data": [' + deep_objects(1000) + b"]}",
    ),
    raw("nesting-8000-as-body", deep(8000)),
    raw("nesting-50-in-favorites", b'{"favorites": ' + deep(50) + b"}"),
    item_raw("nesting-50-in-view-data-field", '"play_count": ' + "[" * 50 + "]" * 50),
    item_raw("int-literal-5000-digits", '"play_count": ' + "7" * 5000),
    item_raw("int-literal-5000-digits-negative", '"view_time": -' + "7" * 5000),
    item_raw("float-literal-5000-digits", '"user_rating": 1.' + "5" * 4998),
    item_raw("float-literal-5000-digit-exponent", '"user_rating": 1e-' + "9" * 4996),
    item_raw("float-literal-5000-digits-in-integer", '"play_count": 1.' + "0" * 4998),
    raw("int-literal-5000-digits-in-unknown-field", b'{"x": ' + b"7" * 5000 + b"}"),
    raw(
        "int-literal-5000-digits-in-favorites", b'{"favorites": [' + b"7" * 5000 + b"]}"
    ),
    item_raw("int-literal-21-digits", '"play_count": ' + "1" * 21),
    item_raw("int-literal-leading-zero", '"play_count": 07'),
    item_raw("int-literal-plus-sign", '"play_count": +7'),
    item_raw("int-literal-hex", '"play_count": 0x10'),
    item_raw("int-literal-exponent", '"play_count": 1e2'),
    raw("lone-surrogate-in-favorite", b'{"favorites": ["x\\ud800"]}'),
    raw("lone-low-surrogate-in-favorite", b'{"favorites": ["\\uDC00x"]}'),
    raw("reversed-surrogate-pair", b'{"favorites": ["\\udc00\\ud800"]}'),
    raw(
        "lone-surrogate-in-asset-id",
        b'{"view_data": [{"asset_id": "\\ud800"}]}',
    ),
    raw("lone-surrogate-in-top-level-key", b'{"\\ud800": 1}'),
    item_raw("lone-surrogate-in-view-data-key", '"\\ud800": 1'),
    raw("lone-surrogate-in-user_id", b'{"user_id": "\\ud800"}'),
    raw("lone-surrogate-in-unknown-field-value", b'{"x": "\\udfff"}'),
    raw("high-surrogate-then-letter", b'{"favorites": ["\\ud83dx"]}'),
    raw("raw-control-character-in-string", b'{"favorites": ["x\x01"]}'),
    raw("raw-nul-in-string", b'{"favorites": ["x\x00"]}'),
    raw("raw-newline-in-string", b'{"favorites": ["x\ny"]}'),
    raw("raw-tab-in-asset-id", b'{"view_data": [{"asset_id": "a\tb"}]}'),
    raw("body-json-array", b'["x1"]'),
    raw("body-json-string", b'"favorites"'),
    raw("body-json-number", b"42"),
    raw("body-json-null", b"null"),
    raw("body-json-true", b"true"),
]

CONTROL = [
    "\u0000",
    "\u0009",
    "\u000a",
    "\u000d",
    "\u001f",
    "\u007f",
    "\u0085",
    "\u009f",
]
STRINGS = (
    [
        body(
            f"favorite-with-U+{ord(c):04X}",
            {"favorites": [f"x{c}y"]},
            errors_at=("favorites", "0"),
        )
        for c in CONTROL
    ]
    + [
        item(
            f"asset-id-with-U+{ord(c):04X}",
            asset_id=f"a{c}",
            errors_at=("view_data", "0", "asset_id"),
        )
        for c in CONTROL
    ]
    + [
        item(
            "asset-id-257-characters",
            ("view_data", "0", "asset_id"),
            asset_id="a" * 257,
        ),
        item(
            "asset-id-257-two-byte-characters",
            ("view_data", "0", "asset_id"),
            asset_id="é" * 257,
        ),
        item(
            "asset-id-10000-characters",
            ("view_data", "0", "asset_id"),
            asset_id="a" * 10000,
        ),
        raw(
            "asset-id-257-escaped-characters",
            b'{"view_data": [{"asset_id": "' + b"\\u0061" * 257 + b'"}]}',
            errors_at=("view_data", "0", "asset_id"),
        ),
        item("asset-id-empty", ("view_data", "0", "asset_id"), asset_id=""),
        item("asset-id-null", ("view_data", "0", "asset_id"), asset_id=None),
        item("asset-id-number", ("view_data", "0", "asset_id"), asset_id=7),
        item("asset-id-float", ("view_data", "0", "asset_id"), asset_id=1.5),
        item("asset-id-true", ("view_data", "0", "asset_id"), asset_id=True),
        item("asset-id-list", ("view_data", "0", "asset_id"), asset_id=["a9"]),
        item("asset-id-object", ("view_data", "0", "asset_id"), asset_id={"id": "a9"}),
        body(
            "favorite-257-characters",
            {"favorites": ["f" * 257]},
            400,
            ("favorites", "0"),
        ),
        body(
            "favorite-10000-characters",
            {"favorites": ["f" * 10000]},
            400,
            ("favorites", "0"),
        ),
    ]
)

WRONG_INTEGERS = [
    ("float-1.5", 1.5),
    ("float-1.0", 1.0),
    ("string-12", "12"),
    ("string-empty", ""),
    ("string-true", "true"),
    ("true", True),
    ("false", False),
    ("object", {}),
    ("list", []),
    ("negative", -1),
    ("negative-zero-float", -0.0),
    ("2**53", 2**53),
    ("10**18", 10**18),
]
TYPES = (
    [
        item(f"{field}-{name}", ("view_data", "0", field), **{field: value})
        for field in INT_FIELDS
        for name, value in WRONG_INTEGERS
    ]
    + [
        item(f"user_rating-{name}", ("view_data", "0", "user_rating"), user_rating=v)
        for name, v in [
            ("true", True),
            ("false", False),
            ("string-3", "3"),
            ("string-3.5", "3.5"),
            ("string-empty", ""),
            ("string-NaN", "NaN"),
            ("string-Infinity", "Infinity"),
            ("below-0", -0.1),
            ("below-0-by-the-smallest-step", -5e-324),
            ("above-5", 5.01),
            ("above-5-by-one-ulp", math.nextafter(5.0, math.inf)),
            ("integer-minus-1", -1),
            ("integer-6", 6),
            ("2**53", 2**53),
            ("object", {}),
            ("list", [3]),
        ]
    ]
    + [
        body(f"favorites-{name}", {"favorites": v}, 400, at)
        for name, v, at in [
            ("null", None, ("favorites",)),
            ("true", True, ("favorites",)),
            ("number", 7, ("favorites",)),
            ("string", "x1", ("favorites",)),
            ("object", {"x1": 1}, ("favorites",)),
            ("list-of-numbers", [1, 2], ("favorites", "0")),
            ("list-of-bools", [True], ("favorites", "0")),
            ("list-of-objects", [{"asset_id": "x1"}], ("favorites", "0")),
            ("list-with-empty-string", ["x1", ""], ("favorites", "1")),
            ("list-with-null", ["x1", None], ("favorites", "1")),
            ("list-of-lists", [["x1"]], ("favorites", "0")),
        ]
    ]
    + [
        body(f"view_data-{name}", {"view_data": v}, 400, at)
        for name, v, at in [
            ("null", None, ("view_data",)),
            ("true", True, ("view_data",)),
            ("number", 7, ("view_data",)),
            ("object", {"asset_id": "a9"}, ("view_data",)),
            ("string", "a9", ("view_data",)),
            ("list-of-strings", ["a9"], ("view_data", "0")),
            ("list-of-numbers", [7], ("view_data", "0")),
            ("list-of-bools", [True], ("view_data", "0")),
            ("list-of-lists", [[{"asset_id": "a9"}]], ("view_data", "0")),
            ("list-with-null", [None], ("view_data", "0")),
            ("item-without-asset_id", [{"play_count": 1}], ("view_data", "0")),
        ]
    ]
    + [
        body(f"unknown-{name}", obj, 400, at)
        for name, obj, at in [
            ("top-level-favourites", {"favourites": ["x1"]}, ("favourites",)),
            ("top-level-viewData", {"viewData": []}, ("viewData",)),
            (
                "in-view-data-playcount",
                {"view_data": [{"asset_id": "a9", "playcount": 1}]},
                ("view_data", "0", "playcount"),
            ),
            (
                "in-view-data-Asset_Id",
                {"view_data": [{"asset_id": "a9", "Asset_Id": "a9"}]},
                ("view_data", "0", "Asset_Id"),
            ),
        ]
    ]
    + [
        body(f"user_id-{name}", {"user_id": v}, 400, ("user_id",))
        for name, v in [
            ("null", None),
            ("true", True),
            ("number", 7),
            ("list", [SUB]),
            ("object", {"id": SUB}),
            ("empty", ""),
            ("other-subscriber", "other@example.org"),
            ("different-case", SUB.upper()),
            ("trailing-space", SUB + " "),
        ]
    ]
)

LIMITS = [
    case("body-over-MAX_BODY_BYTES", Req(data=OVER_LIMIT), 413),
    case("body-over-MAX_BODY_BYTES-chunked", Req(data=OVER_LIMIT, chunked=True), 413),
    case("body-MAX_BODY_BYTES-plus-1", Req(data=JUST_OVER_LIMIT), 413),
    case(
        "body-MAX_BODY_BYTES-plus-1-chunked",
        Req(data=JUST_OVER_LIMIT, chunked=True),
        413,
    ),
    body("favorites-over-MAX_ITEMS", {"favorites": [f"x{i}" for i in range(11)]}, 413),
    body("favorites-over-MAX_ITEMS-as-sent", {"favorites": ["x1"] * 11}, 413),
    body(
        "view_data-over-MAX_ITEMS",
        {"view_data": [{"asset_id": f"a{i}"} for i in range(11)]},
        413,
    ),
    body(
        "view_data-over-MAX_ITEMS-as-sent",
        {"view_data": [{"asset_id": "a9"}] * 11},
        413,
    ),
]

QUERIES = [
    case(f"query-{name}", Req(method=method, query=query, data=VALID))
    for name, method, query in [
        ("isDelta-yes", "PUT", "isDelta=yes"),
        ("isDelta-1", "PUT", "isDelta=1"),
        ("isDelta-0", "PUT", "isDelta=0"),
        ("isDelta-empty", "PUT", "isDelta="),
        ("isDelta-without-value", "PUT", "isDelta"),
        ("isDelta-twice", "PUT", "isDelta=true&isDelta=true"),
        ("isDelta-twice-conflicting", "PUT", "isDelta=true&isDelta=false"),
        ("isDelta-twice-one-empty", "PUT", "isDelta=false&isDelta="),
        ("isDelta-no", "PUT", "isDelta=no"),
        ("isDelta-t", "PUT", "isDelta=t"),
        ("isDelta-null", "PUT", "isDelta=null"),
        ("isDelta-quoted", "PUT", "isDelta=%22false%22"),
        ("isDelta-trailing-space", "PUT", "isDelta=false%20"),
        ("isDelta-trailing-plus", "PUT", "isDelta=false+"),
        ("isDelta-leading-space", "PUT", "isDelta=%20false"),
        ("isDelta-nul", "PUT", "isDelta=false%00"),
        ("isDelta-semicolon-separated", "PUT", "isDelta=false;x=1"),
        ("isDelta-array-syntax", "PUT", "isDelta[]=false"),
        ("isdelta-misspelt", "PUT", "isdelta=false"),
        ("ISDELTA-upper-case-name", "PUT", "ISDELTA=false"),
        ("isDelta-and-isdelta", "PUT", "isDelta=true&isdelta=false"),
        ("empty-parameter-name", "PUT", "=false"),
        ("unknown-empty-value", "PUT", "foo="),
        ("unknown-without-value", "PUT", "foo"),
        ("isDelta-and-unknown", "PUT", "isDelta=false&foo=bar"),
        ("unknown-parameter", "PUT", "foo=bar"),
        ("on-GET", "GET", "isDelta=true"),
        ("unknown-on-GET", "GET", "foo=bar"),
        ("on-DELETE", "DELETE", "isDelta=false"),
        ("unknown-on-DELETE", "DELETE", "foo=bar"),
    ]
]

SUBSCRIBER_IDS = [
    case(f"subscriber-id-{name}", Req(method=method, path=PATH + sid, admin=True))
    for name, method, sid in [
        ("invalid-utf-8-%FF", "DELETE", "%FF"),
        ("invalid-utf-8-%FF-in-email", "PUT", "user%FF@example.org"),
        ("truncated-utf-8-%C3", "GET", "x%C3"),
        ("encoded-surrogate", "PUT", "x%ED%A0%80"),
        ("nul-%00", "DELETE", "%00"),
        ("nul-inside", "PUT", "user%00@example.org"),
        ("control-%1F", "GET", "%1F"),
        ("control-%7F", "PUT", "x%7F"),
        ("control-U+0085", "PUT", "x%C2%85"),
        ("invalid-utf-8-%FF-GET", "GET", "%FF"),
        ("overlong-slash-%C0%AF", "PUT", "a%C0%AFb"),
        ("above-U+10FFFF", "PUT", "x%F4%90%80%80"),
        ("truncated-3-byte-utf-8", "GET", "x%E2%82"),
        ("lone-continuation-byte", "PUT", "x%80"),
        ("nul-%00-GET", "GET", "%00"),
        ("nul-at-end", "PUT", SUB + "%00"),
        ("newline-%0A", "PUT", "a%0Ab"),
        ("crlf-%0D%0A", "GET", "a%0D%0Ab"),
        ("tab-%09", "DELETE", "a%09b"),
        ("257-characters", "PUT", "u" * 257),
        ("257-characters-GET", "GET", "u" * 257),
        ("257-characters-DELETE", "DELETE", "u" * 257),
        ("257-two-byte-characters", "PUT", "%C3%A9" * 257),
        ("257-encoded-slashes", "PUT", "%2F" * 257),
        ("empty-GET", "GET", ""),
        ("empty-PUT", "PUT", ""),
        ("empty-DELETE", "DELETE", ""),
    ]
]

ROUTING = [
    case("unknown-path", Req(method="GET", path="/nope"), 404),
    case("unknown-metax-path", Req(method="GET", path="/metax/3.0/ui/user/x"), 404),
    case("stat-without-slash", Req(method="GET", path=PATH.rstrip("/")), 404),
    case("POST-on-stat", Req(method="POST"), 405),
    case("PATCH-on-stat", Req(method="PATCH"), 405),
    case("POST-on-healthz", Req(method="POST", path="/healthz"), 405),
]

CASES = (
    CONTENT_TYPES
    + BODIES
    + STRINGS
    + TYPES
    + LIMITS
    + QUERIES
    + SUBSCRIBER_IDS
    + ROUTING
)


def seed(client):
    resp = client.put(PATH + SUB + "?isDelta=false", json=SEED, headers=bearer())
    assert resp.status_code == 200, resp.data


def assert_error(resp, status):
    assert resp.status_code == status, resp.data
    assert resp.mimetype == "application/json"
    assert b"<html" not in resp.data.lower()
    payload = resp.get_json()
    assert payload["result"] == "error"
    assert payload["message"] == MESSAGES[status]
    assert isinstance(payload["reason"], str)
    assert payload["reason"].strip()
    return payload


@pytest.mark.parametrize(("req", "status", "errors_at"), CASES)
def test_bad_request_answers_error_shape_and_writes_nothing(
    client, snapshot, req, status, errors_at
):
    seed(client)
    before = snapshot()
    assert before

    resp = send(client, req)

    payload = assert_error(resp, status)
    if errors_at is not None:
        node = payload["errors"]
        for part in errors_at:
            assert part in node, (errors_at, payload["errors"])
            node = node[part]
        assert node
        assert errors_at[-1] in payload["reason"] or errors_at[-1].isdigit()
    if status == 405:
        allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
        expected = {"GET", "PUT", "DELETE"} if req.path.startswith(PATH) else {"GET"}
        assert expected <= allowed
        assert req.method not in allowed
    assert snapshot() == before


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=UTF-8",
        "application/json;charset=utf-8",
        'application/json; charset="utf-8"',
        "Application/JSON",
    ],
)
def test_json_with_utf8_charset_is_accepted(client, content_type):
    resp = client.put(
        PATH + SUB,
        data='{"favorites": ["café"]}'.encode(),
        headers={**bearer(), "Content-Type": content_type},
    )
    assert resp.status_code == 200, resp.data
    assert client.get(PATH + SUB, headers=bearer()).get_json()["favorites"] == ["café"]


def test_largest_safe_integer_is_accepted_and_returned_exactly(client):
    record = {"asset_id": "a1", **dict.fromkeys(INT_FIELDS, MAX_SAFE)}
    resp = client.put(PATH + SUB, json={"view_data": [record]}, headers=bearer())
    assert resp.status_code == 200, resp.data
    got = client.get(PATH + SUB, headers=bearer())
    assert b"9007199254740991" in got.data
    assert got.get_json()["view_data"] == [record]


def test_exactly_max_items_are_accepted(client):
    favorites = [f"x{i}" for i in range(MAX_ITEMS)]
    view_data = [{"asset_id": f"a{i}"} for i in range(MAX_ITEMS)]
    resp = client.put(
        PATH + SUB,
        json={"favorites": favorites, "view_data": view_data},
        headers=bearer(),
    )
    assert resp.status_code == 200, resp.data
    assert resp.get_json()["favorites"] == MAX_ITEMS
    assert resp.get_json()["view_data"] == MAX_ITEMS
    got = client.get(PATH + SUB, headers=bearer()).get_json()
    assert got["favorites"] == favorites
    assert sorted(r["asset_id"] for r in got["view_data"]) == sorted(
        r["asset_id"] for r in view_data
    )


def test_body_of_exactly_max_body_bytes_is_accepted(client):
    data = b'{"favorites": ["x1"]' + b" " * (MAX_BODY_BYTES - 21) + b"}"
    assert len(data) == MAX_BODY_BYTES
    resp = client.put(
        PATH + SUB, data=data, content_type="application/json", headers=bearer()
    )
    assert resp.status_code == 200, resp.data


def test_values_at_every_bound_are_accepted_and_read_back(client):
    """The other side of each "just past the bound" case above."""
    record = {
        "asset_id": "é" * 256,
        "play_count": 0,
        "view_time": 0,
        "pause_time": MAX_SAFE,
        "last_played_on": 0,
        "user_rating": 5,
    }
    doc = {
        "favorites": ["f" * 256, "é" * 256],
        "view_data": [
            record,
            {"asset_id": "a" * 256, "user_rating": 0},
            {"asset_id": "a1", "user_rating": 5.0},
            {"asset_id": "a2", "user_rating": 0.0},
        ],
    }
    sub = "u" * 256
    headers = bearer(sub)
    resp = client.put(PATH + sub + "?isDelta=false", json=doc, headers=headers)
    assert resp.status_code == 200, resp.data
    got = client.get(PATH + sub, headers=headers).get_json()
    assert got["subscriber_id"] == sub
    assert got["favorites"] == doc["favorites"]
    by_id = {r["asset_id"]: r for r in got["view_data"]}
    assert by_id == {r["asset_id"]: r for r in doc["view_data"]}


# --- the same table, and what only raw HTTP can send, through gunicorn ----------
# gunicorn and the Flask test client decode paths and bodies differently, so
# every case of CASES also goes over a socket to a real gunicorn process, with
# RAW_CASES: lying or doubled framing headers, two Authorization headers and
# malformed chunks, which the test client cannot send. The client half-closes
# after its request, so a body shorter than announced ends at once.

RAW_CASES = [
    # A request target has no fragment; gunicorn's RAW_URI keeps one, which
    # would otherwise end up in the subscriber id ("user@example.org#frag").
    case("fragment-in-the-request-target", Req(path=PATH + SUB + "#frag", admin=True)),
    case("two-authorization-headers-same-token", Req(second_auth="same"), 401),
    case("two-authorization-headers-own-and-admin", Req(second_auth="admin"), 401),
    case(
        "content-length-larger-than-the-truncated-body",
        Req(data=VALID[:-12], content_length=str(len(VALID))),
    ),
    case(
        "content-length-larger-than-a-whole-document",
        Req(data=VALID, content_length=str(len(VALID) + 10)),
    ),
    case(
        "content-length-smaller-than-the-body",
        Req(data=VALID, content_length=str(len(VALID) // 2)),
    ),
    case("content-length-zero-with-a-body", Req(data=VALID, content_length="0")),
    case("content-length-not-a-number", Req(content_length="abc")),
    case("content-length-negative", Req(content_length="-1")),
    case("content-length-hex", Req(content_length="0x10")),
    case(
        "content-length-declares-over-MAX_BODY_BYTES",
        Req(content_length=str(10**12)),
        413,
    ),
    case(
        "two-content-lengths",
        Req(headers=(("Content-Length", "5"),)),
    ),
    case(
        "content-length-and-chunked",
        Req(chunked=True, headers=(("Content-Length", str(len(VALID))),)),
    ),
    case(
        "two-content-types",
        Req(headers=(("Content-Type", "text/plain"),)),
    ),
    case(
        "no-length-and-not-chunked",  # HTTP/1.1: no body at all
        Req(data=None, wire_body=VALID),
    ),
    case(
        "chunked-size-not-hex",
        Req(
            wire_body=b"zz\r\n" + VALID + b"\r\n0\r\n\r\n",
            headers=(("Transfer-Encoding", "chunked"),),
        ),
    ),
    case(
        "chunked-without-the-last-chunk",
        Req(
            wire_body=_chunked(VALID)[: -len(b"0\r\n\r\n")],
            headers=(("Transfer-Encoding", "chunked"),),
        ),
    ),
    case(
        "chunked-size-larger-than-the-data",
        Req(
            wire_body=b"%x\r\n" % (len(VALID) + 100) + VALID,
            headers=(("Transfer-Encoding", "chunked"),),
        ),
    ),
    case(
        "chunked-size-over-MAX_BODY_BYTES",
        Req(
            wire_body=b"%x\r\n" % 10**9 + VALID,
            headers=(("Transfer-Encoding", "chunked"),),
        ),
    ),
    case(
        "transfer-encoding-chunked-twice",
        Req(chunked=True, headers=(("Transfer-Encoding", "chunked"),)),
    ),
]


def http_bytes(req: Req) -> bytes:
    """``req`` as the bytes a client puts on the wire (tokens made now)."""
    auth = (bearer(admin=True) if req.admin else bearer())["Authorization"]
    headers = [("Authorization", auth)]
    if req.second_auth == "same":
        headers.append(("Authorization", auth))
    elif req.second_auth == "admin":
        headers.append(("Authorization", bearer(admin=True)["Authorization"]))
    if req.content_type is not None:
        headers.append(("Content-Type", req.content_type))
    payload = b""
    if req.wire_body is not None:
        payload = req.wire_body
    elif req.chunked:
        headers.append(("Transfer-Encoding", "chunked"))
        # Small chunks: the reassembly is exercised, not just one read.
        payload = _chunked(req.data, size=4096)
    elif req.method == "PUT" and req.data is not None:
        payload = req.data
        headers.append(("Content-Length", req.content_length or str(len(payload))))
    headers += req.headers
    url = req.path + ("?" + req.query if req.query else "")
    return _head(req.method, url, headers) + b"\r\n" + payload


def send_and_close(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send ``data``, then end our side: the server sees the client is done."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:  # the server has answered and closed already
                if exc.errno != errno.ENOTCONN:
                    raise
        reply = _read_reply(sock)
    reply.elapsed = time.monotonic() - started
    return reply


@pytest.fixture(scope="module")
def small_service(module_redis, tmp_path_factory):
    """gunicorn with this module's limits, on a private Redis of its own."""
    svc = Service(
        tmp_path_factory.mktemp("gunicorn"),
        {
            "REDIS_URL": module_redis.url,
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": f"stat-test:{uuid.uuid4().hex[:12]}:",
            "MAX_ITEMS": str(MAX_ITEMS),
            "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        },
    ).start()
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def service_redis(module_redis):
    client = redis.Redis.from_url(module_redis.url)
    yield client
    client.close()


@pytest.fixture
def service_snapshot(service_redis):
    """Everything in the service's private Redis, not only one prefix."""
    return lambda: dump(service_redis, "")


def assert_raw_error(reply: Reply, status: int) -> dict:
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply
    assert b"<html" not in reply.body.lower(), reply
    payload = reply.json()
    assert payload["result"] == "error", payload
    assert payload["message"] == MESSAGES[status], payload
    assert isinstance(payload["reason"], str) and payload["reason"].strip(), payload
    return payload


def seed_over_http(svc: Service) -> None:
    reply = send_and_close(
        svc.port, http_bytes(Req(query="isDelta=false", data=json.dumps(SEED).encode()))
    )
    assert reply.status == 200, reply


@pytest.mark.gunicorn
@pytest.mark.parametrize(("req", "status", "errors_at"), CASES + RAW_CASES)
def test_bad_raw_request_through_gunicorn_answers_error_shape_and_writes_nothing(
    small_service, service_snapshot, req, status, errors_at
):
    seed_over_http(small_service)
    before = service_snapshot()
    assert before

    reply = send_and_close(small_service.port, http_bytes(req))

    payload = assert_raw_error(reply, status)
    if errors_at is not None:
        node = payload["errors"]
        for part in errors_at:
            node = node[part]
        assert node
    assert reply.elapsed < PROMPT, reply
    assert service_snapshot() == before


@pytest.mark.gunicorn
@pytest.mark.parametrize(
    ("raw_id", "decoded"),
    [
        ("a%252Fb", "a%2Fb"),
        ("a%2Fb", "a/b"),
        ("{t}", "{t}"),
        ("%7Bt%7D", "{t}"),
        ("x:y", "x:y"),
        ("john%20doe", "john doe"),
        ("%25", "%"),
        pytest.param("u" * 256, "u" * 256, id="256-characters"),
    ],
)
def test_printable_odd_ids_write_only_their_own_two_keys(
    small_service, service_snapshot, raw_id, decoded
):
    """Section 6: such ids work, each on its own two keys; a bad body writes none."""
    seed_over_http(small_service)
    before = service_snapshot()
    target = PATH + raw_id
    bad = send_and_close(
        small_service.port, http_bytes(Req(path=target, data=b"{", admin=True))
    )
    assert_raw_error(bad, 400)
    assert service_snapshot() == before

    fresh = uuid.uuid4().hex  # so the write changes both keys, whatever ran before
    doc = {"favorites": [fresh], "view_data": [{"asset_id": fresh}]}
    req = Req(path=target, data=json.dumps(doc).encode(), admin=True)
    good = send_and_close(small_service.port, http_bytes(req))
    assert good.status == 200, good
    assert good.json()["subscriber_id"] == decoded
    after = service_snapshot()
    prefix = small_service.env["KEY_PREFIX"] + hash_tag(decoded)
    changed = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    assert changed == {f"{prefix}:fav".encode(), f"{prefix}:view".encode()}


@pytest.mark.gunicorn
def test_body_shorter_than_its_content_length_on_an_open_connection(
    spawn, module_redis, service_redis
):
    """A client that stops sending (but keeps the connection open) gets a MetaX
    408 once REQUEST_READ_TIMEOUT (2 s here) has passed since the accept, and
    is closed; the app never saw the request, so nothing is written, and the
    service answers other requests all along (API.md section 10).
    """
    prefix = f"stat-test:{uuid.uuid4().hex[:12]}:"
    svc = spawn(
        REDIS_URL=module_redis.url,
        JWT_SECRET=SECRET,
        KEY_PREFIX=prefix,
        REQUEST_READ_TIMEOUT="2",
    ).wait_ready()
    seed = svc.put(SUB, SEED, auth=("Authorization", bearer()["Authorization"]))
    assert seed.status == 200, seed
    before = dump(service_redis, prefix)
    data = http_bytes(Req(data=VALID[:-12], content_length=str(len(VALID))))
    with socket.create_connection(("127.0.0.1", svc.port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(data)  # and nothing more, without closing
        # Meanwhile the service answers.
        assert svc.request("GET", "/healthz").elapsed < 1
        reply = _read_reply(sock)  # up to the close
    elapsed = time.monotonic() - started
    assert_raw_error(reply, 408)
    assert 2 - 0.1 < elapsed < 2 + 1, elapsed  # within a second of the deadline
    assert dump(service_redis, prefix) == before
    assert "WORKER TIMEOUT" not in svc.log()
