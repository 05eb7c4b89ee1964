"""API.md section 8, rule by rule: MAX_RECORDS, MAX_FAVORITES and HISTORY_FULL."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlencode

import fakeredis
import pytest
import redis

from stat_service import ConfigError, create_app
from stat_service.bulk import importer
from stat_service.config import load_settings
from tests.conftest import PATH, SECRET, SUB, bearer
from tests.support import MESSAGES, close_client, delete_prefix

ALSO_ON_CLUSTER = True

ACTIVITY = "/metax/2.1/activity"
ADMIN = bearer(admin=True, ttl=3600)
NOW_MS = 1764000000000
EVERY_FIELD = {
    "play_count": 3,
    "view_time": 5400,
    "pause_time": 310,
    "user_rating": 3.5,
}


def make_app(settings: dict, redis_client, **bounds):
    """The service over ``redis_client`` and the test's prefix, with ``bounds``."""
    return create_app({**settings, **bounds}, redis_client=redis_client)


def stat_url(sub: str = SUB, delta: bool = True) -> str:
    return f"{PATH}{quote(sub, safe='')}?isDelta={'true' if delta else 'false'}"


def activity_url(kind: str, asset: str, sub: str = SUB, **params) -> str:
    path = f"{ACTIVITY}/{kind}/{quote(sub, safe='')}/{quote(asset, safe='')}"
    return path + ("?" + urlencode(params) if params else "")


def put(client, body: dict, *, delta: bool = True, sub: str = SUB):
    return client.put(stat_url(sub, delta), json=body, headers=ADMIN)


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def conflict(response) -> str:
    """The reason of a 409 in the error shape of section 5."""
    assert response.status_code == 409, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"result", "message", "reason"}
    assert (body["result"], body["message"]) == ("error", "CONFLICT")
    return body["reason"]


def history(client, sub: str = SUB) -> dict:
    got = ok(client.get(PATH + quote(sub, safe=""), headers=ADMIN))
    return {"favorites": got["favorites"], "view_data": got["view_data"]}


def records(n: int, prefix: str = "r", played: int = NOW_MS) -> list[dict]:
    """``n`` records with every field, the first the most recently played."""
    return [
        {"asset_id": f"{prefix}{i:05d}", **EVERY_FIELD, "last_played_on": played - i}
        for i in range(n)
    ]


def ids(state: dict) -> set[str]:
    return {r["asset_id"] for r in state["view_data"]}


def order(record: dict):
    """Section 2's order: last played first, never played last, ids by code point."""
    played = record.get("last_played_on")
    return (played is None, -(played or 0), record["asset_id"])


def eviction_order(record: dict):
    """Who goes first: no last_played_on, then the oldest; ties by asset id."""
    return (record.get("last_played_on", -1), record["asset_id"])


def assert_names_the_records_bound(reason: str, reach: int, bound: int) -> None:
    assert f"MAX_RECORDS ({bound})" in reason
    assert f" {reach} " in reason
    assert "isDelta=false" in reason and "remov" in reason  # how to make room


# --- the settings ---------------------------------------------------------------------


def test_bounds_default_to_5000_or_max_items_when_that_is_lower(settings):
    assert load_settings(settings).MAX_RECORDS == 5000
    assert load_settings(settings).MAX_FAVORITES == 5000
    assert load_settings(settings).HISTORY_FULL == "reject"
    lowered = load_settings({**settings, "MAX_ITEMS": 3})
    assert (lowered.MAX_RECORDS, lowered.MAX_FAVORITES) == (3, 3)
    # ... and the service applies them: the 4th record and favorite are refused.
    client = make_app(settings, fakeredis.FakeRedis(), MAX_ITEMS=3).test_client()
    for i in range(3):
        ok(client.put(activity_url("watch", f"a{i}"), headers=ADMIN))
        ok(client.put(activity_url("fav", f"a{i}"), headers=ADMIN))
    reason = conflict(client.put(activity_url("watch", "a3"), headers=ADMIN))
    assert_names_the_records_bound(reason, 4, 3)
    reason = conflict(client.put(activity_url("fav", "a3"), headers=ADMIN))
    assert "MAX_FAVORITES (3)" in reason


