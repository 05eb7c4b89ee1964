"""API.md sections 1-3, rule by rule, through the HTTP API on both backends."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.conftest import PATH, SUB, bearer

ADMIN = bearer(admin=True, ttl=3600)


def url(sub: str = SUB, delta: str | None = None) -> str:
    """The stat URL of ``sub`` (already in its path form), optionally isDelta."""
    return PATH + sub if delta is None else f"{PATH}{sub}?isDelta={delta}"


def id_url(subscriber_id: str) -> str:
    """The stat URL of an id, every reserved or non-ASCII character encoded."""
    return PATH + quote(subscriber_id, safe="")


def put(client, body, delta: str | None = None, sub: str = SUB, headers=None):
    return client.put(url(sub, delta), json=body, headers=headers or bearer(sub))


def get(client, sub: str = SUB, headers=None) -> dict:
    response = client.get(url(sub), headers=headers or bearer(sub))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def views(client, sub: str = SUB) -> dict:
    """The GET's records keyed by asset id."""
    return {r["asset_id"]: r for r in get(client, sub)["view_data"]}


def seed(client, body, sub: str = SUB) -> None:
    ok(put(client, body, "false", sub))


def assert_error_shape(response, status: int, message: str) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["result"] == "error"
    assert body["message"] == message
    assert isinstance(body["reason"], str) and body["reason"]
    return body


# -- PUT response -------------------------------------------------------------


def test_delta_response_counts_stored_favorites_and_distinct_assets(client):
    seed(client, {"favorites": ["f1", "f2", "f3"], "view_data": [{"asset_id": "old"}]})
    response = put(
        client,
        {
            "view_data": [
                {"asset_id": "a", "play_count": 1},
                {"asset_id": "b"},
                {"asset_id": "a", "view_time": 2},
            ]
        },
        "true",
    )
    assert ok(response) == {
        "result": "success",
        "subscriber_id": SUB,
        "is_delta": True,
        "favorites": 3,  # stored after the request, though none were sent
        "view_data": 2,  # distinct assets written, not objects sent
        "evicted": 0,  # every write's 200 says how many records made room
    }
    assert response.mimetype == "application/json"


def test_delta_response_counts_replaced_favorites(client):
    seed(client, {"favorites": ["f1", "f2", "f3"]})
    body = ok(put(client, {"favorites": ["x", "y", "x"]}, "true"))
    assert body == {
        "result": "success",
        "subscriber_id": SUB,
        "is_delta": True,
        "favorites": 2,
        "view_data": 0,
        "evicted": 0,
    }
    assert get(client)["favorites"] == ["x", "y"]


def test_overwrite_response_counts_stored_favorites_and_distinct_assets(client):
    seed(client, {"favorites": ["old1", "old2", "old3", "old4"]})
    response = put(
        client,
        {
            "favorites": ["a", "b", "a", "c", "b"],
            "view_data": [{"asset_id": "v1"}, {"asset_id": "v2"}, {"asset_id": "v1"}],
        },
        "false",
    )
    assert ok(response) == {
        "result": "success",
        "subscriber_id": SUB,
        "is_delta": False,
        "favorites": 3,
        "view_data": 2,
        "evicted": 0,
    }
    assert response.mimetype == "application/json"


def test_overwrite_response_counts_zero_favorites_when_absent(client):
    seed(client, {"favorites": ["old1", "old2"]})
    body = ok(put(client, {"view_data": [{"asset_id": "v"}]}, "false"))
    assert body["favorites"] == 0
    assert body["view_data"] == 1
    assert get(client)["favorites"] == []


def test_get_success_is_json_with_the_documented_shape(client):
    seed(client, {"favorites": ["a1"]})
    response = client.get(url(), headers=bearer())
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "result": "success",
        "subscriber_id": SUB,
        "favorites": ["a1"],
        "view_data": [],
    }


# -- isDelta ------------------------------------------------------------------

