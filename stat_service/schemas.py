"""Marshmallow schemas of the request body: the one set of validation rules."""

from __future__ import annotations

import math
import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate

MAX_SAFE_INTEGER = 2**53 - 1
MAX_ID_LENGTH = 256
# C0, DEL and C1 control characters never become Redis data.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control_characters(value: str) -> None:
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters.")


def has_control_characters(value: str) -> bool:
    return _CONTROL.search(value) is not None


class Guid(fields.String):
    """A non-empty asset id of at most 256 characters, no control characters."""

    def __init__(self, **kwargs):
        super().__init__(
            validate=[
                validate.Length(min=1, max=MAX_ID_LENGTH),
                _no_control_characters,
            ],
            **kwargs,
        )


class Count(fields.Integer):
    """A JSON integer from 0 to 2**53 - 1 (no bools, floats or strings)."""

    def __init__(self, **kwargs):
        super().__init__(
            strict=True, validate=validate.Range(min=0, max=MAX_SAFE_INTEGER), **kwargs
        )


class Rating(fields.Float):
    """A JSON number from 0 to 5; an integer stays an integer."""

    def _format_num(self, value):
        if type(value) not in (int, float):
            raise TypeError("not a JSON number")
        return value

    def _validated(self, value):
        value = super()._validated(value)
        if type(value) is float and not math.isfinite(value):
            raise self.make_error("special")
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
    user_rating = Rating(allow_none=True, validate=validate.Range(min=0, max=5))


class StatBodySchema(Schema):
    """The PUT body (``user_id`` is compared with the path by ``load_body``)."""

    class Meta:
        unknown = RAISE

    user_id = fields.String()
    favorites = fields.List(Guid())
    view_data = fields.List(fields.Nested(ViewDataSchema))


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
