"""Export and erasure of subscribers.

Export: SCAN (never KEYS) over the prefix's ``:view`` and ``:fav`` keys, one
JSON line per subscriber in the import format, each subscriber once (from
its view key, or from its favorites key when it has no view data). Lines
come in SCAN order, which depends on Redis's hash table: compare two exports
after ``LC_ALL=C sort``. Not a snapshot while writes go on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson
from redis.cluster import RedisCluster

from ..storage.client import real_client
from ..storage.records import decode_history, hash_tag
from ..storage.store import StatStore
from .writes import send

# --- subscriber ids and keys ---------------------------------------------------

_UNESCAPES = {"%25": "%", "%7B": "{", "%7D": "}"}
_ESCAPE = re.compile("%(?:25|7B|7D)")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def subscriber_id_from_tag(tag: str) -> str:
    """The exact inverse of ``store.hash_tag`` (without its braces), one pass."""
    return _ESCAPE.sub(lambda m: _UNESCAPES[m.group()], tag)


def subscriber_id_from_key(key: str, prefix: str) -> tuple[str, str] | None:
    """(subscriber id, "fav" or "view") of one of our keys, else None."""
    head = prefix + "{"
    if not key.startswith(head):
        return None
    tag, brace, kind = key[len(head) :].rpartition("}:")
    if not brace or kind not in ("fav", "view"):
        return None
    subscriber_id = subscriber_id_from_tag(tag)
    if hash_tag(subscriber_id) != "{" + tag + "}":
        return None  # not written by StatStore (a stray "{" or "%")
    return subscriber_id, kind


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


# --- export and erase ------------------------------------------------------------


def export_line(subscriber_id: str, history: dict) -> bytes:
    """One subscriber in the import format."""
    return orjson.dumps({"subscriber_id": subscriber_id, **history}) + b"\n"


def scan_subscribers(store: StatStore, count: int = 1000) -> Iterator[list]:
    """Pages of (subscriber id, key kind) under the store's prefix, by SCAN."""
    pattern = glob_escape(store.prefix) + "{*"
    for server in scan_targets(store.client):
        for keys in _scan(server, pattern, count):
            page = []
            for key in keys:
                try:
                    text = key.decode("utf-8") if isinstance(key, bytes) else key
                except UnicodeDecodeError:
                    continue  # not one of ours: ids are valid UTF-8
                found = subscriber_id_from_key(text, store.prefix)
                if found is not None:
                    page.append(found)
            if page:
                yield page


def scan_targets(client) -> list:
    """The servers to SCAN: the one server, or every primary of a cluster."""
    client = real_client(client)
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(n) for n in client.get_primaries()]
    return [client]


def _scan(server, pattern: str, count: int) -> Iterator[list]:
    cursor = 0
    while True:
        cursor, keys = server.scan(cursor, match=pattern, count=count)
        yield keys
        if cursor == 0:
            return


def export(store: StatStore, out, *, subscriber_id: str | None = None, progress=None):
    """Write subscribers as JSON lines to ``out`` (binary); return how many."""
    if subscriber_id is not None:
        out.write(export_line(subscriber_id, store.get(subscriber_id)))
        return 1
    written = 0
    store.load_scripts()
    for page in scan_subscribers(store):
        replies = send(store, [store.read_call(found) for found, _ in page])
        lines = []
        for (found, kind), reply in zip(page, replies, strict=True):
            history = decode_history(reply)
            if kind == "fav" and history["view_data"]:
                continue  # written from its view key
            if not history["view_data"] and not history["favorites"]:
                continue  # erased meanwhile
            lines.append(export_line(found, history))
        out.write(b"".join(lines))
        written += len(lines)
        if progress is not None:
            progress(len(lines))
    return written


def erase(store: StatStore, subscriber_id: str) -> None:
    store.delete(subscriber_id)