PRIOR = {"favorites": ["keep"], "view_data": [{"asset_id": "x", "play_count": 1}]}
UPDATE = {"view_data": [{"asset_id": "y", "view_time": 5}]}
AFTER_DELTA = {
    "favorites": ["keep"],
    "view_data": [
        {"asset_id": "x", "play_count": 1},
        {"asset_id": "y", "view_time": 5},
    ],
}
AFTER_OVERWRITE = {"favorites": [], "view_data": [{"asset_id": "y", "view_time": 5}]}


def _history(client) -> dict:
    got = get(client)
    return {"favorites": got["favorites"], "view_data": got["view_data"]}


def test_isdelta_defaults_to_true(client):
    seed(client, PRIOR)
    assert ok(put(client, UPDATE))["is_delta"] is True
    assert _history(client) == AFTER_DELTA


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "tRuE"])
def test_isdelta_true_is_case_insensitive(client, value):
    seed(client, PRIOR)
    assert ok(put(client, UPDATE, value))["is_delta"] is True
    assert _history(client) == AFTER_DELTA


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "fAlSe"])
def test_isdelta_false_is_case_insensitive(client, value):
    seed(client, PRIOR)
    assert ok(put(client, UPDATE, value))["is_delta"] is False
    assert _history(client) == AFTER_OVERWRITE


@pytest.mark.parametrize(
    "query",
    [
        "isDelta=yes",
        "isDelta=1",
        "isDelta=",
        "isDelta=true&isDelta=true",
        "isDelta=false&isDelta=true",
        "isdelta=false",
        "isDelta=false&extra=1",
    ],
)
def test_isdelta_other_values_repeats_and_unknown_parameters_are_400(
    client, snapshot, query
):
    seed(client, PRIOR)
    before = snapshot()
    response = client.put(f"{url()}?{query}", json=UPDATE, headers=bearer())
    assert_error_shape(response, 400, "BAD_REQUEST")
    assert snapshot() == before


# -- Delta semantics ----------------------------------------------------------


def test_delta_favorites_present_replace_the_whole_list(client):
    seed(client, {"favorites": ["a", "b", "c"]})
    ok(put(client, {"favorites": ["c", "d", "a"]}, "true"))
    assert get(client)["favorites"] == ["c", "d", "a"]


def test_delta_empty_favorites_erase_them(client):
    seed(client, {"favorites": ["a", "b"], "view_data": [{"asset_id": "v"}]})
    assert ok(put(client, {"favorites": []}, "true"))["favorites"] == 0
    got = get(client)
    assert got["favorites"] == []
    assert got["view_data"] == [{"asset_id": "v"}]


def test_delta_absent_favorites_are_kept(client):
    seed(client, {"favorites": ["b", "a", "c"]})
    ok(put(client, {"view_data": [{"asset_id": "v", "play_count": 1}]}, "true"))
    assert get(client)["favorites"] == ["b", "a", "c"]


def test_delta_sets_named_fields_and_keeps_the_others(client):
    seed(
        client,
        {
            "view_data": [
                {
                    "asset_id": "a",
                    "play_count": 1,
                    "view_time": 2,
                    "pause_time": 3,
                    "last_played_on": 4,
                    "user_rating": 5,
                }
            ]
        },
    )
    ok(put(client, {"view_data": [{"asset_id": "a", "view_time": 20}]}, "true"))
    ok(put(client, {"view_data": [{"asset_id": "a", "user_rating": 2.5}]}))
    assert views(client)["a"] == {
        "asset_id": "a",
        "play_count": 1,
        "view_time": 20,
        "pause_time": 3,
        "last_played_on": 4,
        "user_rating": 2.5,
    }


def test_delta_new_asset_gets_a_record_and_unnamed_assets_are_untouched(client):
    seed(
        client,
        {
            "favorites": ["f"],
            "view_data": [
                {"asset_id": "a", "play_count": 1, "last_played_on": 10},
                {"asset_id": "b", "pause_time": 7},
            ],
        },
    )
    ok(put(client, {"view_data": [{"asset_id": "new", "view_time": 9}]}, "true"))
    assert views(client) == {
        "a": {"asset_id": "a", "play_count": 1, "last_played_on": 10},
        "b": {"asset_id": "b", "pause_time": 7},
        "new": {"asset_id": "new", "view_time": 9},
    }


