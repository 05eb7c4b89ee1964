-- fav_add: add one favorite at the end of the list, within MAX_FAVORITES.
--
-- KEYS[1]  favorites sorted set of the subscriber (member = asset guid,
--          score = position; positions only grow, gaps are left by removals)
-- ARGV[1]  the asset guid (validated by the caller)
-- ARGV[2]  MAX_FAVORITES, the most favorites the list may hold after an add
--
-- A guid already in the list keeps its position. Otherwise its position is
-- the last one's plus 1 (0 in an empty list).
-- Returns {1, favorites stored afterwards} when added, {0, favorites stored}
-- when it was already there, or {-1, favorites the list would hold} when
-- the bound refuses the add (nothing is written).

local fav, guid = KEYS[1], ARGV[1]
local count = redis.call("ZCARD", fav)
if redis.call("ZSCORE", fav, guid) then
  return { 0, count }
end
if count + 1 > tonumber(ARGV[2]) then
  return { -1, count + 1 }
end
local last = redis.call("ZRANGE", fav, -1, -1, "WITHSCORES")
local position = 0
if last[2] then
  position = tonumber(last[2]) + 1
end
redis.call("ZADD", fav, position, guid)
return { 1, count + 1 }
