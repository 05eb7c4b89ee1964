-- fav_page: one page of the favorites, in stored order (keyset paging).
--
-- KEYS[1]  favorites sorted set of the subscriber (score = position)
-- ARGV[1]  how many favorites to return at most (the page size plus one,
--          so the caller knows whether more follow)
-- ARGV[2]  "" for the first page, else the position after which the page
--          starts (the score of the previous page's last favorite; it need
--          not be in the list any more)
--
-- Returns {favorites stored, guid, position, guid, position, ...}: the page
-- in order, each guid with its position as Redis prints the score.

local fav = KEYS[1]
local min = "-inf"
if ARGV[2] ~= "" then
  min = "(" .. ARGV[2]
end
local page = redis.call(
  "ZRANGEBYSCORE", fav, min, "+inf", "WITHSCORES", "LIMIT", 0, tonumber(ARGV[1])
)
table.insert(page, 1, redis.call("ZCARD", fav))
return page