@pytest.mark.parametrize(
    "values, names",
    [
        ({"MAX_RECORDS": 5001}, ("MAX_RECORDS", "MAX_ITEMS")),
        ({"MAX_FAVORITES": 5001}, ("MAX_FAVORITES", "MAX_ITEMS")),
        ({"MAX_ITEMS": 100, "MAX_RECORDS": 101}, ("MAX_RECORDS", "MAX_ITEMS")),
        ({"MAX_ITEMS": 100, "MAX_FAVORITES": 101}, ("MAX_FAVORITES", "MAX_ITEMS")),
    ],
)
def test_start_up_refuses_a_bound_above_max_items_naming_the_settings(
    settings, monkeypatch, values, names
):
    with pytest.raises(ConfigError) as refused:
        create_app({**settings, **values}, redis_client=fakeredis.FakeRedis())
    assert all(name in str(refused.value) for name in names)
    for name, value in values.items():  # the same from the environment
        monkeypatch.setenv(name, str(value))
    with pytest.raises(ConfigError) as refused:
        create_app(settings, redis_client=fakeredis.FakeRedis())
    assert all(name in str(refused.value) for name in names)


def test_bounds_equal_to_max_items_are_accepted(settings):
    app = make_app(
        settings,
        fakeredis.FakeRedis(),
        MAX_ITEMS=100,
        MAX_RECORDS=100,
        MAX_FAVORITES=100,
    )
    assert (app.config["STAT"].MAX_RECORDS, app.config["STAT"].MAX_FAVORITES) == (
        100,
        100,
    )


@pytest.mark.parametrize("value", ["drop", "oldest", "rejected", "true", "lru"])
def test_history_full_takes_only_reject_or_evict(settings, monkeypatch, value):
    with pytest.raises(ConfigError) as refused:
        make_app(settings, fakeredis.FakeRedis(), HISTORY_FULL=value)
    assert "HISTORY_FULL" in str(refused.value)
    monkeypatch.setenv("HISTORY_FULL", value)
    with pytest.raises(ConfigError):
        create_app(settings, redis_client=fakeredis.FakeRedis())
    for good in ("reject", "evict"):
        monkeypatch.setenv("HISTORY_FULL", good)
        assert create_app(settings, redis_client=fakeredis.FakeRedis())


# --- reject ---------------------------------------------------------------------------


def test_a_delta_adding_records_past_max_records_is_409_and_writes_nothing(
    settings, redis_client, snapshot
):
    client = make_app(settings, redis_client, MAX_RECORDS=5).test_client()
    ok(put(client, {"favorites": ["f"], "view_data": records(4)}, delta=False))
    before = snapshot()
    body = {
        "favorites": ["g"],
        "view_data": [
            {"asset_id": "r00000", "play_count": 9},  # an update
            {"asset_id": "new1"},
            {"asset_id": "new2", "pause_time": 5},
        ],
    }
    assert_names_the_records_bound(conflict(put(client, body)), 6, 5)
    assert snapshot() == before
    # Up to the bound is fine.
    body["view_data"].pop()
    assert ok(put(client, body))["evicted"] == 0
    assert len(history(client)["view_data"]) == 5


@pytest.mark.parametrize(
    "kind, params, field, value",
    [
        ("watch", {"last_played_on": "5"}, "last_played_on", 5),
        ("pausetime", {"time": "12000"}, "pause_time", 12),
        ("review", {"score": "2.5"}, "user_rating", 2.5),
    ],
)
def test_an_activity_put_creating_a_record_past_max_records_is_the_deltas_409(
    settings, redis_client, snapshot, kind, params, field, value
):
    client = make_app(settings, redis_client, MAX_RECORDS=3).test_client()
    ok(put(client, {"view_data": records(3)}, delta=False))
    before = snapshot()
    reason = conflict(client.put(activity_url(kind, "new", **params), headers=ADMIN))
    assert snapshot() == before
    same_as_delta = put(client, {"view_data": [{"asset_id": "new", field: value}]})
    assert conflict(same_as_delta) == reason
    assert_names_the_records_bound(reason, 4, 3)
    # An update of a stored record passes, and so does an ignored pause time.
    reply = ok(client.put(activity_url(kind, "r00001", **params), headers=ADMIN))
    assert reply["evicted"] == 0
    skipped = activity_url("pausetime", "new", time=9999)
    assert ok(client.put(skipped, headers=ADMIN))["ignored"] is True
    assert ids(history(client)) == {"r00000", "r00001", "r00002"}


