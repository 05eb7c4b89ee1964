"""Redis storage of subscriber histories, usable without Flask.

Key schema (``P`` is ``KEY_PREFIX``, default ``stat:``; ``T`` is the
subscriber's hash tag, see records.py):

========================  ==========  =========================================
key                       Redis type  content
========================  ==========  =========================================
``P{T}:fav``              sorted set  the favorites ("My List"): member = asset
                                      guid, score = position (rising in list
                                      order), so ``ZRANGE 0 -1`` gives them in
                                      the order they were sent
``P{T}:view``             hash        the view data: field = asset id, value =
                                      the asset's record, encoded as records.py
                                      says
========================  ==========  =========================================

Hash tag ``T`` and record encoding: see records.py.

Positions in the favorites set are what a page cursor names, so they stay
where they are while the list changes (API.md section 9): an add takes the
last position plus 1, a removal leaves a gap, and a PUT that replaces the
whole list keeps the positions of the favorites that stay, placing the
others in between (``lua/_favorites.lua``; positions may be fractional).
Every list is read from these two keys; there is no second copy for paging.

Bounds (API.md section 8, ``Bounds``): a write that adds records past
``max_records`` is refused whole (``HistoryFull``) or, with ``evict``, makes
room in the same script; favorites past ``max_favorites`` are refused.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass

from redis.exceptions import NoScriptError

from ..ops.metrics import SCRIPT_CALLS, child
from .client import call_and_wait, ping
from .records import (
    as_text,
    collapse,
    decode_history,
    decode_record,
    dedupe,
    encode_record,
    hash_tag,
    history_json,
)


def _load_lua(name: str, *helpers: str) -> str:
    """A script's text, with the helper files it uses (``_order``,
    ``_favorites``) put in front."""
    folder = importlib.resources.files(__package__).joinpath("lua")
    parts = [folder.joinpath(f"{part}.lua").read_text() for part in (*helpers, name)]
    return "\n".join(parts)


@dataclass(frozen=True)
class PutResult:
    favorites: int  # favorites stored after the write
    view_data: int  # distinct assets the write touched
    evicted: int = 0  # records removed to make room (HISTORY_FULL=evict)


@dataclass(frozen=True)
class Bounds:
    """How big one subscriber's history may grow (API.md section 8)."""

    max_records: int = 5000
    max_favorites: int = 5000
    evict: bool = False  # HISTORY_FULL=evict: make room instead of refusing

    @classmethod
    def from_settings(cls, settings) -> Bounds:
        """MAX_RECORDS, MAX_FAVORITES and HISTORY_FULL of a ``Settings``."""
        return cls(
            settings.MAX_RECORDS,
            settings.MAX_FAVORITES,
            settings.HISTORY_FULL == "evict",
        )


_MAKE_ROOM_RECORDS = (
    "make room by removing records (DELETE /metax/2.1/activity/watch/"
    "{subscriber_id}/{asset_id}) or replace the whole history (PUT "
    "/metax/3.0/ui/user/stat/{subscriber_id}?isDelta=false)"
)
_MAKE_ROOM_FAVORITES = (
    "make room by removing favorites (DELETE /metax/2.1/activity/fav/"
    "{subscriber_id}/{asset_id}) or replace the whole list (PUT "
    "/metax/3.0/ui/user/stat/{subscriber_id} with favorites)"
)


