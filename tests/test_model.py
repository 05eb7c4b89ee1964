"""Model-based test: random valid, invalid and unauthorized requests.

A hypothesis state machine drives the HTTP API (fakeredis, a real Redis and
a real Redis Cluster, via the ``redis_client`` fixture; each under both
``HISTORY_FULL`` settings) for ten subscribers whose ids come in confusable
pairs (case; ``/`` and a literal ``%2F``; ``{`` and a literal ``%7B``; NFC and
NFD; 256 characters differing in the last), and checks every answer and the
stored state against a small reference model of API.md sections 1-6, 8 and
9, written here from the contract without any helper of ``stat_service``. It
proves that:

- valid PUTs (delta and overwrite), GETs, DELETEs and GET-then-overwrite
  round trips, with the subscriber's own token or an admin one, several path
  spellings, content types and framings (up to exactly MAX_ITEMS entries and
  MAX_BODY_BYTES bytes, with or without a Content-Length), leave exactly the
  state the model predicts: GET of the subscriber and of its confusable twin
  after every write;
- the bounds of section 8 hold exactly, with small ``MAX_RECORDS`` and
  ``MAX_FAVORITES`` that the app is rebuilt with at random moments (so
  histories also sit above a lowered bound): a write that would add records
  past the bound is 409 with nothing written (``reject``) or evicts the least
  recently played records not written by it (``evict``), a request that alone
  passes a bound is 409 under both, writes that add nothing always pass, and
  every write's 200 says how many records it evicted;
- the activity family of section 9 (favorite add and remove, watch mark and
  remove, pause time set and get, review; parameters in the query or a form
  body) answers exactly what the model predicts and writes the same history,
  and its three lists (fav, watch, continue) walked page by page with
  ``limit`` and ``after`` give the model's pages, ``total`` and ``next``, also
  while other writes happen between the pages; a walk returns every item
  that did not change during it exactly once, in order;
- an invalid request (one defect from about two hundred: wrong types,
  bounds, unknown fields, bad asset ids, duplicate keys, malformed JSON, NaN,
  bad encodings, content types, MAX_ITEMS, MAX_BODY_BYTES, isDelta values,
  query parameters, ids in the path, methods; on the activity paths unknown,
  repeated and bad parameters, forged cursors, bad form bodies, media types,
  unknown lists, wrong segment counts, methods), in a random mode on a random
  body, gets its documented 4xx in the MetaX error shape and changes not one
  stored byte;
- a request of any method with another subscriber's token, an expired,
  forged, unsigned or unpinned-algorithm token, or none, gets 401 or 403
  whatever else it carries (activity paths included), with an answer that
  does not depend on the target, and changes nothing for either subscriber;
- after every step, the keys under the test's prefix are exactly the
  model's: one sorted set per subscriber with favorites (members in order,
  positions rising; the favorites a write leaves alone keep theirs, the
  others' are learned, see ``ReferenceModel``) and one hash per subscriber
  with records (fields and encoded values), in the key schema and record
  encoding documented in ``stat_service/storage/store.py`` and
  ``stat_service/storage/records.py``.

Run it longer by hand with environment variables (``-s`` prints the counts):

    STAT_MODEL_EXAMPLES  request sequences per backend and HISTORY_FULL
                         setting (default 20)
    STAT_MODEL_STEPS     steps per sequence (default 30)

e.g. ``STAT_MODEL_EXAMPLES=500 STAT_MODEL_STEPS=60 pytest -s tests/test_model.py``.
"""

from __future__ import annotations

import base64
import codecs
import copy
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
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stat_service import create_app
from tests.conftest import PATH, SECRET, bearer, make_token
from tests.support import MESSAGES

# conftest: the redis_client fixture also runs on a real 6-node Redis Cluster.
ALSO_ON_CLUSTER = True
EXAMPLES = int(os.environ.get("STAT_MODEL_EXAMPLES", "20"))
STEPS = int(os.environ.get("STAT_MODEL_STEPS", "30"))
# Small limits, so that valid bodies reach them and invalid ones pass them.
MAX_ITEMS = 6
MAX_BODY_BYTES = 4096
# MAX_RECORDS and MAX_FAVORITES are drawn per sequence from this range, and
# redrawn when the app is rebuilt mid-sequence (never above MAX_ITEMS).
FIRST_BOUNDS = st.integers(3, MAX_ITEMS)
LATER_BOUNDS = st.integers(1, MAX_ITEMS)

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
# order (U+FF5E < U+1F600), for the asset_id tie-break; "a/b" and a literal
# "a%2Fb" are one path segment each on the activity paths; "?&=#" would
# split a query or a form body if sent unescaped.
ASSETS = (
    "a",
    "b",
    "B",
    "a1",
    "-",
    "x|y",
    "{t}",
    "é",
    "\uff5e",
    "\U0001f600",
    "a/b",
    "a%2Fb",
    "?&=#",
)
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

# Half the requests go to the first pair, so that its histories reach the
# bounds; the others keep the confusable pairs apart.
names = st.sampled_from(SUBSCRIBERS[:2]) | st.sampled_from(SUBSCRIBERS)
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
    "name": names,
    "body": bodies,
    "with_user_id": st.booleans(),
    "ascii_only": st.booleans(),
    "token": token_kinds,
    "spelling": spellings,
    "content_type": json_types,
    "framing": framings,
}

# --- the activity family (section 9) -----------------------------------------

