"""The activity family's part of the OpenAPI document (API.md section 9).

One path item per (list, number of ids) of ``activity.ENDPOINTS``, so the
document lists exactly the paths and methods the dispatcher serves.
"""

from __future__ import annotations

from marshmallow import fields
from marshmallow.validate import OneOf

from ..rules.cursors import MAX_CHARS
from ..rules.schemas import MAX_ID_LENGTH, MAX_SAFE_INTEGER, Count, Guid, Rating
from .activity import (
    ENDPOINTS,
    PAGE_SIZE,
    PAGE_SIZE_MAX,
    PAUSE_IGNORED_BELOW_MS,
    TYPES,
    route_template,
)
from .openapi_schemas import (
    _EVICTED,
    NO_CONTROL_PATTERN,
    SubscriberId,
    ViewRecordSchema,
    _json,
    _ref,
    _Response,
    common_errors,
)


class _Success(_Response):
    result = fields.String(required=True, validate=OneOf(["success"]))
    subscriber_id = SubscriberId(required=True)


class _Page(_Success):
    total = Count(
        required=True,
        metadata={"description": "Items in the whole list at the time of the read."},
    )
    next = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Pass as `after` for the next page; null on the last "
            "page (a cursor whose page is empty may end a list that ends exactly "
            "at a page's end)."
        },
    )


class FavoritesPageSchema(_Page):
    favorites = fields.List(Guid(), required=True)


class RecordsPageSchema(_Page):
    view_data = fields.Nested(ViewRecordSchema, many=True, required=True)


class _Item(_Success):
    asset_id = Guid(required=True)


class _Write(_Item):
    evicted = Count(required=True, metadata={"description": _EVICTED})


class FavoriteAddedSchema(_Write):
    added = fields.Boolean(
        required=True, metadata={"description": "false: it was already there."}
    )
    favorites = Count(required=True, metadata={"description": "Favorites stored."})


class FavoriteRemovedSchema(_Write):
    removed = fields.Boolean(
        required=True, metadata={"description": "false: it was not there."}
    )
    favorites = Count(required=True, metadata={"description": "Favorites stored."})


class WatchedSchema(_Write):
    last_played_on = Count(required=True, metadata={"description": "Unix ms."})


class WatchRemovedSchema(_Write):
    removed = fields.Boolean(
        required=True, metadata={"description": "false: there was no record."}
    )


class PauseTimeSchema(_Item):
    time = Count(
        required=True,
        metadata={"description": "Resume position in milliseconds; 0 when none."},
    )


class PauseTimeSetSchema(_Write):
    time = Count(
        required=True,
        metadata={"description": "The position stored afterwards, in milliseconds."},
    )
    ignored = fields.Boolean(
        required=True,
        metadata={
            "description": f"true: time was under {PAUSE_IGNORED_BELOW_MS} ms and "
            "nothing was written."
        },
    )


class ReviewSchema(_Write):
    user_rating = Rating(required=True)


SCHEMAS = (
    ("FavoritesPage", FavoritesPageSchema),
    ("RecordsPage", RecordsPageSchema),
    ("FavoriteAdded", FavoriteAddedSchema),
    ("FavoriteRemoved", FavoriteRemovedSchema),
    ("Watched", WatchedSchema),
    ("WatchRemoved", WatchRemovedSchema),
    ("PauseTime", PauseTimeSchema),
    ("PauseTimeSet", PauseTimeSetSchema),
    ("Review", ReviewSchema),
)

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
_SEGMENT = (
    "Exactly one path segment, percent-decoded as UTF-8 after the path is "
    "split on '/': an id holding '/' is sent as %2F. 1 to 256 characters, no "
    "control characters, case-sensitive; invalid UTF-8 is 400."
)
_INTEGER = {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER}
PARAMETERS = {
    "subscriber_id": {
        "name": "subscriber_id",
        "in": "path",
        "required": True,
        "description": "The subscriber. " + _SEGMENT,
        "schema": {**_ID, "pattern": NO_CONTROL_PATTERN},
        "example": "user@example.org",
    },
    "asset_id": {
        "name": "asset_id",
        "in": "path",
        "required": True,
        "description": "The asset (title). " + _SEGMENT,
        "schema": {**_ID, "pattern": NO_CONTROL_PATTERN},
        "example": "asset-42",
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": f"Page size, 1 to {PAGE_SIZE_MAX}.",
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": PAGE_SIZE_MAX,
            "default": PAGE_SIZE,
        },
    },
    "after": {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The `next` value of the previous page of the same list and "
        "subscriber (absent for the first page). Any other value, or one older "
        "than CURSOR_MAX_AGE, is 400.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CHARS,
            "pattern": "^[A-Za-z0-9_-]+$",
        },
    },
    "type": {
        "name": "type",
        "in": "query",
        "required": False,
        "description": "MetaX's asset type: accepted and ignored.",
        "schema": {"type": "string", "enum": list(TYPES)},
    },
    "time": {
        "name": "time",
        "in": "query",
        "required": False,  # required: here or in the form body
        "description": "Required, here or in the form body: the resume position "
        "in milliseconds (stored as whole seconds, rounded down); under "
        f"{PAUSE_IGNORED_BELOW_MS} it is ignored.",
        "schema": _INTEGER,
    },
    "last_played_on": {
        "name": "last_played_on",
        "in": "query",
        "required": False,
        "description": "When it was played, unix ms; default: the server's clock. "
        "May come in the form body instead.",
        "schema": _INTEGER,
    },
    "score": {
        "name": "score",
        "in": "query",
        "required": False,  # required: here or in the form body
        "description": "Required, here or in the form body: the rating, 0 to 5 "
        "(decimals allowed; an integer stays an integer).",
        "schema": {"type": "number", "minimum": 0, "maximum": 5},
    },
}

