"""The express lane answers exactly as the Flask app does, on every request.

Two apps on two fakeredis servers, one with the lane (the default) and one
without (EXPRESS_LANE=0), get the same requests as gunicorn would pass them
(RAW_URI, PATH_INFO, QUERY_STRING, CONTENT_TYPE, ...). Each answer must have
the same status, headers (X-Request-ID apart, present and well formed on
both) and body, and after every request both stores must hold the same
data. Which requests the lane takes is checked too, so a lane that hands
everything to Flask cannot pass for a correct one.
"""

from __future__ import annotations

import io
import logging
import os
import re
from urllib.parse import unquote_to_bytes

import fakeredis
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stat_service import create_app
from tests.conftest import PATH, SECRET, SUB, make_token
from tests.support import dump

EXAMPLES = int(os.environ.get("STAT_EXPRESS_EXAMPLES", "250"))
PREFIX = "exp:"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def make_app(lane: bool, **extra):
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    config = {
        "JWT_SECRET": SECRET,
        "KEY_PREFIX": PREFIX,
        "TESTING": True,
        "EXPRESS_LANE": lane,
        "MAX_RECORDS": 12,
        "MAX_FAVORITES": 12,
        "MAX_ITEMS": 20,
        **extra,
    }
    app = create_app(config, redis_client=client)
    app.test_client_ = client
    return app


class Pair:
    """The lane app and the Flask-only app, side by side."""

    def __init__(self, **extra):
        self.lane = make_app(True, **extra)
        self.flask = make_app(False, **extra)
        self.passed = 0  # requests the lane handed on to Flask
        express = self.lane.wsgi_app
        inner = express.inner

        def counting(environ, start_response):
            self.passed += 1
            return inner(environ, start_response)

        express.inner = counting

    def send(self, method, target, headers=(), body=b"", stream=None, **extra):
        """Both answers; asserts they agree, and so do the stores.

        ``stream``: a callable giving each app its own ``wsgi.input``.
        """

        def env():
            built = environ(method, target, headers, body, extra)
            if stream is not None:
                built["wsgi.input"] = stream()
            return built

        before = self.passed
        got = call(self.lane, env())
        taken = self.passed == before
        want = call(self.flask, env())
        assert got == want, (method, target, headers, body)
        assert dump(self.lane.test_client_, PREFIX) == dump(
            self.flask.test_client_, PREFIX
        )
        return got, taken


