"""The Redis client: one server or a Redis Cluster, failing promptly.

``make_client`` gives a ``redis.Redis`` when ``REDIS_CLUSTER=false``. Else it
gives a ``LazyClient``, which builds its client on first use: redis-py's
``RedisCluster`` when ``REDIS_CLUSTER=true`` or when the server at
``REDIS_URL`` says ``cluster_enabled:1`` (``REDIS_CLUSTER`` unset). Being
lazy, the service starts while Redis is down and answers 503 until it is up,
in either mode; a failed detection is tried again on the next request.
"""

from __future__ import annotations

import contextlib
import os
import threading

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import AskError, NoScriptError, RedisClusterException
from redis.retry import Retry

from ..config import Settings

_ENCODER = Encoder("utf-8", "strict", False)  # redis-py's default, for scripts


def make_client(settings: Settings):
    """A client whose worst case is about one second before it gives up.

    redis-py's defaults retry a timed-out call several times with no short
    socket timeout, which can outlast gunicorn's worker timeout. Here each
    attempt is bounded by REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT and
    there are REDIS_RETRIES retries (safe: every write is idempotent).
    """
    if settings.REDIS_CLUSTER is False:
        return _standalone(settings)
    # Parse the URL now, so a malformed one stops start-up with its reason.
    redis.connection.parse_url(settings.REDIS_URL)
    return LazyClient(settings)


def _options(settings: Settings) -> dict:
    """The client options both kinds of client share."""
    return {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), settings.REDIS_RETRIES),
        "health_check_interval": 30,
        "max_connections": settings.REDIS_MAX_CONNECTIONS,
        "client_name": "stat_service",
    }


def _standalone(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, **_options(settings))


def _cluster(settings: Settings) -> RedisCluster:
    """redis-py's cluster client: follows MOVED/ASK, refreshes the topology."""
    try:
        return RedisCluster.from_url(
            settings.REDIS_URL,
            startup_nodes=[
                ClusterNode(host, int(port))
                for host, _, port in (
                    n.rpartition(":") for n in settings.REDIS_CLUSTER_NODES
                )
            ],
            **_options(settings),
        )
    except RedisClusterException as exc:
        if isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
            raise redis.ConnectionError(str(exc)) from exc  # no node answers
        raise  # e.g. "Cluster mode is not enabled on this node": a 500, logged


def is_cluster_server(settings: Settings) -> bool:
    """Whether the server at REDIS_URL is a cluster node (asks INFO cluster)."""
    probe = _standalone(settings)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def _connect(settings: Settings):
    if settings.REDIS_CLUSTER or is_cluster_server(settings):
        return _cluster(settings)
    return _standalone(settings)


