-- _favorites: set_favorites(), put in front of put_delta.lua and
-- put_overwrite.lua; not a script itself.
--
-- Positions (the sorted set's scores) are what page cursors point at
-- (API.md section 9: a walk returns every favorite that did not change
-- exactly once, in order). So when a request replaces the whole list, the
-- favorites that stay keep their positions, as far as the new order allows:
-- the longest run of them whose old positions rise in the new order keeps
-- them, and every other favorite gets a position between its neighbours.
-- When doubles cannot fit them in between, the list is numbered 0, 1, 2, ...
-- anew. Positions are written as "%.17g" text, which Redis reads back
-- exactly.

local function numbered(n)
  local positions = {}
  for i = 1, n do
    positions[i] = i - 1
  end
  return positions
end

-- Positions for the n favorites whose old positions (or nil) are old[1..n].
local function positions_for(old, n)
  -- Longest strictly rising run of old positions (patience sorting).
  local tails, tail_at, before = {}, {}, {}
  for i = 1, n do
    local p = old[i]
    if p then
      local lo, hi = 1, #tails + 1
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if tails[mid] < p then
          lo = mid + 1
        else
          hi = mid
        end
      end
      tails[lo] = p
      tail_at[lo] = i
      before[i] = tail_at[lo - 1]
    end
  end
  local keep = {}
  local at = tail_at[#tails]
  while at do
    keep[at] = true
    at = before[at]
  end
  -- Everything else between its kept neighbours.
  local positions = {}
  local i = 1
  while i <= n do
    if keep[i] then
      positions[i] = old[i]
      i = i + 1
    else
      local j = i
      while j <= n and not keep[j] do
        j = j + 1
      end
      local k = j - i -- favorites i .. j-1 need positions
      local lo, hi = positions[i - 1], keep[j] and old[j] or nil
      for m = 1, k do
        local p
        if lo and hi then
          p = lo + (hi - lo) * m / (k + 1)
        elseif hi then
          p = hi - (k - m + 1)
        elseif lo then
          p = lo + m
        else
          p = m - 1
        end
        positions[i + m - 1] = p
      end
      i = j
    end
  end
  for m = 2, n do
    if not (positions[m] > positions[m - 1]) then
      return numbered(n)
    end
  end
  return positions
end

-- Replace the favorites in `fav` with ARGV[first .. first + n - 1], in order
-- (already de-duplicated). Call it before the key is deleted or rewritten.
local function set_favorites(fav, first, n)
  local stored = redis.call("ZRANGE", fav, 0, -1, "WITHSCORES")
  local was = {}
  for i = 1, #stored, 2 do
    was[stored[i]] = tonumber(stored[i + 1])
  end
  local old = {}
  for i = 1, n do
    old[i] = was[ARGV[first + i - 1]]
  end
  local positions = positions_for(old, n)
  redis.call("DEL", fav)
  for start = 1, n, 1000 do -- keeps unpack() far below Lua's C stack limit
    local args = {}
    for i = start, math.min(start + 999, n) do
      args[#args + 1] = string.format("%.17g", positions[i])
      args[#args + 1] = ARGV[first + i - 1]
    end
    redis.call("ZADD", fav, unpack(args))
  end
end
