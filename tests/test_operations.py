"""Operations: metrics, request ids, JSON request logs, graceful shutdown."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import threading
import time
import uuid

import fakeredis
import pytest
import redis
from prometheus_client import REGISTRY

from stat_service import StatStore, create_app
from stat_service.ops.logs import JsonFormatter
from tests.conftest import PATH, SECRET, SUB, bearer, make_token
from tests.harness import HeldRequest, admin, poll, unique
from tests.support import free_port

STAT_ROUTE = "/metax/3.0/ui/user/stat/<rest:_path>"
BODY = {"favorites": ["f1"], "view_data": [{"asset_id": "a1", "pause_time": 310}]}


def sample(name: str, **labels) -> float:
    """A metric's current value in this process's default registry."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` with these labels in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- in-process: request ids, the log line, metrics of one process ------------


def test_request_id_is_echoed_when_sent(client, auth):
    resp = client.get(PATH + SUB, headers={**auth, "X-Request-ID": "trace-42.a:b"})
    assert resp.headers["X-Request-ID"] == "trace-42.a:b"


@pytest.mark.parametrize("sent", [None, "", "x" * 129, "bad id", "naïve", "a\tb"])
def test_request_id_is_generated_when_missing_or_unusable(client, auth, sent):
    headers = dict(auth)
    if sent is not None:
        headers["X-Request-ID"] = sent
    resp = client.get(PATH + SUB, headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])


def test_errors_carry_a_request_id_too(client):
    assert client.get("/nowhere").headers["X-Request-ID"]
    assert client.get(PATH + SUB).headers["X-Request-ID"]  # 401


def test_one_log_line_per_request_with_route_status_and_hashed_subscriber(
    client, caplog
):
    token = make_token(SUB)
    with caplog.at_level(logging.INFO, logger="stat_service.access"):
        client.put(
            PATH + SUB,
            json=BODY,
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "r-1"},
        )
    records = [r for r in caplog.records if r.name == "stat_service.access"]
    assert len(records) == 1
    fields = records[0].fields
    assert fields["method"] == "PUT"
    assert fields["route"] == STAT_ROUTE
    assert fields["status"] == 200
    assert fields["request_id"] == "r-1"
    assert fields["duration_ms"] > 0
    assert re.fullmatch(r"[0-9a-f]{16}", fields["subscriber"])
    line = JsonFormatter().format(records[0])
    assert json.loads(line)["route"] == STAT_ROUTE
    assert SUB not in line and token not in line and "Bearer" not in line


def test_subscriber_can_be_left_out_of_logs(settings, redis_client, caplog):
    app = create_app(
        {**settings, "LOG_SUBSCRIBER_IDS": "omit"}, redis_client=redis_client
    )
    with caplog.at_level(logging.INFO, logger="stat_service.access"):
        app.test_client().get(PATH + SUB, headers=bearer())
    (record,) = [r for r in caplog.records if r.name == "stat_service.access"]
    assert "subscriber" not in record.fields


def test_request_metrics_use_the_route_template_not_the_id(client, auth):
    labels = {"route": STAT_ROUTE, "method": "PUT", "status": "200"}
    before = sample("stat_http_requests_total", **labels)
    hist_before = sample(
        "stat_http_request_duration_seconds_count", route=STAT_ROUTE, method="PUT"
    )
    calls_before = sample(
        "stat_redis_script_calls_total", script="put_delta", outcome="ok"
    )
    for _ in range(3):
        assert client.put(PATH + SUB, json=BODY, headers=auth).status_code == 200
    assert sample("stat_http_requests_total", **labels) == before + 3
    assert (
        sample(
            "stat_http_request_duration_seconds_count", route=STAT_ROUTE, method="PUT"
        )
        == hist_before + 3
    )
    assert (
        sample("stat_redis_script_calls_total", script="put_delta", outcome="ok")
        == calls_before + 3
    )


def test_unmatched_routes_share_one_label(client):
    before = sample(
        "stat_http_requests_total", route="<unmatched>", method="GET", status="404"
    )
    client.get(f"/random/{uuid.uuid4().hex}")
    client.get(f"/other/{uuid.uuid4().hex}")
    after = sample(
        "stat_http_requests_total", route="<unmatched>", method="GET", status="404"
    )
    assert after == before + 2


def test_unknown_methods_share_one_label(client):
    before = sample(
        "stat_http_requests_total", route="<unmatched>", method="OTHER", status="404"
    )
    for method in ("BREW", "X-" + uuid.uuid4().hex):
        client.open(f"/random/{uuid.uuid4().hex}", method=method)
    after = sample(
        "stat_http_requests_total", route="<unmatched>", method="OTHER", status="404"
    )
    assert after == before + 2


def test_redis_outage_is_counted(settings):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    app = create_app(settings, redis_client=dead)
    before = sample("stat_redis_errors_total", kind="unavailable")
    script_errors = sample(
        "stat_redis_script_calls_total", script="read", outcome="error"
    )
    resp = app.test_client().get(PATH + SUB, headers=bearer())
    assert resp.status_code == 503
    assert sample("stat_redis_errors_total", kind="unavailable") == before + 1
    assert (
        sample("stat_redis_script_calls_total", script="read", outcome="error")
        == script_errors + 1
    )


def test_metrics_endpoint_serves_prometheus_text(settings):
    app = create_app(settings, redis_client=fakeredis.FakeRedis())
    resp = app.test_client().get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain")
    text = resp.get_data(as_text=True)
    for name in (
        "stat_http_requests_total",
        "stat_http_request_duration_seconds",
        "stat_redis_errors_total",
        "stat_redis_script_calls_total",
    ):
        assert f"# TYPE {name}" in text


