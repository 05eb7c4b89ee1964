"""Many threads against a real Redis (one server, and a cluster): no lost update,
no half request seen."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from stat_service import create_app
from tests.conftest import PATH, SECRET, SUB, bearer
from tests.support import close_client, delete_prefix

pytestmark = pytest.mark.real_redis

THREADS = 16
AUTH = bearer(SUB, ttl=3600)  # made at import: outlive a long suite
URL = PATH + SUB


@pytest.fixture(params=["single", pytest.param("cluster", marks=pytest.mark.cluster)])
def real_app(request, key_prefix):
    """The app on the real Redis, and on a real Redis Cluster."""
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        client = redis.RedisCluster.from_url(url, max_connections=64)
    else:
        url = request.getfixturevalue("real_redis_url")
        client = redis.Redis.from_url(url, max_connections=64)
    app = create_app(
        {"JWT_SECRET": SECRET, "KEY_PREFIX": key_prefix, "TESTING": True},
        redis_client=client,
    )
    yield app
    delete_prefix(client, key_prefix)
    close_client(client)


def put(client, body, *, delta=True):
    response = client.put(
        f"{URL}?isDelta={'true' if delta else 'false'}", json=body, headers=AUTH
    )
    assert response.status_code == 200, response.get_json()


def get(client) -> dict:
    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def records_by_id(state: dict) -> dict[str, dict]:
    return {r["asset_id"]: r for r in state["view_data"]}


def run_together(count: int, work) -> list:
    """Run ``work(i)`` in ``count`` threads released at once; re-raise failures."""
    barrier = threading.Barrier(count)

    def task(i):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(task, i) for i in range(count)]
        return [f.result() for f in futures]


def test_concurrent_deltas_to_one_subscriber_lose_no_asset(real_app):
    put(real_app.test_client(), {"favorites": ["f1", "f2"]})
    puts_per_thread, assets_per_put = 20, 5

    def writer(t):
        client = real_app.test_client()
        for i in range(puts_per_thread):
            view_data = [
                {
                    "asset_id": f"t{t}-p{i}-a{k}",
                    "play_count": t,
                    "view_time": i,
                    "pause_time": k,
                    "last_played_on": 1764000000000 + t * 1000 + i * 10 + k,
                }
                for k in range(assets_per_put)
            ]
            if i:  # also patch one field of an asset this thread wrote before
                view_data.append({"asset_id": f"t{t}-p{i - 1}-a0", "user_rating": 4.5})
            put(client, {"view_data": view_data})

    run_together(THREADS, writer)

    state = get(real_app.test_client())
    expected = {}
    for t in range(THREADS):
        for i in range(puts_per_thread):
            for k in range(assets_per_put):
                asset = f"t{t}-p{i}-a{k}"
                expected[asset] = {
                    "asset_id": asset,
                    "play_count": t,
                    "view_time": i,
                    "pause_time": k,
                    "last_played_on": 1764000000000 + t * 1000 + i * 10 + k,
                }
                if k == 0 and i < puts_per_thread - 1:
                    expected[asset]["user_rating"] = 4.5
    assert len(state["view_data"]) == THREADS * puts_per_thread * assets_per_put
    assert records_by_id(state) == expected
    assert state["favorites"] == ["f1", "f2"]


def delta_record(j: int, name: str) -> dict:
    return {"asset_id": f"{name}{j}", "play_count": j, "user_rating": 2.5}


@pytest.mark.parametrize("round_", range(4))
def test_overwrite_racing_deltas_leaves_a_serial_order(real_app, round_):
    """State = overwrite body + the deltas that ran after it, each whole."""
    seed = real_app.test_client()
    put(
        seed,
        {
            "favorites": ["stale"],
            "view_data": [{"asset_id": f"s{i}"} for i in range(20)],
        },
        delta=False,
    )
    delta_threads, deltas_per_thread = 8, 6
    overwrite_body = {
        "favorites": ["o-fav-1", "o-fav-2"],
        "view_data": [
            {"asset_id": f"o{i}", "view_time": i, "last_played_on": 1700000000000 + i}
            for i in range(30)
        ],
    }
    first_wave = threading.Semaphore(0)
    times: dict = {}
    rng = random.Random(round_)

    def work(n):
        client = real_app.test_client()
        if n == delta_threads:  # the overwrite: fired once every thread has written
            for _ in range(delta_threads):
                assert first_wave.acquire(timeout=30), "a delta thread failed"
            time.sleep(rng.uniform(0, 0.005))
            start = time.monotonic()
            put(client, overwrite_body, delta=False)
            times["overwrite"] = (start, time.monotonic())
            return
        for i in range(deltas_per_thread):
            j = n * deltas_per_thread + i
            start = time.monotonic()
            put(client, {"view_data": [delta_record(j, "x"), delta_record(j, "y")]})
            times[j] = (start, time.monotonic())
            if i == 0:
                first_wave.release()

    run_together(delta_threads + 1, work)

    state = get(seed)
    got = records_by_id(state)
    ow_start, ow_end = times["overwrite"]
    expected = {r["asset_id"]: r for r in overwrite_body["view_data"]}
    for j in range(delta_threads * deltas_per_thread):
        start, end = times[j]
        x, y = delta_record(j, "x"), delta_record(j, "y")
        has_x, has_y = x["asset_id"] in got, y["asset_id"] in got
        assert has_x == has_y, f"delta {j} is half applied: x={has_x} y={has_y}"
        if end < ow_start:
            assert not has_x, f"delta {j}, done before the overwrite, survived it"
        if start > ow_end:
            assert has_x, f"delta {j}, sent after the overwrite, is lost"
        if has_x:
            expected[x["asset_id"]] = x
            expected[y["asset_id"]] = y
    assert got == expected
    assert state["favorites"] == overwrite_body["favorites"]


def whole_state(prefix: str, value: int) -> dict:
    return {
        "favorites": [f"{prefix}-fav-{i}" for i in range(50)],
        "view_data": [
            {
                "asset_id": f"{prefix}{i}",
                "play_count": value,
                "view_time": value + i,
                "pause_time": value,
                "last_played_on": 1764000000000 + value + i,
                "user_rating": value % 5,
            }
            for i in range(200)
        ],
    }


@pytest.mark.parametrize("delta", [False, True], ids=["overwrite", "delta"])
def test_concurrent_reads_see_only_whole_requests(real_app, delta):
    # Overwrites switch between disjoint asset sets; deltas rewrite every field
    # (and the favorites) of the same assets, so both reach exactly A or B.
    body_a = whole_state("a", 1)
    body_b = whole_state("b" if not delta else "a", 2)
    writer_client = real_app.test_client()
    put(writer_client, body_b, delta=False)
    state_b = get(writer_client)
    put(writer_client, body_a, delta=False)
    state_a = get(writer_client)
    assert state_a != state_b
    writes, readers = 60, 3
    done = threading.Event()

    def work(n):
        client = real_app.test_client()
        if n == readers:
            try:
                for i in range(writes):
                    put(client, body_b if i % 2 == 0 else body_a, delta=delta)
            finally:
                done.set()
            return None
        seen = {"A": 0, "B": 0, "other": []}
        while not done.is_set():
            state = get(client)
            if state == state_a:
                seen["A"] += 1
            elif state == state_b:
                seen["B"] += 1
            else:
                ids = {r["asset_id"][0] for r in state["view_data"]}
                counts = {r.get("play_count") for r in state["view_data"]}
                seen["other"].append((len(state["view_data"]), ids, counts))
        return seen

    results = [r for r in run_together(readers + 1, work) if r is not None]
    assert [r["other"] for r in results] == [[]] * readers
    assert sum(r["A"] + r["B"] for r in results) > 0
