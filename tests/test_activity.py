"""API.md section 9, rule by rule: the activity family (one item, or a page)."""

from __future__ import annotations

import base64
import random
import re
import time
import uuid
from urllib.parse import quote, urlencode

import fakeredis
import pytest

from stat_service import create_app
from stat_service.rules.schemas import MAX_SAFE_INTEGER
from tests.conftest import PATH, SUB, bearer
from tests.support import MESSAGES, dump

ALSO_ON_CLUSTER = True

ACTIVITY = "/metax/2.1/activity"
AUTH = bearer(SUB, ttl=3600)
ADMIN = bearer(admin=True, ttl=3600)
FORM = "application/x-www-form-urlencoded"
NOW_MS = 1764000000000
ITEMS = {"fav": "favorites", "watch": "view_data", "continue": "view_data"}
# Every (method, list, ids in the path) of the table of section 9.
ENDPOINTS = [
    ("GET", "fav", 1),
    ("PUT", "fav", 2),
    ("DELETE", "fav", 2),
    ("GET", "watch", 1),
    ("PUT", "watch", 2),
    ("DELETE", "watch", 2),
    ("GET", "continue", 1),
    ("GET", "pausetime", 2),
    ("PUT", "pausetime", 2),
    ("PUT", "review", 2),
]
# A valid request of each endpoint (its parameters).
VALID_PARAMS = {
    ("PUT", "watch"): {"last_played_on": "5"},
    ("PUT", "pausetime"): {"time": "12000"},
    ("PUT", "review"): {"score": "3"},
}


def url(kind: str, sub: str = SUB, asset: str | None = None, **params) -> str:
    """An activity URL; each id is one segment, every reserved character encoded."""
    path = f"{ACTIVITY}/{kind}/{quote(sub, safe='')}"
    if asset is not None:
        path += "/" + quote(asset, safe="")
    return path + ("?" + urlencode(params) if params else "")


def endpoint_url(kind: str, ids: int, sub: str = SUB, **params) -> str:
    return url(kind, sub, "asset-1" if ids == 2 else None, **params)


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["result"] == "error"
    assert body["message"] == MESSAGES[status]
    assert isinstance(body["reason"], str) and body["reason"]
    return body


def put_history(client, body: dict, *, delta: bool = False, sub: str = SUB) -> dict:
    flag = "true" if delta else "false"
    return ok(
        client.put(
            f"{PATH}{quote(sub, safe='')}?isDelta={flag}", json=body, headers=ADMIN
        )
    )


def history(client, sub: str = SUB) -> dict:
    got = ok(client.get(PATH + quote(sub, safe=""), headers=ADMIN))
    return {"favorites": got["favorites"], "view_data": got["view_data"]}


def order(record: dict):
    """Section 2's order: last played first, never played last, ids by code point."""
    played = record.get("last_played_on")
    return (played is None, -(played or 0), record["asset_id"])


def watch_list(records) -> list[dict]:
    return sorted((r for r in records if "last_played_on" in r), key=order)


def continue_list(records) -> list[dict]:
    return sorted((r for r in records if r.get("pause_time", 0) > 0), key=order)


def page(client, kind: str, sub: str = SUB, headers=AUTH, **params) -> dict:
    return ok(client.get(url(kind, sub, **params), headers=headers))


def walk(client, kind: str, limit: int, sub: str = SUB, between=None) -> list:
    """Every item of a list, page by page; ``between(page)`` runs between pages."""
    items, after, pages = [], None, 0
    while True:
        params = {"limit": limit} if after is None else {"limit": limit, "after": after}
        body = page(client, kind, sub, **params)
        got = body[ITEMS[kind]]
        assert len(got) <= limit
        items += got
        after = body["next"]
        if after is None:
            return items
        assert got, "a page that is not the last one is empty"
        pages += 1
        assert pages < 2000, "the walk does not end"
        if between is not None:
            between(body)


def mixed_history(seed: int = 7) -> dict:
    """Records with every mix of fields, ties of last_played_on, awkward ids."""
    rnd = random.Random(seed)
    ids = ["a", "B", "b", "é", "\uff5a", "\U0001f600", "z", "a b", "x/y", "{t}", "%25"]
    ids += [f"t{i:02d}" for i in range(19)]
    played = [None, None, 0, 100, 100, 100, NOW_MS, MAX_SAFE_INTEGER]
    records = []
    for asset in ids:
        record = {"asset_id": asset, "play_count": rnd.randrange(5)}
        lp, pause = rnd.choice(played), rnd.choice([None, 0, 0, 5, 310])
        if lp is not None:
            record["last_played_on"] = lp
        if pause is not None:
            record["pause_time"] = pause
        if rnd.random() < 0.5:
            record["user_rating"] = rnd.choice([3, 3.5, 4.0])
        records.append(record)
    favorites = [f"fav-{i}" for i in range(20)] + ["é", "\U0001f600", "a/b"]
    return {"favorites": favorites, "view_data": records}


@pytest.fixture
def fake_app(settings):
    """The app on fakeredis only: for rules of the HTTP layer (routing,
    parameters, tokens, cursors), which no storage backend changes."""
    return create_app(settings, redis_client=fakeredis.FakeRedis())


@pytest.fixture
def fake_client(fake_app):
    return fake_app.test_client()


@pytest.fixture
def fake_snapshot(fake_app, key_prefix):
    return lambda: dump(fake_app.extensions["stat_store"].client, key_prefix)


@pytest.fixture
def mixed(client) -> dict:
    body = mixed_history()
    put_history(client, body)
    return body


# --- the 200 bodies of the table ------------------------------------------------------