def test_delta_object_with_only_asset_id_creates_an_empty_record(client):
    body = ok(put(client, {"view_data": [{"asset_id": "empty"}]}, "true"))
    assert body["view_data"] == 1
    assert get(client)["view_data"] == [{"asset_id": "empty"}]


def test_delta_object_with_only_asset_id_leaves_an_existing_record(client, snapshot):
    seed(client, {"view_data": [{"asset_id": "a", "play_count": 3, "user_rating": 4}]})
    before = snapshot()
    ok(put(client, {"view_data": [{"asset_id": "a"}]}, "true"))
    assert views(client)["a"] == {"asset_id": "a", "play_count": 3, "user_rating": 4}
    assert snapshot() == before


def test_delta_null_removes_a_stored_field(client):
    seed(
        client,
        {"view_data": [{"asset_id": "a", "play_count": 3, "pause_time": 120}]},
    )
    ok(put(client, {"view_data": [{"asset_id": "a", "pause_time": None}]}, "true"))
    assert views(client)["a"] == {"asset_id": "a", "play_count": 3}


def test_delta_null_on_every_field_leaves_an_empty_record(client):
    seed(
        client,
        {"view_data": [{"asset_id": "a", "play_count": 3, "user_rating": 3.5}]},
    )
    patch = {"asset_id": "a", "play_count": None, "user_rating": None}
    ok(put(client, {"view_data": [patch]}, "true"))
    assert get(client)["view_data"] == [{"asset_id": "a"}]


def test_overwrite_null_is_the_same_as_absent(client):
    seed(client, {"view_data": [{"asset_id": "a", "play_count": 3}]})
    body = {"view_data": [{"asset_id": "a", "play_count": None, "view_time": 8}]}
    ok(put(client, body, "false"))
    assert get(client)["view_data"] == [{"asset_id": "a", "view_time": 8}]


def test_overwrite_object_with_only_nulls_gives_an_empty_record(client):
    body = {"view_data": [{"asset_id": "a", "play_count": None, "user_rating": None}]}
    ok(put(client, body, "false"))
    assert get(client)["view_data"] == [{"asset_id": "a"}]


# -- Overwrite semantics ------------------------------------------------------


def test_overwrite_leaves_exactly_the_body(client):
    seed(
        client,
        {
            "favorites": ["old1", "old2"],
            "view_data": [
                {"asset_id": "gone", "play_count": 1},
                {"asset_id": "kept", "play_count": 2, "view_time": 3, "pause_time": 4},
            ],
        },
    )
    ok(put(client, {"favorites": ["old2", "n"], "view_data": [{"asset_id": "x"}]}))
    body = {
        "favorites": ["n2", "old1"],
        "view_data": [{"asset_id": "kept", "view_time": 30}, {"asset_id": "new"}],
    }
    ok(put(client, body, "false"))
    got = get(client)
    assert got["favorites"] == ["n2", "old1"]
    assert sorted(got["view_data"], key=lambda r: r["asset_id"]) == [
        {"asset_id": "kept", "view_time": 30},  # no field of the old record left
        {"asset_id": "new"},
    ]


def test_overwrite_without_favorites_leaves_none(client):
    seed(client, {"favorites": ["a", "b"]})
    ok(put(client, {"view_data": [{"asset_id": "v"}]}, "false"))
    got = get(client)
    assert got["favorites"] == []
    assert got["view_data"] == [{"asset_id": "v"}]


def test_overwrite_without_view_data_leaves_no_records(client):
    seed(client, {"view_data": [{"asset_id": "v", "play_count": 1}]})
    ok(put(client, {"favorites": ["a"]}, "false"))
    got = get(client)
    assert got["favorites"] == ["a"]
    assert got["view_data"] == []


