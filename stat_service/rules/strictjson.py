"""Strict JSON (RFC 8259 / I-JSON) parsing of request bodies."""

from __future__ import annotations

import json
import re

# 2**53 - 1 has 16 digits; a longer literal can never be a valid value.
MAX_INT_DIGITS = 20
MAX_FLOAT_CHARS = 64

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# Only a text with a run of this many digits can hold a number literal that
# is too long; others skip the (per-number, Python-level) length hooks.
_LONG_DIGIT_RUN = re.compile(rf"[0-9]{{{MAX_INT_DIGITS + 1}}}")
_LONG_RUN = b"0" * (MAX_INT_DIGITS + 1)
# Every digit becomes "0", every other byte "x": a long run is then a plain
# substring search (several times quicker than the regular expression).
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
# A JSON number literal (RFC 8259 section 6), as text.
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def has_long_digit_run(raw: bytes) -> bool:
    """True when ``raw`` holds more consecutive digits than any literal may."""
    return _LONG_RUN in raw.translate(_DIGITS)


class JSONBodyError(ValueError):
    """The body is not strict JSON; the message says why."""


def _reject_constant(name):
    raise JSONBodyError(f"{name} is not valid JSON")


def _parse_int(text):
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONBodyError("number literal too long")
    return int(text)


def _parse_float(text):
    if len(text) > MAX_FLOAT_CHARS:
        raise JSONBodyError("number literal too long")
    return float(text)


def _no_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise JSONBodyError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
)
_LENGTH_CHECKING_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def _check_strings(value) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JSONBodyError("lone surrogate in a string") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def loads(raw: bytes):
    """Parse a UTF-8 body strictly; raise JSONBodyError on any violation."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONBodyError(f"body is not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise JSONBodyError("byte order mark is not allowed")
    try:
        decoder = _LENGTH_CHECKING_DECODER if _LONG_DIGIT_RUN.search(text) else _DECODER
        value = decoder.decode(text)
    except JSONBodyError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONBodyError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        # Any nesting the schema does not need is rejected by the schema;
        # this only catches bodies nested past the interpreter's limit.
        raise JSONBodyError("nesting too deep") from None
    except ValueError as exc:
        raise JSONBodyError(f"malformed JSON: {exc}") from None
    if _ESCAPED_SURROGATE.search(text):
        _check_strings(value)
    return value