def test_fav_put_and_delete_answer_exactly_their_fields(client):
    base = {"result": "success", "subscriber_id": SUB, "asset_id": "a1", "evicted": 0}
    assert ok(client.put(url("fav", asset="a1"), headers=AUTH)) == {
        **base,
        "added": True,
        "favorites": 1,
    }
    assert ok(client.put(url("fav", asset="a1"), headers=AUTH)) == {
        **base,
        "added": False,
        "favorites": 1,
    }
    assert ok(client.delete(url("fav", asset="a1"), headers=AUTH)) == {
        **base,
        "removed": True,
        "favorites": 0,
    }
    assert ok(client.delete(url("fav", asset="a1"), headers=AUTH)) == {
        **base,
        "removed": False,
        "favorites": 0,
    }


def test_watch_pausetime_and_review_answer_exactly_their_fields(client):
    base = {"result": "success", "subscriber_id": SUB, "asset_id": "a1"}
    put = client.put(url("watch", asset="a1", last_played_on=NOW_MS), headers=AUTH)
    assert ok(put) == {**base, "last_played_on": NOW_MS, "evicted": 0}
    put = client.put(url("pausetime", asset="a1", time=12345), headers=AUTH)
    assert ok(put) == {**base, "time": 12000, "ignored": False, "evicted": 0}
    assert ok(client.get(url("pausetime", asset="a1"), headers=AUTH)) == {
        **base,
        "time": 12000,
    }
    put = client.put(url("review", asset="a1", score="3.5"), headers=AUTH)
    assert ok(put) == {**base, "user_rating": 3.5, "evicted": 0}
    assert ok(client.delete(url("watch", asset="a1"), headers=AUTH)) == {
        **base,
        "removed": True,
        "evicted": 0,
    }
    assert ok(client.delete(url("watch", asset="a1"), headers=AUTH)) == {
        **base,
        "removed": False,
        "evicted": 0,
    }


def test_list_pages_answer_exactly_their_fields(client):
    record = {"asset_id": "a", "pause_time": 310, "last_played_on": NOW_MS}
    put_history(client, {"favorites": ["f1", "f2"], "view_data": [record]})
    base = {"result": "success", "subscriber_id": SUB, "total": 1, "next": None}
    assert page(client, "fav") == {**base, "favorites": ["f1", "f2"], "total": 2}
    assert page(client, "watch") == {**base, "view_data": [record]}
    assert page(client, "continue") == {**base, "view_data": [record]}


# --- the same stored data as sections 1 to 3 ------------------------------------------


# (endpoint, its parameters, the field it writes, the value a delta PUT sends)
ONE_FIELD_WRITES = [
    ("watch", {"last_played_on": str(NOW_MS + 123)}, "last_played_on", NOW_MS + 123),
    ("watch", {"last_played_on": "0"}, "last_played_on", 0),
    ("pausetime", {"time": "12999"}, "pause_time", 12),
    ("pausetime", {"time": str(MAX_SAFE_INTEGER)}, "pause_time", 9007199254740),
    ("review", {"score": "4"}, "user_rating", 4),
    ("review", {"score": "3.5"}, "user_rating", 3.5),
    ("review", {"score": "4.0"}, "user_rating", 4.0),
    ("review", {"score": "0"}, "user_rating", 0),
]


def test_an_activity_put_stores_what_a_delta_put_of_that_field_stores(
    client, store, redis_client
):
    prior = {
        "asset_id": "old",
        "play_count": 2,
        "view_time": 30,
        "pause_time": 40,
        "last_played_on": 1,
        "user_rating": 1,
    }
    for n, (kind, params, field, value) in enumerate(ONE_FIELD_WRITES):
        case = (kind, params)
        via_activity, via_put = f"activity-{n}", f"put-{n}"
        for sub in (via_activity, via_put):
            put_history(client, {"view_data": [prior]}, sub=sub)
        for asset in ("old", "new"):  # an update, and a record it creates
            target = url(kind, via_activity, asset, **params)
            reply = ok(client.put(target, headers=ADMIN))
            body = {"view_data": [{"asset_id": asset, field: value}]}
            put_history(client, body, delta=True, sub=via_put)
            shown = "time" if kind == "pausetime" else field
            expected = value * 1000 if kind == "pausetime" else value
            assert reply[shown] == expected, case
            assert type(reply[shown]) is type(expected), case
            stored = redis_client.hget(store.keys(via_activity)[1], asset)
            assert stored == redis_client.hget(store.keys(via_put)[1], asset), case
        got = history(client, via_activity)
        assert got == history(client, via_put), case
        for record in got["view_data"]:
            assert record[field] == value, case
            assert type(record[field]) is type(value), case


def test_section_1_writes_show_in_the_activity_lists(client, mixed):
    records = history(client)["view_data"]
    assert records == sorted(mixed["view_data"], key=order)
    assert walk(client, "fav", 500) == mixed["favorites"]
    assert walk(client, "watch", 500) == watch_list(mixed["view_data"])
    assert walk(client, "continue", 500) == continue_list(mixed["view_data"])
    for record in mixed["view_data"]:
        got = ok(client.get(url("pausetime", asset=record["asset_id"]), headers=AUTH))
        assert got["time"] == record.get("pause_time", 0) * 1000
    # A delta removing pause_time takes the title out of "Continue Watching".
    paused = continue_list(mixed["view_data"])[0]
    patch = {"asset_id": paused["asset_id"], "pause_time": None}
    put_history(client, {"view_data": [patch]}, delta=True)
    assert paused["asset_id"] not in [
        r["asset_id"] for r in walk(client, "continue", 500)
    ]
    assert page(client, "continue")["total"] == len(continue_list(records)) - 1