class HistoryFull(Exception):
    """A write would pass MAX_RECORDS or MAX_FAVORITES; nothing was written.

    The API answers it 409 CONFLICT, the bulk importer rejects the line; both
    give ``reason``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @classmethod
    def records(cls, reach: int, bound: int) -> HistoryFull:
        return cls(
            f"history full: this write would bring the history to {reach} "
            f"records, more than MAX_RECORDS ({bound}); {_MAKE_ROOM_RECORDS}"
        )

    @classmethod
    def favorites(cls, reach: int, bound: int) -> HistoryFull:
        return cls(
            f"favorites full: this write would bring the list to {reach} "
            f"favorites, more than MAX_FAVORITES ({bound}); {_MAKE_ROOM_FAVORITES}"
        )

    @classmethod
    def request(cls, count: int, what: str, setting: str, bound: int):
        return cls(
            f"history full: this request alone writes {count} distinct {what}, "
            f"more than {setting} ({bound}), so the history would hold at least "
            f"{count}; send at most {bound}"
        )


class StatStore:
    """A subscriber's favorites and view data in Redis, one script per request."""

    def __init__(
        self,
        client,
        prefix: str = "stat:",
        *,
        min_replicas: int = 0,
        wait_timeout_ms: int = 0,
        bounds: Bounds = Bounds(),
    ):
        """``min_replicas`` > 0: a write returns only once WAIT confirms that
        many replicas hold it (within ``wait_timeout_ms``), else it raises
        ``NotReplicated``. ``bounds``: see ``Bounds`` and ``HistoryFull``."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain '{' or '}'")
        self.client = client
        self.prefix = prefix
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.bounds = bounds
        self._bound_args = (bounds.max_records, "evict" if bounds.evict else "reject")
        register = client.register_script
        self._delta = register(_load_lua("put_delta", "_order", "_favorites"))
        self._overwrite = register(_load_lua("put_overwrite", "_favorites"))
        self._read = register(_load_lua("read"))
        self._fav_add = register(_load_lua("fav_add"))
        self._fav_remove = register(_load_lua("fav_remove"))
        self._fav_page = register(_load_lua("fav_page"))
        self._view_page = register(_load_lua("view_page", "_order"))
        self._record_get = register(_load_lua("record_get"))
        self._record_remove = register(_load_lua("record_remove"))
        # What a bulk loader's pipelines send (see load_scripts).
        self._pipelined = (self._delta, self._overwrite, self._read)
        # Every script as registered (some carry helper files in front).
        self.scripts = (
            *self._pipelined,
            self._fav_add,
            self._fav_remove,
            self._fav_page,
            self._view_page,
            self._record_get,
            self._record_remove,
        )

    def keys(self, subscriber_id: str) -> tuple[str, str]:
        """(favorites key, view-data key) of one subscriber."""
        base = self.prefix + hash_tag(subscriber_id)
        return base + ":fav", base + ":view"

    def put(self, subscriber_id: str, body: dict, *, delta: bool) -> PutResult:
        """Apply a validated body (favorites, view_data) atomically, in one call.

        Raises ``HistoryFull`` (nothing written) past the bounds.
        """
        script, keys, args, written = self.script_call(subscriber_id, body, delta=delta)
        name = "put_delta" if delta else "put_overwrite"
        return self.put_result(self._write(name, script, keys, args), written)

    def put_result(self, reply, written: int) -> PutResult:
        """A write script's reply as a PutResult; ``HistoryFull`` when refused.

        The reply is {0, favorites, evicted} or {1, records the history would
        hold} (put_delta.lua).
        """
        if reply[0]:
            raise HistoryFull.records(int(reply[1]), self.bounds.max_records)
        return PutResult(
            favorites=int(reply[1]), view_data=written, evicted=int(reply[2])
        )

    def _write(self, name: str, script, keys, args):
        """One write script, followed by WAIT when acks are required."""
        if self.min_replicas:
            wait = (self.min_replicas, self.wait_timeout_ms)
            return _run(name, call_and_wait, self.client, script, keys, args, *wait)
        return _run(name, call_script, script, keys, args)

    def script_call(self, subscriber_id: str, body: dict, *, delta: bool):
        """(script, keys, args, assets written) for one validated body.

        Split out so a bulk loader can queue the same call on a pipeline
        (its reply goes through ``put_result``). Raises ``HistoryFull`` when
        the body alone passes a bound.
        """
        favorites = body.get("favorites")
        records = collapse(body.get("view_data") or (), delta=delta)
        bounds = self.bounds
        if len(records) > bounds.max_records:
            raise HistoryFull.request(
                len(records), "records", "MAX_RECORDS", bounds.max_records
            )
        args: list = []
        if delta:
            args.append("0" if favorites is None else "1")
            args.extend(self._bound_args)
        favorites = dedupe(favorites or ())
        if len(favorites) > bounds.max_favorites:
            raise HistoryFull.request(
                len(favorites), "favorites", "MAX_FAVORITES", bounds.max_favorites
            )
        args.append(len(favorites))
        args.extend(favorites)
        for asset_id, fields_ in records.items():
            args.append(asset_id)
            args.append(encode_record(fields_, patch=delta))
        script = self._delta if delta else self._overwrite
        return script, self.keys(subscriber_id), args, len(records)

    def get(self, subscriber_id: str) -> dict:
        """Favorites in stored order; view data most recently played first."""
        return decode_history(self._read_reply(subscriber_id))

    def get_json(self, subscriber_id: str) -> bytes:
        """``get`` as a JSON object (``records.history_json``), for a GET's body."""
        return history_json(self._read_reply(subscriber_id))

    def _read_reply(self, subscriber_id: str):
        return _run("read", call_script, *self.read_call(subscriber_id))

    def read_call(self, subscriber_id: str):
        """(script, keys, args) of one read, for a loader's pipeline."""
        return self._read, self.keys(subscriber_id), ()

    def delete(self, subscriber_id: str) -> None:
        """Erase the subscriber's whole history (one DEL of both keys)."""
        self.client.delete(*self.keys(subscriber_id))

    def ping(self) -> bool:
        return ping(self.client)

    def load_scripts(self, server=None) -> None:
        """Load the scripts a pipeline sends (writes, read) into ``server``'s
        cache (default: the client's, which on a cluster is every primary)."""
        server = self.client if server is None else server
        for script in self._pipelined:
            server.script_load(script.script)

    # --- one item at a time, lists a page at a time (API.md section 9) ---------

    def add_favorite(self, subscriber_id: str, asset_id: str) -> tuple[bool, int]:
        """(added, favorites stored): at the end, or where it already was.

        Raises ``HistoryFull`` when the list holds MAX_FAVORITES already.
        """
        fav = self.keys(subscriber_id)[0]
        args = (asset_id, self.bounds.max_favorites)
        added, count = self._write("fav_add", self._fav_add, (fav,), args)
        if added < 0:
            raise HistoryFull.favorites(count, self.bounds.max_favorites)
        return bool(added), count

    def remove_favorite(self, subscriber_id: str, asset_id: str) -> tuple[bool, int]:
        """(removed, favorites stored); the others keep their positions."""
        fav = self.keys(subscriber_id)[0]
        removed, count = self._write(
            "fav_remove", self._fav_remove, (fav,), (asset_id,)
        )
        return bool(removed), count

    def remove_record(self, subscriber_id: str, asset_id: str) -> bool:
        """Remove one asset's record (favorites untouched); whether it was there."""
        views = self.keys(subscriber_id)[1]
        removed = self._write(
            "record_remove", self._record_remove, (views,), (asset_id,)
        )
        return bool(removed)

    def get_record(self, subscriber_id: str, asset_id: str) -> dict | None:
        """One asset's record as section 2 shows it, or None."""
        views = self.keys(subscriber_id)[1]
        text = _run("record_get", call_script, self._record_get, (views,), (asset_id,))
        return None if text is None else decode_record(asset_id, as_text(text))

    def favorites_page(
        self, subscriber_id: str, size: int, after: float | None = None
    ) -> tuple[int, list[tuple[str, float]]]:
        """(favorites stored, up to ``size`` (guid, position)) in stored order,
        starting after position ``after`` (None: from the first)."""
        fav = self.keys(subscriber_id)[0]
        args = (size, "" if after is None else repr(after))
        reply = _run("fav_page", call_script, self._fav_page, (fav,), args)
        flat = reply[1:]
        page = [(as_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        return int(reply[0]), page

    def records_page(
        self,
        subscriber_id: str,
        which: str,
        size: int,
        after: tuple[int, str] | None = None,
    ) -> tuple[int, list[dict]]:
        """(records in the list, up to ``size`` records) of ``which``
        ("watch": played, "continue": paused above 0), most recently played
        first, starting after ``after`` = (last_played_on or -1, asset id)."""
        views = self.keys(subscriber_id)[1]
        played, asset_id = ("", "") if after is None else after
        args = (which, size, played, asset_id)
        reply = _run("view_page", call_script, self._view_page, (views,), args)
        flat = reply[1:]
        page = [
            decode_record(as_text(flat[i]), as_text(flat[i + 1]))
            for i in range(0, len(flat), 2)
        ]
        return int(reply[0]), page


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
        child(SCRIPT_CALLS, name, "error").inc()
        raise
    child(SCRIPT_CALLS, name, "ok").inc()
    return reply
