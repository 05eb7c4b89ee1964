"""Bad requests are refused with the MetaX error shape and write nothing."""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass

import pytest

from tests.conftest import PATH, SUB, bearer

MAX_ITEMS = 10
MAX_BODY_BYTES = 16384  # room for the 5000-digit and 1000-deep bodies below
MAX_SAFE = 2**53 - 1
INT_FIELDS = ("play_count", "view_time", "pause_time", "last_played_on")

# Section 5 of API.md.
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


def case(name, req, status=400, errors_at=None):
    return pytest.param(req, status, errors_at, id=name)


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


DOC = '{"favorites": ["x1"]}'
OVER_LIMIT = b'{"favorites": ["x1"]' + b" " * MAX_BODY_BYTES + b"}"

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
    ]
]

BODIES = [
    raw("body-empty", b""),
    raw("body-whitespace-only", b"  \n"),
    raw("body-truncated", b'{"favorites": ["x1"'),
    raw("body-malformed-unquoted-key", b"{favorites: []}"),
    raw("body-single-quotes", b"{'favorites': []}"),
    raw("body-trailing-comma", b'{"favorites": ["x1",]}'),
    raw("body-trailing-garbage", DOC.encode() + b" x"),
    raw("body-two-documents", DOC.encode() * 2),
    raw("body-utf-16-le-with-bom", codecs.BOM_UTF16_LE + DOC.encode("utf-16-le")),
    raw("body-utf-16-be-with-bom", codecs.BOM_UTF16_BE + DOC.encode("utf-16-be")),
    raw("body-utf-16-le-without-bom", DOC.encode("utf-16-le")),
    raw("body-utf-16-be-without-bom", DOC.encode("utf-16-be")),
    raw("body-utf-8-bom", codecs.BOM_UTF8 + DOC.encode()),
    raw("body-invalid-utf-8-byte", b'{"favorites": ["x\xff"]}'),
    raw("body-overlong-utf-8", b'{"favorites": ["x\xc0\xaf"]}'),
    raw("body-utf-8-encoded-surrogate", b'{"favorites": ["x\xed\xa0\x80"]}'),
    raw("body-latin-1-text", '{"favorites": ["café"]}'.encode("latin-1")),
    item_raw("value-nan", '"user_rating": NaN'),
    item_raw("value-infinity", '"user_rating": Infinity'),
    item_raw("value-minus-infinity", '"user_rating": -Infinity'),
    item_raw("value-nan-in-integer-field", '"play_count": NaN'),
    item_raw("value-overflowing-float-1e999", '"user_rating": 1e999'),
    item_raw("value-overflowing-float-in-integer", '"view_time": -1e999'),
    raw("duplicate-key-top-level", b'{"favorites": ["x1"], "favorites": ["x2"]}'),
    item_raw("duplicate-key-in-view-data", '"play_count": 1, "play_count": 2'),
    item_raw("duplicate-asset-id-key", '"asset_id": "a8"'),
    raw("nesting-1000-in-unknown-field", b'{"x": ' + deep(1000) + b"}"),
    raw("nesting-1000-in-favorites", b'{"favorites": ' + deep(1000) + b"}"),
    raw("nesting-1000-as-body", deep(1000)),
    raw("nesting-50-in-favorites", b'{"favorites": ' + deep(50) + b"}"),
    item_raw("nesting-50-in-view-data-field", '"play_count": ' + "[" * 50 + "]" * 50),
    item_raw("int-literal-5000-digits", '"play_count": ' + "7" * 5000),
    item_raw("int-literal-5000-digits-negative", '"view_time": -' + "7" * 5000),
    item_raw("float-literal-5000-digits", '"user_rating": 1.' + "5" * 4998),
    item_raw("float-literal-5000-digit-exponent", '"user_rating": 1e-' + "9" * 4996),
    raw("lone-surrogate-in-favorite", b'{"favorites": ["x\\ud800"]}'),
    raw("lone-low-surrogate-in-favorite", b'{"favorites": ["\\uDC00x"]}'),
    raw("reversed-surrogate-pair", b'{"favorites": ["\\udc00\\ud800"]}'),
    raw(
        "lone-surrogate-in-asset-id",
        b'{"view_data": [{"asset_id": "\\ud800"}]}',
    ),
    raw("lone-surrogate-in-top-level-key", b'{"\\ud800": 1}'),
    item_raw("lone-surrogate-in-view-data-key", '"\\ud800": 1'),
    raw("raw-control-character-in-string", b'{"favorites": ["x\x01"]}'),
    raw("body-json-array", b'["x1"]'),
    raw("body-json-string", b'"favorites"'),
    raw("body-json-number", b"42"),
    raw("body-json-null", b"null"),
    raw("body-json-true", b"true"),
]

CONTROL = ["\u0000", "\u001f", "\u007f", "\u0085", "\u009f"]
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
        item("asset-id-empty", ("view_data", "0", "asset_id"), asset_id=""),
        item("asset-id-null", ("view_data", "0", "asset_id"), asset_id=None),
        item("asset-id-number", ("view_data", "0", "asset_id"), asset_id=7),
        body(
            "favorite-257-characters",
            {"favorites": ["f" * 257]},
            400,
            ("favorites", "0"),
        ),
    ]
)

WRONG_INTEGERS = [
    ("float-1.5", 1.5),
    ("float-1.0", 1.0),
    ("string-12", "12"),
    ("true", True),
    ("false", False),
    ("object", {}),
    ("list", []),
    ("negative", -1),
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
            ("string-3", "3"),
            ("string-NaN", "NaN"),
            ("string-Infinity", "Infinity"),
            ("below-0", -0.1),
            ("above-5", 5.01),
            ("integer-6", 6),
            ("object", {}),
            ("list", [3]),
        ]
    ]
    + [
        body(f"favorites-{name}", {"favorites": v}, 400, at)
        for name, v, at in [
            ("null", None, ("favorites",)),
            ("string", "x1", ("favorites",)),
            ("object", {"x1": 1}, ("favorites",)),
            ("list-of-numbers", [1, 2], ("favorites", "0")),
            ("list-with-empty-string", ["x1", ""], ("favorites", "1")),
            ("list-with-null", ["x1", None], ("favorites", "1")),
            ("list-of-lists", [["x1"]], ("favorites", "0")),
        ]
    ]
    + [
        body(f"view_data-{name}", {"view_data": v}, 400, at)
        for name, v, at in [
            ("null", None, ("view_data",)),
            ("object", {"asset_id": "a9"}, ("view_data",)),
            ("string", "a9", ("view_data",)),
            ("list-of-strings", ["a9"], ("view_data", "0")),
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
            ("number", 7),
            ("list", [SUB]),
            ("other-subscriber", "other@example.org"),
            ("different-case", SUB.upper()),
            ("trailing-space", SUB + " "),
        ]
    ]
)

LIMITS = [
    case("body-over-MAX_BODY_BYTES", Req(data=OVER_LIMIT), 413),
    case("body-over-MAX_BODY_BYTES-chunked", Req(data=OVER_LIMIT, chunked=True), 413),
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
        ("isdelta-misspelt", "PUT", "isdelta=false"),
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
        ("257-characters", "PUT", "u" * 257),
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
