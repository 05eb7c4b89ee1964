"""The pieces of the OpenAPI document: response schemas, error responses and the
stat operations (``build_spec`` in openapi.py puts them together).

The request schemas are the validation rules themselves (rules/schemas.py);
the response schemas here are declared for the document and never used to
validate.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields
from marshmallow.validate import OneOf

from ..errors import MESSAGES
from ..rules.schemas import (
    MAX_SAFE_INTEGER,
    Count,
    Guid,
    Rating,
    StatBodySchema,
)
from .views import PREFIX

# "No control character" (C0, DEL, C1: schemas.has_control_characters) in
# ECMA-262 syntax, the regex dialect OpenAPI uses (also valid in Python).
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
IS_DELTA_PATTERN = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"


class SubscriberId(fields.String):
    """The subscriber id of the path (API.md section 6); documentation only."""


_EVICTED = (
    "Records removed in the same atomic step to make room under MAX_RECORDS "
    "(HISTORY_FULL=evict; always 0 with reject)."
)


# Response bodies: declared for the document, never used to validate.


class _Response(Schema):
    class Meta:
        unknown = RAISE  # documented as additionalProperties: false


class PutResultSchema(_Response):
    result = fields.String(required=True, validate=OneOf(["success"]))
    subscriber_id = SubscriberId(required=True)
    is_delta = fields.Boolean(required=True)
    favorites = Count(
        required=True,
        metadata={"description": "Number of favorites stored after the request."},
    )
    view_data = Count(
        required=True,
        metadata={"description": "Number of distinct assets the request wrote."},
    )
    evicted = Count(required=True, metadata={"description": _EVICTED})


class ViewRecordSchema(_Response):
    """A stored record: asset_id and only the fields that are stored."""

    asset_id = Guid(required=True)
    play_count = Count()
    view_time = Count()
    pause_time = Count()
    last_played_on = Count()
    user_rating = Rating()


class HistorySchema(_Response):
    result = fields.String(required=True, validate=OneOf(["success"]))
    subscriber_id = SubscriberId(required=True)
    favorites = fields.List(
        Guid(), required=True, metadata={"description": "In stored order."}
    )
    view_data = fields.Nested(
        ViewRecordSchema,
        many=True,
        required=True,
        metadata={
            "description": "Most recently played first (last_played_on "
            "descending, records without it last, ties by asset_id ascending)."
        },
    )


class ErrorSchema(_Response):
    result = fields.String(required=True, validate=OneOf(["error"]))
    message = fields.String(
        required=True, validate=OneOf(sorted(set(MESSAGES.values())))
    )
    reason = fields.String(required=True)
    errors = fields.Dict(
        metadata={
            "description": "On validation failures: the messages of each field, "
            "by field name (and list position)."
        }
    )


class HealthSchema(_Response):
    status = fields.String(required=True, validate=OneOf(["ok"]))


class ReadySchema(_Response):
    status = fields.String(required=True, validate=OneOf(["ready"]))


def _json(ref: str | dict, example=None) -> dict:
    media: dict = {"schema": ref}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _error(status: int, description: str, *, headers=None, example=None) -> dict:
    message = MESSAGES[status]
    schema = {
        "allOf": [
            {"$ref": "#/components/schemas/Error"},
            {"type": "object", "properties": {"message": {"enum": [message]}}},
        ]
    }
    response = {"description": description, "content": _json(schema, example)}
    if headers:
        response["headers"] = headers
    return response


def _error_responses(settings) -> dict:
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    return {
        "BadRequest": _error(
            400,
            "Invalid subscriber id, query or body; nothing is written.",
            example={
                "result": "error",
                "message": "BAD_REQUEST",
                "reason": "view_data[0].play_count: Must be greater than or "
                f"equal to 0 and less than or equal to {MAX_SAFE_INTEGER}.",
                "errors": {
                    "view_data": {
                        "0": {
                            "play_count": [
                                "Must be greater than or equal to 0 and less "
                                f"than or equal to {MAX_SAFE_INTEGER}."
                            ]
                        }
                    }
                },
            },
        ),
        "Unauthorized": _error(
            401,
            "Missing, malformed, badly signed or expired token.",
            headers={
                "WWW-Authenticate": {
                    "description": 'Bearer challenge (RFC 6750); error="invalid_'
                    'token" when a token was sent.',
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
            example={
                "result": "error",
                "message": "UNAUTHORIZED",
                "reason": "No Authorization Token",
            },
        ),
        "Forbidden": _error(
            403,
            "Valid token for another subscriber, without the "
            f"{settings.JWT_ADMIN_SCOPE} scope.",
            headers={
                "WWW-Authenticate": {
                    "description": 'Bearer challenge, error="insufficient_scope".',
                    "schema": {"type": "string"},
                }
            },
        ),
        "NotFound": _error(
            404,
            "Not found: a file the documentation page does not have, or a "
            f"request path that, as received, is not under {PREFIX}/.",
        ),
        "MethodNotAllowed": _error(
            405,
            "Method not allowed on this path.",
            headers={
                "Allow": {
                    "description": "The methods the path accepts.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
        "Conflict": _error(
            409,
            f"The history is full: the write would add records past MAX_RECORDS "
            f"({settings.MAX_RECORDS}) with HISTORY_FULL=reject, or favorites past "
            f"MAX_FAVORITES ({settings.MAX_FAVORITES}), or the request alone "
            "writes more than either. Nothing is written; the reason says how "
            "to make room.",
        ),
        "PayloadTooLarge": _error(
            413,
            f"Body over {settings.MAX_BODY_BYTES} bytes (with or without a "
            f"Content-Length), or more than {settings.MAX_ITEMS} favorites or "
            "view_data entries.",
        ),
        "UnsupportedMediaType": _error(
            415, "Content-Type is not application/json (charset=utf-8 allowed)."
        ),
        "InternalError": _error(500, "Unexpected error; no details are leaked."),
        "ServiceUnavailable": _error(
            503,
            "Redis (or the token key endpoint) unreachable; retry later.",
            headers=retry_after,
        ),
    }


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def common_errors() -> dict:
    """The error answers every authenticated route can give."""
    return {
        "400": _ref("BadRequest"),
        "401": _ref("Unauthorized"),
        "403": _ref("Forbidden"),
        "404": _ref("NotFound"),
        "405": _ref("MethodNotAllowed"),
        "500": _ref("InternalError"),
        "503": _ref("ServiceUnavailable"),
    }


def _stat_operations(settings, id_schema: dict) -> dict:
    subscriber = {
        "name": "subscriber_id",
        "in": "path",
        "required": True,
        "description": "The rest of the path after /stat/, percent-decoded as "
        "UTF-8 (a%2Fb and a/b are the same id): 1 to 256 characters, no control "
        "characters, case-sensitive. Invalid UTF-8 is 400.",
        "schema": id_schema,
        "example": "user@example.org",
    }
    is_delta = {
        "name": "isDelta",
        "in": "query",
        "required": False,
        "description": "true (the default): merge into the stored history; false: "
        "replace it. Case-insensitive. Any other value, the parameter given "
        "twice, or any other query parameter is 400.",
        "schema": {"type": "string", "pattern": IS_DELTA_PATTERN, "default": "true"},
    }
    common = common_errors()
    security = [{"bearerAuth": []}]
    tags = ["stat"]
    body_example = {
        "favorites": ["a1", "a2"],
        "view_data": [
            {"asset_id": "a2", "pause_time": 310, "last_played_on": 1764000000000}
        ],
    }
    return {
        "parameters": [subscriber],
        "put": {
            "operationId": "putStat",
            "tags": tags,
            "summary": "Ingest a subscriber's activity history",
            "description": "Values are absolute, so a retried request leaves the "
            "same state. All or nothing: validated in full, then written in one "
            "atomic step. The body must be strict JSON (UTF-8, no NaN or Infinity, "
            "no duplicate keys, no lone surrogates).",
            "security": security,
            "parameters": [is_delta],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": StatBodySchema,
                        "example": body_example,
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "Stored.",
                    "content": _json(
                        PutResultSchema,
                        {
                            "result": "success",
                            "subscriber_id": "user@example.org",
                            "is_delta": True,
                            "favorites": 2,
                            "view_data": 1,
                            "evicted": 0,
                        },
                    ),
                },
                **common,
                "409": _ref("Conflict"),
                "413": _ref("PayloadTooLarge"),
                "415": _ref("UnsupportedMediaType"),
            },
        },
        "get": {
            "operationId": "getStat",
            "tags": tags,
            "summary": "Read a subscriber's history back",
            "description": "A subscriber with no history gets empty lists. The "
            "favorites and view_data, sent back with isDelta=false, reproduce the "
            "same state. No query parameters are accepted.",
            "security": security,
            "responses": {
                "200": {
                    "description": "The stored history.",
                    "content": _json(
                        HistorySchema,
                        {
                            "result": "success",
                            "subscriber_id": "user@example.org",
                            "favorites": ["a1", "a2"],
                            "view_data": body_example["view_data"],
                        },
                    ),
                },
                **common,
            },
        },
        "delete": {
            "operationId": "deleteStat",
            "tags": tags,
            "summary": "Erase a subscriber's whole history (idempotent)",
            "description": "No query parameters are accepted.",
            "security": security,
            "responses": {"204": {"description": "Erased."}, **common},
        },
    }
