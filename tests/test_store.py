"""The store without Flask: key schema, hash tags, record encoding, memory."""

from __future__ import annotations

import random

import orjson
import pytest
import redis
from hypothesis import example, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from stat_service.storage.records import (
    RECORD_FIELDS,
    decode_history,
    decode_record,
    encode_record,
    hash_tag,
    history_json,
)
from stat_service.storage.store import StatStore
from tests.support import RedisServer

AWKWARD_IDS = [
    "user@example.org",
    "a{b}",
    "{",
    "}",
    "}{",
    "{}",
    "a%7Bb%7D",
    "%",
    "%25",
    "x}",
    "x%7D",
    "a:b",
    "a b",
    "a/b",
    "Ünïcødé-用户",
    "A",
    "a",
    "{user}",
    "%7B",
]


def test_hash_tag_is_one_to_one_for_awkward_ids():
    tags = [hash_tag(i) for i in AWKWARD_IDS]
    assert len(set(tags)) == len(AWKWARD_IDS)


@pytest.mark.parametrize("subscriber_id", AWKWARD_IDS)
def test_hash_tag_has_no_inner_braces(subscriber_id):
    inner = hash_tag(subscriber_id)[1:-1]
    assert "{" not in inner and "}" not in inner
    assert inner  # never an empty tag, which Redis would ignore


@pytest.mark.parametrize("subscriber_id", AWKWARD_IDS)
def test_both_keys_of_a_subscriber_share_one_slot(subscriber_id):
    store = StatStore(client=_NoRedis(), prefix="p:")
    fav, view = store.keys(subscriber_id)
    assert key_slot(fav.encode()) == key_slot(view.encode())
    # The slot is the tag's, whatever the prefix.
    other = StatStore(client=_NoRedis(), prefix="other-prefix:")
    assert key_slot(other.keys(subscriber_id)[0].encode()) == key_slot(fav.encode())


def test_prefix_with_braces_is_refused():
    with pytest.raises(ValueError):
        StatStore(client=_NoRedis(), prefix="a{b}:")


def test_record_encoding_round_trips_every_field_combination():
    rnd = random.Random(7)
    values = {
        "play_count": [0, 1, 9007199254740991],
        "view_time": [0, 5400],
        "pause_time": [0, 310],
        "last_played_on": [0, 1764000000000],
        "user_rating": [0, 5, 3.5, 4.0, 0.1],
    }
    for mask in range(1 << len(RECORD_FIELDS)):
        record = {
            name: rnd.choice(values[name])
            for i, name in enumerate(RECORD_FIELDS)
            if mask >> i & 1
        }
        decoded = decode_record("a", encode_record(record))
        assert decoded == {"asset_id": "a", **record}
        # Types survive too: 4 stays int, 4.0 stays float.
        for name, value in record.items():
            assert type(decoded[name]) is type(value)


def test_a_full_record_decodes_as_any_other_keys_in_order_included():
    from stat_service.storage.records import _decode_slots

    rnd = random.Random(11)
    for _ in range(200):
        record = {
            "play_count": rnd.randint(0, 2**53 - 1),
            "view_time": rnd.randint(0, 10**6),
            "pause_time": rnd.randint(0, 10**6),
            "last_played_on": rnd.randint(0, 2**53 - 1),
            "user_rating": rnd.choice([0, 1, 5, 0.5, 3.5, 4.0, 1e-05, 2.5e-07]),
        }
        text = encode_record(record)
        fast = decode_record("a", text)
        assert list(fast.items()) == list(_decode_slots("a", text.split("|")).items())
        assert [type(v) for v in fast.values()] == [str] + [
            type(record[name]) for name in RECORD_FIELDS
        ]


# Ids as the schemas let them in: 1-256 characters, no control characters
# (Cc, which covers DEL and C1 too), anything else: quotes, backslashes,
# U+2028, astral characters.
_IDS = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12
) | st.sampled_from(["a", "b", 'q"uote', "back\\slash", "\u2028", "é", "😀", "e"])
_RATINGS = (
    st.integers(0, 5)
    | st.floats(0, 5)
    | st.sampled_from([1e-05, 2.5e-07, 5e-324, 4.0, 0.0001])
)
_VALUES = {
    "play_count": st.integers(0, 2**53 - 1),
    "view_time": st.integers(0, 2**53 - 1),
    "pause_time": st.integers(0, 2**53 - 1),
    # Few distinct times, so ties (ordered by asset id) are common.
    "last_played_on": st.integers(0, 3) | st.integers(0, 2**53 - 1),
    "user_rating": _RATINGS,
}
_RECORDS = st.fixed_dictionaries({}, optional=_VALUES)


