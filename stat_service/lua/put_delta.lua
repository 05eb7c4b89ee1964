-- put_delta: merge one request into a subscriber's history (isDelta=true).
--
-- KEYS[1]  favorites sorted set of the subscriber (member = asset guid,
--          score = position, 0-based)
-- KEYS[2]  view-data hash of the subscriber (field = asset id,
--          value = encoded record, see stat_service/store.py)
-- ARGV[1]  "1": replace the favorites with ARGV[3 .. 2+n]; "0": keep them
-- ARGV[2]  n, the number of favorites that follow (already de-duplicated,
--          in order; 0 with ARGV[1] = "1" erases the favorites)
-- ARGV[3 .. 2+n]            the favorites, in order
-- ARGV[3+n ..] in pairs     asset id, patch. A patch has one slot per record
--          field, separated by "|": "" keeps the stored value, "-" removes
--          it, anything else is the new value as decimal text (validated
--          and formatted by the caller: see store.py). Each asset
--          appears at most once (repeats are merged by the caller).
--
-- Values are never turned into Lua numbers: they are copied as strings.
-- Returns the number of favorites stored afterwards.

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
local nfav = tonumber(ARGV[2])

if ARGV[1] == "1" then
  redis.call("DEL", fav)
  for start = 3, 2 + nfav, CHUNK do
    local args = {}
    for i = start, math.min(start + CHUNK - 1, 2 + nfav) do
      args[#args + 1] = i - 3
      args[#args + 1] = ARGV[i]
    end
    redis.call("ZADD", fav, unpack(args))
  end
end

local first = 3 + nfav
for start = first, #ARGV, 2 * CHUNK do
  local stop = math.min(start + 2 * CHUNK - 1, #ARGV)
  local ids = {}
  for i = start, stop, 2 do
    ids[#ids + 1] = ARGV[i]
  end
  local old = redis.call("HMGET", views, unpack(ids))
  local args = {}
  for k = 1, #ids do
    local patch = split(ARGV[start + 2 * k - 1])
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

return redis.call("ZCARD", fav)
