"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from stat_service import create_app

app = create_app()
