"""The OpenAPI document, built from the request schemas, and its Swagger UI page.

``build_spec`` assembles the document from the pieces of openapi_schemas.py
(and openapi_activity.py for the activity family) and the routes an app
serves; ``/openapi.json`` serves it, ``/docs`` browses it offline.
"""

from __future__ import annotations

import functools
import hashlib
import json

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    render_template_string,
    request,
    url_for,
)
from marshmallow import fields

from ..rules.schemas import (
    MAX_ID_LENGTH,
    MAX_SAFE_INTEGER,
    Count,
    Guid,
    Rating,
    StatBodySchema,
    ViewDataSchema,
)
from . import openapi_activity
from .activity import ENDPOINT
from .openapi_schemas import (
    NO_CONTROL_PATTERN,
    ErrorSchema,
    HealthSchema,
    HistorySchema,
    PutResultSchema,
    ReadySchema,
    SubscriberId,
    ViewRecordSchema,
    _error_responses,
    _json,
    _ref,
    _stat_operations,
)
from .views import PREFIX

OPENAPI_VERSION = "3.0.3"
# Swagger UI files served from the installed swagger_ui_bundle package.
DOCS_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_EXTENSION = "stat_openapi"

openapi_bp = Blueprint("openapi", __name__)


_DESCRIPTIONS = {
    (StatBodySchema, "user_id"): "Optional; when present it must equal the "
    "subscriber id of the path, else 400.",
    (StatBodySchema, "favorites"): "Replaces the whole favorites list; [] erases "
    "it, absent keeps it (delta) or clears it (overwrite). Order is kept, a "
    "repeated guid is kept once. null is 400.",
    (StatBodySchema, "view_data"): "One object per asset, applied in order: a "
    "later object for the same asset wins.",
    (ViewDataSchema, "play_count"): "null removes the stored field (delta mode).",
    (ViewDataSchema, "view_time"): "Seconds watched; null removes the stored field.",
    (ViewDataSchema, "pause_time"): "Player position in seconds; null removes the "
    "stored field.",
    (ViewDataSchema, "last_played_on"): "Unix time in milliseconds; null removes "
    "the stored field.",
    (ViewDataSchema, "user_rating"): "0 to 5 inclusive, decimals allowed; null "
    "removes the stored field.",
}


_SCHEMA_NOTES = {
    "StatBody": {
        "description": "One JSON object. Integers are JSON integer literals "
        '(1.0, 1.5, "12" and true are 400); unknown fields, at the top level '
        "or in a view_data object, are 400 naming them."
    },
}


def _service_field_rules(self, field, **kwargs) -> dict:
    """The bounds the custom fields check in code, as JSON Schema keywords."""
    rules: dict = {}
    if isinstance(field, (Guid, SubscriberId)):
        rules = {
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": NO_CONTROL_PATTERN,
        }
    elif isinstance(field, Count):
        rules = {"minimum": 0, "maximum": MAX_SAFE_INTEGER}
    elif isinstance(field, Rating):
        rules = {"minimum": 0, "maximum": 5}
    description = _DESCRIPTIONS.get((type(field.parent), field.name))
    if description and "description" not in kwargs.get("ret", {}):
        rules["description"] = description
    return rules


def _plain(summary: str, responses: dict, tag: str = "operations") -> dict:
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "security": [],
            "responses": {**responses, "500": _ref("InternalError")},
        }
    }