def test_watch_delete_removes_the_whole_record_and_keeps_the_favorites(client):
    record = {"asset_id": "a", "pause_time": 310, "last_played_on": NOW_MS}
    other = {"asset_id": "b", "pause_time": 5, "last_played_on": NOW_MS - 1}
    put_history(client, {"favorites": ["a", "b"], "view_data": [record, other]})
    assert ok(client.delete(url("watch", asset="a"), headers=AUTH))["removed"] is True
    assert history(client) == {"favorites": ["a", "b"], "view_data": [other]}
    assert page(client, "watch")["view_data"] == [other]
    assert page(client, "continue")["view_data"] == [other]
    assert ok(client.get(url("pausetime", asset="a"), headers=AUTH))["time"] == 0


# --- favorites ------------------------------------------------------------------------


def test_fav_adds_at_the_end_keeps_positions_and_reads_back_in_section_2(client):
    put_history(client, {"favorites": ["p", "q"]})
    for guid in ("a", "b", "c", "d"):
        assert ok(client.put(url("fav", asset=guid), headers=AUTH))["added"] is True
    assert ok(client.delete(url("fav", asset="b"), headers=AUTH))["favorites"] == 5
    assert ok(client.delete(url("fav", asset="p"), headers=AUTH))["removed"] is True
    assert ok(client.put(url("fav", asset="e"), headers=AUTH))["favorites"] == 5
    again = ok(client.put(url("fav", asset="a"), headers=AUTH))
    assert (again["added"], again["favorites"]) == (False, 5)
    absent = ok(client.delete(url("fav", asset="zz"), headers=AUTH))
    assert (absent["removed"], absent["favorites"]) == (False, 5)
    assert history(client)["favorites"] == ["q", "a", "c", "d", "e"]
    assert walk(client, "fav", 2) == ["q", "a", "c", "d", "e"]


# --- watch, continue and their order --------------------------------------------------


def test_a_walk_returns_every_item_once_in_section_2_order(client, mixed):
    records = mixed["view_data"]
    for limit in (1, 2, 7):
        assert walk(client, "fav", limit) == mixed["favorites"], limit
        assert walk(client, "watch", limit) == watch_list(records), limit
        assert walk(client, "continue", limit) == continue_list(records), limit
    totals = {kind: page(client, kind, limit=2)["total"] for kind in ITEMS}
    assert totals == {
        "fav": len(mixed["favorites"]),
        "watch": len(watch_list(records)),
        "continue": len(continue_list(records)),
    }


def test_records_without_last_played_on_come_last_in_continue_by_code_point(client):
    ids = ["\U0001f600", "\uff5a", "é", "b", "B", "a"]  # UTF-16 would order 😀 first
    records = [{"asset_id": i, "pause_time": 5} for i in ids]
    records.append({"asset_id": "played", "pause_time": 5, "last_played_on": 0})
    put_history(client, {"view_data": records})
    got = [r["asset_id"] for r in walk(client, "continue", 1)]
    assert got == ["played", "B", "a", "b", "é", "\uff5a", "\U0001f600"]
    assert walk(client, "watch", 1) == [records[-1]]


def test_watch_put_without_last_played_on_uses_the_server_clock(client):
    put_history(client, {"view_data": [{"asset_id": "a", "play_count": 3}]})
    before = time.time_ns() // 1_000_000
    reply = ok(client.put(url("watch", asset="a"), headers=AUTH))
    after = time.time_ns() // 1_000_000
    assert before <= reply["last_played_on"] <= after
    assert history(client)["view_data"] == [
        {"asset_id": "a", "play_count": 3, "last_played_on": reply["last_played_on"]}
    ]
    exact = ok(client.put(url("watch", asset="a", last_played_on=7), headers=AUTH))
    assert exact["last_played_on"] == 7
    assert history(client)["view_data"][0]["last_played_on"] == 7


# --- pausetime and review -------------------------------------------------------------


def test_pausetime_is_ms_on_the_wire_whole_seconds_stored(client, snapshot):
    assert ok(client.get(url("pausetime", asset="a"), headers=AUTH))["time"] == 0
    assert snapshot() == {}  # a read creates nothing
    for ms, stored in [(12999, 12), (10000, 10), (61001, 61)]:
        reply = ok(client.put(url("pausetime", asset="a", time=ms), headers=AUTH))
        assert (reply["time"], reply["ignored"]) == (stored * 1000, False)
        assert history(client)["view_data"] == [{"asset_id": "a", "pause_time": stored}]
        got = ok(client.get(url("pausetime", asset="a"), headers=AUTH))
        assert got["time"] == stored * 1000


def test_pausetime_under_10000_ms_is_ignored_and_writes_nothing(client, snapshot):
    put_history(client, {"view_data": [{"asset_id": "a", "pause_time": 61}]})
    before = snapshot()
    for ms in (9999, 1, 0):
        reply = ok(client.put(url("pausetime", asset="a", time=ms), headers=AUTH))
        assert (reply["time"], reply["ignored"], reply["evicted"]) == (61000, True, 0)
        reply = ok(client.put(url("pausetime", asset="new", time=ms), headers=AUTH))
        assert (reply["time"], reply["ignored"]) == (0, True)
    assert snapshot() == before  # no record created, none changed


def test_review_score_keeps_its_json_type_as_section_1_does(client):
    for score, text in [("4", b'"user_rating":4'), ("4.0", b'"user_rating":4.0')]:
        reply = client.put(url("review", asset="a", score=score), headers=AUTH)
        assert text in reply.get_data().replace(b" ", b"")
        got = client.get(PATH + SUB, headers=AUTH).get_data().replace(b" ", b"")
        assert text + b"}" in got
    ok(client.put(url("review", asset="a", score="3.50"), headers=AUTH))
    assert history(client)["view_data"] == [{"asset_id": "a", "user_rating": 3.5}]


