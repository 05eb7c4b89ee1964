"""Settings: defaults, the environment, and clear errors for unusable values."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

import fakeredis
import jwt
import pytest

from stat_service import check_config, create_app
from stat_service.config import ConfigError, Settings, load_settings
from stat_service.local import devsecret, devtoken
from tests.conftest import PATH

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


def test_every_setting_has_a_row_in_the_configuration_docs():
    docs = Path(__file__).parents[1] / "docs" / "configuration.md"
    text = docs.read_text(encoding="utf-8")
    for name in Settings.__dataclass_fields__:
        assert f"`{name}`" in text, name


# --- the development secret of make run (JWT_DEV_SECRET_FILE) ------------------


@pytest.fixture
def dev_secret(tmp_path, monkeypatch):
    """A fresh checkout's .dev-secret path; nothing announced in this process."""
    monkeypatch.setattr(devsecret, "_announced", set())
    return tmp_path / ".dev-secret"


def _app(**config):
    return create_app({"TESTING": True, **config}, redis_client=fakeredis.FakeRedis())


def _announcements(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "DEVELOPMENT SECRET" in r.getMessage()
    ]


def test_dev_secret_file_is_made_owner_only_once_then_reused(dev_secret, caplog):
    first = _app(JWT_DEV_SECRET_FILE=str(dev_secret)).config["STAT"]
    assert stat.S_IMODE(dev_secret.stat().st_mode) == 0o600
    written = dev_secret.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", written), written
    assert written.strip() == first.JWT_SECRET
    # A second start (and check_config, as gunicorn's master runs it) reuses it.
    check_config({"JWT_DEV_SECRET_FILE": str(dev_secret)})
    second = _app(JWT_DEV_SECRET_FILE=str(dev_secret)).config["STAT"]
    assert second.JWT_SECRET == first.JWT_SECRET
    assert dev_secret.read_text() == written
    assert [p.name for p in dev_secret.parent.iterdir()] == [".dev-secret"]
    # One loud line with the path, however many times the app is built.
    (line,) = _announcements(caplog)
    assert str(dev_secret) in line and "JWT_SECRET" in line, line


def test_another_checkout_gets_another_secret(tmp_path, dev_secret):
    other = tmp_path / "other" / ".dev-secret"
    other.parent.mkdir()
    mine = _app(JWT_DEV_SECRET_FILE=str(dev_secret)).config["STAT"].JWT_SECRET
    theirs = _app(JWT_DEV_SECRET_FILE=str(other)).config["STAT"].JWT_SECRET
    assert mine != theirs


