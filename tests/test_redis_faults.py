"""Redis-side faults: a prompt 503 or a transparent success, never half a write.

Every test runs its own private redis-server (tests/support.py), never the shared
one: they kill, fill, flush, demote, crowd and block it. A Redis restarted empty
is tests/test_gunicorn.py's. Tests print what they measured (see it with ``-s``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import redis

from stat_service import create_app
from stat_service.config import Settings
from stat_service.storage.store import StatStore
from tests.conftest import PATH, SECRET, make_token
from tests.harness import (
    PROMPT,
    Reply,
    assert_prompt_503,
    poll,
    unique,
)
from tests.support import RedisServer, delete_prefix, dump

pytestmark = pytest.mark.real_redis

MAX_ITEMS = Settings.MAX_ITEMS  # the defaults: the apps here do not set them
MAX_BODY_BYTES = Settings.MAX_BODY_BYTES


# --- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def servers():
    """Start private redis-servers of this test's own; all are removed at its end."""
    started: list[RedisServer] = []

    def _start(*args: str) -> RedisServer:
        server = RedisServer(*args)
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.cleanup()


@pytest.fixture
def admins():
    """Plain clients for the test's own Redis commands; closed at its end."""
    opened: list[redis.Redis] = []

    def _open(server: RedisServer) -> redis.Redis:
        client = redis.Redis.from_url(server.url)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


class Api:
    """The in-process app on the service's own Redis client (built from REDIS_URL)."""

    def __init__(self, url: str, prefix: str):
        self.app = create_app(
            {
                "REDIS_URL": url,
                "JWT_SECRET": SECRET,
                "KEY_PREFIX": prefix,
                "TESTING": True,
            }
        )
        self.auth = {"Authorization": f"Bearer {make_token('ops', admin=True)}"}

    @property
    def store(self) -> StatStore:
        return self.app.extensions["stat_store"]

    def call(self, method: str, sub: str, body=None, *, delta=None) -> Reply:
        """One request, timed, as a harness Reply (so the harness asserts apply)."""
        query = "" if delta is None else f"?isDelta={str(delta).lower()}"
        http = self.app.test_client()  # one per call: the threads share an Api
        started = time.monotonic()
        response = http.open(
            PATH + sub + query, method=method, json=body, headers=self.auth
        )
        elapsed = time.monotonic() - started
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, headers, response.get_data(), elapsed)

    def put(self, sub: str, body, *, delta: bool = False) -> Reply:
        return self.call("PUT", sub, body, delta=delta)

    def get(self, sub: str) -> Reply:
        return self.call("GET", sub)

    def delete(self, sub: str) -> Reply:
        return self.call("DELETE", sub)

    def history(self, sub: str) -> dict:
        reply = self.get(sub)
        assert reply.status == 200, reply
        body = reply.json()
        return {"favorites": body["favorites"], "view_data": body["view_data"]}

    def close(self) -> None:
        self.store.client.close()


@pytest.fixture
def apis(key_prefix):
    """Build in-process apps on a server's URL; their clients are closed at the end."""
    built: list[Api] = []

    def _build(server: RedisServer) -> Api:
        api = Api(server.url, key_prefix)
        built.append(api)
        return api

    yield _build
    for api in built:
        api.close()


def history(n: int, *, size: int = 2) -> dict:
    """A history as PUT (and as GET returns it): ``size`` favorites and records."""
    return {
        "favorites": [f"fav-{n}-{i}" for i in range(size)],
        "view_data": [
            {"asset_id": f"asset-{n}-{i:05d}", "play_count": n, "view_time": i}
            for i in range(size)
        ],
    }


def stored_keys(admin: redis.Redis, api: Api, *subs: str) -> dict:
    """Everything stored under these subscribers' keys (type and content)."""
    keys = {key.encode() for sub in subs for key in api.store.keys(sub)}
    return {k: v for k, v in dump(admin, api.store.prefix).items() if k in keys}


