"""Bulk import, export and erasure of subscriber histories, without Flask.

``python -m stat_service import|export|erase`` (see ``__main__.py``) is the
command line over this module. Everything here goes through the service's
own pieces: ``strictjson.loads`` and the marshmallow schemas of
``schemas.load_body`` validate, ``StatStore.script_call`` builds the same Lua
call a PUT makes, and the reject details are the error bodies the API gives.

Import, JSON Lines: one subscriber per line, ``{"subscriber_id": ...,
"favorites": [...], "view_data": [...]}`` with the rules of the PUT body
(``user_id`` is allowed and must then equal ``subscriber_id``). A line is
checked like a request: at most ``MAX_BODY_BYTES`` bytes (else
PAYLOAD_TOO_LARGE), strict JSON, a ``subscriber_id`` string of 1 to 256
characters without control characters, at most ``MAX_ITEMS`` favorites and
view_data entries (else PAYLOAD_TOO_LARGE), then the body schema. Blank lines
are skipped. A subscriber on several lines is written once per line, in
file order, like successive PUTs (in overwrite mode the last line wins).
A reject is ``{"line", "subscriber_id" (null when unknown), "message",
"reason", "errors" (schema errors only)}``, the API's error body for the same
content (an over-long line is not parsed: its id is null).

Import, CSV: a header naming ``subscriber_id`` and ``asset_id`` and any of
``play_count, view_time, pause_time, last_played_on, user_rating, favorite``
(in any order; an unknown or repeated column makes the file unusable), then
one row per (subscriber, asset). An empty cell is an absent field; numbers
are read as JSON would read them (``12`` an int, ``3.5`` a float; anything
else stays text and the schema rejects it with the API's message);
``favorite`` is ``true``, ``false`` (any case) or empty. A subscriber's rows
make one body: every row is a ``view_data`` entry, in row order (a later row
of the same asset wins, as in a PUT), except a row with ``favorite=true`` and
no other field, which only names a favorite ("My List" without viewing);
favorites are the ``favorite=true`` rows in row order, and are present in the
body (replacing the stored ones in delta mode) when any of the subscriber's
rows has a non-empty ``favorite`` cell. A row with only ``subscriber_id`` and
``asset_id`` makes an empty record. CSV cannot remove a field in delta mode.
A CSV reject is one subscriber's rows: ``line`` and ``last_line``, and
``view_data[i]`` in its errors is the i-th of them that makes a record. A
UTF-8 byte order mark is allowed; a malformed file (an unclosed quote, a cell
over 128 KiB) stops the run as unusable input after what came before it.

Grouping rule: the rows of one subscriber must be contiguous (the file
grouped or sorted by ``subscriber_id``, in any collation). A subscriber
whose rows start again after another subscriber's is detected and that later
group is rejected (the earlier one stays applied): the importer keeps a
64-bit fingerprint of every id it has seen, about 16 to 32 bytes a
subscriber (10 to 30 MB for a million), the one memory that grows with a CSV
file. Two different ids sharing a fingerprint (odds about n**2 / 2**65) would
wrongly reject the second as a reappearance; it would show in the rejects.

Writes: overwrite (the default) or delta, one EVALSHA of the API's own
script per subscriber, queued on a non-transactional pipeline and sent
``batch`` subscribers per round trip. A Redis failure aborts the run (exit
2) after the last committed batch; rerunning is safe (see checkpoints).

Checkpoints: after each batch is executed, the checkpoint file is replaced
atomically with the last input line committed (every line up to it is
either in Redis or in the rejects file), the counters, the rejects file's
size and a fingerprint of the run (input path, size, mtime, format, mode,
key prefix, Redis server). Rerun with the same arguments, the import skips
the lines up to it, truncates the rejects file back to that size and goes
on. Lines committed after the checkpoint was written are applied again:
every write sets absolute values (overwrite replaces the whole history,
delta assigns fields), so applying a subscriber's lines again in order
leaves the state of an uninterrupted run. Standard input cannot be resumed.
SIGINT (Ctrl-C) or SIGTERM: the batches in flight finish, the checkpoint is
written, exit status 130 (143 for SIGTERM); a second Ctrl-C stops at once.

``jobs`` > 1: the main process reads and splits each block of ``batch * jobs``
lines among worker processes by a hash of the subscriber id (so one
subscriber's lines stay in order in one worker), and the workers validate
and write. A block is committed when every worker has executed its part,
and the checkpoint only ever moves over whole blocks, in order, so its
meaning is unchanged; the rejects file is written in the main process, in
line order. ``max_rejects`` then stops after the blocks in flight, not at the
exact line. Without a rejects file the first rejects are shown on stderr.

Exit status: 0 every subscriber applied, 1 some rejected, 2 aborted
(``max_rejects`` exceeded, Redis failure) or unusable input, 130/143
interrupted.

Export: SCAN (never KEYS) over the prefix's ``:view`` and ``:fav`` keys, one
JSON line per subscriber in the import format, each subscriber once (from
its view key, or from its favorites key when it has no view data). Lines
come in SCAN order, which depends on Redis's hash table: compare two exports
after ``LC_ALL=C sort``. Not a snapshot while writes go on.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import os
import queue
import re
import signal
import sys
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable, Iterator
from itertools import islice

import orjson
import redis
from marshmallow import ValidationError
from redis.cluster import RedisCluster
from redis.exceptions import AskError, NoScriptError

from .errors import MESSAGES, json_keys, validation_reason
from .rules import fastpath, strictjson
from .rules.schemas import load_body, subscriber_id_problem, too_many_items
from .storage.client import real_client, refresh_topology
from .storage.records import RECORD_FIELDS, decode_history, hash_tag
from .storage.store import Bounds, HistoryFull, StatStore

EXIT_OK = 0
EXIT_REJECTS = 1
EXIT_ABORTED = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130; SIGTERM gives 143

DEFAULT_BATCH = 500
CSV_COLUMNS = ("subscriber_id", "asset_id", *RECORD_FIELDS, "favorite")
_NUMBER_COLUMNS = RECORD_FIELDS
_CHECKPOINT_VERSION = 1
_SHOWN_REJECTS = 10  # printed on stderr when there is no rejects file
_INFLIGHT_BLOCKS = 3  # per worker pool: blocks read ahead of the slowest worker


class UnusableInput(Exception):
    """The input or the arguments cannot be used at all (exit status 2)."""


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


# --- reject details ------------------------------------------------------------


def reject(line: int, subscriber_id, status: int, reason: str, errors=None) -> dict:
    """The error body the API would give, with where it was found."""
    detail = {
        "line": line,
        "subscriber_id": subscriber_id if isinstance(subscriber_id, str) else None,
        "message": MESSAGES[status],
        "reason": reason,
    }
    if errors is not None:
        detail["errors"] = errors
    return detail


def _schema_reject(line: int, subscriber_id, exc: ValidationError) -> dict:
    return reject(
        line,
        subscriber_id,
        400,
        validation_reason(exc.messages),
        errors=json_keys(exc.messages),
    )


# --- validation ------------------------------------------------------------------

# An entry is one unit of input: (first line, last line, records read,
# payload). JSON Lines: the line's bytes, or TOO_LARGE. CSV: a CsvGroup.
TOO_LARGE = None


class JsonlValidator:
    """One JSON line -> (subscriber id, validated body) or a reject detail."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes

    def __call__(self, entry):
        line, _, _, raw = entry
        if raw is TOO_LARGE:
            return reject(line, None, 413, f"body larger than {self.max_bytes} bytes")
        taken = fastpath.load_line(raw, self.max_items)
        if taken is not fastpath.NO:
            return taken
        try:
            data = strictjson.loads(raw)
        except strictjson.JSONBodyError as exc:
            return reject(line, None, 400, str(exc))
        if not isinstance(data, dict):
            try:
                load_body(data, None)
            except ValidationError as exc:
                return _schema_reject(line, None, exc)
            raise AssertionError("load_body accepted a non-object")  # pragma: no cover
        if "subscriber_id" not in data:
            return reject(line, None, 400, "subscriber_id is required")
        subscriber_id = data.pop("subscriber_id")
        problem = subscriber_id_problem(subscriber_id)
        if problem:
            return reject(line, subscriber_id, 400, problem)
        problem = too_many_items(data, self.max_items)
        if problem:
            return reject(line, subscriber_id, 413, problem)
        try:
            return subscriber_id, load_body(data, subscriber_id)
        except ValidationError as exc:
            return _schema_reject(line, subscriber_id, exc)


