"""The bulk tool's input: JSON Lines or CSV, read as entries of one subscriber.

Import, JSON Lines: one subscriber per line, ``{"subscriber_id": ...,
"favorites": [...], "view_data": [...]}`` with the rules of the PUT body
(``user_id`` is allowed and must then equal ``subscriber_id``); each line is
checked like a request (checks.py). Blank lines are skipped. A subscriber on
several lines is written once per line, in file order, like successive PUTs
(in overwrite mode the last line wins).

Import, CSV: a header naming ``subscriber_id`` and ``asset_id`` and any of
``play_count, view_time, pause_time, last_played_on, user_rating, favorite``
(in any order; an unknown or repeated column makes the file unusable), then
one row per (subscriber, asset); how a subscriber's rows make one body is
checks.py's. A UTF-8 byte order mark is allowed; a malformed file (an
unclosed quote, a cell over 128 KiB) stops the run as unusable input after
what came before it.

Grouping rule: the rows of one subscriber must be contiguous (the file
grouped or sorted by ``subscriber_id``, in any collation). A subscriber
whose rows start again after another subscriber's is detected and that later
group is rejected (the earlier one stays applied): the importer keeps a
64-bit fingerprint of every id it has seen, about 16 to 32 bytes a
subscriber (10 to 30 MB for a million), the one memory that grows with a CSV
file. Two different ids sharing a fingerprint (odds about n**2 / 2**65) would
wrongly reject the second as a reappearance; it would show in the rejects.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import os
import re
import sys
from array import array
from collections.abc import Iterator

from ..storage.records import RECORD_FIELDS

CSV_COLUMNS = ("subscriber_id", "asset_id", *RECORD_FIELDS, "favorite")
_NUMBER_COLUMNS = RECORD_FIELDS


class UnusableInput(Exception):
    """The input or the arguments cannot be used at all (exit status 2)."""


# An entry is one unit of input: (first line, last line, records read,
# payload). JSON Lines: the line's bytes, or TOO_LARGE. CSV: a CsvGroup.
TOO_LARGE = None


@dataclasses.dataclass(slots=True)
class CsvGroup:
    """The rows of one subscriber (a contiguous run of the file)."""

    subscriber_id: str
    rows: list  # (line, cells); at most 2 * MAX_ITEMS + 2 are kept
    problems: list  # row-level reasons (cell count, encoding, favorite)
    records: int = 0  # view_data entries the rows make
    favorites: int = 0  # favorite=true rows
    reappears: bool = False  # rows of this id came earlier in the file


SURROGATE = re.compile("[\udc80-\udcff]")  # undecodable bytes (surrogateescape)


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
        if SURROGATE.search("".join(cells)):
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
