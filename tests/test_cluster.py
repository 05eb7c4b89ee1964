"""The service on a real Redis Cluster: slots, detection, bulk, failover, WAIT.

Every test here runs against 6 redis-server processes (3 primaries with a
replica each) started by the tests. Tests that kill or pause nodes start a
cluster of their own; the others share the session's ``redis_cluster``.

Failover figures (requests, 503s, 500s, lost acknowledged writes) are
printed; run ``pytest -s tests/test_cluster.py -k failover`` to see them.
``STAT_FAILOVER_SECONDS`` (default 2) sets how long the write stream runs
after the primary is promoted away.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from stat_service import create_app
from stat_service.bulk import export, importer
from stat_service.config import ConfigError, load_settings
from stat_service.storage.client import LazyClient, real_client
from stat_service.storage.records import hash_tag
from stat_service.storage.store import StatStore
from tests.cluster import LocalCluster
from tests.conftest import PATH, SECRET, bearer
from tests.harness import PROMPT, assert_prompt_503, poll
from tests.support import delete_prefix, free_port

pytestmark = [pytest.mark.real_redis, pytest.mark.cluster]

AWKWARD_IDS = [
    "{",
    "}",
    "{}",
    "}{",
    "{a}{b}",
    "%7B",
    "%",
    "a{b}c",
    "x:{y}:z",
    "stat:{evil}:view",
    "with space",
    "ünï{cødé}",
    "a/b",
]
AFTER_PROMOTION = float(os.environ.get("STAT_FAILOVER_SECONDS", "2"))


@pytest.fixture
def cluster_app(redis_cluster, key_prefix):
    """The app as deployed: REDIS_URL names one node, the mode is detected."""
    app = create_app(
        {
            "REDIS_URL": redis_cluster.url,
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": key_prefix,
            "TESTING": True,
        }
    )
    yield app
    store = app.extensions["stat_store"]
    delete_prefix(real_client(store.client), key_prefix)
    store.client.close()


def put(client, sub: str, body: dict, *, delta: bool):
    url = f"{PATH}{quote(sub, safe='')}?isDelta={str(delta).lower()}"
    return client.put(url, json=body, headers=bearer(sub))


def test_cluster_mode_is_detected_from_any_node(redis_cluster, real_redis_url):
    """REDIS_CLUSTER unset: a cluster node gives the cluster client, a single
    server the plain one; REDIS_CLUSTER=false forces the plain one."""
    for server in redis_cluster.servers[:3]:
        client = create_app({"REDIS_URL": server.url, "JWT_SECRET": SECRET})
        store = client.extensions["stat_store"]
        assert isinstance(store.client, LazyClient)
        assert isinstance(real_client(store.client), RedisCluster)
        assert store.ping()
        store.client.close()
    single = create_app({"REDIS_URL": real_redis_url, "JWT_SECRET": SECRET})
    resolved = real_client(single.extensions["stat_store"].client)
    assert type(resolved) is redis.Redis
    forced = create_app(
        {"REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": False, "JWT_SECRET": SECRET}
    )
    assert type(forced.extensions["stat_store"].client) is redis.Redis


def test_extra_seed_nodes_find_the_cluster_when_the_url_node_is_down(
    redis_cluster, key_prefix
):
    """REDIS_CLUSTER_NODES: a worker starting while REDIS_URL's node is
    down still finds the cluster through the other seeds."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    seeds = ",".join(f"127.0.0.1:{s.port}" for s in redis_cluster.servers[1:3])
    app = create_app(
        {
            "REDIS_URL": dead,
            "REDIS_CLUSTER_NODES": tuple(seeds.split(",")),
            "JWT_SECRET": SECRET,
            "KEY_PREFIX": key_prefix,
            "TESTING": True,
        }
    )
    client = app.test_client()
    try:
        assert client.get("/readyz").status_code == 200
        body = {"favorites": ["f"]}
        assert put(client, "seeded", body, delta=False).status_code == 200
        assert isinstance(
            real_client(app.extensions["stat_store"].client), RedisCluster
        )
    finally:
        delete_prefix(real_client(app.extensions["stat_store"].client), key_prefix)
        app.extensions["stat_store"].client.close()
    assert load_settings(environ={"REDIS_CLUSTER_NODES": seeds}).REDIS_CLUSTER is True
    for bad in ({"REDIS_CLUSTER_NODES": "h"}, {"REDIS_CLUSTER_NODES": "h:x"}):
        with pytest.raises(ConfigError):
            load_settings(environ=bad)
    with pytest.raises(ConfigError):
        load_settings(environ={"REDIS_CLUSTER_NODES": seeds, "REDIS_CLUSTER": "false"})


