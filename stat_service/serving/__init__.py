"""The gunicorn side: what runs around the app, below HTTP routing.

worker (``StatWorker``, the gevent worker class: read deadlines, bounded
requests in flight, probes never queued) and pages (the errors gunicorn
answers itself, written as MetaX JSON).

Imports: gunicorn and gevent, and config, ops and errors; never Flask or
werkzeug, nor http (the app reaches it only through WSGI), nor bulk.
"""
