-- record_get: one asset's record.
--
-- KEYS[1]  view-data hash of the subscriber
-- ARGV[1]  the asset id
--
-- Returns the encoded record (see stat_service/store.py), or false (nil)
-- when the subscriber has no record of that asset.

return redis.call("HGET", KEYS[1], ARGV[1])