ACTIVITY = "/metax/2.1/activity/"
FORM = "application/x-www-form-urlencoded"
PAUSE_IGNORED_BELOW_MS = 10_000
LISTS = ("fav", "watch", "continue")
# (list, ids in the path) -> method -> the parameters it takes besides `type`.
ACTIVITY_ROUTES = {
    ("fav", 1): {"GET": ("limit", "after")},
    ("fav", 2): {"PUT": (), "DELETE": ()},
    ("watch", 1): {"GET": ("limit", "after")},
    ("watch", 2): {"PUT": ("last_played_on",), "DELETE": ()},
    ("continue", 1): {"GET": ("limit", "after")},
    ("pausetime", 2): {"GET": (), "PUT": ("time",)},
    ("review", 2): {"PUT": ("score",)},
}
TYPES = ("vod", "episodic", "episode")
# An id is one path segment: "/" is always escaped; the others as drawn.
segment_spellings = st.sampled_from(["", "@", "@{}:|", "lower"])
# How an activity request travels: the token, the path spelling, MetaX's
# ignored `type`, which parameters of a PUT or DELETE go in a form body
# (the others in the query) and the form body's media type.
activity_how = st.fixed_dictionaries(
    {
        "token": token_kinds,
        "spelling": segment_spellings,
        "type": st.sampled_from([None, None, None, *TYPES]),
        "in_body": st.sets(
            st.sampled_from(["time", "last_played_on", "score", "type"])
        ),
        "form_type": st.sampled_from(
            [FORM, f"{FORM}; charset=utf-8", f"{FORM};charset=UTF-8"]
        ),
    }
)
pause_times = st.sampled_from(
    [0, 1, 999, 9_999, 10_000, 10_001, 10_999, 754_000, 2**53 - 1]
) | st.integers(0, 2**53 - 1)
# `limit` of a page: None (the default, 50: one page here), small ones so
# that walks take several pages, and the largest.
page_limits = st.sampled_from([None, 1, 1, 2, 2, 3, 5, 500])


@st.composite
def scores(draw) -> tuple[str, int | float]:
    """A `score` parameter as sent and the JSON value it stands for."""
    value = draw(ratings)
    text = json.dumps(value)
    if isinstance(value, float) and "e" not in text and draw(st.booleans()):
        text += "0"  # 2.50 is 2.5, 4.00 is 4.0: still a float
    return text, value


@dataclass(frozen=True)
class Bounds:
    """MAX_RECORDS, MAX_FAVORITES and HISTORY_FULL=evict of the app in use."""

    max_records: int
    max_favorites: int
    evict: bool


@dataclass(frozen=True)
class Conflict:
    """A 409: the reason names one of these (setting, count, hint): the
    bound, the count the history would reach, and how to make room."""

    options: tuple[tuple[str, int, str], ...]


def recency(asset_id: str, fields: dict) -> tuple[int, str]:
    """A record's place in the order of section 2, as a sort key: most
    recently played first, never played last, then asset id (code points)."""
    return (-fields.get("last_played_on", -1), asset_id)


class ReferenceModel:
    """One subscriber's history as API.md describes it.

    ``favorites`` maps each guid to its position in the list (what a page
    cursor names), in stored order. API.md fixes only what a walk needs:
    the favorites a write leaves alone keep their positions (an add, a
    removal, a delta without favorites, and a whole list sent again whose
    staying favorites keep their order), an added one goes after them all,
    and positions rise in list order. The values the service picks for the
    others are learned from the store after the write (``None`` until then).
    """

    def __init__(self):
        self.favorites: dict[str, float | None] = {}
        self.assets: dict[str, dict] = {}

    # --- writes: each returns a Conflict (nothing changed) or what a 200 says

    def put(self, body: dict, *, delta: bool, bounds: Bounds) -> Conflict | int:
        """A PUT of section 1; the records evicted to make room, or a Conflict."""
        written = list(dict.fromkeys(o["asset_id"] for o in body.get("view_data", [])))
        favorites = None
        if "favorites" in body:
            favorites = list(dict.fromkeys(body["favorites"]))
        options = []
        # A request that alone writes more than a bound: 409 in both modes.
        if len(written) > bounds.max_records:
            options.append(("MAX_RECORDS", len(written), ""))
        if favorites is not None and len(favorites) > bounds.max_favorites:
            options.append(("MAX_FAVORITES", len(favorites), ""))
        victims: list[str] = []
        if delta:
            added = [a for a in written if a not in self.assets]
            reach = len(self.assets) + len(added)
            if added and reach > bounds.max_records:
                if bounds.evict and not options:
                    victims = self.least_recent(reach - bounds.max_records, written)
                elif not bounds.evict:
                    # Room is made by removing records or by an overwrite.
                    options.append(("MAX_RECORDS", reach, "isDelta=false"))
        if options:
            return Conflict(tuple(options))
        if not delta:
            self.assets = {}
            favorites = favorites or []
        if favorites is not None:
            self.favorites = self.replaced(favorites)
        for asset in victims:
            del self.assets[asset]
        for obj in body.get("view_data", []):
            record = self.assets.setdefault(obj["asset_id"], {})
            for name, value in obj.items():
                if name == "asset_id":
                    continue
                if value is not None:
                    record[name] = value
                elif delta:  # null removes in delta mode, is absent in overwrite
                    record.pop(name, None)
        return len(victims)

    def least_recent(self, count: int, spared) -> list[str]:
        """The ``count`` records eviction removes: never played first, then
        the oldest, ties by asset id; never one of ``spared``."""
        candidates = [a for a in self.assets if a not in spared]
        candidates.sort(key=lambda a: (self.assets[a].get("last_played_on", -1), a))
        assert count <= len(candidates)  # the request alone is within the bound
        return candidates[:count]

    def set_field(self, asset: str, name: str, value, bounds: Bounds):
        """An activity PUT of one field: a delta PUT of that one field."""
        body = {"view_data": [{"asset_id": asset, name: value}]}
        return self.put(body, delta=True, bounds=bounds)

    def add_favorite(self, guid: str, bounds: Bounds) -> Conflict | bool:
        if guid in self.favorites:
            return False
        if len(self.favorites) + 1 > bounds.max_favorites:
            return Conflict((("MAX_FAVORITES", len(self.favorites) + 1, ""),))
        self.favorites[guid] = None  # after all the others: learned
        return True

    def replaced(self, favorites: list[str]) -> dict:
        """The positions after the whole list is replaced by ``favorites``:
        when the favorites that stay keep their order, they keep their
        positions (a walk across the write must not lose or repeat them);
        the others, and all of them after a reordering, are learned."""
        old = self.favorites
        staying = [old[g] for g in favorites if g in old]
        kept = None not in staying and staying == sorted(set(staying))
        return {g: old[g] if kept and g in old else None for g in favorites}

    def remove_favorite(self, guid: str) -> bool:
        return self.favorites.pop(guid, None) is not None

    def remove_record(self, asset: str) -> bool:
        return self.assets.pop(asset, None) is not None

    # --- reads ------------------------------------------------------------------

    def view_data(self) -> list[dict]:
        """Section 2's view_data: every record, most recently played first."""
        order = sorted(self.assets, key=lambda a: recency(a, self.assets[a]))
        return [{"asset_id": a, **self.assets[a]} for a in order]

    def pause_ms(self, asset: str) -> int:
        return self.assets.get(asset, {}).get("pause_time", 0) * 1000

    def items(self, kind: str) -> list[tuple]:
        """A list of section 9 in its order: (position, key, item shown)."""
        if kind == "fav":
            return [(pos, guid, guid) for guid, pos in self.favorites.items()]
        if kind == "watch":
            member = [a for a, f in self.assets.items() if "last_played_on" in f]
        else:
            member = [a for a, f in self.assets.items() if f.get("pause_time", 0) > 0]
        member.sort(key=lambda a: recency(a, self.assets[a]))
        return [
            (recency(a, self.assets[a]), a, {"asset_id": a, **self.assets[a]})
            for a in member
        ]

    def watched(self, kind: str) -> dict:
        """What a walk of the list watches for changes: key -> what it shows
        (and, for favorites, where it stands)."""
        return {key: exact((pos, item)) for pos, key, item in self.items(kind)}


