"""Settings: defaults, the environment, and clear errors for unusable values."""

from __future__ import annotations

from pathlib import Path

import pytest

from stat_service import check_config
from stat_service.config import ConfigError, Settings, load_settings

KEY = {"JWT_SECRET": "a-secret-of-at-least-thirty-two-bytes!!"}


def test_defaults_are_the_documented_ones():
    s = load_settings(environ={})
    assert s.MAX_BODY_BYTES == 1024 * 1024
    assert s.MAX_ITEMS == 5000
    assert s.KEY_PREFIX == "stat:"
    assert s.JWT_ADMIN_SCOPE == "stat:admin"
    assert s.REDIS_SOCKET_TIMEOUT == 0.5 and s.REDIS_RETRIES == 1
    assert s.REQUEST_READ_TIMEOUT == 10


def test_environment_then_overrides():
    s = load_settings({"MAX_ITEMS": 7}, environ={"MAX_ITEMS": "9", "KEY_PREFIX": "x:"})
    assert s.MAX_ITEMS == 7 and s.KEY_PREFIX == "x:"
    assert load_settings(environ={"JWT_ALGORITHMS": "RS256, ES256"}).JWT_ALGORITHMS == (
        "RS256",
        "ES256",
    )


@pytest.mark.parametrize(
    "environ",
    [
        {"LOG_LEVEL": "verbose"},
        {"LOG_FORMAT": "xml"},
        {"LOG_SUBSCRIBER_IDS": "Hash"},
        {"KEY_PREFIX": "a{b}:"},
        {"MAX_ITEMS": "0"},
        {"MAX_BODY_BYTES": "lots"},
        {"REDIS_SOCKET_TIMEOUT": "0"},
        {"REDIS_RETRIES": "-1"},
        {"REDIS_CLUSTER": "perhaps"},
        {"REQUEST_READ_TIMEOUT": "0"},
        {"QUEUE_TIMEOUT": "-1"},
        {"MAX_IN_FLIGHT": "32"},  # REDIS_MAX_CONNECTIONS: none left for /readyz
        {"MAX_IN_FLIGHT": "0"},
    ],
    ids=lambda e: next(iter(e)),
)
def test_unusable_values_are_a_config_error_naming_the_setting(environ):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert next(iter(environ)) in str(caught.value)


def test_check_config_refuses_a_missing_key_and_a_bad_redis_url(monkeypatch):
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        check_config({})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        check_config({**KEY, "REDIS_URL": "http://nope"})
    check_config(KEY)  # usable: no exception, and no Redis needed


def test_every_setting_has_a_readme_row():
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for name in Settings.__dataclass_fields__:
        assert f"`{name}`" in readme, name
