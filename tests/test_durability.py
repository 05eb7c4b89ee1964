"""REDIS_MIN_REPLICAS_ACK on a single primary with a replica: WAIT, same trip.

The cluster side (a primary killed right after the ack) is in test_cluster.py.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis

from stat_service import create_app
from stat_service.config import ConfigError, load_settings
from tests.conftest import PATH, SECRET, bearer
from tests.harness import PROMPT
from tests.support import RedisServer

pytestmark = pytest.mark.real_redis

SUB = "durable@example.org"
URL = PATH + SUB + "?isDelta=false"
BODY = {"favorites": ["f"], "view_data": [{"asset_id": "a", "play_count": 3}]}


@pytest.fixture(scope="module")
def pair():
    """A private primary and its replica."""
    primary = RedisServer().start()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port)).start()
    with redis.Redis(port=primary.port) as r:
        deadline = time.monotonic() + 10
        while r.execute_command("WAIT", 1, 100) < 1:
            assert time.monotonic() < deadline, "the replica did not attach"
    yield primary, replica
    replica.signal(signal.SIGCONT)
    replica.cleanup()
    primary.cleanup()


def app_on(server: RedisServer, **settings):
    return create_app(
        {
            "REDIS_URL": server.url,
            "JWT_SECRET": SECRET,
            "TESTING": True,
            "KEY_PREFIX": f"durable-{time.monotonic_ns()}:",
            **settings,
        }
    )


def stats(server: RedisServer) -> dict:
    with redis.Redis(port=server.port) as r:
        return {k: v["calls"] for k, v in r.info("commandstats").items()}


def test_ack_waits_for_the_replica_in_the_same_round_trip(pair):
    primary, replica = pair
    app = app_on(primary, REDIS_MIN_REPLICAS_ACK=1)
    client = app.test_client()
    assert (
        client.put(URL, json={"favorites": []}, headers=bearer(SUB)).status_code == 200
    )
    with redis.Redis(port=primary.port) as r:
        r.config_resetstat()  # the script is cached now (the first call loaded it)
    reply = client.put(URL, json=BODY, headers=bearer(SUB))
    assert reply.status_code == 200, reply.get_json()
    calls = stats(primary)
    assert calls["cmdstat_evalsha"] == 1 and calls["cmdstat_wait"] == 1, calls
    # Acknowledged means the replica holds it already: read it there at once.
    fav, view = app.extensions["stat_store"].keys(SUB)
    with redis.Redis(port=replica.port) as r:
        assert r.hget(view, "a") == b"3" and r.zrange(fav, 0, -1) == [b"f"]


def test_a_write_the_replica_does_not_confirm_is_a_prompt_503(pair):
    primary, replica = pair
    app = app_on(primary, REDIS_MIN_REPLICAS_ACK=1, REDIS_WAIT_TIMEOUT_MS=100)
    client = app.test_client()
    replica.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = client.put(URL, json=BODY, headers=bearer(SUB))
        elapsed = time.monotonic() - started
    finally:
        replica.signal(signal.SIGCONT)
    assert reply.status_code == 503, reply.get_json()
    assert reply.get_json()["message"] == "SERVICE_UNAVAILABLE"
    assert "retrying it is safe" in reply.get_json()["reason"]
    assert reply.headers["Retry-After"].isdigit()
    assert elapsed < PROMPT
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'stat_redis_errors_total{kind="not_replicated"}' in metrics
    # The primary applied it (no rollback exists): a retry is safe and, with
    # the replica back, acknowledged.
    got = client.get(PATH + SUB, headers=bearer(SUB)).get_json()
    assert got["view_data"][0]["play_count"] == 3
    assert client.put(URL, json=BODY, headers=bearer(SUB)).status_code == 200


def test_more_replicas_than_exist_is_always_503(pair):
    primary, _ = pair
    app = app_on(primary, REDIS_MIN_REPLICAS_ACK=2, REDIS_WAIT_TIMEOUT_MS=50)
    reply = app.test_client().put(URL, json=BODY, headers=bearer(SUB))
    assert reply.status_code == 503, reply.get_json()


def test_durable_write_survives_a_script_flush(pair):
    primary, _ = pair
    app = app_on(primary, REDIS_MIN_REPLICAS_ACK=1)
    client = app.test_client()
    with redis.Redis(port=primary.port) as r:
        r.script_flush()
    assert client.put(URL, json=BODY, headers=bearer(SUB)).status_code == 200
    got = client.get(PATH + SUB, headers=bearer(SUB)).get_json()
    assert got["favorites"] == ["f"]


def test_off_by_default_sends_no_wait(pair):
    primary, _ = pair
    app = app_on(primary)
    with redis.Redis(port=primary.port) as r:
        r.config_resetstat()
    assert app.test_client().put(URL, json=BODY, headers=bearer(SUB)).status_code == 200
    assert "cmdstat_wait" not in stats(primary)


@pytest.mark.parametrize(
    "values",
    [
        {"REDIS_MIN_REPLICAS_ACK": "-1"},
        {"REDIS_MIN_REPLICAS_ACK": "1", "REDIS_WAIT_TIMEOUT_MS": "0"},
        {"REDIS_MIN_REPLICAS_ACK": "1", "REDIS_WAIT_TIMEOUT_MS": "500"},
        {
            "REDIS_MIN_REPLICAS_ACK": "1",
            "REDIS_WAIT_TIMEOUT_MS": "900",
            "REDIS_SOCKET_TIMEOUT": "0.8",
        },
    ],
)
def test_unusable_wait_settings_stop_start_up(values):
    """WAIT 0 blocks for ever; a WAIT past the socket timeout would be cut."""
    with pytest.raises(ConfigError):
        load_settings(environ=values)


def test_wait_below_the_socket_timeout_is_accepted():
    settings = load_settings(
        environ={"REDIS_MIN_REPLICAS_ACK": "1", "REDIS_WAIT_TIMEOUT_MS": "499"}
    )
    assert settings.REDIS_MIN_REPLICAS_ACK == 1


def test_unreachable_redis_at_start_is_503_then_detected():
    """REDIS_CLUSTER unset and Redis down: the app starts, answers 503, and
    detects the mode once Redis is up, without a restart."""
    server = RedisServer()
    app = app_on(server)
    client = app.test_client()
    try:
        assert_prompt_503_flask(client.get("/readyz"))
        assert_prompt_503_flask(client.put(URL, json=BODY, headers=bearer(SUB)))
        server.start()
        assert client.get("/readyz").status_code == 200
        assert client.put(URL, json=BODY, headers=bearer(SUB)).status_code == 200
    finally:
        server.cleanup()


def assert_prompt_503_flask(response) -> None:
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["message"] == "SERVICE_UNAVAILABLE"
    assert response.headers["Retry-After"].isdigit()
