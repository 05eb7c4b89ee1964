"""The import: ``run_import`` reads, checks and writes a file, block by block.

The input is sources.py's, each entry is checked by checks.py, the valid
ones are written by writes.py, the progress saved by checkpoints.py.

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
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import zlib
from itertools import islice

import redis

from ..storage.store import Bounds, StatStore
from .checkpoints import (
    CHECKPOINT_VERSION,
    read_checkpoint,
    redis_target,
    write_json_atomically,
)
from .checks import CsvValidator, JsonlValidator
from .progress import Progress, Stop
from .sources import Source, UnusableInput, csv_entries, jsonl_entries
from .writes import BlockResult, Inline, Pool, route

EXIT_OK = 0
EXIT_REJECTS = 1
EXIT_ABORTED = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130; SIGTERM gives 143

DEFAULT_BATCH = 500
_SHOWN_REJECTS = 10  # printed on stderr when there is no rejects file
_INFLIGHT_BLOCKS = 3  # per worker pool: blocks read ahead of the slowest worker


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
        from ..storage.client import make_client

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
            "redis": redis_target(store.client),
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
                "version": CHECKPOINT_VERSION,
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
                runner = Pool(
                    jobs, self.settings, self.store.prefix, validate, self.o.delta
                )
            else:
                runner = Inline(self.store, validate, self.o.delta)
        except BaseException:
            if self.rejects_file is not None:
                self.rejects_file.close()
            raise
        enabled = self.o.progress
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.progress = Progress(enabled, self.source.size, self.source.position())
        stop = Stop(self.handle_signals)
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
