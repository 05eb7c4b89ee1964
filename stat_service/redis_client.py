"""The Redis client, configured for prompt failure instead of long hangs."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .config import ConfigError, Settings


def make_client(settings: Settings) -> redis.Redis:
    """A client whose worst case is about one second before it gives up.

    redis-py's defaults retry a timed-out call several times with no short
    socket timeout, which can outlast gunicorn's worker timeout. Here each
    attempt is bounded by REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT and
    there are REDIS_RETRIES retries (safe: every write is idempotent).
    """
    if settings.REDIS_CLUSTER:
        raise ConfigError(
            "REDIS_CLUSTER=true is not supported yet (planned; see the README)"
        )
    retry = Retry(ExponentialBackoff(cap=0.05, base=0.01), settings.REDIS_RETRIES)
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
        retry=retry,
        health_check_interval=30,
        max_connections=settings.REDIS_MAX_CONNECTIONS,
        client_name="stat_service",
    )
