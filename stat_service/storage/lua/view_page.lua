-- view_page: one page of a list of records, most recently played first
-- (keyset paging). Runs after _order.lua.
--
-- KEYS[1]  view-data hash of the subscriber (field = asset id, value =
--          encoded record, see stat_service/store.py)
-- ARGV[1]  the list: "watch" (records that have last_played_on) or
--          "continue" (records whose pause_time is above 0)
-- ARGV[2]  how many records to return at most (the page size plus one, so
--          the caller knows whether more follow)
-- ARGV[3]  "" for the first page, else the last_played_on (decimal text,
--          "-1" for none) of the previous page's last record
-- ARGV[4]  the asset id of the previous page's last record (with ARGV[3]);
--          it need not be in the hash any more
--
-- Order (API.md section 2): last_played_on descending, records without it
-- last, ties by asset id in code-point order. The page holds the first
-- records that come after the cursor in that order.
-- Returns {records in the whole list, asset id, record, asset id, record,
-- ...}: the page in order, records as stored.

local views = KEYS[1]
local watch = ARGV[1] == "watch"
local limit = tonumber(ARGV[2])
local after = ARGV[3] ~= ""
local after_played = tonumber(ARGV[3])
local after_id = ARGV[4]

local flat = redis.call("HGETALL", views)
local total, n = 0, 0
local at, played = {}, {}
for i = 1, #flat, 2 do
  local p, l = pause_and_played(flat[i + 1])
  local member
  if watch then
    member = l ~= nil and l ~= ""
  else
    member = p ~= nil and p ~= "" and p ~= "0"
  end
  if member then
    total = total + 1
    local rank = tonumber(l) or -1
    if
      not after
      or rank < after_played
      or (rank == after_played and id_less(after_id, flat[i]))
    then
      n = n + 1
      at[n] = i
      played[n] = rank
    end
  end
end

local page = first_k(n, limit, function(a, b)
  if played[a] ~= played[b] then
    return played[a] > played[b]
  end
  return id_less(flat[at[a]], flat[at[b]])
end)
local out = { total }
for k = 1, #page do
  local i = at[page[k]]
  out[#out + 1] = flat[i]
  out[#out + 1] = flat[i + 1]
end
return out
