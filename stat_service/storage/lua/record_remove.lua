-- record_remove: remove one asset's whole record; favorites are untouched.
--
-- KEYS[1]  view-data hash of the subscriber
-- ARGV[1]  the asset id
--
-- Returns 1 when the record was there and is removed, else 0.

return redis.call("HDEL", KEYS[1], ARGV[1])