def test_a_file_appearing_meanwhile_is_kept_whole(dev_secret, monkeypatch):
    # make token and make run's first start racing: the one that links its
    # file first wins, the other reads that one and leaves nothing behind.
    dev_secret.write_text("theirs-" + "0" * 57 + "\n")
    dev_secret.chmod(0o600)
    monkeypatch.setattr(devsecret.os.path, "lexists", lambda path: False)
    assert devsecret.load_or_create(str(dev_secret)) == "theirs-" + "0" * 57
    assert [p.name for p in dev_secret.parent.iterdir()] == [".dev-secret"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_dev_secret_file_open_to_others_is_refused(dev_secret, mode):
    _app(JWT_DEV_SECRET_FILE=str(dev_secret))
    dev_secret.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        check_config({"JWT_DEV_SECRET_FILE": str(dev_secret)})
    assert str(dev_secret) in str(caught.value)
    assert f"{mode:04o}" in str(caught.value)
    with pytest.raises(ConfigError, match="chmod 600"):
        _app(JWT_DEV_SECRET_FILE=str(dev_secret))


def test_empty_dev_secret_file_is_refused(dev_secret):
    dev_secret.touch(mode=0o600)
    with pytest.raises(ConfigError, match="is empty") as caught:
        check_config({"JWT_DEV_SECRET_FILE": str(dev_secret)})
    assert str(dev_secret) in str(caught.value)


def test_dev_secret_file_in_a_missing_directory_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere" / ".dev-secret"
    with pytest.raises(ConfigError, match="JWT_DEV_SECRET_FILE"):
        check_config({"JWT_DEV_SECRET_FILE": str(path)})


@pytest.mark.parametrize(
    "config",
    [{}, {"EMBEDDED_REDIS": True}],
    ids=["real-redis", "embedded"],
)
def test_without_the_opt_in_a_missing_key_is_refused(config):
    # gunicorn run directly (production): no development secret, in either mode.
    with pytest.raises(ConfigError, match="JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS"):
        check_config(config)
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        _app(**config)


@pytest.mark.parametrize(
    "key",
    [{"JWT_SECRET": KEY["JWT_SECRET"]}, {"JWT_JWKS_URL": "http://127.0.0.1:9/k"}],
    ids=["secret", "jwks"],
)
def test_a_configured_key_wins_over_the_dev_secret(dev_secret, key, caplog):
    settings = _app(JWT_DEV_SECRET_FILE=str(dev_secret), **key).config["STAT"]
    assert key.get("JWT_SECRET") == settings.JWT_SECRET
    assert not dev_secret.exists()
    assert _announcements(caplog) == []


def _devtoken(capsys, *argv) -> str:
    devtoken.main(list(argv))
    return capsys.readouterr().out.strip()


def test_devtoken_before_the_first_start_signs_with_the_file_the_app_uses(
    dev_secret, monkeypatch, capsys
):
    monkeypatch.setenv("JWT_DEV_SECRET_FILE", str(dev_secret))
    token = _devtoken(capsys, "u1")  # makes the file
    assert stat.S_IMODE(dev_secret.stat().st_mode) == 0o600
    secret = dev_secret.read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "u1"

    client = _app().test_client()  # JWT_DEV_SECRET_FILE from the environment
    auth = {"Authorization": f"Bearer {token}"}
    reply = client.put(
        f"{PATH}u1?isDelta=true", json={"favorites": ["a1"]}, headers=auth
    )
    assert reply.status_code == 200, reply.json
    assert client.get(f"{PATH}u1", headers=auth).json["favorites"] == ["a1"]
    # After the start as well, and the admin scope with --admin.
    admin = _devtoken(capsys, "--admin", "back-office")
    claims = jwt.decode(admin, secret, algorithms=["HS256"])
    assert claims["scope"] == "stat:admin"
    auth = {"Authorization": f"Bearer {admin}"}
    assert client.get(f"{PATH}u1", headers=auth).status_code == 200


def test_devtoken_prefers_jwt_secret(dev_secret, monkeypatch, capsys):
    monkeypatch.setenv("JWT_DEV_SECRET_FILE", str(dev_secret))
    monkeypatch.setenv("JWT_SECRET", KEY["JWT_SECRET"])
    token = _devtoken(capsys, "u1")
    assert jwt.decode(token, KEY["JWT_SECRET"], algorithms=["HS256"])["sub"] == "u1"
    assert not dev_secret.exists()


def test_devtoken_without_a_key_or_the_file_setting_says_so(capsys):
    with pytest.raises(SystemExit) as caught:
        devtoken.main(["u1"])
    assert caught.value.code == 2
    assert "JWT_DEV_SECRET_FILE" in capsys.readouterr().err


def test_devtoken_refuses_a_file_open_to_others(dev_secret, monkeypatch, capsys):
    dev_secret.write_text("s" * 64)
    dev_secret.chmod(0o644)
    monkeypatch.setenv("JWT_DEV_SECRET_FILE", str(dev_secret))
    with pytest.raises(SystemExit) as caught:
        devtoken.main(["u1"])
    assert caught.value.code == 2
    err = capsys.readouterr()
    assert "chmod 600" in err.err and err.out == ""