# --- parameters -----------------------------------------------------------------------


def test_put_parameters_may_come_in_a_form_body(fake_client):
    for charset in ("", "; charset=utf-8", "; charset=UTF-8"):
        headers = {**AUTH, "Content-Type": FORM + charset}
        for kind, form, field, value in [
            ("pausetime", "time=12345", "time", 12000),
            ("review", "score=3.5&type=vod", "user_rating", 3.5),
            ("watch", "last_played_on=9", "last_played_on", 9),
        ]:
            reply = fake_client.put(url(kind, asset="a"), data=form, headers=headers)
            assert ok(reply)[field] == value, (charset, form)
        reply = fake_client.delete(
            url("fav", asset="a"), data="type=vod", headers=headers
        )
        assert ok(reply)["removed"] is False
    assert history(fake_client)["view_data"] == [
        {"asset_id": "a", "pause_time": 12, "last_played_on": 9, "user_rating": 3.5}
    ]


def test_an_empty_body_is_fine(fake_client):
    for content_type in (None, "application/json", FORM):
        headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
        reply = fake_client.put(url("fav", asset="a"), data=b"", headers=headers)
        assert ok(reply)["favorites"] == 1, content_type
        target = url("pausetime", asset="a", time=20000)
        assert ok(fake_client.put(target, data=b"", headers=headers))["time"] == 20000


def test_a_body_of_another_media_type_is_415_and_writes_nothing(
    fake_client, fake_snapshot
):
    for content_type, data in [
        ("application/json", b'{"time": 12000}'),
        ("text/plain", b"time=12000"),
        (FORM + "; charset=latin-1", b"time=12000"),
        ("multipart/form-data; boundary=x", b"--x--"),
    ]:
        headers = {**AUTH, "Content-Type": content_type}
        for kind in ("pausetime", "fav"):
            target = url(kind, asset="a")
            error(fake_client.put(target, data=data, headers=headers), 415)
    assert fake_snapshot() == {}


def test_unknown_repeated_or_doubly_given_parameters_are_400(
    fake_client, fake_snapshot
):
    for method, kind, query, form in [
        ("PUT", "pausetime", "time=12000", "time=13000"),
        ("PUT", "pausetime", "time=12000&time=12000", None),
        ("PUT", "pausetime", None, "time=12000&time=13000"),
        ("PUT", "review", "score=3&type=vod", "type=vod"),
        ("PUT", "review", "score=3&Score=3", None),
        ("PUT", "review", "score=3&isDelta=true", None),
        ("PUT", "watch", None, "last_played_on=5&limit=1"),
        ("PUT", "fav", "time=12000", None),
        ("DELETE", "fav", "type=vod&type=vod", None),
        ("DELETE", "watch", "after=x", None),
        ("GET", "pausetime", "time=12000", None),
        ("GET", "fav", "limit=5&limit=5", None),
        ("GET", "watch", "limit=5&offset=5", None),
        ("GET", "continue", "page=2", None),
    ]:
        lists = method == "GET" and kind != "pausetime"
        target = url(kind, asset=None if lists else "a")
        target += f"?{query}" if query else ""
        headers = {**AUTH, **({"Content-Type": FORM} if form else {})}
        reply = fake_client.open(
            target, method=method, data=form or b"", headers=headers
        )
        assert reply.status_code == 400, (method, kind, query, form)
        error(reply, 400)
    assert fake_snapshot() == {}


def test_type_vod_episodic_episode_is_accepted_and_ignored_others_are_400(
    fake_client, fake_snapshot
):
    for method, kind, ids in ENDPOINTS:
        params = VALID_PARAMS.get((method, kind), {})
        target = endpoint_url(kind, ids, **params)
        ok(fake_client.open(target, method=method, headers=AUTH))
        want = ok(fake_client.open(target, method=method, headers=AUTH))  # now stable
        for kind_of_title in ("vod", "episodic", "episode"):
            target = endpoint_url(kind, ids, **params, type=kind_of_title)
            got = ok(fake_client.open(target, method=method, headers=AUTH))
            assert got == want, (method, kind, kind_of_title)
        before = fake_snapshot()
        for bad in ("movie", "VOD", "", "vod,episode"):
            target = endpoint_url(kind, ids, **params, type=bad)
            reply = fake_client.open(target, method=method, headers=AUTH)
            assert reply.status_code == 400, (method, kind, bad)
        assert fake_snapshot() == before


def test_bad_parameter_values_are_400_and_write_nothing(fake_client, fake_snapshot):
    for kind, name, values in [
        ("pausetime", "time", ["", "abc", "1.5", "-1", "1e4", "+12000", str(2**53)]),
        ("watch", "last_played_on", ["", "x", "2.0", "-5", str(2**53), "true", "0x1"]),
        (
            "review",
            "score",
            ["", "5.5", "-1", "true", "NaN", "Infinity", "1e999", "3,5"],
        ),
    ]:
        for value in values:
            reply = fake_client.put(url(kind, asset="a", **{name: value}), headers=AUTH)
            body = error(reply, 400)
            assert name in body["reason"], (value, body)
        if kind != "watch":  # last_played_on is optional; time and score are required
            error(fake_client.put(url(kind, asset="a"), headers=AUTH), 400)
    assert fake_snapshot() == {}


def test_a_limit_outside_1_to_500_is_400(fake_client):
    for limit in ("0", "501", "-1", "abc", "1.5", "", "1e2"):
        for kind in ITEMS:
            reply = fake_client.get(url(kind, limit=limit), headers=AUTH)
            assert reply.status_code == 400, (kind, limit)
            error(reply, 400)


