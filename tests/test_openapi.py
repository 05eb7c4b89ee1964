"""The OpenAPI document: valid, complete, faithful to the service; /docs offline."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from html.parser import HTMLParser
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import fakeredis
import pytest
import redis
import schemathesis
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from schemathesis.engine import events, from_schema
from schemathesis.generation import GenerationMode

from stat_service import create_app
from stat_service.http import openapi
from stat_service.http.activity import ACTIVITY, ENDPOINTS, route_template
from stat_service.http.openapi import openapi_bp
from stat_service.http.openapi_schemas import IS_DELTA_PATTERN, NO_CONTROL_PATTERN
from stat_service.rules.cursors import MAX_CHARS
from stat_service.rules.schemas import (
    MAX_SAFE_INTEGER,
    StatBodySchema,
    ViewDataSchema,
    has_control_characters,
    load_body,
)
from tests.conftest import PATH, SUB, bearer, make_token
from tests.support import free_port

STAT = "/metax/3.0/ui/user/stat/{subscriber_id}"
# Examples per operation in schemathesis' fuzzing phase: the default runs in
# about 30 s on a 2-core machine; raise it for a deeper run.
EXAMPLES = int(os.environ.get("STAT_SCHEMATHESIS_EXAMPLES", "1500"))
# The activity family has ten operations of few parameters each: fewer
# examples each keep the run under a minute (about 30 s at 150).
ACTIVITY_EXAMPLES = int(os.environ.get("STAT_SCHEMATHESIS_ACTIVITY_EXAMPLES", "150"))
SEED = int(os.environ.get("STAT_SCHEMATHESIS_SEED", "20251126"))
CHECKS = [
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
]
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}  # added by Flask to every rule
_SCALARS = (str, int, float, bool)


def _simple(value) -> bool:
    """Whether Werkzeug's test client sends ``value`` of a form as it is."""
    if isinstance(value, list):
        return all(isinstance(item, _SCALARS) for item in value)
    return isinstance(value, _SCALARS)


def _form_text(form: dict) -> str:
    """A form holding nulls or objects as text: a null as an empty value,
    an object as its JSON, so the request stays as invalid as generated."""
    pairs = []
    for name, value in form.items():
        for item in value if isinstance(value, list) else [value]:
            text = "" if item is None else item
            if not isinstance(text, _SCALARS):
                text = json.dumps(text)
            pairs.append((name, text))
    return urlencode(pairs)


_CURSOR_LIKE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CHARS}}}")  # the document's `after`


def _with_docs(app):
    # Until create_app registers the blueprint itself.
    if "openapi" not in app.blueprints:
        app.register_blueprint(openapi_bp)
    return app


@pytest.fixture
def fake_app(settings):
    """The app on fakeredis only: the document does not depend on the backend."""
    return _with_docs(create_app(settings, redis_client=fakeredis.FakeRedis()))


@pytest.fixture
def fake_client(fake_app):
    return fake_app.test_client()


@pytest.fixture
def doc(fake_client):
    response = fake_client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def _template(path: str) -> str:
    """A path with its parameters blanked, so Flask and OpenAPI forms compare."""
    path = re.sub(r"<(?:[^<>:]+:)?[^<>]+>", "{}", path)
    return re.sub(r"\{[^{}]+\}", "{}", path)


def _response_validator(doc: dict, schema: dict) -> OAS30Validator:
    # The components ride along so that "#/components/..." references resolve.
    return OAS30Validator({**schema, "components": doc["components"]})


def _resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = doc["components"][kind][name]
    return node


def _schema(doc: dict, name: str) -> dict:
    return doc["components"]["schemas"][name]


# --- the document itself ---------------------------------------------------


def test_document_is_a_valid_openapi_3_document(doc):
    validate(doc)
    assert doc["openapi"].startswith("3.")


def _served(app) -> set[tuple[str, str]]:
    """(path template, method) of every route the app serves; the activity
    family's one rule stands for the endpoints its dispatcher routes to."""
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        if rule.endpoint == "activity.dispatch":
            served |= {
                (_template(route_template(name, ids)), method)
                for (name, ids), methods in ENDPOINTS.items()
                for method in methods
            }
            continue
        served |= {(_template(rule.rule), m) for m in rule.methods - AUTOMATIC_METHODS}
    return served


