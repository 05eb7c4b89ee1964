-- _order: helpers put in front of the scripts that order records
-- (put_delta.lua for eviction, view_page.lua for pages); not a script itself.
--
-- A record's recency is its last_played_on (slot 4 of the encoded record,
-- see stat_service/store.py) as a Lua number, or -1 when it has none. Lua
-- numbers are doubles, exact for every integer up to 2^53 - 1, the largest
-- value the service stores, so comparing them is exact; they are never
-- written back (values are copied as text).

local byte = string.byte
local match = string.match

-- (pause_time text, last_played_on text) of an encoded record; nil if absent.
local function pause_and_played(record)
  return match(record, "^[^|]*|[^|]*|([^|]*)|?([^|]*)")
end

-- Whether id a sorts before id b in code-point order, which for UTF-8 is
-- byte order. Lua's "<" on strings uses the server's collation (strcoll;
-- Redis sets LC_COLLATE from its environment): byte order in the C, POSIX
-- and C.UTF-8 locales, where it is used as the fast way; any other locale
-- orders case, punctuation or accents differently, which these probes
-- catch, and then the bytes are compared one by one.
local function bytes_less(a, b)
  local n = #a < #b and #a or #b
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

local function native_less(a, b)
  return a < b
end

local id_less = bytes_less
if
  "B" < "a"
  and "Z" < "_"
  and "-" < "0"
  and "9" < "A"
  and "ab" < "a\195\169"
  and "f" < "\195\169"
  and "\195\169" < "\195\170"
  and "a b" < "a-b"
then
  id_less = native_less
end

-- The first k of the candidates 1 .. n in the order less(i, j), best first.
-- A small k keeps a sorted buffer of k (one comparison for most
-- candidates); a large one sorts them all.
local function first_k(n, k, less)
  local out = {}
  if k <= 0 or n == 0 then
    return out
  end
  if k > 64 or 4 * k >= n then
    for i = 1, n do
      out[i] = i
    end
    table.sort(out, less)
    for i = n, k + 1, -1 do
      out[i] = nil
    end
    return out
  end
  local m = 0
  for i = 1, n do
    if m < k or less(i, out[m]) then
      local j = m < k and m + 1 or m
      while j > 1 and less(i, out[j - 1]) do
        out[j] = out[j - 1]
        j = j - 1
      end
      out[j] = i
      if m < k then
        m = m + 1
      end
    end
  end
  return out
end
