"""The fast path of validation (stat_service/rules/fastpath.py) against the slow path.

The fast path is only an accelerator. Whenever it takes an input, the slow
path (strictjson, too_many_items and marshmallow: the reference) must take it
too and give the same value, type for type (an int stays an int, -0.0 stays
-0.0); when it says NO, the slow path decides and nothing is checked here.
Covered:

- ``load_body`` (PUT bodies), ``load_line`` (JSON Lines import, and the
  importer's ``JsonlValidator`` as a whole) and ``check_body`` on Python
  objects (the CSV import) against the slow path, on valid bodies and on
  near-valid ones (each rule's edge), written by json.dumps and by a writer
  of this file (key orders, duplicate keys, \\u escapes, long number literals,
  whitespace, trailing commas), some then garbled (BOM, UTF-16, invalid
  UTF-8, control bytes, truncation...);
- ``number`` and the compiled field checks against the activity family's
  slow path, and ``activity._field_value`` as a whole;
- each field's FAST_CHECK (compiled alone) against the field's deserialize;
- valid bodies are taken by the fast path (else it accelerates nothing);
- mutants of the fast path (weaker FAST_CHECK rules, a generator that forgets
  a rule, no duplicate-key or long-literal check, ...): a fixed corpus and a
  generated search must each catch every one;
- the compiled source is generated from the schemas.

STAT_FASTPATH_EXAMPLES (default 800) sets the examples of each property, e.g.
``STAT_FASTPATH_EXAMPLES=5000 pytest tests/test_fastpath.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import inspect
import json
import os
import re
import textwrap
import types
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, Phase, event, find, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from stat_service.bulk import checks
from stat_service.http import activity
from stat_service.rules import fastpath, schemas, strictjson
from stat_service.rules.schemas import MAX_ID_LENGTH, MAX_SAFE_INTEGER

EXAMPLES = int(os.environ.get("STAT_FASTPATH_EXAMPLES", "800"))
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
PROPERTY = hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=_QUIET
)
# Drawing cases for the mutants to meet: the same every run (derandomized, no
# database), and a search stops at the first case found (no shrinking).
SEARCH = hypothesis_settings(
    max_examples=max(EXAMPLES, 400),
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=_QUIET,
)

COUNT_FIELDS = ("play_count", "view_time", "pause_time", "last_played_on")
NUMBER_FIELDS = (*COUNT_FIELDS, "user_rating")
CONTROL = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
LONG_FRACTION = "0." + "0" * 67 + "1"  # 70 characters: past MAX_FLOAT_CHARS

# --- the slow path: the reference -------------------------------------------------
# Bound here, so that a mutant patching schemas.too_many_items (say) does not
# reach the reference.
_loads = strictjson.loads
_too_many_items = schemas.too_many_items
_load_body = schemas.load_body
_subscriber_id_problem = schemas.subscriber_id_problem
_JSON_NUMBER = strictjson.JSON_NUMBER
_JSONBodyError = strictjson.JSONBodyError


class _Refused:
    def __repr__(self):
        return "REFUSED"


REFUSED = _Refused()


def slow_body(raw: bytes, max_items: int, subscriber_id):
    """api._body without the fast path: the body, or REFUSED."""
    try:
        data = _loads(raw)
    except _JSONBodyError:
        return REFUSED
    if _too_many_items(data, max_items):
        return REFUSED
    try:
        return _load_body(data, subscriber_id)
    except ValidationError:
        return REFUSED


def slow_line(raw: bytes, max_items: int):
    """checks.JsonlValidator without the fast path: (subscriber id, body)."""
    try:
        data = _loads(raw)
    except _JSONBodyError:
        return REFUSED
    if not isinstance(data, dict) or "subscriber_id" not in data:
        return REFUSED
    subscriber_id = data.pop("subscriber_id")
    if _subscriber_id_problem(subscriber_id) or _too_many_items(data, max_items):
        return REFUSED
    try:
        return subscriber_id, _load_body(data, subscriber_id)
    except ValidationError:
        return REFUSED


def slow_number(text: str, field):
    """activity._field_value without the fast path: the value, or REFUSED."""
    if not _JSON_NUMBER.fullmatch(text):
        return REFUSED
    try:
        value = _loads(text.encode())
    except _JSONBodyError:
        return REFUSED
    try:
        return field.deserialize(value)
    except ValidationError:
        return REFUSED


def slow_object(data):
    try:
        return _load_body(data, None)
    except ValidationError:
        return REFUSED


def same(a, b) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0 nor True,
    -0.0 is not 0.0); the order of a dict's keys does not matter (the store
    encodes records in its own field order)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if type(a) is float:
        return repr(a) == repr(b)
    return a == b


def count_keys(value) -> int:
    if type(value) is dict:
        return len(value) + sum(count_keys(v) for v in value.values())
    if type(value) is list:
        return sum(count_keys(v) for v in value)
    return 0


def show(value) -> str:
    """repr, shortened (and safe from deep nesting)."""
    try:
        text = repr(value)
    except RecursionError:
        return "<nested too deep to show>"
    return text if len(text) <= 400 else text[:400] + "..."


def differ(fast, slow) -> tuple[str, str | None]:
    """(outcome, problem) of a fast and a slow call (thunks): a problem when
    the fast path raises, or takes what the slow path refuses or reads
    otherwise."""
    try:
        got = fast()
    except Exception as exc:
        return "fast path raised", f"the fast path raised {exc!r}"
    want = slow()
    if got is fastpath.NO:
        return ("declined, slow refused" if want is REFUSED else "declined"), None
    if want is REFUSED:
        return "wrong", f"the fast path took {show(got)}, the slow path refuses it"
    if not same(got, want):
        return "wrong", f"the fast path gave {show(got)}, the slow path {show(want)}"
    return "taken", None


# --- cases: one input each, run by both paths ----------------------------------------


@dataclass(eq=False)
class BodyCase:
    raw: bytes
    max_items: int
    subscriber_id: str

    def run(self):
        return differ(
            lambda: fastpath.load_body(self.raw, self.max_items, self.subscriber_id),
            lambda: slow_body(self.raw, self.max_items, self.subscriber_id),
        )


@dataclass(eq=False)
class LineCase:
    raw: bytes
    max_items: int

    def run(self):
        outcome, problem = differ(
            lambda: fastpath.load_line(self.raw, self.max_items),
            lambda: slow_line(self.raw, self.max_items),
        )
        if problem:
            return outcome, problem
        # The importer as a whole (the fast path, then the slow one) gives
        # what the slow path alone gives.
        validator = checks.JsonlValidator(self.max_items, 1 << 20)
        try:
            got = validator((1, 1, 1, self.raw))
        except Exception as exc:
            return "fast path raised", f"JsonlValidator raised {exc!r}"
        want = slow_line(self.raw, self.max_items)
        if type(got) is tuple:
            if want is REFUSED or not same(got, want):
                return (
                    "wrong",
                    f"JsonlValidator gave {show(got)}, the slow path {show(want)}",
                )
        elif want is not REFUSED:
            return (
                "wrong",
                f"JsonlValidator refused ({show(got)}), slow path: {show(want)}",
            )
        return outcome, None


@dataclass(eq=False)
class ObjectCase:
    data: object

    def run(self):
        try:
            keys = fastpath.check_body(self.data)
        except Exception as exc:
            return "fast path raised", f"check_body raised {exc!r}"
        want = slow_object(self.data)
        if keys < 0:
            return ("declined, slow refused" if want is REFUSED else "declined"), None
        if want is REFUSED:
            return "wrong", f"check_body took {show(self.data)}, load_body refuses it"
        if not same(self.data, want):
            return (
                "wrong",
                f"check_body took {show(self.data)}, load_body gives {show(want)}",
            )
        if keys != count_keys(self.data):
            return "wrong", f"check_body counted {keys} keys in {show(self.data)}"
        return "taken", None


NUMBER_FIELD = {"count": activity._COUNT, "rating": activity._RATING}


def _fast_number(text: str, field):
    value = fastpath.number(text)
    if value is fastpath.NO or not activity._FAST_CHECKS[field](value):
        return fastpath.NO
    return value


@dataclass(eq=False)
class NumberCase:
    text: str
    field: str  # a key of NUMBER_FIELD

    def run(self):
        field = NUMBER_FIELD[self.field]
        outcome, problem = differ(
            lambda: _fast_number(self.text, field),
            lambda: slow_number(self.text, field),
        )
        if problem:
            return outcome, problem
        # activity._field_value as a whole against the slow path alone.
        try:
            got = activity._field_value({"p": self.text}, "p", field)
        except ValidationError:
            got = REFUSED
        except Exception as exc:
            return "fast path raised", f"_field_value raised {exc!r}"
        want = slow_number(self.text, field)
        if not same(got, want):
            return "wrong", f"_field_value gave {show(got)}, the slow path {show(want)}"
        return outcome, None


# --- writing JSON text ------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is (a number literal, an escaped string...)."""

    text: str


