"""Bad requests to the activity family (API.md section 9) are refused and write nothing.

One table of bad requests (paths, methods, tokens, parameters, cursors,
bodies), each run through the Flask client on fakeredis and on a real Redis,
and as raw bytes through a real gunicorn. Every case asserts the exact
status, the MetaX error shape (``errors`` only for a parameter's value), and
that a dump of storage is the same before and after, with a seeded history
(favorites, records with pause_time, last_played_on and user_rating) for
two subscribers; a case that reaches a write endpoint also reads both
histories back through section 2.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import time
import uuid
from dataclasses import dataclass, fields, replace
from itertools import cycle

import fakeredis
import pytest
import redis

from stat_service import create_app
from stat_service.config import Settings, load_settings
from stat_service.rules.cursors import Cursors, cursor_key
from tests.conftest import PATH, SECRET, SUB, make_token
from tests.harness import PROMPT, Reply, Service, _chunked, _head
from tests.support import MESSAGES, delete_prefix, dump
from tests.test_bad_input import send_and_close

ACT = "/metax/2.1/activity/"
OTHER = "other@example.org"
MAX_BODY_BYTES = 4096
CURSOR_MAX_AGE = 60
FORM = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"
MAX_SAFE = 2**53 - 1
OTHER_SECRET = "another-secret-that-is-at-least-32-bytes"

SEED = {
    SUB: {
        "favorites": ["f1", "f2", "f3"],
        "view_data": [
            {
                "asset_id": "a1",
                "play_count": 2,
                "pause_time": 310,
                "last_played_on": 1764000000000,
            },
            {
                "asset_id": "a2",
                "pause_time": 20,
                "last_played_on": 1764000001000,
                "user_rating": 3.5,
            },
            {"asset_id": "a3", "view_time": 600, "user_rating": 4},
        ],
    },
    OTHER: {
        "favorites": ["g1"],
        "view_data": [
            {"asset_id": "a1", "pause_time": 99, "last_played_on": 1700000000000}
        ],
    },
}
# What section 2 answers for the seed: most recently played first.
READ_BACK = {
    SUB: {
        "favorites": ["f1", "f2", "f3"],
        "view_data": [SEED[SUB]["view_data"][i] for i in (1, 0, 2)],
    },
    OTHER: SEED[OTHER],
}
WRITES = ("PUT", "DELETE", "POST", "PATCH")


# --- the requests -------------------------------------------------------------


@dataclass(frozen=True)
class Act:
    """One request; everything but the part under test is valid.

    ``query`` may name cursors as ``<name>`` (see ``cursor_texts``): they are
    made when the request is sent, with the key of the service it goes to.
    """

    method: str
    path: str  # the request target's path, percent-encoded as sent
    query: str = ""
    body: bytes | None = None
    content_type: str | None = None
    token: str = "own"  # a key of TOKENS
    chunked: bool = False  # no Content-Length, as with Transfer-Encoding: chunked
    # Raw HTTP only (RAW_CASES, through gunicorn):
    target: str | None = None  # the request target as is (latin-1 text)
    headers: tuple[tuple[str, str], ...] = ()
    content_length: str | None = None  # sent instead of the body's real length


@dataclass(frozen=True)
class Want:
    status: int
    reason: str | None = None  # a fragment of the reason
    errors: str | None = None  # the one parameter ``errors`` names
    allow: frozenset[str] | None = None  # the Allow header of a 405


def case(name, act, status, reason=None, errors=None, allow=None, marks=()):
    allowed = None if allow is None else frozenset(allow)
    return pytest.param(
        act, Want(status, reason, errors, allowed), id=name, marks=marks
    )


def a(tail: str) -> str:
    return ACT + tail


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


def _alg_none_token() -> str:
    def part(obj) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"sub": SUB, "exp": int(time.time()) + 60, "scope": "stat:admin"}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


# Authorization header values, made at send time (tokens expire).
TOKENS = {
    "own": lambda: f"Bearer {make_token(SUB)}",
    "admin": lambda: f"Bearer {make_token('back-office', admin=True)}",
    "other": lambda: f"Bearer {make_token(OTHER)}",
    "other-case": lambda: f"Bearer {make_token(SUB.upper())}",
    "scope-misspelt": lambda: f"Bearer {make_token(OTHER, scope='stat:admins')}",
    "none": None,
    "basic": lambda: "Basic dXNlcjpwYXNz",
    "bearer-alone": lambda: "Bearer",
    "garbage": lambda: "Bearer not.a.jwt",
    "expired": lambda: f"Bearer {make_token(SUB, ttl=-3600)}",
    "expired-admin": lambda: f"Bearer {make_token(SUB, admin=True, ttl=-3600)}",
    "bad-signature": lambda: f"Bearer {make_token(SUB, secret=OTHER_SECRET)}",
    "alg-none": lambda: f"Bearer {_alg_none_token()}",
    "two-tokens": lambda: f"Bearer {make_token(SUB)} {make_token(SUB)}",
}
NO_TOKEN = ("none", "basic", "bearer-alone")  # 401 "No Authorization Token"


# One valid request per endpoint; each would change the seeded history (or
# read it) if it went through, so the bad variants below mean something.
ENDPOINTS = {
    "fav-list": Act("GET", a(f"fav/{SUB}")),
    "fav-add": Act("PUT", a(f"fav/{SUB}/n1")),
    "fav-remove": Act("DELETE", a(f"fav/{SUB}/f1")),
    "watch-list": Act("GET", a(f"watch/{SUB}")),
    "watch-mark": Act("PUT", a(f"watch/{SUB}/a3"), "last_played_on=1764000009000"),
    "watch-remove": Act("DELETE", a(f"watch/{SUB}/a1")),
    "continue-list": Act("GET", a(f"continue/{SUB}")),
    "pausetime-get": Act("GET", a(f"pausetime/{SUB}/a1")),
    "pausetime-set": Act("PUT", a(f"pausetime/{SUB}/a1"), "time=20000"),
    "review": Act("PUT", a(f"review/{SUB}/a2"), "score=4"),
}
TWO_IDS = [name for name, act in ENDPOINTS.items() if act.path.count("/") == 6]


def variant(endpoint: str, **changes) -> Act:
    return replace(ENDPOINTS[endpoint], **changes)


def with_query(endpoint: str, extra: str, **changes) -> Act:
    """The endpoint's valid query plus ``extra``."""
    valid = ENDPOINTS[endpoint].query
    return variant(endpoint, query="&".join(q for q in (valid, extra) if q), **changes)


def with_ids(endpoint: str, subscriber: str | None = None, asset: str | None = None):
    list_name, sub, *asset_part = ENDPOINTS[endpoint].path[len(ACT) :].split("/")
    parts = [list_name, SUB if subscriber is None else subscriber]
    if asset_part:
        parts.append(asset_part[0] if asset is None else asset)
    return "/".join(parts)


# --- paths and methods ------------------------------------------------------------

BAD_IDS = [
    ("invalid-utf-8-%FF", "%FF"),
    ("truncated-utf-8", "x%C3"),
    ("encoded-surrogate", "x%ED%A0%80"),
    ("overlong-slash", "a%C0%AFb"),
    ("above-U+10FFFF", "x%F4%90%80%80"),
    ("lone-continuation-byte", "x%80"),
    ("nul", "%00"),
    ("nul-inside", "user%00@example.org"),
    ("newline", "a%0Ab"),
    ("crlf", "a%0D%0Ab"),
    ("tab", "a%09b"),
    ("DEL", "x%7F"),
    ("C1-U+0085", "x%C2%85"),
    ("257-characters", "u" * 257),
    ("257-two-byte-characters", "%C3%A9" * 257),
    ("257-encoded-slashes", "%2F" * 257),
    ("1000-characters", "u" * 1000),
    ("empty", ""),
]

IDS = [
    # Every bad id once as a subscriber and once as an asset, spread over the
    # endpoints; an unusable subscriber id is 400 for the owner's token too.
    case(
        f"subscriber-id-{name}-{endpoint}",
        variant(
            endpoint,
            path=a(with_ids(endpoint, subscriber=raw)),
            token=("admin", "own", "other")[i % 3],
        ),
        400,
        "subscriber id",
    )
    for i, ((name, raw), endpoint) in enumerate(zip(BAD_IDS, cycle(ENDPOINTS)))
] + [
    case(
        f"asset-id-{name}-{endpoint}",
        variant(endpoint, path=a(with_ids(endpoint, asset=raw))),
        400,
        "asset id",
    )
    for (name, raw), endpoint in zip(BAD_IDS, cycle(TWO_IDS))
]