def test_limit_defaults_to_50_and_goes_up_to_500(client):
    records = [
        {"asset_id": f"r{i:03d}", "pause_time": 9, "last_played_on": i}
        for i in range(501)
    ]
    put_history(
        client, {"favorites": [f"f{i:03d}" for i in range(501)], "view_data": records}
    )
    for kind in ITEMS:
        first = page(client, kind)
        assert (len(first[ITEMS[kind]]), first["total"]) == (50, 501)
        assert first["next"] is not None
        big = page(client, kind, limit=500)
        assert len(big[ITEMS[kind]]) == 500 and big["next"] is not None
        rest = page(client, kind, limit=500, after=big["next"])
        assert len(rest[ITEMS[kind]]) == 1 and rest["next"] is None
    assert page(client, "fav", limit=500)["favorites"][:3] == ["f000", "f001", "f002"]
    assert page(client, "watch", limit=1)["view_data"] == [records[-1]]


# --- ids and routing ------------------------------------------------------------------


def test_each_id_is_one_segment_percent_decoded_after_the_split(client):
    slash = bearer("a/b", ttl=3600)
    assert (
        ok(client.put(f"{ACTIVITY}/fav/a%2Fb/x", headers=slash))["subscriber_id"]
        == "a/b"
    )
    reply = ok(
        client.put(f"{ACTIVITY}/watch/a%2Fb/x%2Fy?last_played_on=5", headers=slash)
    )
    assert (reply["subscriber_id"], reply["asset_id"]) == ("a/b", "x/y")
    ok(client.put(f"{ACTIVITY}/review/a%2Fb/100%25?score=2", headers=slash))
    assert history(client, "a/b") == {
        "favorites": ["x"],
        "view_data": [
            {"asset_id": "x/y", "last_played_on": 5},
            {"asset_id": "100%", "user_rating": 2},
        ],
    }
    assert history(client, "a") == {"favorites": [], "view_data": []}
    assert history(client, "a%2Fb") == {"favorites": [], "view_data": []}
    assert page(client, "fav", "a/b", headers=slash)["favorites"] == ["x"]


def test_ids_are_case_sensitive_and_follow_section_6(client, snapshot):
    ok(client.put(url("fav", "User", "X"), headers=bearer("User")))
    assert history(client, "user") == {"favorites": [], "view_data": []}
    assert page(client, "fav", "User", headers=bearer("User"))["favorites"] == ["X"]
    before = snapshot()
    for bad in ("%FF", "%00", "a%0Ab", "x" * 257, "%C3"):
        error(client.put(f"{ACTIVITY}/fav/{SUB}/{bad}", headers=AUTH), 400)
        error(client.get(f"{ACTIVITY}/pausetime/{SUB}/{bad}", headers=AUTH), 400)
        error(client.get(f"{ACTIVITY}/fav/{bad}", headers=ADMIN), 400)
    assert snapshot() == before


def test_unknown_lists_and_wrong_segment_counts_are_404_before_authentication(
    fake_client,
):
    for method, path in [
        ("GET", "fav"),
        ("GET", "favs/u"),
        ("PUT", "history/u/x"),
        ("GET", "fav/u/x/y"),
        ("PUT", "fav/u/x/y"),
        ("PUT", "watch/u/x/y/z"),
        ("GET", "pausetime/u"),
        ("PUT", "review/u"),
        ("GET", "continue/u/x"),
        ("GET", "watch"),
        ("GET", ""),
    ]:
        for headers in ({}, ADMIN):
            reply = fake_client.open(
                f"{ACTIVITY}/{path}", method=method, headers=headers
            )
            assert reply.status_code == 404, (method, path)
            error(reply, 404)


def test_a_method_the_path_does_not_list_is_405_with_its_allow_before_authentication(
    fake_client, fake_snapshot
):
    for method, path, allow in [
        ("POST", "fav/u", {"GET", "HEAD"}),
        ("PUT", "fav/u", {"GET", "HEAD"}),
        ("DELETE", "fav/u", {"GET", "HEAD"}),
        ("GET", "fav/u/x", {"PUT", "DELETE"}),
        ("POST", "fav/u/x", {"PUT", "DELETE"}),
        ("PUT", "watch/u", {"GET", "HEAD"}),
        ("PATCH", "watch/u/x", {"PUT", "DELETE"}),
        ("DELETE", "continue/u", {"GET", "HEAD"}),
        ("DELETE", "pausetime/u/x", {"GET", "HEAD", "PUT"}),
        ("POST", "pausetime/u/x", {"GET", "HEAD", "PUT"}),
        ("GET", "review/u/x", {"PUT"}),
        ("DELETE", "review/u/x", {"PUT"}),
        ("OPTIONS", "review/u/x", {"PUT"}),
    ]:
        for headers in ({}, bearer("someone-else")):
            target = f"{ACTIVITY}/{path}"
            reply = fake_client.open(target, method=method, headers=headers)
            assert reply.status_code == 405, (method, path)
            error(reply, 405)
            got = {m.strip() for m in reply.headers["Allow"].split(",")}
            assert got == allow, (method, path)
    assert fake_snapshot() == {}


# --- authentication and authorization -------------------------------------------------


def test_no_token_is_401_with_the_metax_body_before_anything_else(
    fake_client, fake_snapshot
):
    expired = bearer(SUB, ttl=-3600)["Authorization"].removeprefix("Bearer ")
    for method, kind, ids in ENDPOINTS:
        case = (method, kind)
        reply = fake_client.open(endpoint_url(kind, ids, limit="bad"), method=method)
        assert reply.status_code == 401, case
        assert reply.get_json() == {
            "result": "error",
            "message": "UNAUTHORIZED",
            "reason": "No Authorization Token",
        }
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        bad_id = f"{ACTIVITY}/{kind}/%FF" + ("/x" if ids == 2 else "")
        assert fake_client.open(bad_id, method=method).status_code == 401, case
        for token in ("not-a-jwt", expired):
            headers = {"Authorization": f"Bearer {token}"}
            target = endpoint_url(kind, ids)
            reply = fake_client.open(target, method=method, headers=headers)
            error(reply, 401)
            assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    assert fake_snapshot() == {}


