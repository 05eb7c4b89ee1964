"""Flask JSON provider that writes responses with orjson.

Responses only. Request bodies are read by ``fastpath`` (orjson, with the
duplicate keys and long literals it would let through checked apart) and,
whenever it says no, by ``strictjson``, whose errors are the API's.
"""

from __future__ import annotations

import orjson
from flask.json.provider import DefaultJSONProvider


class OrjsonProvider(DefaultJSONProvider):
    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj).decode()

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        # content_type (not mimetype): the header as is, no charset handling.
        return self._app.response_class(
            orjson.dumps(obj), content_type="application/json"
        )