def test_subscribers_spread_over_all_three_primaries(cluster_app, key_prefix):
    """Both keys of a subscriber on one primary; subscribers on every primary."""
    client = cluster_app.test_client()
    store = cluster_app.extensions["stat_store"]
    cluster = real_client(store.client)
    owners = Counter()
    for i in range(60):
        sub = f"spread-{i}"
        body = {"favorites": ["f"], "view_data": [{"asset_id": "a", "play_count": i}]}
        assert put(client, sub, body, delta=False).status_code == 200
        fav, view = store.keys(sub)
        assert key_slot(fav.encode()) == key_slot(view.encode())
        node = cluster.get_node_from_key(view)
        assert cluster.get_redis_connection(node).exists(fav, view) == 2
        owners[node.name] += 1
    assert len(owners) == 3, owners
    assert min(owners.values()) >= 5, owners


@pytest.mark.parametrize("sub", AWKWARD_IDS)
def test_awkward_ids_keep_one_slot_and_every_script_runs(cluster_app, sub):
    """Braces and the like never split a subscriber's keys (no CROSSSLOT)."""
    client = cluster_app.test_client()
    store = cluster_app.extensions["stat_store"]
    fav, view = store.keys(sub)
    assert key_slot(fav.encode()) == key_slot(view.encode())
    body = {"favorites": ["x", "y"], "view_data": [{"asset_id": "a", "view_time": 5}]}
    assert put(client, sub, body, delta=False).status_code == 200
    delta = {"favorites": ["z"], "view_data": [{"asset_id": "b", "play_count": 1}]}
    assert put(client, sub, delta, delta=True).status_code == 200
    url = PATH + quote(sub, safe="")
    got = client.get(url, headers=bearer(sub))
    assert got.status_code == 200, got.get_json()
    assert got.get_json()["favorites"] == ["z"]
    assert sorted(r["asset_id"] for r in got.get_json()["view_data"]) == ["a", "b"]
    assert client.delete(url, headers=bearer(sub)).status_code == 204
    assert real_client(store.client).exists(fav, view) == 0


def test_bulk_import_and_export_cover_every_primary(
    redis_cluster, key_prefix, tmp_path
):
    """The importer writes through the cluster; export scans every primary."""
    settings = load_settings({"REDIS_URL": redis_cluster.url, "KEY_PREFIX": key_prefix})
    items = [
        {
            "subscriber_id": f"bulk-{i}" if i % 7 else f"{{bulk}}-{i}",
            "favorites": [f"f{i}"],
            "view_data": [{"asset_id": "a", "play_count": i, "user_rating": 2.5}],
        }
        for i in range(400)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in items))
    report = importer.run_import(importer.ImportOptions(path=str(source)), settings)
    assert (report.applied, report.rejected) == (400, 0)
    store = StatStore(bulk_client := LazyClient(settings), prefix=key_prefix)
    try:
        cluster = real_client(bulk_client)
        per_primary = [
            len(list(server.scan_iter(match=key_prefix + "*")))
            for server in export.scan_targets(bulk_client)
        ]
        assert len(per_primary) == 3 and min(per_primary) > 0, per_primary
        assert sum(per_primary) == 800  # two keys a subscriber
        out = io.BytesIO()
        assert export.export(store, out) == 400
        exported = {
            doc.pop("subscriber_id"): doc
            for doc in map(json.loads, out.getvalue().splitlines())
        }
        assert exported == {
            x["subscriber_id"]: {k: x[k] for k in ("favorites", "view_data")}
            for x in items
        }
    finally:
        delete_prefix(cluster, key_prefix)
        bulk_client.close()


# --- failover under gunicorn ---------------------------------------------------


@pytest.fixture
def own_cluster():
    """A cluster of this test's own: it will lose a primary."""
    cluster = LocalCluster().start()
    yield cluster
    for server in cluster.servers:
        server.signal(signal.SIGCONT)
    cluster.cleanup()


def cluster_service(spawn, cluster: LocalCluster, **env):
    prefix = f"stat-test:{uuid.uuid4().hex[:12]}:"
    svc = spawn(
        REDIS_URL=cluster.url, JWT_SECRET=SECRET, KEY_PREFIX=prefix, **env
    ).wait_ready()
    assert "is a Redis Cluster node: cluster mode" in svc.log()
    return svc, prefix


@pytest.mark.parametrize("setting", ["true", "false"])
def test_a_mode_that_contradicts_the_server_stops_start_up(
    setting, redis_cluster, real_redis_url, spawn
):
    url = real_redis_url if setting == "true" else redis_cluster.url
    svc = spawn(REDIS_URL=url, REDIS_CLUSTER=setting, JWT_SECRET=SECRET)
    assert svc.wait_exit(20) == 2
    assert f"configuration error: REDIS_CLUSTER={setting} but the Redis" in svc.log()