class Obj:
    """A JSON object as written: its members in order, duplicates allowed."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __repr__(self):
        return f"Obj({self.pairs!r})"


@dataclass(frozen=True)
class Style:
    strings: str  # ascii, utf8, escape_all, colon_lower, colon_upper, slash
    after_colon: str = " "
    after_comma: str = " "
    inside: str = ""  # after an opening bracket and before a closing one
    trailing_comma: bool = False


def write_string(value: str, style: Style) -> str:
    if style.strings == "ascii":
        return json.dumps(value)
    if style.strings == "escape_all":
        units = value.encode("utf-16-be")
        return (
            '"'
            + "".join(
                f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)
            )
            + '"'
        )
    text = json.dumps(value, ensure_ascii=False)
    if style.strings == "colon_lower":
        return text.replace(":", "\\u003a")
    if style.strings == "colon_upper":
        return text.replace(":", "\\u003A")
    if style.strings == "slash":
        return text.replace("/", "\\/")
    return text


def write(node, style: Style) -> str:
    if type(node) is Raw:
        return node.text
    if type(node) is str:
        return write_string(node, style)
    if type(node) in (Obj, dict, list):
        if type(node) is list:
            opening, closing = "[", "]"
            members = [write(item, style) for item in node]
        else:
            opening, closing = "{", "}"
            pairs = node.pairs if type(node) is Obj else node.items()
            members = [
                write_string(k, style) + ":" + style.after_colon + write(v, style)
                for k, v in pairs
            ]
        tail = "," if style.trailing_comma and members else ""
        body = ("," + style.after_comma).join(members)
        return opening + style.inside + body + tail + style.inside + closing
    if type(node) is int:
        return str(node)
    return json.dumps(node)  # None, bools, floats (NaN and Infinity included)


def has_raw(value) -> bool:
    if type(value) in (Raw, Obj):
        return True
    if type(value) is dict:
        return any(has_raw(v) for v in value.values())
    if type(value) is list:
        return any(has_raw(v) for v in value)
    return False


def strings_of(value):
    if type(value) is str:
        yield value
    elif type(value) is dict:
        for k, v in value.items():
            yield k
            yield from strings_of(v)
    elif type(value) is list:
        for v in value:
            yield from strings_of(v)


# --- strategies: valid bodies -------------------------------------------------------

id_characters = st.characters(exclude_categories=("Cs", "Cc"))
TRICKY_PIECES = [
    ":", "::", "\\", '"', "/", "u003a", "{", "}", "[", "]", ",", " ", "'",
    "\u0cb2", "\u00b2", "\u2028", "\U0001f3ac", "\ufeff", "\ufffd", "\U0010ffff",
    "\u00e9", "0123456789",
]  # fmt: skip
# Pieces that make the fast path leave a valid body to the slow path: a
# backslash then "u003a" (read as an escaped colon), long digit runs.
DECLINED_PIECES = ["\\u003a", "\\u003A", "\\\\u003a", "9" * 20, "0" * 21]


def _ids(pieces):
    return st.lists(pieces, min_size=1, max_size=12).map(
        lambda p: "".join(p)[:MAX_ID_LENGTH]
    )


common_ids = _ids(st.one_of(id_characters, st.sampled_from(TRICKY_PIECES)))
valid_ids = st.one_of(
    common_ids,
    common_ids,
    common_ids,
    # up to 256 characters, cheaply
    st.text(id_characters, min_size=1, max_size=8).map(
        lambda s: (s * MAX_ID_LENGTH)[: MAX_ID_LENGTH - len(s) % 3]
    ),
    _ids(st.sampled_from(TRICKY_PIECES + DECLINED_PIECES)),
    st.sampled_from(
        ["a", "x" * 256, "\U0001f3ac" * 256, "a:b", "\\", '"', ":", "1" * 30]
    ),
)
# Ids the brief says the fast path must always take: no ':', no '\\', and
# no digit run past 20.
plain_ids = st.one_of(
    st.text(
        st.characters(
            exclude_categories=("Cs", "Cc"), exclude_characters=":\\0123456789"
        ),
        min_size=1,
        max_size=24,
    ),
    st.text(
        st.characters(
            exclude_categories=("Cs", "Cc"), exclude_characters=":\\0123456789"
        ),
        min_size=MAX_ID_LENGTH - 1,
        max_size=MAX_ID_LENGTH,
    ),
    st.text("0123456789", min_size=1, max_size=20),
)
counts = st.one_of(
    st.integers(0, MAX_SAFE_INTEGER),
    st.sampled_from(
        [0, 1, 9, 10, 2**31, 2**32, 10**15, MAX_SAFE_INTEGER - 1, MAX_SAFE_INTEGER]
    ),
)
ratings = st.one_of(
    st.integers(0, 5),
    st.floats(0, 5),
    st.sampled_from([0, 5, 0.0, 5.0, -0.0, 2.5, 4.999999999999999, 5e-324, 0.1]),
)


def records(ids):
    return st.fixed_dictionaries(
        {"asset_id": ids},
        optional={
            **{name: counts | st.none() for name in COUNT_FIELDS},
            "user_rating": ratings | st.none(),
        },
    )


def bodies(ids, subscriber_id):
    return st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.just(subscriber_id),
            "favorites": st.lists(ids, max_size=5),
            "view_data": st.lists(records(ids), max_size=5),
        },
    )


def longest(body) -> int:
    if type(body) is not dict:
        return 0
    lists = [body.get(name) for name in ("favorites", "view_data")]
    return max((len(v) for v in lists if type(v) is list), default=0)


# --- strategies: near-valid values --------------------------------------------------


@st.composite
def ids_with_control(draw):
    base = draw(valid_ids)[: MAX_ID_LENGTH - 1]
    at = draw(st.integers(0, len(base)))
    return base[:at] + draw(st.sampled_from(CONTROL)) + base[at:]


# Each near-valid value strategy draws its classes of wrongness evenly:
# out of range, wrong type, bool, string, container...
bad_ids_python = st.one_of(
    st.sampled_from(["", "x" * 257, "\U0001f3ac" * 257, "x" * 1000]),
    st.sampled_from([0, 1, -1, 1.5, True, False, None]),
    st.sampled_from([[], ["a"], {}, {"a": "b"}]),
    ids_with_control(),
)
bad_ids_raw = st.sampled_from(
    ['"\\u0000"', '"a\\u001fb"', '"\\u007f"', '"\\u0085"', '"\\u009f"', '"\x7f"']
    + ['"\\ud800"', '"a\\udfffb"', '"\\ude00\\ud83d"', '"\x01"', "nul", '"a']
).map(Raw)
bad_counts_python = st.one_of(
    st.sampled_from(
        [MAX_SAFE_INTEGER + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1]
        + [10**20, 10**21, 10**30]
    )
    | st.integers(min_value=MAX_SAFE_INTEGER + 1),
    st.sampled_from([-1, -(2**63), -(2**63) - 1, -(2**64)]) | st.integers(max_value=-1),
    st.booleans(),
    st.sampled_from([1.0, 0.0, -0.0, 0.5, 1e16, float("nan"), float("inf")]),
    st.sampled_from(["1", "0", "", [], [1], {}]),
)
NUMBER_EDGES = [
    "0", "-0", "5", "5.0", "-0.0", "0.0", "2.5", "1", "1.0", "1e2", "1E2", "5E0",
    "5e-0", "0.5E1", "50e-1", "5E+0", "-1", "-0.0001", "5.0000001", "6",
    "5.000000000000001", "4.99999999999999999999", "5.0000000000000000000001",
    "9007199254740991", "9007199254740992", "9007199254740991.0",
    "18446744073709551615", "18446744073709551616", "18446744073709551617",
    "1" + "0" * 25, LONG_FRACTION, "0." + "0" * 70 + "1", "1e400", "-1e400",
    "1e-400", "-1e-400", "1e99999999999999999999", "0e99999999999999999999",
    "NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "0x10", "1_000",
    "--1", "1e", "1e+", "true", "false", "null", '"1"', "[]", "{}",
]  # fmt: skip
bad_ratings_python = st.one_of(
    st.sampled_from(
        [-1, -0.0001, -5e-324, 5.0000001, 5.000000000000001, 6, 10, 2**53, 2**64]
    ),
    st.booleans(),
    st.sampled_from(["5", "0", "", [], {}, [5]]),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]) | st.floats(),
    st.floats(4.9, 5.1) | st.floats(-0.1, 0.1),
)


def digits(low: int, high: int):
    return st.text("0123456789", min_size=low, max_size=high)


@st.composite
def number_literals(draw):
    """JSON number literals, most of them valid, some very long."""
    sign = draw(st.sampled_from(["", "", "-"]))
    head = draw(
        st.one_of(st.sampled_from("0123456"), digits(0, 30).map(lambda d: "1" + d))
    )
    fraction = draw(
        st.one_of(
            st.just(""),
            digits(1, 24).map(lambda d: "." + d),
            digits(60, 72).map(lambda d: "." + d),
        )
    )
    exponent = draw(
        st.one_of(
            st.just(""),
            st.tuples(
                st.sampled_from("eE"),
                st.sampled_from(["", "+", "-"]),
                st.one_of(digits(1, 3), digits(18, 25)),
            ).map("".join),
        )
    )
    return sign + head + fraction + exponent


bad_counts_raw = bad_ratings_raw = st.one_of(
    st.sampled_from(NUMBER_EDGES), number_literals()
).map(Raw)


def long_spelling(value, zeros: int) -> str:
    """value's literal with zeros appended to its digits: the same number."""
    mantissa, _, exponent = json.dumps(value).partition("e")
    if "." not in mantissa:
        mantissa += "."
    return mantissa + "0" * zeros + ("e" + exponent if exponent else "")


