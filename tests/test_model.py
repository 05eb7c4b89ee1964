"""Model-based test: random valid, invalid and unauthorized requests.

A hypothesis state machine drives the HTTP API (both backends, via the
``client`` fixture) for ten subscribers whose ids come in confusable pairs
(case; ``/`` and a literal ``%2F``; ``{`` and a literal ``%7B``; NFC and NFD;
256 characters differing in the last), and checks every answer and the
stored state against a small reference model of API.md sections 1-6, written
here from the contract without any helper of ``stat_service``. It proves that:

- valid PUTs (delta and overwrite), GETs, DELETEs and GET-then-overwrite
  round trips, with the subscriber's own token or an admin one, several path
  spellings, content types and framings (up to exactly MAX_ITEMS entries and
  MAX_BODY_BYTES bytes, with or without a Content-Length), leave exactly the
  state the model predicts: GET of the subscriber and of its confusable twin
  after every write;
- an invalid request (one defect from about two hundred: wrong types,
  bounds, unknown fields, bad asset ids, duplicate keys, malformed JSON, NaN,
  bad encodings, content types, MAX_ITEMS, MAX_BODY_BYTES, isDelta values,
  query parameters, ids in the path, methods), in a random mode on a random
  body, gets its documented 4xx in the MetaX error shape and changes not one
  stored byte;
- a request of any method with another subscriber's token, an expired,
  forged, unsigned or unpinned-algorithm token, or none, gets 401 or 403
  whatever else it carries, with an answer that does not depend on the
  target, and changes nothing for either subscriber;
- after every refused request, the keys under the test's prefix are one
  sorted set per subscriber with favorites and one hash per subscriber with
  records (no stray keys, no two ids sharing a key).

Run it longer by hand with environment variables (``-s`` prints the counts):

    STAT_MODEL_EXAMPLES  number of request sequences (default 40)
    STAT_MODEL_STEPS     steps per sequence (default 30)

e.g. ``STAT_MODEL_EXAMPLES=500 STAT_MODEL_STEPS=60 pytest -s tests/test_model.py``.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import hmac
import io
import json
import os
import re
import time
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import PATH, SECRET, bearer, make_token
from tests.support import MESSAGES

# conftest: the redis_client fixture also runs on a real 6-node Redis Cluster.
ALSO_ON_CLUSTER = True
EXAMPLES = int(os.environ.get("STAT_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("STAT_MODEL_STEPS", "30"))
# Small limits, so that valid bodies reach them and invalid ones pass them.
MAX_ITEMS = 6
MAX_BODY_BYTES = 4096

# Confusable pairs (each id's twin is its neighbour): case; "/" and " "
# against a literal "%2F" and "%20" (a double decoding would merge them);
# "{" and "}" against a literal "%7B" and "%7D" (so would a hash-tag escape
# that left "%" alone); a non-ASCII id in NFC against its NFD form (Unicode
# normalization would merge them); two ids of exactly 256 characters that
# differ in the last one (each id is "<8 hex>-" + the name).
SUBSCRIBERS = (
    "alice@example.org",
    "Alice@example.org",
    "a/b c",
    "a%2Fb%20c",
    "{t}:%",
    "%7Bt%7D:%",
    "josé 例 \U0001f600",
    "jose\u0301 例 \U0001f600",
    "L" * 246 + "1",
    "L" * 246 + "2",
)
TWIN = {name: SUBSCRIBERS[i ^ 1] for i, name in enumerate(SUBSCRIBERS)}
# Record separators, and ids whose code-point order differs from their UTF-16
# order (U+FF5E < U+1F600), for the asset_id tie-break.
ASSETS = ("a", "b", "B", "a1", "-", "x|y", "{t}", "é", "\uff5e", "\U0001f600")
INT_FIELDS = ("play_count", "view_time", "pause_time")
COUNT_FIELDS = (*INT_FIELDS, "last_played_on")
RECORD_FIELDS = ("asset_id", *COUNT_FIELDS, "user_rating")
TOP_FIELDS = ("user_id", "favorites", "view_data")

NO_TOKEN_BODY = {
    "result": "error",
    "message": "UNAUTHORIZED",
    "reason": "No Authorization Token",
}

# A long run outlives a 60-second token, so the valid tokens live long.
DAY = 24 * 3600
ADMIN = bearer("back-office-job", admin=True, ttl=DAY)
ADMIN_TOKENS = {
    "admin": ADMIN,
    "admin-among-scopes": bearer("job", ttl=DAY, scope="openid stat:admin profile"),
    "admin-scp-list": bearer("job", ttl=DAY, scp=["stat:read", "stat:admin"]),
}
WRONG_SECRET = "a-different-secret-that-is-32-bytes-or-more"

asset_ids = st.sampled_from(ASSETS)
counts = st.sampled_from([0, 1, 7, 3600, 2**53 - 1]) | st.integers(0, 2**53 - 1)
# Few distinct times, so ties (broken by asset id) are frequent.
played_on = st.sampled_from([0, 1, 1764000000000, 1764000000001, 2**53 - 1])
ratings = st.sampled_from([0, 1, 3, 5, 0.0, 0.1, 2.5, 3.5, 5.0]) | st.floats(
    0, 5, allow_nan=False, allow_infinity=False
)
records = st.fixed_dictionaries(
    {"asset_id": asset_ids},
    optional={
        **{name: counts | st.none() for name in INT_FIELDS},
        "last_played_on": played_on | st.none(),
        "user_rating": ratings | st.none(),
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "favorites": st.lists(asset_ids, max_size=MAX_ITEMS),
        "view_data": st.lists(records, max_size=MAX_ITEMS),
    },
)
# None: no query string (delta is the default).
delta_params = st.sampled_from([None, "true", "TRUE", "tRuE"])
overwrite_params = st.sampled_from(["false", "False", "FALSE"])
is_delta_params = delta_params | overwrite_params
json_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ]
)
# How a valid body travels: padded with whitespace to exactly MAX_BODY_BYTES,
# and/or without a Content-Length (as with Transfer-Encoding: chunked).
framings = st.sampled_from(["plain", "padded", "chunked", "chunked-padded"])
# Path spellings of the same id: the characters left unencoded, or "lower"
# for lower-case percent escapes.
spellings = st.sampled_from(["@", "", "@/{}:", "lower"])
token_kinds = st.sampled_from(["own", *ADMIN_TOKENS])
# What a valid PUT draws besides its isDelta value.
put_strategies = {
    "name": st.sampled_from(SUBSCRIBERS),
    "body": bodies,
    "with_user_id": st.booleans(),
    "ascii_only": st.booleans(),
    "token": token_kinds,
    "spelling": spellings,
    "content_type": json_types,
    "framing": framings,
}


class ReferenceModel:
    """One subscriber's history as API.md describes it."""

    def __init__(self):
        self.favorites: list[str] = []
        self.assets: dict[str, dict] = {}

    def copy(self) -> ReferenceModel:
        other = ReferenceModel()
        other.favorites = list(self.favorites)
        other.assets = {asset: dict(fields) for asset, fields in self.assets.items()}
        return other

    def put(self, body: dict, *, delta: bool) -> None:
        if not delta:
            self.favorites, self.assets = [], {}
        if "favorites" in body:
            kept: list[str] = []
            for guid in body["favorites"]:
                if guid not in kept:
                    kept.append(guid)
            self.favorites = kept
        for obj in body.get("view_data", []):
            record = self.assets.setdefault(obj["asset_id"], {})
            for name, value in obj.items():
                if name == "asset_id":
                    continue
                if value is not None:
                    record[name] = value
                elif delta:  # null removes in delta mode, is absent in overwrite
                    record.pop(name, None)

    def view_data(self) -> list[dict]:
        played = [a for a in self.assets.items() if "last_played_on" in a[1]]
        never = [a for a in self.assets.items() if "last_played_on" not in a[1]]
        played.sort(key=lambda item: item[0])
        played.sort(key=lambda item: item[1]["last_played_on"], reverse=True)
        never.sort(key=lambda item: item[0])
        return [{"asset_id": a, **fields} for a, fields in played + never]