@pytest.mark.parametrize("history_full", ["reject", "evict"])
def test_a_fav_add_past_max_favorites_is_409_under_either_setting(
    settings, redis_client, snapshot, history_full
):
    app = make_app(settings, redis_client, MAX_FAVORITES=3, HISTORY_FULL=history_full)
    client = app.test_client()
    for guid in ("a", "b", "c"):
        ok(client.put(activity_url("fav", guid), headers=ADMIN))
    before = snapshot()
    reason = conflict(client.put(activity_url("fav", "d"), headers=ADMIN))
    assert "MAX_FAVORITES (3)" in reason and " 4 " in reason
    assert "DELETE /metax/2.1/activity/fav/" in reason  # how to make room
    assert snapshot() == before
    again = ok(client.put(activity_url("fav", "b"), headers=ADMIN))
    assert (again["added"], again["favorites"], again["evicted"]) == (False, 3, 0)
    ok(client.delete(activity_url("fav", "a"), headers=ADMIN))
    assert ok(client.put(activity_url("fav", "d"), headers=ADMIN))["added"] is True
    assert history(client)["favorites"] == ["b", "c", "d"]


# --- one request past a bound by itself -----------------------------------------------


@pytest.mark.parametrize("history_full", ["reject", "evict"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "overwrite"])
def test_a_request_writing_more_distinct_items_than_a_bound_is_409(
    settings, redis_client, snapshot, history_full, delta
):
    app = make_app(
        settings,
        redis_client,
        MAX_RECORDS=3,
        MAX_FAVORITES=3,
        HISTORY_FULL=history_full,
    )
    client = app.test_client()
    ok(put(client, {"favorites": ["x"], "view_data": records(1)}, delta=False))
    before = snapshot()
    four_records = [{"asset_id": a} for a in ("a", "b", "a", "c", "d", "b")]
    reason = conflict(put(client, {"view_data": four_records}, delta=delta))
    assert "MAX_RECORDS (3)" in reason and " 4 " in reason
    four_favorites = ["a", "b", "a", "c", "d", "b"]
    reason = conflict(put(client, {"favorites": four_favorites}, delta=delta))
    assert "MAX_FAVORITES (3)" in reason and " 4 " in reason
    assert snapshot() == before
    # Repeats are counted once: three distinct of each is within the bounds.
    body = {"favorites": four_favorites[:4], "view_data": four_records[:4]}
    reply = ok(put(client, body, delta=False))
    assert (reply["favorites"], reply["view_data"], reply["evicted"]) == (3, 3, 0)


def test_an_overwrite_within_the_bounds_always_passes(settings, redis_client):
    app = make_app(settings, redis_client, MAX_RECORDS=5, MAX_FAVORITES=5)
    client = app.test_client()
    full = {"favorites": list("abcde"), "view_data": records(5)}
    ok(put(client, full, delta=False))
    other = {"favorites": list("vwxyz"), "view_data": records(5, prefix="o")}
    reply = ok(put(client, other, delta=False))
    assert (reply["favorites"], reply["view_data"], reply["evicted"]) == (5, 5, 0)
    assert history(client) == {
        "favorites": other["favorites"],
        "view_data": sorted(other["view_data"], key=order),
    }


# --- a lowered bound ------------------------------------------------------------------


