"""The Flask app: ``create_app`` builds it, ``check_config`` checks the settings.

``stat_service`` exports both (lazily, so the parts without Flask stay so).
"""

from __future__ import annotations

import dataclasses

from flask import Flask

from ..config import ConfigError, Settings, load_settings
from ..local import devsecret
from ..ops import logs
from ..rules.cursors import Cursors, cursor_key
from ..storage.store import Bounds, StatStore
from . import activity, errors, observability
from .auth import TokenVerifier
from .express import ExpressLane
from .jsonprovider import OrjsonProvider
from .observability import metrics_bp
from .openapi import openapi_bp
from .views import RestOfPath, probes_bp, stat_bp

__all__ = ["create_app", "check_config"]


def _with_dev_key(settings: Settings) -> Settings:
    """With no key configured, the development secret of make run, if opted in.

    JWT_DEV_SECRET_FILE (set by make run and make token) names the file; it
    is made when missing. The first process to get here says so loudly: under
    gunicorn the master (check_config, before forking), not every worker.
    """
    path = settings.JWT_DEV_SECRET_FILE
    if not path or (
        settings.JWT_SECRET or settings.JWT_PUBLIC_KEY or settings.JWT_JWKS_URL
    ):
        return settings
    secret = devsecret.load_or_create(path)
    # Not set up yet in gunicorn's master (create_app does it in workers).
    logs.configure(settings.LOG_LEVEL, settings.LOG_FORMAT)
    devsecret.announce(path)
    return dataclasses.replace(settings, JWT_SECRET=secret)


def check_config(config: dict | None = None) -> None:
    """Raise ConfigError for unusable settings, without touching Redis."""
    from ..storage.client import make_client

    settings = _with_dev_key(load_settings(config))
    TokenVerifier(settings)
    try:
        make_client(settings).close()  # parses REDIS_URL; connects lazily
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None


def create_app(config: dict | None = None, *, redis_client=None) -> Flask:
    """Build the app: defaults, then the environment, then ``config``."""
    settings = load_settings(config)
    logs.configure(settings.LOG_LEVEL, settings.LOG_FORMAT)
    settings = _with_dev_key(settings)

    app = Flask("stat_service")  # its logger is "stat_service" too
    app.json = OrjsonProvider(app)
    app.config.update(config or {})
    app.config["STAT"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_BODY_BYTES
    app.url_map.converters["rest"] = RestOfPath
    app.url_map.merge_slashes = False

    if redis_client is None:
        from ..storage.client import make_client

        redis_client = make_client(settings)
    app.extensions["stat_store"] = StatStore(
        redis_client,
        prefix=settings.KEY_PREFIX,
        min_replicas=settings.REDIS_MIN_REPLICAS_ACK,
        wait_timeout_ms=settings.REDIS_WAIT_TIMEOUT_MS,
        bounds=Bounds.from_settings(settings),
    )
    app.extensions["stat_auth"] = TokenVerifier(settings)
    app.extensions["stat_cursors"] = Cursors(
        cursor_key(settings), settings.CURSOR_MAX_AGE
    )

    errors.register(app)
    observability.install(app)
    app.register_blueprint(stat_bp)
    activity.install(app)
    app.register_blueprint(probes_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(openapi_bp)
    if settings.EXPRESS_LANE:
        app.wsgi_app = ExpressLane(app, app.wsgi_app)
    return app