@dataclasses.dataclass(slots=True)
class CsvGroup:
    """The rows of one subscriber (a contiguous run of the file)."""

    subscriber_id: str
    rows: list  # (line, cells); at most 2 * MAX_ITEMS + 2 are kept
    problems: list  # row-level reasons (cell count, encoding, favorite)
    records: int = 0  # view_data entries the rows make
    favorites: int = 0  # favorite=true rows
    reappears: bool = False  # rows of this id came earlier in the file


_SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes (surrogateescape)


def _number(text: str):
    """A cell as JSON would read it; text that is no JSON number stays text."""
    if len(text) > strictjson.MAX_FLOAT_CHARS or not strictjson.JSON_NUMBER.fullmatch(
        text
    ):
        return text
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


class CsvLayout:
    """Where each column is, from the header; shared by reader and validator."""

    def __init__(self, header: list[str]):
        names = [name.strip() for name in header]
        unknown = sorted(set(names) - set(CSV_COLUMNS))
        if unknown:
            raise UnusableInput(
                f"CSV header: unknown column(s) {', '.join(map(repr, unknown))}; "
                f"the columns are {', '.join(CSV_COLUMNS)}"
            )
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UnusableInput(f"CSV header: column(s) repeated: {repeated}")
        missing = [n for n in ("subscriber_id", "asset_id") if n not in names]
        if missing:
            raise UnusableInput(f"CSV header: missing column(s) {', '.join(missing)}")
        self.width = len(names)
        self.subscriber = names.index("subscriber_id")
        self.asset = names.index("asset_id")
        self.favorite = names.index("favorite") if "favorite" in names else None
        self.numbers = [(n, names.index(n)) for n in _NUMBER_COLUMNS if n in names]

    def kind(self, cells: list[str]) -> tuple[bool, bool, str | None]:
        """(makes a view_data entry, is a favorite, problem) of a row."""
        if self.favorite is None:
            return True, False, None
        flag = cells[self.favorite]
        favorite = flag.lower()
        if favorite == "true":
            return any(cells[i] for _, i in self.numbers), True, None
        if favorite in ("false", ""):
            return True, False, None
        return True, False, f"favorite must be true, false or empty, not {flag!r}"