def view_key(prefix: str, sub: str) -> str:
    return f"{prefix}{hash_tag(sub)}:view"


def settled(request, timeout: float = 10.0):
    """The first reply of ``request()`` that is not a 503, or the last one."""
    return poll(lambda: (r := request()).status != 503 and r, timeout) or request()


def count_of(reply) -> int | None:
    """The play_count stored for asset "a", from a GET reply."""
    assert reply.status == 200, reply
    records = reply.json()["view_data"]
    return records[0]["play_count"] if records else None


class WriteStream:
    """Threads overwriting their own subscribers with increasing counts."""

    def __init__(self, svc, subs: list[str], threads: int = 4):
        self.svc, self.subs = svc, subs
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.slow: list[float] = []
        self.acked: dict[str, int] = {}  # last count answered 200, by subscriber
        self.tried: dict[str, int] = {}  # last count sent, by subscriber
        self.last_ok: dict[str, float] = {}
        groups = [subs[i::threads] for i in range(threads)]
        self.workers = [threading.Thread(target=self._run, args=(g,)) for g in groups]

    def __enter__(self) -> WriteStream:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join()

    def _run(self, subs: list[str]) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            for sub in subs:
                body = {"view_data": [{"asset_id": "a", "play_count": n}]}
                with self.lock:
                    self.tried[sub] = n
                reply = self.svc.put(sub + "?isDelta=false", body, timeout=PROMPT * 3)
                with self.lock:
                    self.statuses[reply.status] += 1
                    if reply.status == 200:
                        self.acked[sub] = n
                        self.last_ok[sub] = time.monotonic()
                    elif reply.status == 503:
                        assert_prompt_503(reply)
                    if reply.elapsed > PROMPT:
                        self.slow.append(reply.elapsed)

    def lost(self) -> list[str]:
        """Subscribers whose stored count is below their last acknowledged one."""
        lost = []
        for sub, acked in self.acked.items():
            stored = count_of(settled(lambda s=sub: self.svc.get(s)))
            assert stored is None or stored <= self.tried[sub]
            if stored is None or stored < acked:
                lost.append(sub)
        return lost