def exact(value):
    """Comparable form in which 3 and 3.0 (and -0.0 and 0.0) differ."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [exact(item) for item in value]
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    return value


# --- JSON text with the flaws json.dumps cannot write ------------------------


class Raw(str):
    """JSON text written as is (NaN, 1e400, "\\ud800", deep nesting)."""


class Pairs(list):
    """An object written member by member, so that a key may repeat."""


def encode(value, *, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        value = Pairs(value.items())
    if isinstance(value, Pairs):
        members = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}: "
            f"{encode(item, ascii_only=ascii_only)}"
            for key, item in value
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(encode(v, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False)


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


NAN_LITERALS = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("nan")]
LONE_SURROGATES = [Raw('"\\ud800"'), Raw('"a\\udc00"'), Raw('"\\udfff\\ud800"')]
NOT_COUNTS = [
    -1,
    -(2**53),
    2**53,
    10**19,  # 20 digits: longer literals are refused while parsing
    1.5,
    1.0,
    0.0,
    "12",
    "",
    True,
    False,
    [],
    [1],
    {},
    Raw("1E2"),
    Raw("-0.0"),
    Raw("1e400"),
]
NOT_RATINGS = [
    -0.001,
    -1,
    5.000001,
    6,
    2**53,
    1e300,
    "3",
    "3.5",
    "NaN",
    True,
    False,
    [3],
    {},
    Raw("1e400"),
    Raw("-1e400"),
]
CONTROL_CHARACTERS = ["\x00", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f"]
NOT_GUIDS = [
    "",
    "x" * 257,
    "é" * 257,
    *(f"a{c}b" for c in CONTROL_CHARACTERS),
    "\x00",
    1,
    0,
    1.5,
    True,
    None,
    [],
    ["a"],
    {},
    {"asset_id": "a"},
    nested(30),
]
NOT_FAVORITE_LISTS = [None, "a", "", 1, True, {}, {"0": "a"}]
NOT_VIEW_DATA_LISTS = [None, "a", 1, True, {}, {"asset_id": "a"}]
NOT_RECORDS = [None, "a", 1, True, [], [{"asset_id": "a"}], {}, {"play_count": 1}]
NOT_STRINGS = [None, 1, True, [], {}]
UNKNOWN_TOP = [
    "favourites",
    "Favorites",
    "FAVORITES",
    "view-data",
    "viewData",
    "userId",
    "user",
    "isDelta",
    "subscriber_id",
    "asset_id",
    "",
    " favorites",
    "favorites\u200b",
]
UNKNOWN_IN_RECORD = [
    "rating",
    "assetId",
    "Asset_id",
    "asset",
    "play_count ",
    "playCount",
    "playcount",
    "last_played",
    "user_id",
    "favorites",
    "",
]
any_json = st.sampled_from([None, 0, 1, "x", "", [], {}, True, 3.5])
unknown_names = st.text(max_size=12)

BAD_IS_DELTA = ["yes", "no", "1", "0", "", "t", "on", "truex", " true", "false "]
BAD_PUT_QUERIES = [
    "isDelta",
    "isDelta=true&isDelta=true",
    "isDelta=false&isDelta=false",
    "isDelta=true&isDelta=false",
    "isdelta=false",
    "IsDelta=false",
    "ISDELTA=false",
    "is_delta=false",
    "delta=false",
    "isDelta=false&x=1",
    "x=1&isDelta=true",
    "x",
    "x=",
    "isDelta=false;x=1",
]
BAD_OTHER_QUERIES = [
    "isDelta=true",
    "isDelta=false",
    "isDelta",
    "x=1",
    "x",
    "subscriber=other",
    "favorites=",
]
NOT_JSON_TYPES = [
    None,
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/jsonx",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; charset=utf-8; foo=bar",
    "application/json; foo=bar",
    "*/*",
    "application/*",
]
# Ids that are not ids (percent-encoded as sent; the admin token sends them).
BAD_PATH_IDS = [
    "",
    "%FF",
    "a%FFb",
    "x%C3",
    "x%ED%A0%80",
    "x%C0%AF",
    "%00",
    "a%00b",
    "a%0Ab",
    "%1F",
    "x%7F",
    "x%C2%85",
    "u" * 257,
    "%C3%A9" * 257,
]
NOT_ALLOWED_METHODS = ["PATCH", "POST", "OPTIONS"]


@dataclass
class Request:
    """One HTTP request, its parts as sent."""

    method: str
    path: str
    query: str | None = None
    content_type: str | None = None
    data: bytes | None = None
    chunked: bool = False  # no Content-Length, as with Transfer-Encoding: chunked


@dataclass(frozen=True)
class Expected:
    """What a refused request must answer."""

    label: str
    status: int = 400
    errors_at: tuple[str, ...] | None = None  # a path into the "errors" member
    named: str | None = None  # a name the reason must contain


def assert_error(response, status: int) -> dict:
    """The MetaX error shape, with ``status`` and nothing leaked."""
    assert response.status_code == status, (status, response.data)
    assert response.mimetype == "application/json", response.data
    payload = response.get_json()
    assert set(payload) <= {"result", "message", "reason", "errors"}, payload
    assert payload["result"] == "error", payload
    assert payload["message"] == MESSAGES[status], payload
    assert isinstance(payload["reason"], str) and payload["reason"].strip(), payload
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and SECRET not in text, text
    return payload


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_token(claims: dict, *, alg="HS256", key: str = SECRET, signature=None):
    """A JWS built by hand, so that any header or signature can be forged."""
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64(json.dumps(claims).encode())}"
    if signature is None:
        digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
        mac = hmac.new(key.encode(), signing_input.encode(), digest).digest()
        signature = b64(mac)
    return f"{signing_input}.{signature}"


# Bad credentials, each with the status it must get (API.md section 4).
AUTH_KINDS = [
    ("other-subscriber", 403),
    ("stranger", 403),
    ("almost-admin", 403),
    ("expired", 401),
    ("expired-admin", 401),
    ("wrong-key", 401),
    ("wrong-key-admin", 401),
    ("alg-none", 401),
    ("unpinned-hs512", 401),
    ("no-exp", 401),
    ("tampered", 401),
    ("malformed", 401),
    ("missing", 401),
    ("basic", 401),
]
ALMOST_ADMIN = [
    {"scope": "stat:admins"},
    {"scope": "stat:admin:read"},
    {"scope": "xstat:admin"},
    {"scope": "STAT:ADMIN"},
    {"scope": "stat:read"},
    {"scope": ["stat:admin"]},
    {"scp": ["stat:administrator"]},
    {"stat:admin": True},
]


REQUEST_DEFECTS = (
    "is-delta",
    "query",
    "content-type",
    "too-many-items",
    "too-large",
    "method",
)
SCHEMA_DEFECTS = (
    "top-level-type",
    "favorite",
    "record",
    "field",
    "unknown",
    "unknown-in-record",
    "user_id",
)
JSON_DEFECTS = (
    "nan",
    "surrogate",
    "duplicate-key",
    "malformed",
    "encoding",
    "not-an-object",
    "deep",
)


def place(draw, items: list, value) -> int:
    """Put ``value`` at a random index of ``items``, within MAX_ITEMS entries."""
    if not items or (len(items) < MAX_ITEMS and draw(st.booleans())):
        index = draw(st.integers(0, len(items)))
        items.insert(index, value)
    else:
        index = draw(st.integers(0, len(items) - 1))
        items[index] = value
    return index


def some_record(draw, body: dict) -> tuple[list, int]:
    """The body's view_data (copied, never empty) and the index of one record."""
    view = [dict(r) for r in body.get("view_data", [])] or [{"asset_id": "a"}]
    body["view_data"] = view
    return view, draw(st.integers(0, len(view) - 1))