class CsvValidator:
    """One subscriber's CSV rows -> (subscriber id, validated body) or a reject."""

    def __init__(self, max_items: int, layout: CsvLayout):
        self.max_items = max_items
        self.layout = layout

    def __call__(self, entry):
        first, last, _, group = entry
        subscriber_id = group.subscriber_id

        def fail(status, reason, errors=None):
            detail = reject(first, subscriber_id, status, reason, errors)
            detail["last_line"] = last
            return detail

        # The order of the API: parsing, the id, the sizes, then the schema.
        if group.reappears:
            return fail(
                400,
                f"the rows of subscriber {subscriber_id!r} are not contiguous: they "
                "start again here after other subscribers' rows (group the file "
                "by subscriber_id)",
            )
        if group.problems:
            reason = "; ".join(group.problems[:5])
            if len(group.problems) > 5:
                reason += f"; and {len(group.problems) - 5} more"
            return fail(400, reason)
        if _SURROGATE.search(subscriber_id):
            return fail(400, "subscriber_id is not valid UTF-8")
        if subscriber_id == "":
            return fail(400, "subscriber_id is required")
        problem = subscriber_id_problem(subscriber_id)
        if problem:
            return fail(400, problem)
        counts = {"favorites": group.favorites, "view_data": group.records}
        for name, count in counts.items():
            if count > self.max_items:
                return fail(
                    413, f"{name} has {count} entries, more than {self.max_items}"
                )
        layout = self.layout
        favorites: list[str] = []
        view_data: list[dict] = []
        favorites_given = False
        for _, cells in group.rows:
            asset = cells[layout.asset]
            record = {"asset_id": asset}
            for name, index in layout.numbers:
                text = cells[index]
                if text:
                    record[name] = _number(text)
            if layout.favorite is not None:
                favorite = cells[layout.favorite].lower()
                if favorite == "true":
                    favorites.append(asset)
                    favorites_given = True
                    if len(record) == 1:
                        continue  # only a favorite, no viewing
                elif favorite == "false":
                    favorites_given = True
            view_data.append(record)
        body: dict = {}
        if favorites_given:
            body["favorites"] = favorites
        if view_data:
            body["view_data"] = view_data
        if fastpath.check_body(body) >= 0:
            return subscriber_id, body
        try:
            return subscriber_id, load_body(body, subscriber_id)
        except ValidationError as exc:
            return fail(400, validation_reason(exc.messages), json_keys(exc.messages))


class SeenIds:
    """64-bit fingerprints of strings in an open-addressing table (array of q)."""

    def __init__(self):
        self._slots = array("q", bytes(8 * 1024))
        self._mask = 1023
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, value: str) -> bool:
        """Add ``value``; False when it (or an id with its fingerprint) was there."""
        fingerprint = hash(value) or 1  # 0 marks an empty slot
        if not self._insert(fingerprint):
            return False
        self._count += 1
        if self._count * 10 > len(self._slots) * 7:
            old = self._slots
            self._slots = array("q", bytes(16 * len(old)))
            self._mask = len(self._slots) - 1
            for value in old:
                if value:
                    self._insert(value)
        return True

    def _insert(self, fingerprint: int) -> bool:
        slots, mask = self._slots, self._mask
        i = fingerprint & mask
        while True:
            found = slots[i]
            if found == 0:
                slots[i] = fingerprint
                return True
            if found == fingerprint:
                return False
            i = (i + 1) & mask


# --- input -----------------------------------------------------------------------