GET_HEAD = ("GET", "HEAD")
ROUTES = (
    [
        case(f"unknown-list-{name}", Act("GET", a(tail), token=token), 404)
        for name, tail, token in [
            ("favorites", f"favorites/{SUB}", "none"),
            ("FAV-upper-case", f"FAV/{SUB}", "own"),
            ("Watch-capitalised", f"Watch/{SUB}", "none"),
            ("history", f"history/{SUB}", "own"),
            ("nul-after-name", f"fav%00/{SUB}", "none"),
            ("space-after-name", f"fav%20/{SUB}", "own"),
            ("space-before-name", f"%20fav/{SUB}", "none"),
            ("invalid-utf-8", f"%FF/{SUB}", "none"),
            ("percent-encoded-other-name", f"%66%61%76%73/{SUB}", "none"),
            ("encoded-slash-joins-list-and-id", f"fav%2F{SUB}", "own"),
            ("empty-name", f"/{SUB}", "none"),
            ("nothing-after-activity", "", "own"),
            ("list-without-ids", "fav", "none"),
        ]
    ]
    + [
        case(f"wrong-number-of-segments-{name}", Act(method, a(tail), query), 404)
        for name, method, tail, query in [
            ("pausetime-without-asset", "GET", f"pausetime/{SUB}", ""),
            ("review-without-asset", "PUT", f"review/{SUB}", "score=4"),
            ("continue-with-asset", "GET", f"continue/{SUB}/a1", ""),
            ("fav-with-three-ids", "PUT", f"fav/{SUB}/n1/x", ""),
            ("asset-with-slash-sent-as-slash", "PUT", f"review/{SUB}/a/b", "score=4"),
            ("trailing-slash-after-asset", "GET", f"pausetime/{SUB}/a1/", ""),
            ("trailing-slash-after-asset-PUT", "PUT", f"review/{SUB}/a2/", "score=4"),
            ("trailing-slash-on-continue", "GET", f"continue/{SUB}/", ""),
            ("double-slash-before-asset", "PUT", f"pausetime/{SUB}//a1", "time=20000"),
            ("double-slash-after-activity", "GET", f"/fav/{SUB}", ""),
            (
                "encoded-slash-in-subscriber-pausetime",
                "GET",
                f"pausetime/{SUB}%2Fa1",
                "",
            ),
        ]
    ]
    + [
        case(f"prefix-{name}", Act("GET", path, token="none"), 404)
        for name, path in [
            ("activity-without-slash", "/metax/2.1/activity"),
            ("activity-joined-to-list", f"/metax/2.1/activityfav/{SUB}"),
            ("Activity-capitalised", f"/metax/2.1/Activity/fav/{SUB}"),
            ("version-2.0", f"/metax/2.0/activity/fav/{SUB}"),
            ("double-slash-in-prefix", f"/metax/2.1//activity/fav/{SUB}"),
        ]
    ]
    + [
        # The split comes before decoding: an empty segment is an empty id.
        case(name, act, 400, reason)
        for name, act, reason in [
            ("trailing-slash-is-empty-asset", Act("PUT", a(f"fav/{SUB}/")), "asset id"),
            (
                "trailing-slash-is-empty-asset-DELETE",
                Act("DELETE", a(f"watch/{SUB}/")),
                "asset id",
            ),
            (
                "double-slash-is-empty-subscriber",
                Act("PUT", a(f"fav//{SUB}")),
                "subscriber id",
            ),
            (
                "two-empty-ids",
                Act("DELETE", a("watch//"), token="admin"),
                "subscriber id",
            ),
            (
                "empty-subscriber-on-a-list",
                Act("GET", a("continue/")),
                "subscriber id",
            ),
        ]
    ]
    + [
        # "%2F" stays inside its segment: another subscriber, not an asset.
        case(
            "encoded-slash-makes-another-subscriber",
            Act("GET", a(f"fav/{SUB}%2Fn1")),
            403,
        ),
        case(
            "encoded-slash-subscriber-with-trailing-slash",
            Act("GET", a(f"watch/{SUB}%2F")),
            403,
        ),
        case(
            "encoded-slash-in-subscriber-with-asset",
            Act("PUT", a(f"review/{SUB}%2Fa2/a2"), "score=4"),
            403,
        ),
    ]
)

METHODS = [
    # 405 comes before authentication: no token is sent.
    case(
        f"method-{method}-on-{name}",
        Act(method, a(tail), token="none"),
        405,
        allow=allow,
    )
    for name, tail, allow, methods in [
        ("fav-list", f"fav/{SUB}", GET_HEAD, ("PUT", "DELETE", "POST", "PATCH")),
        ("fav-item", f"fav/{SUB}/n1", ("DELETE", "PUT"), ("GET", "HEAD", "POST")),
        ("watch-list", f"watch/{SUB}", GET_HEAD, ("PUT", "DELETE", "POST")),
        ("watch-item", f"watch/{SUB}/a1", ("DELETE", "PUT"), ("GET", "POST")),
        ("continue-list", f"continue/{SUB}", GET_HEAD, ("PUT", "DELETE", "PATCH")),
        (
            "pausetime",
            f"pausetime/{SUB}/a1",
            ("GET", "HEAD", "PUT"),
            ("DELETE", "POST", "PATCH"),
        ),
        ("review", f"review/{SUB}/a2", ("PUT",), ("GET", "DELETE", "POST", "HEAD")),
        ("fav-list-trailing-slash", f"fav/{SUB}/", ("DELETE", "PUT"), ("GET",)),
        ("fav-double-slash", f"fav//{SUB}", ("DELETE", "PUT"), ("GET",)),
        ("continue-encoded-slash", f"continue/{SUB}%2Fa1", GET_HEAD, ("PUT",)),
        ("fav-list-OPTIONS", f"fav/{SUB}", GET_HEAD, ("OPTIONS",)),
        (
            "pausetime-OPTIONS",
            f"pausetime/{SUB}/a1",
            ("GET", "HEAD", "PUT"),
            ("OPTIONS",),
        ),
    ]
    for method in methods
] + [
    # A method the path does not list is 405 whatever else is wrong.
    case(
        "method-before-bad-subscriber-id",
        Act("PUT", a("fav/%FF"), token="none"),
        405,
        allow=GET_HEAD,
    ),
    case(
        "method-before-other-subscriber-token",
        Act("POST", a(f"review/{SUB}/a2"), "score=4", token="other"),
        405,
        allow=("PUT",),
    ),
    case(
        "method-before-bad-parameter",
        Act("DELETE", a(f"pausetime/{SUB}/a1"), "time=-1"),
        405,
        allow=("GET", "HEAD", "PUT"),
    ),
    case(
        "method-with-a-json-body",
        Act("POST", a(f"fav/{SUB}/n1"), body=b"{}", content_type=JSON_TYPE),
        405,
        allow=("DELETE", "PUT"),
    ),
    case(
        "method-TRACE-on-fav-list",
        Act("TRACE", a(f"fav/{SUB}"), token="none"),
        405,
        allow=GET_HEAD,
    ),
    case(
        "method-PROPFIND-on-review",
        Act("PROPFIND", a(f"review/{SUB}/a2"), token="none"),
        405,
        allow=("PUT",),
    ),
    case(
        "method-TRACE-on-unknown-list",
        Act("TRACE", a(f"nope/{SUB}"), token="none"),
        404,
    ),
]

# --- tokens, and the order of the checks ----------------------------------------------

AUTH = (
    [
        case(f"no-token-{endpoint}", variant(endpoint, token="none"), 401)
        for endpoint in ENDPOINTS
    ]
    + [
        case(
            f"other-subscriber-token-{endpoint}", variant(endpoint, token="other"), 403
        )
        for endpoint in ENDPOINTS
    ]
    + [
        case(f"token-{token}-{endpoint}", variant(endpoint, token=token), status)
        for (token, status), endpoint in zip(
            [
                ("basic", 401),
                ("bearer-alone", 401),
                ("garbage", 401),
                ("expired", 401),
                ("expired-admin", 401),
                ("bad-signature", 401),
                ("alg-none", 401),
                ("two-tokens", 401),
                ("other-case", 403),
                ("scope-misspelt", 403),
            ],
            ENDPOINTS,
            strict=True,
        )
    ]
)

