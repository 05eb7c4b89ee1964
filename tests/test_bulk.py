"""Bulk import, export and erase (stat_service.bulk and python -m stat_service)."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path
from urllib.parse import quote

import fakeredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from stat_service.__main__ import main
from stat_service.bulk import export, importer, sources
from stat_service.config import load_settings
from stat_service.storage.records import hash_tag
from stat_service.storage.store import StatStore
from tests.conftest import PATH, bearer
from tests.support import RedisServer, delete_prefix

ROOT = Path(__file__).resolve().parent.parent
ADMIN = bearer(admin=True, ttl=3600)
HEADER = "subscriber_id,asset_id,play_count,view_time,pause_time,last_played_on,"
HEADER += "user_rating,favorite\n"
AWKWARD_IDS = ["a{b}", "{", "}", "%", "%25", "%7B", "x%7D}", "Ünïcødé-用户", "a b/c"]


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_import", ROOT / "bench" / "gen_import.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def bodies(count: int, *, seed: int = 1, assets: int = 4, favorites: int = 3):
    """Mixed subscribers: every field, nulls, empty records, awkward ids."""
    rnd = random.Random(seed)
    args = types.SimpleNamespace(assets=assets, favorites=favorites, mixed=True)
    return [gen.subscriber(i, rnd, args) for i in range(count)]


def jsonl(items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def run(path, settings, client, **options) -> importer.ImportReport:
    opts = importer.ImportOptions(path=str(path), **options)
    return importer.run_import(opts, settings, client=client)


def exported(store: StatStore) -> bytes:
    out = io.BytesIO()
    export.export(store, out)
    return out.getvalue()


def ids(data: bytes) -> list[str]:
    return sorted(json.loads(line)["subscriber_id"] for line in data.splitlines())


def sorted_lines(data: bytes) -> list[bytes]:
    return sorted(data.splitlines())


def api_url(subscriber_id: str, delta: bool | None = None) -> str:
    url = PATH + quote(subscriber_id, safe="")
    return url if delta is None else f"{url}?isDelta={str(delta).lower()}"


def api_get(client, subscriber_id: str) -> dict:
    response = client.get(api_url(subscriber_id), headers=ADMIN)
    assert response.status_code == 200, response.json
    return {k: response.json[k] for k in ("favorites", "view_data")}


def api_put(client, subscriber_id: str, raw: bytes, delta: bool):
    return client.put(
        api_url(subscriber_id, delta),
        data=raw,
        headers={**ADMIN, "Content-Type": "application/json"},
    )


def put_ok(client, subscriber_id: str, body: dict, delta: bool) -> None:
    reply = api_put(client, subscriber_id, json.dumps(body).encode(), delta)
    assert reply.status_code == 200, reply.json


@pytest.fixture
def conf(settings):
    """The service's settings (same prefix and limits as the ``app``)."""
    return load_settings(settings)


@pytest.fixture
def fake():
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def real(real_redis_url, key_prefix):
    client = redis.Redis.from_url(real_redis_url)
    yield client
    delete_prefix(client, key_prefix)
    client.close()


