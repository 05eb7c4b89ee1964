"""Bulk import, export and erasure of subscriber histories, without Flask.

``python -m stat_service import|export|erase`` (cli.py) is the command line
over this package. Everything here goes through the service's own pieces:
``strictjson.loads`` and the marshmallow schemas of ``schemas.load_body``
validate, ``StatStore.script_call`` builds the same Lua call a PUT makes,
and the reject details are the error bodies the API gives.

sources (JSON Lines and CSV input), checks (each entry checked like a
request), writes (pipelined writes, the worker processes), checkpoints
(resuming), progress (the bar and the signals), importer (``run_import``),
export (export and erase), cli (the command line).

Imports: rules, storage, errors and config; never Flask or werkzeug, nor
http or serving.
"""
