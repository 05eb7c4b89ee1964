"""Network faults between the service and Redis, made by an in-test TCP proxy.

One gunicorn service (2 sync workers, REDIS_RETRIES=1) reaches a private Redis
through ``tests.netproxy.NetProxy``; each test switches the proxy to a fault
(blackhole, reset after the command was sent, refused connections) and back.
Run with ``-s`` to see the measured 503 latencies and script executions.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

import pytest
import redis

from stat_service.storage.records import hash_tag
from tests.conftest import PATH, SECRET
from tests.harness import (
    PROMPT,
    Service,
    assert_error,
    assert_prompt_503,
    poll,
    unique,
)
from tests.netproxy import NetProxy
from tests.support import RedisServer, dump

pytestmark = pytest.mark.gunicorn

PREFIX = f"stat-test:{uuid.uuid4().hex[:12]}:"
WORKERS = 2  # the harness' WEB_CONCURRENCY
BASE = {
    "favorites": ["f1", "f2", "f3"],
    "view_data": [
        {
            "asset_id": "a1",
            "play_count": 2,
            "view_time": 100,
            "pause_time": 50,
            "last_played_on": 1764000000000,
            "user_rating": 4.5,
        },
        {"asset_id": "a2", "play_count": 1, "view_time": 30},
    ],
}
# (query, body): each changes BASE in its own way.
WRITES = {
    "delta-adds-view-data": (
        "",
        {
            "view_data": [
                {"asset_id": "a3", "pause_time": 310, "last_played_on": 1764000001000},
                {"asset_id": "a2", "view_time": 60},
            ]
        },
    ),
    "delta-removes-fields-with-null": (
        "",
        {"view_data": [{"asset_id": "a1", "pause_time": None, "user_rating": None}]},
    ),
    "delta-replaces-favorites": ("", {"favorites": ["f9", "f1"]}),
    "overwrite": (
        "?isDelta=false",
        {"favorites": ["g1"], "view_data": [{"asset_id": "a9", "play_count": 7}]},
    ),
}


# --- fixtures and helpers ---------------------------------------------------------


@pytest.fixture(scope="module")
def upstream():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def direct(upstream):
    """A client of the private Redis that bypasses the proxy."""
    client = redis.Redis.from_url(upstream.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def proxy(upstream):
    with NetProxy(upstream.port) as running:
        yield running


@pytest.fixture(scope="module")
def svc(proxy, tmp_path_factory):
    """The service behind the proxy; both workers hold a connection and the scripts."""
    service = Service(
        tmp_path_factory.mktemp("netfaults"),
        {
            "REDIS_URL": proxy.url,
            "REDIS_CLUSTER": "false",
            "REDIS_RETRIES": "1",
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": PREFIX,
        },
    ).start()
    try:
        service.wait_ready()
        sub = unique("warm")
        for reply in service.put_on_both_workers(sub, BASE):
            assert reply.status == 200, reply
        for reply in service.get_on_both_workers(sub):
            assert reply.status == 200, reply
        yield service
    finally:
        service.stop()


@pytest.fixture(autouse=True)
def _healthy_and_passing(svc, proxy):
    """Each test starts and ends with a working path, and no killed worker."""
    yield
    proxy.mode, proxy.match = "pass", b""
    proxy.reset_next(0)
    assert poll(lambda: svc.request("GET", "/readyz").status == 200), svc.log()
    log = svc.log()
    assert "WORKER TIMEOUT" not in log, log
    assert "Traceback" not in log, log
    assert svc.proc.poll() is None, log


def snapshot(direct, sub: str) -> dict:
    """The subscriber's keys (named without prefix and tag) and their content."""
    base = PREFIX + hash_tag(sub)
    return {
        key.decode().removeprefix(base): content
        for key, content in dump(direct, base).items()
    }


def history(svc, sub: str) -> dict:
    reply = svc.get(sub)
    assert reply.status == 200, reply
    body = reply.json()
    return {"favorites": body["favorites"], "view_data": body["view_data"]}


def seeded(svc) -> str:
    sub = unique()
    reply = svc.put(sub + "?isDelta=false", BASE)
    assert reply.status == 200, reply
    return sub


def assert_outage(svc, sub: str) -> list:
    """A PUT, a GET and /readyz each answer a prompt 503 with Retry-After."""
    replies = [
        svc.put(sub, {"favorites": ["lost"]}),
        svc.get(sub),
        svc.request("GET", "/readyz"),
    ]
    for reply in replies:
        assert_prompt_503(reply)
    return replies