class Source:
    """The input bytes (a file or standard input), gunzipped when gzip."""

    def __init__(self, path: str):
        self.path = path
        if path == "-":
            raw = sys.stdin.buffer
            self.name = "-"
        else:
            try:
                raw = open(path, "rb")  # noqa: SIM115 (closed by close())
            except OSError as exc:
                raise UnusableInput(f"cannot open {path}: {exc.strerror}") from None
            self.name = os.path.abspath(path)
        self._raw = raw
        try:
            stat = os.fstat(raw.fileno())
            regular = (stat.st_mode & 0o170000) == 0o100000
        except (OSError, ValueError, io.UnsupportedOperation):
            stat, regular = None, False
        self.size = stat.st_size if regular else None
        self.mtime_ns = stat.st_mtime_ns if regular else None
        self._seekable = regular and raw.seekable()
        try:
            magic = raw.peek(2)[:2]
        except OSError as exc:
            raise UnusableInput(f"cannot read {path}: {exc.strerror}") from None
        self.gzipped = magic == b"\x1f\x8b"
        self.stream = gzip.GzipFile(fileobj=raw, mode="rb") if self.gzipped else raw
        self._text: io.TextIOWrapper | None = None

    def position(self) -> int | None:
        """Bytes of the (compressed) input consumed, when it can be known."""
        if not self._seekable:
            return None
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return None

    def text(self) -> io.TextIOWrapper:
        """The input as text for the csv module (undecodable bytes escaped)."""
        self._text = io.TextIOWrapper(
            self.stream, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
        return self._text

    def close(self) -> None:
        if self._text is not None:
            self._text.detach()  # closing the wrapper would close stdin too
        if self.gzipped:
            self.stream.close()
        if self._raw is not sys.stdin.buffer:
            self._raw.close()


def jsonl_entries(stream, max_bytes: int, skip_until: int = 0) -> Iterator[tuple]:
    """(line, line, 1, bytes or TOO_LARGE) per non-blank line after skip_until.

    A line is never held beyond ``max_bytes`` (plus its line end): a longer
    one is read through in chunks and given as TOO_LARGE.
    """
    readline = stream.readline
    limit = max_bytes + 2
    line_no = 0
    while True:
        line = readline(limit)
        if not line:
            return
        line_no += 1
        if len(line) == limit and line[-1:] != b"\n":
            while True:  # the rest of an over-long line
                chunk = readline(1 << 16)
                if not chunk or chunk[-1:] == b"\n":
                    break
            if line_no > skip_until:
                yield line_no, line_no, 1, TOO_LARGE
            continue
        if line_no <= skip_until:
            continue
        body = line.rstrip(b"\r\n")
        if len(body) > max_bytes:
            yield line_no, line_no, 1, TOO_LARGE
        elif body.strip():
            yield line_no, line_no, 1, body


def csv_entries(
    text, max_items: int, skip_until: int = 0
) -> tuple[CsvLayout, Iterator[tuple]]:
    """The layout from the header, and one entry per contiguous subscriber."""
    reader = csv.reader(text, strict=True)
    try:
        header = next((row for row in reader if row), None)
    except (csv.Error, UnicodeError) as exc:
        raise UnusableInput(f"CSV header: {exc}") from None
    if header is None:
        raise UnusableInput("CSV input is empty: no header")
    layout = CsvLayout(header)
    return layout, _csv_groups(reader, layout, max_items, skip_until)


def _csv_groups(reader, layout: CsvLayout, max_items: int, skip_until: int):
    seen = SeenIds()
    keep = 2 * max_items + 2  # past this many rows the body is too large anyway
    width, sid_at = layout.width, layout.subscriber
    group: CsvGroup | None = None
    first = last = rows = 0
    previous_end = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise UnusableInput(f"CSV line {reader.line_num}: {exc}") from None
        line = previous_end + 1
        previous_end = reader.line_num
        if not cells:
            continue  # a blank line
        subscriber_id = cells[sid_at] if sid_at < len(cells) else ""
        if line <= skip_until:
            seen.add(subscriber_id)
            continue
        if group is None or subscriber_id != group.subscriber_id:
            if group is not None:
                yield first, last, rows, group
            group = CsvGroup(subscriber_id, [], [])
            group.reappears = not seen.add(subscriber_id)
            first, rows = line, 0
        last = line
        rows += 1
        if len(cells) != width:
            group.problems.append(
                f"line {line}: {len(cells)} cells, the header has {width}"
            )
            continue
        if _SURROGATE.search("".join(cells)):
            group.problems.append(f"line {line}: not valid UTF-8")
            continue
        record, favorite, problem = layout.kind(cells)
        if problem:
            group.problems.append(f"line {line}: {problem}")
            continue
        group.records += record
        group.favorites += favorite
        if len(group.rows) < keep:
            group.rows.append((line, cells))
    if group is not None:
        yield first, last, rows, group


# --- writing -----------------------------------------------------------------------


@dataclasses.dataclass
class BlockResult:
    read: int  # records (lines or rows) processed
    applied: int  # subscribers written
    rejects: list  # reject details, in line order
    stopped_at: int | None = None  # last line processed when the budget ran out


def process_block(
    store: StatStore,
    entries,
    validate: Callable,
    delta: bool,
    budget: int | None = None,
) -> BlockResult:
    """Validate entries and write the valid ones in one pipelined round trip.

    With ``budget``, stops after the reject that exceeds it; everything
    validated before is still written. A subscriber whose write the bounds
    refuse (MAX_RECORDS, MAX_FAVORITES) is a reject with the API's 409
    reason, and nothing of it is written.
    """
    calls = []
    sent = []  # (line, subscriber id, assets written) of each call
    script_call = store.script_call
    read = 0
    rejects: list = []
    stopped_at = None

    def refuse(detail) -> bool:
        rejects.append(detail)
        return budget is not None and len(rejects) > budget

    for entry in entries:
        outcome = validate(entry)
        read += entry[2]
        if outcome.__class__ is dict:
            if refuse(outcome):
                stopped_at = entry[1]
                break
            continue
        subscriber_id = outcome[0]
        try:
            script, keys, args, written = script_call(
                subscriber_id, outcome[1], delta=delta
            )
        except HistoryFull as exc:
            if refuse(reject(entry[0], subscriber_id, 409, exc.reason)):
                stopped_at = entry[1]
                break
            continue
        calls.append((script, keys, args))
        sent.append((entry[0], subscriber_id, written))
    applied = len(calls)
    if calls:
        for (line, subscriber_id, written), reply in zip(
            sent, send(store, calls), strict=True
        ):
            try:
                store.put_result(reply, written)
            except HistoryFull as exc:
                rejects.append(reject(line, subscriber_id, 409, exc.reason))
                applied -= 1
    rejects.sort(key=lambda detail: detail["line"])
    return BlockResult(read, applied, rejects, stopped_at)


def send(store: StatStore, calls: list) -> list:
    """Run (script, keys, args) calls on non-transactional pipelines; replies
    in order.

    One pipeline to a single server; on a cluster one per primary, as
    redis-py's cluster pipeline runs no scripts. The scripts are loaded
    beforehand (``StatStore.load_scripts``). A server that lost them (SCRIPT
    FLUSH, a failover) gets them again, and a cluster whose slots moved is
    re-read, then the calls are sent once more: safe, as every write sets
    absolute values.
    """
    client = real_client(store.client)
    if not isinstance(client, RedisCluster):
        return _send_to(store, client, calls)
    try:
        return _send_by_primary(store, client, calls)
    except (AskError, redis.ConnectionError, redis.TimeoutError):  # MOVED included
        refresh_topology(client)
    return _send_by_primary(store, client, calls)


def _send_by_primary(store: StatStore, cluster: RedisCluster, calls: list) -> list:
    groups: dict = {}
    for i, (_, keys, _) in enumerate(calls):
        node = cluster.get_node_from_key(keys[0])
        groups.setdefault(node.name, (node, []))[1].append(i)
    replies: list = [None] * len(calls)
    for node, indexes in groups.values():
        server = cluster.get_redis_connection(node)
        sent = _send_to(store, server, [calls[i] for i in indexes])
        for i, reply in zip(indexes, sent, strict=True):
            replies[i] = reply
    return replies


def _send_to(store: StatStore, server, calls: list) -> list:
    try:
        return _pipeline(server, calls).execute()
    except NoScriptError:
        store.load_scripts(server)
    return _pipeline(server, calls).execute()


def _pipeline(server, calls: list):
    pipe = server.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return pipe


class _Inline:
    """Blocks processed in this process, one at a time."""

    def __init__(self, store: StatStore, validate, delta: bool):
        self.store, self.validate, self.delta = store, validate, delta
        self._done: list = []

    @property
    def inflight(self) -> int:
        return len(self._done)

    def submit(self, index: int, parts: list, budget: int | None) -> int:
        result = process_block(self.store, parts[0], self.validate, self.delta, budget)
        self._done.append((index, result))
        return 1

    def results(self, wait: bool):
        done, self._done = self._done, []
        yield from done

    def close(self, graceful: bool = True) -> None:
        pass


def _worker_main(settings, prefix, validate, delta, tasks, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    from .storage.client import make_client

    store = StatStore(
        make_client(settings), prefix=prefix, bounds=Bounds.from_settings(settings)
    )
    store.load_scripts()
    while True:
        task = tasks.get()
        if task is None:
            return
        index, entries = task
        try:
            result = process_block(store, entries, validate, delta)
        except Exception as exc:  # reported, and the run aborts
            results.put((index, None, f"{type(exc).__name__}: {exc}"))
            return
        results.put((index, result, None))


class _Pool:
    """Worker processes, each writing the subscribers hashed to it."""

    def __init__(self, jobs: int, settings, prefix: str, validate, delta: bool):
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.results_queue = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(jobs)]
        self.procs = [
            ctx.Process(
                target=_worker_main,
                args=(settings, prefix, validate, delta, tasks, self.results_queue),
                name=f"stat-import-{i}",
                daemon=True,
            )
            for i, tasks in enumerate(self.tasks)
        ]
        for proc in self.procs:
            proc.start()
        self.inflight = 0  # parts sent and not answered

    def submit(self, index: int, parts: list, budget: int | None) -> int:
        sent = 0
        for tasks, part in zip(self.tasks, parts, strict=True):
            if part:
                tasks.put((index, part))
                sent += 1
        self.inflight += sent
        return sent

    def results(self, wait: bool):
        while self.inflight:
            try:
                item = self.results_queue.get(timeout=0.2 if wait else 0)
            except queue.Empty:
                if not wait:
                    return
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"worker {dead[0].name} exited with code {dead[0].exitcode}"
                    ) from None
                continue
            self.inflight -= 1
            index, result, error = item
            if error is not None:
                raise RuntimeError(f"a worker failed: {error}")
            yield index, result
            wait = False  # one at least; then whatever else is ready

    def close(self, graceful: bool = True) -> None:
        """Let the workers finish what they were sent, or stop them now."""
        for tasks in self.tasks:
            if graceful:
                tasks.put(None)
            tasks.cancel_join_thread()  # never block on a worker that is gone
        for proc in self.procs:
            proc.join(timeout=30 if graceful else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def route(entry, jobs: int) -> int:
    """The worker of an entry: by subscriber id, so its lines stay in order.

    orjson reads the id cheaply; any line the strict parser and the schema
    accept, orjson reads with the same id. Lines it cannot read are rejects
    and may go anywhere.
    """
    payload = entry[3]
    if isinstance(payload, CsvGroup):
        subscriber_id = payload.subscriber_id
    else:
        try:
            subscriber_id = orjson.loads(payload).get("subscriber_id")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            subscriber_id = None
    if isinstance(subscriber_id, str):
        return zlib.crc32(subscriber_id.encode("utf-8", "surrogatepass")) % jobs
    return entry[0] % jobs


# --- checkpoints ------------------------------------------------------------------


def _redis_target(client) -> str:
    client = real_client(client)
    if isinstance(client, RedisCluster):  # every node, so a failover is no change
        return "cluster:" + ",".join(sorted(node.name for node in client.get_nodes()))
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}/{kwargs.get('db', 0)}"
    return f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