def near_ids(own_id: str) -> list[str]:
    """Ids a careless comparison could take for ``own_id``."""
    near = {
        f"{own_id[:8]}-stranger",
        own_id + " ",
        " " + own_id,
        own_id.swapcase(),
        quote(own_id),
        unicodedata.normalize("NFD", own_id),
        own_id + "\x00",
        own_id[:-1],
        "",
    }
    return sorted(near - {own_id})


def schema_defect(draw, kind: str, body: dict, own_id: str):
    """A body that is valid JSON with one schema error, and where it is reported."""
    body = dict(body)
    if kind == "top-level-type":
        field = draw(st.sampled_from(["favorites", "view_data"]))
        pool = NOT_FAVORITE_LISTS if field == "favorites" else NOT_VIEW_DATA_LISTS
        body[field] = draw(st.sampled_from(pool))
        return body, Expected(f"{field}={body[field]!r}", 400, (field,), field)
    if kind == "favorite":
        favorites = list(body.get("favorites", []))
        value = draw(st.sampled_from(NOT_GUIDS))
        index = place(draw, favorites, value)
        body["favorites"] = favorites
        at = ("favorites", str(index))
        return body, Expected(f"favorite {value!r:.40}", 400, at, "favorites")
    if kind == "record":
        view = [dict(r) for r in body.get("view_data", [])]
        value = draw(st.sampled_from(NOT_RECORDS))
        index = place(draw, view, value)
        body["view_data"] = view
        at = ("view_data", str(index))
        return body, Expected(f"record {value!r}", 400, at, "view_data")
    if kind == "field":
        view, index = some_record(draw, body)
        field = draw(st.sampled_from(RECORD_FIELDS))
        if field == "asset_id":
            value = draw(st.sampled_from([*NOT_GUIDS, "missing"]))
        else:
            value = draw(
                st.sampled_from(NOT_RATINGS if field == "user_rating" else NOT_COUNTS)
            )
        if value == "missing":
            del view[index]["asset_id"]
        else:
            view[index][field] = value
        at = ("view_data", str(index), field)
        return body, Expected(f"{field}={value!r:.40}", 400, at, field)
    if kind == "unknown":
        name = draw(
            st.sampled_from(UNKNOWN_TOP) | unknown_names.filter(lambda n: n not in body)
        )
        body[name] = draw(any_json)
        return body, Expected("unknown field", 400, (name,), name)
    if kind == "unknown-in-record":
        view, index = some_record(draw, body)
        name = draw(
            st.sampled_from(UNKNOWN_IN_RECORD)
            | unknown_names.filter(lambda n: n not in RECORD_FIELDS)
        )
        view[index][name] = draw(any_json)
        at = ("view_data", str(index), name)
        return body, Expected("unknown field in record", 400, at, name)
    assert kind == "user_id"
    value = draw(st.sampled_from([*NOT_STRINGS, *near_ids(own_id)]))
    body = {"user_id": value, **{k: v for k, v in body.items() if k != "user_id"}}
    return body, Expected(f"user_id={value!r:.20}", 400, ("user_id",), "user_id")