# README "Order of checks": authentication (401), the subscriber id (400),
# authorization (403), then the rest; the asset id comes after the 403.
JSON_BODY = b'{"time": 20000}'
OVERSIZE_FORM = b"time=20000&type=vod" + b"0" * MAX_BODY_BYTES
ORDER = [
    case(f"order-{name}", act, status, reason)
    for name, act, status, reason in [
        (
            "no-token-before-bad-subscriber-id",
            Act("PUT", a("fav/%FF/n1"), token="none"),
            401,
            "No Authorization Token",
        ),
        (
            "no-token-before-bad-asset-id",
            Act("PUT", a(f"review/{SUB}/%00"), "score=9", token="none"),
            401,
            "No Authorization Token",
        ),
        (
            "no-token-before-bad-parameter",
            variant("pausetime-set", query="time=-1", token="none"),
            401,
            "No Authorization Token",
        ),
        (
            "no-token-before-bad-cursor",
            variant("fav-list", query="after=xyz", token="none"),
            401,
            "No Authorization Token",
        ),
        (
            "no-token-before-media-type",
            variant(
                "pausetime-set", body=JSON_BODY, content_type=JSON_TYPE, token="none"
            ),
            401,
            "No Authorization Token",
        ),
        (
            "no-token-before-oversize-body",
            variant(
                "pausetime-set", body=OVERSIZE_FORM, content_type=FORM, token="none"
            ),
            401,
            "No Authorization Token",
        ),
        (
            "bad-token-before-bad-subscriber-id",
            Act("GET", a("watch/x%C3"), token="expired"),
            401,
            "expired",
        ),
        (
            "bad-subscriber-id-before-403",
            Act("DELETE", a("fav/a%0Ab/f1"), token="other"),
            400,
            "subscriber id",
        ),
        (
            "bad-subscriber-id-before-bad-asset-id",
            Act("PUT", a("review/" + "u" * 257 + "/%FF"), "score=9"),
            400,
            "subscriber id",
        ),
        (
            "403-before-bad-asset-id",
            Act("PUT", a(f"fav/{SUB}/%FF"), token="other"),
            403,
            None,
        ),
        (
            "403-before-bad-parameter",
            variant("review", query="score=NaN", token="other"),
            403,
            None,
        ),
        (
            "403-before-unknown-parameter",
            variant("watch-remove", query="foo=bar", token="other"),
            403,
            None,
        ),
        (
            "403-before-bad-cursor",
            variant("continue-list", query="after=xyz&limit=0", token="other"),
            403,
            None,
        ),
        (
            "403-before-media-type",
            variant(
                "review", body=b'{"score": 4}', content_type=JSON_TYPE, token="other"
            ),
            403,
            None,
        ),
        (
            "403-before-oversize-body",
            variant(
                "pausetime-set", body=OVERSIZE_FORM, content_type=FORM, token="other"
            ),
            403,
            None,
        ),
        (
            "403-before-body-on-GET",
            variant("fav-list", body=b"limit=5", content_type=FORM, token="other"),
            403,
            None,
        ),
        (
            "bad-asset-id-before-bad-parameter",
            Act("PUT", a(f"pausetime/{SUB}/x%C3"), "time=-1&foo=bar"),
            400,
            "asset id",
        ),
        (
            "bad-asset-id-before-media-type",
            Act("PUT", a(f"fav/{SUB}/%00"), body=b"{}", content_type=JSON_TYPE),
            400,
            "asset id",
        ),
        (
            "404-before-no-token",
            Act("PUT", a(f"reviews/{SUB}/a2"), "score=9", token="none"),
            404,
            None,
        ),
        (
            "404-before-bad-subscriber-id",
            Act("GET", a("continue/%FF/a1"), token="none"),
            404,
            None,
        ),
        (
            "unknown-parameter-before-bad-value",
            variant("review", query="score=9&foo=bar"),
            400,
            "unknown parameter",
        ),
    ]
] + [
    # Section 1's order (query, then Content-Type, then body size), which the
    # activity family follows too.
    case(
        "order-unknown-query-parameter-before-media-type",
        with_query("pausetime-set", "foo=bar", body=JSON_BODY, content_type=JSON_TYPE),
        400,
        "unknown parameter",
    ),
    case(
        "order-media-type-before-body-size",
        variant(
            "pausetime-set",
            body=b"{" + b" " * MAX_BODY_BYTES + b"}",
            content_type=JSON_TYPE,
        ),
        415,
    ),
]

# --- parameters -------------------------------------------------------------------

# Wrong integers, as percent-encoded query values; {n} is a valid value.
BAD_INTEGERS = [
    ("negative", "-1"),
    ("negative-valid-magnitude", "-{n}"),
    ("fraction", "{n}.5"),
    ("fraction-zero", "{n}.0"),
    ("exponent", "1e3"),
    ("exponent-upper-case", "{n}E0"),
    ("trailing-letter", "{n}a"),
    ("letters", "12a"),
    ("empty", ""),
    ("leading-space", "%20{n}"),
    ("plus-decodes-to-space", "+{n}"),
    ("explicit-plus", "%2B{n}"),
    ("trailing-space", "{n}%20"),
    ("hex", "0x10"),
    ("leading-zero", "0{n}"),
    ("arabic-indic-digits", "%D9%A1%D9%A2"),
    ("fullwidth-digits", "%EF%BC%91%EF%BC%92"),
    ("unicode-minus", "%E2%88%92{n}"),
    ("2**53", str(2**53)),
    ("2**53+1", str(2**53 + 1)),
    ("10**16", str(10**16)),
    ("20-digits", "9" * 20),
    ("21-digits", "1" * 21),
    ("40-digits", "1" * 40),
    ("true", "true"),
    ("false", "false"),
    ("null", "null"),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("minus-Infinity", "-Infinity"),
    ("nul", "%00"),
    ("nul-after-digits", "{n}%00"),
    ("quoted", "%22{n}%22"),
    ("json-array", "%5B{n}%5D"),
    ("percent-encoded-garbage", "%25%26%3D%3F"),
    ("lone-percent", "{n}%"),
    ("bad-escape", "%G{n}"),
    ("thousands-separator", "20%2C000"),
    ("underscore-separator", "20_000"),
]
# Values that are not UTF-8: the query itself is refused (no ``errors``).
NOT_UTF8 = [("invalid-utf-8-%FF", "%FF"), ("truncated-utf-8", "1%C3")]
FORM_TOO = {"negative", "fraction", "empty", "2**53", "true", "quoted", "nul"}


def _param_cases(endpoint, name, values, valid):
    out = []
    for label, template in values:
        value = template.replace("{n}", valid)
        out.append(
            case(
                f"{name}-{label}",
                variant(endpoint, query=f"{name}={value}"),
                400,
                errors=name,
            )
        )
        if label in FORM_TOO:
            out.append(
                case(
                    f"{name}-{label}-in-form-body",
                    variant(
                        endpoint,
                        query="",
                        body=f"{name}={value}".encode(),
                        content_type=FORM,
                    ),
                    400,
                    errors=name,
                )
            )
    for label, value in NOT_UTF8:
        out.append(
            case(
                f"{name}-{label}",
                variant(endpoint, query=f"{name}={value}"),
                400,
                "query is not valid",
            )
        )
    return out


BAD_SCORES = [
    ("below-0", "-0.1"),
    ("integer-minus-1", "-1"),
    ("smallest-negative", "-5e-324"),
    ("above-5-by-1e-7", "5.0000001"),
    ("above-5-by-one-ulp", "5.000000000000001"),
    ("6", "6"),
    ("2**53", str(2**53)),
    ("quoted", "%224%22"),
    ("true", "true"),
    ("false", "false"),
    ("null", "null"),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("minus-Infinity", "-Infinity"),
    ("1e400", "1e400"),
    ("minus-1e400", "-1e400"),
    ("empty", ""),
    ("21-digit-integer", "4" * 21),
    ("70-character-decimal", "4." + "0" * 68),
    ("leading-dot", ".5"),
    ("trailing-dot", "4."),
    ("decimal-comma", "3%2C5"),
    ("explicit-plus", "%2B4"),
    ("leading-space", "%204"),
    ("hex", "0x4"),
    ("leading-zero", "04"),
    ("fraction", "7%2F2"),
    ("arabic-indic-digit", "%D9%A4"),
    ("nul-after-digit", "4%00"),
    ("json-array", "%5B4%5D"),
    ("letters", "four"),
]
FORM_SCORES = {"below-0", "6", "quoted", "NaN", "empty"}