def test_a_token_for_another_subscriber_is_403_and_writes_nothing(
    fake_client, fake_snapshot
):
    put_history(fake_client, mixed_history())
    intruder = bearer("intruder@example.org")
    for method, kind, ids in ENDPOINTS:
        before = fake_snapshot()
        target = endpoint_url(kind, ids, **VALID_PARAMS.get((method, kind), {}))
        reply = fake_client.open(target, method=method, headers=intruder)
        assert reply.status_code == 403, (method, kind)
        body = error(reply, 403)
        assert set(body) == {"result", "message", "reason"}
        assert SUB not in body["reason"]
        assert fake_snapshot() == before
        # The admin scope reaches any subscriber.
        ok(fake_client.open(target, method=method, headers=ADMIN))


# --- pages: cursors -------------------------------------------------------------------


def test_a_cursor_whose_own_item_was_removed_or_changed_still_continues(client):
    records = [
        {"asset_id": name, "pause_time": 9, "last_played_on": NOW_MS - i}
        for i, name in enumerate("abcdefg")
    ]
    put_history(client, {"favorites": list("abcdefg"), "view_data": records})
    first = page(client, "watch", limit=2)
    assert [r["asset_id"] for r in first["view_data"]] == ["a", "b"]
    ok(client.delete(url("watch", asset="b"), headers=AUTH))
    second = page(client, "watch", limit=2, after=first["next"])
    assert [r["asset_id"] for r in second["view_data"]] == ["c", "d"]
    ok(client.put(url("watch", asset="d", last_played_on=1), headers=AUTH))
    third = page(client, "watch", limit=2, after=second["next"])
    assert [r["asset_id"] for r in third["view_data"]] == ["e", "f"]
    rest = page(client, "watch", limit=5, after=third["next"])
    assert [r["asset_id"] for r in rest["view_data"]] == ["g", "d"]

    first = page(client, "fav", limit=2)
    ok(client.delete(url("fav", asset="b"), headers=AUTH))
    second = page(client, "fav", limit=2, after=first["next"])
    assert second["favorites"] == ["c", "d"]
    ok(client.delete(url("fav", asset="d"), headers=AUTH))
    ok(client.put(url("fav", asset="d"), headers=AUTH))  # moves to the end
    rest = page(client, "fav", limit=9, after=second["next"])
    assert rest["favorites"] == ["e", "f", "g", "d"]


def _unchanged_in_order(seen: list, initial: list, touched: set) -> None:
    unchanged = [x for x in initial if x not in touched]
    assert [x for x in seen if x not in touched] == unchanged


def test_a_fav_walk_while_items_are_added_and_removed_keeps_every_unchanged_one(
    client,
):
    rnd = random.Random(1)
    initial = [f"f{i:02d}" for i in range(40)]
    put_history(client, {"favorites": initial})
    stored, touched, fresh = list(initial), set(), iter(range(1000))

    def between(body):
        ops = [
            lambda: stored[rnd.randrange(len(stored))],  # anywhere
            lambda: body["favorites"][-1],  # the cursor's own item
        ]
        victim = rnd.choice(ops)()
        ok(client.delete(url("fav", asset=victim), headers=AUTH))
        stored.remove(victim)
        touched.add(victim)
        if rnd.random() < 0.5:  # removed and added back: it moves to the end
            ok(client.put(url("fav", asset=victim), headers=AUTH))
            stored.append(victim)
        new = f"new{next(fresh)}"
        ok(client.put(url("fav", asset=new), headers=AUTH))
        stored.append(new)
        touched.add(new)

    seen = walk(client, "fav", 3, between=between)
    _unchanged_in_order(seen, initial, touched)
    assert history(client)["favorites"] == stored


def test_a_watch_walk_while_records_change_keeps_every_unchanged_one(client):
    rnd = random.Random(2)
    records = [
        {
            "asset_id": f"s{i:02d}",
            "pause_time": 1 + i,
            "last_played_on": 1000 + rnd.randrange(15),
        }
        for i in range(40)
    ]
    put_history(client, {"view_data": records})
    initial = [r["asset_id"] for r in sorted(records, key=order)]
    stored = {r["asset_id"]: r for r in records}
    touched, fresh = set(), iter(range(1000))

    def between(body):
        kinds = ["remove", "remove-own", "replay", "add"]
        for op in rnd.sample(kinds, 2):
            if op == "add":
                asset = f"new{next(fresh)}"
            elif op == "remove-own":
                asset = body["view_data"][-1]["asset_id"]
            else:
                asset = rnd.choice(sorted(stored))
            touched.add(asset)
            if op.startswith("remove"):
                ok(client.delete(url("watch", asset=asset), headers=AUTH))
                stored.pop(asset, None)
            else:  # played again (or for the first time) at any time
                played = 990 + rnd.randrange(30)
                ok(
                    client.put(
                        url("watch", asset=asset, last_played_on=played), headers=AUTH
                    )
                )
                stored.setdefault(asset, {"asset_id": asset})["last_played_on"] = played

    seen = walk(client, "watch", 3, between=between)
    _unchanged_in_order([r["asset_id"] for r in seen], initial, touched)
    for record in seen:
        if record["asset_id"] not in touched:
            assert record == stored[record["asset_id"]]
    assert history(client)["view_data"] == sorted(stored.values(), key=order)


