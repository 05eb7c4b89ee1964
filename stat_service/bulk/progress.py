"""What an import shows while it runs, and how it stops.

Progress: a tqdm bar on stderr when it is a terminal (bytes of the file when
its size is known, else lines). SIGINT (Ctrl-C) or SIGTERM: the batches in
flight finish, the checkpoint is written, exit status 130 (143 for
SIGTERM); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import sys
import time


class Progress:
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


class Stop:
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
