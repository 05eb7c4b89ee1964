"""The HTTP face: the Flask app, its views and everything that knows Flask.

app (create_app, check_config), views (the stat routes and the probes),
activity (the activity family), auth (bearer tokens), errors (every error
answered in the MetaX shape), observability (metrics and the request log per
request), jsonprovider (orjson responses), openapi, openapi_schemas and
openapi_activity (the OpenAPI document and the /docs page).

Imports: Flask and werkzeug, and rules, storage, ops, errors, config and
local (the development secret) below it; never serving or bulk.
"""