def test_overwrite_with_empty_object_erases_everything(client, snapshot):
    seed(
        client,
        {"favorites": ["a", "b"], "view_data": [{"asset_id": "v", "play_count": 1}]},
    )
    assert snapshot()
    assert ok(put(client, {}, "false")) == {
        "result": "success",
        "subscriber_id": SUB,
        "is_delta": False,
        "favorites": 0,
        "view_data": 0,
        "evicted": 0,
    }
    got = get(client)
    assert got["favorites"] == [] and got["view_data"] == []
    assert snapshot() == {}


def test_delta_with_empty_object_changes_nothing(client, snapshot):
    seed(
        client,
        {"favorites": ["a", "b"], "view_data": [{"asset_id": "v", "play_count": 1}]},
    )
    before = snapshot()
    body = ok(put(client, {}, "true"))
    assert (body["favorites"], body["view_data"]) == (2, 0)
    assert snapshot() == before


# -- Both modes ---------------------------------------------------------------

MODES = pytest.mark.parametrize("mode", ["true", "false"])


@MODES
def test_favorites_keep_the_order_sent(client, mode):
    favorites = ["zeta", "alpha", "Mu", "10", "9", "ü", "a"]
    assert ok(put(client, {"favorites": favorites}, mode))["favorites"] == 7
    assert get(client)["favorites"] == favorites


@MODES
def test_repeated_favorite_is_kept_once_at_its_first_position(client, mode):
    body = {"favorites": ["b", "a", "b", "c", "a", "b"]}
    assert ok(put(client, body, mode))["favorites"] == 3
    assert get(client)["favorites"] == ["b", "a", "c"]


@MODES
def test_repeated_asset_later_fields_win_earlier_only_fields_kept(client, mode):
    body = {
        "view_data": [
            {"asset_id": "a", "play_count": 1, "view_time": 10, "pause_time": 5},
            {"asset_id": "b", "play_count": 7},
            {"asset_id": "a", "view_time": 20, "user_rating": 3.5},
            {"asset_id": "a", "pause_time": 6},
        ]
    }
    assert ok(put(client, body, mode))["view_data"] == 2
    assert views(client) == {
        "a": {
            "asset_id": "a",
            "play_count": 1,
            "view_time": 20,
            "pause_time": 6,
            "user_rating": 3.5,
        },
        "b": {"asset_id": "b", "play_count": 7},
    }


@MODES
def test_thousands_of_favorites_and_assets_are_all_stored_in_order(client, mode):
    n = 2500  # more than one chunk of the scripts' ZADD/HSET batches
    favorites = [f"fav-{(i * 7919) % n:04d}" for i in range(n)]
    records = [{"asset_id": f"v{i:04d}", "last_played_on": i} for i in range(n)]
    seed(client, {"favorites": ["old"], "view_data": [{"asset_id": "v0000"}]})
    body = ok(put(client, {"favorites": favorites, "view_data": records}, mode))
    assert (body["favorites"], body["view_data"]) == (n, n)
    got = get(client)
    assert got["favorites"] == favorites
    assert got["view_data"] == records[::-1]


def test_delta_later_null_removes_an_earlier_value_of_the_same_request(client):
    seed(client, {"view_data": [{"asset_id": "a", "play_count": 9, "view_time": 8}]})
    body = {
        "view_data": [
            {"asset_id": "a", "play_count": 1, "pause_time": 2},
            {"asset_id": "a", "play_count": None},
        ]
    }
    ok(put(client, body, "true"))
    assert views(client)["a"] == {"asset_id": "a", "view_time": 8, "pause_time": 2}


def test_overwrite_later_null_keeps_an_earlier_value_of_the_same_request(client):
    body = {
        "view_data": [
            {"asset_id": "a", "play_count": 1, "view_time": 2},
            {"asset_id": "a", "play_count": None, "view_time": 3},
        ]
    }
    ok(put(client, body, "false"))
    assert views(client)["a"] == {"asset_id": "a", "play_count": 1, "view_time": 3}


# -- user_id ------------------------------------------------------------------


