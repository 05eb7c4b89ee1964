-- read: a subscriber's whole history, in one consistent snapshot.
--
-- KEYS[1]  favorites sorted set of the subscriber
-- KEYS[2]  view-data hash of the subscriber
-- (no ARGV)
--
-- Returns { favorites in stored order, flat HGETALL of the view-data hash
-- (asset id, encoded record, ...) }. Ordering of the records is done by
-- the caller, so numbers are never handled as Lua doubles.

return { redis.call("ZRANGE", KEYS[1], 0, -1), redis.call("HGETALL", KEYS[2]) }