# Valid ratings written with many digits: past 20 in a run (the strict parser
# then checks literal lengths), some past 64 characters (too long for it).
long_ratings = st.builds(long_spelling, ratings, st.integers(18, 80))
small_json = st.sampled_from(
    [None, 0, 1, "x", "", [], {}, True, 3.5, [1], {"a": 1}, "a:b"]
)
unknown_names = st.one_of(
    st.sampled_from(
        ["x", "subscriber_id", "User_id", "userId", "favorites ", " view_data", ""]
        + ["asset_id", "play_count", "user_rating", "AssetId", "view_data\x00"]
        + ["favorites", "view_data", "user_id", "a:b"]
    ),
    st.text(max_size=8),
)


class One(enum.IntEnum):
    ONE = 1


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


PYTHON_ONLY = (
    ("favorites", ("a", "b")),
    ("favorites", [b"a"]),
    ("favorites", [MyStr("a")]),
    ("favorites", {"a"}),
    ("view_data", ({"asset_id": "a"},)),
    ("view_data", [OrderedDict(asset_id="a")]),
    ("view_data", [{"asset_id": b"a"}]),
    ("view_data", [{"asset_id": MyStr("a")}]),
    ("view_data", [{"asset_id": "a", "play_count": One.ONE}]),
    ("view_data", [{"asset_id": "a", "play_count": MyInt(1)}]),
    ("view_data", [{"asset_id": "a", "play_count": Decimal(1)}]),
    ("view_data", [{"asset_id": "a", "user_rating": MyFloat(1.5)}]),
    ("view_data", [{"asset_id": "a", "user_rating": Decimal("1.5")}]),
    ("view_data", [{"asset_id": "a", 1: 2}]),
    ("user_id", MyStr("u")),
    ("user_id", b"u"),
    (1, "a"),
    (None, None),
)
python_only = st.sampled_from(PYTHON_ONLY)


@dataclass
class Draft:
    """A body being made near-valid, mutation after mutation."""

    subscriber_id: object
    body: object
    raw_ok: bool  # may hold Raw text (False: plain Python values)
    squeeze: int | None = None  # max_items this far below the longest list


def _record(draw, d: Draft):
    """A view_data entry of the body to change (one made if there is none)."""
    if type(d.body) is not dict:
        return None
    entries = d.body.setdefault("view_data", [])
    if type(entries) is not list:
        return None
    if not entries or draw(st.integers(0, 4)) == 0:
        entries.insert(draw(st.integers(0, len(entries))), {"asset_id": "a"})
    entry = entries[draw(st.integers(0, len(entries) - 1))]
    return entry if type(entry) is dict else None


def _pick(draw, d: Draft, python, raw):
    return copy.deepcopy(draw(st.one_of(python, raw) if d.raw_ok else python))


def m_bad_asset_id(draw, d):
    if (entry := _record(draw, d)) is not None:
        entry["asset_id"] = _pick(draw, d, bad_ids_python, bad_ids_raw)


def m_bad_favorite(draw, d):
    if type(d.body) is dict and type(d.body.setdefault("favorites", [])) is list:
        favorites = d.body["favorites"]
        at = draw(st.integers(0, len(favorites)))
        favorites.insert(at, _pick(draw, d, bad_ids_python, bad_ids_raw))


def m_bad_count(draw, d):
    if (entry := _record(draw, d)) is not None:
        name = draw(st.sampled_from(COUNT_FIELDS))
        entry[name] = _pick(draw, d, bad_counts_python, bad_counts_raw)


def m_bad_rating(draw, d):
    if (entry := _record(draw, d)) is not None:
        entry["user_rating"] = _pick(draw, d, bad_ratings_python, bad_ratings_raw)


def m_number_literal(draw, d):
    if d.raw_ok and (entry := _record(draw, d)) is not None:
        entry[draw(st.sampled_from(NUMBER_FIELDS))] = Raw(draw(number_literals()))


def m_long_spelling(draw, d):
    if d.raw_ok and (entry := _record(draw, d)) is not None:
        entry["user_rating"] = Raw(draw(long_ratings))