# --- 1. SIGKILL under load, with an fsync-always AOF --------------------------


def stream_doc(n: int) -> dict:
    """Overwrite number ``n``: every value in it says which write it was."""
    return {
        "favorites": [f"v{n}"],
        "view_data": [
            {"asset_id": "a", "play_count": n},
            {"asset_id": f"b{n}", "view_time": n},
        ],
    }


def stored_number(state: dict) -> int | None:
    """Which overwrite is stored; fails on anything but one whole write."""
    if not state["favorites"] and not state["view_data"]:
        return None
    assert state["favorites"], f"half a write: {state}"
    n = int(state["favorites"][0][1:])
    assert state == stream_doc(n), f"half a write or a mix: {state}"
    return n


class Writer:
    """One subscriber's stream of overwrites through gunicorn, one at a time."""

    def __init__(self, svc, sub: str):
        self.svc = svc
        self.sub = sub
        self.sent: list[tuple[int, Reply | None]] = []  # None: no HTTP reply

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            n = len(self.sent) + 1
            try:
                reply = self.svc.put(f"{self.sub}?isDelta=false", stream_doc(n))
            except (OSError, AssertionError):
                reply = None
            self.sent.append((n, reply))

    def allowed(self) -> set[int | None]:
        """The last acknowledged write, or any write attempted after it.

        A write answered 503 (or in flight at the kill) may or may not have
        been applied, but it is all or nothing and only a later one can win.
        """
        acked = [n for n, reply in self.sent if reply and reply.status == 200]
        last = max(acked, default=None)
        later = {n for n, _ in self.sent if last is None or n > last}
        return {last} | later


def stream(writers: list[Writer], action) -> None:
    """Run every writer in a thread of its own while ``action()`` runs."""
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    for thread in threads:
        thread.start()
    try:
        action()
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def lost_writes(svc, writers: list[Writer]) -> list[str]:
    """Subscribers whose stored write is not one ``Writer.allowed`` permits."""
    lost = []
    for writer in writers:
        reply = svc.get(writer.sub)
        assert reply.status == 200, reply
        body = reply.json()
        state = {"favorites": body["favorites"], "view_data": body["view_data"]}
        stored = stored_number(state)
        if stored not in writer.allowed():
            acked = max(
                (n for n, r in writer.sent if r and r.status == 200), default=None
            )
            lost.append(f"{writer.sub}: stored {stored}, last acked {acked}")
    return lost


@pytest.mark.gunicorn
def test_sigkill_under_load_loses_no_acknowledged_write_and_never_500s(
    spawn, servers, key_prefix
):
    """kill -9 of an fsync-always AOF Redis mid-stream: 200 or prompt 503, only.

    Every write acknowledged with 200 survives the kill (or is superseded by
    a later attempt), no stored state is ever a mix of two writes, no worker
    times out, and once Redis is back on its port every request succeeds
    again without restarting gunicorn.
    """
    server = servers("--appendonly", "yes", "--appendfsync", "always")
    svc = spawn(REDIS_URL=server.url, JWT_SECRET=SECRET, KEY_PREFIX=key_prefix)
    svc.wait_ready()
    writers = [Writer(svc, unique(f"w{i}")) for i in range(4)]

    def kill_mid_stream():
        time.sleep(1.0)
        server.kill()  # SIGKILL, then keep writing to the dead port
        time.sleep(0.5)

    stream(writers, kill_mid_stream)
    during = [reply for w in writers for _, reply in w.sent]
    server.start()  # same port, same dir: the AOF is replayed
    # Only what the AOF kept is stored now: no write has been sent since.
    lost_at_restart = lost_writes(svc, writers)

    marks = [len(w.sent) for w in writers]
    stream(writers, lambda: time.sleep(1.0))
    pairs = zip(writers, marks, strict=True)
    after = [reply for writer, mark in pairs for _, reply in writer.sent[mark:]]
    lost_at_end = lost_writes(svc, writers)

    statuses = [reply.status if reply else None for reply in during + after]
    slow = max((r.elapsed for r in during if r and r.status == 503), default=0.0)
    print(
        f"\nSIGKILL: {len(statuses)} PUTs ({len(during)} before the restart), "
        f"{statuses.count(200)} x 200, {statuses.count(503)} x 503 "
        f"(slowest {slow:.3f} s), {statuses.count(500)} x 500, "
        f"{statuses.count(None)} without reply; lost acknowledged writes: "
        f"{len(lost_at_restart)} at restart, {len(lost_at_end)} at the end"
    )
    assert set(statuses) <= {200, 503}, statuses
    for reply in during:
        if reply.status == 503:
            assert_prompt_503(reply)
    assert statuses.count(503) > 0, "the kill did not happen mid-stream"
    assert lost_at_restart == [], lost_at_restart
    assert lost_at_end == [], lost_at_end
    assert after and all(r.status == 200 for r in after), after
    log = svc.log()
    assert "WORKER TIMEOUT" not in log, log
    assert svc.proc.poll() is None, log