def write_json_atomically(path: str, data: dict) -> None:
    """Write ``path`` so that it is always either the old or the new content."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_checkpoint(path: str, fingerprint: dict) -> dict | None:
    """The saved state for this very run, None when there is none yet."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UnusableInput(f"checkpoint {path} is unreadable: {exc}") from None
    if saved.get("version") != _CHECKPOINT_VERSION:
        raise UnusableInput(f"checkpoint {path}: unknown version")
    if saved.get("fingerprint") != fingerprint:
        raise UnusableInput(
            f"checkpoint {path} belongs to another run (input file, its size or "
            "time, format, mode, key prefix or Redis server differ): delete it to "
            "start over"
        )
    return saved


# --- the import -------------------------------------------------------------------


@dataclasses.dataclass
class ImportOptions:
    path: str
    format: str = "jsonl"  # or "csv"
    delta: bool = False  # overwrite by default: a migration loads whole histories
    rejects: str | None = None
    max_rejects: int | None = None
    checkpoint: str | None = None
    batch: int = DEFAULT_BATCH
    jobs: int = 1
    progress: bool | None = None  # None: when stderr is a terminal


@dataclasses.dataclass
class ImportReport:
    read: int = 0  # records (lines, CSV rows) read, this run and resumed ones
    applied: int = 0  # subscribers written
    rejected: int = 0  # subscribers rejected
    skipped: int = 0  # lines skipped thanks to the checkpoint
    seconds: float = 0.0
    status: int = EXIT_OK
    note: str = ""  # why it stopped early
    read_this_run: int = 0

    def summary(self) -> str:
        rate = self.read_this_run / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"import: read {self.read}, applied {self.applied}, "
            f"rejected {self.rejected}, {self.seconds:.1f} s, {rate:,.0f} records/s"
        )
        if self.skipped:
            text += f" (resumed after line {self.skipped})"
        return text + (f"; {self.note}" if self.note else "")