def m_null(draw, d):
    """null where it is not allowed."""
    if type(d.body) is not dict:
        return
    where = draw(st.sampled_from(["asset_id", "favorite", "list", "entry", "user"]))
    if where == "asset_id":
        if (entry := _record(draw, d)) is not None:
            entry["asset_id"] = None
    elif where == "favorite":
        if type(d.body.setdefault("favorites", [])) is list:
            d.body["favorites"].append(None)
    elif where == "list":
        d.body[draw(st.sampled_from(["favorites", "view_data"]))] = None
    elif where == "entry":
        if type(d.body.setdefault("view_data", [])) is list:
            d.body["view_data"].append(None)
    else:
        d.body["user_id"] = None


def m_unknown_field(draw, d):
    value = copy.deepcopy(draw(small_json))
    if draw(st.booleans()):
        if type(d.body) is dict:
            d.body[draw(unknown_names)] = value
    elif (entry := _record(draw, d)) is not None:
        entry[draw(unknown_names)] = value


def m_missing_asset_id(draw, d):
    if (entry := _record(draw, d)) is not None:
        entry.pop("asset_id", None)


def m_wrong_container(draw, d):
    where = draw(st.sampled_from(["body", "favorites", "view_data", "entry"]))
    if where == "body":
        d.body = copy.deepcopy(
            draw(st.sampled_from([[], [{}], "x", 1, None, True, 1.5, [d.body]]))
        )
    elif type(d.body) is not dict:
        return
    elif where == "favorites":
        d.body["favorites"] = copy.deepcopy(
            draw(st.sampled_from(["a", {}, {"a": 1}, 1, [["a"]], [{"a": 1}]]))
        )
    elif where == "view_data":
        d.body["view_data"] = copy.deepcopy(
            draw(st.sampled_from([{}, {"asset_id": "a"}, ["a"], [[]], "a", 0]))
        )
    elif type(d.body.setdefault("view_data", [])) is list:
        d.body["view_data"].append(
            copy.deepcopy(draw(st.sampled_from([[], "a", [{"asset_id": "a"}], 1])))
        )


def m_user_id(draw, d):
    if type(d.body) is not dict:
        return
    sid = d.subscriber_id if type(d.subscriber_id) is str else "s"
    d.body["user_id"] = draw(
        st.one_of(
            st.sampled_from([sid + "x", sid.upper(), sid[:-1], "", sid + "\x00"]),
            st.sampled_from([sid, 1, [], {}, True]),
            valid_ids,
        )
    )


def m_too_many(draw, d):
    if type(d.body) is not dict:
        return
    if longest(d.body) == 0:
        d.body["favorites"] = draw(st.lists(valid_ids, min_size=1, max_size=3))
    d.squeeze = draw(st.integers(0, 2))


def m_surrogate(draw, d):
    if not d.raw_ok or type(d.body) is not dict:
        return
    text = Raw(
        draw(
            st.sampled_from(
                ['"\\ud800"', '"a\\udfffb"', '"\\ude00\\ud83d"', '"\\ud83d\\ude00"']
                + ['"\\uD83D\\uDE00"', '"\\udbff\\udfff"', '"\\ud800\\u0041"']
            )
        )
    )
    where = draw(st.sampled_from(["asset_id", "favorite", "user_id"]))
    if where == "asset_id":
        if (entry := _record(draw, d)) is not None:
            entry["asset_id"] = text
    elif where == "favorite":
        if type(d.body.setdefault("favorites", [])) is list:
            d.body["favorites"].append(text)
    else:
        d.body["user_id"] = text


def m_deep(draw, d):
    if not d.raw_ok or type(d.body) is not dict:
        return
    depth = draw(st.sampled_from([1, 2, 3, 100, 999, 1023, 1024, 1025, 3000]))
    nested = draw(
        st.sampled_from(
            ["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]
        )
    )
    where = draw(st.sampled_from(["favorites", "view_data", "x", "count"]))
    if where == "count":
        if (entry := _record(draw, d)) is not None:
            entry["play_count"] = Raw(nested)
    else:
        d.body[where] = Raw(nested)


def m_digit_string(draw, d):
    """Long digit runs inside strings (not numbers: valid)."""
    text = draw(st.one_of(digits(19, 40), st.sampled_from(["\u00b2" + "1" * 20])))
    if type(d.body) is dict and type(d.body.setdefault("favorites", [])) is list:
        d.body["favorites"].append(text)


def m_python_only(draw, d):
    if not d.raw_ok and type(d.body) is dict:
        name, value = draw(python_only)
        d.body[name] = copy.deepcopy(value)


VALUE_MUTATIONS = [
    m_bad_asset_id, m_bad_favorite, m_bad_count, m_bad_rating, m_number_literal,
    m_long_spelling,
]  # fmt: skip
MUTATIONS = VALUE_MUTATIONS * 2 + [
    m_null, m_unknown_field, m_missing_asset_id, m_wrong_container, m_user_id,
    m_too_many, m_surrogate, m_deep, m_digit_string, m_python_only,
]  # fmt: skip
# Faults of the text: a duplicate key, a trailing comma, garbling.
TEXT_FAULTS = ["duplicate", "trailing_comma", "garble", "garble"]
# Faults of a JSON line's subscriber_id member: a bad value, none, two.
LINE_FAULTS = ["bad_subscriber_id", "no_subscriber_id", "duplicate_subscriber_id"]


@st.composite
def faults(draw, text: bool = True, line: bool = False) -> list:
    """Mostly one fault (a mutation of the body, or of its text), so that
    each rule is met alone; sometimes two, sometimes none."""
    pool = MUTATIONS + (TEXT_FAULTS if text else []) + (LINE_FAULTS if line else [])
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 1, 0, 2]))
    return [draw(st.sampled_from(pool)) for _ in range(count)]


@st.composite
def drafts(draw, raw_ok: bool, mutations=()):
    subscriber_id = draw(valid_ids)
    d = Draft(subscriber_id, draw(bodies(valid_ids, subscriber_id)), raw_ok)
    for mutation in mutations:
        if callable(mutation):
            mutation(draw, d)
    return d


def max_items_of(draw, d: Draft) -> int:
    n = longest(d.body)
    if d.squeeze is not None and n > 0:
        return max(0, n - 1 - d.squeeze)
    return n + draw(st.integers(0, 2))


# --- strategies: writing and garbling -------------------------------------------------

styles = st.builds(
    Style,
    strings=st.sampled_from(
        ["ascii", "utf8", "escape_all", "colon_lower", "colon_upper", "slash"]
    ),
    after_colon=st.sampled_from(["", " ", "\t", "\n  ", "\r\n"]),
    after_comma=st.sampled_from(["", " ", "\n", " \t "]),
    inside=st.sampled_from(["", "", " ", "\n"]),
)
DUMPS_LAYOUTS = [
    {},
    {"separators": (",", ":")},
    {"indent": 2},
    {"indent": "\t", "sort_keys": True},
]
duplicate_values = st.one_of(
    st.sampled_from(["a:b", "::", "a", "", 1, 0, None, "x", 2.5, []]),
    st.sampled_from(['"a\\u003ab"', '"\\u003A"', '"a\\\\u003ab"']).map(Raw),
)


@st.composite
def trees(draw, value):
    """value with its dicts as Obj, keys in a drawn order."""
    if type(value) is dict:
        keys = draw(st.permutations(list(value)))
        return Obj([(k, draw(trees(value[k]))) for k in keys])
    if type(value) is list:
        return [draw(trees(item)) for item in value]
    return value


def objects_in(tree):
    if type(tree) is Obj:
        yield tree
        for _, v in tree.pairs:
            yield from objects_in(v)
    elif type(tree) is list:
        for item in tree:
            yield from objects_in(item)


