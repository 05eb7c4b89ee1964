"""Marshmallow schemas of the request body: the one set of validation rules."""

from __future__ import annotations

import math
import re

from marshmallow import RAISE, Schema, ValidationError, fields

MAX_SAFE_INTEGER = 2**53 - 1
MAX_ID_LENGTH = 256
# C0, DEL and C1 control characters never become Redis data.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


def id_problem(value, what: str = "subscriber id") -> str | None:
    """Why ``value`` is not a usable id, or None (API.md section 6)."""
    if not isinstance(value, str):
        return f"{what.replace(' ', '_')} must be a string"
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        return f"{what} must be 1 to {MAX_ID_LENGTH} characters"
    if has_control_characters(value):
        return f"{what} must not contain control characters"
    return None


def subscriber_id_problem(value) -> str | None:
    """Why ``value`` is not a usable subscriber id, or None (API.md section 6)."""
    return id_problem(value, "subscriber id")


def too_many_items(data, max_items: int) -> str | None:
    """Why a parsed body is over MAX_ITEMS (answered 413), or None."""
    if isinstance(data, dict):
        for name in ("favorites", "view_data"):
            items = data.get(name)
            if isinstance(items, list) and len(items) > max_items:
                return f"{name} has {len(items)} entries, more than {max_items}"
    return None


# The fields below check type and bounds in one method instead of through
# marshmallow validator lists: the same rules, at about half the cost on a
# request's hundreds of values (see docs/performance.md).


class _Checked:
    """Skips marshmallow's validator pass: these fields have no validators."""

    def _validate(self, value):
        if self.validators:
            super()._validate(value)


# Each field below also states its rule as one expression of a value {v}:
# the fast path (fastpath.py) compiles the schemas from these. An expression
# must accept exactly what the field's _deserialize accepts and returns
# unchanged; tests/test_fastpath.py checks the two against each other.
FAST_CHECK_GLOBALS = {
    "_control": _CONTROL.search,
    "_isfinite": math.isfinite,
    "MAX_ID_LENGTH": MAX_ID_LENGTH,
    "MAX_SAFE_INTEGER": MAX_SAFE_INTEGER,
}


class Guid(_Checked, fields.String):
    """A non-empty asset id of at most 256 characters, no control characters."""

    FAST_CHECK = (
        "(type({v}) is str and 0 < len({v}) <= MAX_ID_LENGTH and not _control({v}))"
    )

    default_error_messages = {
        "length": f"Length must be between 1 and {MAX_ID_LENGTH}.",
        "control": "Must not contain control characters.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not 0 < len(value) <= MAX_ID_LENGTH:
            raise self.make_error("length")
        if _CONTROL.search(value):
            raise self.make_error("control")
        return value


class Count(_Checked, fields.Integer):
    """A JSON integer from 0 to 2**53 - 1 (no bools, floats or strings)."""

    FAST_CHECK = "(type({v}) is int and 0 <= {v} <= MAX_SAFE_INTEGER)"

    default_error_messages = {
        "range": f"Must be greater than or equal to 0 and less than or equal to "
        f"{MAX_SAFE_INTEGER}.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is not int:  # bool is an int subclass: refused too
            raise self.make_error("invalid")
        if not 0 <= value <= MAX_SAFE_INTEGER:
            raise self.make_error("range")
        return value


class Rating(_Checked, fields.Float):
    """A JSON number from 0 to 5; an integer stays an integer."""

    FAST_CHECK = (
        "((type({v}) is int or (type({v}) is float and _isfinite({v}))) "
        "and 0 <= {v} <= 5)"
    )

    default_error_messages = {
        "range": "Must be greater than or equal to 0 and less than or equal to 5.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        kind = type(value)
        if kind is not int and kind is not float:  # no bools, no strings
            raise self.make_error("invalid")
        if kind is float and not math.isfinite(value):
            raise self.make_error("special")
        if not 0 <= value <= 5:
            raise self.make_error("range")
        return value


class ViewDataSchema(Schema):
    """One asset's record; ``null`` removes a field in delta mode."""

    class Meta:
        unknown = RAISE

    asset_id = Guid(required=True)
    play_count = Count(allow_none=True)
    view_time = Count(allow_none=True)
    pause_time = Count(allow_none=True)
    last_played_on = Count(allow_none=True)
    user_rating = Rating(allow_none=True)


class StatBodySchema(Schema):
    """The PUT body (``user_id`` is compared with the path by ``load_body``)."""

    class Meta:
        unknown = RAISE

    user_id = fields.String()
    favorites = fields.List(Guid())
    # Nested(many=True) loads the list in one pass: cheaper than List(Nested).
    view_data = fields.Nested(ViewDataSchema, many=True)


BODY_SCHEMA = StatBodySchema()


def load_body(data, subscriber_id: str | None) -> dict:
    """Validate a parsed body; raise ValidationError with per-field messages."""
    if not isinstance(data, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    data = BODY_SCHEMA.load(data)
    user_id = data.get("user_id")
    if subscriber_id is not None and user_id is not None and user_id != subscriber_id:
        raise ValidationError(
            {"user_id": ["Must equal the subscriber id of the path."]}
        )
    return data