# --- 2. SCRIPT FLUSH ------------------------------------------------------------


@pytest.mark.gunicorn
def test_script_flush_between_requests_is_transparent_on_both_workers(
    spawn, servers, admins, key_prefix
):
    """After SCRIPT FLUSH each gunicorn worker reloads its scripts: 200, right data."""
    server = servers()
    admin = admins(server)
    svc = spawn(REDIS_URL=server.url, JWT_SECRET=SECRET, KEY_PREFIX=key_prefix)
    svc.wait_ready()
    sub = unique()
    for reply in svc.put_on_both_workers(sub, history(1)):
        assert reply.status == 200, reply  # both workers hold the scripts' SHAs

    admin.script_flush()
    for reply in svc.get_on_both_workers(sub):
        assert reply.status == 200, reply
        assert reply.json()["favorites"] == history(1)["favorites"]
    admin.script_flush()
    for reply in svc.put_on_both_workers(f"{sub}?isDelta=false", history(2)):
        assert reply.status == 200, reply
    admin.script_flush()
    patch = {"view_data": [{"asset_id": "asset-2-00000", "play_count": 7}]}
    for reply in svc.put_on_both_workers(f"{sub}?isDelta=true", patch):
        assert reply.status == 200, reply
    admin.script_flush()
    expected = history(2)
    expected["view_data"][0]["play_count"] = 7
    for reply in svc.get_on_both_workers(sub):
        assert reply.status == 200, reply
        body = reply.json()
        assert {"favorites": body["favorites"], "view_data": body["view_data"]} == (
            expected
        )


def test_script_flush_between_reload_and_retry_is_still_transparent(
    servers, admins, apis, monkeypatch
):
    """A flush landing between the client's SCRIPT LOAD and its EVALSHA retry.

    Made certain by flushing from inside the app client's ``script_load``,
    which redis-py's Script calls on NOSCRIPT before it retries once.
    """
    server = servers()
    admin = admins(server)
    api = apis(server)
    sub = unique()
    assert api.put(sub, history(1)).status == 200
    client = api.store.client
    reload = client.script_load
    flushes = []

    def reload_then_flush_once(script):
        sha = reload(script)
        if not flushes:
            flushes.append(admin.script_flush())
        return sha

    monkeypatch.setattr(client, "script_load", reload_then_flush_once)
    admin.script_flush()
    reply = api.put(sub, history(2))
    assert reply.status == 200, reply
    assert api.history(sub) == history(2)


