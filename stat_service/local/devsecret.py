"""The development JWT secret of ``make run`` and ``make token``.

Both set JWT_DEV_SECRET_FILE to the checkout's ``.dev-secret`` (git-ignored).
With no key configured, the service then checks tokens with the secret in
that file, and ``make token`` signs with it; whichever runs first makes it:
64 random hex digits, readable by its owner only. Without JWT_DEV_SECRET_FILE
(gunicorn run directly, as in production) a missing key stops the start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile

from ..config import ConfigError

SETTING = "JWT_DEV_SECRET_FILE"
ANNOUNCEMENT = (
    "DEVELOPMENT SECRET in use: tokens are signed with the key in %s (make token); "
    "set JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL in production"
)

log = logging.getLogger("stat_service.devsecret")
# Paths announced by this process, or by the gunicorn master it was forked
# from: one loud line per start, not one per worker.
_announced: set[str] = set()


def load_or_create(path: str) -> str:
    """The secret in ``path``; made first (random, mode 0600) if it is missing."""
    path = os.path.abspath(path)
    if not os.path.lexists(path):
        _create(path)
    return _read(path)


def announce(path: str) -> None:
    """Log the loud line once per process tree (gunicorn: in the master)."""
    path = os.path.abspath(path)
    if path not in _announced:
        _announced.add(path)
        log.warning(ANNOUNCEMENT, path)


def _create(path: str) -> None:
    # Written whole under a private name, then linked into place: the link
    # fails if the file appeared meanwhile (`make token` racing `make run`),
    # and nobody ever reads a half-written file.
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dev-secret-", dir=directory)  # 0600
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot create {path}: {exc}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot create {path}: {exc}") from None
    finally:
        os.unlink(tmp)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"{SETTING}: {path} is open to other users (mode {mode:04o}); "
                    "chmod 600 it, or delete it to get a new secret"
                )
            secret = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot read {path}: {exc}") from None
    if not secret:
        raise ConfigError(
            f"{SETTING}: {path} is empty; delete it and a new secret is made"
        )
    return secret