def test_updates_and_removals_pass_when_a_lowered_bound_leaves_the_history_above_it(
    settings, redis_client, snapshot
):
    big = make_app(settings, redis_client, MAX_RECORDS=10, MAX_FAVORITES=6)
    favorites = list("abcdef")
    ok(put(big.test_client(), {"favorites": favorites, "view_data": records(10)}))
    client = make_app(
        settings, redis_client, MAX_RECORDS=4, MAX_FAVORITES=3
    ).test_client()
    # Updates of stored records, through every way of writing one.
    ok(put(client, {"view_data": [{"asset_id": "r00000", "play_count": 7}]}))
    ok(put(client, {"view_data": [{"asset_id": "r00001", "pause_time": None}]}))
    for kind, params in [
        ("watch", {"last_played_on": "9"}),
        ("pausetime", {"time": "20000"}),
        ("review", {"score": "5"}),
    ]:
        reply = client.put(activity_url(kind, "r00002", **params), headers=ADMIN)
        assert ok(reply)["evicted"] == 0
    again = ok(client.put(activity_url("fav", "c"), headers=ADMIN))
    assert (again["added"], again["favorites"]) == (False, 6)
    # Removals.
    assert ok(client.delete(activity_url("watch", "r00009"), headers=ADMIN))["removed"]
    assert ok(client.delete(activity_url("fav", "f"), headers=ADMIN))["favorites"] == 5
    state = history(client)
    assert len(state["view_data"]) == 9 and state["favorites"] == list("abcde")
    # Adding is still refused, and names the count the history would reach.
    before = snapshot()
    reason = conflict(client.put(activity_url("watch", "new"), headers=ADMIN))
    assert_names_the_records_bound(reason, 10, 4)
    assert "MAX_FAVORITES (3)" in conflict(
        client.put(activity_url("fav", "new"), headers=ADMIN)
    )
    assert snapshot() == before
    # Replacing the favorites within the bound, or the whole history, passes.
    assert ok(put(client, {"favorites": ["x", "y", "z"]}))["favorites"] == 3
    reply = ok(put(client, {"view_data": records(4, prefix="o")}, delta=False))
    assert reply["evicted"] == 0
    assert len(history(client)["view_data"]) == 4


def test_with_a_lowered_bound_and_evict_an_add_evicts_down_to_the_bound(
    settings, redis_client
):
    stored = records(10)
    big = make_app(settings, redis_client, MAX_RECORDS=10)
    ok(put(big.test_client(), {"favorites": ["r00009"], "view_data": stored}))
    client = make_app(
        settings, redis_client, MAX_RECORDS=4, HISTORY_FULL="evict"
    ).test_client()
    # An update adds nothing, so nothing is evicted.
    ok(put(client, {"view_data": [{"asset_id": "r00009", "play_count": 1}]}))
    assert len(history(client)["view_data"]) == 10
    reply = ok(client.put(activity_url("review", "new", score=1), headers=ADMIN))
    assert reply["evicted"] == 7
    kept = {"r00000", "r00001", "r00002", "new"}  # the three most recent, and it
    state = history(client)
    assert ids(state) == kept and state["favorites"] == ["r00009"]


# --- evict ----------------------------------------------------------------------------


def test_evict_removes_the_least_recently_played_never_what_the_request_writes(
    settings, redis_client
):
    client = make_app(
        settings, redis_client, MAX_RECORDS=5, HISTORY_FULL="evict"
    ).test_client()
    stored = [
        {"asset_id": "x-none", "play_count": 1},  # never played: first to go
        {"asset_id": "a-none", "play_count": 1},  # first of all, but written below
        {"asset_id": "p100", "last_played_on": 100},
        {"asset_id": "b200", "last_played_on": 200},
        {"asset_id": "a200", "last_played_on": 200},  # a tie: "a200" before "b200"
    ]
    favorites = ["x-none", "p100", "z"]
    ok(put(client, {"favorites": favorites, "view_data": stored}, delta=False))
    body = {
        "view_data": [
            {"asset_id": "a-none", "view_time": 5},
            {"asset_id": "n1"},
            {"asset_id": "n2", "last_played_on": 1},
            {"asset_id": "n3", "pause_time": 4},
        ]
    }
    reply = ok(put(client, body))
    assert (reply["evicted"], reply["view_data"], reply["favorites"]) == (3, 4, 3)
    state = history(client)
    assert ids(state) == {"a-none", "b200", "n1", "n2", "n3"}
    assert state["favorites"] == favorites  # a favorite's record may go, never it
    assert {"asset_id": "a-none", "play_count": 1, "view_time": 5} in state["view_data"]


