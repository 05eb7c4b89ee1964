"""stat_service: subscribers' favorites and viewing history, stored in Redis.

A folder per part, each importing only the parts below it
(tests/test_layout.py checks the arrows):

- ``http/``: the Flask app (``create_app``), its views, the OpenAPI document;
- ``serving/``: the gunicorn side: the ``StatWorker`` worker class, and
  gunicorn's own error pages as MetaX JSON;
- ``bulk/``: ``python -m stat_service import|export|erase``, without Flask;
- ``rules/``: what a valid request is (strict JSON, the schemas, their fast
  path, page cursors);
- ``storage/``: Redis (the client, ``StatStore`` and its Lua scripts, the
  record encoding);
- ``ops/``: metrics and logs;
- ``local/``: ``make run`` and ``make token`` on a bare machine;
- ``config.py`` (every setting) and ``errors.py`` (the error vocabulary).

``create_app``, ``check_config``, ``ConfigError`` and ``StatStore`` are
exported here lazily (PEP 562): ``from stat_service import create_app``
works, and importing a part without Flask does not import Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ConfigError
    from .http.app import check_config, create_app
    from .storage.store import StatStore

__all__ = ["create_app", "check_config", "ConfigError", "StatStore"]

_EXPORTS = {
    "create_app": "stat_service.http.app",
    "check_config": "stat_service.http.app",
    "ConfigError": "stat_service.config",
    "StatStore": "stat_service.storage.store",
}


def __getattr__(name: str):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
