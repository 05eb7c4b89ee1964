"""Fixtures: the app on fakeredis and on a real Redis, tokens, state dumps."""
# ruff: noqa: E402 (the environment is fixed before the imports below)

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid

# prometheus_client picks its storage when first imported: in-process here,
# whatever the calling shell had set for a gunicorn deployment.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

import fakeredis
import jwt
import pytest
import redis

from stat_service import create_app
from stat_service.config import Settings
from tests.cluster import LocalCluster
from tests.support import (
    INSTALL_HINT,
    RedisServer,
    close_client,
    delete_prefix,
    dump,
    redis_ping,
)

# Fixtures for tests that run the service under gunicorn.
pytest_plugins = ["tests.harness"]

SECRET = "test-secret-that-is-at-least-32-bytes-long"
SUB = "user@example.org"
PATH = "/metax/3.0/ui/user/stat/"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    """Settings come from each test, never from the caller's shell."""
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.name, raising=False)


@pytest.fixture(scope="session")
def real_redis_url():
    """A real Redis: TEST_REDIS_URL, the local one, or one started here."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        if not redis_ping(url):
            pytest.fail(f"TEST_REDIS_URL={url} does not answer PING")
        yield url
        return
    local = "redis://127.0.0.1:6379/0"
    if redis_ping(local):
        yield local
        return
    if shutil.which("redis-server") is None:
        pytest.fail(INSTALL_HINT)
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def key_prefix():
    """A prefix of this test's own: real servers are never wiped beyond it."""
    return f"stat-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 6-node Redis Cluster on loopback, shared by the session.

    Never failed over: tests that kill nodes start a cluster of their own.
    """
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


ON_CLUSTER = pytest.param(
    "cluster", marks=[pytest.mark.real_redis, pytest.mark.cluster]
)


def pytest_generate_tests(metafunc):
    """``redis_client``: fakeredis and a real Redis; a module that sets
    ``ALSO_ON_CLUSTER = True`` gets a real Redis Cluster as well."""
    if "redis_client" in metafunc.fixturenames:
        backends = ["fake", pytest.param("real", marks=pytest.mark.real_redis)]
        if getattr(metafunc.module, "ALSO_ON_CLUSTER", False):
            backends.append(ON_CLUSTER)
        metafunc.parametrize("redis_client", backends, indirect=True)


@pytest.fixture
def redis_client(request, key_prefix):
    """The same test on fakeredis (with Lua) and on a real Redis server."""
    if request.param == "fake":
        client = fakeredis.FakeRedis()
        yield client
        client.close()
        return
    if request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
        client = redis.RedisCluster.from_url(url)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("real_redis_url"))
    yield client
    delete_prefix(client, key_prefix)
    close_client(client)


@pytest.fixture
def settings(key_prefix):
    """The app's configuration mapping; tests may add to it before ``app``."""
    return {"JWT_SECRET": SECRET, "KEY_PREFIX": key_prefix, "TESTING": True}


@pytest.fixture
def app(settings, redis_client):
    return create_app(settings, redis_client=redis_client)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    return app.extensions["stat_store"]


@pytest.fixture
def snapshot(redis_client, key_prefix):
    """A callable giving everything stored under this test's prefix."""
    return lambda: dump(redis_client, key_prefix)


def make_token(
    sub=SUB, *, admin=False, ttl=60, secret=SECRET, algorithm="HS256", **claims
):
    payload = {"sub": sub, "exp": int(time.time()) + ttl, **claims}
    if admin:
        payload["scope"] = "stat:admin"
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(sub=SUB, **kwargs) -> dict:
    return {"Authorization": f"Bearer {make_token(sub, **kwargs)}"}


@pytest.fixture
def auth():
    """Authorization headers for SUB."""
    return bearer()