def test_every_route_is_documented_with_its_methods(fake_app, doc):
    served = _served(fake_app)
    documented = {
        (_template(path), method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch"}
    }
    assert served - documented == set(), "routes missing from the document"
    assert documented - served == set(), "documented routes the app does not serve"
    assert {
        ("/metax/3.0/ui/user/stat/{}", "PUT"),
        ("/metax/3.0/ui/user/stat/{}", "GET"),
        ("/metax/3.0/ui/user/stat/{}", "DELETE"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/openapi.json", "GET"),
        ("/docs", "GET"),
        ("/metax/2.1/activity/fav/{}", "GET"),
        ("/metax/2.1/activity/fav/{}/{}", "PUT"),
        ("/metax/2.1/activity/fav/{}/{}", "DELETE"),
        ("/metax/2.1/activity/watch/{}", "GET"),
        ("/metax/2.1/activity/watch/{}/{}", "PUT"),
        ("/metax/2.1/activity/watch/{}/{}", "DELETE"),
        ("/metax/2.1/activity/continue/{}", "GET"),
        ("/metax/2.1/activity/pausetime/{}/{}", "GET"),
        ("/metax/2.1/activity/pausetime/{}/{}", "PUT"),
        ("/metax/2.1/activity/review/{}/{}", "PUT"),
    } <= documented


def test_metrics_is_documented_as_prometheus_text(settings):
    app = _with_docs(create_app(settings, redis_client=fakeredis.FakeRedis()))
    if not any(rule.rule == "/metrics" for rule in app.url_map.iter_rules()):
        app.add_url_rule("/metrics", "metrics_stand_in", lambda: "")
    doc = openapi.build_spec(app)
    ok = doc["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["text/plain"]
    assert doc["paths"]["/metrics"]["get"]["security"] == []


def test_document_is_built_once_per_app_and_needs_no_token(fake_app, monkeypatch):
    calls = []
    real = openapi.build_spec
    monkeypatch.setattr(
        openapi, "build_spec", lambda app: calls.append(app) or real(app)
    )
    client = fake_app.test_client()
    first = client.get("/openapi.json")
    second = client.get("/openapi.json")
    assert first.status_code == second.status_code == 200
    assert first.mimetype == "application/json"
    assert first.data == second.data
    assert json.loads(first.data) == real(fake_app)
    assert len(calls) == 1


def test_request_body_schema_is_generated_from_the_marshmallow_schemas(doc):
    put = doc["paths"][STAT]["put"]
    assert put["requestBody"]["required"] is True
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/StatBody"}
    stat_body, view_data = _schema(doc, "StatBody"), _schema(doc, "ViewData")
    assert set(stat_body["properties"]) == set(StatBodySchema().fields)
    assert set(view_data["properties"]) == set(ViewDataSchema().fields)
    # unknown = RAISE in both schemas: unknown fields are refused.
    assert stat_body["additionalProperties"] is False
    assert view_data["additionalProperties"] is False
    assert "required" not in stat_body
    assert view_data["required"] == ["asset_id"]
    assert stat_body["properties"]["view_data"]["items"] == {
        "$ref": "#/components/schemas/ViewData"
    }


def test_custom_fields_map_to_their_json_schema_bounds(doc):
    guid = {
        "type": "string",
        "minLength": 1,
        "maxLength": 256,
        "pattern": NO_CONTROL_PATTERN,
    }
    view_data = _schema(doc, "ViewData")["properties"]
    assert {k: view_data["asset_id"][k] for k in guid} == guid
    assert "nullable" not in view_data["asset_id"]
    favorites = _schema(doc, "StatBody")["properties"]["favorites"]
    assert favorites["type"] == "array"
    assert {k: favorites["items"][k] for k in guid} == guid
    for name in ("play_count", "view_time", "pause_time", "last_played_on"):
        prop = view_data[name]
        assert (prop["type"], prop["minimum"], prop["maximum"]) == (
            "integer",
            0,
            MAX_SAFE_INTEGER,
        )
        assert prop["nullable"] is True
    rating = view_data["user_rating"]
    assert (rating["type"], rating["minimum"], rating["maximum"]) == ("number", 0, 5)
    assert rating["nullable"] is True
    # Responses never hold nulls.
    record = _schema(doc, "ViewRecord")["properties"]
    assert not any(prop.get("nullable") for prop in record.values())


def test_id_pattern_forbids_exactly_the_service_control_characters():
    pattern = re.compile(NO_CONTROL_PATTERN)
    for code in range(0x10000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates never reach the service
        # Framed by letters: Python's "$" also matches before a final newline.
        allowed = pattern.search(f"x{char}x") is not None
        assert allowed is not has_control_characters(char), hex(code)


# Bodies on both sides of every documented bound: the document and the
# validator must agree. (No string ends with a newline: Python's "$" would
# accept it where ECMA-262's, the one OpenAPI means, does not.)
BODIES = [
    {},
    {"user_id": SUB},
    {"favorites": []},
    {"favorites": ["a", "b" * 256]},
    {"favorites": [""]},
    {"favorites": ["b" * 257]},
    {"favorites": ["a\x00b"]},
    {"favorites": ["a\x85b"]},
    {"favorites": None},
    {"favorites": [1]},
    {"favourites": ["a"]},
    {"view_data": []},
    {"view_data": [{"asset_id": "a"}]},
    {"view_data": [{}]},
    {"view_data": [{"asset_id": ""}]},
    {"view_data": [{"asset_id": "a\nb"}]},
    {"view_data": [{"asset_id": "a", "play_count": 0}]},
    {"view_data": [{"asset_id": "a", "play_count": MAX_SAFE_INTEGER}]},
    {"view_data": [{"asset_id": "a", "play_count": MAX_SAFE_INTEGER + 1}]},
    {"view_data": [{"asset_id": "a", "view_time": -1}]},
    {"view_data": [{"asset_id": "a", "pause_time": 1.5}]},
    {"view_data": [{"asset_id": "a", "pause_time": "12"}]},
    {"view_data": [{"asset_id": "a", "last_played_on": True}]},
    {"view_data": [{"asset_id": "a", "last_played_on": None}]},
    {"view_data": [{"asset_id": "a", "user_rating": 3.5}]},
    {"view_data": [{"asset_id": "a", "user_rating": 5}]},
    {"view_data": [{"asset_id": "a", "user_rating": 5.0001}]},
    {"view_data": [{"asset_id": "a", "user_rating": -0.5}]},
    {"view_data": [{"asset_id": "a", "user_rating": False}]},
    {"view_data": [{"asset_id": "a", "user_rating": None}]},
    {"view_data": [{"asset_id": "a", "rating": 3}]},
    {"view_data": None},
    {"view_data": [None]},
    {"view_data": {"asset_id": "a"}},
    [],
    "body",
]


@pytest.mark.parametrize("body", BODIES, ids=lambda body: json.dumps(body)[:60])
def test_document_and_validator_agree_on_the_body(doc, body):
    schema = doc["paths"][STAT]["put"]["requestBody"]["content"]["application/json"]
    documented = _response_validator(doc, schema["schema"]).is_valid(body)
    try:
        load_body(body, SUB)
        accepted = True
    except Exception:
        accepted = False
    assert documented is accepted


@pytest.mark.parametrize(
    "value",
    ["true", "false", "TRUE", "False", "tRuE", "yes", "1", "", "truex", " true"],
)
def test_is_delta_pattern_matches_what_the_service_accepts(fake_client, doc, value):
    (param,) = doc["paths"][STAT]["put"]["parameters"]
    assert param["name"] == "isDelta" and param["in"] == "query"
    assert param["schema"]["pattern"] == IS_DELTA_PATTERN
    documented = re.search(param["schema"]["pattern"], value) is not None
    response = fake_client.put(
        PATH + SUB,
        query_string={"isDelta": value},
        json={},
        headers=bearer(),
    )
    assert response.status_code == (200 if documented else 400)


@pytest.mark.parametrize("encoded", ["%00", "%0A", "%0D", "%1F", "%7F", "%C2%85"])
def test_ids_the_document_forbids_are_refused_with_400(fake_client, doc, encoded):
    (param,) = doc["paths"][STAT]["parameters"]
    assert re.search(param["schema"]["pattern"], unquote(encoded) + "x") is None
    response = fake_client.get(
        f"{PATH}a{encoded}b", headers=bearer("admin", admin=True)
    )
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["message"] == "BAD_REQUEST"


# --- responses, errors and security ----------------------------------------


def test_each_operation_lists_its_success_and_error_statuses(doc):
    errors = {"400", "401", "403", "404", "405", "500", "503"}
    item = doc["paths"][STAT]
    assert set(item["put"]["responses"]) == {"200", "409", "413", "415"} | errors
    assert set(item["get"]["responses"]) == {"200"} | errors
    assert set(item["delete"]["responses"]) == {"204"} | errors
    assert "content" not in item["delete"]["responses"]["204"]
    assert set(doc["paths"]["/readyz"]["get"]["responses"]) == {"200", "500", "503"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status >= "400":
                    schema = _resolve(doc, response)["content"]["application/json"]
                    assert schema["schema"]["allOf"][0] == {
                        "$ref": "#/components/schemas/Error"
                    }, (path, method, status)


def test_error_statuses_carry_their_documented_headers(doc):
    responses = doc["components"]["responses"]
    assert responses["Unauthorized"]["headers"]["WWW-Authenticate"]["required"]
    retry_after = responses["ServiceUnavailable"]["headers"]["Retry-After"]
    assert retry_after["required"] and retry_after["schema"]["type"] == "integer"
    assert responses["MethodNotAllowed"]["headers"]["Allow"]["required"]
    error = _schema(doc, "Error")
    assert set(error["required"]) == {"result", "message", "reason"}
    assert error["additionalProperties"] is False


def test_stat_operations_require_a_jwt_bearer_token_and_the_rest_do_not(doc):
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == (
        "http",
        "bearer",
        "JWT",
    )
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            needs_token = path == STAT or path.startswith(ACTIVITY)
            expected = [{"bearerAuth": []}] if needs_token else []
            assert operation["security"] == expected, (path, method)


def _assert_documented(doc, path, method, response):
    """The response's status, headers and body are the ones the document gives."""
    operation = doc["paths"][path][method]
    documented = _resolve(doc, operation["responses"][str(response.status_code)])
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, name
    media = documented["content"][response.mimetype]
    _response_validator(doc, media["schema"]).validate(response.get_json())


def test_error_responses_match_the_document(fake_client, doc):
    own, other = bearer(), bearer("someone-else")
    cases = [
        ("put", {"json": {}}, 401),
        ("get", {"headers": {"Authorization": "Bearer not-a-jwt"}}, 401),
        ("get", {"headers": other}, 403),
        ("put", {"headers": own, "data": "{}"}, 415),
        ("put", {"headers": own, "query_string": {"isDelta": "yes"}, "json": {}}, 400),
        ("put", {"headers": own, "json": {"favorites": [""]}}, 400),
        ("put", {"headers": own, "json": {"favorites": ["a"] * 5001}}, 413),
        ("delete", {"headers": own, "query_string": {"x": "1"}}, 400),
        ("patch", {"headers": own}, 405),
    ]
    for method, kwargs, status in cases:
        response = getattr(fake_client, method)(PATH + SUB, **kwargs)
        assert response.status_code == status, (method, kwargs, response.data)
        documented_method = "get" if method == "patch" else method
        _assert_documented(doc, STAT, documented_method, response)


def test_storage_outage_is_the_documented_503(settings):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    app = _with_docs(create_app(settings, redis_client=dead))
    client = app.test_client()
    doc = client.get("/openapi.json").get_json()
    response = client.get(PATH + SUB, headers=bearer())
    assert response.status_code == 503
    _assert_documented(doc, STAT, "get", response)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    _assert_documented(doc, "/readyz", "get", ready)
    dead.close()


# --- /docs ------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


def test_docs_page_works_offline_with_local_assets(fake_client):
    page = fake_client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "SwaggerUIBundle(" in html
    assert '"/openapi.json"' in html
    assert "validatorUrl: null" in html  # no call to the online validator
    assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+", html)
    parser = _Links()
    parser.feed(html)
    assert len(parser.urls) >= 4
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = fake_client.get(url)
        assert asset.status_code == 200, url
        suffix = os.path.splitext(parts.path)[1]
        assert asset.mimetype == ASSET_TYPES[suffix], url
        assert len(asset.data) > 100, url
        again = fake_client.get(url, headers={"If-None-Match": asset.headers["ETag"]})
        assert again.status_code == 304, url


def test_docs_assets_outside_the_bundle_list_are_404(fake_client):
    for name in ("index.html", "swagger-initializer.js", "..%2Fopenapi.py", "x"):
        response = fake_client.get(f"/docs/{name}")
        assert response.status_code == 404, name
        assert response.get_json()["message"] == "NOT_FOUND"


# --- schemathesis -----------------------------------------------------------


@pytest.mark.parametrize("family", ["stat", "activity"])
def test_service_conforms_to_its_document_under_schemathesis(fake_app, family):
    """Examples, coverage and fuzzing phases, positive and negative data."""
    schema = schemathesis.openapi.from_wsgi(
        "/openapi.json", fake_app, config=schemathesis.Config()
    )
    examples = EXAMPLES if family == "stat" else ACTIVITY_EXAMPLES
    activity_paths = f"^{re.escape(ACTIVITY)}/"
    if family == "stat":
        schema = schema.exclude(path_regex=activity_paths)
    else:
        schema = schema.include(path_regex=activity_paths)
    token = make_token("schemathesis", admin=True, ttl=3600)
    schema.config.update(headers={"Authorization": f"Bearer {token}"}, workers=1)
    schema.config.seed = SEED
    schema.config.generation.update(
        max_examples=examples,
        database="none",
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    )
    schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
    schema.config.checks.update(included_check_names=CHECKS)

    def before_call(context, case, kwargs):
        # The one rule OpenAPI cannot state: a user_id in the body must equal
        # the id of the path. Path values arrive percent-encoded.
        body = case.body
        subscriber = case.path_parameters and case.path_parameters.get("subscriber_id")
        if (
            case.operation.schema is schema
            and isinstance(body, dict)
            and isinstance(body.get("user_id"), str)
            and isinstance(subscriber, str)
        ):
            body["user_id"] = unquote(subscriber)
        if not case.operation.path.startswith(ACTIVITY):
            return
        if isinstance(body, dict) and not all(map(_simple, body.values())):
            # Werkzeug's test client drops nulls and objects from a form; send
            # every name, with a value no parameter accepts.
            case.body = body = _form_text(body)
        if case._meta is None or case._meta.generation.mode.is_negative:
            return  # refused as it is, whatever the rules below
        # The others concern the activity family's parameters, which come in
        # the query or a form body: never both at once, and `time` or `score`
        # in one of them (the document says so in words).
        if case.query is None:
            case.query = {}
        query = case.query
        if isinstance(body, str):  # a form as text (the coverage phase)
            pairs = [(k, v) for k, v in parse_qsl(body) if k not in query]
            case.body = body = urlencode(pairs)
        form = body if isinstance(body, dict) else {}
        if isinstance(body, str):
            form = dict(parse_qsl(body))
        for name in set(form) & set(query):
            del form[name]
        declared = case.operation.definition.raw.get("parameters", ())
        for name, valid in (("time", 65000), ("score", 4)):
            if any(p["name"] == name for p in declared) and not (
                name in query or name in form
            ):
                query[name] = valid
        # `after` must be a cursor the service made for this list and
        # subscriber: a schema-valid one becomes such a cursor.
        after = query.get("after")
        if isinstance(after, str) and _CURSOR_LIKE.fullmatch(after):
            kind = case.operation.path.split("/")[4]
            position = 1.0 if kind == "fav" else (len(after), after)
            query["after"] = cursors.make(kind, unquote(subscriber), position)

    cursors = fake_app.extensions["stat_cursors"]
    schemathesis.hook(before_call)
    cases, problems, successes = 0, [], set()
    negatives: Counter = Counter()  # (operation, status class) of negative cases
    started = time.monotonic()
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                cases += len(event.recorder.cases)
                for checks in event.recorder.checks.values():
                    for check in checks:
                        if check.failure_info is not None:
                            failure = check.failure_info.failure
                            problems.append(
                                f"{event.label}: {check.name}: {failure.title}\n"
                                f"{failure.message}\n"
                                f"{check.failure_info.code_sample}"
                            )
                for case_id, interaction in event.recorder.interactions.items():
                    response = interaction.response
                    if response is not None and 200 <= response.status_code < 300:
                        successes.add(event.label)
                    node = event.recorder.cases.get(case_id)
                    meta = node and node.value._meta
                    negative = meta and meta.generation.mode.is_negative
                    if response is not None and negative:
                        negatives[event.label, response.status_code // 100] += 1
            elif isinstance(event, (events.NonFatalError, events.FatalError)):
                problems.append(f"schemathesis error: {event.info.format()}")
            elif isinstance(event, events.EngineFinished):
                problems.extend(f"after run: {f.title}" for f in event.failures)
    finally:
        schemathesis.hooks.unregister(before_call)
    print(
        f"schemathesis: {cases} cases in {time.monotonic() - started:.1f} s "
        f"({examples} examples per operation, seed {SEED}); negative cases by "
        f"(operation, status class): {dict(negatives)}"
    )
    unique = list(dict.fromkeys(problems))
    assert not unique, f"{len(unique)} problems:\n\n" + "\n\n".join(unique[:10])
    assert cases > 100
    if family == "activity":
        for (name, ids), methods in ENDPOINTS.items():
            for method in methods:
                label = f"{method} {route_template(name, ids)}"
                assert label in successes, f"no successful {label}"
                assert negatives[label, 4] >= 10, (label, negatives)
        return
    for method in ("PUT", "GET", "DELETE"):
        assert f"{method} {STAT}" in successes, f"no successful {method}"
    # Negative data was generated and refused (a 2xx there fails the
    # negative_data_rejection check above).
    for method in ("PUT", "GET"):
        assert negatives[f"{method} {STAT}", 4] >= 20, negatives