@pytest.mark.parametrize(
    "kind, params",
    [
        ("watch", {"last_played_on": "1"}),
        ("pausetime", {"time": "12000"}),
        ("review", {"score": "4"}),
    ],
)
def test_an_activity_put_creating_a_record_evicts_the_least_recent(
    settings, redis_client, kind, params
):
    client = make_app(
        settings, redis_client, MAX_RECORDS=3, HISTORY_FULL="evict"
    ).test_client()
    ok(put(client, {"favorites": ["r00002"], "view_data": records(3)}, delta=False))
    reply = ok(client.put(activity_url(kind, "new", **params), headers=ADMIN))
    assert reply["evicted"] == 1
    state = history(client)
    assert ids(state) == {"r00000", "r00001", "new"}
    assert state["favorites"] == ["r00002"]
    fav = ok(client.put(activity_url("fav", "another"), headers=ADMIN))
    assert fav["evicted"] == 0 and len(history(client)["view_data"]) == 3


@pytest.mark.parametrize("adds", [1, 3, 30])  # a sorted buffer of victims, or a sort
def test_evict_matches_a_reference_model(settings, redis_client, adds):
    rnd = random.Random(adds)
    bound = 40
    client = make_app(
        settings, redis_client, MAX_RECORDS=bound, HISTORY_FULL="evict"
    ).test_client()
    alphabet = ["a", "b", "B", "é", "\uff5a", "\U0001f600", "-"]
    names = set()
    while len(names) < 2 * bound:
        names.add("".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4))))
    names = sorted(names)
    rnd.shuffle(names)
    played = [None, None, 0, 5, 5, 7, NOW_MS, 2**53 - 1]
    stored = {}
    for name in names[:bound]:
        record = {"asset_id": name}
        if (lp := rnd.choice(played)) is not None:
            record["last_played_on"] = lp
        stored[name] = record
    favorites = rnd.sample(names[:bound], 5)
    body = {"favorites": favorites, "view_data": list(stored.values())}
    ok(put(client, body, delta=False))
    new = names[bound : bound + adds]
    updated = rnd.sample(names[:bound], 4)
    request = [{"asset_id": n, "last_played_on": rnd.choice([1, 6])} for n in new]
    request += [{"asset_id": n, "play_count": 1} for n in updated]
    rnd.shuffle(request)
    written = set(new) | set(updated)
    candidates = sorted(
        (r for n, r in stored.items() if n not in written), key=eviction_order
    )
    victims = {r["asset_id"] for r in candidates[: len(new)]}  # the bound is full
    reply = ok(put(client, {"view_data": request}))
    assert reply["evicted"] == len(new)
    state = history(client)
    assert ids(state) == (set(stored) - victims) | set(new)
    assert state["favorites"] == favorites


# --- a full history at the default bounds ---------------------------------------------


def test_a_full_history_at_the_default_bounds_reads_back_whole_and_round_trips(
    client, store, snapshot
):
    full = {
        "favorites": [f"fav-{i:05d}" for i in range(5000)],
        "view_data": records(5000),
    }
    store.put(SUB, full, delta=False)
    before = snapshot()
    got = ok(client.get(PATH + SUB, headers=ADMIN))
    assert got["favorites"] == full["favorites"]
    assert got["view_data"] == full["view_data"]  # already most recent first
    body = {"favorites": got["favorites"], "view_data": got["view_data"]}
    reply = ok(put(client, body, delta=False))
    assert (reply["favorites"], reply["view_data"], reply["evicted"]) == (5000, 5000, 0)
    assert snapshot() == before
    # It is full: one more record or favorite is refused.
    reason = conflict(client.put(activity_url("watch", "one-more"), headers=ADMIN))
    assert_names_the_records_bound(reason, 5001, 5000)
    reason = conflict(client.put(activity_url("fav", "one-more"), headers=ADMIN))
    assert "MAX_FAVORITES (5000)" in reason and " 5001 " in reason
    assert snapshot() == before


