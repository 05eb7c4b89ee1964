-- read: a subscriber's whole history, in one consistent snapshot.
--
-- KEYS[1]  favorites sorted set of the subscriber
-- KEYS[2]  view-data hash of the subscriber
-- (no ARGV)
--
-- Returns one string: the favorites in stored order joined by "\31" (unit
-- separator), then "\30" (record separator), then the flat HGETALL of the
-- view-data hash (asset id, encoded record, ...) joined by "\31". Neither
-- separator can occur in the data: ids and favorites are validated to hold
-- no control characters and records hold only digits, ".", "e", "-", "+"
-- and "|". One bulk string is far cheaper for the client to parse than a
-- nested reply of thousands of elements. Records are ordered by the
-- caller, so numbers are never handled as Lua doubles.

local favorites = redis.call("ZRANGE", KEYS[1], 0, -1)
local views = redis.call("HGETALL", KEYS[2])
return table.concat(favorites, "\31") .. "\30" .. table.concat(views, "\31")
