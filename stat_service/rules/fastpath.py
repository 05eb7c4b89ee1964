"""The fast path of validation: the marshmallow schemas compiled to plain code.

The schemas of ``schemas.py`` stay the one place the rules are written. At
import, ``compile_check`` turns a schema into a Python function (generated
source, ``exec``'d once) that walks a parsed body and says only *accept* or
*refuse*; each leaf field brings its rule as a ``FAST_CHECK`` expression
next to its marshmallow code. The JSON is parsed by orjson, which refuses
everything the strict parser refuses except duplicate keys and over-long
number literals, checked here apart.

The fast path never writes an error: whenever it says no (or meets anything
it was not built for), the caller runs the strict parser and marshmallow,
which accept or answer with exactly the messages they always gave. So a
refusal costs a second pass, and an acceptance must be right: the
differential test (``tests/test_fastpath.py``) holds the two paths to the
same answer and the same stored result on generated bodies.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from marshmallow import RAISE, fields, missing

from . import schemas
from .strictjson import JSON_NUMBER, MAX_INT_DIGITS, has_long_digit_run

# What parse() returns for a text the fast path does not take.
NO = object()
_MISSING = object()


class Unsupported(Exception):
    """A schema uses something the generator does not know: no fast path."""


def parse(raw: bytes):
    """orjson's reading of ``raw``, or NO when the strict parser must decide.

    orjson refuses invalid UTF-8, a BOM, lone surrogates, NaN and Infinity,
    control characters in strings, trailing commas and nesting past 1,024
    levels, all of which the strict parser refuses too; it reads integers
    past 64 bits as floats and any number of digits, so a text holding a
    run of more digits than the strict parser allows in a literal goes the
    slow way. Duplicate keys are checked after the walk (``no_duplicates``).
    """
    if has_long_digit_run(raw):
        return NO
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NO


def _string_colons(value) -> int:
    if type(value) is str:
        return value.count(":")
    if type(value) is dict:
        return sum(k.count(":") + _string_colons(v) for k, v in value.items())
    if type(value) is list:
        return sum(_string_colons(v) for v in value)
    return 0


def no_duplicates(raw: bytes, value, keys: int, colons_apart: int = 0) -> bool:
    """True when the text of ``value`` has no duplicate key in an object.

    ``keys`` is how many keys the parsed objects hold. Every member of an
    object in the text has one ':' after its name; the others are inside
    strings, literally or escaped as \\u003a. So when the colons of the text,
    plus the escapes counted, equal the parsed keys plus the colons in the
    parsed strings, no member was lost to a duplicate. (A counted escape that
    is not one, as in "\\\\u003a", only makes the sums differ: slow path.)
    ``colons_apart``: those of strings taken out of ``value`` after parsing.
    """
    colons = raw.count(b":")
    if colons == keys:
        return True
    escaped = raw.count(b"\\u003a") + raw.count(b"\\u003A")
    return colons + escaped == keys + colons_apart + _string_colons(value)


# --- the generator ------------------------------------------------------------


class _Emitter:
    def __init__(self, refuse: str = "return -1"):
        self.refuse = refuse
        self.lines: list[str] = []
        self.globals: dict = {"_MISSING": _MISSING, **schemas.FAST_CHECK_GLOBALS}
        self.names = 0

    def name(self, stem: str) -> str:
        self.names += 1
        return f"{stem}{self.names}"

    def line(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def schema(self, schema, var: str, depth: int) -> None:
        """Code refusing ``var`` unless ``schema.load(var)`` would accept it."""
        if schema.unknown != RAISE or any(schema._hooks.values()):
            raise Unsupported(f"{type(schema).__name__}: unknown fields or hooks")
        keys = self.name("_KEYS")
        self.globals[keys] = frozenset(schema.load_fields)
        if set(schema.load_fields) != set(schema.fields):
            raise Unsupported(f"{type(schema).__name__}: load_only/dump_only fields")
        self.line(depth, f"if type({var}) is not dict or not {var}.keys() <= {keys}:")
        self.line(depth + 1, self.refuse)
        self.line(depth, f"n += len({var})")
        for name, field in schema.load_fields.items():
            if (
                field.data_key not in (None, name)
                or field.attribute not in (None, name)
                or field.load_default is not missing
                or field.validators
            ):
                raise Unsupported(f"{name}: renamed, defaulted or validated")
            value = self.name("v")
            if field.required:
                self.line(depth, f"if {name!r} not in {var}:")
                self.line(depth + 1, self.refuse)
                self.line(depth, f"{value} = {var}[{name!r}]")
                self.field(field, value, depth)
            elif field.allow_none:  # absent or null: both accepted
                self.line(depth, f"{value} = {var}.get({name!r})")
                self.field(field, value, depth)
            else:
                self.line(depth, f"{value} = {var}.get({name!r}, _MISSING)")
                self.line(depth, f"if {value} is not _MISSING:")
                self.field(field, value, depth + 1)

    def field(self, field, var: str, depth: int) -> None:
        if field.allow_none:
            self.line(depth, f"if {var} is not None:")
            depth += 1
        kind = type(field)
        template = kind.__dict__.get("FAST_CHECK")
        if template is not None:
            self.line(depth, f"if not {template.format(v=var)}:")
            self.line(depth + 1, self.refuse)
        elif kind is fields.String:
            self.line(depth, f"if type({var}) is not str:")
            self.line(depth + 1, self.refuse)
        elif kind is fields.List:
            item = self.name("i")
            self.line(depth, f"if type({var}) is not list:")
            self.line(depth + 1, self.refuse)
            self.line(depth, f"for {item} in {var}:")
            self.field(field.inner, item, depth + 1)
        elif kind is fields.Nested and field.unknown is None:
            schema = field.schema
            if not field.many:
                self.schema(schema, var, depth)
                return
            item = self.name("e")
            self.line(depth, f"if type({var}) is not list:")
            self.line(depth + 1, self.refuse)
            self.line(depth, f"for {item} in {var}:")
            self.schema(schema, item, depth + 1)
        else:
            raise Unsupported(f"no fast check for {kind.__name__}")


def compile_check(schema) -> Callable[[object], int]:
    """A function of a parsed body: -1 when it may be refused, else the number
    of object keys it holds (for ``no_duplicates``). Raises Unsupported."""
    emitter = _Emitter()
    emitter.line(0, "def check(d):")
    emitter.line(1, "n = 0")
    emitter.schema(schema, "d", 1)
    emitter.line(1, "return n")
    return _build(emitter, "check")


def compile_field_check(field) -> Callable[[object], bool]:
    """A function of one value: True when ``field.deserialize`` accepts it
    unchanged."""
    emitter = _Emitter(refuse="return False")
    emitter.line(0, "def check(x):")
    emitter.line(1, "n = 0")  # a Nested field's code counts keys
    emitter.field(field, "x", 1)
    emitter.line(1, "return True")
    return _build(emitter, "check_field")


def _build(emitter: _Emitter, name: str):
    source = "\n".join(emitter.lines)
    namespace = dict(emitter.globals)
    exec(compile(source, f"<fastpath {name}>", "exec"), namespace)  # noqa: S102
    function = namespace["check"]
    function.source = source  # for reading and for the tests
    return function


# --- what the service uses ----------------------------------------------------

check_body = compile_check(schemas.BODY_SCHEMA)


def load_body(raw: bytes, max_items: int, subscriber_id: str):
    """The body of ``raw`` when the fast path takes it, else NO: then the
    strict parser and the schema decide."""
    value = parse(raw)
    if type(value) is not dict:
        return NO
    return value if _taken(raw, value, max_items, subscriber_id) else NO


def load_line(raw: bytes, max_items: int):
    """(subscriber id, body) of an import line the fast path takes, else NO."""
    value = parse(raw)
    if type(value) is not dict:
        return NO
    subscriber_id = value.pop("subscriber_id", _MISSING)
    if subscriber_id is _MISSING or schemas.subscriber_id_problem(subscriber_id):
        return NO
    # The popped member: one key more, and the colons of its value.
    taken = _taken(raw, value, max_items, subscriber_id, 1, subscriber_id.count(":"))
    return (subscriber_id, value) if taken else NO


def _taken(raw, value, max_items, subscriber_id, keys_apart=0, colons_apart=0):
    """True when a parsed body is valid, without duplicate keys, within
    MAX_ITEMS, and any user_id is ``subscriber_id``'s. ``keys_apart`` and
    ``colons_apart``: of members taken out of ``value`` after parsing."""
    keys = check_body(value)
    if keys < 0 or not no_duplicates(raw, value, keys + keys_apart, colons_apart):
        return False
    user_id = value.get("user_id")
    return not schemas.too_many_items(value, max_items) and (
        user_id is None or user_id == subscriber_id
    )


def number(text: str):
    """A query or form value read as JSON would read the number, or NO: only
    short literals (the strict parser's length rule never applies)."""
    if len(text) > MAX_INT_DIGITS or not JSON_NUMBER.fullmatch(text):
        return NO
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)