def add_duplicate(draw, tree, key=None) -> None:
    """One more member named like another of the same object."""
    objects = list(objects_in(tree))
    if not objects:
        return
    obj = objects[draw(st.integers(0, len(objects) - 1))]
    if key is None:
        if not obj.pairs:
            obj.pairs.append(("asset_id", "a"))
        key, value = obj.pairs[draw(st.integers(0, len(obj.pairs) - 1))]
    else:
        value = dict(obj.pairs).get(key, "s")
    other = draw(st.one_of(st.just(value), duplicate_values))
    obj.pairs.insert(draw(st.integers(0, len(obj.pairs))), (key, other))


@st.composite
def written(draw, value, faults=(), member=None) -> bytes:
    """The text of value: json.dumps or the writer of this file; with the text
    faults asked for; member: (name, value) added to the top object."""
    if not (has_raw(value) or member or faults) and draw(st.booleans()):
        layout = draw(st.sampled_from(DUMPS_LAYOUTS))
        text = json.dumps(value, ensure_ascii=draw(st.booleans()), **layout)
    else:
        tree = draw(trees(value))
        if member and type(tree) is Obj:
            tree.pairs.insert(draw(st.integers(0, len(tree.pairs))), member)
            if "duplicate_subscriber_id" in faults:
                add_duplicate(draw, tree, member[0])
        for _ in range(faults.count("duplicate")):
            add_duplicate(draw, tree)
        style = draw(styles)
        if "trailing_comma" in faults:
            style = dataclasses.replace(style, trailing_comma=True)
        text = write(tree, style)
    if "garble" in faults:
        return draw(garbled(text))
    return text.encode()


GARBLINGS = [
    "pad", "pad", "bad_pad", "bom", "utf16", "bad_utf8", "control", "truncate",
    "flip", "wrap", "trailing_comma",
]  # fmt: skip


@st.composite
def garbled(draw, text: str) -> bytes:
    raw = text.encode()
    how = draw(st.sampled_from(GARBLINGS))
    if how == "pad":
        pad = st.sampled_from([b" ", b"\n", b"\t", b"\r\n", b"  \n\t", b""])
        return draw(pad) + raw + draw(pad)
    if how == "bad_pad":
        pad = draw(
            st.sampled_from([b"\x0c", b"\x0b", b"\xc2\xa0", b"\x00", b"\xe2\x80\xa8"])
        )
        return pad + raw if draw(st.booleans()) else raw + pad
    if how == "bom":
        return draw(st.sampled_from([b"", b" "])) + b"\xef\xbb\xbf" + raw
    if how == "utf16":
        codec = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
        return text.encode(codec)
    if how == "trailing_comma":
        at = max(raw.rfind(b"}"), raw.rfind(b"]"))
        return raw[:at] + b"," + raw[at:] if at > 0 else raw
    at = draw(st.integers(0, len(raw)))
    if how == "bad_utf8":
        bad = st.sampled_from(
            [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe0\xb2"]
            + [b"\xf4\x90\x80\x80", b"\xc3", b"\xf8\x88\x80\x80\x80"]
        )
        return raw[:at] + draw(bad) + raw[at:]
    if how == "control":
        return raw[:at] + bytes([draw(st.integers(0, 0x1F))]) + raw[at:]
    if how == "truncate":
        return raw[: max(0, at - 1)]
    if how == "flip" and raw:
        at = min(at, len(raw) - 1)
        return raw[:at] + bytes([draw(st.integers(0, 255))]) + raw[at + 1 :]
    if how == "wrap":
        return b"[" + raw + b"]"
    return raw


@st.composite
def body_cases(draw, fixed=None):
    """fixed: these faults (a list) rather than drawn ones."""
    fs = draw(faults()) if fixed is None else fixed
    d = draw(drafts(raw_ok=True, mutations=fs))
    max_items = max_items_of(draw, d)
    raw = draw(written(d.body, [f for f in fs if type(f) is str]))
    return BodyCase(raw, max_items, d.subscriber_id)


@st.composite
def line_cases(draw, fixed=None):
    fs = draw(faults(line=True)) if fixed is None else fixed
    d = draw(drafts(raw_ok=True, mutations=fs))
    max_items = max_items_of(draw, d)
    subscriber_id = d.subscriber_id
    if "bad_subscriber_id" in fs:
        subscriber_id = draw(st.one_of(bad_ids_python, bad_ids_raw))
    member = None if "no_subscriber_id" in fs else ("subscriber_id", subscriber_id)
    raw = draw(written(d.body, [f for f in fs if type(f) is str], member))
    return LineCase(raw, max_items)


@st.composite
def object_cases(draw, fixed=None):
    fs = draw(faults(text=False)) if fixed is None else fixed
    return ObjectCase(draw(drafts(raw_ok=False, mutations=fs)).body)


number_texts = st.one_of(
    number_literals(),
    long_ratings,
    st.builds(
        "{}{}{}".format,
        st.integers(0, 60),
        st.sampled_from(["e", "E", "e+", "E+", "e-", "E-"]),
        st.integers(0, 20),
    ),
    st.integers(0, 5).map(str),
    st.integers(0, MAX_SAFE_INTEGER).map(str),
    st.text("0123456789-+.eE", max_size=24),
    st.text("0123456789-+.eE _\t\n\u0661\U0001d7d8\u00b2x", max_size=8),
    st.integers(-2, MAX_SAFE_INTEGER + 2).map(str),
    st.integers().map(str),
    st.floats().map(repr),
    st.floats(-0.5, 5.5).map(repr),
    st.sampled_from(NUMBER_EDGES),
)
number_cases = st.builds(
    NumberCase, number_texts, st.sampled_from(sorted(NUMBER_FIELD))
)


def check(case) -> None:
    outcome, problem = case.run()
    event(outcome)
    note(repr(case))
    assert problem is None, f"{problem}\n{case!r}"


# --- 1. the differential properties ------------------------------------------------


@PROPERTY
@given(body_cases())
def test_load_body_never_takes_what_the_slow_path_refuses_or_reads_otherwise(case):
    check(case)


@PROPERTY
@given(line_cases())
def test_load_line_never_takes_what_the_slow_path_refuses_or_reads_otherwise(case):
    check(case)


@PROPERTY
@given(object_cases())
def test_check_body_on_python_objects_agrees_with_load_body(case):
    check(case)


@PROPERTY
@given(number_cases)
def test_number_and_field_checks_agree_with_the_activity_slow_path(case):
    check(case)


FIELDS = {
    "Guid": schemas.Guid(),
    "Count": schemas.Count(),
    "Rating": schemas.Rating(),
    "user_id": schemas.BODY_SCHEMA.fields["user_id"],
    "favorites": schemas.BODY_SCHEMA.fields["favorites"],
    "view_data": schemas.BODY_SCHEMA.fields["view_data"],
    "play_count": schemas.ViewDataSchema().fields["play_count"],
    "user_rating": schemas.ViewDataSchema().fields["user_rating"],
}
leaf_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-2, MAX_SAFE_INTEGER + 2),
    st.sampled_from([-1, 0, 5, 6, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, 2**64]),
    st.floats(),
    st.floats(-0.5, 5.5),
    st.sampled_from([-0.0, 0.0, 5.0, 5.0000001, float("nan"), float("inf")]),
    st.text(),
    valid_ids,
    bad_ids_python,
    python_only.map(lambda pair: pair[1]),
)
field_values = st.one_of(
    leaf_values,
    st.lists(st.one_of(valid_ids, leaf_values), max_size=3),
    st.lists(st.one_of(records(valid_ids), leaf_values), max_size=3),
)


