"""Redis storage of subscriber histories, usable without Flask.

Key schema (``P`` is ``KEY_PREFIX``, default ``stat:``; ``T`` is the
subscriber's hash tag, see below):

========================  ==========  =========================================
key                       Redis type  content
========================  ==========  =========================================
``P{T}:fav``              sorted set  the favorites ("My List"): member = asset
                                      guid, score = position (0, 1, 2, ...), so
                                      ``ZRANGE 0 -1`` gives them in the order
                                      they were sent
``P{T}:view``             hash        the view data: field = asset id, value =
                                      the asset's record, encoded as below
========================  ==========  =========================================

Hash tag ``T``: the subscriber id, UTF-8, with ``%`` written ``%25``, ``{``
written ``%7B`` and ``}`` written ``%7D``. Escaping ``%`` keeps the mapping
one-to-one (two ids never share keys) and no ``}`` can end the tag early, so
both keys of a subscriber always hash to one Redis Cluster slot and every
script touches a single slot. ``KEY_PREFIX`` may not contain braces.

Record encoding: the five fields in the order of ``RECORD_FIELDS``, each
as decimal text (integers exactly as sent; a rating as Python's shortest
repr of the float, so ``3.50`` is kept as ``3.5``), separated by ``|``; an absent
field is an empty slot and trailing empty slots are dropped. So ``3|5400``
is play_count 3 and view_time 5400, ``||310|1764000000000`` is a pause
position and a last-played time, and ``""`` is a record with no fields.
A hash per subscriber with compact values costs ~70 bytes a record, a
fraction of a hash per asset (see the README's storage section).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from redis.exceptions import NoScriptError

from .metrics import SCRIPT_CALLS
from .redis_client import call_and_wait, ping

RECORD_FIELDS = (
    "play_count",
    "view_time",
    "pause_time",
    "last_played_on",
    "user_rating",
)
_INT_FIELDS = frozenset(RECORD_FIELDS[:4])
_REMOVE = "-"  # patch slot: remove the stored value (a value is never "-")
_FIELD_INDEX = {name: i for i, name in enumerate(RECORD_FIELDS)}
_TAG_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def hash_tag(subscriber_id: str) -> str:
    """The subscriber's Redis Cluster hash tag, braces included."""
    return "{" + subscriber_id.translate(_TAG_ESCAPES) + "}"


def _load_lua(name: str) -> str:
    return (
        importlib.resources.files(__package__).joinpath(f"lua/{name}.lua").read_text()
    )


def format_value(value: int | float) -> str:
    """The text stored for a validated number: ints stay ints, floats keep repr."""
    return str(value) if type(value) is int else repr(value)


def _rating(text: str) -> int | float:
    # A float's repr always has "." or "e"; an int's text never does.
    return float(text) if "." in text or "e" in text else int(text)


# How each slot is read back: ints stay ints, the rating keeps its JSON type.
_PARSERS = tuple(zip(RECORD_FIELDS, (int, int, int, int, _rating), strict=True))


def encode_record(record: dict, *, patch: bool = False) -> str:
    """Encode a record's named fields, in RECORD_FIELDS order.

    For storage (``patch=False``) a ``None`` value counts as absent. For a
    delta (``patch=True``) it becomes "-": the script removes that field.
    """
    slots = [""] * len(RECORD_FIELDS)
    for name, value in record.items():
        if value is not None:
            slots[_FIELD_INDEX[name]] = format_value(value)
        elif patch:
            slots[_FIELD_INDEX[name]] = _REMOVE
    return "|".join(slots).rstrip("|")


def decode_record(asset_id: str, text: str) -> dict:
    record: dict = {"asset_id": asset_id}
    if text:
        # The hot loop of a GET: builtins only, no call per slot of our own.
        for (name, parse), slot in zip(_PARSERS, text.split("|"), strict=False):
            if slot:
                record[name] = parse(slot)
    return record


def _recency_key(record: dict):
    # Most recently played first, never-played last, then asset id ascending.
    played = record.get("last_played_on")
    return (played is None, -(played or 0), record["asset_id"])


def dedupe(favorites) -> list[str]:
    """Favorites in order, a repeated guid kept once at its first position."""
    return list(dict.fromkeys(favorites))


def collapse(view_data, *, delta: bool) -> dict[str, dict]:
    """One field mapping per asset, in first-seen order; later objects win.

    In delta mode a ``None`` is kept (it removes the stored field); in
    overwrite mode it is the same as leaving the field out.
    """
    merged: dict[str, dict] = {}
    for item in view_data:
        fields_ = merged.setdefault(item["asset_id"], {})
        for name, value in item.items():
            if name == "asset_id" or (value is None and not delta):
                continue
            fields_[name] = value
    return merged


