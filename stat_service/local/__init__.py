"""Local development: make run and make token on a bare machine.

embedded (an in-memory Redis when none answers), devsecret (the checkout's
development JWT secret) and devtoken (``python -m stat_service.local.devtoken``:
a signed token for local use).

Imports: config only (and fakeredis, PyJWT); never Flask or werkzeug, nor
http, serving or bulk.
"""
