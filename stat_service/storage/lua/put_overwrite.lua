-- put_overwrite: replace a subscriber's whole history (isDelta=false).
--
-- KEYS[1]  favorites sorted set of the subscriber (member = asset guid,
--          score = position)
-- KEYS[2]  view-data hash of the subscriber (field = asset id,
--          value = encoded record, see stat_service/store.py)
-- ARGV[1]  n, the number of favorites that follow (already de-duplicated)
-- ARGV[2 .. 1+n]            the favorites, in order
-- ARGV[2+n ..] in pairs     asset id, encoded record (slots separated by
--          "|", "" for an absent field, trailing empty slots dropped;
--          each asset at most once)
--
-- Both keys are rewritten whole, so afterwards the history is exactly the
-- request (favorites that stay keep their positions: _favorites.lua, put
-- in front of this script). Only the two declared keys are touched. Values
-- are copied as strings, never turned into Lua numbers. The bounds (API.md section 8)
-- need no look at the stored history here: the caller refuses a request
-- with more than MAX_RECORDS records or MAX_FAVORITES favorites.
-- Returns {0, favorites stored afterwards, 0 records evicted}, the reply
-- shape of put_delta.lua.

local CHUNK = 1000 -- keeps unpack() far below Lua's C stack limit

local fav, views = KEYS[1], KEYS[2]
local nfav = tonumber(ARGV[1])

set_favorites(fav, 2, nfav)
redis.call("DEL", views)

for start = 2 + nfav, #ARGV, 2 * CHUNK do
  local stop = math.min(start + 2 * CHUNK - 1, #ARGV)
  redis.call("HSET", views, unpack(ARGV, start, stop))
end

return { 0, nfav, 0 }
