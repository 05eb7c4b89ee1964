"""Time every Lua script of the service on small and full histories.

API.md section 8: at any history size the bounds allow, no request keeps
Redis busy for more than a small fraction of the Redis socket timeout
(REDIS_SOCKET_TIMEOUT, 0.5 s). This script starts a private redis-server
(never the one on 127.0.0.1:6379), builds three histories through
``StatStore`` (with ``Bounds``):

- ``100``: 100 records (all five fields) and 100 favorites;
- ``full``: MAX_RECORDS (5,000) records with all fields and MAX_FAVORITES
  (5,000) favorites;
- ``ties``: 5,000 records without ``last_played_on`` but with
  ``pause_time`` > 0, and 5,000 favorites: "Continue Watching" holds them
  all and orders them by asset id alone, the most comparisons of ids.

Asset ids are 12 characters as in bench/run.py (``asset-000000`` ...,
consecutive, so ids share long prefixes). Then, for each script (through
the ``StatStore`` method the views call) and each history, it runs the
call ``BENCH_SCRIPT_CALLS`` times (default 50) between ``CONFIG RESETSTAT``
and ``INFO commandstats`` and reports EVALSHA's ``usec_per_call``: Redis'
own time for the script, commands inside it included, without the network
or the client. Writes are undone before each call by ``COPY`` from a
pristine copy of the history (not counted: only EVALSHA is read), so every
call sees the same history. ``SLOWLOG`` (threshold 0 on this private
server) gives the slowest single call.

Also: the HTTP body of a page of 20 from a full history (Flask test client
on the same Redis), and bytes per stored record of a 100-record and a
5,000-record history (``MEMORY USAGE``). Prints a table and writes
bench/script_times.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402  (needs ROOT on sys.path)
    CLK_TCK,
    RedisServer,
    env_int,
    full_record,
    loadavg,
    log,
    proc_stat,
    token,
)

RESULTS = BENCH / "script_times.json"
CALLS = env_int("BENCH_SCRIPT_CALLS", 50, minimum=1)
PREFIX = "benchscripts:"
PRISTINE = "benchscripts-pristine:"
ACTIVITY = "/metax/2.1/activity"
HISTORIES = {  # name: (records, favorites, last_played_on on every record)
    "100": (100, 100, True),
    "full": (5000, 5000, True),
    "ties": (5000, 5000, False),
}
COLUMNS = {
    "100": "100 records",
    "full": "full (5,000)",
    "ties": "full, ties",
    "long-ascii": "256-char ids",
    "long-utf8": "256 x 4-byte",
}
NEW_ASSET = "asset-new001"  # 12 characters, in no history
PAUSE_SECONDS = 754  # what PUT .../pausetime?time=754000 stores


def subscriber(history: str) -> str:
    return f"scripts-{history}@example.org"


def build_history(history: str) -> dict:
    """The body of an overwrite PUT holding the whole history."""
    records, favorites, played = HISTORIES[history]
    rnd = random.Random(f"script-times-{history}")
    view_data = []
    for k in range(records):
        record = full_record(rnd, f"asset-{k:06d}")
        if not played:
            del record["last_played_on"]
            record["pause_time"] = rnd.randrange(1, 7_201)
        view_data.append(record)
    guids = [f"asset-{n:06d}" for n in rnd.sample(range(10**6), favorites)]
    return {"favorites": guids, "view_data": view_data}


# Redis' CPU time per call is given only when the calls took this many clock
# ticks in all (usually 10 ms each): below that it is too coarse to mean much.
CPU_TICKS_MIN = 20


class Timer:
    """Runs one store call CALLS times and reads Redis' own time for it."""

    def __init__(self, client, redis_pid: int | None = None):
        self.client = client
        self.redis_pid = redis_pid

    def _cpu_ticks(self) -> int:
        return proc_stat(self.redis_pid)[1] if self.redis_pid else 0

    def restore(self, store, sub: str):
        """Undo any write: both keys back to the pristine copy (COPY ...
        REPLACE, not an EVALSHA, so not in the figure)."""
        live = store.keys(sub)
        saved = tuple(PRISTINE + key for key in live)

        def undo():
            pipe = self.client.pipeline(transaction=False)
            for src, dst in zip(saved, live, strict=True):
                pipe.copy(src, dst, replace=True)
            pipe.execute()

        return undo

    def measure(self, call, undo=None, check=None) -> dict:
        client = self.client
        if undo:
            undo()
        reply = call()  # unmeasured: loads the script, warms the caches
        if check:
            check(reply)
        client.config_resetstat()
        client.slowlog_reset()
        walls = []
        ticks = self._cpu_ticks()
        for _ in range(CALLS):
            if undo:
                undo()
            started = time.perf_counter()
            reply = call()
            walls.append(time.perf_counter() - started)
        ticks = self._cpu_ticks() - ticks
        stats = client.info("commandstats")
        slow = client.slowlog_get(CALLS + 1000)
        if undo:
            undo()
        if check:
            check(reply)
        evalsha = stats.get("cmdstat_evalsha", {})
        others = {
            name.removeprefix("cmdstat_"): value["calls"]
            for name, value in stats.items()
            if name in ("cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro")
        }
        if evalsha.get("calls") != CALLS or others:
            raise RuntimeError(
                f"expected {CALLS} EVALSHA calls, INFO commandstats has "
                f"{evalsha.get('calls')} (and {others})"
            )
        durations = [
            entry["duration"]
            for entry in slow
            if _command(entry).split(" ", 1)[0].lower() == "evalsha"
        ]
        return {
            "calls": CALLS,
            "usec_per_call": float(evalsha["usec_per_call"]),
            "ms_per_call": float(evalsha["usec_per_call"]) / 1000,
            "max_ms": max(durations) / 1000 if len(durations) == CALLS else None,
            "client_ms_median": statistics.median(walls) * 1000,
            # redis-server's CPU time (utime+stime) over the calls, per call:
            # unlike the wall-clock figures above, not inflated by time spent
            # waiting for a CPU on a loaded machine. With ``undo`` it also
            # holds the COPY that restores the history before each call.
            "redis_cpu_ms_per_call": (
                ticks / CLK_TCK * 1000 / CALLS if ticks >= CPU_TICKS_MIN else None
            ),
            "redis_cpu_includes_restore": undo is not None,
        }