class _Progress:
    """tqdm on stderr: bytes of the file when its size is known, else lines."""

    def __init__(self, enabled: bool, total: int | None, initial: int):
        self.bar = None
        self.start = time.monotonic()
        if not enabled:
            return
        from tqdm import tqdm

        # tqdm puts ", " before the postfix.
        if total:
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                desc="import",
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"
                "{postfix} [{elapsed}<{remaining}]",
                dynamic_ncols=True,
            )
        else:
            self.bar = tqdm(
                file=sys.stderr,
                desc="import",
                bar_format="{desc} {n} lines{postfix} [{elapsed}]",
                dynamic_ncols=True,
            )
        self.by_bytes = bool(total)

    def update(self, position: int | None, lines: int, read: int, rejected: int):
        if self.bar is None:
            return
        elapsed = time.monotonic() - self.start
        rate = read / elapsed if elapsed > 0 else 0.0
        stats = f"{rate:,.0f} rows/s, {rejected:,} rejected"
        if self.by_bytes:
            self.bar.set_postfix_str(f"{lines:,} lines, {stats}", refresh=False)
            if position is not None:
                self.bar.update(max(0, position - self.bar.n))
        else:
            self.bar.set_postfix_str(stats, refresh=False)
            self.bar.update(max(0, lines - self.bar.n))
        self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Stop:
    """SIGINT/SIGTERM: remember it, let the batch in flight finish."""

    def __init__(self, install: bool):
        self.signum: int | None = None
        self._previous: dict = {}
        if install:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        # A second Ctrl-C stops at once.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run_import(
    options: ImportOptions,
    settings,
    *,
    client=None,
    handle_signals: bool = False,
) -> ImportReport:
    """Import ``options.path``; the report says what happened and the status.

    ``client``: a Redis client to use (tests pass fakeredis); by default one
    is made from ``settings``. Workers (``jobs`` > 1) always make their own.
    """
    if options.format not in ("jsonl", "csv"):
        raise UnusableInput(f"unknown format {options.format!r}")
    if options.batch < 1 or options.jobs < 1:
        raise UnusableInput("--batch and --jobs must be at least 1")
    if options.max_rejects is not None and options.max_rejects < 0:
        raise UnusableInput("--max-rejects must be 0 or more")
    if options.checkpoint and options.path == "-":
        raise UnusableInput("--checkpoint needs a file: standard input cannot resume")
    if options.jobs > 1 and client is not None:
        raise UnusableInput("jobs > 1 makes its own clients from the settings")
    if client is None:
        from .storage.client import make_client

        client = make_client(settings)
    store = StatStore(
        client, prefix=settings.KEY_PREFIX, bounds=Bounds.from_settings(settings)
    )
    source = Source(options.path)
    try:
        return _Import(options, settings, store, source, handle_signals).run()
    finally:
        source.close()


