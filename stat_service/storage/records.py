"""A subscriber's keys and records as Redis holds them (no Flask, no Redis calls).

Hash tag: the subscriber id, UTF-8, with ``%`` written ``%25``, ``{``
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
A hash per subscriber with compact values costs ~50 bytes a record (up
to 512 records, a listpack) to ~105 (a full history of 5,000), a fraction
of a hash per asset (see docs/storage.md).

The key schema, and the scripts that read and write these, are store.py's.
"""

from __future__ import annotations

import orjson

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


def format_value(value: int | float) -> str:
    """The text stored for a validated number: ints stay ints, floats keep
    their shortest repr (``str`` of a float is its repr)."""
    return str(value)


def _rating(text: str) -> int | float:
    # A float's repr always has "." or "e"; an int's text never does.
    return float(text) if "." in text or "e" in text else int(text)


# How each slot is read back: ints stay ints, the rating keeps its JSON type.
_PARSERS = tuple(zip(RECORD_FIELDS, (int, int, int, int, _rating), strict=True))


def encode_record(record: dict, *, patch: bool = False) -> str:
    """Encode a record's fields, in RECORD_FIELDS order (other keys, such as
    ``asset_id``, are not looked at).

    For storage (``patch=False``) a ``None`` value counts as absent. For a
    delta (``patch=True``) it becomes "-": the script removes that field.
    """
    get = record.get
    if patch:
        # An absent field reads as "" (str("") is ""), a null as "-".
        slots = [
            _REMOVE if (value := get(name, "")) is None else str(value)
            for name in RECORD_FIELDS
        ]
    else:
        slots = [
            "" if (value := get(name)) is None else str(value) for name in RECORD_FIELDS
        ]
    return "|".join(slots).rstrip("|")


def decode_record(asset_id: str, text: str) -> dict:
    slots = text.split("|")
    if len(slots) == 5 and "" not in slots:
        # A record with all five fields, the common case: one dict display
        # (a fifth of a GET's decoding time less than the loop below).
        played, viewed, paused, last, rating = slots
        return {
            "asset_id": asset_id,
            "play_count": int(played),
            "view_time": int(viewed),
            "pause_time": int(paused),
            "last_played_on": int(last),
            "user_rating": _rating(rating),
        }
    return _decode_slots(asset_id, slots)


def _decode_slots(asset_id: str, slots) -> dict:
    """Any record: each non-empty slot by its field's parser (RECORD_FIELDS).
    decode_record's display of the five fields must agree with this
    (tests/test_store.py)."""
    record: dict = {"asset_id": asset_id}
    for (name, parse), slot in zip(_PARSERS, slots, strict=False):
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
    overwrite mode it is the same as leaving the field out. A mapping may
    be the body's own object, ``asset_id`` included (``encode_record``
    skips it); objects of a repeated asset are merged into a copy.
    """
    merged: dict[str, dict] = {}
    copies: set[str] = set()
    for item in view_data:
        asset_id = item["asset_id"]
        earlier = merged.get(asset_id)
        if earlier is None:
            merged[asset_id] = item
            continue
        if asset_id not in copies:  # never change the caller's object
            copies.add(asset_id)
            earlier = merged[asset_id] = dict(earlier)
        for name, value in item.items():
            if value is not None or delta:
                earlier[name] = value
    return merged


def decode_history(reply) -> dict:
    """A subscriber's history from the read script's reply (see read.lua)."""
    favorites, _, views = as_text(reply).partition("\x1e")
    flat = views.split("\x1f") if views else []
    records = list(map(decode_record, flat[0::2], flat[1::2]))
    records.sort(key=_recency_key)
    return {
        "favorites": favorites.split("\x1f") if favorites else [],
        "view_data": records,
    }


# What follows an asset id in a record's JSON text: each field's member
# prefix, in RECORD_FIELDS order (history_json).
_MEMBERS = tuple(f',"{name}":' for name in RECORD_FIELDS)


def history_json(reply) -> bytes:
    """``orjson.dumps(decode_history(reply))``, written straight from the
    stored text: the GET's hot path, without a dict, an int or a float per
    field (half the instructions of decoding 50 records and dumping them).

    It relies on what the service stores (see the module's text): every
    value is the decimal text of a JSON number, an int as ``str`` wrote it
    and a rating as Python's ``repr`` of a float, which orjson writes the
    same way unless the repr has an exponent (a rating under 0.0001:
    ``1e-05`` stays that text in Redis, orjson writes ``0.00001``); ids
    and favorites hold no control characters (validated on every way in;
    the reply's own separators depend on it). What is left for JSON to
    escape, ``"`` and ``\\`` in an id, and an exponent, sends the reply
    the general way. tests/test_store.py holds the two to the same bytes.
    """
    text = as_text(reply)
    favorites, _, views = text.partition("\x1e")
    if '"' in views or "\\" in views:
        return orjson.dumps(decode_history(text))
    flat = views.split("\x1f") if views else []
    rows = []
    append = rows.append
    for asset_id, record in zip(flat[0::2], flat[1::2], strict=False):
        if "e" in record:  # only a rating's exponent has one
            return orjson.dumps(decode_history(text))
        slots = record.split("|")
        if len(slots) == 5 and "" not in slots:
            played, viewed, paused, last, rating = slots
            append(
                (
                    -float(last),
                    asset_id,
                    f'{{"asset_id":"{asset_id}","play_count":{played},'
                    f'"view_time":{viewed},"pause_time":{paused},'
                    f'"last_played_on":{last},"user_rating":{rating}}}',
                )
            )
            continue
        pairs = zip(_MEMBERS, slots, strict=False)  # the fields present only
        members = "".join([name + slot for name, slot in pairs if slot])
        last = slots[3] if len(slots) > 3 else ""
        played = -float(last) if last else 1.0  # never played: after all others
        append((played, asset_id, '{"asset_id":"' + asset_id + '"' + members + "}"))
    # _recency_key's order: most recently played first, never played last,
    # then asset id (unique in a hash, so the text is never compared). A
    # float, not an int: exact up to 2^53 - 1, the largest value stored,
    # and a flat tuple of a float compares far faster in a sort.
    rows.sort()
    return b"".join(
        (
            b'{"favorites":',
            orjson.dumps(favorites.split("\x1f") if favorites else []),
            b',"view_data":[',
            ",".join([row[2] for row in rows]).encode(),
            b"]}",
        )
    )


def as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