BAD_LIMITS = [
    ("0", "0"),
    ("501", "501"),
    ("1000", "1000"),
    ("negative", "-1"),
    ("fraction", "1.5"),
    ("empty", ""),
    ("leading-zero", "05"),
    ("zeros", "000"),
    ("30-digits", "9" * 30),
    ("letters", "abc"),
    ("explicit-plus", "%2B5"),
    ("plus-decodes-to-space", "+5"),
    ("leading-space", "%205"),
    ("trailing-space", "5%20"),
    ("exponent", "1e2"),
    ("hex", "0x10"),
    ("float-500", "500.0"),
    ("arabic-indic-digit", "%D9%A5"),
    ("fullwidth-digit", "%EF%BC%95"),
    ("true", "true"),
    ("null", "null"),
    ("nul-after-digit", "5%00"),
    ("quoted", "%225%22"),
]

BAD_TYPES = [
    ("VOD", "VOD"),
    ("Vod", "Vod"),
    ("EPISODE", "EPISODE"),
    ("empty", ""),
    ("movie", "movie"),
    ("episodes", "episodes"),
    ("trailing-space", "vod%20"),
    ("trailing-plus", "vod+"),
    ("nul", "vod%00"),
    ("two-values", "vod%2Cepisode"),
    ("cyrillic-o", "v%D0%BEd"),
]

PARAMS = (
    _param_cases("pausetime-set", "time", BAD_INTEGERS, "20000")
    + _param_cases("watch-mark", "last_played_on", BAD_INTEGERS, "1764000009000")
    + [
        case(
            f"score-{label}",
            variant("review", query=f"score={value}"),
            400,
            errors="score",
        )
        for label, value in BAD_SCORES
    ]
    + [
        case(
            f"score-{label}-in-form-body",
            variant(
                "review", query="", body=f"score={value}".encode(), content_type=FORM
            ),
            400,
            errors="score",
        )
        for label, value in BAD_SCORES
        if label in FORM_SCORES
    ]
    + [
        case(
            "score-invalid-utf-8",
            variant("review", query="score=%FF"),
            400,
            "query is not valid",
        ),
    ]
    + [
        case(
            f"limit-{label}-{endpoint}",
            variant(endpoint, query=f"limit={value}"),
            400,
            errors="limit",
        )
        for endpoint, cases in [
            ("fav-list", BAD_LIMITS),
            ("watch-list", BAD_LIMITS[:4]),
            ("continue-list", BAD_LIMITS[4:8]),
        ]
        for label, value in cases
    ]
    + [
        case(
            f"limit-invalid-utf-8-{endpoint}",
            variant(endpoint, query="limit=%FF"),
            400,
            "query is not valid",
        )
        for endpoint in ("fav-list", "continue-list")
    ]
    # `type`: every endpoint, a different wrong value each.
    + [
        case(
            f"type-{label}-{endpoint}",
            with_query(endpoint, f"type={value}"),
            400,
            errors="type",
        )
        for (label, value), endpoint in zip(
            BAD_TYPES, [*ENDPOINTS, "fav-list"], strict=True
        )
    ]
    + [
        case(
            "type-in-form-body-DELETE",
            variant("fav-remove", body=b"type=Vod", content_type=FORM),
            400,
            errors="type",
        ),
        case(
            "type-invalid-utf-8",
            with_query("watch-list", "type=%FF"),
            400,
            "query is not valid",
        ),
    ]
)

UNKNOWN = (
    [
        case(
            f"unknown-parameter-{endpoint}",
            with_query(endpoint, "foo=bar"),
            400,
            "unknown parameter: foo",
        )
        for endpoint in ENDPOINTS
    ]
    + [
        case(f"unknown-{label}", with_query(endpoint, extra), 400, "unknown parameter")
        for label, endpoint, extra in [
            ("Time-capitalised", "pausetime-set", "Time=20000"),
            ("TIME-upper-case", "pausetime-set", "TIME=20000"),
            ("Score-capitalised", "review", "Score=4"),
            ("lastPlayedOn-camel-case", "watch-mark", "lastPlayedOn=1"),
            ("last_played-misspelt", "watch-mark", "last_played=1"),
            ("Limit-capitalised", "fav-list", "Limit=5"),
            ("Type-capitalised", "continue-list", "Type=vod"),
            ("isDelta-of-section-1", "review", "isDelta=true"),
            ("pause_time-body-field-name", "pausetime-set", "pause_time=20"),
            ("user_rating-body-field-name", "review", "user_rating=4"),
            ("asset_id", "fav-add", "asset_id=n2"),
            ("user_id", "fav-remove", "user_id=" + SUB),
            ("time-on-review", "review", "time=20000"),
            ("score-on-pausetime", "pausetime-set", "score=4"),
            ("last_played_on-on-pausetime", "pausetime-set", "last_played_on=1"),
            ("time-on-watch", "watch-mark", "time=20000"),
            ("limit-on-pausetime-get", "pausetime-get", "limit=5"),
            ("after-on-review", "review", "after=xyz"),
            ("limit-on-fav-add", "fav-add", "limit=5"),
            ("time-on-watch-remove", "watch-remove", "time=20000"),
            ("empty-name", "fav-list", "=5"),
            ("empty-name-and-value", "watch-list", "="),
            ("array-syntax", "pausetime-set", "time[]=20000"),
            ("encoded-name-with-nul", "review", "score%00=4"),
            ("200-character-name", "fav-list", "x" * 200 + "=1"),
        ]
    ]
    + [
        case(
            "unknown-in-form-body",
            variant("fav-add", body=b"foo=bar", content_type=FORM),
            400,
            "unknown parameter",
        ),
        case(
            "unknown-name-with-bad-escape-in-form-body",
            variant(
                "pausetime-set", query="", body=b"ti%ZZme=20000", content_type=FORM
            ),
            400,
            "unknown parameter",
        ),
    ]
)

REPEATED = (
    [
        case(f"repeated-{label}", act, 400, "more than once")
        for label, act in [
            ("time", variant("pausetime-set", query="time=20000&time=20000")),
            (
                "time-different-values",
                variant("pausetime-set", query="time=20000&time=30000"),
            ),
            ("time-second-empty", variant("pausetime-set", query="time=20000&time=")),
            ("score", variant("review", query="score=4&score=4")),
            ("last_played_on", with_query("watch-mark", "last_played_on=1")),
            ("type", with_query("continue-list", "type=vod&type=vod")),
            ("type-different-values", with_query("fav-add", "type=vod&type=episode")),
            ("limit", variant("fav-list", query="limit=5&limit=5")),
            ("limit-on-watch", variant("watch-list", query="limit=5&limit=6")),
            ("after", variant("fav-list", query="after=<fav>&after=<fav>")),
            (
                "time-in-query-and-form",
                variant("pausetime-set", body=b"time=20000", content_type=FORM),
            ),
            (
                "score-in-query-and-form",
                variant("review", body=b"score=3", content_type=FORM),
            ),
            (
                "last_played_on-in-query-and-form",
                variant("watch-mark", body=b"last_played_on=1", content_type=FORM),
            ),
            (
                "type-in-query-and-form",
                with_query(
                    "fav-remove", "type=vod", body=b"type=vod", content_type=FORM
                ),
            ),
            (
                "time-twice-in-form",
                variant(
                    "pausetime-set",
                    query="",
                    body=b"time=20000&time=20000",
                    content_type=FORM,
                ),
            ),
        ]
    ]
    + [
        case(f"missing-{label}", act, 400, errors=name)
        for label, name, act in [
            ("time", "time", variant("pausetime-set", query="")),
            ("time-only-type", "time", variant("pausetime-set", query="type=vod")),
            (
                "time-empty-form-body",
                "time",
                variant("pausetime-set", query="", body=b"", content_type=FORM),
            ),
            (
                "time-form-body-only-type",
                "time",
                variant("pausetime-set", query="", body=b"type=vod", content_type=FORM),
            ),
            ("score", "score", variant("review", query="")),
            ("score-only-type", "score", variant("review", query="type=episode")),
        ]
    ]
    + [
        # Query strings that are not name=value pairs of percent-encoded UTF-8.
        case(f"query-{label}", with_query(endpoint, extra), 400, "query is not valid")
        for label, endpoint, extra in [
            ("name-without-equals", "pausetime-set", "type"),
            ("only-a-name", "fav-list", "limit"),
            ("trailing-ampersand", "review", "&"),
            ("double-ampersand", "pausetime-set", "&&type=vod"),
            ("invalid-utf-8-name", "fav-add", "%FF=1"),
            ("more-than-8-fields", "fav-list", "&".join(["type=vod"] * 9)),
        ]
    ]
)

# --- cursors ----------------------------------------------------------------------

_HEAD = struct.Struct(">BBI")