def test_a_fav_walk_across_a_section_1_put_keeps_every_unchanged_favorite(client):
    put_history(client, {"favorites": list("abcdef")})
    first = page(client, "fav", limit=2)
    assert first["favorites"] == ["a", "b"]
    # Another device removes "b" (already seen) by sending the whole list.
    put_history(client, {"favorites": list("acdef")}, delta=True)
    rest = page(client, "fav", limit=10, after=first["next"])
    assert rest["favorites"] == ["c", "d", "e", "f"]


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "overwrite"])
@pytest.mark.parametrize("seed", range(4))
def test_whole_list_puts_keep_the_places_of_the_favorites_that_stay(
    client, seed, delta
):
    """Removals and insertions anywhere by a whole-list PUT between two pages:
    every favorite that stayed comes exactly once, in order; the new ones at
    their places in the new list."""
    rng = random.Random(seed)
    old = [f"f{i:02d}" for i in range(20)]
    put_history(client, {"favorites": old})
    first = page(client, "fav", limit=7)
    assert first["favorites"] == old[:7]
    new = [favorite for favorite in old if rng.random() > 0.3]
    for k in range(rng.randint(1, 6)):
        new.insert(rng.randrange(len(new) + 1), f"new-{k}")
    put_history(client, {"favorites": new}, delta=delta)
    rest, after = [], first["next"]
    while after is not None:
        body = page(client, "fav", limit=3, after=after)
        rest += body["favorites"]
        after = body["next"]
    assert [f for f in rest if f in old] == [f for f in new if f in old[7:]]
    # New ones may come or not (they changed), but in the new list's order,
    # once each, and never one already seen.
    assert rest == [f for f in new if f in rest]
    assert not set(rest) & set(first["favorites"])
    assert page(client, "fav", limit=50)["favorites"] == new


def test_favorites_keep_their_order_when_positions_run_out_of_room(client):
    """Inserting again and again between the same two favorites halves the
    room between their positions until doubles cannot split it: then the
    list is numbered anew, in the right order."""
    favorites = ["a", "z"]
    put_history(client, {"favorites": favorites})
    for k in range(70):  # just before "z", at 1.0: full after about 53
        favorites.insert(len(favorites) - 1, f"m{k:02d}")
        put_history(client, {"favorites": favorites}, delta=True)
        assert page(client, "fav", limit=100)["favorites"] == favorites
    assert walk(client, "fav", 9) == favorites


def test_cursors_from_another_list_or_subscriber_are_400(fake_client, fake_snapshot):
    put_history(fake_client, mixed_history())
    put_history(fake_client, mixed_history(seed=3), sub="other")
    mine = {kind: page(fake_client, kind, limit=1)["next"] for kind in ITEMS}
    theirs = {
        kind: page(fake_client, kind, "other", ADMIN, limit=1)["next"] for kind in ITEMS
    }
    before = fake_snapshot()
    for kind in ITEMS:
        for other_kind in ITEMS:
            if other_kind != kind:
                target = url(kind, limit=1, after=mine[other_kind])
                error(fake_client.get(target, headers=AUTH), 400)
        error(
            fake_client.get(url(kind, limit=1, after=theirs[kind]), headers=AUTH), 400
        )
        error(
            fake_client.get(
                url(kind, "other", limit=1, after=mine[kind]), headers=ADMIN
            ),
            400,
        )
        # Each is good where it was made.
        ok(fake_client.get(url(kind, limit=1, after=mine[kind]), headers=AUTH))
    assert fake_snapshot() == before


