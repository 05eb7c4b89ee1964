"""Command line: ``python -m stat_service import|export|erase`` (see __init__.py).

``stat_service/__main__.py`` calls ``main``; the parts it runs are imported
only once the arguments are read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import os
import sys
import tempfile
import time

# A bulk run sends a batch of subscribers per round trip: allow it more than
# the API's per-request socket timeout before calling Redis hung.
BULK_SOCKET_TIMEOUT = 30.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        help="Redis to use (default: the REDIS_URL setting); keys under KEY_PREFIX",
    )
    parser = argparse.ArgumentParser(
        prog="python -m stat_service",
        description="Bulk import, export and erasure of subscriber histories.",
        epilog="Exit status: 0 done, 1 some lines rejected, 2 aborted or unusable "
        "input, 130 interrupted (resumable with --checkpoint).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser(
        "import",
        parents=[common],
        help="load JSON Lines or CSV (FILE, '-' for stdin; .gz read transparently)",
        description="Load subscribers with the API's validation and Lua scripts.",
    )
    imp.add_argument("file", metavar="FILE", help="input file, or - for stdin")
    imp.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="input format (default: csv for *.csv and *.csv.gz, else jsonl)",
    )
    imp.add_argument(
        "--mode",
        choices=("overwrite", "delta"),
        default="overwrite",
        help="overwrite (default): each subscriber's history becomes the input's; "
        "delta: merged like PUT ?isDelta=true",
    )
    imp.add_argument("--rejects", metavar="PATH", help="write rejects here (JSONL)")
    imp.add_argument(
        "--max-rejects",
        metavar="N",
        type=_non_negative,
        help="abort (exit 2) when more than N subscribers are rejected",
    )
    imp.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="record progress here after each batch; rerun to resume",
    )
    imp.add_argument(
        "--batch",
        metavar="N",
        type=_positive,
        default=500,
        help="subscribers per Redis round trip (default 500)",
    )
    imp.add_argument(
        "--jobs",
        metavar="N",
        type=_positive,
        default=1,
        help="worker processes that validate and write (default 1)",
    )

    exp = commands.add_parser(
        "export",
        parents=[common],
        help="write every subscriber as JSON Lines (the import format)",
        description="Write subscribers as JSON Lines, found with SCAN. Lines come "
        "in Redis's SCAN order: use LC_ALL=C sort to compare two exports.",
    )
    exp.add_argument(
        "--out", metavar="FILE", help="output file (default stdout; .gz compresses)"
    )
    exp.add_argument("--subscriber", metavar="ID", help="only this subscriber")

    era = commands.add_parser(
        "erase",
        parents=[common],
        help="erase one subscriber's whole history",
    )
    era.add_argument("--subscriber", metavar="ID", required=True)
    return parser


def _store(args):
    """A StatStore on the configured Redis, or an error message."""
    from ..config import load_settings
    from ..storage.client import make_client
    from ..storage.store import Bounds, StatStore
    from .sources import UnusableInput

    overrides = {"REDIS_URL": args.redis_url} if args.redis_url else {}
    settings = load_settings(overrides)
    settings = dataclasses.replace(
        settings,
        REDIS_SOCKET_TIMEOUT=max(settings.REDIS_SOCKET_TIMEOUT, BULK_SOCKET_TIMEOUT),
    )
    client = make_client(settings)
    try:
        client.ping()
    except Exception as exc:
        raise UnusableInput(
            f"cannot reach Redis at {settings.REDIS_URL}: {exc}"
        ) from None
    bounds = Bounds.from_settings(settings)
    return settings, StatStore(client, prefix=settings.KEY_PREFIX, bounds=bounds)


def _import(args) -> int:
    from . import importer

    fmt = args.format
    if fmt is None:
        name = args.file.lower()
        fmt = "csv" if name.endswith((".csv", ".csv.gz")) else "jsonl"
    settings, store = _store(args)
    options = importer.ImportOptions(
        path=args.file,
        format=fmt,
        delta=args.mode == "delta",
        rejects=args.rejects,
        max_rejects=args.max_rejects,
        checkpoint=args.checkpoint,
        batch=args.batch,
        jobs=args.jobs,
    )
    client = store.client if args.jobs == 1 else None
    report = importer.run_import(options, settings, client=client, handle_signals=True)
    print(report.summary(), file=sys.stderr)
    return report.status


def _open_out(path: str | None):
    """(binary stream, commit, discard): a temporary file renamed when done."""
    if path is None:
        return sys.stdout.buffer, lambda: None, lambda: None
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".export-", dir=directory)
    raw = os.fdopen(fd, "wb")
    # No name and no time in the gzip header: equal exports, equal bytes.
    out = (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        if path.endswith(".gz")
        else raw
    )

    def commit():
        out.close()
        raw.close()
        os.replace(tmp, path)

    def discard():
        out.close()
        raw.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    return out, commit, discard


def _export(args) -> int:
    from ..rules.schemas import subscriber_id_problem
    from . import export, importer
    from .sources import UnusableInput

    if args.subscriber is not None:
        problem = subscriber_id_problem(args.subscriber)
        if problem:
            raise UnusableInput(problem)
    _, store = _store(args)
    started = time.monotonic()
    bar = None
    if sys.stderr.isatty() and args.subscriber is None:
        from tqdm import tqdm

        bar = tqdm(unit=" subscribers", file=sys.stderr, desc="export")
    out, commit, discard = _open_out(args.out)
    try:
        count = export.export(
            store,
            out,
            subscriber_id=args.subscriber,
            progress=bar.update if bar is not None else None,
        )
        out.flush()
    except BaseException:
        discard()
        raise
    finally:
        if bar is not None:
            bar.close()
    commit()
    seconds = time.monotonic() - started
    print(f"export: {count} subscribers, {seconds:.1f} s", file=sys.stderr)
    return importer.EXIT_OK


def _erase(args) -> int:
    from ..rules.schemas import subscriber_id_problem
    from . import export, importer
    from .sources import UnusableInput

    problem = subscriber_id_problem(args.subscriber)
    if problem:
        raise UnusableInput(problem)
    _, store = _store(args)
    export.erase(store, args.subscriber)
    print(f"erase: {args.subscriber!r} erased", file=sys.stderr)
    return importer.EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..config import ConfigError
    from .importer import EXIT_ABORTED, EXIT_INTERRUPTED
    from .sources import UnusableInput

    try:
        return {"import": _import, "export": _export, "erase": _erase}[args.command](
            args
        )
    except (UnusableInput, ConfigError) as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    except BrokenPipeError:
        # The reader went away (export | head): no traceback, no more output.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ABORTED
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside an import
        print(f"{args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # Redis down mid-export, a disk full, ...
        print(f"{args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ABORTED


if __name__ == "__main__":
    sys.exit(main())