# --- under gunicorn: several workers, logs on stdout, SIGTERM ------------------


@pytest.fixture
def gunicorn_service(spawn, module_redis, tmp_path):
    def start(**env):
        return spawn(
            REDIS_URL=module_redis.url,
            JWT_SECRET=SECRET,
            KEY_PREFIX=f"stat-test:{uuid.uuid4().hex[:12]}:",
            **env,
        ).wait_ready()

    return start


def _put(svc, sub: str):
    return svc.put(sub, BODY)


@pytest.mark.gunicorn
def test_metrics_add_up_across_workers(gunicorn_service):
    svc = gunicorn_service()
    subs = [unique() for _ in range(6)]
    for sub in subs:
        # Each pair is answered by both workers: one held, one not.
        first, second = svc.put_on_both_workers(sub, BODY)
        assert first.status == second.status == 200
    extra = [_put(svc, unique()) for _ in range(8)]
    assert all(r.status == 200 for r in extra)
    text = svc.request("GET", "/metrics").body.decode()
    expected = 2 * len(subs) + len(extra)
    labels = {"route": STAT_ROUTE, "method": "PUT", "status": "200"}
    assert scrape(text, "stat_http_requests_total", **labels) == expected
    count = scrape(
        text, "stat_http_request_duration_seconds_count", route=STAT_ROUTE, method="PUT"
    )
    assert count == expected
    calls = scrape(
        text, "stat_redis_script_calls_total", script="put_delta", outcome="ok"
    )
    assert calls == expected
    # Exact totals: both workers' samples were added up; and no label
    # carries a subscriber id.
    assert not any(sub in text for sub in subs)


@pytest.mark.gunicorn
def test_stale_metrics_of_an_earlier_run_are_wiped(gunicorn_service, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    first = gunicorn_service(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    for _ in range(5):
        assert _put(first, unique()).status == 200
    first.stop()
    assert list(metrics_dir.glob("*.db"))  # the earlier run left samples
    second = gunicorn_service(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    assert _put(second, unique()).status == 200
    text = second.request("GET", "/metrics").body.decode()
    labels = {"route": STAT_ROUTE, "method": "PUT", "status": "200"}
    assert scrape(text, "stat_http_requests_total", **labels) == 1


@pytest.mark.gunicorn
def test_logs_are_json_lines_without_tokens(gunicorn_service):
    svc = gunicorn_service()
    token = make_token("back-office", admin=True)
    sub = unique()
    reply = svc.request(
        "PUT",
        PATH + sub,
        headers=[
            ("Authorization", f"Bearer {token}"),
            ("Content-Type", "application/json"),
            ("X-Request-ID", "op-test-1"),
        ],
        body=json.dumps(BODY).encode(),
    )
    assert reply.status == 200
    assert reply.headers["x-request-id"] == "op-test-1"
    svc.stop()
    lines = [line for line in svc.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    (entry,) = [e for e in entries if e.get("request_id") == "op-test-1"]
    assert entry["logger"] == "stat_service.access"
    assert entry["status"] == 200 and entry["method"] == "PUT"
    assert entry["route"] == STAT_ROUTE
    text = svc.log()
    assert token not in text and sub not in text


@pytest.mark.gunicorn
def test_worker_count_follows_web_concurrency(gunicorn_service):
    svc = gunicorn_service(WEB_CONCURRENCY="3")

    def workers():
        return subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(svc.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()

    assert poll(lambda: len(workers()) == 3, timeout=10), workers()
    time.sleep(0.5)
    assert len(workers()) == 3


@pytest.mark.gunicorn
def test_sigterm_lets_requests_in_flight_finish(gunicorn_service):
    svc = gunicorn_service()
    subs = [unique(), unique()]
    headers = [admin(), ("Content-Type", "application/json")]
    body = json.dumps(BODY).encode()
    # Both workers are inside a request (reading its body) when SIGTERM comes.
    held = [
        HeldRequest(
            svc.port, "PUT", PATH + sub, [*headers, ("Content-Length", str(len(body)))]
        )
        for sub in subs
    ]
    time.sleep(0.3)
    svc.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    replies = [h.finish(body) for h in held]
    assert [r.status for r in replies] == [200, 200], replies
    assert svc.wait_exit(timeout=30) == 0


@pytest.mark.gunicorn
def test_sigterm_during_a_stream_answers_every_request_a_worker_took(
    gunicorn_service, module_redis
):
    """Requests a worker accepted are answered; the rest were never applied.

    Connections still waiting in the listen backlog when gunicorn closes its
    socket are reset without an answer (gunicorn's design); the test checks
    that none of those reached the app, so a client may safely retry them.
    """
    svc = gunicorn_service()
    outcomes: list[tuple[str, str]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            sub = unique()
            try:
                reply = _put(svc, sub)
            except OSError:
                outcomes.append((sub, "refused"))
                time.sleep(0.01)
                continue
            except AssertionError:  # connection closed with no reply at all
                outcomes.append((sub, "reset"))
                continue
            outcomes.append((sub, str(reply.status)))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.wait_exit(timeout=30) == 0
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    store = StatStore(redis.Redis.from_url(module_redis.url), svc.env["KEY_PREFIX"])
    answered = [(sub, o) for sub, o in outcomes if o not in ("refused", "reset")]
    assert len(answered) > 20, outcomes
    assert {o for _, o in answered} == {"200"}, outcomes
    for sub, outcome in outcomes:
        stored = store.get(sub)["favorites"] == BODY["favorites"]
        # Written if and only if answered: nothing applied without an answer.
        assert stored == (outcome == "200"), (sub, outcome)