@pytest.fixture
def cli_env(monkeypatch, real_redis_url, key_prefix, real):
    """``main()`` reads REDIS_URL and KEY_PREFIX like the service does."""
    monkeypatch.setenv("REDIS_URL", real_redis_url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    return {
        **os.environ,
        "REDIS_URL": real_redis_url,
        "KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
    }


# --- keys ----------------------------------------------------------------------


@pytest.mark.parametrize("subscriber_id", AWKWARD_IDS + ["user@example.org"])
def test_subscriber_id_from_key_inverts_hash_tag(subscriber_id):
    store = StatStore(fakeredis.FakeRedis(), prefix="p:x*:")
    fav, view = store.keys(subscriber_id)
    assert export.subscriber_id_from_key(fav, "p:x*:") == (subscriber_id, "fav")
    assert export.subscriber_id_from_key(view, "p:x*:") == (subscriber_id, "view")
    assert export.subscriber_id_from_tag(hash_tag(subscriber_id)[1:-1]) == subscriber_id


@pytest.mark.parametrize(
    "key", ["p:{a}:other", "q:{a}:fav", "p:{a%}:fav", "p:{a{b}:view", "p:a:fav"]
)
def test_keys_not_written_by_the_store_are_not_subscribers(key):
    assert export.subscriber_id_from_key(key, "p:") is None


def test_seen_ids_detects_every_repeat_across_growth():
    seen = sources.SeenIds()
    ids = [f"user{i}" for i in range(5000)]
    assert all(seen.add(i) for i in ids)
    assert not any(seen.add(i) for i in ids)
    assert len(seen) == 5000


# --- JSON Lines: the same result and the same errors as the API ---------------------

INITIAL = {
    "favorites": ["f1", "f2"],
    "view_data": [
        {"asset_id": "a1", "play_count": 1, "view_time": 10, "user_rating": 2},
        {"asset_id": "a2", "pause_time": 5, "last_played_on": 1700000000000},
    ],
}
DELTAS = [
    {"view_data": [{"asset_id": "a1", "play_count": None, "pause_time": 7}]},
    {"favorites": [], "view_data": [{"asset_id": "a3"}]},
    {"favorites": ["f3", "f3", "f1"]},
    {"view_data": [{"asset_id": "a2", "user_rating": 3.5}, {"asset_id": "a2"}]},
    {},
]


@pytest.mark.parametrize("delta", [False, True], ids=["overwrite", "delta"])
def test_jsonl_import_stores_what_the_same_puts_store(
    client, redis_client, conf, tmp_path, delta
):
    cases = bodies(40, seed=3) if not delta else [dict(d) for d in DELTAS] * 2
    lines = []
    for n, body in enumerate(cases):
        body = {k: v for k, v in body.items() if k != "subscriber_id"}
        via_api, via_bulk = f"api-{n}", f"bulk-{n}{AWKWARD_IDS[n % 9]}"
        if delta:  # both start from the same stored history
            put_ok(client, via_api, INITIAL, False)
            put_ok(client, via_bulk, INITIAL, False)
        put_ok(client, via_api, body, delta)
        lines.append({"subscriber_id": via_bulk, **body})
    report = run(
        write(tmp_path / "in.jsonl", jsonl(lines)), conf, redis_client, delta=delta
    )
    assert (report.status, report.applied, report.rejected) == (0, len(cases), 0)
    for n in range(len(cases)):
        bulk_id = f"bulk-{n}{AWKWARD_IDS[n % 9]}"
        assert api_get(client, bulk_id) == api_get(client, f"api-{n}")


def _bad_bodies() -> list[bytes]:
    """Bodies the API refuses (MAX_ITEMS=3, MAX_BODY_BYTES=400 below)."""
    return [
        b'{"favorites": ["a",]}',
        b'{"favorites": [NaN]}',
        b'{"favorites": [], "favorites": []}',
        b'{"favorites": ["\\ud800"]}',
        b'{"favorites": ["\xff"]}',
        b"[1, 2]",
        b'"text"',
        b'{"favorites": null}',
        b'{"favourites": ["a"]}',
        b'{"user_id": "someone-else"}',
        b'{"favorites": ["a", "b", "c", "d"]}',
        b'{"view_data": [{"asset_id": "a"}, {"asset_id": "b"}, {"asset_id": "c"}, '
        b'{"asset_id": "d"}]}',
        b'{"view_data": [{"asset_id": "a"}, {"asset_id": "", "play_count": -1}, '
        b'{"asset_id": "c", "user_rating": true, "view_time": 1.5, "x": 1}]}',
        b'{"favorites": ["' + b"x" * 400 + b'"]}',
    ]


@pytest.fixture
def small_limits(settings):
    """Limits small enough to hit; requested before ``app``, which uses them."""
    settings.update(MAX_ITEMS=3, MAX_BODY_BYTES=400)
    return load_settings(settings)


def test_rejects_carry_the_error_the_api_gives(
    small_limits, client, store, redis_client, tmp_path
):
    conf = small_limits
    lines, expected = [], []
    for n, raw in enumerate(_bad_bodies()):
        sid = f"bad-{n}"
        reply = api_put(client, sid, raw, False)
        assert reply.status_code in (400, 413), raw
        answer = reply.json
        has_id = raw.startswith(b"{") and b"NaN" not in raw
        # The id goes last: parse errors point at the same column.
        lines.append(
            raw[:-1] + f', "subscriber_id": "{sid}"}}'.encode() if has_id else raw
        )
        parsed = "errors" in answer or "entries" in answer["reason"]
        expected.append((answer, sid if has_id and parsed else None))
    path = write(tmp_path / "in.jsonl", b"\n".join(lines) + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    report = run(path, conf, redis_client, rejects=str(rejects))
    assert (report.status, report.applied, report.rejected) == (1, 0, len(lines))
    got = [json.loads(x) for x in rejects.read_bytes().splitlines()]
    for n, (detail, (answer, sid)) in enumerate(zip(got, expected, strict=True)):
        assert detail["line"] == n + 1
        assert detail["message"] == answer["message"], detail
        assert detail["reason"] == answer["reason"], detail
        assert detail.get("errors") == answer.get("errors"), detail
        assert detail["subscriber_id"] == sid, detail
    assert exported(store) == b""


def test_subscriber_id_rejects_give_the_reasons_of_the_path(
    client, conf, fake, tmp_path
):
    lines = [
        b'{"favorites": []}',
        b'{"subscriber_id": 7}',
        b'{"subscriber_id": ""}',
        b'{"subscriber_id": "' + b"x" * 257 + b'"}',
        b'{"subscriber_id": "a\\u0001b"}',
    ]
    rejects = tmp_path / "r.jsonl"
    report = run(
        write(tmp_path / "in.jsonl", b"\n".join(lines)),
        conf,
        fake,
        rejects=str(rejects),
    )
    got = [json.loads(x) for x in rejects.read_bytes().splitlines()]
    assert report.rejected == 5 and report.status == 1
    assert [d["reason"] for d in got[:2]] == [
        "subscriber_id is required",
        "subscriber_id must be a string",
    ]
    assert got[0]["subscriber_id"] is None and got[1]["subscriber_id"] is None
    for detail, path_id in zip(got[2:], ["", "x" * 257, "a%01b"], strict=True):
        answer = client.get(PATH + path_id, headers=ADMIN).json
        assert (detail["message"], detail["reason"]) == (
            answer["message"],
            answer["reason"],
        )


def test_blank_lines_and_crlf_are_read_like_the_lines_they_hold(conf, fake, tmp_path):
    data = b'\n  \r\n{"subscriber_id": "a", "favorites": ["x"]}\r\n\n'
    data += b'{"subscriber_id": "b"}'  # no final newline
    report = run(write(tmp_path / "in.jsonl", data), conf, fake)
    assert (report.status, report.read, report.applied) == (0, 2, 2)
    store = StatStore(fake, conf.KEY_PREFIX)
    assert store.get("a")["favorites"] == ["x"]


def test_a_subscriber_on_several_lines_ends_as_its_last_line(conf, fake, tmp_path):
    lines = [{"subscriber_id": "s", "favorites": [f"f{i}"]} for i in range(5)]
    run(write(tmp_path / "in.jsonl", jsonl(lines)), conf, fake, batch=2)
    assert StatStore(fake, conf.KEY_PREFIX).get("s")["favorites"] == ["f4"]


# --- CSV ------------------------------------------------------------------------


def test_csv_import_equals_the_jsonl_import_of_the_same_data(fake, settings, tmp_path):
    subscribers = bodies(300, seed=5)
    json_conf = load_settings({**settings, "KEY_PREFIX": settings["KEY_PREFIX"] + "j:"})
    csv_conf = load_settings({**settings, "KEY_PREFIX": settings["KEY_PREFIX"] + "c:"})
    run(write(tmp_path / "in.jsonl", jsonl(subscribers)), json_conf, fake)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(gen.COLUMNS)
    for body in subscribers:
        writer.writerows(gen.csv_rows(body))
    report = run(
        write(tmp_path / "in.csv", buf.getvalue()), csv_conf, fake, format="csv"
    )
    assert report.status == 0 and report.rejected == 0
    from_json = exported(StatStore(fake, json_conf.KEY_PREFIX))
    from_csv = exported(StatStore(fake, csv_conf.KEY_PREFIX))
    assert from_json and sorted_lines(from_csv) == sorted_lines(from_json)


def test_csv_rows_make_records_favorites_and_empty_records(conf, fake, tmp_path):
    data = HEADER + (
        "s1,a1,3,5400,,1700000000000,3.5,\n"
        "s1,f1,,,,,,TRUE\n"  # a favorite only
        "s1,a2,,,,,,\n"  # an empty record
        "s1,a3,1,,,,4,true\n"  # viewed and a favorite
        "s1,f0,,,,,,True\n"
        "s1,a1,,,310,,4,\n"  # a later row of a1: its fields win, as in a PUT
        "s2,a9,,,,,,false\n"  # favorites given and empty
    )
    report = run(write(tmp_path / "in.csv", data), conf, fake, format="csv")
    assert (report.status, report.read, report.applied) == (0, 7, 2)
    store = StatStore(fake, conf.KEY_PREFIX)
    assert store.get("s1") == {
        "favorites": ["f1", "a3", "f0"],
        "view_data": [
            {
                "asset_id": "a1",
                "play_count": 3,
                "view_time": 5400,
                "pause_time": 310,
                "last_played_on": 1700000000000,
                "user_rating": 4,
            },
            {"asset_id": "a2"},
            {"asset_id": "a3", "play_count": 1, "user_rating": 4},
        ],
    }
    assert store.get("s2") == {"favorites": [], "view_data": [{"asset_id": "a9"}]}


def test_csv_delta_keeps_favorites_when_no_row_names_any(conf, fake, tmp_path):
    store = StatStore(fake, conf.KEY_PREFIX)
    store.put(
        "s",
        {
            "favorites": ["keep"],
            "view_data": [{"asset_id": "a", "play_count": 1, "view_time": 2}],
        },
        delta=False,
    )
    data = HEADER + "s,a,5,,,,,\n"
    run(write(tmp_path / "in.csv", data), conf, fake, format="csv", delta=True)
    assert store.get("s") == {
        "favorites": ["keep"],
        "view_data": [{"asset_id": "a", "play_count": 5, "view_time": 2}],
    }


def test_csv_rows_of_a_subscriber_must_be_contiguous(conf, fake, tmp_path):
    data = HEADER + "s1,a1,1,,,,,\ns2,b1,2,,,,,\ns1,a2,3,,,,,\ns1,a3,,,,,,\n"
    rejects = tmp_path / "r.jsonl"
    report = run(
        write(tmp_path / "in.csv", data), conf, fake, format="csv", rejects=str(rejects)
    )
    assert (report.status, report.applied, report.rejected) == (1, 2, 1)
    (detail,) = [json.loads(x) for x in rejects.read_bytes().splitlines()]
    assert (detail["line"], detail["last_line"], detail["subscriber_id"]) == (
        4,
        5,
        "s1",
    )
    assert "not contiguous" in detail["reason"]
    store = StatStore(fake, conf.KEY_PREFIX)
    assert store.get("s1")["view_data"] == [{"asset_id": "a1", "play_count": 1}]


def test_csv_cells_are_checked_with_the_api_messages(conf, fake, tmp_path):
    data = HEADER + (
        "s1,a1,-3,1.5,+4,,6,\n"  # read as JSON would: schema messages
        "s2,a1,1,,,,,yes\n"
        "s3,a1,1\n"
        ",a1,1,,,,,\n"
        "s5,a1,007,,,,,\n"
        "s6,a1,1,2,3,4,5,false\n"
    )
    rejects = tmp_path / "r.jsonl"
    report = run(
        write(tmp_path / "in.csv", data), conf, fake, format="csv", rejects=str(rejects)
    )
    got = {d["line"]: d for d in map(json.loads, rejects.read_bytes().splitlines())}
    assert report.applied == 1 and report.rejected == 5
    assert got[2]["errors"] == {
        "view_data": {
            "0": {
                "play_count": [
                    "Must be greater than or equal to 0 and less than or equal to "
                    "9007199254740991."
                ],
                "view_time": ["Not a valid integer."],
                "pause_time": ["Not a valid integer."],
                "user_rating": [
                    "Must be greater than or equal to 0 and less than or equal to 5."
                ],
            }
        }
    }
    assert "favorite must be true, false or empty" in got[3]["reason"]
    assert "3 cells, the header has 8" in got[4]["reason"]
    assert got[5]["reason"] == "subscriber_id is required"
    assert got[6]["errors"] == {
        "view_data": {"0": {"play_count": ["Not a valid integer."]}}
    }


def test_csv_too_many_rows_for_a_subscriber_is_payload_too_large(
    settings, fake, tmp_path
):
    conf = load_settings({**settings, "MAX_ITEMS": 3})
    data = HEADER + "".join(f"s,a{i},1,,,,,\n" for i in range(50)) + "t,a,,,,,,\n"
    rejects = tmp_path / "r.jsonl"
    report = run(
        write(tmp_path / "in.csv", data), conf, fake, format="csv", rejects=str(rejects)
    )
    (detail,) = [json.loads(x) for x in rejects.read_bytes().splitlines()]
    assert (detail["message"], detail["reason"]) == (
        "PAYLOAD_TOO_LARGE",
        "view_data has 50 entries, more than 3",
    )
    assert report.applied == 1


@pytest.mark.parametrize(
    "header",
    [
        "subscriber_id,asset_id,favourite\n",
        "subscriber_id,play_count\n",
        "subscriber_id,asset_id,asset_id\n",
        "",
    ],
)
def test_an_unusable_csv_header_aborts_before_writing(conf, fake, tmp_path, header):
    path = write(tmp_path / "in.csv", header + "s,a,1\n" if header else "")
    with pytest.raises(sources.UnusableInput):
        run(path, conf, fake, format="csv")
    assert exported(StatStore(fake, conf.KEY_PREFIX)) == b""


# --- the command line: files, exit statuses, rejects, checkpoints ------------------


@pytest.mark.real_redis
def test_gzip_and_stdin_inputs_import_like_the_plain_file(
    cli_env, key_prefix, real, tmp_path
):
    data = jsonl(bodies(50, seed=8))
    store = StatStore(real, key_prefix)
    assert main(["import", str(write(tmp_path / "a.jsonl", data))]) == 0
    plain = exported(store)
    delete_prefix(real, key_prefix)
    assert (
        main(["import", str(write(tmp_path / "a.jsonl.gz", gzip.compress(data)))]) == 0
    )
    assert sorted_lines(exported(store)) == sorted_lines(plain)
    delete_prefix(real, key_prefix)
    done = subprocess.run(
        [sys.executable, "-m", "stat_service", "import", "-"],
        input=gzip.compress(data),
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted_lines(exported(store)) == sorted_lines(plain)
    assert b"import: read 50, applied 50, rejected 0" in done.stderr


@pytest.mark.real_redis
def test_exit_status_is_0_1_or_2(cli_env, tmp_path, capsys):
    good = write(tmp_path / "good.jsonl", jsonl(bodies(5)))
    bad = write(tmp_path / "bad.jsonl", jsonl(bodies(5)) + b"{\n")
    assert main(["import", str(good)]) == 0
    assert main(["import", str(bad)]) == 1
    assert main(["import", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot open" in capsys.readouterr().err
    csv_path = write(tmp_path / "x.csv", "nope\n")
    assert main(["import", str(csv_path)]) == 2  # the .csv name selects CSV
    assert main(["import", str(good), "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    assert main(["import", "-", "--checkpoint", str(tmp_path / "c")]) == 2


@pytest.mark.real_redis
def test_max_rejects_aborts_at_the_reject_past_the_limit(
    cli_env, key_prefix, real, tmp_path
):
    lines = [
        json.dumps({"subscriber_id": f"s{i}", "favorites": ["x"]}).encode()
        for i in range(10)
    ]
    lines[2] = lines[5] = lines[7] = b"not json"
    path = write(tmp_path / "in.jsonl", b"\n".join(lines) + b"\n")
    rejects, checkpoint = tmp_path / "r.jsonl", tmp_path / "ck.json"
    status = main(
        [
            "import",
            str(path),
            "--max-rejects",
            "1",
            "--rejects",
            str(rejects),
            "--checkpoint",
            str(checkpoint),
            "--batch",
            "4",
        ]
    )
    assert status == 2
    assert [json.loads(x)["line"] for x in rejects.read_bytes().splitlines()] == [3, 6]
    assert json.loads(checkpoint.read_text())["line"] == 6
    store = StatStore(real, key_prefix)
    assert ids(exported(store)) == ["s0", "s1", "s3", "s4"]
    # Resumed with a higher limit: goes on after line 6, keeps the first rejects.
    status = main(
        [
            "import",
            str(path),
            "--max-rejects",
            "5",
            "--rejects",
            str(rejects),
            "--checkpoint",
            str(checkpoint),
        ]
    )
    assert status == 1
    assert [json.loads(x)["line"] for x in rejects.read_bytes().splitlines()] == [
        3,
        6,
        8,
    ]
    assert ids(exported(store)) == ["s0", "s1", "s3", "s4", "s6", "s8", "s9"]


@pytest.mark.real_redis
def test_checkpoint_of_another_run_is_refused(cli_env, tmp_path, capsys):
    path = write(tmp_path / "in.jsonl", jsonl(bodies(3)))
    checkpoint = str(tmp_path / "ck.json")
    assert main(["import", str(path), "--checkpoint", checkpoint]) == 0
    assert (
        main(["import", str(path), "--checkpoint", checkpoint, "--mode", "delta"]) == 2
    )
    assert "belongs to another run" in capsys.readouterr().err
    # The same run again: already complete, nothing re-read.
    assert main(["import", str(path), "--checkpoint", checkpoint]) == 0
    assert "already complete" in capsys.readouterr().err


def _spawn_import(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stat_service", "import", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, bytes]:
    """Exit status and standard error of a spawned import."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr


def _wait_for_progress(checkpoint: Path, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if checkpoint.exists():
            saved = json.loads(checkpoint.read_text())
            if saved["line"] > 0:
                return saved["line"]
        assert proc.poll() is None, _finish(proc)
        time.sleep(0.005)
    raise AssertionError("no checkpoint was written")


def _reference(items, settings_dict, client, tmp_path, **options) -> list[bytes]:
    """The export of an uninterrupted import into a prefix of its own."""
    prefix = settings_dict["KEY_PREFIX"] + "ref:"
    conf = load_settings({**settings_dict, "KEY_PREFIX": prefix})
    path = write(tmp_path / "ref.jsonl", jsonl(items))
    assert run(path, conf, client, **options).status in (0, 1)
    return sorted_lines(exported(StatStore(client, prefix)))


@pytest.mark.real_redis
def test_import_killed_mid_way_resumes_to_the_uninterrupted_state(
    cli_env, settings, key_prefix, real, tmp_path
):
    items = bodies(6000, seed=11) + [{"subscriber_id": "x", "favorites": 1}]
    path = write(tmp_path / "in.jsonl", jsonl(items))
    checkpoint, rejects = tmp_path / "ck.json", tmp_path / "r.jsonl"
    args = [
        str(path),
        "--batch",
        "20",
        "--checkpoint",
        str(checkpoint),
        "--rejects",
        str(rejects),
    ]
    proc = _spawn_import(cli_env, *args)
    line = _wait_for_progress(checkpoint, proc)
    proc.kill()  # SIGKILL: no cleanup, a batch may be half applied
    _finish(proc)
    assert line < len(items)
    again = _spawn_import(cli_env, *args)
    status, stderr = _finish(again)
    assert status == 1, stderr
    assert b"resumed after line" in stderr
    saved = json.loads(checkpoint.read_text())  # counts add up: nothing read twice
    assert (saved["read"], saved["applied"], saved["rejected"]) == (6001, 6000, 1)
    assert len(rejects.read_bytes().splitlines()) == 1
    store = StatStore(real, key_prefix)
    mine = sorted_lines(exported(store))
    reference = _reference(items, settings, real, tmp_path)
    assert mine == reference and len(mine) > 5000


@pytest.mark.real_redis
def test_ctrl_c_finishes_the_batch_and_resumes_a_delta_run(
    cli_env, settings, key_prefix, real, tmp_path
):
    rnd = random.Random(4)
    items = []
    for i in range(5000):  # few subscribers, many deltas each: order matters
        sub = f"s{rnd.randrange(300)}"
        asset = f"a{rnd.randrange(5)}"
        record = {"asset_id": asset, "play_count": i}
        if i % 7 == 0:
            record["play_count"] = None
        items.append({"subscriber_id": sub, "view_data": [record]})
        if i % 11 == 0:
            items.append({"subscriber_id": sub, "favorites": [asset, f"a{i}"]})
    path = write(tmp_path / "in.jsonl", jsonl(items))
    checkpoint = tmp_path / "ck.json"
    args = [
        str(path),
        "--mode",
        "delta",
        "--batch",
        "10",
        "--checkpoint",
        str(checkpoint),
    ]
    proc = _spawn_import(cli_env, *args)
    _wait_for_progress(checkpoint, proc)
    proc.send_signal(signal.SIGINT)
    status, stderr = _finish(proc)
    assert status == 130, stderr
    assert b"interrupted (SIGINT)" in stderr and b"Traceback" not in stderr
    saved = json.loads(checkpoint.read_text())
    assert not saved["done"] and 0 < saved["line"] < len(items)
    again = _spawn_import(cli_env, *args)
    status, stderr = _finish(again)
    assert status == 0, stderr
    assert f"resumed after line {saved['line']}".encode() in stderr
    saved = json.loads(checkpoint.read_text())
    assert saved["done"] and saved["read"] == saved["applied"] == len(items)
    mine = sorted_lines(exported(StatStore(real, key_prefix)))
    assert mine == _reference(items, settings, real, tmp_path, delta=True)


@pytest.mark.real_redis
def test_jobs_split_by_subscriber_and_keep_each_ones_order(
    settings, key_prefix, real, real_redis_url, tmp_path
):
    conf = load_settings({**settings, "REDIS_URL": real_redis_url})
    items = bodies(1500, seed=12)
    items += [
        {"subscriber_id": f"dup{i % 7}", "favorites": [f"f{i}"]} for i in range(700)
    ]
    items.insert(100, {"subscriber_id": "bad", "favorites": [1]})
    path = write(tmp_path / "in.jsonl", jsonl(items))
    rejects, checkpoint = tmp_path / "r.jsonl", tmp_path / "ck.json"
    report = importer.run_import(
        importer.ImportOptions(
            path=str(path),
            jobs=2,
            batch=10,
            rejects=str(rejects),
            checkpoint=str(checkpoint),
        ),
        conf,
    )
    assert (report.status, report.applied, report.rejected) == (1, len(items) - 1, 1)
    assert json.loads(rejects.read_text())["line"] == 101
    saved = json.loads(checkpoint.read_text())
    assert saved["done"] and saved["line"] == len(items)
    store = StatStore(real, key_prefix)
    assert [store.get(f"dup{k}")["favorites"] for k in range(7)] == [
        [f"f{693 + k}"] for k in range(7)
    ]
    assert sorted_lines(exported(store)) == _reference(items, settings, real, tmp_path)


# --- export, round trip, erase ------------------------------------------------------


@pytest.mark.real_redis
def test_export_wipe_import_export_is_byte_identical(
    cli_env, key_prefix, real, tmp_path
):
    items = bodies(3000, seed=21, assets=6, favorites=4)
    items += [
        {"subscriber_id": sid, "view_data": [{"asset_id": "e"}]} for sid in AWKWARD_IDS
    ]
    source = write(tmp_path / "in.jsonl", jsonl(items))
    assert main(["import", str(source)]) == 0
    first = tmp_path / "first.jsonl"
    assert main(["export", "--out", str(first)]) == 0
    lines = first.read_bytes().splitlines()
    stored = [b for b in items if b.get("favorites") or b.get("view_data")]
    assert len(lines) == len({b["subscriber_id"] for b in stored}) > 2500
    # Every field, nulls dropped, empty records, favorites- or views-only.
    assert b'"play_count":9007199254740991' in first.read_bytes()
    assert any(b'"view_data":[]' in x for x in lines)
    assert any(b'"favorites":[]' in x for x in lines)
    assert any(b'{"asset_id":"e"}' in x for x in lines)
    delete_prefix(real, key_prefix)
    assert main(["import", str(first)]) == 0
    second = tmp_path / "second.jsonl.gz"
    assert main(["export", "--out", str(second)]) == 0
    again = gzip.decompress(second.read_bytes())
    assert sorted_lines(again) == sorted(lines)
    # And each line is what the API's GET gives for the subscriber.
    store = StatStore(real, key_prefix)
    for line in lines[:200]:
        doc = json.loads(line)
        assert store.get(doc.pop("subscriber_id")) == doc


@pytest.mark.real_redis
def test_export_one_subscriber_and_erase_one(
    cli_env, key_prefix, real, tmp_path, capsysbinary
):
    store = StatStore(real, key_prefix)
    for sid in ("a{b}", "other"):
        store.put(
            sid,
            {"favorites": ["x"], "view_data": [{"asset_id": "v", "play_count": 2}]},
            delta=False,
        )
    capsysbinary.readouterr()
    assert main(["export", "--subscriber", "a{b}"]) == 0
    assert capsysbinary.readouterr().out == (
        b'{"subscriber_id":"a{b}","favorites":["x"],'
        b'"view_data":[{"asset_id":"v","play_count":2}]}\n'
    )
    assert main(["erase", "--subscriber", "a{b}"]) == 0
    assert real.exists(*store.keys("a{b}")) == 0
    assert real.exists(*store.keys("other")) == 2
    assert main(["erase", "--subscriber", "a\x01"]) == 2


def test_export_lists_each_subscriber_once_whichever_keys_it_has(conf, fake):
    store = StatStore(fake, conf.KEY_PREFIX)
    store.put(
        "both", {"favorites": ["f"], "view_data": [{"asset_id": "v"}]}, delta=False
    )
    store.put("fav-only", {"favorites": ["f"]}, delta=False)
    store.put("view-only", {"view_data": [{"asset_id": "v"}]}, delta=False)
    store.put("nothing", {}, delta=False)
    fake.set(conf.KEY_PREFIX + "{stray%}:fav", "not ours")
    fake.set(conf.KEY_PREFIX[:-1] + "{x}:fav", "another prefix")
    ids = [json.loads(x)["subscriber_id"] for x in exported(store).splitlines()]
    assert sorted(ids) == ["both", "fav-only", "view-only"]


# --- what reaches Redis ---------------------------------------------------------------


@pytest.fixture(scope="module")
def private_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


def _commandstats(client) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stats["calls"]
        for name, stats in client.info("commandstats").items()
    }


@pytest.mark.real_redis
def test_one_evalsha_per_subscriber_and_export_by_scan(
    private_server, settings, tmp_path
):
    client = redis.Redis.from_url(private_server.url)
    client.flushall()
    client.script_flush()  # the importer loads the scripts first
    conf = load_settings({**settings, "REDIS_URL": private_server.url})
    items = bodies(1234, seed=30)
    path = write(tmp_path / "in.jsonl", jsonl(items))
    client.config_resetstat()
    report = run(path, conf, client, batch=100)
    assert report.applied == 1234
    stats = _commandstats(client)
    assert stats.pop("evalsha") == 1234  # 13 round trips of up to 100
    assert stats.pop("script|load") == 3  # the three scripts, once, up front
    # Redis 7 also counts what the script runs; the client sent nothing else.
    inside_the_script = {"del", "zadd", "zrange", "hset"}
    assert set(stats) <= {"config|resetstat", "client|setinfo"} | inside_the_script

    class NoKeys(redis.Redis):
        def keys(self, *args, **kwargs):
            raise AssertionError("KEYS must never be used")

    spy = NoKeys.from_url(private_server.url)
    client.config_resetstat()
    lines = exported(StatStore(spy, conf.KEY_PREFIX)).splitlines()
    stats = _commandstats(client)
    assert "keys" not in stats and stats["scan"] >= 1
    stored = {
        b["subscriber_id"] for b in items if b.get("favorites") or b.get("view_data")
    }
    assert sorted(json.loads(x)["subscriber_id"] for x in lines) == sorted(stored)
    spy.close()
    client.close()


# --- routing lines to worker processes ------------------------------------------


def _parsed_route(line: bytes, jobs: int) -> int:
    subscriber_id = json.loads(line)["subscriber_id"]
    return zlib.crc32(subscriber_id.encode("utf-8", "surrogatepass")) % jobs


@settings(max_examples=300, deadline=None)
@given(
    subscriber_id=st.text(min_size=1, max_size=20).filter(
        lambda s: all(c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF for c in s)
    ),
    ascii_only=st.booleans(),
    id_last=st.booleans(),
    spaced=st.booleans(),
    jobs=st.integers(2, 7),
)
def test_a_subscribers_lines_go_to_one_worker_however_its_id_is_written(
    subscriber_id, ascii_only, id_last, spaced, jobs
):
    from stat_service.bulk.writes import route

    fields = [("favorites", ['a\\"subscriber_id\\": "x"']), ("view_data", [])]
    fields.insert(len(fields) if id_last else 0, ("subscriber_id", subscriber_id))
    separators = (", ", " : ") if spaced else (",", ":")
    line = json.dumps(
        dict(fields), ensure_ascii=ascii_only, separators=separators
    ).encode()
    plain = json.dumps({"subscriber_id": subscriber_id}, ensure_ascii=False).encode()
    assert route((1, 1, 1, line), jobs) == _parsed_route(line, jobs)
    assert route((2, 2, 1, plain), jobs) == _parsed_route(line, jobs)