@MODES
def test_user_id_equal_to_the_path_is_accepted_and_not_stored(client, mode):
    body = {"user_id": SUB, "favorites": ["f"], "view_data": [{"asset_id": "a"}]}
    assert ok(put(client, body, mode))["favorites"] == 1
    assert get(client) == {
        "result": "success",
        "subscriber_id": SUB,
        "favorites": ["f"],
        "view_data": [{"asset_id": "a"}],
    }


@MODES
def test_user_id_different_from_the_path_is_400_and_writes_nothing(
    client, snapshot, mode
):
    seed(client, {"favorites": ["f"], "view_data": [{"asset_id": "a"}]})
    before = snapshot()
    body = {
        "user_id": "someone@example.org",
        "favorites": ["x"],
        "view_data": [{"asset_id": "b", "play_count": 1}],
    }
    error = assert_error_shape(put(client, body, mode), 400, "BAD_REQUEST")
    assert "user_id" in error["errors"]
    assert snapshot() == before


def test_user_id_differing_only_in_case_is_400(client, snapshot):
    body = {"user_id": SUB.upper(), "favorites": ["x"]}
    error = assert_error_shape(put(client, body), 400, "BAD_REQUEST")
    assert "user_id" in error["errors"]
    assert snapshot() == {}


# -- Values -------------------------------------------------------------------


@pytest.mark.parametrize("value", [9007199254740991, 0, 1764000000000, 1])
@pytest.mark.parametrize(
    "field", ["play_count", "view_time", "pause_time", "last_played_on"]
)
def test_integers_come_back_as_exact_json_integers(client, field, value):
    ok(put(client, {"view_data": [{"asset_id": "a", field: value}]}))
    response = client.get(url(), headers=bearer())
    # Parse the raw text: 9007199254740991.0 or 9.007e15 would not be an int.
    record = json.loads(response.get_data(as_text=True))["view_data"][0]
    assert record == {"asset_id": "a", field: value}
    assert type(record[field]) is int


@pytest.mark.parametrize("rating", [3.5, 4, 0, 5, 0.5, 4.25])
def test_user_rating_comes_back_as_sent(client, rating):
    ok(put(client, {"view_data": [{"asset_id": "a", "user_rating": rating}]}))
    record = json.loads(client.get(url(), headers=bearer()).get_data())["view_data"][0]
    assert record == {"asset_id": "a", "user_rating": rating}
    assert type(record["user_rating"]) is type(rating)


def test_delta_value_is_absolute_not_an_increment(client):
    for _ in range(3):
        ok(put(client, {"view_data": [{"asset_id": "a", "play_count": 2}]}))
    assert views(client)["a"] == {"asset_id": "a", "play_count": 2}


# -- GET ----------------------------------------------------------------------


def test_get_orders_view_data_by_recency_then_asset_id_code_points(client):
    lp = "last_played_on"
    # Lexical order of the numbers ("99" > "200" > "1764...") differs from
    # numeric; "ｚ" (U+FF5A) sorts before "𝔸" (U+1D538) by code point, after it
    # in UTF-16 units; upper case sorts before lower case.
    records = [
        {"asset_id": "𝔸"},
        {"asset_id": "b", lp: 200},
        {"asset_id": "zero", lp: 0},
        {"asset_id": "é", lp: 200},
        {"asset_id": "ｚ", "play_count": 1},
        {"asset_id": "x2", lp: 99},
        {"asset_id": "a", lp: 200},
        {"asset_id": "Z"},
        {"asset_id": "B", lp: 200},
        {"asset_id": "x1", lp: 1764000000000},
        {"asset_id": "ä"},
        {"asset_id": "m", "user_rating": 1},
    ]
    ok(put(client, {"view_data": records}, "false"))
    order = [r["asset_id"] for r in get(client)["view_data"]]
    assert order == [
        "x1",
        "B",
        "a",
        "b",
        "é",
        "x2",
        "zero",
        "Z",
        "m",
        "ä",
        "ｚ",
        "𝔸",
    ]


