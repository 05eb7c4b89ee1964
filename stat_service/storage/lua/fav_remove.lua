-- fav_remove: remove one favorite; the others keep their positions.
--
-- KEYS[1]  favorites sorted set of the subscriber
-- ARGV[1]  the asset guid
--
-- Returns {1 when it was there and is removed else 0, favorites stored
-- afterwards}.

local removed = redis.call("ZREM", KEYS[1], ARGV[1])
return { removed, redis.call("ZCARD", KEYS[1]) }
