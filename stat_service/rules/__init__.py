"""What a valid request is, without Flask.

strictjson (strict JSON parsing), schemas (the marshmallow rules of bodies
and ids), fastpath (those rules compiled to plain checks) and cursors (signed
page cursors). Used by the HTTP face and by the bulk tool alike.

Imports: the standard library, marshmallow and orjson only; never Flask or
werkzeug, nor any other part of stat_service.
"""