@pytest.mark.parametrize("name", sorted(FIELDS))
@PROPERTY
@given(value=field_values)
def test_compiled_field_check_is_the_fields_deserialize(name, value):
    """FAST_CHECK (compiled) takes a value only if deserialize returns it
    unchanged; and takes every JSON value deserialize returns unchanged."""
    field = FIELDS[name]
    fast = fastpath.compile_field_check(field)(value)
    try:
        out, ok = field.deserialize(value), True
    except ValidationError:
        out, ok = None, False
    if fast:
        assert ok, f"{name}: the fast check takes {value!r}, deserialize refuses"
        assert same(out, value), f"{name}: {value!r} deserialized as {out!r}"
    elif ok and same(out, value) and is_json(value):
        pytest.fail(f"{name}: the fast check refuses {value!r}, a valid value")


def is_json(value) -> bool:
    if type(value) is dict:
        return all(type(k) is str and is_json(v) for k, v in value.items())
    if type(value) is list:
        return all(map(is_json, value))
    return type(value) in (type(None), bool, int, float, str)


# --- the fast path is used --------------------------------------------------------

# The fast path's long-run test counts the bytes 0xB2, 0xB3 and 0xB9 as digits
# (see test_fast_path_takes_digits_after_superscript_bytes): excluded here.
_BYTE_DIGIT_RUN = re.compile(rb"[0-9\xb2\xb3\xb9]{21}")


def escape_lookalike(value) -> bool:
    """A string holding a backslash and 'u003a': its text counts as an escaped
    colon for no_duplicates, which then leaves the body to the slow path."""
    return any("\\u003a" in s or "\\u003A" in s for s in strings_of(value))


@dataclass(eq=False)
class AcceptCase:
    """A valid body (or line) as json.dumps writes it; must_take: the fast
    path must take it."""

    raw: bytes
    max_items: int
    subscriber_id: str
    body: dict
    line: bool
    must_take: bool

    def declined(self) -> bool:
        if self.line:
            return fastpath.load_line(self.raw, self.max_items) is fastpath.NO
        taken = fastpath.load_body(self.raw, self.max_items, self.subscriber_id)
        return taken is fastpath.NO


@st.composite
def accept_cases(draw, ids):
    subscriber_id = draw(ids)
    body = draw(bodies(ids, subscriber_id))
    line = draw(st.booleans())
    value = {"subscriber_id": subscriber_id, **body} if line else body
    raw = json.dumps(value, ensure_ascii=draw(st.booleans())).encode()
    must_take = not (_BYTE_DIGIT_RUN.search(raw) or escape_lookalike(value))
    max_items = longest(body) + draw(st.integers(0, 2))
    return AcceptCase(raw, max_items, subscriber_id, body, line, must_take)


def check_taken(case: AcceptCase) -> None:
    if case.line:
        want = (case.subscriber_id, case.body)
        assert same(slow_line(case.raw, case.max_items), want), "not a valid line?"
    else:
        slow = slow_body(case.raw, case.max_items, case.subscriber_id)
        assert same(slow, case.body), "not a valid body?"
    event("must be taken" if case.must_take else "may be declined")
    if case.must_take:
        assert not case.declined(), f"the fast path declines {case.raw!r}"


@PROPERTY
@given(accept_cases(plain_ids))
def test_valid_bodies_with_plain_ids_are_always_taken_by_the_fast_path(case):
    assert case.must_take
    check_taken(case)


@PROPERTY
@given(accept_cases(valid_ids))
def test_valid_bodies_are_taken_unless_a_digit_run_or_an_escape_lookalike(case):
    check_taken(case)


# Found by this file: the digit table once took bytes 0xB2, 0xB3 and 0xB9
# (chr(b).isdigit()), which are UTF-8 continuation bytes, for digits.
@pytest.mark.parametrize(
    "text", ["\u00b2" + "0" * 20, "\u0cb2" + "0" * 19, "\U00032cb2" + "0" * 18]
)
def test_fast_path_takes_digits_after_superscript_bytes(text):
    raw = json.dumps({"favorites": [text]}, ensure_ascii=False).encode()
    assert not re.search(rb"[0-9]{21}", raw)
    assert same(slow_body(raw, 10, "s"), {"favorites": [text]})
    assert fastpath.load_body(raw, 10, "s") is not fastpath.NO


# --- the fixed corpus ---------------------------------------------------------------

COUNT_EDGES = [
    "0", "9007199254740991", "-1", "9007199254740992", "18446744073709551615",
    "18446744073709551616", "18446744073709551617", "1" + "0" * 30, "1.0",
    "0.0", "-0", "1e2", "true", "false", '"1"', "null", "[]", "{}", "NaN",
    "Infinity", "1e400",
]  # fmt: skip
RATING_EDGES = [
    "0", "5", "0.0", "5.0", "-0.0", "-0", "2.5", "-1", "-0.0001", "5.0000001",
    "5.000000000000001", "6", "true", '"5"', "null", "[]", "1e400", "-1e-400",
    LONG_FRACTION, "5.0000000000000000000001", "4.99999999999999999999",
    "0.5E1", "NaN",
]  # fmt: skip
ID_EDGES = [
    '"a"', '""', '"' + "x" * 256 + '"', '"' + "x" * 257 + '"', '"\\u0000"',
    '"a\\u001fb"', '"\x7f"', '"\\u007f"', '"\\u0085"', '"\u0085"', '"\\u009f"',
    '"\\ud800"', '"\\ud83d\\ude00"', "null", "1", "[]", "true", '"a:b"',
    '"a\\u003ab"', '"a\\\\u003ab"', '"s1"',
]  # fmt: skip
STRUCTURE_EDGES = [
    "{}", '{"favorites":null}', '{"view_data":null}', '{"favorites":"a"}',
    '{"favorites":{"a":1}}', '{"view_data":{}}', '{"view_data":["a"]}',
    '{"view_data":[null]}', '{"view_data":[[]]}', '{"view_data":[{}]}',
    '{"view_data":[{"play_count":1}]}', '{"x":1}', '{"subscriber_id":"s1"}',
    '{"view_data":[{"asset_id":"a","x":1}]}', "[]", '"a"', "1", "null",
    '{"favorites":[],"favorites":[]}', '{"favorites":["a:b"],"favorites":[]}',
    '{"user_id":"s1","user_id":"s1"}',
    '{"view_data":[{"asset_id":"a","asset_id":"a"}]}',
    '{"view_data":[{"asset_id":"a:b","asset_id":"a"}]}',
    '{"view_data":[{"asset_id":"a","play_count":1,"play_count":2}]}',
    '{"favorites":["a\\u003ab"],"favorites":["a\\u003ab"]}',
    '{"favorites":["\\\\u003a"],"favorites":[]}', '{"favorites":["a",]}',
    '{"favorites":["a"],}', '{"favorites":' + "[" * 2000 + "]" * 2000 + "}",
    '{"favorites":["a"]}\x00', '{"favorites":["a\x01"]}', ' {"favorites":[]}\n',
    '{"favorites":["a","b"],"view_data":[{"asset_id":"a:b","user_rating":5}]}',
]  # fmt: skip
NON_UTF8 = [
    b"\xef\xbb\xbf{}", "{}".encode("utf-16"), b'{"favorites":["\xff"]}',
    b'{"favorites":["\xed\xa0\x80"]}', b'{"favorites":["\xc0\xaf"]}',
]  # fmt: skip