def test_get_records_hold_only_stored_fields_and_no_nulls(client):
    seed(
        client,
        {
            "view_data": [
                {"asset_id": "a", "play_count": 1, "last_played_on": 5},
                {"asset_id": "b"},
                {"asset_id": "c", "pause_time": 0, "user_rating": 0},
            ]
        },
    )
    ok(put(client, {"view_data": [{"asset_id": "a", "play_count": None}]}))
    got = get(client)
    assert got["view_data"] == [
        {"asset_id": "a", "last_played_on": 5},
        {"asset_id": "b"},
        {"asset_id": "c", "pause_time": 0, "user_rating": 0},
    ]
    assert all(v is not None for r in got["view_data"] for v in r.values())


def test_get_unknown_subscriber_is_200_with_empty_lists(client, snapshot):
    response = client.get(url("nobody@example.org"), headers=ADMIN)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "result": "success",
        "subscriber_id": "nobody@example.org",
        "favorites": [],
        "view_data": [],
    }
    assert snapshot() == {}  # a read creates nothing


def test_get_output_sent_back_as_overwrite_reproduces_the_same_state(client, snapshot):
    ok(put(client, {"favorites": ["f3", "f1", "f2", "f1"]}))
    ok(
        put(
            client,
            {
                "view_data": [
                    {"asset_id": "empty"},
                    {
                        "asset_id": "full",
                        "play_count": 9007199254740991,
                        "view_time": 5400,
                        "pause_time": 310,
                        "last_played_on": 1764000000000,
                        "user_rating": 3.5,
                    },
                    {"asset_id": "ü-1", "user_rating": 4, "last_played_on": 0},
                    {"asset_id": "Emptied", "play_count": 1},
                    {"asset_id": "tie", "last_played_on": 1764000000000},
                    {"asset_id": "a|b", "play_count": 2},
                    {"asset_id": "-", "pause_time": 0},
                ]
            },
        )
    )
    ok(put(client, {"view_data": [{"asset_id": "Emptied", "play_count": None}]}))
    first = get(client)
    stored = snapshot()
    assert {"asset_id": "empty"} in first["view_data"]
    assert {"asset_id": "Emptied"} in first["view_data"]

    body = {"favorites": first["favorites"], "view_data": first["view_data"]}
    assert ok(put(client, body, "false")) == {
        "result": "success",
        "subscriber_id": SUB,
        "is_delta": False,
        "favorites": 3,
        "view_data": 7,
        "evicted": 0,
    }
    assert get(client) == first
    assert snapshot() == stored


def test_empty_history_round_trips(client, snapshot):
    first = get(client)
    body = {"favorites": first["favorites"], "view_data": first["view_data"]}
    ok(put(client, body, "false"))
    assert get(client) == first
    assert snapshot() == {}


# -- DELETE -------------------------------------------------------------------


def test_delete_is_204_with_an_empty_body_and_erases_the_history(client, snapshot):
    seed(
        client,
        {"favorites": ["a"], "view_data": [{"asset_id": "v", "play_count": 1}]},
    )
    response = client.delete(url(), headers=bearer())
    assert response.status_code == 204
    assert response.get_data() == b""
    got = get(client)
    assert got["favorites"] == [] and got["view_data"] == []
    assert snapshot() == {}


def test_delete_is_idempotent(client, snapshot):
    seed(client, {"favorites": ["a"]})
    for _ in range(2):
        response = client.delete(url(), headers=bearer())
        assert response.status_code == 204
        assert response.get_data() == b""
    assert snapshot() == {}
    never_written = client.delete(url("nobody@example.org"), headers=ADMIN)
    assert never_written.status_code == 204


def test_delete_leaves_other_subscribers_untouched(client):
    other = "other@example.org"
    history = {"favorites": ["o"], "view_data": [{"asset_id": "ov", "view_time": 1}]}
    seed(client, history, other)
    seed(client, {"favorites": ["mine"], "view_data": [{"asset_id": "mv"}]})
    assert client.delete(url(), headers=bearer()).status_code == 204
    got = get(client, other)
    assert {"favorites": got["favorites"], "view_data": got["view_data"]} == history