def written_once(svc, direct, write) -> tuple[dict, dict]:
    """(GET, dump) of a BASE subscriber after ``write`` ran once, no fault."""
    query, body = write
    sub = seeded(svc)
    reply = svc.put(sub + query, body)
    assert reply.status == 200, reply
    return history(svc, sub), snapshot(direct, sub)


def evalsha_calls(direct) -> int:
    stats = direct.info("commandstats").get("cmdstat_evalsha", {})
    return stats.get("calls", 0)


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose label values start with ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}{{(.*)}} (\S+)$", line)
        if match and all(f'{k}="{v}' in match[1] for k, v in labels.items()):
            total += float(match[2])
    return total


def metrics(svc) -> str:
    reply = svc.request("GET", "/metrics")
    assert reply.status == 200, reply
    return reply.body.decode()


def assert_503_shape(reply) -> None:
    """A 503 in the MetaX shape with Retry-After, however long it queued."""
    assert_error(reply, 503, "SERVICE_UNAVAILABLE")
    assert reply.headers.get("retry-after", "").isdigit(), reply


def report(fault: str, replies, **facts) -> None:
    latency = max(r.elapsed for r in replies)
    extra = " ".join(f"{k}={v}" for k, v in facts.items())
    print(f"\n[netfaults] {fault}: {len(replies)} replies, max {latency:.3f}s {extra}")


# --- 1. blackhole: the connection hangs ---------------------------------------


def test_blackhole_is_prompt_503_healthz_200_and_recovers_without_restart(
    svc, proxy, direct
):
    """PUT, GET and readyz answer a prompt 503; the swallowed PUT writes nothing."""
    sub = seeded(svc)
    before = snapshot(direct, sub)
    proxy.mode = "blackhole"
    replies = assert_outage(svc, sub)
    health = svc.request("GET", "/healthz")
    assert health.status == 200 and health.elapsed < PROMPT, health
    report("blackhole", replies)

    proxy.mode = "pass"
    assert poll(lambda: svc.request("GET", "/readyz").status == 200), svc.log()
    assert snapshot(direct, sub) == before
    assert history(svc, sub)["favorites"] == BASE["favorites"]
    for reply in svc.put_on_both_workers(sub, {"favorites": ["after"]}):
        assert reply.status == 200, reply


def test_blackhole_under_concurrent_load_answers_every_request_with_503(svc, proxy):
    """8 clients against 2 workers for 3 s: every request gets a JSON 503.

    Each request costs the service one to two seconds (0.5 s socket timeouts;
    two more when a new connection must be set up, which every request beyond
    the pooled connections needs), so a client queued behind others waits
    several seconds: the promptness bound is the server-side duration of each
    request in the service's request log (under PROMPT); on the client side no
    request waits longer than its share of the queue, far from gunicorn's 30 s
    worker timeout.
    """
    threads_n, duration = 8, 3.0
    sub = unique()
    calls = [
        lambda: svc.put(sub, {"favorites": ["x"]}),
        lambda: svc.get(sub),
        lambda: svc.request("GET", "/readyz"),
    ]
    replies, failures = [], []
    proxy.mode = "blackhole"
    stop_at = time.monotonic() + duration

    def client(index: int) -> None:
        n = index
        while time.monotonic() < stop_at:
            try:
                replies.append(calls[n % len(calls)]())
            except Exception as exc:  # a reset or a timeout is a failure here
                failures.append(exc)
            n += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert not failures, failures
    assert len(replies) >= threads_n, replies
    for reply in replies:
        assert_503_shape(reply)
    queue_bound = threads_n // WORKERS * PROMPT
    assert max(r.elapsed for r in replies) < queue_bound, replies
    # Server side, each 503 took under PROMPT (the app's own request log).
    answered = [
        entry
        for entry in map(json.loads, svc.log().splitlines())  # JSON lines only
        if entry.get("logger") == "stat_service.access" and entry["status"] == 503
    ]
    for route, method in [("/readyz", "GET"), (PATH, "GET"), (PATH, "PUT")]:
        took = [
            e["duration_ms"] / 1000
            for e in answered
            if e["method"] == method and e["route"].startswith(route)
        ]
        assert took and max(took) < PROMPT, (route, method, sorted(took))
    report("blackhole, 8 concurrent clients", replies)


# --- 2-3. reset after the command was sent: Redis ran it, the reply is lost -------