class LazyClient:
    """A client built on first use; every attribute is the built client's."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._client = None
        self._lock = threading.Lock()

    def resolve(self):
        """The real client, built (and the mode detected) on the first call."""
        client = self._client
        if client is not None:
            return client
        # One thread connects; the others do not queue behind its timeouts.
        if not self._lock.acquire(timeout=self._settings.REDIS_CONNECT_TIMEOUT):
            raise redis.ConnectionError("Redis not reached yet (detecting its mode)")
        try:
            if self._client is None:
                self._client = _connect(self._settings)
            return self._client
        finally:
            self._lock.release()

    def __getattr__(self, name: str):
        return getattr(self.resolve(), name)

    def register_script(self, script: str) -> Script:
        # Scripts are registered at start, before any connection is wanted.
        return Script(self, script)

    def get_encoder(self) -> Encoder:
        return _ENCODER

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def real_client(client):
    """The client behind a LazyClient (built now if needed), else ``client``."""
    return client.resolve() if isinstance(client, LazyClient) else client


def ping(client) -> bool:
    """Readiness: the server answers PING; a cluster node says the cluster
    serves every slot (``cluster_state:ok``: while a dead primary awaits its
    replica's promotion, it says ``fail`` and every slot is CLUSTERDOWN)."""
    client = real_client(client)
    if isinstance(client, RedisCluster):
        return client.cluster_info().get("cluster_state") == "ok"
    return bool(client.ping())


class NotReplicated(redis.RedisError):
    """WAIT saw fewer replicas than REDIS_MIN_REPLICAS_ACK hold the write."""

    def __init__(self, wanted: int, acked: int, timeout_ms: int):
        super().__init__(
            f"write confirmed by {acked} of {wanted} replicas within {timeout_ms} ms"
        )


def call_and_wait(client, script, keys, args, replicas: int, timeout_ms: int):
    """Run ``script``, then ``WAIT replicas timeout_ms``, on one connection.

    WAIT counts the replicas that acknowledged the writes made on its own
    connection, so both go in one pipeline (one round trip) to the server,
    or the cluster primary, that owns the keys. A cluster whose topology
    changed (MOVED) is re-read and the call tried once more; a node that
    does not answer also makes the topology be re-read, for the next call.
    """
    real = real_client(client)
    if not isinstance(real, RedisCluster):
        return _call_and_wait(real, script, keys, args, replicas, timeout_ms)
    try:
        return _on_primary(real, script, keys, args, replicas, timeout_ms)
    except AskError:  # MOVED included: re-read the slots and try once more
        refresh_topology(real)
    except (redis.ConnectionError, redis.TimeoutError):
        refresh_topology(real)
        raise
    try:
        return _on_primary(real, script, keys, args, replicas, timeout_ms)
    except AskError as exc:  # the slot is moving right now
        raise redis.ConnectionError(f"slot moving: {exc}") from exc


def _on_primary(cluster: RedisCluster, script, keys, args, replicas, timeout_ms):
    node = cluster.get_redis_connection(cluster.get_node_from_key(keys[0]))
    return _call_and_wait(node, script, keys, args, replicas, timeout_ms)


def refresh_topology(cluster: RedisCluster) -> None:
    # When no node answers now, the next call tries again.
    with contextlib.suppress(redis.RedisError, RedisClusterException):
        cluster.nodes_manager.initialize()


def _call_and_wait(target, script, keys, args, replicas, timeout_ms):
    for command in ("EVALSHA", "EVAL"):  # EVAL when the script cache lacks it
        pipe = target.pipeline(transaction=False)
        code = script.sha if command == "EVALSHA" else script.script
        pipe.execute_command(command, code, len(keys), *keys, *args)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        reply, acked = pipe.execute(raise_on_error=False)
        if not isinstance(reply, NoScriptError):
            break
    for result in (reply, acked):
        if isinstance(result, Exception):
            raise result
    if acked < replicas:
        raise NotReplicated(replicas, acked, timeout_ms)
    return reply


def detect_at_start(log, environ=None) -> None:
    """In gunicorn's master: settle REDIS_CLUSTER once for every worker.

    Asks the server at REDIS_URL whether it is a cluster node. With
    REDIS_CLUSTER unset, exports the answer to the environment the workers
    inherit; set, it must agree (else ConfigError: a wrong mode would answer
    nothing but errors). When Redis does not answer yet, nothing is settled:
    each worker detects on its first request.
    """
    from ..config import ConfigError, load_settings

    environ = os.environ if environ is None else environ
    settings = load_settings(environ=environ)
    if settings.EMBEDDED_REDIS:
        return  # fakeredis: never a cluster (and it has no INFO)
    url = redis.connection.parse_url(settings.REDIS_URL)
    where = f"{url.get('host', '?')}:{url.get('port', 6379)}"
    try:
        cluster = is_cluster_server(settings)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning(
            "Redis at %s does not answer (%s); each worker connects (and, with "
            "REDIS_CLUSTER unset, detects cluster mode) on its first request",
            where,
            exc,
        )
        return
    if settings.REDIS_CLUSTER is not None:
        if cluster != settings.REDIS_CLUSTER:
            kind = "a cluster node" if cluster else "not a cluster node"
            raise ConfigError(
                f"REDIS_CLUSTER={str(settings.REDIS_CLUSTER).lower()} but the "
                f"Redis at {where} is {kind}; set REDIS_CLUSTER to match, or "
                "leave it unset to detect"
            )
        return
    environ["REDIS_CLUSTER"] = "true" if cluster else "false"
    log.info(
        "Redis at %s is %s",
        where,
        "a Redis Cluster node: cluster mode" if cluster else "a single server",
    )
