-- put_delta: merge one request into a subscriber's history (isDelta=true),
-- within the bound MAX_RECORDS (API.md section 8). Runs after _order.lua
-- and _favorites.lua.
--
-- KEYS[1]  favorites sorted set of the subscriber (member = asset guid,
--          score = position)
-- KEYS[2]  view-data hash of the subscriber (field = asset id,
--          value = encoded record, see stat_service/store.py)
-- ARGV[1]  "1": replace the favorites with ARGV[5 .. 4+n] (those that stay
--          keep their positions, see _favorites.lua); "0": keep them
-- ARGV[2]  MAX_RECORDS, the most records the hash may hold after a write
--          that adds records
-- ARGV[3]  "evict": make room by removing the least recently played
--          records; "reject": write nothing when the bound would be passed
-- ARGV[4]  n, the number of favorites that follow (already de-duplicated,
--          in order, at most MAX_FAVORITES; 0 with ARGV[1] = "1" erases them)
-- ARGV[5 .. 4+n]            the favorites, in order
-- ARGV[5+n ..] in pairs     asset id, patch. A patch has one slot per record
--          field, separated by "|": "" keeps the stored value, "-" removes
--          it, anything else is the new value as decimal text (validated
--          and formatted by the caller: see store.py). Each asset
--          appears at most once (repeats are merged by the caller).
--
-- The bound: only a write that adds records is checked. When the records
-- stored plus the new ones would pass MAX_RECORDS, "reject" returns before
-- anything is written; "evict" removes that many records first (never one
-- this request writes): records without last_played_on first, then the
-- oldest, ties by asset id. Favorites are never evicted.
--
-- Values are never turned into Lua numbers: they are copied as strings.
-- Returns {0, favorites stored afterwards, records evicted}, or
-- {1, records the history would hold} when the bound rejects the write.

local NSLOTS = 5
local CHUNK = 1000 -- keeps unpack() far below Lua's C stack limit

local function split(s)
  local slots, pos = {}, 1
  for i = 1, NSLOTS do
    local j = string.find(s, "|", pos, true)
    if j then
      slots[i] = string.sub(s, pos, j - 1)
      pos = j + 1
    else
      slots[i] = string.sub(s, pos)
      pos = #s + 2
    end
  end
  return slots
end

local function join(slots)
  local last = 0
  for i = NSLOTS, 1, -1 do
    if slots[i] ~= "" then
      last = i
      break
    end
  end
  return table.concat(slots, "|", 1, last)
end

local fav, views = KEYS[1], KEYS[2]
local max_records = tonumber(ARGV[2])
local evict = ARGV[3] == "evict"
local nfav = tonumber(ARGV[4])
local first = 5 + nfav

-- Read every record the request names, and count the new ones.
local ids, old, added = {}, {}, 0
for start = first, #ARGV, 2 * CHUNK do
  local chunk = {}
  for i = start, math.min(start + 2 * CHUNK - 1, #ARGV), 2 do
    chunk[#chunk + 1] = ARGV[i]
  end
  local stored = redis.call("HMGET", views, unpack(chunk))
  for k = 1, #chunk do
    ids[#ids + 1] = chunk[k]
    old[#ids] = stored[k] or false
    if not stored[k] then
      added = added + 1
    end
  end
end

local evicted = 0
if added > 0 then
  local reach = redis.call("HLEN", views) + added
  if reach > max_records then
    if not evict then
      return { 1, reach }
    end
    local written = {}
    for k = 1, #ids do
      written[ids[k]] = true
    end
    local flat = redis.call("HGETALL", views)
    local cid, played, n = {}, {}, 0
    for i = 1, #flat, 2 do
      if not written[flat[i]] then
        local _, p = pause_and_played(flat[i + 1])
        n = n + 1
        cid[n] = flat[i]
        played[n] = tonumber(p) or -1
      end
    end
    -- Least recently played first: no last_played_on, then oldest, then id.
    local victims = first_k(n, reach - max_records, function(a, b)
      if played[a] ~= played[b] then
        return played[a] < played[b]
      end
      return id_less(cid[a], cid[b])
    end)
    for start = 1, #victims, CHUNK do
      local chunk = {}
      for k = start, math.min(start + CHUNK - 1, #victims) do
        chunk[#chunk + 1] = cid[victims[k]]
      end
      redis.call("HDEL", views, unpack(chunk))
    end
    evicted = #victims
  end
end

if ARGV[1] == "1" then
  set_favorites(fav, 5, nfav)
end

for start = 1, #ids, CHUNK do
  local args = {}
  for k = start, math.min(start + CHUNK - 1, #ids) do
    local patch = split(ARGV[first + 2 * k - 1])
    local slots = split(old[k] or "")
    for i = 1, NSLOTS do
      local p = patch[i]
      if p == "-" then
        slots[i] = ""
      elseif p ~= "" then
        slots[i] = p
      end
    end
    args[#args + 1] = ids[k]
    args[#args + 1] = join(slots)
  end
  redis.call("HSET", views, unpack(args))
end

return { 0, redis.call("ZCARD", fav), evicted }
