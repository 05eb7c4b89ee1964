"""The ceiling of this stack: the service's routes on bare Flask.

PUT reads the body and answers ``{}``; GET answers ``{}``, on the
whole-history paths and on the activity family's (``/metax/2.1/activity/``,
any list and ids: the bench's "activity" scenario). No JSON parsing, no
validation, no auth, no Redis. bench/run.py serves it under the service's
own gunicorn.conf.py (``gunicorn -c gunicorn.conf.py bench.ceiling:app``), so
what separates the two is the service's own work.
"""

from flask import Flask, request

PREFIX = "/metax/3.0/ui/user/stat"
ACTIVITY = "/metax/2.1/activity"

app = Flask(__name__)


@app.put(f"{PREFIX}/<path:_subscriber>")
def put_stat(_subscriber):
    request.get_data(cache=False)
    return app.response_class("{}", mimetype="application/json")


@app.get(f"{PREFIX}/<path:_subscriber>")
def get_stat(_subscriber):
    return app.response_class("{}", mimetype="application/json")


@app.put(f"{ACTIVITY}/<path:_rest>")
def put_activity(_rest):
    request.get_data(cache=False)
    return app.response_class("{}", mimetype="application/json")


@app.get(f"{ACTIVITY}/<path:_rest>")
def get_activity(_rest):
    return app.response_class("{}", mimetype="application/json")