# --- the bulk importer ----------------------------------------------------------------

SEED = {"favorites": ["f1"], "view_data": records(3)}
LINES = [  # (seeded first, the line's body); MAX_RECORDS = MAX_FAVORITES = 3
    (True, {"view_data": [{"asset_id": "r00000", "play_count": 1}]}),
    (True, {"view_data": [{"asset_id": "new", "last_played_on": 1}]}),
    (False, {"view_data": [{"asset_id": a} for a in ("a", "b", "a", "c", "d")]}),
    (False, {"favorites": ["a", "b", "c", "a", "d"]}),
    (True, {"favorites": ["a", "b", "c", "d"], "view_data": records(1)}),
    (False, {"favorites": ["a", "b", "a"], "view_data": records(3, prefix="o")}),
    (True, {"view_data": [{"asset_id": "n1"}, {"asset_id": "n2"}]}),
]


@pytest.mark.parametrize("history_full", ["reject", "evict"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "overwrite"])
def test_a_bulk_line_past_the_bounds_is_a_reject_with_the_apis_409(
    settings, redis_client, tmp_path, history_full, delta
):
    bounds = {"MAX_RECORDS": 3, "MAX_FAVORITES": 3, "HISTORY_FULL": history_full}
    client = make_app(settings, redis_client, **bounds).test_client()
    answers, lines = [], []
    for n, (seeded, body) in enumerate(LINES):
        for who in ("api", "bulk"):
            if seeded:
                ok(put(client, SEED, delta=False, sub=f"{who}-{n}"))
        answers.append(put(client, body, delta=delta, sub=f"api-{n}"))
        lines.append(json.dumps({"subscriber_id": f"bulk-{n}", **body}))
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    options = importer.ImportOptions(path=str(path), delta=delta, rejects=str(rejects))
    conf = load_settings({**settings, **bounds})
    report = importer.run_import(options, conf, client=redis_client)
    got = [json.loads(x) for x in rejects.read_text().splitlines()]
    expected = [
        {
            "line": n + 1,
            "subscriber_id": f"bulk-{n}",
            "message": MESSAGES[409],
            "reason": answer.get_json()["reason"],
        }
        for n, answer in enumerate(answers)
        if answer.status_code == 409
    ]
    assert all(a.status_code in (200, 409) for a in answers)
    assert expected, "no line broke the bounds"
    assert got == expected
    assert (report.applied, report.rejected) == (len(LINES) - len(got), len(got))
    for n in range(len(LINES)):  # the other lines are applied as the API applied them
        assert history(client, f"bulk-{n}") == history(client, f"api-{n}"), n


# --- many threads at once (a real Redis, and a cluster) -------------------------------

THREADS = 8


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def real_redis(request, key_prefix):
    """A real Redis and a real Redis Cluster, with room for every thread."""
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        client = redis.RedisCluster.from_url(url, max_connections=64)
    else:
        url = request.getfixturevalue("real_redis_url")
        client = redis.Redis.from_url(url, max_connections=64)
    yield client
    delete_prefix(client, key_prefix)
    close_client(client)


def real_app(key_prefix, client, **bounds):
    return create_app(
        {"JWT_SECRET": SECRET, "KEY_PREFIX": key_prefix, "TESTING": True, **bounds},
        redis_client=client,
    )


def run_together(count: int, work) -> list:
    """Run ``work(i)`` in ``count`` threads released at once; re-raise failures."""
    barrier = threading.Barrier(count)

    def task(i):
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(task, i) for i in range(count)]
        return [f.result() for f in futures]


class HlenPoller:
    """Reads HLEN of one hash in a loop from its own thread, keeping the max."""

    def __init__(self, client, key: str):
        self.client, self.key = client, key
        self.samples, self.highest = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.highest = max(self.highest, self.client.hlen(self.key))
            self.samples += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.real_redis