# (list, ids, method) -> (operationId, summary, description, success schema)
_DOCS = {
    ("fav", 1, "GET"): (
        "listFavorites",
        "A page of the favorites (My List), in stored order",
        "Keyset pages: a walk returns every favorite that did not change during "
        "it exactly once, in order, while others are added or removed.",
        FavoritesPageSchema,
    ),
    ("fav", 2, "PUT"): (
        "addFavorite",
        "Add one favorite at the end of the list",
        "Already there: unchanged (added: false), still 200. A new one past "
        "MAX_FAVORITES is 409.",
        FavoriteAddedSchema,
    ),
    ("fav", 2, "DELETE"): (
        "removeFavorite",
        "Remove one favorite",
        "Not there: still 200 (removed: false). Parameters may also come in a "
        "form body.",
        FavoriteRemovedSchema,
    ),
    ("watch", 1, "GET"): (
        "listWatched",
        "A page of the watch history: records with last_played_on, most recent first",
        "Order of section 2 (last_played_on descending, ties by asset_id).",
        RecordsPageSchema,
    ),
    ("watch", 2, "PUT"): (
        "markWatched",
        "Mark a title played",
        "Sets last_played_on (the parameter, or the server's clock); creates the "
        "record if needed (409 when that would pass MAX_RECORDS with "
        "HISTORY_FULL=reject); other fields untouched.",
        WatchedSchema,
    ),
    ("watch", 2, "DELETE"): (
        "removeWatched",
        "Remove a title's whole record",
        "From the history and from Continue Watching; favorites untouched. Not "
        "there: still 200 (removed: false). Parameters may also come in a form "
        "body.",
        WatchRemovedSchema,
    ),
    ("continue", 1, "GET"): (
        "listContinueWatching",
        "A page of Continue Watching: records whose pause_time is above 0",
        "Order of section 2: most recently played first, records without "
        "last_played_on last, ties by asset_id.",
        RecordsPageSchema,
    ),
    ("pausetime", 2, "GET"): (
        "getPauseTime",
        "One title's resume position, in milliseconds",
        "Stored seconds x 1000; 0 when none is stored.",
        PauseTimeSchema,
    ),
    ("pausetime", 2, "PUT"): (
        "setPauseTime",
        "Set one title's resume position, in milliseconds",
        f"Under {PAUSE_IGNORED_BELOW_MS} ms the position is ignored (as in MetaX): "
        "nothing is written and the stored one is returned. Creates the record if "
        "needed (409 past MAX_RECORDS with HISTORY_FULL=reject).",
        PauseTimeSetSchema,
    ),
    ("review", 2, "PUT"): (
        "setReview",
        "Rate one title",
        "Sets user_rating from score, with the rules of the PUT body's "
        "user_rating. Creates the record if needed (409 past MAX_RECORDS with "
        "HISTORY_FULL=reject).",
        ReviewSchema,
    ),
}


def _form_body(names: tuple[str, ...]) -> dict:
    properties = {
        name: {
            **PARAMETERS[name]["schema"],
            "description": PARAMETERS[name]["description"],
        }
        for name in names
    }
    return {
        "required": False,
        "description": "MetaX's form parameters: the query parameters may come "
        "here instead (the same one in both is 400). No body is needed; a body "
        "of any other media type is 415.",
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "additionalProperties": False,
                }
            }
        },
    }


def _operation(list_name: str, ids: int, method: str, endpoint) -> dict:
    operation_id, summary, description, schema = _DOCS[list_name, ids, method]
    names = (*endpoint.params, "type")
    responses = {
        "200": {"description": "Done.", "content": _json(schema)},
        **common_errors(),
    }
    if method != "GET":
        responses["413"] = _ref("PayloadTooLarge")
        responses["415"] = _ref("UnsupportedMediaType")
    if schema in (FavoriteAddedSchema, WatchedSchema, PauseTimeSetSchema, ReviewSchema):
        responses["409"] = _ref("Conflict")
    operation = {
        "operationId": operation_id,
        "tags": ["activity"],
        "summary": summary,
        "description": description + " One Lua script: all or nothing.",
        "security": [{"bearerAuth": []}],
        "parameters": [PARAMETERS[name] for name in names],
        "responses": responses,
    }
    if method == "PUT":
        operation["requestBody"] = _form_body(names)
    return operation


def paths() -> dict:
    """OpenAPI path -> path item, for every activity endpoint."""
    items = {}
    for (list_name, ids), methods in ENDPOINTS.items():
        item: dict = {
            "parameters": [
                PARAMETERS[name] for name in ("subscriber_id", "asset_id")[:ids]
            ]
        }
        for method, endpoint in methods.items():
            item[method.lower()] = _operation(list_name, ids, method, endpoint)
        items[route_template(list_name, ids)] = item
    return items