def _command(entry) -> str:
    command = entry.get("command", b"")
    return command.decode("utf-8", "replace") if isinstance(command, bytes) else command


def stores(client, history: str):
    """StatStores with the bounds each case needs (see cases())."""
    from stat_service.storage.store import Bounds, StatStore

    records, favorites, _ = HISTORIES[history]

    def store(**bounds):
        return StatStore(client, prefix=PREFIX, bounds=Bounds(**bounds))

    return {
        "default": store(),
        # the history is exactly at MAX_RECORDS (the 100-record one with a
        # lowered MAX_RECORDS=100), so an added record meets the bound
        "reject_at_bound": store(max_records=records),
        "evict_at_bound": store(max_records=records, evict=True),
        # room for one more favorite, or none
        "fav_room": store(max_favorites=favorites + 1),
        "fav_at_bound": store(max_favorites=favorites),
    }


def expect(condition, what: str):
    def check(reply):
        if not condition(reply):
            raise RuntimeError(f"unexpected reply for {what}: {reply!r}")

    return check


def refused(call):
    """A call that must raise HistoryFull (the 409): returns the reason."""
    from stat_service.storage.store import HistoryFull

    def wrapped():
        try:
            call()
        except HistoryFull as exc:
            return exc.reason
        raise RuntimeError("the bound did not refuse the write")

    return wrapped