class _Import:
    def __init__(self, options, settings, store, source, handle_signals):
        self.o = options
        self.settings = settings
        self.store = store
        self.source = source
        self.handle_signals = handle_signals
        self.report = ImportReport()
        self.fingerprint = {
            "input": source.name,
            "size": source.size,
            "mtime_ns": source.mtime_ns,
            "format": options.format,
            "mode": "delta" if options.delta else "overwrite",
            "key_prefix": settings.KEY_PREFIX,
            "redis": _redis_target(store.client),
        }
        self.line = 0  # every line up to this one is committed or rejected
        self.rejects_file = None
        self._unsynced_rejects = False
        self.shown = 0

    # -- checkpoint and rejects --

    def _resume(self) -> dict | None:
        """Counters and position of an interrupted run of the same import."""
        saved = None
        if self.o.checkpoint:
            saved = read_checkpoint(self.o.checkpoint, self.fingerprint)
        if saved:
            self.line = saved["line"]
            self.report.read = saved["read"]
            self.report.applied = saved["applied"]
            self.report.rejected = saved["rejected"]
            self.report.skipped = saved["line"]
        return saved

    def _open_rejects(self, saved: dict | None) -> None:
        """New rejects file, or the resumed run's, cut back to its checkpoint."""
        if not self.o.rejects:
            return
        offset = None
        if saved and saved.get("rejects_path") == self._rejects_path():
            offset = saved.get("rejects_offset")
        try:
            if offset is not None and os.path.exists(self.o.rejects):
                self.rejects_file = open(self.o.rejects, "r+b")  # noqa: SIM115
                self.rejects_file.truncate(offset)
                self.rejects_file.seek(0, os.SEEK_END)
            else:
                self.rejects_file = open(self.o.rejects, "wb")  # noqa: SIM115
        except OSError as exc:
            raise UnusableInput(
                f"cannot write rejects to {self.o.rejects}: {exc.strerror}"
            ) from None

    def _rejects_path(self) -> str | None:
        return os.path.abspath(self.o.rejects) if self.o.rejects else None

    def _save(self, done: bool = False) -> None:
        offset = None
        if self.rejects_file is not None:
            self.rejects_file.flush()
            if self._unsynced_rejects and self.o.checkpoint:
                # The checkpoint must never count rejects the file has lost.
                os.fsync(self.rejects_file.fileno())
                self._unsynced_rejects = False
            offset = self.rejects_file.tell()
        if not self.o.checkpoint:
            return
        write_json_atomically(
            self.o.checkpoint,
            {
                "version": _CHECKPOINT_VERSION,
                "fingerprint": self.fingerprint,
                "line": self.line,
                "done": done,
                "read": self.report.read,
                "applied": self.report.applied,
                "rejected": self.report.rejected,
                "rejects_path": self._rejects_path(),
                "rejects_offset": offset,
            },
        )

    def _record_rejects(self, rejects: list) -> None:
        for detail in rejects:
            if self.rejects_file is not None:
                self.rejects_file.write(json.dumps(detail).encode() + b"\n")
                self._unsynced_rejects = True
            elif self.shown < _SHOWN_REJECTS:
                self.shown += 1
                self.progress.write("rejected: " + json.dumps(detail))
                if self.shown == _SHOWN_REJECTS:
                    self.progress.write(
                        "(further rejects are counted only: --rejects PATH keeps "
                        "them all)"
                    )

    # -- the run --

    def _entries(self, skip: int):
        stream = self.source.stream
        if self.o.format == "csv":
            text = self.source.text()
            layout, entries = csv_entries(text, self.settings.MAX_ITEMS, skip)
            return CsvValidator(self.settings.MAX_ITEMS, layout), entries
        validate = JsonlValidator(self.settings.MAX_ITEMS, self.settings.MAX_BODY_BYTES)
        entries = jsonl_entries(stream, self.settings.MAX_BODY_BYTES, skip)
        return validate, entries

    def run(self) -> ImportReport:
        report = self.report
        started = time.monotonic()
        saved = self._resume()
        if saved and saved.get("done"):
            report.note = "already complete according to the checkpoint"
            report.status = EXIT_REJECTS if report.rejected else EXIT_OK
            return report
        validate, entries = self._entries(self.line)  # a bad CSV header stops here
        self.store.load_scripts()
        self._open_rejects(saved)
        jobs = self.o.jobs
        try:
            if jobs > 1:
                runner = _Pool(
                    jobs, self.settings, self.store.prefix, validate, self.o.delta
                )
            else:
                runner = _Inline(self.store, validate, self.o.delta)
        except BaseException:
            if self.rejects_file is not None:
                self.rejects_file.close()
            raise
        enabled = self.o.progress
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.progress = _Progress(enabled, self.source.size, self.source.position())
        stop = _Stop(self.handle_signals)
        graceful = True
        try:
            self._loop(runner, validate, entries, jobs, stop)
        except UnusableInput as exc:
            report.status, report.note = EXIT_ABORTED, str(exc)
        except (redis.RedisError, RuntimeError, OSError, EOFError, zlib.error) as exc:
            report.status = EXIT_ABORTED
            report.note = f"aborted: {type(exc).__name__}: {exc}"
        except BaseException:  # a second Ctrl-C: stop the workers at once
            graceful = False
            raise
        finally:
            stop.restore()
            self.progress.close()
            runner.close(graceful)
            report.seconds = time.monotonic() - started
            if self.rejects_file is not None:
                self.rejects_file.close()
        if report.status == EXIT_OK and report.rejected:
            report.status = EXIT_REJECTS
        if report.status != EXIT_OK and self.o.checkpoint and self.line:
            report.note += (
                f"{'; ' if report.note else ''}checkpoint at line {self.line}: rerun "
                "the same command to resume"
            )
        return report

    def _loop(self, runner, validate, entries, jobs, stop) -> None:
        report = self.report
        o = self.o
        pending: dict[int, list] = {}  # block -> [parts left, last line, result]
        order: list[int] = []
        next_index = 0
        stopping = False

        def finish(index: int, result: BlockResult) -> None:
            slot = pending[index]
            slot[0] -= 1
            merged: BlockResult = slot[2]
            merged.read += result.read
            merged.applied += result.applied
            merged.rejects.extend(result.rejects)
            if result.stopped_at is not None:
                slot[1] = result.stopped_at
                merged.stopped_at = result.stopped_at
            # Commit whole blocks, in order.
            committed = False
            while order and pending[order[0]][0] == 0:
                _, last, block = pending.pop(order.pop(0))
                block.rejects.sort(key=lambda d: d["line"])
                self._record_rejects(block.rejects)
                report.read += block.read
                report.read_this_run += block.read
                report.applied += block.applied
                report.rejected += len(block.rejects)
                self.line = last
                committed = True
            if committed:
                self._save()
                self.progress.update(
                    self.source.position(),
                    self.line,
                    report.read_this_run,
                    report.rejected,
                )

        def over_budget() -> bool:
            return o.max_rejects is not None and report.rejected > o.max_rejects

        block_size = o.batch * jobs
        while not stopping:
            if stop.signum is not None or over_budget():
                break
            block = list(islice(entries, block_size))
            if not block:
                break
            index = next_index
            next_index += 1
            if jobs > 1:
                parts: list[list] = [[] for _ in range(jobs)]
                for entry in block:
                    parts[route(entry, jobs)].append(entry)
            else:
                parts = [block]
            budget = None
            if o.max_rejects is not None:
                budget = o.max_rejects - report.rejected
            pending[index] = [0, block[-1][1], BlockResult(0, 0, [])]
            order.append(index)
            pending[index][0] = runner.submit(index, parts, budget)
            # Take what is done; block while too much is in flight.
            while True:
                wait = runner.inflight >= _INFLIGHT_BLOCKS * jobs
                for done_index, result in runner.results(wait):
                    finish(done_index, result)
                    if result.stopped_at is not None:
                        stopping = True
                if not wait:
                    break
        # Drain what is in flight (Ctrl-C, the reject budget or the end).
        while runner.inflight:
            for done_index, result in runner.results(True):
                finish(done_index, result)
        if over_budget():
            self.report.status = EXIT_ABORTED
            self.report.note = (
                f"aborted: more than {o.max_rejects} rejects (the last at line "
                f"{self.line})"
            )
            self._save()
            return
        if stop.signum is not None:
            self.report.status = 128 + stop.signum
            self.report.note = f"interrupted ({signal.Signals(stop.signum).name})"
            self._save()
            return
        self._save(done=True)


# --- export and erase ----------------------------------------------------------------


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