@pytest.mark.parametrize("bound", [None, 50], ids=["unbounded", "max-favorites-50"])
def test_concurrent_fav_adds_keep_every_favorite_and_count_consistently(
    real_redis, key_prefix, bound
):
    extra = {} if bound is None else {"MAX_FAVORITES": bound}
    app = real_app(key_prefix, real_redis, **extra)
    per_thread = 10

    def work(t):
        client = app.test_client()
        answers = []
        for i in range(per_thread):
            guid = f"t{t}-{i}"
            reply = client.put(activity_url("fav", guid), headers=ADMIN)
            answers.append((guid, reply.status_code, reply.get_json()))
        return answers

    answers = [a for thread in run_together(THREADS, work) for a in thread]
    added = [(guid, body) for guid, status, body in answers if status == 200]
    refused = [body for _, status, body in answers if status != 200]
    total = THREADS * per_thread if bound is None else bound
    assert len(added) == total and all(body["added"] for _, body in added)
    assert sorted(body["favorites"] for _, body in added) == list(range(1, total + 1))
    assert all(b["message"] == "CONFLICT" for b in refused)
    assert len(refused) == THREADS * per_thread - total
    stored = history(app.test_client())["favorites"]
    assert sorted(stored) == sorted(guid for guid, _ in added)
    # Each thread's favorites are in the order it added them; the list is in
    # the order of the counts the adds answered (each add saw the ones before).
    by_count = [guid for guid, body in sorted(added, key=lambda a: a[1]["favorites"])]
    assert stored == by_count


@pytest.mark.real_redis
@pytest.mark.parametrize("history_full", ["reject", "evict"])
def test_concurrent_adds_at_the_bound_never_let_the_history_pass_it(
    real_redis, key_prefix, history_full
):
    bound, seeded, per_thread = 50, 45, 4
    app = real_app(key_prefix, real_redis, MAX_RECORDS=bound, HISTORY_FULL=history_full)
    store = app.extensions["stat_store"]
    seed = records(seeded, prefix="s", played=10_000)  # all older than the new ones
    ok(put(app.test_client(), {"view_data": seed}, delta=False))
    removable = [r["asset_id"] for r in seed[:5]]  # the most recent ones

    def work(t):
        client = app.test_client()
        if t == THREADS:  # makes room while the others add
            removed = []
            for asset in removable:
                reply = ok(client.delete(activity_url("watch", asset), headers=ADMIN))
                removed.append((asset, reply["removed"]))
            return removed
        out = []
        for i in range(per_thread):
            asset, played = f"n{t}-{i}", NOW_MS + t * 100 + i
            if i % 2:
                reply = put(
                    client,
                    {"view_data": [{"asset_id": asset, "last_played_on": played}]},
                )
            else:
                target = activity_url("watch", asset, last_played_on=played)
                reply = client.put(target, headers=ADMIN)
            out.append((asset, reply.status_code, reply.get_json()))
        return out

    with HlenPoller(real_redis, store.keys(SUB)[1]) as poller:
        results = run_together(THREADS + 1, work)
    assert poller.samples > 0 and poller.highest <= bound
    removed = {asset for asset, gone in results[THREADS] if gone}
    adds = [a for thread in results[:THREADS] for a in thread]
    added = {asset for asset, status, _ in adds if status == 200}
    for _, status, body in adds:
        assert status in (200, 409), body
        if status == 409:
            assert (
                body["message"] == "CONFLICT"
                and f"MAX_RECORDS ({bound})" in body["reason"]
            )
    state = ids(history(app.test_client()))
    assert len(state) <= bound
    if history_full == "reject":
        assert all(body.get("evicted", 0) == 0 for _, _, body in adds)
        # Room for 5 at the start, and 1 more for each record removed.
        assert bound - seeded <= len(added) <= bound - seeded + len(removed)
        assert state == ({r["asset_id"] for r in seed} - removed) | added
    else:
        assert added == {asset for asset, _, _ in adds}  # every add passes
        evicted = sum(body["evicted"] for _, _, body in adds)
        assert len(state) == seeded + len(added) - len(removed) - evicted
        assert added <= state  # only older seeded records made room
        kept = [r["asset_id"] for r in seed if r["asset_id"] in state]
        not_removed = [r["asset_id"] for r in seed if r["asset_id"] not in removed]
        assert kept == not_removed[: len(kept)]  # the oldest went first