def cases(client, history: str, body: dict) -> list[tuple]:
    """(script, case, kwargs of Timer.measure[, note]) for one history."""
    s = stores(client, history)
    default = s["default"]
    sub = subscriber(history)
    undo = Timer(client).restore(default, sub)
    records = body["view_data"]
    favorites = body["favorites"]
    middle = records[len(records) // 2]["asset_id"]
    fav_middle = favorites[len(favorites) // 2]

    def pause(store, asset):
        view = [{"asset_id": asset, "pause_time": PAUSE_SECONDS}]
        return lambda: store.put(sub, {"view_data": view}, delta=True)

    def cursor_after_middle(kind):
        total, page = default.records_page(sub, kind, len(records) // 2)
        if total == 0:  # the list is empty ("watch" of the ties history)
            return (-1, middle), total
        last = page[-1]
        return (last.get("last_played_on", -1), last["asset_id"]), total

    fav_after = default.favorites_page(sub, len(favorites) // 2)[1][-1][1]
    out = [
        (
            "put_delta",
            "update 1 record (PUT pausetime)",
            {"call": pause(default, middle)},
        ),
        (
            "put_delta",
            "add 1 record at MAX_RECORDS, reject (409)",
            {"call": refused(pause(s["reject_at_bound"], NEW_ASSET))},
        ),
        (
            "put_delta",
            "add 1 record at MAX_RECORDS, evict 1",
            {
                "call": pause(s["evict_at_bound"], NEW_ASSET),
                "undo": undo,
                "check": expect(lambda r: r.evicted == 1, "evict"),
            },
        ),
        (
            "put_overwrite",
            "the whole history, rewritten",
            {"call": lambda: default.put(sub, body, delta=False)},
        ),
        ("read", "the whole history (GET)", {"call": lambda: default.get(sub)}),
        (
            "fav_add",
            "add 1 new favorite (room for it)",
            {
                "call": lambda: s["fav_room"].add_favorite(sub, NEW_ASSET),
                "undo": undo,
                "check": expect(lambda r: r[0] is True, "fav_add"),
            },
        ),
        (
            "fav_add",
            "add 1 new favorite at MAX_FAVORITES (409)",
            {"call": refused(lambda: s["fav_at_bound"].add_favorite(sub, NEW_ASSET))},
        ),
        (
            "fav_remove",
            "remove 1 favorite",
            {
                "call": lambda: default.remove_favorite(sub, fav_middle),
                "undo": undo,
                "check": expect(lambda r: r[0] is True, "fav_remove"),
            },
        ),
        (
            "fav_page",
            "first page of 20",
            {"call": lambda: default.favorites_page(sub, 21)},
        ),
        (
            "fav_page",
            "first page of 500",
            {"call": lambda: default.favorites_page(sub, 501)},
        ),
        (
            "fav_page",
            "page of 20 after a cursor (middle)",
            {"call": lambda: default.favorites_page(sub, 21, fav_after)},
        ),
    ]
    for kind in ("watch", "continue"):
        after, total = cursor_after_middle(kind)
        # "watch" of the ties history is empty: the script still scans it
        note = {"list_total": total}
        out += [
            (
                "view_page",
                f"{kind}: first page of 20",
                {"call": lambda kind=kind: default.records_page(sub, kind, 21)},
                note,
            ),
            (
                "view_page",
                f"{kind}: first page of 500",
                {"call": lambda kind=kind: default.records_page(sub, kind, 501)},
                note,
            ),
            (
                "view_page",
                f"{kind}: page of 20 after a cursor (middle)",
                {
                    "call": lambda kind=kind, after=after: default.records_page(
                        sub, kind, 21, after
                    )
                },
                note,
            ),
        ]
    out += [
        (
            "record_get",
            "1 record (GET pausetime)",
            {"call": lambda: default.get_record(sub, middle)},
        ),
        (
            "record_remove",
            "remove 1 record (DELETE watch)",
            {
                "call": lambda: default.remove_record(sub, middle),
                "undo": undo,
                "check": expect(lambda r: r is True, "record_remove"),
            },
        ),
    ]
    return out


# --- what a client receives, and memory -------------------------------------------


# The largest record a page can hold: every id at the 256-character limit
# (API.md section 6) and every number at its longest. ASCII ids, and ids of
# 4-byte UTF-8 characters (JSON carries them as 4 bytes each).
LONG_IDS = {"long-ascii": "x", "long-utf8": "\U0001d11e"}
LONGEST_COUNT = 2**53 - 1
LONGEST_RATING = 0.30000000000000004  # 0.1 + 0.2: 19 characters


def build_long_ids(client) -> list[str]:
    """25 records (a page of 20 and more) under a 256-character subscriber."""
    from stat_service.storage.store import StatStore

    store = StatStore(client, prefix=PREFIX)
    subs = []
    for name, char in LONG_IDS.items():
        sub = (name + "-" + char * 256)[:256]
        records = [
            {
                "asset_id": (f"{k:02d}" + char * 256)[:256],
                "play_count": LONGEST_COUNT,
                "view_time": LONGEST_COUNT,
                "pause_time": LONGEST_COUNT,
                "last_played_on": LONGEST_COUNT - k,
                "user_rating": LONGEST_RATING,
            }
            for k in range(25)
        ]
        guids = [r["asset_id"] for r in records]
        store.put(sub, {"favorites": guids, "view_data": records}, delta=False)
        subs.append(sub)
    return subs


def page_sizes(client, secret: str, long_subs: list[str]) -> dict:
    """HTTP bodies of a page of 20, through the service's own views."""
    from stat_service import create_app

    settings = {
        "KEY_PREFIX": PREFIX,
        "JWT_SECRET": secret,
        "LOG_LEVEL": "WARNING",
        "REDIS_CLUSTER": False,
        "TESTING": True,
    }
    for name in (  # settings from the environment that change how tokens work
        "JWT_PUBLIC_KEY",
        "JWT_JWKS_URL",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "CURSOR_SECRET",
    ):
        settings[name] = None
    settings.update(JWT_ALGORITHMS=(), JWT_ADMIN_SCOPE="stat:admin")
    app = create_app(settings, redis_client=client)
    headers = {"Authorization": f"Bearer {token(secret)}"}
    pages = [(h, subscriber(h)) for h in HISTORIES]
    pages += list(zip(LONG_IDS, long_subs, strict=True))
    sizes = {}
    with app.test_client() as http:
        for history, sub in pages:
            for kind in ("continue", "watch", "fav"):
                path = f"{ACTIVITY}/{kind}/{quote(sub, safe='@')}?limit=20"
                response = http.get(path, headers=headers)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"GET {kind} of {history}: {response.status_code} "
                        f"{response.get_data(as_text=True)[:300]}"
                    )
                data = response.get_json()
                items = data.get("view_data", data.get("favorites"))
                sizes[f"{history}/{kind}"] = {
                    "bytes": len(response.get_data()),
                    "items": len(items),
                    "total": data["total"],
                    "next_chars": len(data["next"] or ""),
                }
    return sizes


def bytes_per_record(client) -> dict:
    from stat_service.storage.store import StatStore

    store = StatStore(client, prefix=PREFIX)
    out = {}
    for history in HISTORIES:
        view = store.keys(subscriber(history))[1]
        used = client.memory_usage(view, samples=0)
        count = client.hlen(view)
        encoding = client.object("encoding", view)
        out[history] = {
            "records": count,
            "bytes": used,
            "bytes_per_record": used / count,
            "encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
        }
    return out


# --- report -----------------------------------------------------------------------


def report(results: dict) -> str:
    timeout_ms = results["redis_socket_timeout_s"] * 1000
    width = 52
    lines = [
        f"Lua scripts: Redis' own time per call (INFO commandstats usec_per_call "
        f"of EVALSHA, {results['calls']} calls each; redis-server "
        f"{results['redis_version']}; {os.cpu_count()} CPUs, load average "
        f"{results['loadavg_before']} before, {results['loadavg_after']} after)",
        f"ms per call (% of REDIS_SOCKET_TIMEOUT = {timeout_ms:g} ms)",
        "",
        f"{'script / case':<{width}}"
        + "".join(f"{COLUMNS[h]:>20}" for h in HISTORIES)
        + f"{'full / read':>13}",
    ]
    read_full = next(r for r in results["scripts"] if r["script"] == "read")
    read_full = read_full["histories"]["full"]["ms_per_call"]
    for row in results["scripts"]:
        label = f"{row['script']}: {row['case']}"
        cells = ""
        for history in HISTORIES:
            m = row["histories"][history]
            pct = m["ms_per_call"] / timeout_ms * 100
            cells += f"{m['ms_per_call']:>10.3f} ({pct:5.2f}%)"
        factor = row["histories"]["full"]["ms_per_call"] / read_full
        lines.append(f"{label[:width]:<{width}}{cells}{factor:>12.2f}x")
    worst = max(
        (
            (m["max_ms"] or m["ms_per_call"], row["script"], row["case"], h)
            for row in results["scripts"]
            for h, m in row["histories"].items()
        ),
    )
    lines += [
        "",
        f"Slowest single call (SLOWLOG): {worst[0]:.3f} ms = "
        f"{worst[0] / timeout_ms * 100:.2f}% of the timeout ({worst[1]}: "
        f"{worst[2]}, {COLUMNS[worst[3]]})",
        f"Redis CPU time per call where the calls took "
        f"{CPU_TICKS_MIN / CLK_TCK:g} s of CPU or more (not inflated by "
        "waiting for a CPU on a loaded machine; * includes the COPY restoring "
        "the history):",
    ]
    for row in results["scripts"]:
        for history, m in row["histories"].items():
            cpu = m.get("redis_cpu_ms_per_call")
            if cpu is not None:
                star = "*" if m["redis_cpu_includes_restore"] else ""
                lines.append(
                    f"  {row['script']}: {row['case']}, {COLUMNS[history]}: "
                    f"{cpu:.1f} ms{star} (wall {m['ms_per_call']:.1f} ms)"
                )
    lines += [
        "",
        "HTTP body of a page of 20 (GET .../activity/{list}/{sub}?limit=20):",
    ]
    for key, size in results["page_of_20"].items():
        history, kind = key.split("/")
        lines.append(
            f"  {kind:<9} {COLUMNS[history]:<14} {size['bytes']:>6,} bytes "
            f"({size['items']} items of {size['total']:,}; next: "
            f"{size['next_chars']} characters)"
        )
    lines.append(
        "  (12-character asset ids as in bench/run.py, 21-character subscriber "
        "ids; the last two: every id and number at its longest)"
    )
    lines += ["", "Bytes per stored record (MEMORY USAGE of the view hash / HLEN):"]
    for history, m in results["memory"].items():
        lines.append(
            f"  {COLUMNS[history]:<14} {m['bytes_per_record']:6.1f} bytes "
            f"({m['records']:,} records, {m['bytes']:,} bytes, {m['encoding']})"
        )
    return "\n".join(lines)


def main() -> int:
    import redis

    from stat_service.config import Settings
    from stat_service.storage.store import StatStore

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="stat-script-times-"))
    server = client = None
    failed = False
    try:
        before = loadavg()
        server = RedisServer(workdir)
        # No socket timeout: a slow script is measured, not cut short.
        client = redis.Redis.from_url(server.url)
        server.wait_ready(client)
        version = client.info("server")["redis_version"]
        log(f"redis-server {version} on port {server.port}")
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", CALLS + 1000)

        store = StatStore(client, prefix=PREFIX)
        bodies = {}
        for history, (records, favorites, _) in HISTORIES.items():
            log(f"building {history}: {records:,} records, {favorites:,} favorites")
            bodies[history] = build_history(history)
            store.put(subscriber(history), bodies[history], delta=False)
            for key in store.keys(subscriber(history)):
                client.copy(key, PRISTINE + key, replace=True)

        memory = bytes_per_record(client)
        secret = secrets.token_urlsafe(48)
        sizes = page_sizes(client, secret, build_long_ids(client))

        timer = Timer(client, server.proc.pid)
        rows: dict[tuple[str, str], dict] = {}
        for history in HISTORIES:
            for script, case, kwargs, *note in cases(client, history, bodies[history]):
                log(f"  {history:>4}  {script}: {case}")
                row = rows.setdefault(
                    (script, case), {"script": script, "case": case, "histories": {}}
                )
                measured = timer.measure(**kwargs)
                for extra in note:  # e.g. the size of the list paged
                    measured.update(extra)
                row["histories"][history] = measured

        results = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "calls": CALLS,
            "redis_version": version,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_before": before,
            "loadavg_after": loadavg(),
            "redis_socket_timeout_s": Settings.REDIS_SOCKET_TIMEOUT,
            "histories": {
                h: {"records": r, "favorites": f, "last_played_on": p}
                for h, (r, f, p) in HISTORIES.items()
            },
            "scripts": list(rows.values()),
            "page_of_20": sizes,
            "memory": memory,
        }
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(report(results))
        print(
            f"\n(written to {RESULTS.relative_to(ROOT)}; took {results['elapsed_s']} s)"
        )
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping redis-server")
        return 130
    except Exception:
        traceback.print_exc()
        failed = True
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if server is not None:
            server.stop()
        if failed:
            log(f"redis log kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
