"""Storage in Redis, without Flask.

client (the Redis client: one server or a cluster, failing promptly), store
(StatStore: one Lua script per operation, the scripts in lua/) and records
(hash tags and the record encoding).

Imports: redis, config and ops (the metrics of script calls); never Flask or
werkzeug, nor rules, http, serving or bulk.
"""
