"""Pages and eviction order ids by code point whatever the Redis server's locale.

Lua's "<" on strings follows the server's LC_COLLATE (Redis sets it from its
environment), so ``_order.lua`` compares bytes itself unless its probes find
a byte-order collation. Both ways run here: a server in the C locale, and
one in en_US.UTF-8 (case, punctuation and accents collated otherwise), when
the machine has that locale (``.ci/run`` generates it).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import redis

from stat_service.storage.store import Bounds, StatStore
from tests.support import RedisServer

pytestmark = pytest.mark.real_redis

# Ids whose code-point order differs from a natural-language collation.
IDS = ["B", "a", "Z", "_x", "-1", "9", "A", "ab", "a-b", "a b", "aB", "é", "f", "e"]


def _locales() -> set[str]:
    try:
        listed = subprocess.run(
            ["locale", "-a"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {name.lower().replace("-", "") for name in listed.split()}


def _server_locales():
    yield pytest.param("C", id="C")
    if "en_us.utf8" in _locales():
        yield pytest.param("en_US.UTF-8", id="en_US")
    else:
        yield pytest.param(
            "en_US.UTF-8",
            id="en_US",
            marks=pytest.mark.skip(reason="locale en_US.UTF-8 not installed"),
        )


@pytest.fixture(params=list(_server_locales()))
def store_in_locale(request, monkeypatch):
    monkeypatch.setenv("LC_ALL", request.param)
    monkeypatch.setenv("LANG", request.param)
    server = RedisServer().start()
    monkeypatch.delenv("LC_ALL")
    client = redis.Redis.from_url(server.url)
    try:
        # The server's own answer: C collates "B" before "a", en_US after.
        native = client.eval('return tostring("B" < "a")', 0) == b"true"
        assert native == (request.param == "C"), os.environ.get("LANG")

        def store(bounds=None):
            return StatStore(client, prefix="p:", bounds=bounds or Bounds())

        yield store
    finally:
        client.close()
        server.cleanup()


def test_pages_list_ties_by_code_point_in_any_locale(store_in_locale):
    store = store_in_locale()
    # Same last_played_on everywhere: the order is the ids' alone.
    body = {
        "view_data": [
            {"asset_id": i, "pause_time": 5, "last_played_on": 7} for i in IDS
        ]
    }
    store.put("s", body, delta=False)
    for kind in ("watch", "continue"):
        _, page = store.records_page("s", kind, 100)
        assert [r["asset_id"] for r in page] == sorted(IDS), kind
        # Walked two at a time, after each page's last id.
        walked, after = [], None
        while True:
            _, page = store.records_page("s", kind, 2, after)
            if not page:
                break
            walked += [r["asset_id"] for r in page]
            after = (7, page[-1]["asset_id"])
        assert walked == sorted(IDS), kind


def test_eviction_takes_ties_by_code_point_in_any_locale(store_in_locale):
    bounds = Bounds(max_records=len(IDS), evict=True)
    store = store_in_locale(bounds)
    body = {"view_data": [{"asset_id": i, "play_count": 1} for i in IDS]}
    store.put("s", body, delta=False)
    new = [f"new-{i}" for i in range(4)]
    result = store.put("s", {"view_data": [{"asset_id": i} for i in new]}, delta=True)
    assert result.evicted == 4
    kept = {r["asset_id"] for r in store.get("s")["view_data"]}
    # Code points: "-1", "9", "A", "B" go; a collation would take "a" before "B".
    assert kept == set(IDS) - set(sorted(IDS)[:4]) | set(new)