def test_delta_after_delete_starts_from_nothing(client):
    seed(
        client, {"favorites": ["a"], "view_data": [{"asset_id": "v", "play_count": 1}]}
    )
    assert client.delete(url(), headers=bearer()).status_code == 204
    ok(put(client, {"view_data": [{"asset_id": "v", "view_time": 2}]}))
    got = get(client)
    assert got["favorites"] == []
    assert got["view_data"] == [{"asset_id": "v", "view_time": 2}]


# -- Subscriber ids -----------------------------------------------------------


def test_encoded_and_plain_slash_address_the_same_subscriber(client):
    token = bearer("a/b")  # the token's sub is the decoded id
    body = {"user_id": "a/b", "favorites": ["f"]}
    response = client.put(PATH + "a%2Fb", json=body, headers=token)
    assert ok(response)["subscriber_id"] == "a/b"
    got = ok(client.get(PATH + "a/b", headers=token))
    assert got["subscriber_id"] == "a/b"
    assert got["favorites"] == ["f"]
    assert client.delete(PATH + "a/b", headers=token).status_code == 204
    assert ok(client.get(PATH + "a%2Fb", headers=token))["favorites"] == []


def test_raw_and_encoded_reserved_characters_address_the_same_subscriber(client):
    ok(client.put(PATH + "a{b}:c", json={"favorites": ["f"]}, headers=ADMIN))
    got = ok(client.get(PATH + "a%7Bb%7D%3Ac", headers=ADMIN))
    assert got["subscriber_id"] == "a{b}:c"
    assert got["favorites"] == ["f"]


def test_raw_non_ascii_path_is_the_same_id_as_its_utf8_percent_encoding(client):
    # WSGI gives the request target as latin-1 text of its bytes; the id is
    # those bytes decoded as UTF-8, so raw "ü" is "%C3%BC", never "Ã¼".
    ok(client.put(PATH + "ü", json={"favorites": ["raw"]}, headers=ADMIN))
    got = ok(client.get(PATH + "%C3%BC", headers=ADMIN))
    assert got["subscriber_id"] == "ü"
    assert got["favorites"] == ["raw"]
    mojibake = ok(client.get(id_url("Ã¼"), headers=ADMIN))
    assert mojibake["favorites"] == []


def test_subscriber_ids_are_case_sensitive(client):
    ok(client.put(id_url("User@x"), json={"favorites": ["upper"]}, headers=ADMIN))
    ok(client.put(id_url("user@x"), json={"favorites": ["lower"]}, headers=ADMIN))
    assert ok(client.get(id_url("User@x"), headers=ADMIN))["favorites"] == ["upper"]
    assert ok(client.get(id_url("user@x"), headers=ADMIN))["favorites"] == ["lower"]
    # A subscriber's own token does not reach the id that differs only in case.
    response = client.get(id_url("User@x"), headers=bearer("user@x"))
    assert_error_shape(response, 403, "FORBIDDEN")


LOOK_ALIKES = [
    "a{b}",
    "a%7Bb%7D",  # the literal text, sent as a%257Bb%257D
    "a%257Bb%257D",
    "x}",
    "x%7D",
    "{x}",
    "{x",
    "%7Bx%7D",
    "a:b",
    "a%3Ab",
    "a b",
    "a+b",
    "a%20b",
    "100%",
    "100%25",
    "%",
    "ü",
    "u\u0308",  # u + combining diaeresis: not the same id as "ü"
    "%C3%BC",
    "Ü",
    "日本語@例え.jp",
    "}{",
    "user@example.org",
    "user@example.org ",
]