def exact(value):
    """Comparable form in which 3 and 3.0 (and -0.0 and 0.0) differ."""
    if isinstance(value, dict):
        return {key: exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [exact(item) for item in value]
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    return value


def stored_record(fields: dict) -> bytes:
    """A record as records.py documents its encoding: the five fields in order,
    ints as decimal, ratings as the shortest repr, "|" between, trailing
    empty slots dropped."""
    slots = []
    for name in COUNT_FIELDS + ("user_rating",):
        value = fields.get(name)
        slots.append("" if value is None else json.dumps(value))
    return "|".join(slots).rstrip("|").encode()


def hash_tag(subscriber_id: str) -> str:
    """The subscriber's hash tag as records.py documents it."""
    escaped = subscriber_id.translate(
        {ord("%"): "%25", ord("{"): "%7B", ord("}"): "%7D"}
    )
    return "{" + escaped + "}"


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
    allow: tuple[str, ...] = ("GET", "PUT", "DELETE")  # a 405's Allow holds these


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


# --- defects of the activity family (section 9) -------------------------------

BAD_PARAMETER_VALUES = {
    "limit": ["0", "501", "1000", "-1", "", "x", "1.0", "1e2", " 5", "5 ", "+5"],
    "time": [
        "-1",
        "1.5",
        "10000.0",
        "1e4",
        "",
        "x",
        "9007199254740992",
        "true",
        "null",
        "10000 ",
        "0x2710",
        '"10000"',
        "NaN",
    ],
    "last_played_on": ["-1", "1.5", "1e12", "", "x", "9007199254740992", "true"],
    "score": [
        "-0.1",
        "5.000001",
        "6",
        "1e400",
        "NaN",
        "Infinity",
        "true",
        "",
        "x",
        "4,5",
        '"4"',
        "null",
        "[4]",
    ],
}
BAD_TYPES = ["", "VOD", "movie", "vod ", "episodes", "vod,episode", "series"]
UNKNOWN_PARAMETERS = [
    "x",
    "Time",
    "TYPE",
    "Limit",
    "isDelta",
    "limit",
    "after",
    "time",
    "score",
    "last_played_on",
    "asset_id",
    "offset",
    "user_id",
]
# A body a PUT or DELETE here may not have: its media type, and the bytes.
NOT_FORM_BODIES = [
    (None, b"type=vod"),
    ("application/json", b'{"type": "vod"}'),
    ("text/plain", b"type=vod"),
    ("multipart/form-data; boundary=x", b"--x--"),
    (f"{FORM}; charset=latin-1", b"type=vod"),
    (f"{FORM}; foo=bar", b"type=vod"),
]
BAD_FORMS = [b"type", b"type=vod&", b"&", b"type=%FF", b"\xff=1", b"type=v\x00d"]
UNKNOWN_LISTS = ["favorites", "Fav", "FAV", "history", "pause", "reviews", "Continue"]
FORGED_CURSORS = [
    "",
    "x",
    "AAAA",
    "!!!!",
    "a" * 1025,
    base64.urlsafe_b64encode(b"\x01\x01" + bytes(40)).rstrip(b"=").decode(),
]
ACTIVITY_DEFECTS = (
    "unknown-parameter",
    "repeated-parameter",
    "bad-type",
    "bad-value",
    "missing-value",
    "forged-cursor",
    "get-with-body",
    "media-type",
    "bad-form",
    "bad-asset-id",
)
# Answered before authentication (and so left out of the bad-token requests).
ROUTING_DEFECTS = ("unknown-list", "segments", "method")


def segment(text: str, spelling: str = "") -> str:
    """One path segment: ``text`` percent-encoded, ``spelling`` left as is, or
    "lower" for lower-case escapes."""
    if spelling == "lower":
        return re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(text, ""))
    return quote(text, safe=spelling)


# The activity endpoints: (list, ids in the path, method, parameters).
ENDPOINTS = [
    (lst, ids, method, params)
    for (lst, ids), methods in ACTIVITY_ROUTES.items()
    for method, params in methods.items()
]
VALID_PARAMETERS = {
    "time": "754000",
    "score": "3.5",
    "last_played_on": "1764000000000",
    "limit": "2",
}


def defect_fits(kind: str, endpoint) -> bool:
    """Whether an endpoint can carry an activity defect of ``kind``."""
    _, ids, method, params = endpoint
    if kind == "bad-value":
        return bool(set(params) & set(BAD_PARAMETER_VALUES))
    if kind == "missing-value":
        return bool(set(params) & {"time", "score"})
    if kind == "forged-cursor":
        return "after" in params
    if kind == "get-with-body":
        return method == "GET"
    if kind in ("media-type", "bad-form"):
        return method != "GET"
    if kind == "bad-asset-id":
        return ids == 2
    return True