def json_defect(draw, kind: str, body: dict, own_id: str) -> tuple[bytes, Expected]:
    """A body that is not strict JSON (RFC 8259, I-JSON): always 400."""
    body = dict(body)
    if kind == "nan":
        literal = draw(st.sampled_from(NAN_LITERALS))
        where = draw(st.sampled_from(["user_rating", "view_time", "favorite", "top"]))
        if where == "favorite":
            body["favorites"] = list(body.get("favorites", []))
            place(draw, body["favorites"], literal)
        elif where == "top":
            body["favorites"] = literal
        else:
            view, index = some_record(draw, body)
            view[index][where] = literal
        return encode(body).encode(), Expected(f"{literal} in {where}")
    if kind == "surrogate":
        literal = draw(st.sampled_from(LONE_SURROGATES))
        where = draw(st.sampled_from(["favorite", "asset_id", "user_id"]))
        if where == "favorite":
            body["favorites"] = list(body.get("favorites", []))
            place(draw, body["favorites"], literal)
        elif where == "asset_id":
            view, index = some_record(draw, body)
            view[index]["asset_id"] = literal
        else:
            body["user_id"] = literal
        return encode(body).encode(), Expected(f"lone surrogate in {where}")
    if kind == "duplicate-key":
        if draw(st.booleans()):
            key = draw(st.sampled_from(TOP_FIELDS))
            values = {
                "user_id": st.just(own_id),
                "favorites": st.lists(asset_ids, max_size=3),
                "view_data": st.lists(records, max_size=2),
            }[key]
            obj, where = body, "body"
        else:
            view, index = some_record(draw, body)
            key = draw(st.sampled_from(RECORD_FIELDS))
            values = {"asset_id": asset_ids, "user_rating": ratings}.get(key, counts)
            obj, where = view[index], "record"
        pairs = Pairs((k, v) for k, v in obj.items() if k != key)
        for value in (draw(values), draw(values)):  # equal values are no excuse
            pairs.insert(draw(st.integers(0, len(pairs))), (key, value))
        if where == "body":
            body = pairs
        else:
            view[index] = pairs
        return encode(body).encode(), Expected(f"duplicate {key} in {where}")
    if kind == "malformed":
        text = encode(body)
        variant = draw(
            st.sampled_from(
                [
                    "truncated",
                    "trailing",
                    "leading",
                    "trailing-comma",
                    "single-quotes",
                    "raw-control",
                    "bad-escape",
                    "bad-number",
                    "bad-literal",
                ]
            )
        )
        if variant == "truncated":
            text = text[: draw(st.integers(0, len(text) - 1))]
        elif variant == "trailing":
            text += draw(st.sampled_from([" x", "}", "{}", ",", "]", " null", "\x00"]))
        elif variant == "leading":
            text = (
                draw(st.sampled_from(["x", ",", "/* c */ ", "// c\n", "\x00"])) + text
            )
        elif variant == "trailing-comma":
            text = text[:-1] + ", }"
        elif variant == "single-quotes":
            text = text.replace('"', "'") if '"' in text else "{'favorites': []}"
        else:
            literal = {
                "raw-control": st.sampled_from(
                    ["\x00", "\x01", "\t", "\n", "\x1f"]
                ).map(lambda c: Raw(f'"a{c}b"')),
                "bad-escape": st.sampled_from(
                    [r'"a\x41"', r'"\u12"', r'"\q"', '"a\\"']
                ),
                "bad-number": st.sampled_from(
                    ["01", "1.", ".5", "+1", "0x10", "1e", "--1"]
                ),
                "bad-literal": st.sampled_from(["True", "None", "undefined", "nul"]),
            }[variant]
            value = Raw(draw(literal))
            if variant in ("raw-control", "bad-escape"):
                body["favorites"] = list(body.get("favorites", []))
                place(draw, body["favorites"], value)
            else:
                view, index = some_record(draw, body)
                view[index][draw(st.sampled_from(COUNT_FIELDS))] = value
            text = encode(body)
        return text.encode(), Expected(f"malformed {variant}")
    if kind == "encoding":
        variant = draw(
            st.sampled_from(
                ["bom", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "bad"]
            )
        )
        text = encode(body, ascii_only=draw(st.booleans()))
        if variant == "bom":
            return codecs.BOM_UTF8 + text.encode(), Expected("UTF-8 BOM")
        if variant != "bad":
            return text.encode(variant), Expected(f"encoded as {variant}")
        bad = draw(
            st.sampled_from(
                [b"caf\xe9", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
                + [b"\xc3", b"\x80", b"\xe2\x82"]
            )
        )
        body["favorites"] = list(body.get("favorites", []))
        place(draw, body["favorites"], Raw('"@@"'))
        data = encode(body).encode().replace(b"@@", bad)
        return data, Expected(f"not UTF-8: {bad!r}")
    if kind == "not-an-object":
        value = draw(
            st.sampled_from([Raw("[]"), [body], "favorites", 1, None, True, 3.5, ""])
        )
        return encode(value).encode(), Expected(f"body {value!r:.20}")
    assert kind == "deep"
    depth = draw(st.sampled_from([50, 1000, 1900]))
    where = draw(st.sampled_from(["body", "favorites", "field", "unknown"]))
    if where == "body":
        return nested(depth).encode(), Expected(f"nesting {depth} as body")
    if where == "field":
        view, index = some_record(draw, {})
        view[index]["play_count"] = nested(depth)
        return encode({"view_data": view}).encode(), Expected(f"nesting {depth}")
    key = "favorites" if where == "favorites" else "x"
    return encode({key: nested(depth)}).encode(), Expected(f"nesting {depth} in {key}")


def state_machine(client, snapshot, stats: Counter, reasons: dict):
    class StatApiMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            # Each sequence gets its own subscribers, so examples never share data.
            run = uuid.uuid4().hex[:8]
            self.ids = {name: f"{run}-{name}" for name in SUBSCRIBERS}
            self.models = {name: ReferenceModel() for name in SUBSCRIBERS}
            self.tokens = {
                name: make_token(sub, ttl=DAY) for name, sub in self.ids.items()
            }
            stats["examples"] += 1

        # --- requests ---------------------------------------------------------

        def path(self, name: str, spelling: str = "@") -> str:
            if spelling == "lower":
                encoded = re.sub(
                    "%[0-9A-F]{2}", lambda m: m[0].lower(), quote(self.ids[name], "")
                )
            else:
                encoded = quote(self.ids[name], safe=spelling)
            return PATH + encoded

        def headers(self, name: str, token: str) -> dict:
            if token == "own":
                return {"Authorization": f"Bearer {self.tokens[name]}"}
            return ADMIN_TOKENS[token]

        def send(self, req: Request, headers: dict):
            stats["requests"] += 1
            headers = dict(headers)
            kwargs = {"method": req.method, "headers": headers}
            if req.content_type is not None:
                headers["Content-Type"] = req.content_type
            if req.data is not None and req.chunked:
                kwargs["input_stream"] = io.BytesIO(req.data)
                kwargs["environ_base"] = {"wsgi.input_terminated": True}
            elif req.data is not None:
                kwargs["data"] = req.data
            url = req.path + ("" if req.query is None else "?" + req.query)
            response = client.open(url, **kwargs)
            stats[f"status {response.status_code}"] += 1
            return response

        def check(self, name):
            model = self.models[name]
            response = self.send(Request("GET", self.path(name)), ADMIN)
            assert response.status_code == 200, response.get_json()
            expected = {
                "result": "success",
                "subscriber_id": self.ids[name],
                "favorites": model.favorites,
                "view_data": model.view_data(),
            }
            assert exact(response.get_json()) == exact(expected)

        def check_storage(self, before):
            """Nothing stored changed, and the keys are the ones the model needs."""
            after = snapshot()
            assert after == before
            kinds = Counter(kind for kind, _ in after.values())
            assert kinds == Counter(
                zset=sum(bool(m.favorites) for m in self.models.values()),
                hash=sum(bool(m.assets) for m in self.models.values()),
            ), after

        # --- valid requests ---------------------------------------------------

        @rule(is_delta=delta_params, **put_strategies)
        def put_delta(self, name, body, is_delta, **how):
            self._put(name, body, is_delta, **how)

        @rule(is_delta=overwrite_params, **put_strategies)
        def put_overwrite(self, name, body, is_delta, **how):
            self._put(name, body, is_delta, **how)

        def _put(
            self,
            name,
            body,
            is_delta,
            *,
            with_user_id,
            ascii_only,
            token,
            spelling,
            content_type,
            framing,
        ):
            stats["steps"] += 1
            delta = is_delta is None or is_delta.lower() == "true"
            if with_user_id:
                body = {"user_id": self.ids[name], **body}
            data = json.dumps(body, ensure_ascii=ascii_only).encode()
            if framing.endswith("padded"):
                assert len(data) <= MAX_BODY_BYTES
                data = b"{" + b" " * (MAX_BODY_BYTES - len(data)) + data[1:]
            req = Request(
                "PUT",
                self.path(name, spelling),
                query=None if is_delta is None else f"isDelta={is_delta}",
                content_type=content_type,
                data=data,
                chunked=framing.startswith("chunked"),
            )
            response = self.send(req, self.headers(name, token))
            model = self.models[name]
            model.put(body, delta=delta)
            assert response.status_code == 200, response.get_json()
            assert response.get_json() == {
                "result": "success",
                "subscriber_id": self.ids[name],
                "is_delta": delta,
                "favorites": len(model.favorites),
                "view_data": len({o["asset_id"] for o in body.get("view_data", [])}),
                "evicted": 0,  # the model's histories stay far below the bounds
            }
            self.check(name)
            self.check(TWIN[name])

        @rule(
            source=st.sampled_from(SUBSCRIBERS),
            dest=st.sampled_from(SUBSCRIBERS),
            token=token_kinds,
        )
        def copy(self, source, dest, token):
            """A GET sent back with isDelta=false reproduces the state."""
            stats["steps"] += 1
            got = self.send(Request("GET", self.path(source)), ADMIN).get_json()
            body = {"favorites": got["favorites"], "view_data": got["view_data"]}
            req = Request(
                "PUT",
                self.path(dest),
                query="isDelta=false",
                content_type="application/json",
                data=json.dumps(body).encode(),
            )
            if len(body["view_data"]) > MAX_ITEMS:
                # More assets than one request may carry (MAX_ITEMS is small here).
                before = snapshot()
                response = self.send(req, self.headers(dest, token))
                assert_error(response, 413)
                self.check_storage(before)
                return
            response = self.send(req, self.headers(dest, token))
            self.models[dest] = self.models[source].copy()
            assert response.status_code == 200, response.get_json()
            assert response.get_json()["view_data"] == len(got["view_data"])
            self.check(dest)
            self.check(TWIN[dest])

        # Erasing empty histories over and over would crowd out the writes.
        @precondition(
            lambda self: any(m.favorites or m.assets for m in self.models.values())
        )
        @rule(name=st.sampled_from(SUBSCRIBERS), token=token_kinds, spelling=spellings)
        def delete(self, name, token, spelling):
            stats["steps"] += 1
            req = Request("DELETE", self.path(name, spelling))
            response = self.send(req, self.headers(name, token))
            self.models[name] = ReferenceModel()
            assert response.status_code == 204
            assert response.data == b""
            self.check(name)
            self.check(TWIN[name])

        @rule(name=st.sampled_from(SUBSCRIBERS), token=token_kinds, spelling=spellings)
        def get(self, name, token, spelling):
            stats["steps"] += 1
            model = self.models[name]
            req = Request("GET", self.path(name, spelling))
            response = self.send(req, self.headers(name, token))
            assert response.status_code == 200, response.get_json()
            assert exact(response.get_json()) == exact(
                {
                    "result": "success",
                    "subscriber_id": self.ids[name],
                    "favorites": model.favorites,
                    "view_data": model.view_data(),
                }
            )

        # --- invalid requests -------------------------------------------------

        def bad_request(self, draw, name, method, *, admin, routed=True):
            """A request with exactly one defect, and what it must answer.

            ``routed=False`` leaves out the methods that no route serves (405
            comes before authentication).
            """
            if method != "PUT":
                kinds = ["query", "path"] if admin else ["query"]
                kind = draw(st.sampled_from(kinds))
                if kind == "query":
                    query = draw(st.sampled_from(BAD_OTHER_QUERIES))
                    req = Request(method, self.path(name), query=query)
                    return req, Expected(f"{method} query {query}")
                sid = draw(st.sampled_from(BAD_PATH_IDS))
                return Request(method, PATH + sid), Expected(f"{method} path {sid}")
            body = draw(bodies)
            if draw(st.booleans()):
                body = {"user_id": self.ids[name], **body}
            is_delta = draw(is_delta_params)
            req = Request(
                "PUT",
                self.path(name),
                query=None if is_delta is None else f"isDelta={is_delta}",
                content_type=draw(json_types),
            )
            kinds = [*REQUEST_DEFECTS, *SCHEMA_DEFECTS, *JSON_DEFECTS]
            if not routed:
                kinds.remove("method")
            if admin:
                kinds.append("path")
            kind = draw(st.sampled_from(kinds))
            if kind in SCHEMA_DEFECTS:
                value, expected = schema_defect(draw, kind, body, self.ids[name])
                req.data = encode(value, ascii_only=draw(st.booleans())).encode()
            elif kind in JSON_DEFECTS:
                req.data, expected = json_defect(draw, kind, body, self.ids[name])
            else:
                req.data = encode(body).encode()
                expected = self.request_defect(draw, kind, req, body)
            return req, expected

        def request_defect(self, draw, kind, req: Request, body) -> Expected:
            """Spoil ``req`` (a valid PUT) in its query, headers, size or path."""
            if kind == "is-delta":
                value = draw(st.sampled_from(BAD_IS_DELTA))
                req.query = urlencode({"isDelta": value})
                return Expected(f"isDelta={value!r}")
            if kind == "query":
                req.query = draw(st.sampled_from(BAD_PUT_QUERIES))
                return Expected(f"query {req.query}")
            if kind == "content-type":
                req.content_type = draw(st.sampled_from(NOT_JSON_TYPES))
                return Expected(f"content type {req.content_type}", 415)
            if kind == "too-many-items":
                field = draw(st.sampled_from(["favorites", "view_data"]))
                items = asset_ids if field == "favorites" else records
                # Repeats count: the limit is on the entries as sent.
                entries = st.lists(
                    items, min_size=MAX_ITEMS + 1, max_size=MAX_ITEMS + 3
                )
                body = {**body, field: draw(entries)}
                req.data = encode(body).encode()
                return Expected(f"{field} over MAX_ITEMS", 413)
            if kind == "too-large":
                over = draw(st.integers(1, 200))
                padding = b" " * (MAX_BODY_BYTES + over - len(req.data))
                req.data = b"{" + padding + req.data[1:]
                req.chunked = draw(st.booleans())
                return Expected(f"over MAX_BODY_BYTES chunked={req.chunked}", 413)
            if kind == "method":
                req.method = draw(st.sampled_from(NOT_ALLOWED_METHODS))
                return Expected(f"method {req.method}", 405)
            assert kind == "path"
            sid = draw(st.sampled_from(BAD_PATH_IDS))
            req.path = PATH + sid
            return Expected(f"PUT path {sid}")

        @rule(data=st.data(), count=st.integers(1, 8))
        def invalid_requests(self, data, count):
            """Each has one defect: its 4xx in the MetaX shape, no byte changed."""
            stats["steps"] += 1
            draw = data.draw
            before = snapshot()
            for _ in range(count):
                name = draw(st.sampled_from(SUBSCRIBERS), label="name")
                method = draw(st.sampled_from(["PUT", "PUT", "PUT", "GET", "DELETE"]))
                token = draw(token_kinds, label="token")
                admin = token != "own"
                req, expected = self.bad_request(draw, name, method, admin=admin)
                stats[f"defect {expected.label}"] += 1
                response = self.send(req, self.headers(name, token))
                self.assert_refused(req, response, expected)
            self.check_storage(before)

        def assert_refused(self, req: Request, response, expected: Expected):
            payload = assert_error(response, expected.status)
            if expected.errors_at is not None:
                node = payload.get("errors")
                for part in expected.errors_at:
                    assert isinstance(node, dict) and part in node, (expected, payload)
                    node = node[part]
                assert node, payload
            if expected.named is not None:
                assert expected.named in payload["reason"], (expected, payload)
            if expected.status == 405:
                allowed = {m.strip() for m in response.headers["Allow"].split(",")}
                assert {"GET", "PUT", "DELETE"} <= allowed
                assert req.method not in allowed

        # --- bad credentials --------------------------------------------------

        def bad_credentials(self, draw, kind, name):
            """Headers of ``kind`` aimed at ``name``, their owner and a variant label.

            Every answer to the same label must be the same, whatever the target.
            """
            sub = self.ids[name]
            now = int(time.time())
            admin = {"scope": "stat:admin"}
            others = [n for n in SUBSCRIBERS if n != name]
            if kind == "other-subscriber":
                owner = draw(st.sampled_from(others))
                return self.headers(owner, "own"), owner, kind
            if kind == "stranger":
                stranger = draw(st.sampled_from([i for i in near_ids(sub) if i]))
                return bearer(stranger, ttl=DAY), None, kind
            if kind == "almost-admin":
                owner = draw(st.sampled_from(others))
                claims = draw(st.sampled_from(ALMOST_ADMIN))
                return bearer(self.ids[owner], ttl=DAY, **claims), owner, kind
            if kind == "tampered":
                # Another subscriber's header and signature, an admin payload.
                header, _, signature = self.tokens[draw(st.sampled_from(others))].split(
                    "."
                )
                payload = b64(
                    json.dumps({"sub": sub, "exp": now + DAY, **admin}).encode()
                )
                token = f"{header}.{payload}.{signature}"
                return {"Authorization": f"Bearer {token}"}, None, kind
            if kind == "malformed":
                own = self.tokens[name]
                variants = {
                    "not a JWT": "Bearer not-a-jwt",
                    "three junk segments": "Bearer a.b.c",
                    "four segments": f"Bearer {own}.x",
                    "two tokens": f"Bearer {own} {own}",
                    "cut signature": f"Bearer {own[:-2]}",
                }
                label = draw(st.sampled_from(sorted(variants)))
                return {"Authorization": variants[label]}, None, f"{kind} {label}"
            if kind == "missing":
                return {}, None, kind
            if kind == "basic":
                return {"Authorization": "Basic dXNlcjpwYXNz"}, None, kind
            label = kind
            claims = {"sub": sub, "exp": now + DAY}
            if kind.endswith("admin") or kind in ("alg-none", "no-exp"):
                claims.update(admin)
            if kind.startswith("expired"):
                # JWT_LEEWAY is 30 s: 31 s late is just expired.
                claims["exp"] = now - draw(st.sampled_from([3600, 31]))
                token = hand_token(claims)
            elif kind.startswith("wrong-key"):
                token = hand_token(claims, key=WRONG_SECRET)
            elif kind == "alg-none":
                alg = draw(st.sampled_from(["none", "None", "NONE"]))
                signed = draw(st.booleans())
                signature = hand_token(claims).rsplit(".", 1)[1] if signed else ""
                token = hand_token(claims, alg=alg, signature=signature)
                label = f"{kind} {alg} signed={signed}"
            elif kind == "unpinned-hs512":
                token = hand_token(claims, alg="HS512")
            else:
                assert kind == "no-exp"
                del claims["exp"]
                token = hand_token(claims)
            return {"Authorization": f"Bearer {token}"}, None, label

        @rule(data=st.data(), count=st.integers(1, 3))
        def bad_tokens(self, data, count):
            """401/403 whatever else is wrong; no subscriber's data changes."""
            stats["steps"] += 1
            draw = data.draw
            before = snapshot()
            involved = set()
            for _ in range(count):
                name = draw(st.sampled_from(SUBSCRIBERS), label="name")
                kind, status = draw(st.sampled_from(AUTH_KINDS), label="credentials")
                headers, owner, label = self.bad_credentials(draw, kind, name)
                involved |= {name, owner} - {None}
                method = draw(st.sampled_from(["PUT", "GET", "DELETE"]))
                if draw(st.booleans(), label="valid otherwise"):
                    req = Request(method, self.path(name, draw(spellings)))
                    if method == "PUT":
                        is_delta = draw(is_delta_params)
                        req.query = None if is_delta is None else f"isDelta={is_delta}"
                        req.content_type = "application/json"
                        req.data = json.dumps(draw(bodies)).encode()
                else:
                    req, _ = self.bad_request(
                        draw, name, method, admin=False, routed=False
                    )
                stats[f"credentials {label}"] += 1
                response = self.send(req, headers)
                payload = assert_error(response, status)
                assert "errors" not in payload, payload
                # The answer is the same whatever the target and its data.
                key = "forbidden" if status == 403 else label
                assert reasons.setdefault(key, payload["reason"]) == payload["reason"]
                assert self.ids[name] not in response.get_data(as_text=True)
                challenge = response.headers.get("WWW-Authenticate", "")
                assert challenge.startswith("Bearer"), challenge
                if kind in ("missing", "basic"):
                    assert payload == NO_TOKEN_BODY
                    assert "error=" not in challenge, challenge
                elif status == 401:
                    assert 'error="invalid_token"' in challenge, challenge
                else:
                    assert 'error="insufficient_scope"' in challenge, challenge
            self.check_storage(before)
            for name in sorted(involved):
                self.check(name)

        def teardown(self):
            for name in SUBSCRIBERS:
                client.delete(self.path(name), headers=ADMIN)

    return StatApiMachine


@pytest.fixture(autouse=True)
def _small_limits(settings):
    settings["MAX_ITEMS"] = MAX_ITEMS
    settings["MAX_BODY_BYTES"] = MAX_BODY_BYTES


def test_random_requests_leave_the_state_the_reference_model_predicts(
    client, snapshot, request
):
    stats: Counter = Counter()
    started = time.monotonic()
    run_state_machine_as_test(
        state_machine(client, snapshot, stats, {}),
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    backend = request.node.callspec.params["redis_client"]
    defects = sorted(key for key in stats if key.startswith("defect "))
    statuses = sorted((k, v) for k, v in stats.items() if k.startswith("status "))
    print(
        f"\nmodel [{backend}]: {stats['examples']} examples, {stats['steps']} steps, "
        f"{stats['requests']} requests in {time.monotonic() - started:.1f} s; "
        f"{sum(stats[d] for d in defects)} invalid requests of {len(defects)} kinds; "
        + ", ".join(f"{k}: {v}" for k, v in statuses)
    )
    if stats["steps"] >= 500:  # a default run reaches each common answer
        for status in (200, 400, 401, 403):
            assert stats[f"status {status}"], (status, stats)
    # Each sequence ends by erasing its subscribers: not one key may remain.
    assert snapshot() == {}


@pytest.mark.parametrize(
    "body", [{"_schema": 1}, {"view_data": [{"asset_id": "a", "_schema": 1}]}]
)
def test_unknown_field_named_like_marshmallows_schema_key_is_named(client, body):
    """The one unknown name the machine leaves out: the reason must name it too."""
    response = client.put(PATH + "u", json=body, headers=bearer("u"))
    payload = assert_error(response, 400)
    assert "_schema" in payload["reason"], payload
