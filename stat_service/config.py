"""Settings read from the environment, each with its documented default."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

# MAX_RECORDS and MAX_FAVORITES when unset (or MAX_ITEMS, when that is lower).
DEFAULT_BOUND = 5000


class ConfigError(RuntimeError):
    """A setting is missing or unusable; the message says which and why."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _list(value: str) -> tuple[str, ...]:
    return tuple(
        part.strip() for part in value.replace(" ", ",").split(",") if part.strip()
    )


@dataclass(frozen=True)
class Settings:
    """Every setting of the service (docs/configuration.md lists them, with these
    defaults)."""

    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_CLUSTER: bool | None = None
    REDIS_CLUSTER_NODES: tuple[str, ...] = ()
    REDIS_SOCKET_TIMEOUT: float = 0.5
    REDIS_CONNECT_TIMEOUT: float = 0.25
    REDIS_RETRIES: int = 1
    REDIS_MAX_CONNECTIONS: int = 32
    REDIS_MIN_REPLICAS_ACK: int = 0
    REDIS_WAIT_TIMEOUT_MS: int = 200
    KEY_PREFIX: str = "stat:"
    MAX_BODY_BYTES: int = 1024 * 1024
    MAX_ITEMS: int = 5000
    # None: 5000, or MAX_ITEMS when that is lower (set in load_settings)
    MAX_RECORDS: int | None = None
    MAX_FAVORITES: int | None = None
    HISTORY_FULL: str = "reject"
    CURSOR_SECRET: str | None = None
    CURSOR_MAX_AGE: int = 86400
    JWT_SECRET: str | None = None
    JWT_PUBLIC_KEY: str | None = None
    JWT_JWKS_URL: str | None = None
    # With none of the three keys above: the development secret in this file,
    # made when missing (set by make run and make token; local/devsecret.py).
    JWT_DEV_SECRET_FILE: str | None = None
    JWT_JWKS_TIMEOUT: float = 1.0
    JWT_JWKS_CACHE_SECONDS: int = 300
    JWT_JWKS_REFRESH_COOLDOWN: float = 5.0
    JWT_ALGORITHMS: tuple[str, ...] = ()
    JWT_AUDIENCE: str | None = None
    JWT_ISSUER: str | None = None
    JWT_LEEWAY: int = 30
    JWT_ADMIN_SCOPE: str = "stat:admin"
    JWT_CACHE_SIZE: int = 10000
    JWT_CACHE_SECONDS: float = 60.0
    RETRY_AFTER_SECONDS: int = 1
    REQUEST_READ_TIMEOUT: float = 10.0
    MAX_IN_FLIGHT: int = 8
    QUEUE_TIMEOUT: float = 1.0
    EMBEDDED_REDIS: bool = False
    EXPRESS_LANE: bool = True
    LOG_LEVEL: str = "INFO"
    LOG_FORMAT: str = "json"
    LOG_SUBSCRIBER_IDS: str = "hash"


_CONVERTERS = {
    "REDIS_CLUSTER": _bool,
    "REDIS_CLUSTER_NODES": _list,
    "REDIS_SOCKET_TIMEOUT": float,
    "REDIS_CONNECT_TIMEOUT": float,
    "REDIS_RETRIES": int,
    "REDIS_MAX_CONNECTIONS": int,
    "REDIS_MIN_REPLICAS_ACK": int,
    "REDIS_WAIT_TIMEOUT_MS": int,
    "MAX_BODY_BYTES": int,
    "MAX_ITEMS": int,
    "MAX_RECORDS": int,
    "MAX_FAVORITES": int,
    "CURSOR_MAX_AGE": int,
    "HISTORY_FULL": lambda value: value.strip().lower(),
    "JWT_JWKS_TIMEOUT": float,
    "JWT_JWKS_CACHE_SECONDS": int,
    "JWT_JWKS_REFRESH_COOLDOWN": float,
    "JWT_ALGORITHMS": _list,
    "JWT_LEEWAY": int,
    "JWT_CACHE_SIZE": int,
    "JWT_CACHE_SECONDS": float,
    "RETRY_AFTER_SECONDS": int,
    "REQUEST_READ_TIMEOUT": float,
    "MAX_IN_FLIGHT": int,
    "QUEUE_TIMEOUT": float,
    "EMBEDDED_REDIS": _bool,
    "EXPRESS_LANE": _bool,
}


