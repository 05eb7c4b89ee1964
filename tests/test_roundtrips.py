"""One request, one Redis command: counted on the client and on a private server."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from stat_service import create_app
from tests.conftest import PATH, SECRET, SUB, bearer
from tests.support import RedisServer

pytestmark = pytest.mark.real_redis

MAX_ITEMS = 5000  # the default limit
MAX_BODY_BYTES = 1024 * 1024  # the default limit
SCRIPT_LIMIT_MS = 1000  # a fifth of Redis' busy-script threshold (5000 ms default)
URL = PATH + SUB
AUTH = bearer(SUB, ttl=3600)  # made at import: outlive a long suite


@pytest.fixture(scope="module")
def server():
    """A private redis-server: these tests flush scripts and reset statistics."""
    private = RedisServer().start()
    yield private
    private.cleanup()


@pytest.fixture
def admin(server):
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


class Sent:
    """What the app's connections sent: command names and socket writes."""

    def __init__(self):
        self.commands: list[str] = []
        self.packets = 0

    def clear(self):
        self.commands.clear()
        self.packets = 0


@pytest.fixture
def sent():
    return Sent()


@pytest.fixture
def app(server, key_prefix, sent):
    """The app on a client whose connections record every command they send."""

    class CountingConnection(redis.Connection):
        def send_command(self, *args, **kwargs):
            name = args[0]
            sent.commands.append(
                (name.decode() if isinstance(name, bytes) else str(name)).upper()
            )
            super().send_command(*args, **kwargs)

        def send_packed_command(self, command, check_health=True):
            sent.packets += 1
            super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool.from_url(
        server.url, connection_class=CountingConnection
    )
    client = redis.Redis(connection_pool=pool)
    yield create_app(
        {"JWT_SECRET": SECRET, "KEY_PREFIX": key_prefix, "TESTING": True},
        redis_client=client,
    )
    client.close()
    pool.disconnect()


@pytest.fixture
def client(app):
    return app.test_client()