def _corpus_texts():
    """(text, max_items) of bodies, each rule's edge."""
    for literal in COUNT_EDGES:
        for name in ("play_count", "last_played_on"):
            yield f'{{"view_data":[{{"asset_id":"a","{name}":{literal}}}]}}', 10
    for literal in RATING_EDGES:
        yield f'{{"view_data":[{{"asset_id":"a","user_rating":{literal}}}]}}', 10
    for literal in ID_EDGES:
        yield f'{{"favorites":[{literal}]}}', 10
        yield f'{{"view_data":[{{"asset_id":{literal}}}]}}', 10
        yield f'{{"user_id":{literal}}}', 10
    for text in STRUCTURE_EDGES:
        yield text, 10
    yield '{"favorites":["a","b"]}', 1
    yield '{"view_data":[{"asset_id":"a"},{"asset_id":"b"}]}', 1
    yield '{"favorites":["a"]}', 0


def _as_line(text: str, subscriber_id: str = '"s1"') -> str:
    if not text.startswith("{"):
        return text
    rest = text[1:].lstrip()
    joint = "" if rest.startswith("}") else ","
    return '{"subscriber_id":' + subscriber_id + joint + rest


def _corpus():
    cases = []
    for text, max_items in _corpus_texts():
        cases.append(BodyCase(text.encode(), max_items, "s1"))
        cases.append(LineCase(_as_line(text).encode(), max_items))
        with contextlib.suppress(ValueError, RecursionError):
            cases.append(ObjectCase(json.loads(text)))
    for raw in NON_UTF8:
        cases.append(BodyCase(raw, 10, "s1"))
        cases.append(LineCase(raw, 10))
    for sid in ID_EDGES + ['"s:1"', '"s\\u003a1"']:
        for text in ('{"favorites":["a:b"]}', '{"user_id":"s1"}', "{}"):
            cases.append(LineCase(_as_line(text, sid).encode(), 10))
    for text in (
        '{"favorites":[]}',
        '{"subscriber_id":"s1","subscriber_id":"s1"}',
        '{"subscriber_id":"s:1","subscriber_id":"s1"}',
        '{"subscriber_id":"s1","subscriber_id":"s2"}',
        '{"subscriber_id":"s1","user_id":"s2"}',
        '{"subscriber_id":"s:1","user_id":"s:1","favorites":["a:b"]}',
    ):
        cases.append(LineCase(text.encode(), 10))
    cases.append(LineCase(b'{"subscriber_id":"s1","favorites":["a","b"]}', 1))
    for name, value in PYTHON_ONLY:
        cases.append(ObjectCase({name: value}))
    for name in NUMBER_FIELD:
        for text in NUMBER_EDGES:
            cases.append(NumberCase(text, name))
    return cases


CORPUS = _corpus()
# Valid inputs the fast path must take (for the mutants that only slow it).
VALID_CORPUS = [
    AcceptCase(b'{"favorites":["a:b","c"]}', 10, "s1", {}, False, True),
    AcceptCase(
        b'{"view_data":[{"asset_id":"a","play_count":1},{"asset_id":"b"}]}',
        10,
        "s1",
        {},
        False,
        True,
    ),
    AcceptCase(b'{"subscriber_id":"s:1","favorites":["a"]}', 10, "s:1", {}, True, True),
    AcceptCase(
        b'{"subscriber_id":"s1","view_data":[{"asset_id":"a"}]}',
        10,
        "s1",
        {},
        True,
        True,
    ),
]


def corpus_problems(cases=None):
    for case in CORPUS if cases is None else cases:
        outcome, problem = case.run()
        if problem:
            yield case, problem


def test_the_corpus_agrees_and_its_valid_inputs_are_taken():
    assert list(corpus_problems()) == []
    assert not [case for case in VALID_CORPUS if case.declined()]
    outcomes = [case.run()[0] for case in CORPUS]
    # The corpus reaches both sides of the fast path.
    assert outcomes.count("taken") >= 50, outcomes.count("taken")
    assert outcomes.count("declined") >= 10, outcomes.count("declined")


def test_the_line_reference_is_the_importers_slow_path(monkeypatch):
    """slow_line is JsonlValidator with the fast path off, on the corpus."""
    monkeypatch.setattr(fastpath, "load_line", lambda raw, max_items: fastpath.NO)
    for case in CORPUS:
        if type(case) is LineCase:
            got = checks.JsonlValidator(case.max_items, 1 << 20)((1, 1, 1, case.raw))
            want = slow_line(case.raw, case.max_items)
            if type(got) is tuple:
                assert same(got, want), case
            else:
                assert want is REFUSED, (case, got)


# --- 3. mutants --------------------------------------------------------------------


def recompile(monkeypatch) -> None:
    """Compile the checks anew, from the (maybe patched) schemas and
    generator; a mutant that changes nothing is an error of this file."""
    check_body = fastpath.compile_check(schemas.BODY_SCHEMA)
    assert check_body.source != fastpath.check_body.source, "the mutant changed nothing"
    monkeypatch.setattr(fastpath, "check_body", check_body)
    monkeypatch.setattr(
        activity,
        "_FAST_CHECKS",
        {
            f: fastpath.compile_field_check(f)
            for f in (activity._COUNT, activity._RATING)
        },
    )


def fast_check(kind, expression):
    def apply(monkeypatch):
        monkeypatch.setattr(kind, "FAST_CHECK", expression)
        recompile(monkeypatch)

    return apply


def emitted(pattern, replacement):
    """The generator writing each line with pattern replaced."""

    def apply(monkeypatch):
        line = fastpath._Emitter.line

        def mutant(self, depth, text):
            line(self, depth, re.sub(pattern, replacement, text))

        monkeypatch.setattr(fastpath._Emitter, "line", mutant)
        recompile(monkeypatch)

    return apply


def nulls_everywhere(monkeypatch):
    """The generator letting null through for every field."""
    field = fastpath._Emitter.field

    def mutant(self, f, var, depth):
        if f.allow_none:
            return field(self, f, var, depth)
        self.line(depth, f"if {var} is not None:")
        return field(self, f, var, depth + 1)

    monkeypatch.setattr(fastpath._Emitter, "field", mutant)
    recompile(monkeypatch)


def rewritten(name, old, new):
    """fastpath.<name> with its source text old replaced by new."""

    def apply(monkeypatch):
        function = getattr(fastpath, name)
        source = textwrap.dedent(inspect.getsource(function))
        assert source.count(old) == 1, f"{old!r} is not once in fastpath.{name}"
        namespace: dict = {}
        code = compile(source.replace(old, new), f"<mutant {name}>", "exec")
        exec(code, dict(vars(fastpath)), namespace)
        mutant = types.FunctionType(
            namespace[name].__code__, vars(fastpath), name, function.__defaults__
        )
        monkeypatch.setattr(fastpath, name, mutant)

    return apply


def replaced(name, function):
    def apply(monkeypatch):
        monkeypatch.setattr(fastpath, name, function)

    return apply


def _parse_without_long_run_check(raw):
    try:
        return fastpath.orjson.loads(raw)
    except fastpath.orjson.JSONDecodeError:
        return fastpath.NO