def _flip(text: str, position: int) -> str:
    """The cursor with one character changed in a bit that carries data."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(text[position]) ^ 0b100000  # the top bit is always data
    return text[:position] + alphabet[value] + text[position + 1 :]


def test_altered_truncated_and_made_up_cursors_are_400(fake_client, fake_snapshot):
    put_history(fake_client, mixed_history())
    before = fake_snapshot()
    rnd = random.Random(5)
    for kind in ITEMS:
        cursor = page(fake_client, kind, limit=1)["next"]
        bad = [_flip(cursor, i) for i in range(len(cursor))]
        bad += [cursor[:-1], cursor[:-4], cursor[:8], cursor + "A", cursor + "=="]
        bad += [
            base64.urlsafe_b64encode(rnd.randbytes(n)).decode().rstrip("=")
            for n in (1, 16, 30, 40, 64)
        ]
        bad += ["", "null", "0", "-1", "50", "x" * 2000, cursor.replace("-", "+")]
        for after in bad:
            if after == cursor:
                continue
            error(fake_client.get(url(kind, limit=1, after=after), headers=AUTH), 400)
    assert fake_snapshot() == before


def test_a_cursor_with_only_its_last_character_altered_is_400(fake_client):
    # A cursor whose byte count is not a multiple of 3 ends in a character
    # with unused low bits; asset ids of three lengths make sure one does.
    records = [{"asset_id": "x" * n, "last_played_on": 1} for n in (1, 2, 3, 4)]
    put_history(fake_client, {"view_data": records})
    cursors = [page(fake_client, "watch", limit=k)["next"] for k in (1, 2, 3)]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    accepted, tried = [], 0
    for cursor in cursors:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        unused = len(cursor) * 6 - len(raw) * 8
        value = alphabet.index(cursor[-1])
        for low in range(1, 2**unused):
            after = cursor[:-1] + alphabet[value ^ low]
            tried += 1
            reply = fake_client.get(url("watch", limit=1, after=after), headers=AUTH)
            if reply.status_code != 400:
                accepted.append(after)
    assert tried and accepted == []


@pytest.fixture
def cursor_age(settings):
    """A short CURSOR_MAX_AGE; requested before ``app``, which uses it."""
    settings["CURSOR_MAX_AGE"] = 60
    return 60


def test_a_cursor_older_than_cursor_max_age_is_400(
    cursor_age, fake_app, fake_client, monkeypatch
):
    put_history(fake_client, mixed_history())
    cursors = fake_app.extensions["stat_cursors"]
    start = time.time()
    for kind in ITEMS:
        monkeypatch.setattr(cursors, "_clock", lambda: start)
        cursor = page(fake_client, kind, limit=1)["next"]
        monkeypatch.setattr(cursors, "_clock", lambda: start + cursor_age - 1)
        ok(fake_client.get(url(kind, limit=1, after=cursor), headers=AUTH))
        monkeypatch.setattr(cursors, "_clock", lambda: start + cursor_age + 2)
        body = error(
            fake_client.get(url(kind, limit=1, after=cursor), headers=AUTH), 400
        )
        assert "after" in body["reason"]


def test_a_walk_continues_after_a_record_with_a_long_multibyte_asset_id(client):
    long_id = "\U0001f600" * 256  # 256 characters, 1 KiB of UTF-8
    records = [
        {"asset_id": long_id, "pause_time": 9, "last_played_on": 2},
        {"asset_id": "b", "pause_time": 9, "last_played_on": 1},
    ]
    put_history(client, {"view_data": records})
    assert walk(client, "watch", 1) == records
    assert walk(client, "continue", 1) == records


def test_a_subscriber_with_no_history_gets_empty_pages_and_time_0(client, snapshot):
    for kind in ITEMS:
        assert page(client, kind) == {
            "result": "success",
            "subscriber_id": SUB,
            ITEMS[kind]: [],
            "total": 0,
            "next": None,
        }
    assert ok(client.get(url("pausetime", asset="a"), headers=AUTH))["time"] == 0
    assert ok(client.delete(url("fav", asset="a"), headers=AUTH))["removed"] is False
    assert ok(client.delete(url("watch", asset="a"), headers=AUTH))["removed"] is False
    assert snapshot() == {}


def test_a_page_of_20_from_a_full_history_is_under_5_kb(app, client, store):
    bound = app.config["STAT"].MAX_RECORDS
    assert bound == 5000
    rnd = random.Random(3)
    records = [
        {
            "asset_id": str(uuid.UUID(int=rnd.getrandbits(128))),
            "play_count": rnd.randrange(1, 50),
            "view_time": rnd.randrange(1, 20000),
            "pause_time": rnd.randrange(1, 7200),
            "last_played_on": NOW_MS - rnd.randrange(10**10),
            "user_rating": rnd.choice([1, 2.5, 3.5, 5]),
        }
        for _ in range(bound)
    ]
    favorites = [r["asset_id"] for r in records]
    store.put(SUB, {"favorites": favorites, "view_data": records}, delta=False)
    by_order = sorted(records, key=order)
    for kind, first in [
        ("fav", favorites[:20]),
        ("watch", by_order[:20]),
        ("continue", by_order[:20]),
    ]:
        reply = client.get(url(kind, limit=20), headers=AUTH)
        assert ok(reply)[ITEMS[kind]] == first
        assert reply.get_json()["total"] == bound
        assert len(reply.get_data()) < 5 * 1024, (kind, len(reply.get_data()))
    second = page(
        client, "watch", limit=20, after=page(client, "watch", limit=20)["next"]
    )
    assert second["view_data"] == by_order[20:40]


# --- metrics --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^stat_http_requests_total\{(.*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _request_counts(client) -> dict:
    text = client.get("/metrics").get_data(as_text=True)
    counts = {}
    for labels, value in _SAMPLE.findall(text):
        fields = dict(_LABEL.findall(labels))
        counts[fields["route"], fields["method"], fields["status"]] = float(value)
    return counts


def test_metrics_label_activity_requests_by_route_template_never_by_id(fake_client):
    sub, asset = f"metrics-{uuid.uuid4().hex}", f"asset-{uuid.uuid4().hex}"
    token = bearer(sub)
    before = _request_counts(fake_client)
    calls = [
        ("PUT", url("fav", sub, asset), token, "/fav/{subscriber_id}/{asset_id}", 200),
        (
            "DELETE",
            url("fav", sub, asset),
            token,
            "/fav/{subscriber_id}/{asset_id}",
            200,
        ),
        ("GET", url("fav", sub), token, "/fav/{subscriber_id}", 200),
        ("GET", url("watch", sub, limit=0), token, "/watch/{subscriber_id}", 400),
        (
            "PUT",
            url("pausetime", sub, asset, time=20000),
            token,
            "/pausetime/{subscriber_id}/{asset_id}",
            200,
        ),
        ("GET", url("continue", sub), {}, "/continue/{subscriber_id}", 401),
        (
            "PUT",
            url("review", sub, asset, score=2),
            bearer("x"),
            "/review/{subscriber_id}/{asset_id}",
            403,
        ),
        (
            "DELETE",
            url("review", sub, asset),
            token,
            "/review/{subscriber_id}/{asset_id}",
            405,
        ),
    ]
    for method, target, headers, _, status in calls:
        assert (
            fake_client.open(target, method=method, headers=headers).status_code
            == status
        )
    fake_client.get(f"{ACTIVITY}/nope/{sub}", headers=token)
    after = _request_counts(fake_client)
    for method, _, _, route, status in calls:
        key = (ACTIVITY + route, method, str(status))
        assert after.get(key, 0) - before.get(key, 0) == 1, key
    routes = {route for route, _, _ in after}
    assert not any(sub in route or asset in route for route in routes)
    assert not any(route.startswith(ACTIVITY + "/nope") for route in routes)