def _flip(text: str, index: int) -> str:
    """``text`` with one base64url character changed in its top bit, which
    every position carries, so the decoded bytes change too."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = alphabet[alphabet.index(text[index]) ^ 32]
    return text[:index] + flipped + text[index + 1 :]


def _signed(cursors: Cursors, payload: bytes, subscriber_id: str = SUB) -> str:
    """A cursor signed with the service's own key around ``payload``: the
    checks behind the signature (version, list, position), which no client
    can reach without the key."""
    token = payload + cursors._mac(payload, subscriber_id)
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode()


def cursor_texts(key: bytes) -> dict[str, str]:
    """Cursors by the names the table uses, made now with ``key``."""
    now = time.time()
    ours = Cursors(key, CURSOR_MAX_AGE)

    def at(clock_offset: float) -> Cursors:
        return Cursors(key, CURSOR_MAX_AGE, clock=lambda: now + clock_offset)

    other_key = cursor_key(
        load_settings({"JWT_SECRET": OTHER_SECRET, "KEY_PREFIX": "stat:"}, environ={})
    )
    fav = ours.make("fav", SUB, 0.0)
    watch = ours.make("watch", SUB, (1764000001000, "a2"))
    cont = ours.make("continue", SUB, (1764000001000, "a2"))
    issued = int(now)
    return {
        "fav": fav,
        "watch": watch,
        "continue": cont,
        "fav-other-subscriber": ours.make("fav", OTHER, 0.0),
        "watch-other-subscriber": ours.make("watch", OTHER, (1700000000000, "a1")),
        "fav-upper-case-subscriber": ours.make("fav", SUB.upper(), 0.0),
        "fav-other-key": Cursors(other_key, CURSOR_MAX_AGE).make("fav", SUB, 0.0),
        "fav-stale": at(-(CURSOR_MAX_AGE + 600)).make("fav", SUB, 0.0),
        "fav-just-stale": at(-(CURSOR_MAX_AGE + 3)).make("fav", SUB, 0.0),
        "watch-stale": at(-(CURSOR_MAX_AGE + 600)).make("watch", SUB, (1, "a1")),
        "continue-stale": at(-(10 * CURSOR_MAX_AGE)).make("continue", SUB, (1, "a")),
        "fav-future": at(3600).make("fav", SUB, 0.0),
        "fav-almost-stale": at(-(CURSOR_MAX_AGE - 10)).make("fav", SUB, 0.0),
        "fav-flip-first": _flip(fav, 0),
        "fav-flip-middle": _flip(fav, len(fav) // 2),
        "fav-flip-last": _flip(fav, len(fav) - 1),
        "watch-flip-in-asset-id": _flip(watch, 20),
        "watch-flip-in-mac": _flip(watch, len(watch) - 5),
        "fav-truncated-by-1": fav[:-1],
        "fav-truncated-by-4": fav[:-4],
        "fav-head-only": fav[:8],
        "fav-doubled": fav + fav,
        "fav-case-swapped": fav.swapcase(),
        "watch-reversed": watch[::-1],
        "fav-signed-version-2": _signed(
            ours, _HEAD.pack(2, 1, issued) + struct.pack(">d", 0.0)
        ),
        "fav-signed-unknown-list": _signed(
            ours, _HEAD.pack(1, 9, issued) + struct.pack(">d", 0.0)
        ),
        "fav-signed-nan-position": _signed(
            ours, _HEAD.pack(1, 1, issued) + struct.pack(">d", math.nan)
        ),
        "fav-signed-infinite-position": _signed(
            ours, _HEAD.pack(1, 1, issued) + struct.pack(">d", math.inf)
        ),
        "fav-signed-short-position": _signed(ours, _HEAD.pack(1, 1, issued) + b"\0"),
        "watch-signed-invalid-utf-8": _signed(
            ours, _HEAD.pack(1, 2, issued) + struct.pack(">q", 5) + b"\xff"
        ),
        "continue-signed-short-position": _signed(
            ours, _HEAD.pack(1, 3, issued) + b"\0"
        ),
        "signed-short-head": _signed(ours, b"\x01\x01"),
        "signed-nothing": _signed(ours, b""),
    }


_PLACEHOLDER = re.compile(r"<([a-z0-9-]+)>")


def resolve(query: str, key: bytes) -> str:
    """``query`` with its cursor names replaced by cursors made with ``key``."""
    if "<" not in query:
        return query
    cursors = cursor_texts(key)
    return _PLACEHOLDER.sub(lambda m: cursors[m.group(1)], query)


NOT_OURS = "not a cursor of this list"
CURSORS = [
    case(f"after-{label}", variant(endpoint, query=f"after={value}"), 400, reason)
    for label, endpoint, value, reason in [
        ("random-text", "fav-list", "hello", NOT_OURS),
        (
            "random-base64url",
            "watch-list",
            "AQFrEKB5AAAAAAAAAAC_E-uRooUWJ4T--v-Dg5jk",
            NOT_OURS,
        ),
        ("empty", "fav-list", "", NOT_OURS),
        ("base64-plus-and-slash", "fav-list", "ab%2Bcd%2Fef", NOT_OURS),
        ("plus-decodes-to-space", "continue-list", "ab+cd", NOT_OURS),
        ("base64-padding", "fav-list", "<fav>%3D", NOT_OURS),
        ("dot", "watch-list", "<watch>.", NOT_OURS),
        ("nul", "fav-list", "%00", NOT_OURS),
        ("nul-after-cursor", "fav-list", "<fav>%00", NOT_OURS),
        ("non-ascii", "fav-list", "%C3%A9", NOT_OURS),
        ("one-character", "fav-list", "A", NOT_OURS),
        ("length-1-mod-4", "fav-list", "AAAAA", NOT_OURS),
        ("1024-characters", "fav-list", "A" * 1024, NOT_OURS),
        ("1025-characters", "fav-list", "A" * 1025, NOT_OURS),
        ("5000-characters", "watch-list", "A" * 5000, NOT_OURS),
        ("json", "fav-list", "%7B%22position%22%3A0%7D", NOT_OURS),
        ("an-offset", "fav-list", "50", NOT_OURS),
        ("truncated-by-1", "fav-list", "<fav-truncated-by-1>", NOT_OURS),
        ("truncated-by-4", "fav-list", "<fav-truncated-by-4>", NOT_OURS),
        ("head-only", "fav-list", "<fav-head-only>", NOT_OURS),
        ("doubled", "fav-list", "<fav-doubled>", NOT_OURS),
        ("case-swapped", "fav-list", "<fav-case-swapped>", NOT_OURS),
        ("reversed", "watch-list", "<watch-reversed>", NOT_OURS),
        ("one-character-flipped-first", "fav-list", "<fav-flip-first>", NOT_OURS),
        ("one-character-flipped-middle", "fav-list", "<fav-flip-middle>", NOT_OURS),
        ("one-character-flipped-last", "fav-list", "<fav-flip-last>", NOT_OURS),
        (
            "one-character-flipped-in-asset-id",
            "watch-list",
            "<watch-flip-in-asset-id>",
            NOT_OURS,
        ),
        ("one-character-flipped-in-mac", "watch-list", "<watch-flip-in-mac>", NOT_OURS),
        ("of-fav-on-watch", "watch-list", "<fav>", NOT_OURS),
        ("of-fav-on-continue", "continue-list", "<fav>", NOT_OURS),
        ("of-watch-on-fav", "fav-list", "<watch>", NOT_OURS),
        ("of-watch-on-continue", "continue-list", "<watch>", NOT_OURS),
        ("of-continue-on-watch", "watch-list", "<continue>", NOT_OURS),
        ("of-continue-on-fav", "fav-list", "<continue>", NOT_OURS),
        ("of-another-subscriber", "fav-list", "<fav-other-subscriber>", NOT_OURS),
        (
            "of-another-subscriber-watch",
            "watch-list",
            "<watch-other-subscriber>",
            NOT_OURS,
        ),
        (
            "of-the-subscriber-in-upper-case",
            "fav-list",
            "<fav-upper-case-subscriber>",
            NOT_OURS,
        ),
        ("signed-with-another-key", "fav-list", "<fav-other-key>", NOT_OURS),
        ("stale", "fav-list", "<fav-stale>", "expired"),
        ("just-stale", "fav-list", "<fav-just-stale>", "expired"),
        ("stale-watch", "watch-list", "<watch-stale>", "expired"),
        ("stale-continue", "continue-list", "<continue-stale>", "expired"),
        ("from-the-future", "fav-list", "<fav-future>", NOT_OURS),
        ("signed-version-2", "fav-list", "<fav-signed-version-2>", NOT_OURS),
        ("signed-unknown-list", "fav-list", "<fav-signed-unknown-list>", NOT_OURS),
        ("signed-nan-position", "fav-list", "<fav-signed-nan-position>", NOT_OURS),
        (
            "signed-infinite-position",
            "fav-list",
            "<fav-signed-infinite-position>",
            NOT_OURS,
        ),
        ("signed-short-position", "fav-list", "<fav-signed-short-position>", NOT_OURS),
        (
            "signed-invalid-utf-8-asset-id",
            "watch-list",
            "<watch-signed-invalid-utf-8>",
            NOT_OURS,
        ),
        (
            "signed-short-record-position",
            "continue-list",
            "<continue-signed-short-position>",
            NOT_OURS,
        ),
        ("signed-short-head", "fav-list", "<signed-short-head>", NOT_OURS),
        ("signed-nothing", "watch-list", "<signed-nothing>", NOT_OURS),
    ]
] + [
    # An admin may page any subscriber, but only with that subscriber's cursors.
    case(
        "after-of-another-subscriber-with-admin-token",
        variant("fav-list", query="after=<fav-other-subscriber>", token="admin"),
        400,
        NOT_OURS,
    ),
    case(
        "after-of-the-subscriber-on-another-with-admin-token",
        Act("GET", a(f"fav/{OTHER}"), "after=<fav>", token="admin"),
        400,
        NOT_OURS,
    ),
    case(
        "after-with-bad-limit",
        variant("watch-list", query="limit=0&after=<watch>"),
        400,
        errors="limit",
    ),
    case(
        "after-in-form-body-of-GET",
        variant("fav-list", body=b"after=x", content_type=FORM),
        400,
        "a GET takes no body",
    ),
]

# --- bodies -----------------------------------------------------------------------

OVERSIZE = b"time=20000&type=vod&" + b"x" * MAX_BODY_BYTES
JUST_OVER = b"time=20000&type=vod" + b"0" * (MAX_BODY_BYTES - 18)
assert len(JUST_OVER) == MAX_BODY_BYTES + 1
MULTIPART = (
    b'--x\r\nContent-Disposition: form-data; name="time"\r\n\r\n20000\r\n--x--\r\n'
)

BODIES = (
    [
        # A body of any other media type is 415, even one that holds the
        # parameter (the query already has it, so only the body is wrong).
        case(
            f"media-type-{label}", variant(endpoint, body=data, content_type=ctype), 415
        )
        for label, endpoint, data, ctype in [
            ("json", "pausetime-set", JSON_BODY, JSON_TYPE),
            ("json-on-review", "review", b'{"score": 4}', JSON_TYPE),
            ("json-on-fav-add", "fav-add", b"{}", JSON_TYPE),
            ("json-on-watch-remove", "watch-remove", b"{}", JSON_TYPE),
            ("json-with-charset", "watch-mark", b"{}", JSON_TYPE + "; charset=utf-8"),
            ("text-plain", "pausetime-set", b"time=20000", "text/plain"),
            (
                "multipart",
                "pausetime-set",
                MULTIPART,
                "multipart/form-data; boundary=x",
            ),
            ("octet-stream", "review", b"score=4", "application/octet-stream"),
            ("xml", "fav-remove", b"<type>vod</type>", "application/xml"),
            ("missing", "pausetime-set", b"type=vod", None),
            ("empty", "review", b"type=vod", ""),
            (
                "form-misspelt",
                "pausetime-set",
                b"type=vod",
                "application/x-www-form-urlencode",
            ),
            ("form-with-suffix", "pausetime-set", b"type=vod", FORM + "+json"),
            ("list-of-types", "pausetime-set", b"type=vod", FORM + ", text/plain"),
            (
                "charset-latin-1",
                "pausetime-set",
                b"type=vod",
                FORM + "; charset=latin-1",
            ),
            (
                "charset-iso-8859-1",
                "review",
                b"type=vod",
                FORM + "; charset=ISO-8859-1",
            ),
            ("charset-utf-16", "watch-mark", b"type=vod", FORM + "; charset=utf-16"),
            ("charset-ascii", "fav-add", b"type=vod", FORM + "; charset=us-ascii"),
            (
                "unknown-media-parameter",
                "pausetime-set",
                b"type=vod",
                FORM + "; foo=bar",
            ),
        ]
    ]
    + [
        case(
            f"form-{label}",
            variant(endpoint, query="", body=data, content_type=FORM),
            400,
            reason,
            errors,
        )
        for label, endpoint, data, reason, errors in [
            ("field-without-equals", "pausetime-set", b"time", "form body", None),
            (
                "second-field-without-equals",
                "pausetime-set",
                b"time=20000&type",
                "form body",
                None,
            ),
            ("trailing-ampersand", "review", b"score=4&", "form body", None),
            ("leading-ampersand", "review", b"&score=4", "form body", None),
            ("invalid-utf-8-%FF", "pausetime-set", b"time=%FF", "form body", None),
            ("invalid-utf-8-in-name", "review", b"sc%FFore=4", "form body", None),
            (
                "encoded-surrogate",
                "watch-mark",
                b"last_played_on=%ED%A0%80",
                "form body",
                None,
            ),
            ("raw-utf-8", "pausetime-set", "time=20000é".encode(), "form body", None),
            ("raw-latin-1", "review", "score=4é".encode("latin-1"), "form body", None),
            ("raw-byte-FF", "pausetime-set", b"time=\xff", "form body", None),
            ("utf-16", "review", "score=4".encode("utf-16"), "form body", None),
            ("utf-8-bom", "review", b"\xef\xbb\xbfscore=4", "form body", None),
            (
                "more-than-8-fields",
                "pausetime-set",
                b"&".join([b"type=vod"] * 9),
                "form body",
                None,
            ),
            ("json-text", "pausetime-set", JSON_BODY, "form body", None),
            ("bad-percent-escape", "pausetime-set", b"time=%G0000", None, "time"),
            ("lone-percent", "pausetime-set", b"time=20000%", None, "time"),
            ("raw-nul", "pausetime-set", b"time=20000\x00", None, "time"),
            ("trailing-newline", "pausetime-set", b"time=20000\r\n", None, "time"),
            ("semicolon-separator", "review", b"score=4;type=vod", None, "score"),
        ]
    ]
    + [
        case(
            f"body-on-GET-{endpoint}",
            variant(endpoint, body=data, content_type=ctype),
            400,
            "a GET takes no body",
        )
        for endpoint, data, ctype in [
            ("fav-list", b"limit=5", FORM),
            ("watch-list", b"type=vod", FORM),
            ("continue-list", b"{}", JSON_TYPE),
            ("pausetime-get", b"x", "text/plain"),
        ]
    ]
    + [
        case(
            "body-on-GET-chunked",
            variant("continue-list", body=b"limit=5", content_type=FORM, chunked=True),
            400,
            "a GET takes no body",
        ),
        case(
            "body-over-MAX_BODY_BYTES",
            variant("pausetime-set", query="", body=OVERSIZE, content_type=FORM),
            413,
        ),
        case(
            "body-MAX_BODY_BYTES-plus-1",
            variant("pausetime-set", query="", body=JUST_OVER, content_type=FORM),
            413,
        ),
        case(
            "body-over-MAX_BODY_BYTES-chunked",
            variant(
                "pausetime-set",
                query="",
                body=OVERSIZE,
                content_type=FORM,
                chunked=True,
            ),
            413,
        ),
        case(
            "body-MAX_BODY_BYTES-plus-1-chunked",
            variant(
                "review", query="", body=JUST_OVER, content_type=FORM, chunked=True
            ),
            413,
        ),
        case(
            "body-over-MAX_BODY_BYTES-on-DELETE",
            variant("fav-remove", body=OVERSIZE, content_type=FORM),
            413,
        ),
        case(
            # A GET's body is refused before it is read, whatever its size.
            "body-over-MAX_BODY_BYTES-on-GET",
            variant("fav-list", body=OVERSIZE, content_type=FORM),
            400,
            "a GET takes no body",
        ),
    ]
)

GROUPS = {
    "ids": IDS,
    "routes": ROUTES,
    "methods": METHODS,
    "auth": AUTH,
    "order": ORDER,
    "params": PARAMS,
    "unknown": UNKNOWN,
    "repeated-missing-syntax": REPEATED,
    "cursors": CURSORS,
    "bodies": BODIES,
}
CASES = [param for group in GROUPS.values() for param in group]


# --- the checks -------------------------------------------------------------------


def check_error(act: Act, want: Want, status: int, headers, body: bytes) -> None:
    """The MetaX error of ``want``; ``headers`` keyed in lower case."""
    assert status == want.status, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    if act.method == "HEAD":
        assert body == b""
        payload = None
    else:
        lowered = body.lower()
        assert b"<html" not in lowered and b"traceback" not in lowered, body
        payload = json.loads(body)
        assert payload["result"] == "error", payload
        # Statuses gunicorn answers itself outside the contract's table
        # (414, 431) carry BAD_REQUEST (README: errors gunicorn answers itself).
        assert payload["message"] == MESSAGES.get(status, "BAD_REQUEST"), payload
        assert isinstance(payload["reason"], str) and payload["reason"].strip()
        assert set(payload) <= {"result", "message", "reason", "errors"}, payload
        if want.reason is not None:
            assert want.reason in payload["reason"], payload
        if want.errors is None:
            assert "errors" not in payload, payload
        else:
            errors = payload["errors"]
            assert list(errors) == [want.errors], payload
            messages = errors[want.errors]
            assert messages and all(isinstance(m, str) and m for m in messages)
            assert payload["reason"].startswith(want.errors + ": "), payload
    if status == 405:
        allow = {m.strip() for m in headers["allow"].split(",")}
        assert allow == want.allow, headers
        assert act.method not in allow
    if status == 401:
        challenge = headers["www-authenticate"]
        assert challenge.startswith("Bearer "), headers
        if act.token in NO_TOKEN:
            assert "error=" not in challenge, headers
            if payload is not None:
                assert payload["reason"] == "No Authorization Token", payload
        else:
            assert 'error="invalid_token"' in challenge, headers
    if status == 403:
        assert 'error="insufficient_scope"' in headers["www-authenticate"], headers
    if status in (401, 403) and payload is not None:
        # Nothing about either subscriber or their data.
        text = payload["reason"]
        assert SUB not in text and OTHER not in text and "f1" not in text, payload


def authorization(kind: str) -> str | None:
    make = TOKENS[kind]
    return None if make is None else make()


# --- through the Flask client, on fakeredis and on a real Redis -----------------------
# One app per backend for the whole module (an app per case would cost more
# than the cases): each test starts from the seeded state, seeded again only
# when the previous test left anything else.


@dataclass
class Backend:
    app: object
    client: object
    redis: object
    prefix: str
    seeded: dict | None = None
    clean: bool = False  # the last test found the seeded state unchanged

    def dump(self) -> dict:
        return dump(self.redis, self.prefix)

    def ensure_seeded(self) -> dict:
        """The seeded state, restored if the last test changed anything."""
        if self.clean:
            self.clean = False
            return self.seeded
        current = self.dump()
        if current != self.seeded:
            delete_prefix(self.redis, self.prefix)
            for sub, doc in SEED.items():
                resp = self.client.put(
                    PATH + sub + "?isDelta=false", json=doc, headers=admin_header()
                )
                assert resp.status_code == 200, resp.data
            current = self.dump()
            assert len(current) == 4  # both keys of both subscribers
            self.seeded = current
        return current

    def histories(self) -> dict:
        out = {}
        for sub in SEED:
            resp = self.client.get(PATH + sub, headers=admin_header())
            assert resp.status_code == 200, resp.data
            body = resp.get_json()
            out[sub] = {"favorites": body["favorites"], "view_data": body["view_data"]}
        return out

    def cursor_key(self) -> bytes:
        cursors = self.app.extensions["stat_cursors"]
        assert cursors.max_age == CURSOR_MAX_AGE
        return cursors._key


def admin_header() -> dict:
    return {"Authorization": TOKENS["admin"]()}


@pytest.fixture(
    scope="module",
    params=["fake", pytest.param("real", marks=pytest.mark.real_redis)],
)
def backend(request):
    if request.param == "fake":
        client = fakeredis.FakeRedis()
    else:
        client = redis.Redis.from_url(request.getfixturevalue("real_redis_url"))
    prefix = f"stat-test:{uuid.uuid4().hex[:12]}:"
    config = {
        "JWT_SECRET": SECRET,
        "KEY_PREFIX": prefix,
        "TESTING": True,
        "MAX_BODY_BYTES": MAX_BODY_BYTES,
        "CURSOR_MAX_AGE": CURSOR_MAX_AGE,
    }
    with pytest.MonkeyPatch.context() as env:
        for f in fields(Settings):  # settings from here, not the caller's shell
            env.delenv(f.name, raising=False)
        app = create_app(config, redis_client=client)
    try:
        yield Backend(app, app.test_client(), client, prefix)
    finally:
        delete_prefix(client, prefix)
        client.close()


def send(client, act: Act, key: bytes):
    headers = {}
    auth = authorization(act.token)
    if auth is not None:
        headers["Authorization"] = auth
    if act.content_type is not None:
        headers["Content-Type"] = act.content_type
    kwargs = {}
    if act.chunked:
        kwargs["input_stream"] = io.BytesIO(act.body)
        kwargs["environ_base"] = {"wsgi.input_terminated": True}
    elif act.body is not None:
        kwargs["data"] = act.body
    query = resolve(act.query, key)
    url = act.path + ("?" + query if query else "")
    return client.open(url, method=act.method, headers=headers, **kwargs)


@pytest.mark.parametrize(("act", "want"), CASES)
def test_bad_activity_request_answers_error_shape_and_writes_nothing(
    backend, act, want
):
    before = backend.ensure_seeded()

    resp = send(backend.client, act, backend.cursor_key())

    headers = {k.lower(): v for k, v in resp.headers.items()}
    check_error(act, want, resp.status_code, headers, resp.data)
    assert backend.dump() == before
    if act.method in WRITES:
        assert backend.histories() == READ_BACK
    backend.clean = True


# The same requests with the one defect taken out: each is answered 200, so the
# cases above fail for the defect they name, not for something else.
CONTROLS = [
    pytest.param(act, id=name)
    for name, act in [
        *ENDPOINTS.items(),
        ("fav-list-admin", variant("fav-list", token="admin")),
        ("fav-list-cursor", variant("fav-list", query="after=<fav>&limit=1")),
        ("watch-list-cursor", variant("watch-list", query="after=<watch>")),
        ("continue-list-cursor", variant("continue-list", query="after=<continue>")),
        (
            "fav-list-almost-stale-cursor",
            variant("fav-list", query="after=<fav-almost-stale>"),
        ),
        ("limit-1", variant("fav-list", query="limit=1")),
        ("limit-500", variant("watch-list", query="limit=500")),
        ("type-vod", with_query("fav-add", "type=vod")),
        ("type-episodic", with_query("review", "type=episodic")),
        ("type-episode", with_query("continue-list", "type=episode")),
        (
            "time-in-form-body",
            variant("pausetime-set", query="", body=b"time=20000", content_type=FORM),
        ),
        (
            "time-form-charset-utf-8",
            variant(
                "pausetime-set",
                query="",
                body=b"time=20000",
                content_type=FORM + "; charset=UTF-8",
            ),
        ),
        (
            "time-and-type-split",
            variant(
                "pausetime-set", query="type=vod", body=b"time=20000", content_type=FORM
            ),
        ),
        ("time-0", variant("pausetime-set", query="time=0")),
        ("time-largest", variant("pausetime-set", query=f"time={MAX_SAFE}")),
        ("last_played_on-0", variant("watch-mark", query="last_played_on=0")),
        (
            "last_played_on-largest",
            variant("watch-mark", query=f"last_played_on={MAX_SAFE}"),
        ),
        ("last_played_on-absent", variant("watch-mark", query="")),
        ("score-0", variant("review", query="score=0")),
        ("score-5", variant("review", query="score=5")),
        ("score-5.0", variant("review", query="score=5.0")),
        (
            "score-3.5-in-form",
            variant("review", query="", body=b"score=3.5", content_type=FORM),
        ),
        ("empty-json-body", variant("fav-add", body=b"", content_type=JSON_TYPE)),
        (
            "form-body-on-DELETE",
            variant("fav-remove", body=b"type=vod", content_type=FORM),
        ),
        ("asset-id-256-characters", Act("PUT", a(f"fav/{SUB}/" + "n" * 256))),
        (
            "asset-id-256-two-byte-characters",
            Act("PUT", a(f"fav/{SUB}/" + "%C3%A9" * 256)),
        ),
        (
            "asset-id-with-encoded-slash",
            Act("PUT", a(f"review/{SUB}/a%2Fb"), "score=1"),
        ),
        (
            "subscriber-with-encoded-slash",
            Act("GET", a(f"fav/{SUB}%2Fn1"), token="admin"),
        ),
    ]
]


@pytest.mark.parametrize("act", CONTROLS)
def test_the_valid_request_next_to_each_bad_one_succeeds(backend, act):
    backend.ensure_seeded()
    resp = send(backend.client, act, backend.cursor_key())
    assert resp.status_code == 200, resp.data
    assert resp.get_json()["result"] == "success"


# --- the same table, and what only raw HTTP can send, through gunicorn --------------

RAW_CASES = [
    case(
        "two-authorization-headers",
        variant("fav-add", headers=(("Authorization", "<own>"),)),
        401,
    ),
    case(
        "two-authorization-headers-own-and-admin",
        variant("review", headers=(("Authorization", "<admin>"),)),
        401,
    ),
    case(
        "content-length-larger-than-the-form-body",
        variant(
            "pausetime-set",
            query="",
            body=b"time=20000",
            content_type=FORM,
            content_length="30",
        ),
        400,
        "shorter than its Content-Length",
    ),
    case(
        "content-length-cuts-the-form-body",
        variant(
            "pausetime-set",
            query="",
            body=b"time=20000",
            content_type=FORM,
            content_length="4",
        ),
        400,
        "form body",
    ),
    case(
        "content-length-declares-over-MAX_BODY_BYTES",
        variant(
            "review", body=b"score=4", content_type=FORM, content_length=str(10**9)
        ),
        413,
    ),
    case(
        "content-length-not-a-number",
        variant(
            "review", query="", body=b"score=4", content_type=FORM, content_length="abc"
        ),
        400,
    ),
    case(
        "chunked-form-body-with-json-type",
        variant("pausetime-set", body=JSON_BODY, content_type=JSON_TYPE, chunked=True),
        415,
    ),
    case(
        "chunked-size-not-hex",
        variant(
            "pausetime-set",
            query="",
            content_type=FORM,
            body=b"zz\r\ntime=20000\r\n0\r\n\r\n",
            headers=(("Transfer-Encoding", "chunked"),),
        ),
        400,
    ),
    case(
        "chunked-without-the-last-chunk",
        variant(
            "pausetime-set",
            query="",
            content_type=FORM,
            body=b"a\r\ntime=20000\r\n",
            headers=(("Transfer-Encoding", "chunked"),),
        ),
        400,
    ),
    case(
        "raw-byte-FF-in-asset-id", variant("fav-add", target=a(f"fav/{SUB}/n\xff")), 400
    ),
    case(
        "raw-byte-FF-in-subscriber-id", variant("fav-list", target=a("fav/\xff")), 400
    ),
    case(
        "raw-utf-8-in-list-name",
        variant("fav-list", target=a(f"f\xc3\xa4v/{SUB}")),
        400,
    ),
    case("raw-space-in-asset-id", variant("fav-add", target=a(f"fav/{SUB}/n 1")), 400),
    case(
        "raw-control-character-in-asset-id",
        variant("fav-add", target=a(f"fav/{SUB}/n\x011")),
        400,
    ),
    case(
        "raw-DEL-in-subscriber-id",
        variant("watch-remove", target=a(f"watch/{SUB}\x7f/a1")),
        400,
    ),
    case(
        "raw-tab-in-asset-id",
        variant("review", target=a(f"review/{SUB}/a\t2?score=4")),
        400,
    ),
    case(
        "raw-non-ascii-in-query",
        variant("pausetime-set", target=a(f"pausetime/{SUB}/a1?time=2\xc3\xa90000")),
        400,
    ),
    case(
        "absolute-form-with-bad-asset-id",
        variant("fav-add", target="http://127.0.0.1" + a(f"fav/{SUB}/%FF")),
        400,
        "asset id",
    ),
    case(
        "absolute-form-with-bad-parameter",
        variant("review", target="http://127.0.0.1" + a(f"review/{SUB}/a2?score=6")),
        400,
        errors="score",
    ),
    case(
        "fragment-in-request-target",
        variant("fav-add", target=a(f"fav/{SUB}/n1#frag")),
        400,
        "'#'",
    ),
    case(
        # Gunicorn refuses a request line over 8190 bytes before the app sees
        # it (README: errors gunicorn answers itself): 414, in the MetaX shape.
        "request-line-over-gunicorn-limit",
        variant("fav-add", path=a(f"fav/{SUB}/" + "n" * 9000)),
        414,
        "Request Line is too large",
    ),
]


def http_bytes(act: Act, key: bytes) -> bytes:
    """``act`` as the bytes a client puts on the wire (tokens made now)."""
    headers = []
    auth = authorization(act.token)
    if auth is not None:
        headers.append(("Authorization", auth))
    if act.content_type is not None:
        headers.append(("Content-Type", act.content_type))
    payload = b""
    if act.chunked:
        headers.append(("Transfer-Encoding", "chunked"))
        payload = _chunked(act.body, size=1024)
    elif act.body is not None:
        payload = act.body
        if not any(name.lower() == "transfer-encoding" for name, _ in act.headers):
            length = act.content_length or str(len(payload))
            headers.append(("Content-Length", length))
    for name, value in act.headers:
        match = _PLACEHOLDER.fullmatch(value)
        headers.append((name, authorization(match.group(1)) if match else value))
    if act.target is not None:
        target = act.target
    else:
        query = resolve(act.query, key)
        target = act.path + ("?" + query if query else "")
    return _head(act.method, target, headers) + b"\r\n" + payload


@pytest.fixture(scope="module")
def activity_service(module_redis, tmp_path_factory):
    """gunicorn with this module's limits, on a private Redis of its own."""
    svc = Service(
        tmp_path_factory.mktemp("gunicorn"),
        {
            "REDIS_URL": module_redis.url,
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": f"stat-test:{uuid.uuid4().hex[:12]}:",
            "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
            "CURSOR_MAX_AGE": str(CURSOR_MAX_AGE),
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


def _call(svc: Service, method: str, path: str, body=None) -> Reply:
    headers = [("Authorization", TOKENS["admin"]())]
    if body is not None:
        headers.append(("Content-Type", JSON_TYPE))
    return svc.request(method, path, headers=headers, body=body)


def service_histories(svc: Service) -> dict:
    out = {}
    for sub in SEED:
        reply = _call(svc, "GET", PATH + sub)
        assert reply.status == 200, reply
        body = reply.json()
        out[sub] = {"favorites": body["favorites"], "view_data": body["view_data"]}
    return out


@pytest.fixture(scope="module")
def seeded_state(activity_service, service_redis):
    """Seed once; a test that finds anything else stored seeds again (only a
    case that failed to refuse, or a control, writes)."""
    state = {}

    def ensure() -> dict:
        current = dump(service_redis, "")
        if current != state.get("dump"):
            service_redis.flushdb()
            for sub, doc in SEED.items():
                reply = _call(
                    activity_service,
                    "PUT",
                    PATH + sub + "?isDelta=false",
                    json.dumps(doc).encode(),
                )
                assert reply.status == 200, reply
            current = dump(service_redis, "")
            assert len(current) == 4
            state["dump"] = current
        return current

    return ensure


@pytest.fixture(scope="module")
def service_cursor_key(activity_service):
    env = activity_service.env
    settings = load_settings(
        {"JWT_SECRET": env["JWT_SECRET"], "KEY_PREFIX": env["KEY_PREFIX"]}, environ={}
    )
    return cursor_key(settings)


@pytest.mark.gunicorn
@pytest.mark.parametrize(("act", "want"), CASES + RAW_CASES)
def test_bad_raw_activity_request_through_gunicorn_writes_nothing(
    activity_service, seeded_state, service_redis, service_cursor_key, act, want
):
    before = seeded_state()

    reply = send_and_close(activity_service.port, http_bytes(act, service_cursor_key))

    check_error(act, want, reply.status, reply.headers, reply.body)
    assert reply.elapsed < PROMPT, reply
    assert dump(service_redis, "") == before
    if act.method in WRITES:
        assert service_histories(activity_service) == READ_BACK


@pytest.mark.gunicorn
@pytest.mark.parametrize(
    "act",
    [p for p in CONTROLS if "cursor" in p.id or p.id in ("pausetime-set", "review")]
    + [
        pytest.param(
            variant("fav-add", target=a(f"fav/{SUB}/caf%C3%A9")), id="encoded-utf-8"
        ),
    ],
)
def test_valid_requests_through_gunicorn_succeed(
    activity_service, seeded_state, service_cursor_key, act
):
    """The cursors made here are the service's own, so the cursor cases above
    are refused for what they change."""
    seeded_state()
    reply = send_and_close(activity_service.port, http_bytes(act, service_cursor_key))
    assert reply.status == 200, reply
    assert reply.json()["result"] == "success"


_IDS = [p.id for p in CASES + RAW_CASES]
assert len(_IDS) == len(set(_IDS)), sorted(i for i in _IDS if _IDS.count(i) > 1)