def put(client, body, *, delta: bool):
    response = client.put(
        f"{URL}?isDelta={'true' if delta else 'false'}", json=body, headers=AUTH
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def get(client) -> dict:
    response = client.get(URL, headers=AUTH)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def warm_up(client):
    """Open the connection and load every script, so what follows is counted.

    The history is left empty, so a full body still fits MAX_RECORDS.
    """
    put(client, {"favorites": ["w"], "view_data": [{"asset_id": "w"}]}, delta=True)
    put(client, {}, delta=False)
    get(client)


def full_body(tag: str, value: int = 1) -> dict:
    """A body at the limits: MAX_ITEMS favorites and MAX_ITEMS view_data entries."""
    body = {
        "favorites": [f"{tag}-fav-{i:05d}" for i in range(MAX_ITEMS)],
        "view_data": [
            {
                "asset_id": f"{tag}-asset-{i:05d}",
                "play_count": value,
                "view_time": 5400 + i,
                "pause_time": 310 + value,
                "last_played_on": 1764000000000 + i,
                "user_rating": 3.5,
            }
            for i in range(MAX_ITEMS)
        ],
    }
    assert len(json.dumps(body).encode()) < MAX_BODY_BYTES
    return body


SMALL = {
    "favorites": ["a1", "a2", "a1"],
    "view_data": [
        {"asset_id": "a2", "pause_time": 310, "last_played_on": 1764000000000},
        {"asset_id": "a3", "play_count": None, "user_rating": 4},
        {"asset_id": "a2", "view_time": 12},
    ],
}


@pytest.mark.parametrize("size", ["small", "max"])
@pytest.mark.parametrize("delta", [True, False], ids=["delta", "overwrite"])
def test_put_sends_exactly_one_evalsha(client, sent, delta, size):
    warm_up(client)
    body = SMALL if size == "small" else full_body("x")
    sent.clear()
    result = put(client, body, delta=delta)
    assert sent.commands == ["EVALSHA"]
    assert sent.packets == 1
    assert result["view_data"] == (2 if size == "small" else MAX_ITEMS)
    assert result["favorites"] == (2 if size == "small" else MAX_ITEMS)


def test_get_of_a_full_history_sends_exactly_one_evalsha(client, sent):
    warm_up(client)
    put(client, full_body("x"), delta=False)
    sent.clear()
    state = get(client)
    assert sent.commands == ["EVALSHA"]
    assert sent.packets == 1
    assert len(state["view_data"]) == MAX_ITEMS
    assert len(state["favorites"]) == MAX_ITEMS


def test_delete_sends_exactly_one_del(client, sent):
    warm_up(client)
    sent.clear()
    assert client.delete(URL, headers=AUTH).status_code == 204
    assert sent.commands == ["DEL"]
    assert sent.packets == 1
    assert get(client)["view_data"] == []


def commands_seen_by_server(admin, other, action) -> list[str]:
    """Names of the commands clients sent during ``action`` (MONITOR).

    Commands a script runs show up as ``lua`` and are left out; the end is
    marked by an ECHO from ``other``, an already connected client.
    """
    marker = f"end-{uuid.uuid4().hex}"
    with admin.monitor() as monitor:
        action()
        other.echo(marker)
        names = []
        while True:
            entry = monitor.next_command()
            if marker in entry["command"]:
                return names
            if entry["client_type"] != "lua":
                names.append(entry["command"].split(" ", 1)[0].upper())


def test_server_receives_one_command_per_request_from_the_configured_client(
    server, admin, key_prefix
):
    # The production client (retries, health checks, client name) from REDIS_URL.
    app = create_app(
        {
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": key_prefix,
            "REDIS_URL": server.url,
            "TESTING": True,
        }
    )
    client = app.test_client()
    warm_up(client)
    big = full_body("y")
    requests = {
        "delta": lambda: put(client, SMALL, delta=True),
        "overwrite at the limits": lambda: put(client, big, delta=False),
        "delta at the limits": lambda: put(client, big, delta=True),
        "get": lambda: get(client),
        "delete": lambda: client.delete(URL, headers=AUTH),
    }
    with redis.Redis.from_url(server.url) as other:
        other.ping()
        seen = {
            name: commands_seen_by_server(admin, other, action)
            for name, action in requests.items()
        }
    assert seen == {
        "delta": ["EVALSHA"],
        "overwrite at the limits": ["EVALSHA"],
        "delta at the limits": ["EVALSHA"],
        "get": ["EVALSHA"],
        "delete": ["DEL"],
    }
    app.extensions["stat_store"].client.close()


def test_put_after_script_flush_reloads_the_script_and_stores_the_data(
    client, admin, sent
):
    warm_up(client)
    admin.script_flush()
    assert put(client, SMALL, delta=False)["view_data"] == 2
    admin.script_flush()
    put(client, {"view_data": [{"asset_id": "a3", "play_count": 7}]}, delta=True)
    admin.script_flush()
    state = get(client)
    assert state["favorites"] == ["a1", "a2"]
    assert state["view_data"] == [
        {
            "asset_id": "a2",
            "pause_time": 310,
            "last_played_on": 1764000000000,
            "view_time": 12,
        },
        {"asset_id": "a3", "play_count": 7, "user_rating": 4},
    ]
    # Once reloaded, a request is back to a single EVALSHA.
    put(client, SMALL, delta=True)
    sent.clear()
    put(client, SMALL, delta=True)
    assert sent.commands == ["EVALSHA"]


def script_duration(admin, action) -> tuple[float, list[float]]:
    """(usec_per_call of EVALSHA from INFO commandstats, SLOWLOG durations)."""
    admin.config_resetstat()
    admin.slowlog_reset()
    action()
    stats = admin.info("commandstats")["cmdstat_evalsha"]
    assert stats["calls"] == 1
    logged = [
        entry["duration"]
        for entry in admin.slowlog_get(128)
        if entry["command"].upper().startswith(b"EVALSHA")
    ]
    return stats["usec_per_call"], logged


def test_scripts_at_the_limits_run_far_below_the_busy_script_threshold(client, admin):
    busy_ms = int(admin.config_get("busy-reply-threshold")["busy-reply-threshold"])
    assert busy_ms >= 5 * SCRIPT_LIMIT_MS
    admin.config_set("slowlog-log-slower-than", 0)
    try:
        warm_up(client)
        put(client, full_body("old"), delta=False)  # 5000 records to replace
        new = full_body("new", value=2)
        patch = full_body("new", value=3)  # every field of every record again
        timings = {
            "overwrite over 5000 records": script_duration(
                admin, lambda: put(client, new, delta=False)
            ),
            "delta over 5000 records": script_duration(
                admin, lambda: put(client, patch, delta=True)
            ),
            "get of 5000 records": script_duration(admin, lambda: get(client)),
        }
    finally:
        admin.config_set("slowlog-log-slower-than", 10000)
    for name, (usec, logged) in timings.items():
        print(f"{name}: {usec / 1000:.1f} ms (slowlog: {logged} us)")
    for name, (usec, logged) in timings.items():
        assert usec < SCRIPT_LIMIT_MS * 1000, f"{name} took {usec / 1000:.0f} ms"
        assert len(logged) == 1 and logged[0] < SCRIPT_LIMIT_MS * 1000, name
    state = get(client)
    assert len(state["view_data"]) == MAX_ITEMS
    assert {r["play_count"] for r in state["view_data"]} == {3}
    assert state["favorites"] == patch["favorites"]