WRONG_MUTANTS = {
    "Count: no upper bound": fast_check(
        schemas.Count, "(type({v}) is int and 0 <= {v})"
    ),
    "Count: no lower bound": fast_check(
        schemas.Count, "(type({v}) is int and {v} <= MAX_SAFE_INTEGER)"
    ),
    "Count: floats": fast_check(
        schemas.Count, "(type({v}) in (int, float) and 0 <= {v} <= MAX_SAFE_INTEGER)"
    ),
    "Count: bools": fast_check(
        schemas.Count, "(isinstance({v}, int) and 0 <= {v} <= MAX_SAFE_INTEGER)"
    ),
    "Guid: control characters": fast_check(
        schemas.Guid, "(type({v}) is str and 0 < len({v}) <= MAX_ID_LENGTH)"
    ),
    "Guid: no length limit": fast_check(
        schemas.Guid, "(type({v}) is str and 0 < len({v}) and not _control({v}))"
    ),
    "Guid: empty": fast_check(
        schemas.Guid,
        "(type({v}) is str and len({v}) <= MAX_ID_LENGTH and not _control({v}))",
    ),
    "Rating: no upper bound": fast_check(
        schemas.Rating,
        "((type({v}) is int or (type({v}) is float and _isfinite({v}))) and 0 <= {v})",
    ),
    "Rating: no lower bound": fast_check(
        schemas.Rating,
        "((type({v}) is int or (type({v}) is float and _isfinite({v}))) and {v} <= 5)",
    ),
    "Rating: bools": fast_check(
        schemas.Rating,
        "(isinstance({v}, (int, float)) and _isfinite({v}) and 0 <= {v} <= 5)",
    ),
    # (Rating without _isfinite is an equivalent mutant: NaN fails both
    # comparisons and an infinity the upper bound.)
    "generator: unknown top-level keys": emitted(
        r" or not d\.keys\(\) <= _KEYS\d+", ""
    ),
    "generator: unknown record keys": emitted(
        r" or not e\d+\.keys\(\) <= _KEYS\d+", ""
    ),
    "generator: null everywhere": nulls_everywhere,
    "generator: record keys over-counted": emitted(
        r"n \+= len\((e\d+)\)", r"n += 1 + len(\1)"
    ),
    "no_duplicates: always true": replaced("no_duplicates", lambda *a, **k: True),
    "no_duplicates: colons >= keys": rewritten(
        "no_duplicates", "if colons == keys:", "if colons >= keys:"
    ),
    "parse: no long-literal check": replaced("parse", _parse_without_long_run_check),
    "load_body/load_line: no MAX_ITEMS": rewritten(
        "_taken", "not schemas.too_many_items(value, max_items) and ", ""
    ),
    "load_body/load_line: no user_id check": rewritten(
        "_taken", "user_id is None or user_id == subscriber_id", "True"
    ),
    "load_body/load_line: duplicates ignored": rewritten(
        "_taken",
        " or not no_duplicates(raw, value, keys + keys_apart, colons_apart)",
        "",
    ),
    "load_line: no subscriber id check": rewritten(
        "load_line", " or schemas.subscriber_id_problem(subscriber_id)", ""
    ),
    "load_line: subscriber_id counted twice": rewritten(
        "load_line",
        "subscriber_id, 1, subscriber_id",
        "subscriber_id, 2, subscriber_id",
    ),
    "number: no length limit": rewritten(
        "number", "len(text) > MAX_INT_DIGITS or ", ""
    ),
    "number: every literal a float": rewritten(
        "number", "return int(text)", "return float(text)"
    ),
    "number: forgets E": rewritten("number", ' or "E" in text', ""),
}
# Mutants that only slow the fast path down (it declines valid bodies).
SLOW_MUTANTS = {
    "generator: record keys not counted": emitted(r"n \+= len\(e\d+\)", "pass"),
    "no_duplicates: forgets colons in strings": rewritten(
        "no_duplicates", " + _string_colons(value)", ""
    ),
    "load_line: forgets the subscriber id's colons": rewritten(
        "load_line", 'subscriber_id, 1, subscriber_id.count(":")', "subscriber_id, 1, 0"
    ),
}


# Cases drawn once (derandomized: the same ones every run) from the
# strategies of the differential properties, for the mutants to meet: so many
# of each kind for each fault alone (and for none), so that every rule gets
# its share.
PER_FAULT = 24
NUMBER_SAMPLE = 500


def _distinct(items):
    return list(dict.fromkeys(items))


@pytest.fixture(scope="module")
def generated_cases():
    cases = []
    plans = [
        (body_cases, _distinct([None, *MUTATIONS, *TEXT_FAULTS])),
        (line_cases, _distinct([None, *MUTATIONS, *TEXT_FAULTS, *LINE_FAULTS])),
        (object_cases, _distinct([None, *MUTATIONS])),
    ]
    strategies = [
        (make([] if fault is None else [fault]), PER_FAULT)
        for make, plan in plans
        for fault in plan
    ]
    for strategy, size in [*strategies, (number_cases, NUMBER_SAMPLE)]:

        @hypothesis_settings(SEARCH, max_examples=size)
        @given(strategy)
        def collect(case):
            cases.append(case)

        collect()
    return cases


@pytest.mark.parametrize("name", list(WRONG_MUTANTS))
def test_the_differential_check_catches_the_mutant(name, monkeypatch, generated_cases):
    WRONG_MUTANTS[name](monkeypatch)
    caught = next(corpus_problems(), None)
    assert caught is not None, f"the corpus misses the mutant {name!r}"
    found = next(corpus_problems(generated_cases), None)
    assert found is not None, f"the generated cases miss the mutant {name!r}"
    print(f"{name}: corpus {caught[1]}; generated {found[1]}")


@pytest.mark.parametrize("name", list(SLOW_MUTANTS))
def test_the_acceptance_check_catches_the_mutant(name, monkeypatch):
    SLOW_MUTANTS[name](monkeypatch)
    assert [c for c in VALID_CORPUS if c.declined()], f"the corpus misses {name!r}"
    try:
        find(
            accept_cases(valid_ids),
            lambda case: case.must_take and case.declined(),
            settings=SEARCH,
        )
    except Exception as exc:
        pytest.fail(f"the generated cases miss the mutant {name!r}: {exc!r}")
    # The mutant is only slow: it never takes a wrong body.
    assert [c for c, _ in corpus_problems() if type(c) is not ObjectCase] == []


def test_mutants_are_undone(monkeypatch):
    """(After the mutant tests:) the fast path is the module's own again."""
    assert (
        fastpath.check_body.source == fastpath.compile_check(schemas.BODY_SCHEMA).source
    )
    assert schemas.Count.__dict__["FAST_CHECK"].startswith("(type({v}) is int")
    assert fastpath.load_body.__code__.co_filename == fastpath.__file__
    assert list(corpus_problems()) == []


# --- 4. the compiled source is the schemas' ----------------------------------------


def test_the_compiled_source_is_generated_from_the_schemas():
    source = fastpath.check_body.source
    view_data = schemas.BODY_SCHEMA.fields["view_data"].schema
    for schema in (schemas.BODY_SCHEMA, view_data):
        for name in schema.fields:
            assert repr(name) in source, f"{name} is not in the compiled check"
    for kind in (schemas.Guid, schemas.Count, schemas.Rating):
        rule = re.escape(kind.FAST_CHECK).replace(r"\{v\}", r"\w+")
        assert re.search(rule, source), f"{kind.__name__}.FAST_CHECK not compiled in"
    assert fastpath.compile_check(schemas.BODY_SCHEMA).source == source


@pytest.mark.parametrize(
    "field",
    [
        fields.String(data_key="userId"),
        fields.String(validate=validate.Length(max=3)),
        fields.String(load_default="x"),
        fields.Integer(),
        fields.Float(),
        fields.Dict(),
    ],
    ids=["data_key", "validator", "load_default", "Integer", "Float", "Dict"],
)
def test_compile_check_refuses_what_it_cannot_check(field):
    schema = Schema.from_dict({"x": field})()
    with pytest.raises(fastpath.Unsupported):
        fastpath.compile_check(schema)


def test_compile_check_refuses_a_schema_that_does_not_raise_on_unknown_fields():
    schema = Schema.from_dict({"x": fields.String()})(unknown=EXCLUDE)
    with pytest.raises(fastpath.Unsupported):
        fastpath.compile_check(schema)