def test_unusual_ids_work_and_never_share_data_with_look_alikes(client, snapshot):
    assert len(set(LOOK_ALIKES)) == len(LOOK_ALIKES)
    for i, subscriber_id in enumerate(LOOK_ALIKES):
        body = {"favorites": [f"fav-{i}"], "view_data": [{"asset_id": f"v-{i}"}]}
        response = client.put(id_url(subscriber_id), json=body, headers=ADMIN)
        assert ok(response)["subscriber_id"] == subscriber_id
    for i, subscriber_id in enumerate(LOOK_ALIKES):
        assert ok(client.get(id_url(subscriber_id), headers=ADMIN)) == {
            "result": "success",
            "subscriber_id": subscriber_id,
            "favorites": [f"fav-{i}"],
            "view_data": [{"asset_id": f"v-{i}"}],
        }
    # Two keys (favorites, view data) per id: no two ids share a key.
    assert len(snapshot()) == 2 * len(LOOK_ALIKES)


SLASHED = ["a/b", "a%2Fb", "a//b", "/a", "a/", "a", "ab", "a%252Fb"]


def test_ids_with_slashes_work_and_never_share_data_with_look_alikes(client, snapshot):
    for i, subscriber_id in enumerate(SLASHED):
        body = {"favorites": [f"fav-{i}"]}
        response = client.put(id_url(subscriber_id), json=body, headers=ADMIN)
        assert ok(response)["subscriber_id"] == subscriber_id
    for i, subscriber_id in enumerate(SLASHED):
        got = ok(client.get(id_url(subscriber_id), headers=ADMIN))
        assert got["subscriber_id"] == subscriber_id
        assert got["favorites"] == [f"fav-{i}"]
    assert len(snapshot()) == len(SLASHED)  # one favorites key each


def test_deleting_an_id_leaves_its_look_alikes(client):
    for subscriber_id in ("x}", "x%7D", "x"):
        body = {"favorites": [subscriber_id]}
        ok(client.put(id_url(subscriber_id), json=body, headers=ADMIN))
    assert client.delete(id_url("x}"), headers=ADMIN).status_code == 204
    assert ok(client.get(id_url("x}"), headers=ADMIN))["favorites"] == []
    for subscriber_id in ("x%7D", "x"):
        got = ok(client.get(id_url(subscriber_id), headers=ADMIN))
        assert got["favorites"] == [subscriber_id]


@pytest.mark.parametrize(
    "subscriber_id", ["a{b}", "x}", "a b", "100%", "ü@例え.jp", "a:b/c"]
)
def test_token_whose_sub_is_the_decoded_id_has_access(client, subscriber_id):
    token = bearer(subscriber_id)
    ok(client.put(id_url(subscriber_id), json={"favorites": ["f"]}, headers=token))
    got = ok(client.get(id_url(subscriber_id), headers=token))
    assert got["subscriber_id"] == subscriber_id
    assert got["favorites"] == ["f"]
    assert client.delete(id_url(subscriber_id), headers=token).status_code == 204


@pytest.mark.parametrize("subscriber_id", ["u" * 256, "é" * 256, "𝔸" * 256])
def test_256_character_id_works(client, subscriber_id):
    token = bearer(subscriber_id)
    ok(client.put(id_url(subscriber_id), json={"favorites": ["f"]}, headers=token))
    got = ok(client.get(id_url(subscriber_id), headers=token))
    assert got["subscriber_id"] == subscriber_id
    assert got["favorites"] == ["f"]


def test_257_character_id_is_400_and_writes_nothing(client, snapshot):
    response = client.put(id_url("u" * 257), json={"favorites": ["f"]}, headers=ADMIN)
    assert_error_shape(response, 400, "BAD_REQUEST")
    assert snapshot() == {}


def test_id_containing_scheme_like_text_is_an_ordinary_id(client):
    """``a://b`` in the path is an id with a slash, not an absolute URI."""
    headers = bearer(admin=True)
    resp = client.put(PATH + "a://b", json={"favorites": ["f"]}, headers=headers)
    assert resp.status_code == 200, resp.data
    assert resp.get_json()["subscriber_id"] == "a://b"
    got = client.get(PATH + "a:%2F%2Fb", headers=headers).get_json()
    assert got["favorites"] == ["f"]


def test_delete_answer_has_no_body_and_no_media_type(client, auth):
    resp = client.delete(PATH + SUB, headers=auth)
    assert resp.status_code == 204
    assert resp.data == b""
    assert "Content-Type" not in resp.headers
