"""Running the service in production, without Flask: metrics and logs.

metrics (the Prometheus metrics, summed over gunicorn workers) and logs (one
JSON object per line, gunicorn's own logger included).

Imports: prometheus_client, orjson and gunicorn's logging only; never Flask
or werkzeug, nor any other part of stat_service.
"""