def _wait_calls(node) -> int:
    return int(node.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def kill_primary_under_stream(
    cluster: LocalCluster, svc, prefix: str, *, rejoin: bool = False
) -> dict:
    """SIGKILL the primary of some subscribers while writes stream; report.

    ``rejoin``: restart the killed node once its replica is promoted, so the
    new primary has a replica again (it comes back as one).
    """
    subs = [f"fo-{i}" for i in range(24)]
    victim = cluster.primary_of(view_key(prefix, subs[0]))
    on_victim = [s for s in subs if cluster.primary_of(view_key(prefix, s)) is victim]
    with WriteStream(svc, subs) as stream:
        time.sleep(1.0)
        # The victim's own command counts die with it: read them last thing.
        with cluster.node(victim) as r:
            waits_on_victim = _wait_calls(r)
        killed_at = time.monotonic()
        victim.kill()
        cluster.wait_failover(victim)
        promoted_at = time.monotonic()
        if rejoin:
            victim.start()
        # Every subscriber of the dead primary is written again, no restart.
        assert poll(
            lambda: all(stream.last_ok.get(s, 0) > promoted_at for s in on_victim),
            timeout=15,
        ), (stream.statuses, svc.log()[-3000:])
        time.sleep(AFTER_PROMOTION)
    figures = {
        "requests": sum(stream.statuses.values()),
        "statuses": dict(stream.statuses),
        "failover_seconds": round(promoted_at - killed_at, 2),
        "lost_acknowledged": len(stream.lost()),
        "over_prompt": len(stream.slow),
        "waits_on_victim": waits_on_victim,
    }
    print("\nfailover:", figures)
    assert set(stream.statuses) <= {200, 503}, stream.statuses
    assert stream.statuses[503] > 0  # the outage was seen...
    assert not stream.slow, stream.slow  # ...and answered promptly
    assert "WORKER TIMEOUT" not in svc.log()
    return figures


def test_failover_gives_503s_never_500s_and_recovers_without_restart(
    own_cluster, spawn
):
    """Default (no WAIT): 503 while the primary is gone, then writes resume."""
    svc, prefix = cluster_service(spawn, own_cluster)
    kill_primary_under_stream(own_cluster, svc, prefix)


def test_failover_with_replica_acks_loses_no_acknowledged_write(own_cluster, spawn):
    """REDIS_MIN_REPLICAS_ACK=1: every write answered 200 survives the failover."""
    svc, prefix = cluster_service(spawn, own_cluster, REDIS_MIN_REPLICAS_ACK="1")
    # The promoted replica has no replica of its own: its writes are 503
    # until the old primary is back, as its replica.
    figures = kill_primary_under_stream(own_cluster, svc, prefix, rejoin=True)
    assert figures["lost_acknowledged"] == 0
    # WAITs on today's primaries, and on the killed one up to just before
    # its death (its counts restart when it rejoins as a replica).
    waits = figures["waits_on_victim"]
    for server in own_cluster.primaries():
        with own_cluster.node(server) as r:
            waits += _wait_calls(r)
    assert waits >= figures["statuses"][200]  # every 200 waited for a replica


def test_a_dead_shard_leaves_the_others_writable_with_an_empty_script_cache(
    spawn,
):
    """With one shard down for good (primary killed, replica stopped) and
    cluster-require-full-coverage off, the other shards still serve, even
    when their script cache was flushed: the script is reloaded on the
    key's node only (a SCRIPT LOAD to every primary would fail)."""
    cluster = LocalCluster("--cluster-require-full-coverage", "no").start()
    try:
        svc, prefix = cluster_service(spawn, cluster)
        subs = [f"shard-{i}" for i in range(30)]
        for sub in subs:
            body = {"view_data": [{"asset_id": "a", "play_count": 1}]}
            assert svc.put(sub + "?isDelta=false", body).status == 200
        owner = {sub: cluster.primary_of(view_key(prefix, sub)) for sub in subs}
        victim = owner[subs[0]]
        others = [p for p in cluster.primaries() if p is not victim]
        elsewhere = [sub for sub in subs if owner[sub] is not victim]
        assert len(elsewhere) >= 10
        for replica in cluster.replicas_of(victim):
            replica.signal(signal.SIGSTOP)
        victim.kill()
        for server in others:
            with cluster.node(server) as r:
                r.script_flush()
        body = {"view_data": [{"asset_id": "a", "play_count": 2}]}
        for sub in elsewhere:
            # A worker may answer a 503 or two before it has dropped the
            # dead node; the writes must then succeed, the dead shard aside.
            reply = settled(lambda s=sub: svc.put(s + "?isDelta=false", body))
            assert reply.status == 200, (reply, svc.log()[-2000:])
            got = settled(lambda s=sub: svc.get(s))
            assert got.status == 200 and count_of(got) == 2, got
        down = svc.put(subs[0] + "?isDelta=false", {"favorites": []})
        assert_prompt_503(down)
    finally:
        for server in cluster.servers:
            server.signal(signal.SIGCONT)
        cluster.cleanup()


def stalled_replica_then_failover(cluster: LocalCluster, svc, prefix: str):
    """Pause the replica and cut its link, write, kill the primary, resume:
    the replica that never saw the write is promoted. Returns (PUT reply,
    count read after)."""
    sub = "stalled-" + uuid.uuid4().hex[:8]
    assert (
        svc.put(
            sub + "?isDelta=false", {"view_data": [{"asset_id": "a", "play_count": 1}]}
        ).status
        == 200
    )
    primary = cluster.primary_of(view_key(prefix, sub))
    (replica,) = cluster.replicas_of(primary)
    assert poll(lambda: count_of(svc.get(sub)) == 1)
    with cluster.node(primary) as r:  # the replica holds count 1
        assert poll(lambda: r.execute_command("WAIT", 1, 100) == 1)
        replica.signal(signal.SIGSTOP)
        # Cut the link (bytes already sent would still reach the replica).
        r.execute_command("CLIENT", "KILL", "TYPE", "replica")
    reply = svc.put(
        sub + "?isDelta=false", {"view_data": [{"asset_id": "a", "play_count": 2}]}
    )
    primary.kill()
    replica.signal(signal.SIGCONT)
    cluster.wait_failover(primary)
    after = poll(lambda: (r := svc.get(sub)).status == 200 and r, timeout=15)
    assert after, svc.log()[-2000:]
    return reply, count_of(after)


def test_without_replica_acks_an_acknowledged_write_can_be_lost(own_cluster, spawn):
    """The default promise: 200 means the primary applied it, not a replica."""
    svc, prefix = cluster_service(spawn, own_cluster)
    reply, count = stalled_replica_then_failover(own_cluster, svc, prefix)
    assert reply.status == 200
    assert count == 1  # the acknowledged count 2 died with the primary


def test_with_replica_acks_an_unreplicated_write_is_503_not_200(own_cluster, spawn):
    """REDIS_MIN_REPLICAS_ACK=1: the write the replica missed is never a 200."""
    svc, prefix = cluster_service(
        spawn, own_cluster, REDIS_MIN_REPLICAS_ACK="1", REDIS_WAIT_TIMEOUT_MS="100"
    )
    reply, count = stalled_replica_then_failover(own_cluster, svc, prefix)
    assert_prompt_503(reply)
    assert "replicas" in reply.json()["reason"]
    assert count == 1