@pytest.mark.parametrize("write", WRITES.values(), ids=list(WRITES))
def test_reset_after_send_is_retried_and_the_double_run_equals_one(
    svc, proxy, direct, write
):
    """The client library retries the reset EVALSHA: the script runs twice.

    Every write is absolute, so twice is the same as once: the state (GET and
    the raw keys) equals the state of a clean subscriber that got it once.
    """
    expected_history, expected_keys = written_once(svc, direct, write)
    sub = seeded(svc)
    assert snapshot(direct, sub) != expected_keys  # the write changes something
    query, body = write
    calls, resets = evalsha_calls(direct), proxy.resets
    proxy.reset_next(1, match=b"EVALSHA")
    reply = svc.put(sub + query, body)
    runs = evalsha_calls(direct) - calls

    assert reply.status == 200, reply
    assert proxy.resets - resets == 1
    assert runs == 2  # the first run's reply was lost, the retry ran it again
    assert snapshot(direct, sub) == expected_keys
    assert history(svc, sub) == expected_history
    report("reset_next(1) on the PUT", [reply], script_runs=runs)


@pytest.mark.parametrize("match", [b"", b"EVALSHA"], ids=["every-chunk", "evalsha"])
@pytest.mark.parametrize("write", WRITES.values(), ids=list(WRITES))
def test_reset_after_every_send_is_prompt_503_and_all_or_nothing(
    svc, proxy, direct, write, match
):
    """Every request reset after sending: a prompt 503, never a 500, and the
    stored state is the state before or the whole write, never a part of it.

    ``every-chunk`` also resets the handshake of the retry's new connection;
    ``evalsha`` lets it through, so the retried script runs again.
    """
    _, expected_keys = written_once(svc, direct, write)
    sub = seeded(svc)
    before_keys = snapshot(direct, sub)
    query, body = write
    calls = evalsha_calls(direct)
    proxy.mode, proxy.match = "reset_after_send", match
    replies = [svc.put(sub + query, body)]
    runs = evalsha_calls(direct) - calls  # of the PUT's script
    replies.append(svc.get(sub))
    for reply in replies:
        assert_prompt_503(reply)
    replies.append(svc.request("GET", "/readyz"))
    if match == b"":
        assert_prompt_503(replies[-1])
    else:  # PING is not reset in this variant
        assert replies[-1].status == 200, replies[-1]

    # The whole write if the script reached Redis (its reply was lost), else
    # nothing: so a 503 does not mean "not written" here, only "not half".
    after = snapshot(direct, sub)
    assert after == (expected_keys if runs else before_keys)
    outcome = "written" if runs else "unchanged"
    report(f"reset after every send ({match.decode() or 'all'})", replies[:2],
           script_runs=runs, state=outcome)  # fmt: skip


# --- 4. refused connections -----------------------------------------------------------


def test_refused_connections_are_prompt_503_and_recover(svc, proxy, direct):
    """Open connections reset, new ones reset at accept: 503, nothing written."""
    sub = seeded(svc)
    before = snapshot(direct, sub)
    proxy.mode = "refuse"
    replies = assert_outage(svc, sub)
    assert svc.request("GET", "/healthz").status == 200
    assert snapshot(direct, sub) == before
    report("refuse", replies)

    proxy.mode = "pass"
    assert poll(lambda: svc.request("GET", "/readyz").status == 200), svc.log()
    for reply in svc.put_on_both_workers(sub, {"favorites": ["after"]}):
        assert reply.status == 200, reply
    assert history(svc, sub)["favorites"] == ["after"]


# --- 5. what the faults leave in the metrics ------------------------------------------


def test_faults_count_as_unavailable_never_as_errors_or_500s(svc, proxy):
    """Each 503 adds to kind="unavailable"; no fault ever counted kind="error"
    or answered another 5xx (the service is the module's: when the whole file
    runs, this covers every fault above)."""
    before = metric(metrics(svc), "stat_redis_errors_total", kind="unavailable")
    proxy.mode = "refuse"
    sub = unique()
    for reply in (svc.put(sub, {"favorites": ["x"]}), svc.get(sub)):
        assert_prompt_503(reply)
    proxy.mode = "pass"

    text = metrics(svc)
    after = metric(text, "stat_redis_errors_total", kind="unavailable")
    assert after >= before + 2, (before, after)
    assert metric(text, "stat_redis_errors_total", kind="error") == 0, text
    assert metric(text, "stat_http_requests_total", status="5") == metric(
        text, "stat_http_requests_total", status="503"
    ), text