def environ(method, target, headers, body, extra):
    """A WSGI environ as gunicorn builds it for ``target`` (as sent)."""
    path, _, query = target.partition("?")
    env = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path.encode("latin-1")).decode("latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": target,
        "REQUEST_URI": target,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            env[key] = value
        else:
            env["HTTP_" + key] = value
    env.update(extra)
    return env


def call(app, env):
    """(status, headers without X-Request-ID, body) of one request."""
    answer = {}

    def start_response(status, headers, exc_info=None):
        answer["status"] = status
        answer["headers"] = headers

    chunks = app(env, start_response)
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    headers = []
    ids = []
    for name, value in answer["headers"]:
        (ids if name == "X-Request-ID" else headers).append((name, value))
    assert len(ids) == 1 and REQUEST_ID.fullmatch(ids[0][1]), answer["headers"]
    return answer["status"], headers, body


def record(asset, **fields):
    return {"asset_id": asset, **fields}


def put_body(records=(), favorites=None) -> bytes:
    body = {"view_data": list(records)}
    if favorites is not None:
        body["favorites"] = favorites
    return orjson.dumps(body)


def json_headers(body: bytes, token=None, content_type="application/json"):
    token = make_token() if token is None else token
    headers = [("Authorization", f"Bearer {token}"), ("Content-Length", str(len(body)))]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    return headers


FULL = record(
    "a1",
    play_count=3,
    view_time=120,
    pause_time=60,
    last_played_on=1760000000,
    user_rating=4.5,
)


@pytest.fixture
def pair():
    return Pair()


# --- what the lane takes, and that it answers as Flask does -------------------


def test_plain_put_and_get_are_taken_and_answered_alike(pair):
    body = put_body([FULL, record("a2", pause_time=5)], ["a1", "a2"])
    for query in ("?isDelta=true", "?isDelta=false", ""):
        (status, _, answer), taken = pair.send(
            "PUT", PATH + SUB + query, json_headers(body), body
        )
        assert taken and status == "200 OK", answer
        assert orjson.loads(answer)["is_delta"] is (query != "?isDelta=false")
    (status, headers, answer), taken = pair.send(
        "GET", PATH + SUB, [("Authorization", f"Bearer {make_token()}")]
    )
    assert taken and status == "200 OK"
    assert ("Content-Type", "application/json") in headers
    history = orjson.loads(answer)
    assert history["favorites"] == ["a1", "a2"]
    assert [r["asset_id"] for r in history["view_data"]] == ["a1", "a2"]


def test_percent_encoded_and_admin_requests_are_taken(pair):
    admin = make_token("ops", admin=True)
    body = put_body([FULL])
    for sub in (
        "user%40example.org",
        "caf%C3%A9",
        "a%2Fb",
        "100%25",
        "x y".replace(" ", "%20"),
    ):
        (status, _, _), taken = pair.send(
            "PUT", PATH + sub, json_headers(body, admin), body
        )
        assert taken and status == "200 OK", sub
    (status, _, _), taken = pair.send(
        "GET", PATH + "caf%C3%A9", [("Authorization", f"Bearer {admin}")]
    )
    assert taken and status == "200 OK"


def test_token_refusals_are_answered_by_the_lane_as_by_flask(pair):
    body = put_body([FULL])
    cases = {
        "other subscriber": make_token("someone@else"),
        "expired": make_token(ttl=-120),
        "bad signature": make_token(secret="another-secret-of-at-least-32-bytes!!"),
        "garbage": "not.a.token",
    }
    for name, token in cases.items():
        (status, headers, answer), taken = pair.send(
            "PUT", PATH + SUB, json_headers(body, token), body
        )
        assert taken, name
        assert status.startswith(("401", "403")), (name, status)
        assert any(h == "WWW-Authenticate" for h, _ in headers), name
        assert orjson.loads(answer)["result"] == "error"


# Requests the lane must hand on; Flask answers each (mostly with an error).
def _passed_cases():
    body = put_body([FULL])
    ok = json_headers(body)
    auth = [("Authorization", f"Bearer {make_token()}")]
    return {
        "no token": ("PUT", PATH + SUB, ok[1:], body, {}),
        "two tokens": (
            "PUT",
            PATH + SUB,
            [("Authorization", "Bearer a, Bearer b"), *ok[1:]],
            body,
            {},
        ),
        "basic auth": ("GET", PATH + SUB, [("Authorization", "Basic eDp5")], b"", {}),
        "odd query": ("PUT", PATH + SUB + "?isDelta=TRUE", ok, body, {}),
        "unknown query": ("PUT", PATH + SUB + "?isDelta=true&x=1", ok, body, {}),
        "isDelta twice": (
            "PUT",
            PATH + SUB + "?isDelta=true&isDelta=true",
            ok,
            body,
            {},
        ),
        "GET with query": ("GET", PATH + SUB + "?x=1", auth, b"", {}),
        "GET with a body": (
            "GET",
            PATH + SUB,
            [*auth, ("Content-Length", "2")],
            b"{}",
            {},
        ),
        "text/plain": (
            "PUT",
            PATH + SUB,
            json_headers(body, content_type="text/plain"),
            body,
            {},
        ),
        "no content type": (
            "PUT",
            PATH + SUB,
            json_headers(body, content_type=None),
            body,
            {},
        ),
        "latin-1 charset": (
            "PUT",
            PATH + SUB,
            json_headers(body, content_type="application/json; charset=latin-1"),
            body,
            {},
        ),
        "spaced media type": (
            "PUT",
            PATH + SUB,
            json_headers(body, content_type="application/json ; charset=utf-8"),
            body,
            {},
        ),
        "Content-Length in other digits": (
            "PUT",
            PATH + SUB,
            [ok[0], ok[2], ("Content-Length", "\u00b2")],
            body,
            {},
        ),
        "Content-Length of 4,400 digits": (
            "PUT",
            PATH + SUB,
            [ok[0], ok[2], ("Content-Length", "0" * 4400 + str(len(body)))],
            body,
            {},
        ),
        "empty body": ("PUT", PATH + SUB, json_headers(b""), b"", {}),
        "short body": (
            "PUT",
            PATH + SUB,
            [
                *json_headers(body)[:1],
                ("Content-Length", str(len(body) + 5)),
                ("Content-Type", "application/json"),
            ],
            body,
            {},
        ),
        "chunked": (
            "PUT",
            PATH + SUB,
            [ok[0], ok[2], ("Transfer-Encoding", "chunked")],
            body,
            {},
        ),
        "over MAX_BODY_BYTES": (
            "PUT",
            PATH + SUB,
            [ok[0], ok[2], ("Content-Length", str(10**7))],
            body,
            {},
        ),
        "invalid JSON": ("PUT", PATH + SUB, json_headers(b"{"), b"{", {}),
        "duplicate key": (
            "PUT",
            PATH + SUB,
            json_headers(b'{"view_data":[],"view_data":[]}'),
            b'{"view_data":[],"view_data":[]}',
            {},
        ),
        "bad field": (
            "PUT",
            PATH + SUB,
            json_headers(put_body([record("a1", play_count=-1)])),
            put_body([record("a1", play_count=-1)]),
            {},
        ),
        "too many items": (
            "PUT",
            PATH + SUB,
            json_headers(put_body([record(f"a{i}") for i in range(21)])),
            put_body([record(f"a{i}") for i in range(21)]),
            {},
        ),
        "empty id": ("GET", PATH, auth, b"", {}),
        "invalid UTF-8 id": ("GET", PATH + "%FF", auth, b"", {}),
        "control character in id": ("GET", PATH + "a%0Ab", auth, b"", {}),
        "id too long": ("GET", PATH + "a" * 300, auth, b"", {}),
        "fragment": ("GET", PATH + SUB + "#x", auth, b"", {}),
        "script name": ("GET", PATH + SUB, auth, b"", {"SCRIPT_NAME": "/base"}),
        "HEAD": ("HEAD", PATH + SUB, auth, b"", {}),
        "DELETE": ("DELETE", PATH + SUB, auth, b"", {}),
        "POST": ("POST", PATH + SUB, ok, body, {}),
        "other path": ("GET", "/metax/3.0/ui/user/stats/" + SUB, auth, b"", {}),
        "absolute form": ("GET", "http://localhost" + PATH + SUB, auth, b"", {}),
    }


@pytest.mark.parametrize("name", sorted(_passed_cases()))
def test_unusual_requests_are_handed_to_flask(pair, name):
    method, target, headers, body, extra = _passed_cases()[name]
    (_, _, answer), taken = pair.send(method, target, headers, body, **extra)
    assert not taken, name


def test_unusual_requests_change_nothing_and_valid_ones_after_them_work(pair):
    for method, target, headers, body, extra in _passed_cases().values():
        pair.send(method, target, headers, body, **extra)
    body = put_body([FULL])
    (status, _, _), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken and status == "200 OK"


def test_a_body_over_max_body_bytes_goes_to_flask_for_its_413():
    pair = Pair(MAX_BODY_BYTES=200)
    body = put_body([record(f"asset-{i}", play_count=i) for i in range(8)])
    assert len(body) > 200
    (status, _, _), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert not taken and status.startswith("413")


def test_chunked_with_a_content_length_goes_to_flask(pair):
    body = put_body([FULL])
    headers = [*json_headers(body), ("Transfer-Encoding", "chunked")]
    (status, _, _), taken = pair.send("PUT", PATH + SUB, headers, body)
    assert not taken


def test_utf8_bytes_and_percent_escapes_in_one_target_are_read_alike(pair):
    # WSGI text holds the target's bytes one per character (latin-1).
    target = PATH + "caf\u00c3\u00a9%20x"
    admin = make_token("ops", admin=True)
    body = put_body([FULL])
    (status, _, answer), taken = pair.send(
        "PUT", target, json_headers(body, admin), body
    )
    assert taken and status == "200 OK"
    assert orjson.loads(answer)["subscriber_id"] == "caf\u00e9 x"


class _Broken:
    """A body stream that gives ``data`` and then raises ``error``."""

    def __init__(self, data: bytes, error: Exception):
        self.data = data
        self.error = error

    def read(self, size=None):
        if not self.data:
            raise self.error
        if size is None or size < 0:
            size = len(self.data)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


@pytest.mark.parametrize("given", [0, 10])
@pytest.mark.parametrize("error", [ConnectionResetError, TimeoutError, ValueError])
def test_a_body_whose_read_fails_is_answered_alike(pair, given, error):
    body = put_body([FULL])
    (status, _, answer), taken = pair.send(
        "PUT",
        PATH + SUB,
        json_headers(body),
        body,
        stream=lambda: _Broken(body[:given], error("reset by peer")),
    )
    assert not taken and status.startswith(("400", "500")), answer


def test_a_failing_metric_leaves_the_answer_as_it_was(pair, monkeypatch, caplog):
    from stat_service.http import observability

    class Broken:
        def labels(self, *args):
            raise OSError("no space left on device")

    monkeypatch.setattr(observability, "REQUESTS", Broken())
    body = put_body([FULL])
    with caplog.at_level(logging.ERROR, logger="stat_service.observability"):
        (status, _, _), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken and status == "200 OK"
    assert [r.message for r in caplog.records].count(
        "request not counted or logged"
    ) == 2


# --- the store's refusals and failures -------------------------------------------


def test_history_full_is_a_409_from_both(pair):
    records = [record(f"b{i}", last_played_on=i) for i in range(12)]
    body = put_body(records)
    (status, _, _), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken and status == "200 OK"
    body = put_body([record("one-more")])
    (status, _, answer), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken and status == "409 CONFLICT", answer


def test_history_full_evict_reports_evictions_alike():
    pair = Pair(HISTORY_FULL="evict")
    records = [record(f"b{i}", last_played_on=i) for i in range(12)]
    body = put_body(records)
    pair.send("PUT", PATH + SUB, json_headers(body), body)
    body = put_body([record("one-more", last_played_on=99)])
    (status, _, answer), taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken and status == "200 OK" and orjson.loads(answer)["evicted"] == 1


@pytest.mark.parametrize(
    "error, status",
    [
        (redis.ConnectionError("down"), "503 SERVICE UNAVAILABLE"),
        (redis.ResponseError("ERR something odd"), "500 INTERNAL SERVER ERROR"),
        (RuntimeError("a bug"), "500 INTERNAL SERVER ERROR"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_store_failures_are_answered_alike(pair, monkeypatch, error, status, method):
    def fail(*args, **kwargs):
        raise error

    for app in (pair.lane, pair.flask):
        store = app.extensions["stat_store"]
        monkeypatch.setattr(store, "put", fail)
        monkeypatch.setattr(store, "get_json", fail)
    body = put_body([FULL]) if method == "PUT" else b""
    headers = (
        json_headers(body)
        if method == "PUT"
        else [("Authorization", f"Bearer {make_token()}")]
    )
    (got, headers, answer), taken = pair.send(method, PATH + SUB, headers, body)
    assert taken and got == status, answer
    if status.startswith("503"):
        assert ("Retry-After", "1") in headers


def test_the_access_log_and_metrics_agree(pair, caplog):
    from stat_service.ops.metrics import REQUESTS

    route = "/metax/3.0/ui/user/stat/<rest:_path>"
    before = REQUESTS.labels(route, "PUT", "200")._value.get()
    body = put_body([FULL])
    with caplog.at_level(logging.INFO, logger="stat_service.access"):
        _, taken = pair.send("PUT", PATH + SUB, json_headers(body), body)
    assert taken
    assert REQUESTS.labels(route, "PUT", "200")._value.get() == before + 2
    lines = [r.fields for r in caplog.records if r.name == "stat_service.access"]
    assert len(lines) == 2
    for fields in lines:
        fields.pop("duration_ms")
        fields.pop("request_id")
    assert lines[0] == lines[1] and lines[0]["route"] == route
    assert "subscriber" in lines[0]


def test_a_client_request_id_is_kept(pair):
    body = put_body([FULL])
    env = environ("PUT", PATH + SUB, json_headers(body), body, {})
    env["HTTP_X_REQUEST_ID"] = "abc-123"
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen.update(headers)

    b"".join(pair.lane(env, start_response))
    assert seen["X-Request-ID"] == "abc-123"


def test_the_lane_can_be_turned_off():
    app = make_app(False)
    assert not hasattr(app.wsgi_app, "inner")


# --- generated requests ----------------------------------------------------------

_IDS = st.sampled_from(
    [
        SUB,
        "user%40example.org",
        "caf%C3%A9",
        "a%2Fb",
        "%FF",
        "",
        "a%0Ab",
        "x" * 257,
        "b#c",
    ]
)
_QUERIES = st.sampled_from(
    ["", "?isDelta=true", "?isDelta=false", "?isDelta=1", "?x=1"]
)
_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", None]
)
_TOKENS = st.sampled_from(["mine", "admin", "other", "expired", "none"])
_NUMBERS = st.one_of(
    st.integers(-2, 2**53 + 1),
    st.floats(allow_nan=False),
    st.none(),
    st.text(max_size=3),
)
_RECORDS = st.lists(
    st.fixed_dictionaries(
        {"asset_id": st.sampled_from(["a1", "a2", "a3", "", "a" * 300])},
        optional={
            "play_count": _NUMBERS,
            "view_time": _NUMBERS,
            "pause_time": _NUMBERS,
            "last_played_on": _NUMBERS,
            "user_rating": st.sampled_from([1, 2.5, 5, 6, 0.5, None, "4"]),
            "extra": st.just(1),
        },
    ),
    max_size=14,
)
_BODIES = st.one_of(
    st.builds(
        put_body,
        _RECORDS,
        st.one_of(
            st.none(), st.lists(st.sampled_from(["a1", "a2", "f", ""]), max_size=14)
        ),
    ),
    st.sampled_from([b"", b"{", b"[]", b'{"view_data": null}', b'{"favorites": []}']),
)


def _token(kind: str, sub: str):
    sub = unquote_to_bytes(sub).decode("utf-8", "replace")
    return {
        "mine": make_token(sub),
        "admin": make_token("ops", admin=True),
        "other": make_token("someone-else"),
        "expired": make_token(sub, ttl=-120),
        "none": None,
    }[kind]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["PUT", "GET"]), _IDS, _QUERIES, _TYPES, _TOKENS, _BODIES
        ),
        min_size=1,
        max_size=6,
    )
)
def test_generated_requests_are_answered_alike(steps):
    pair = Pair()
    for method, sub, query, ctype, token_kind, body in steps:
        token = _token(token_kind, sub)
        headers = [] if token is None else [("Authorization", f"Bearer {token}")]
        if method == "PUT":
            headers.append(("Content-Length", str(len(body))))
            if ctype is not None:
                headers.append(("Content-Type", ctype))
        else:
            body = b""
        pair.send(method, PATH + sub + query, headers, body)