def test_script_flush_in_a_loop_while_requests_run_is_transparent(
    servers, admins, apis
):
    """SCRIPT FLUSH every millisecond while 4 threads PUT and GET: all 200."""
    server = servers()
    admin = admins(server)
    api = apis(server)
    outcomes: list[tuple[int, int, bool]] = []  # PUT status, GET status, data
    stop = threading.Event()

    def work(sub: str):
        n = 0
        while not stop.is_set():
            n += 1
            put = api.put(sub, history(n))
            got = api.get(sub)
            right = (
                put.status != 200
                or got.status != 200
                or got.json()["view_data"] == history(n)["view_data"]
            )
            outcomes.append((put.status, got.status, right))

    threads = [threading.Thread(target=work, args=(unique(),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    flushes = 0
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            admin.script_flush()
            flushes += 1
            time.sleep(0.001)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    statuses = [status for put, get, _ in outcomes for status in (put, get)]
    wrong = sum(not right for *_, right in outcomes)
    print(
        f"\nSCRIPT FLUSH loop: {flushes} flushes, {len(statuses)} requests, "
        f"{statuses.count(200)} x 200, {statuses.count(500)} x 500, "
        f"{wrong} GETs after a 200 PUT with other data"
    )
    assert len(statuses) >= 20
    assert set(statuses) == {200}, sorted(set(statuses))
    assert wrong == 0


# --- 3. out of memory -------------------------------------------------------------

OOM = ("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
FILL = "for i = 1, tonumber(ARGV[2]) do redis.call('SET', ARGV[1] .. i, ARGV[3]) end"


def exhaust_memory(admin: redis.Redis) -> None:
    """Keys under "fill:" until Redis refuses writes for lack of memory.

    One script writes them: it starts under the limit, so Redis lets it
    finish about 1 MiB past it, and every later write meets a full server.
    """
    limit = int(admin.config_get("maxmemory")["maxmemory"])
    room = limit - admin.info("memory")["used_memory"]
    if room > 0:
        admin.eval(FILL, 0, "fill:", room // 1024 + 1024, "x" * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("fill:probe", "x")


def test_put_on_a_full_redis_is_prompt_503(servers, admins, apis):
    """Redis refusing a write for lack of memory ("OOM ...") is unavailability."""
    server = servers(*OOM)
    admin = admins(server)
    api = apis(server)
    sub = unique()
    assert api.put(sub, history(1)).status == 200
    exhaust_memory(admin)
    assert_prompt_503(api.put(sub, {"view_data": [{"asset_id": "x"}]}, delta=True))


def test_put_refused_on_a_full_redis_writes_nothing_reads_work_and_writes_recover(
    servers, admins, apis
):
    """A delta of records only is refused whole; GET works; freeing memory heals.

    (The status of the refusal is test_put_on_a_full_redis_is_prompt_503's.)
    """
    server = servers(*OOM)
    admin = admins(server)
    api = apis(server)
    sub, newcomer = unique(), unique()
    assert api.put(sub, history(1)).status == 200
    exhaust_memory(admin)
    before = stored_keys(admin, api, sub, newcomer)

    refused = [
        api.put(sub, {"view_data": [{"asset_id": "x", "play_count": 1}]}, delta=True),
        api.put(sub, {"view_data": history(2)["view_data"]}, delta=True),
        api.put(newcomer, {"view_data": [{"asset_id": "x"}]}, delta=True),
    ]
    for reply in refused:
        assert reply.status != 200, reply
        assert reply.json()["result"] == "error", reply
    assert stored_keys(admin, api, sub, newcomer) == before
    assert api.history(sub) == history(1)  # reads are allowed on a full server
    assert api.history(newcomer) == {"favorites": [], "view_data": []}

    delete_prefix(admin, "fill:")
    assert api.put(sub, {"view_data": [{"asset_id": "x"}]}, delta=True).status == 200
    assert api.put(newcomer, history(3)).status == 200
    assert api.history(newcomer) == history(3)


def test_memory_limit_never_stops_a_script_halfway(servers, admins, apis):
    """On a full Redis every PUT, even one of MAX_ITEMS, is refused or applied whole.

    Redis 7 checks memory for an unflagged script only at its first write
    command, and only if that command may grow memory: put_overwrite (and a
    delta with favorites) starts with a DEL, which may always run and marks
    the script as writing, so Redis lets it finish past maxmemory (observed:
    200). A delta of records only starts with HSET and is refused whole.
    """
    server = servers(*OOM)
    admin = admins(server)
    api = apis(server)
    old, new = unique(), unique()
    assert api.put(old, history(1, size=MAX_ITEMS)).status == 200
    exhaust_memory(admin)

    big = history(2, size=MAX_ITEMS)
    records = {"view_data": history(3, size=MAX_ITEMS)["view_data"]}
    favorites = {"favorites": ["f1"], "view_data": [{"asset_id": "asset-1-00000"}]}
    after_favorites = history(1, size=MAX_ITEMS)
    after_favorites["favorites"] = ["f1"]
    cases = {
        "delta of MAX_ITEMS records only": (old, records, True, None),
        "delta replacing the favorites": (old, favorites, True, after_favorites),
        "overwrite of a full history by MAX_ITEMS": (old, big, False, big),
        "overwrite of a new subscriber by MAX_ITEMS": (new, big, False, big),
    }
    seen = {}
    for name, (sub, body, is_delta, expected) in cases.items():
        before = stored_keys(admin, api, sub)
        state_before = api.history(sub)
        reply = api.put(sub, body, delta=is_delta)
        if reply.status == 200 and expected is not None:
            assert api.history(sub) == expected, name
        else:
            assert reply.status != 200, (name, reply)
            assert reply.json()["result"] == "error", reply
            assert stored_keys(admin, api, sub) == before, name
            assert api.history(sub) == state_before, name
        seen[name] = reply.status
    used = admin.info("memory")["used_memory"]
    print(f"\nPUTs on a full Redis (used_memory {used} of 4 MiB): {seen}")


# --- 4. read-only replica, failover -------------------------------------------------


FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # the default waits 5 s


def wait_replicated(primary: redis.Redis, replica: redis.Redis, prefix: str) -> None:
    assert poll(lambda: dump(replica, prefix) == dump(primary, prefix)), replica.info(
        "replication"
    )


def test_replica_reads_work_writes_are_prompt_503_until_promoted(servers, admins, apis):
    """Pointed at a replica: GET 200 (replicated data), PUT/DELETE 503, nothing
    written; after REPLICAOF NO ONE the same app writes without a restart."""
    primary = servers(*FAST_SYNC)
    replica = servers("--replicaof", "127.0.0.1", str(primary.port))
    on_primary, on_replica = admins(primary), admins(replica)
    writer, api = apis(primary), apis(replica)
    sub = unique()
    assert writer.put(sub, history(1, size=50)).status == 200
    wait_replicated(on_primary, on_replica, api.store.prefix)
    before = dump(on_replica, api.store.prefix)

    assert api.history(sub) == history(1, size=50)
    refused = [
        api.put(sub, history(2), delta=False),
        api.put(sub, {"favorites": ["f"]}, delta=True),
        api.put(unique(), {"view_data": [{"asset_id": "x"}]}),
        api.delete(sub),
    ]
    for reply in refused:
        assert_prompt_503(reply)
    assert dump(on_replica, api.store.prefix) == before
    assert dump(on_primary, api.store.prefix) == before

    on_replica.replicaof("NO", "ONE")  # the failover promotes it
    assert api.put(sub, history(3)).status == 200
    assert api.history(sub) == history(3)
    assert api.delete(sub).status == 204
    assert api.history(sub) == {"favorites": [], "view_data": []}
    slowest = max(reply.elapsed for reply in refused)
    print(f"\nread-only replica: 4 x 503, slowest {slowest * 1000:.1f} ms")


def test_replica_that_lost_its_primary_and_serves_no_stale_data_is_prompt_503(
    servers, admins, apis
):
    """A replica answering MASTERDOWN (replica-serve-stale-data no) is a 503."""
    primary = servers(*FAST_SYNC)
    replica = servers(
        "--replicaof", "127.0.0.1", str(primary.port),
        "--replica-serve-stale-data", "no",
    )  # fmt: skip
    on_replica = admins(replica)
    api = apis(replica)
    sub = unique()
    assert poll(lambda: on_replica.info("replication")["master_link_status"] == "up")
    assert api.get(sub).status == 200
    primary.kill()
    assert poll(lambda: on_replica.info("replication")["master_link_status"] != "up")
    assert_prompt_503(api.get(sub))
    assert_prompt_503(api.put(sub, history(1)))


# --- 5. maxclients -------------------------------------------------------------------


def hog_connections(port: int, limit: int = 64) -> list[socket.socket]:
    """Open connections until Redis refuses one; return the ones it accepted."""
    accepted: list[socket.socket] = []
    for _ in range(limit):
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.sendall(b"PING\r\n")
        answer = sock.recv(100)
        if answer != b"+PONG\r\n":
            sock.close()
            assert b"max number of clients" in answer, answer
            return accepted
        accepted.append(sock)
    for sock in accepted:
        sock.close()
    pytest.fail(f"Redis accepted {limit} connections")


def test_redis_at_maxclients_is_prompt_503_and_recovers(servers, admins, apis):
    """A fresh app must open a connection Redis refuses: 503, then 200 once free."""
    server = servers("--maxclients", "8")
    admin = admins(server)
    admin.ping()  # connected before the server is full
    hogs = hog_connections(server.port)
    api = apis(server)  # a fresh pool: every request needs a new connection
    sub = unique()
    try:
        refused = [api.put(sub, history(1)), api.get(sub), api.delete(sub)]
        for reply in refused:
            assert_prompt_503(reply)
        assert dump(admin, api.store.prefix) == {}
    finally:
        for sock in hogs:
            sock.close()
    assert poll(lambda: api.put(sub, history(1)).status == 200)
    assert api.history(sub) == history(1)
    slowest = max(reply.elapsed for reply in refused)
    print(
        f"\nmaxclients: {len(hogs)} connections filled the server; "
        f"3 x 503, slowest {slowest * 1000:.1f} ms"
    )


# --- 7. busy scripts ----------------------------------------------------------------


def full_history(tag: str, value: int, width: int = 0) -> dict:
    """MAX_ITEMS favorites and MAX_ITEMS full records; ids padded to ``width``."""
    return {
        "favorites": [f"{tag}-fav-{i:05d}".ljust(width, "f") for i in range(MAX_ITEMS)],
        "view_data": [
            {
                "asset_id": f"{tag}-asset-{i:05d}".ljust(width, "a"),
                "play_count": value,
                "view_time": 5400 + i,
                "pause_time": 310 + value,
                "last_played_on": 1764000000000 + i,
                "user_rating": 3.5,
            }
            for i in range(MAX_ITEMS)
        ],
    }


def padded_history(tag: str, value: int) -> dict:
    """``full_history`` with ids as long as a body of MAX_BODY_BYTES allows."""
    natural = len(json.dumps(full_history(tag, value)).encode())
    short, long = len(f"{tag}-fav-00000"), len(f"{tag}-asset-00000")
    # Padded to ``width``, each favorite grows by width - short bytes, each
    # asset id by width - long.
    room = (MAX_BODY_BYTES - 1024 - natural) // MAX_ITEMS
    width = (short + long + room) // 2
    body = full_history(tag, value, width)
    assert MAX_BODY_BYTES - 20_000 < len(json.dumps(body).encode()) < MAX_BODY_BYTES
    return body


def redis_time_of_one_call(admin: redis.Redis, action) -> float:
    """Milliseconds Redis spent in the one EVALSHA that ``action`` sends."""
    admin.config_resetstat()
    reply = action()
    assert reply.status == 200, reply
    stats = admin.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1, stats
    return stats["cmdstat_evalsha"]["usec_per_call"] / 1000


def test_scripts_at_the_body_and_item_limits_use_under_a_tenth_of_busy_threshold(
    servers, admins, apis
):
    """At MAX_ITEMS of each and a body of almost MAX_BODY_BYTES (long ids), one
    script stays under 10% of busy-reply-threshold, by Redis' own count.

    tests/test_roundtrips.py times short ids against a fifth of the threshold.
    """
    server = servers()
    admin = admins(server)
    api = apis(server)
    busy_ms = int(admin.config_get("busy-reply-threshold")["busy-reply-threshold"])
    sub = unique()
    old, new, patch = (
        padded_history("old", 1),
        padded_history("new", 2),
        padded_history("new", 3),  # every field of every record again
    )
    assert api.put(sub, old).status == 200  # loads the scripts, too
    assert api.put(sub, old, delta=True).status == 200
    assert api.get(sub).status == 200
    size = len(json.dumps(new).encode())
    timings = {
        "overwrite of a full history": redis_time_of_one_call(
            admin, lambda: api.put(sub, new)
        ),
        "delta of every record": redis_time_of_one_call(
            admin, lambda: api.put(sub, patch, delta=True)
        ),
        "get": redis_time_of_one_call(admin, lambda: api.get(sub)),
    }
    print(
        f"\nscripts on a {size}-byte body, {MAX_ITEMS} + {MAX_ITEMS} items "
        f"(busy-reply-threshold {busy_ms} ms): "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items())
    )
    for name, ms in timings.items():
        assert ms < busy_ms / 10, f"{name}: {ms:.0f} ms"
    assert api.history(sub) == {
        "favorites": patch["favorites"],
        "view_data": sorted(patch["view_data"], key=lambda r: -r["last_played_on"]),
    }


def test_redis_busy_in_a_script_is_prompt_503_and_writes_nothing(servers, admins, apis):
    """While another client's script runs past busy-reply-threshold, every call
    is a prompt 503 (BUSY), pooled or new connection; none is queued behind it."""
    server = servers("--busy-reply-threshold", "100")
    admin = admins(server)
    admin.ping()
    warm, fresh = apis(server), apis(server)
    sub = unique()
    assert warm.put(sub, history(1)).status == 200
    before = dump(admin, warm.store.prefix)

    looping = admins(server)
    errors: list[Exception] = []

    def busy_loop():
        try:
            looping.eval("while true do end", 0)
        except redis.RedisError as exc:
            errors.append(exc)

    def busy() -> bool:
        try:
            admin.ping()
        except redis.exceptions.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    thread = threading.Thread(target=busy_loop)
    thread.start()
    try:
        assert poll(busy, interval=0.02)
        replies = [
            warm.put(sub, history(2)),
            warm.put(sub, {"view_data": [{"asset_id": "x"}]}, delta=True),
            warm.get(sub),
            warm.delete(sub),
            fresh.put(sub, history(3)),  # must connect to a busy server
            fresh.get(sub),
        ]
    finally:
        while thread.is_alive():
            with contextlib.suppress(redis.exceptions.ResponseError):  # NOTBUSY
                admin.script_kill()
            thread.join(0.1)
    for reply in replies:
        assert_prompt_503(reply)
    assert errors and "SCRIPT KILL" in str(errors[0]), errors
    assert dump(admin, warm.store.prefix) == before
    assert warm.history(sub) == history(1)
    assert fresh.put(sub, history(4)).status == 200
    assert warm.history(sub) == history(4)
    slowest = max(reply.elapsed for reply in replies)
    print(f"\nBUSY: {len(replies)} x 503, slowest {slowest * 1000:.1f} ms")
    assert slowest < PROMPT
