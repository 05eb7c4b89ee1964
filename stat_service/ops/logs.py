"""Logs as one JSON object per line (or plain text with LOG_FORMAT=text)."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson
from gunicorn import glogging

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``ts``, ``level``, ``logger``, ``msg``, then the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def make_formatter(kind: str) -> logging.Formatter:
    return logging.Formatter(TEXT_FORMAT) if kind == "text" else JsonFormatter()


def configure(level: str, kind: str) -> None:
    """Log to stdout, unless a host (gunicorn, pytest) already set logging up."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(make_formatter(kind))
        root.addHandler(handler)
    root.setLevel(level.upper())


class GunicornLogger(glogging.Logger):
    """Gunicorn's own logger, on stdout and in LOG_FORMAT like the app's.

    Chosen over a ``logconfig_dict``, with which gunicorn builds an access
    record for every request even when nothing would print it.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = make_formatter(os.environ.get("LOG_FORMAT", "json"))
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "stream", None) is sys.stderr:
                    handler.setStream(sys.stdout)
                handler.setFormatter(formatter)