def _reply(favorites, views) -> bytes:
    """What read.lua returns for these favorites and records."""
    flat = []
    for asset_id, record in views.items():
        flat += [asset_id, encode_record(record)]
    return ("\x1f".join(favorites) + "\x1e" + "\x1f".join(flat)).encode()


@settings(max_examples=400, deadline=None)
@given(
    favorites=st.lists(_IDS, max_size=4, unique=True),
    views=st.dictionaries(_IDS, _RECORDS, max_size=12),
)
@example(favorites=[], views={})
@example(favorites=["f"], views={"a": {}})
@example(favorites=[], views={"a": {"user_rating": 1e-05}, "b": {"last_played_on": 1}})
@example(
    favorites=[],
    views={"a": {"last_played_on": 2**53 - 2}, "b": {"last_played_on": 2**53 - 1}},
)
@example(
    favorites=[],
    views={
        "b": dict.fromkeys(RECORD_FIELDS, 1),
        "a": dict.fromkeys(RECORD_FIELDS, 1),
        "c": {"last_played_on": 2},
        "d": {"play_count": 1},
    },
)
def test_history_json_is_the_decoded_history_dumped(favorites, views):
    """The GET's body is written from the stored text (history_json): the
    same bytes as decoding the history and dumping it, for any ids, any
    record shape, ratings with an exponent, ties of last_played_on."""
    from stat_service.http.views import get_body

    reply = _reply(favorites, views)
    history = decode_history(reply)
    expected = orjson.dumps(history)
    assert history_json(reply) == expected
    assert history_json(reply.decode()) == expected
    # The whole body of the GET's 200, as jsonify wrote it from the dict.
    subscriber_id = favorites[0] if favorites else 'sub "x"'
    answer = {"result": "success", "subscriber_id": subscriber_id, **history}
    assert get_body(subscriber_id, history_json(reply)) == orjson.dumps(answer)


def test_record_encoding_is_compact():
    assert encode_record({}) == ""
    assert encode_record({"play_count": 3, "view_time": 5400}) == "3|5400"
    assert encode_record({"pause_time": 310}) == "||310"
    assert encode_record({"user_rating": 3.5}) == "||||3.5"
    assert encode_record({"play_count": None, "pause_time": 1}) == "||1"


def test_patch_encoding_marks_removals():
    assert encode_record({"play_count": None, "pause_time": 7}, patch=True) == "-||7"
    assert encode_record({}, patch=True) == ""


class _NoRedis:
    """Enough of a client to build a store without a server."""

    def register_script(self, source):
        return source


@pytest.mark.real_redis
def test_memory_per_record_is_at_most_80_bytes():
    """MEMORY USAGE of the view hashes, per record, on a stock redis-server.

    1,000 subscribers x 100 assets and 200 x 500 assets, every field set,
    asset ids of 12 characters. The figures are printed (pytest -s).
    """
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        store = StatStore(client, prefix="m:")
        rnd = random.Random(1)
        for subscribers, assets in ((1000, 100), (200, 500)):
            client.flushall()  # a private server of this test only
            for s in range(subscribers):
                view_data = [
                    {
                        "asset_id": f"asset-{a:06d}",
                        "play_count": rnd.randrange(50),
                        "view_time": rnd.randrange(100_000),
                        "pause_time": rnd.randrange(7200),
                        "last_played_on": 1764000000000 + rnd.randrange(10**9),
                        "user_rating": rnd.choice([1, 2, 3, 3.5, 4, 4.5, 5]),
                    }
                    for a in range(assets)
                ]
                store.put(f"user{s}@example.org", {"view_data": view_data}, delta=False)
            total = records = 0
            for key in client.scan_iter(match="m:*:view", count=1000):
                total += client.memory_usage(key, samples=0)
                records += client.hlen(key)
            per_record = total / records
            print(f"{subscribers} x {assets}: {per_record:.1f} bytes per record")
            assert records == subscribers * assets
            assert per_record <= 80
        client.close()
    finally:
        server.cleanup()