def _documented_paths(settings, id_schema: dict) -> dict:
    """Flask rule -> (OpenAPI path, path item) for every documented route."""
    asset_types = sorted(set(DOCS_ASSETS.values()))
    return {
        f"{PREFIX}/<rest:_path>": (
            f"{PREFIX}/{{subscriber_id}}",
            _stat_operations(settings, id_schema),
        ),
        "/healthz": (
            "/healthz",
            _plain(
                "Liveness: the process answers (Redis is not consulted)",
                {"200": {"description": "Alive.", "content": _json(HealthSchema)}},
            ),
        ),
        "/readyz": (
            "/readyz",
            _plain(
                "Readiness: Redis answers PING",
                {
                    "200": {"description": "Ready.", "content": _json(ReadySchema)},
                    "503": _ref("ServiceUnavailable"),
                },
            ),
        ),
        "/metrics": (
            "/metrics",
            _plain(
                "Prometheus metrics (text exposition format)",
                {
                    "200": {
                        "description": "Requests by route and status, latency "
                        "histogram, Redis errors.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
        ),
        "/openapi.json": (
            "/openapi.json",
            _plain(
                "This OpenAPI document",
                {
                    "200": {
                        "description": "OpenAPI 3 document.",
                        "content": _json({"type": "object"}),
                    }
                },
                tag="documentation",
            ),
        ),
        "/docs": (
            "/docs",
            _plain(
                "Browsable API documentation (Swagger UI, no internet needed)",
                {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
                tag="documentation",
            ),
        ),
        "/docs/<filename>": (
            "/docs/{filename}",
            {
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(DOCS_ASSETS)},
                    }
                ],
                **_plain(
                    "A static file of the documentation page",
                    {
                        "200": {
                            "description": "The file.",
                            "content": {
                                media: {"schema": {"type": "string"}}
                                for media in asset_types
                            },
                        },
                        "404": _ref("NotFound"),
                    },
                    tag="documentation",
                ),
            },
        ),
    }


def build_spec(app: Flask) -> dict:
    """The OpenAPI document of ``app``: every documented route it serves."""
    settings = app.config["STAT"]
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="stat_service",
        version="3.0",
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "Subscribers' favorites and viewing history (MetaX "
            "user stat API). Every error is JSON in the MetaX shape."
        },
    )
    for field_class in (Guid, SubscriberId):
        plugin.map_to_openapi_type(field_class, fields.String)
    plugin.map_to_openapi_type(Count, fields.Integer)
    plugin.map_to_openapi_type(Rating, fields.Number)
    plugin.converter.add_attribute_function(_service_field_rules)

    spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "exp and sub are required; sub must equal the "
            "subscriber id unless the token carries the "
            f"{settings.JWT_ADMIN_SCOPE} scope (space-separated scope claim or "
            "scp list).",
        },
    )
    for name, schema in (
        # Nested schemas first, so the outer ones refer to them by name.
        ("ViewData", ViewDataSchema),
        ("StatBody", StatBodySchema),
        ("PutResult", PutResultSchema),
        ("ViewRecord", ViewRecordSchema),
        ("History", HistorySchema),
        ("Error", ErrorSchema),
        ("Health", HealthSchema),
        ("Ready", ReadySchema),
    ):
        spec.components.schema(name, _SCHEMA_NOTES.get(name), schema=schema)
    for name, schema in openapi_activity.SCHEMAS:
        spec.components.schema(name, schema=schema)
    for name, response in _error_responses(settings).items():
        spec.components.response(name, response)

    documented = _documented_paths(
        settings, plugin.converter.field2property(SubscriberId())
    )
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule in documented and rule.methods:
            served.setdefault(rule.rule, set()).update(
                method.lower() for method in rule.methods or ()
            )
    for rule, methods in served.items():
        path, item = documented[rule]
        spec.path(
            path=path,
            operations={key: op for key, op in item.items() if key in methods},
            parameters=item.get("parameters"),
        )
    if any(rule.endpoint == ENDPOINT for rule in app.url_map.iter_rules()):
        for path, item in openapi_activity.paths().items():
            operations = {key: op for key, op in item.items() if key != "parameters"}
            spec.path(path=path, operations=operations, parameters=item["parameters"])
    return spec.to_dict()


def spec_bytes(app: Flask) -> bytes:
    """The serialized document, built once per app."""
    cached = app.extensions.get(_EXTENSION)
    if cached is None:
        cached = app.extensions[_EXTENSION] = json.dumps(build_spec(app)).encode()
    return cached


@openapi_bp.get("/openapi.json")
def openapi_json():
    return current_app.response_class(
        spec_bytes(current_app), content_type="application/json"
    )


_DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>stat_service API</title>
  <link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
  <link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}"
        sizes="32x32">
  <link rel="icon" type="image/png" href="{{ asset('favicon-16x16.png') }}"
        sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{{ asset('swagger-ui-bundle.js') }}"></script>
  <script src="{{ asset('swagger-ui-standalone-preset.js') }}"></script>
  <script>
    window.onload = function () {
      window.ui = SwaggerUIBundle({
        url: {{ spec_url|tojson }},
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
        layout: "StandaloneLayout"
      });
    };
  </script>
</body>
</html>
"""


@openapi_bp.get("/docs")
def docs():
    html = render_template_string(
        _DOCS_PAGE,
        asset=lambda name: url_for("openapi.docs_asset", filename=name),
        spec_url=url_for("openapi.openapi_json"),
    )
    return current_app.response_class(html, content_type="text/html; charset=utf-8")


@functools.cache
def _asset(filename: str) -> tuple[bytes, str]:
    """A Swagger UI file and its ETag, read once per process."""
    # Imported here: only whoever opens the page needs the bundle.
    from swagger_ui_bundle import swagger_ui_path

    data = (swagger_ui_path / filename).read_bytes()
    return data, hashlib.sha256(data).hexdigest()[:32]


@openapi_bp.get("/docs/<filename>")
def docs_asset(filename):
    mimetype = DOCS_ASSETS.get(filename)
    if mimetype is None:
        abort(404)
    # Served from memory (about 1.4 MB in all), so no file handle is left
    # open when a client or a test transport does not close the response.
    data, etag = _asset(filename)
    response = current_app.response_class(data, mimetype=mimetype)
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = 3600
    return response.make_conditional(request)