def load_settings(overrides: dict | None = None, environ=None) -> Settings:
    """Defaults, then the environment, then ``overrides`` (a test mapping)."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    for f in fields(Settings):
        raw = environ.get(f.name)
        if raw is None or raw == "":
            continue
        convert = _CONVERTERS.get(f.name, str)
        try:
            values[f.name] = convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{f.name}={raw!r} is not valid: {exc}") from None
    for key, value in (overrides or {}).items():
        # Keys that are not settings (TESTING, ...) are Flask's business.
        if key in Settings.__dataclass_fields__:
            values[key] = value
    max_items = values.get("MAX_ITEMS", Settings.MAX_ITEMS)
    for name in ("MAX_RECORDS", "MAX_FAVORITES"):
        if values.get(name) is None:
            values[name] = min(DEFAULT_BOUND, max_items)
    if values.get("REDIS_CLUSTER_NODES") and values.get("REDIS_CLUSTER") is None:
        values["REDIS_CLUSTER"] = True  # seed nodes are a cluster's
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if "{" in s.KEY_PREFIX or "}" in s.KEY_PREFIX:
        raise ConfigError(
            "KEY_PREFIX must not contain '{' or '}' (it would move the hash tag)"
        )
    if s.MAX_BODY_BYTES < 1 or s.MAX_ITEMS < 1:
        raise ConfigError("MAX_BODY_BYTES and MAX_ITEMS must be positive")
    for name in ("MAX_RECORDS", "MAX_FAVORITES"):
        value = getattr(s, name)
        if not 1 <= value <= s.MAX_ITEMS:
            # Above MAX_ITEMS a stored history could no longer be written
            # back whole in one request (API.md section 8).
            raise ConfigError(
                f"{name}={value} must be from 1 to MAX_ITEMS ({s.MAX_ITEMS})"
            )
    if s.HISTORY_FULL not in ("reject", "evict"):
        raise ConfigError("HISTORY_FULL must be reject or evict")
    if s.CURSOR_MAX_AGE < 1:
        raise ConfigError("CURSOR_MAX_AGE must be at least 1 second")
    if (
        s.REDIS_RETRIES < 0
        or s.REDIS_SOCKET_TIMEOUT <= 0
        or s.REDIS_CONNECT_TIMEOUT <= 0
    ):
        raise ConfigError(
            "REDIS_SOCKET_TIMEOUT and REDIS_CONNECT_TIMEOUT must be positive "
            "and REDIS_RETRIES >= 0"
        )
    if s.REDIS_CLUSTER_NODES and s.REDIS_CLUSTER is False:
        raise ConfigError("REDIS_CLUSTER_NODES needs REDIS_CLUSTER=true (or unset)")
    for node in s.REDIS_CLUSTER_NODES:
        host, _, port = node.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"REDIS_CLUSTER_NODES: {node!r} is not host:port")
    if s.REDIS_MIN_REPLICAS_ACK < 0:
        raise ConfigError("REDIS_MIN_REPLICAS_ACK must be 0 (off) or more")
    if s.REDIS_MIN_REPLICAS_ACK and not (
        0 < s.REDIS_WAIT_TIMEOUT_MS < s.REDIS_SOCKET_TIMEOUT * 1000
    ):
        raise ConfigError(
            "REDIS_WAIT_TIMEOUT_MS must be positive and below REDIS_SOCKET_TIMEOUT "
            f"({s.REDIS_SOCKET_TIMEOUT * 1000:g} ms), or WAIT would outlast the "
            "socket timeout"
        )
    if s.REQUEST_READ_TIMEOUT <= 0 or s.QUEUE_TIMEOUT <= 0:
        raise ConfigError("REQUEST_READ_TIMEOUT and QUEUE_TIMEOUT must be positive")
    if not 0 < s.MAX_IN_FLIGHT < s.REDIS_MAX_CONNECTIONS:
        raise ConfigError(
            "MAX_IN_FLIGHT must be positive and below REDIS_MAX_CONNECTIONS "
            f"({s.REDIS_MAX_CONNECTIONS}), so that /readyz always finds a Redis "
            "connection"
        )
    if s.LOG_LEVEL.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("LOG_LEVEL must be debug, info, warning, error or critical")
    if s.LOG_FORMAT not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be json or text")
    if s.LOG_SUBSCRIBER_IDS not in ("hash", "omit"):
        raise ConfigError("LOG_SUBSCRIBER_IDS must be hash or omit")