@dataclass(frozen=True)
class PutResult:
    favorites: int  # favorites stored after the write
    view_data: int  # distinct assets the write touched


class StatStore:
    """A subscriber's favorites and view data in Redis, one script per request."""

    def __init__(
        self,
        client,
        prefix: str = "stat:",
        *,
        min_replicas: int = 0,
        wait_timeout_ms: int = 0,
    ):
        """``min_replicas`` > 0: a write returns only once WAIT confirms that
        many replicas hold it (within ``wait_timeout_ms``), else it raises
        ``NotReplicated``."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain '{' or '}'")
        self.client = client
        self.prefix = prefix
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._delta = client.register_script(_load_lua("put_delta"))
        self._overwrite = client.register_script(_load_lua("put_overwrite"))
        self._read = client.register_script(_load_lua("read"))

    def keys(self, subscriber_id: str) -> tuple[str, str]:
        """(favorites key, view-data key) of one subscriber."""
        base = self.prefix + hash_tag(subscriber_id)
        return base + ":fav", base + ":view"

    def put(self, subscriber_id: str, body: dict, *, delta: bool) -> PutResult:
        """Apply a validated body (favorites, view_data) atomically, in one call."""
        script, keys, args, written = self.script_call(subscriber_id, body, delta=delta)
        name = "put_delta" if delta else "put_overwrite"
        if self.min_replicas:
            wait = (self.min_replicas, self.wait_timeout_ms)
            reply = _run(name, call_and_wait, self.client, script, keys, args, *wait)
        else:
            reply = _run(name, call_script, script, keys, args)
        return PutResult(favorites=int(reply), view_data=written)

    def script_call(self, subscriber_id: str, body: dict, *, delta: bool):
        """(script, keys, args, assets written) for one validated body.

        Split out so a bulk loader can queue the same call on a pipeline.
        """
        favorites = body.get("favorites")
        records = collapse(body.get("view_data") or (), delta=delta)
        args: list = []
        if delta:
            args.append("0" if favorites is None else "1")
        favorites = dedupe(favorites or ())
        args.append(len(favorites))
        args.extend(favorites)
        for asset_id, fields_ in records.items():
            args.append(asset_id)
            args.append(encode_record(fields_, patch=delta))
        script = self._delta if delta else self._overwrite
        return script, self.keys(subscriber_id), args, len(records)

    def get(self, subscriber_id: str) -> dict:
        """Favorites in stored order; view data most recently played first."""
        return decode_history(_run("read", call_script, *self.read_call(subscriber_id)))

    def read_call(self, subscriber_id: str):
        """(script, keys, args) of one read, for a loader's pipeline."""
        return self._read, self.keys(subscriber_id), ()

    def delete(self, subscriber_id: str) -> None:
        """Erase the subscriber's whole history (one DEL of both keys)."""
        self.client.delete(*self.keys(subscriber_id))

    def ping(self) -> bool:
        return ping(self.client)

    def load_scripts(self, server=None) -> None:
        """Load the scripts into ``server``'s cache (default: the client's,
        which on a cluster is every primary), for pipelines."""
        server = self.client if server is None else server
        for script in (self._delta, self._overwrite, self._read):
            server.script_load(script.script)


def decode_history(reply) -> dict:
    """A subscriber's history from the read script's reply (see read.lua)."""
    favorites, _, views = _text(reply).partition("\x1e")
    flat = views.split("\x1f") if views else []
    records = [decode_record(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    records.sort(key=_recency_key)
    return {
        "favorites": favorites.split("\x1f") if favorites else [],
        "view_data": records,
    }


def call_script(script, keys, args):
    """EVALSHA; when the server lacks the script (a restart, SCRIPT FLUSH, a
    promoted replica), EVAL with the whole text, which also caches it there.

    Not redis-py's ``Script.__call__``: its reload is a SCRIPT LOAD that, on
    a cluster, goes to every primary, so one dead primary would fail calls
    on the healthy ones.
    """
    client = script.registered_client
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(script.script, len(keys), *keys, *args)


def _run(name: str, call, *args):
    """``call(*args)``, counting the script call by outcome."""
    try:
        reply = call(*args)
    except Exception:
        SCRIPT_CALLS.labels(name, "error").inc()
        raise
    SCRIPT_CALLS.labels(name, "ok").inc()
    return reply


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