@dataclass
class Walk:
    """A walk through one list of one subscriber, a page at a time."""

    kind: str
    name: str
    limit: int | None
    token: str
    spelling: str
    start: dict  # the list when the walk began: key -> what it showed
    type: str | None = None  # MetaX's `type`, sent with every page
    last: dict = field(default_factory=dict)  # the list after the last step
    changed: set = field(default_factory=set)  # keys that changed meanwhile
    seen: list = field(default_factory=list)  # keys of the pages, in order
    after: str | None = None  # the `next` of the last page
    place: object = None  # the model position that `next` names
    done: bool = False
    steps_at_last_page: int = 0
    interleaved: bool = False  # other steps ran between its pages

    def note(self, now: dict) -> None:
        for key in self.last.keys() | now.keys():
            if self.last.get(key) != now.get(key):
                self.changed.add(key)
        self.last = now


def state_machine(client_for, evict: bool, snapshot, prefix, stats: Counter, reasons):
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
            self.bounds = Bounds(MAX_ITEMS, MAX_ITEMS, evict)
            self.client = client_for(self.bounds)
            self.walks: list[Walk] = []  # open walks, at most three
            self.cursors: list[tuple[str, str, str]] = []  # (list, name, next)
            stats["examples"] += 1

        # --- the app in use ---------------------------------------------------

        @initialize(
            max_records=FIRST_BOUNDS, max_favorites=FIRST_BOUNDS, data=st.data()
        )
        def first_bounds(self, max_records, max_favorites, data):
            """The app's first bounds, and the first pair's histories filled
            to about them (an overwrite each), so that adds meet the bound and
            lists take several pages from the first step on."""
            self.bounds = Bounds(max_records, max_favorites, evict)
            self.client = client_for(self.bounds)
            for name in SUBSCRIBERS[:2]:
                view = st.lists(
                    records,
                    min_size=max_records - 1,
                    max_size=max_records,
                    unique_by=lambda r: r["asset_id"],
                )
                favorites = st.lists(
                    asset_ids, min_size=max_favorites - 2, max_size=max_favorites
                )
                body = {
                    "favorites": data.draw(favorites, label="favorites"),
                    "view_data": data.draw(view, label="view_data"),
                }
                req = Request(
                    "PUT",
                    self.path(name),
                    query="isDelta=false",
                    content_type="application/json",
                    data=json.dumps(body).encode(),
                )
                self.models[name].put(body, delta=False, bounds=self.bounds)
                response = self.send(req, ADMIN)
                assert response.status_code == 200, response.get_json()
            # Each sequence begins with a walk, a page of one, of a list of
            # two items or more, with writes between its pages.
            self.stored_state_is_the_model()  # learns the positions
            long = [k for k in LISTS if len(self.models[SUBSCRIBERS[0]].items(k)) > 1]
            if long:
                kind = data.draw(st.sampled_from(long), label="list")
                self.walk_start(kind, 1, "own", "", "writes", data)

        @rule(max_records=LATER_BOUNDS, max_favorites=LATER_BOUNDS)
        def rebuild_app(self, max_records, max_favorites):
            """The service restarts with other bounds: histories may now be
            above them (section 8), and open walks go on (same cursor key)."""
            stats["steps"] += 1
            stats["app rebuilds"] += 1
            lowered = max_records < max(
                (len(m.assets) for m in self.models.values()), default=0
            )
            stats["rebuilds below a stored history"] += lowered
            self.bounds = Bounds(max_records, max_favorites, evict)
            self.client = client_for(self.bounds)

        # --- requests ---------------------------------------------------------

        def path(self, name: str, spelling: str = "@") -> str:
            if spelling == "lower":
                return PATH + segment(self.ids[name], "lower")
            return PATH + quote(self.ids[name], safe=spelling)

        def activity_path(self, kind, name, asset=None, spelling="") -> str:
            path = f"{ACTIVITY}{kind}/{segment(self.ids[name], spelling)}"
            return path if asset is None else f"{path}/{segment(asset, spelling)}"

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
            response = self.client.open(url, **kwargs)
            stats[f"status {response.status_code}"] += 1
            return response

        def check(self, name):
            model = self.models[name]
            response = self.send(Request("GET", self.path(name)), ADMIN)
            assert response.status_code == 200, response.get_json()
            expected = {
                "result": "success",
                "subscriber_id": self.ids[name],
                "favorites": list(model.favorites),
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

        def answer(self, name, req: Request, token, outcome, fields: dict):
            """Send a write: a predicted Conflict must be its 409 with nothing
            written, else the 200 must be ``fields``; then GET both twins."""
            if isinstance(outcome, Conflict):
                before = snapshot()
                response = self.send(req, self.headers(name, token))
                payload = assert_error(response, 409)
                reason = payload["reason"]
                assert any(
                    setting in reason
                    and re.search(rf"\b{count}\b", reason)
                    and hint in reason
                    for setting, count, hint in outcome.options
                ), (outcome, payload)
                stats[f"409 {outcome.options[-1][0]}"] += 1
                assert snapshot() == before
            else:
                response = self.send(req, self.headers(name, token))
                assert response.status_code == 200, (req, response.get_json())
                expected = {"result": "success", "subscriber_id": self.ids[name]}
                assert exact(response.get_json()) == exact({**expected, **fields})
                stats["evicted records"] += fields.get("evicted", 0)
            self.check(name)
            self.check(TWIN[name])

        @invariant()
        def stored_state_is_the_model(self):
            """Every key under the prefix, member, position, field and value
            is the model's (key schema of store.py, encoding of records.py); the
            favorites' positions the model leaves open are learned here."""
            stored = snapshot()
            expected = {}
            for name, model in self.models.items():
                base = (prefix + hash_tag(self.ids[name])).encode()
                if model.favorites:
                    key = base + b":fav"
                    kind, members = stored.get(key, (None, []))
                    assert [g.decode() for g, _ in members] == list(model.favorites)
                    positions = [p for _, p in members]
                    assert positions == sorted(set(positions)), members  # rising
                    for (guid, position), known in zip(
                        members, model.favorites.values(), strict=True
                    ):
                        assert known in (None, position), (guid, known, position)
                        model.favorites[guid.decode()] = position
                    expected[key] = ("zset", members)
                if model.assets:
                    fields_ = {
                        a.encode(): stored_record(f) for a, f in model.assets.items()
                    }
                    expected[base + b":view"] = ("hash", fields_)
            assert stored == expected
            for walk in self.walks:
                walk.note(self.models[walk.name].watched(walk.kind))

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
            model = self.models[name]
            outcome = model.put(body, delta=delta, bounds=self.bounds)
            fields_ = {
                "is_delta": delta,
                "favorites": len(model.favorites),
                "view_data": len({o["asset_id"] for o in body.get("view_data", [])}),
                "evicted": outcome,
            }
            self.answer(name, req, token, outcome, fields_)

        @rule(
            source=names,
            dest=names,
            token=token_kinds,
        )
        def copy(self, source, dest, token):
            """A GET sent back with isDelta=false reproduces the state (or is
            409 when the history sits above a lowered bound)."""
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
            if max(len(body["favorites"]), len(body["view_data"])) > MAX_ITEMS:
                # More entries than one request may carry (never with the
                # bounds at most MAX_ITEMS, as start-up requires).
                before = snapshot()
                response = self.send(req, self.headers(dest, token))
                assert_error(response, 413)
                self.check_storage(before)
                return
            outcome = self.models[dest].put(body, delta=False, bounds=self.bounds)
            fields_ = {
                "is_delta": False,
                "favorites": len(body["favorites"]),
                "view_data": len(body["view_data"]),
                "evicted": 0,
            }
            self.answer(dest, req, token, outcome, fields_)
            if not isinstance(outcome, Conflict):
                assert self.models[dest].view_data() == got["view_data"]

        # Erasing empty histories over and over would crowd out the writes.
        @precondition(
            lambda self: any(m.favorites or m.assets for m in self.models.values())
        )
        @rule(name=names, token=token_kinds, spelling=spellings)
        def delete(self, name, token, spelling):
            stats["steps"] += 1
            req = Request("DELETE", self.path(name, spelling))
            response = self.send(req, self.headers(name, token))
            self.models[name] = ReferenceModel()
            assert response.status_code == 204
            assert response.data == b""
            self.check(name)
            self.check(TWIN[name])

        @rule(name=names, token=token_kinds, spelling=spellings)
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
                    "favorites": list(model.favorites),
                    "view_data": model.view_data(),
                }
            )

        # --- the activity family: one item -----------------------------------

        def item_request(self, method, kind, name, asset, params: dict, how):
            """An activity request: each parameter in the query or, for a PUT
            or DELETE, in a form body, as ``how`` says."""
            params = dict(params)
            if how["type"] is not None:
                params["type"] = how["type"]
            in_body = set() if method == "GET" else how["in_body"] & params.keys()
            query = {k: v for k, v in params.items() if k not in in_body}
            form = {k: v for k, v in params.items() if k in in_body}
            return Request(
                method,
                self.activity_path(kind, name, asset, how["spelling"]),
                query=urlencode(query) if query else None,
                content_type=how["form_type"] if form else None,
                data=urlencode(form).encode() if form else None,
            )

        @rule(name=names, asset=asset_ids, how=activity_how)
        def favorite_add(self, name, asset, how):
            stats["steps"] += 1
            model = self.models[name]
            added = model.add_favorite(asset, self.bounds)
            req = self.item_request("PUT", "fav", name, asset, {}, how)
            fields_ = {
                "asset_id": asset,
                "added": added,
                "favorites": len(model.favorites),
                "evicted": 0,
            }
            self.answer(name, req, how["token"], added, fields_)

        @rule(name=names, asset=asset_ids, how=activity_how)
        def favorite_remove(self, name, asset, how):
            stats["steps"] += 1
            model = self.models[name]
            removed = model.remove_favorite(asset)
            req = self.item_request("DELETE", "fav", name, asset, {}, how)
            fields_ = {
                "asset_id": asset,
                "removed": removed,
                "favorites": len(model.favorites),
                "evicted": 0,
            }
            self.answer(name, req, how["token"], removed, fields_)

        @rule(
            name=names,
            asset=asset_ids,
            played=st.one_of(st.none(), played_on, played_on, played_on),
            how=activity_how,
        )
        def watch_mark(self, name, asset, played, how):
            stats["steps"] += 1
            model = self.models[name]
            if played is not None:
                outcome = model.set_field(asset, "last_played_on", played, self.bounds)
                params = {"last_played_on": str(played)}
                req = self.item_request("PUT", "watch", name, asset, params, how)
                fields_ = {"asset_id": asset, "last_played_on": played}
                self.answer(
                    name, req, how["token"], outcome, {**fields_, "evicted": outcome}
                )
                return
            # Without the parameter the server's clock is stored: the model
            # takes the time from the answer, once it is within the request.
            req = self.item_request("PUT", "watch", name, asset, {}, how)
            outcome = copy.deepcopy(model).set_field(
                asset, "last_played_on", 0, self.bounds
            )
            if isinstance(outcome, Conflict):
                self.answer(name, req, how["token"], outcome, {})
                return
            sent = time.time_ns() // 1_000_000
            response = self.send(req, self.headers(name, how["token"]))
            answered = time.time_ns() // 1_000_000
            assert response.status_code == 200, response.get_json()
            played = response.get_json().get("last_played_on")
            assert type(played) is int and sent <= played <= answered, played
            stats["watch marks at the server's time"] += 1
            evicted = model.set_field(asset, "last_played_on", played, self.bounds)
            assert exact(response.get_json()) == exact(
                {
                    "result": "success",
                    "subscriber_id": self.ids[name],
                    "asset_id": asset,
                    "last_played_on": played,
                    "evicted": evicted,
                }
            )
            stats["evicted records"] += evicted
            self.check(name)
            self.check(TWIN[name])

        @rule(name=names, asset=asset_ids, how=activity_how)
        def watch_remove(self, name, asset, how):
            stats["steps"] += 1
            removed = self.models[name].remove_record(asset)
            req = self.item_request("DELETE", "watch", name, asset, {}, how)
            fields_ = {"asset_id": asset, "removed": removed, "evicted": 0}
            self.answer(name, req, how["token"], removed, fields_)

        @rule(
            name=names,
            asset=asset_ids,
            ms=pause_times,
            how=activity_how,
        )
        def pause_time_set(self, name, asset, ms, how):
            stats["steps"] += 1
            model = self.models[name]
            req = self.item_request(
                "PUT", "pausetime", name, asset, {"time": str(ms)}, how
            )
            if ms < PAUSE_IGNORED_BELOW_MS:
                # Ignored, as in MetaX: nothing written, no record created.
                outcome = 0
                fields_ = {"time": model.pause_ms(asset), "ignored": True}
                stats["pause times ignored"] += 1
            else:
                outcome = model.set_field(asset, "pause_time", ms // 1000, self.bounds)
                fields_ = {"time": ms // 1000 * 1000, "ignored": False}
            fields_ = {"asset_id": asset, **fields_, "evicted": outcome}
            self.answer(name, req, how["token"], outcome, fields_)

        @rule(name=names, asset=asset_ids, how=activity_how)
        def pause_time_get(self, name, asset, how):
            stats["steps"] += 1
            req = self.item_request("GET", "pausetime", name, asset, {}, how)
            response = self.send(req, self.headers(name, how["token"]))
            assert response.status_code == 200, response.get_json()
            assert exact(response.get_json()) == exact(
                {
                    "result": "success",
                    "subscriber_id": self.ids[name],
                    "asset_id": asset,
                    "time": self.models[name].pause_ms(asset),
                }
            )

        @rule(
            name=names,
            asset=asset_ids,
            score=scores(),
            how=activity_how,
        )
        def review(self, name, asset, score, how):
            stats["steps"] += 1
            text, value = score
            outcome = self.models[name].set_field(
                asset, "user_rating", value, self.bounds
            )
            req = self.item_request("PUT", "review", name, asset, {"score": text}, how)
            fields_ = {"asset_id": asset, "user_rating": value, "evicted": outcome}
            self.answer(name, req, how["token"], outcome, fields_)

        # --- the activity family: lists a page at a time ----------------------

        def next_page(self, walk: Walk) -> None:
            """Fetch the walk's next page and check it against the model: the
            items after the place the last `next` names, `total`, `next`."""
            model = self.models[walk.name]
            assert None not in model.favorites.values()  # learned after writes
            params = {}
            if walk.limit is not None:
                params["limit"] = str(walk.limit)
            if walk.after is not None:
                params["after"] = walk.after
            how = {"type": walk.type, "spelling": walk.spelling, "in_body": set()}
            req = self.item_request("GET", walk.kind, walk.name, None, params, how)
            response = self.send(req, self.headers(walk.name, walk.token))
            assert response.status_code == 200, response.get_json()
            got = response.get_json()
            items = model.items(walk.kind)
            rest = [
                item for item in items if walk.place is None or item[0] > walk.place
            ]
            size = walk.limit or 50
            page = rest[:size]
            listed = "favorites" if walk.kind == "fav" else "view_data"
            cursor = got.get("next")
            assert exact(got) == exact(
                {
                    "result": "success",
                    "subscriber_id": self.ids[walk.name],
                    listed: [shown for _, _, shown in page],
                    "total": len(items),
                    "next": cursor,
                }
            )
            if len(rest) > size:
                assert isinstance(cursor, str) and cursor, got
            elif cursor is not None:
                # A last page that ends exactly at the end may have a `next`
                # (whose page is empty); any other last page has none.
                assert isinstance(cursor, str) and cursor and len(page) == size, got
            walk.seen += [key for _, key, _ in page]
            walk.steps_at_last_page = stats["steps"]
            stats[f"{walk.kind} pages"] += 1
            if cursor is None:
                walk.done = True
                return
            walk.after, walk.place = cursor, page[-1][0]
            self.cursors = [*self.cursors[-19:], (walk.kind, walk.name, cursor)]

        def finish(self, walk: Walk) -> None:
            """Every item that did not change during the walk came once, in order."""
            steady = [key for key in walk.start if key not in walk.changed]
            assert [key for key in walk.seen if key in set(steady)] == steady, walk
            stats["walks"] += 1
            stats["walks with writes between pages"] += bool(walk.changed)
            stats["walks with steps between pages"] += walk.interleaved

        @rule(
            kind=st.sampled_from(LISTS),
            limit=page_limits,
            token=token_kinds,
            spelling=segment_spellings,
            mode=st.sampled_from(["whole", "open", "open", "writes", "writes"]),
            data=st.data(),
        )
        def walk_start(self, kind, limit, token, spelling, mode, data):
            """The first page of a list (of a subscriber whose list takes
            several pages, or else has items, when there is one), then:
            "whole", all the others; "writes", all the others with writes to
            the same subscriber between the pages (adds, removals, moves in
            the order, evictions, rebuilds); "open", the walk goes on in later
            steps (``walk_on``)."""
            stats["steps"] += 1
            draw = data.draw
            if mode != "whole" and limit not in (1, 2, 3):
                # Pages with steps or writes between them: small ones.
                limit = draw(st.sampled_from([1, 1, 2, 3]), label="limit")
            sizes = {n: len(self.models[n].items(kind)) for n in SUBSCRIBERS}
            # A list of several pages if there is one, else one with items.
            pages = [n for n in SUBSCRIBERS if sizes[n] > (limit or 50)]
            filled = pages or [n for n in SUBSCRIBERS if sizes[n]]
            name = draw(st.sampled_from(filled) if filled else names, label="name")
            start = self.models[name].watched(kind)
            walk = Walk(kind, name, limit, token, spelling, start, last=dict(start))
            walk.type = draw(st.sampled_from([None, None, *TYPES]), label="type")
            self.next_page(walk)
            while mode != "open" and not walk.done:
                for _ in range((mode == "writes") * draw(st.integers(1, 2))):
                    self.some_write(draw, name, kind)
                    self.stored_state_is_the_model()  # learns new positions
                    walk.note(self.models[name].watched(kind))
                self.next_page(walk)
            if walk.done:
                self.finish(walk)
            else:
                self.walks = [*self.walks[-2:], walk]

        def some_write(self, draw, name, kind):
            """One write to ``name`` through one of the write rules, most
            likely one that moves items of the list ``kind``."""
            model = self.models[name]
            listed = list(model.favorites if kind == "fav" else model.assets)
            # Half the time an item already there: updates, moves, removals.
            asset = draw(st.sampled_from(listed) if listed else asset_ids)
            asset = draw(st.sampled_from([asset, draw(asset_ids)]), label="asset")
            how = draw(activity_how)
            actions = {
                "fav": ["fav add", "fav add", "fav remove", "delta"],
                "watch": ["watch", "watch", "unwatch", "delta", "review"],
                "continue": ["pause", "pause", "unwatch", "watch", "delta"],
            }[kind]
            action = draw(st.sampled_from([*actions, "rebuild"]), label="write")
            if action == "fav add":
                self.favorite_add(name, asset, how)
            elif action == "fav remove":
                self.favorite_remove(name, asset, how)
            elif action == "watch":
                self.watch_mark(name, asset, draw(played_on), how)
            elif action == "unwatch":
                self.watch_remove(name, asset, how)
            elif action == "pause":
                self.pause_time_set(name, asset, draw(pause_times), how)
            elif action == "review":
                self.review(name, asset, draw(scores()), how)
            elif action == "delta":
                how = {key: draw(value) for key, value in put_strategies.items()}
                del how["name"], how["body"]
                self._put(name, draw(bodies), None, **how)
            else:
                self.rebuild_app(draw(LATER_BOUNDS), draw(LATER_BOUNDS))

        @precondition(lambda self: self.walks)
        @rule(data=st.data())
        def walk_on(self, data):
            """The next page of an open walk, maybe after other writes."""
            stats["steps"] += 1
            walk = data.draw(st.sampled_from(self.walks), label="walk")
            walk.interleaved |= stats["steps"] - walk.steps_at_last_page > 1
            self.next_page(walk)
            if walk.done:
                self.walks.remove(walk)
                self.finish(walk)

        # --- invalid requests -------------------------------------------------

        def bad_request(self, draw, name, method, *, admin, routed=True):
            """A request with exactly one defect, and what it must answer.

            ``routed=False`` leaves out the methods that no route serves (405
            comes before authentication).
            """
            if method == "activity":
                return self.bad_activity_request(draw, name, admin=admin, routed=routed)
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

        def activity_request(self, draw, name):
            """A valid activity request of a random endpoint, its parts:
            (list, ids, method, accepted parameters, asset, [(name, value,
            in the form body)])."""
            lst, ids, method, accepted = draw(st.sampled_from(ENDPOINTS))
            return self.activity_parts(draw, name, lst, ids, method, accepted)

        def activity_parts(self, draw, name, lst, ids, method, accepted):
            asset = draw(asset_ids) if ids == 2 else None
            params = []
            for param in accepted:
                if param in ("time", "score") or (
                    param in VALID_PARAMETERS and draw(st.booleans())
                ):
                    params.append((param, VALID_PARAMETERS[param]))
            if draw(st.booleans()):
                params.append(("type", draw(st.sampled_from(TYPES))))
            in_body = method != "GET" and draw(st.booleans())
            params = [(n, v, in_body and draw(st.booleans())) for n, v in params]
            return lst, ids, method, accepted, asset, params

        def build_activity(self, method, segments, params, *, data=None, ctype=None):
            """The Request: ``segments`` already encoded; each parameter in the
            query or the form body."""
            query = [(n, v) for n, v, in_body in params if not in_body]
            form = [(n, v) for n, v, in_body in params if in_body]
            if form:
                data, ctype = urlencode(form).encode(), FORM
            return Request(
                method,
                ACTIVITY + "/".join(segments),
                query=urlencode(query) if query else None,
                content_type=ctype,
                data=data,
            )

        def bad_activity_request(self, draw, name, *, admin, routed=True):
            """An activity request with exactly one defect (section 9), and its
            answer. ``routed=False`` leaves out what is answered before
            authentication (unknown lists, segment counts, methods)."""
            kinds = [*ACTIVITY_DEFECTS, *(ROUTING_DEFECTS if routed else ())]
            if admin:
                kinds.append("bad-subscriber-id")
            kind = draw(st.sampled_from(kinds), label="activity defect")
            endpoint = draw(
                st.sampled_from([e for e in ENDPOINTS if defect_fits(kind, e)])
            )
            lst, ids, method, accepted, asset, params = self.activity_parts(
                draw, name, *endpoint
            )
            segments = [lst, segment(self.ids[name], draw(segment_spellings))]
            if asset is not None:
                segments.append(segment(asset))
            data = ctype = None
            expected = Expected(f"activity {kind}")
            where = st.booleans() if method != "GET" else st.just(False)

            def insert(item):
                params.insert(draw(st.integers(0, len(params))), item)

            if kind == "unknown-parameter":
                unknown = [n for n in UNKNOWN_PARAMETERS if n not in accepted]
                param = draw(st.sampled_from(unknown))
                insert((param, "1", draw(where)))
                expected = Expected(f"activity unknown parameter {param}", named=param)
            elif kind == "repeated-parameter":
                if not params:
                    params.append(("type", "vod", draw(where)))
                param, value, _ = draw(st.sampled_from(params))
                insert((param, value, draw(where)))  # in both, or twice in one
                expected = Expected(f"activity repeated {param}", named=param)
            elif kind == "bad-type":
                params = [p for p in params if p[0] != "type"]
                value = draw(st.sampled_from(BAD_TYPES))
                insert(("type", value, draw(where)))
                expected = Expected(f"activity type={value!r}", named="type")
            elif kind == "bad-value":
                param = draw(
                    st.sampled_from([p for p in accepted if p in BAD_PARAMETER_VALUES])
                )
                value = draw(st.sampled_from(BAD_PARAMETER_VALUES[param]))
                params = [p for p in params if p[0] != param]
                insert((param, value, draw(where)))
                expected = Expected(f"activity {param}={value!r}", named=param)
            elif kind == "missing-value":
                param = next(p for p in accepted if p in ("time", "score"))
                params = [p for p in params if p[0] != param]
                expected = Expected(f"activity no {param}", named=param)
            elif kind == "forged-cursor":
                cursor, label = self.forged_cursor(draw, lst, name)
                insert(("after", cursor, False))
                expected = Expected(f"activity cursor {label}", named="after")
            elif kind == "get-with-body":
                data, ctype = draw(st.sampled_from([b"limit=2", b"type=vod"])), FORM
            elif kind == "media-type":
                params = [(n, v, False) for n, v, _ in params]
                ctype, data = draw(st.sampled_from(NOT_FORM_BODIES))
                expected = Expected(f"activity body of {ctype}", 415)
            elif kind == "bad-form":
                params = [(n, v, False) for n, v, _ in params]
                data, ctype = draw(st.sampled_from(BAD_FORMS)), FORM
                expected = Expected(f"activity form {data!r}")
            elif kind == "bad-asset-id":
                segments[2] = draw(st.sampled_from(BAD_PATH_IDS))
                expected = Expected(f"activity asset {segments[2]:.20}")
            elif kind == "bad-subscriber-id":
                segments[1] = draw(st.sampled_from(BAD_PATH_IDS))
                expected = Expected(f"activity subscriber {segments[1]:.20}")
            elif kind == "unknown-list":
                segments[0] = draw(st.sampled_from(UNKNOWN_LISTS))
                expected = Expected(f"activity list {segments[0]}", 404)
            elif kind == "segments":
                wrong = [n for n in (0, 1, 2, 3) if (lst, n) not in ACTIVITY_ROUTES]
                count = draw(st.sampled_from(wrong))
                extra = [segment(self.ids[name]), segment(asset or "a"), "x"]
                segments = [lst, *extra[:count]]
                expected = Expected(f"activity {lst} with {count} ids", 404)
            else:
                assert kind == "method"
                listed = ACTIVITY_ROUTES[(lst, ids)]
                others = ["GET", "PUT", "DELETE", "POST", "PATCH", "OPTIONS"]
                method = draw(st.sampled_from([m for m in others if m not in listed]))
                expected = Expected(
                    f"activity {method} {lst}/{ids}", 405, allow=tuple(listed)
                )
            req = self.build_activity(method, segments, params, data=data, ctype=ctype)
            return req, expected

        def forged_cursor(self, draw, lst, name) -> tuple[str, str]:
            """An `after` this service did not make for this list and
            subscriber: one of another list or subscriber, one altered, junk."""
            foreign = [c for k, n, c in self.cursors if (k, n) != (lst, name)]
            kinds = ["junk"]
            if foreign:
                kinds.append("foreign")
            if self.cursors:
                kinds.append("altered")
            kind = draw(st.sampled_from(kinds))
            if kind == "junk":
                return draw(st.sampled_from(FORGED_CURSORS)), kind
            if kind == "foreign":
                return draw(st.sampled_from(foreign)), kind
            cursor = draw(st.sampled_from([c for _, _, c in self.cursors]))
            # Not the last character: its low bits may be base64 padding.
            at = draw(st.integers(0, len(cursor) - 2))
            alphabet = (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            )
            char = draw(st.sampled_from(alphabet.replace(cursor[at], "")))
            return cursor[:at] + char + cursor[at + 1 :], kind

        @rule(data=st.data(), count=st.integers(1, 8))
        def invalid_requests(self, data, count):
            """Each has one defect: its 4xx in the MetaX shape, no byte changed."""
            stats["steps"] += 1
            draw = data.draw
            before = snapshot()
            for _ in range(count):
                name = draw(names, label="name")
                method = draw(
                    st.sampled_from(["PUT", "PUT", "PUT", "GET", "DELETE", "activity"])
                )
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
                assert set(expected.allow) <= allowed, (expected, allowed)
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
                name = draw(names, label="name")
                kind, status = draw(st.sampled_from(AUTH_KINDS), label="credentials")
                headers, owner, label = self.bad_credentials(draw, kind, name)
                involved |= {name, owner} - {None}
                method = draw(st.sampled_from(["PUT", "GET", "DELETE", "activity"]))
                valid = draw(st.booleans(), label="valid otherwise")
                if valid and method == "activity":
                    lst, ids, verb, _, asset, params = self.activity_request(draw, name)
                    segments = [lst, segment(self.ids[name], draw(segment_spellings))]
                    segments += [] if asset is None else [segment(asset)]
                    req = self.build_activity(verb, segments, params)
                elif valid:
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
                self.client.delete(self.path(name), headers=ADMIN)

    return StatApiMachine


@pytest.fixture(autouse=True)
def _small_limits(settings):
    settings["MAX_ITEMS"] = MAX_ITEMS
    settings["MAX_BODY_BYTES"] = MAX_BODY_BYTES


@pytest.mark.parametrize("history_full", ["reject", "evict"])
def test_random_requests_leave_the_state_the_reference_model_predicts(
    redis_client,
    settings,
    key_prefix,
    snapshot,
    request,
    history_full,
):
    apps = {}

    def client_for(bounds: Bounds):
        """A test client of the app built with these bounds (one per bounds)."""
        key = (bounds.max_records, bounds.max_favorites)
        if key not in apps:
            config = {
                **settings,
                "MAX_RECORDS": bounds.max_records,
                "MAX_FAVORITES": bounds.max_favorites,
                "HISTORY_FULL": history_full,
            }
            apps[key] = create_app(config, redis_client=redis_client).test_client()
        return apps[key]

    stats: Counter = Counter()
    started = time.monotonic()
    machine = state_machine(
        client_for, history_full == "evict", snapshot, key_prefix, stats, {}
    )
    run_state_machine_as_test(
        machine,
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
    shown = sorted(
        (k, v)
        for k, v in stats.items()
        if not k.startswith(("status ", "defect ", "credentials "))
    )
    print(
        f"\nmodel [{backend}, {history_full}]: {stats['examples']} examples, "
        f"{stats['steps']} steps, {stats['requests']} requests in "
        f"{time.monotonic() - started:.1f} s; "
        f"{sum(stats[d] for d in defects)} invalid requests of {len(defects)} kinds; "
        + ", ".join(f"{k}: {v}" for k, v in statuses + shown)
    )
    if stats["steps"] >= 500:  # a default run reaches each common answer
        for status in (200, 400, 401, 403, 409):
            assert stats[f"status {status}"], (status, stats)
        for seen in ("walks", "walks with writes between pages", "app rebuilds"):
            assert stats[seen], (seen, stats)
        if history_full == "evict":
            assert stats["evicted records"], stats
        else:
            assert stats["409 MAX_RECORDS"], stats
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
