-- wrk script of bench/run.py: realistic, random requests for one scenario.
--
-- Settings come from the environment (wrk's own argument passing is awkward):
--   BENCH_SCENARIO     put-delta | put-overwrite | get | activity
--   BENCH_TOKEN        the bearer token (an admin token: any subscriber)
--   BENCH_SUBSCRIBERS  subscribers per population (default 10000)
--   BENCH_SEED         random seed (default 1); each thread adds its number
--   BENCH_POOL         requests pre-built per thread (default 4000; 20000
--                      for activity, so its favorite adds stay real adds)
--   BENCH_SAMPLE       if set, thread 1 writes its first request there
--
-- Populations (bench/run.py pre-loads both the same way):
--   user%05d@example.org  50 assets, 5 favorites: GET and put-delta. A delta
--                         PUT rewrites 10 of the subscriber's own 50 assets,
--                         so every GET keeps answering 50 records.
--   ovwr%05d@example.org  10 assets, 5 favorites: put-overwrite, which
--                         replaces them with 10 new records.
-- Asset k (0-49) of subscriber n is "asset-%06d" of n * 50 + k (12 chars).
--
-- activity: the hot small calls of the MetaX 2.1 family (API.md section 9)
-- on the "user" population, in a fixed mix, request i of a thread being
-- (i mod 3):
--   0  PUT /metax/2.1/activity/pausetime/{sub}/{asset}?time=<ms>: one of the
--      subscriber's own 50 assets, time 10,000 .. 7,200,000 ms (a stored
--      record is updated: no record is added, no bound is reached);
--   1  PUT /metax/2.1/activity/fav/{sub}/{asset}: one of the subscriber's
--      own 50 assets, almost never among its 5 pre-loaded favorites, so it
--      is a real add at the end of the list; the list can only grow to
--      5 + 50, far below MAX_FAVORITES (no 409);
--   2  GET /metax/2.1/activity/continue/{sub}?limit=20: the first page of
--      "Continue Watching" (of about 50 records).
-- The PUTs carry no body (Content-Length: 0), as MetaX clients send them.
--
-- Requests are built in init() and replayed in a loop, so the Lua cost per
-- request is a table lookup. done() prints one line "BENCH_JSON {...}".

local PREFIX = "/metax/3.0/ui/user/stat/"
local ACTIVITY = "/metax/2.1/activity/"
local ASSETS = 50
local VIEWS_PER_PUT = 10
local FAVORITES_PER_PUT = 5
local RATINGS = { "1", "2", "3", "3.5", "4", "4.5", "5" }

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
  table.insert(threads, thread)
end

local function asset_id(n, k)
  return string.format("asset-%06d", n * ASSETS + k)
end

local function record(n, k)
  return string.format(
    '{"asset_id":"%s","play_count":%d,"view_time":%d,"pause_time":%d,'
      .. '"last_played_on":1764%09d,"user_rating":%s}',
    asset_id(n, k),
    math.random(1, 50),
    math.random(0, 100000),
    math.random(0, 7200),
    math.random(0, 999999999),
    RATINGS[math.random(#RATINGS)]
  )
end

-- k distinct slots out of 0 .. ASSETS-1 (partial Fisher-Yates).
local function slots(k)
  local all = {}
  for i = 1, ASSETS do
    all[i] = i - 1
  end
  for i = 1, k do
    local j = math.random(i, ASSETS)
    all[i], all[j] = all[j], all[i]
  end
  local picked = {}
  for i = 1, k do
    picked[i] = all[i]
  end
  return picked
end

local function put_body(n)
  local views, favorites = {}, {}
  for i, k in ipairs(slots(VIEWS_PER_PUT)) do
    views[i] = record(n, k)
  end
  for i = 1, FAVORITES_PER_PUT do
    favorites[i] = '"' .. asset_id(math.random(0, 9999), math.random(0, ASSETS - 1)) .. '"'
  end
  return '{"favorites":[' .. table.concat(favorites, ",") .. '],"view_data":['
    .. table.concat(views, ",") .. "]}"
end

-- Request i (1-based) of the activity mix for subscriber n (see the top).
local function activity_request(i, n, headers)
  local sub = string.format("user%05d@example.org", n)
  local kind = (i - 1) % 3
  if kind == 0 then
    local path = ACTIVITY .. "pausetime/" .. sub .. "/" .. asset_id(n, math.random(0, ASSETS - 1))
      .. "?time=" .. math.random(10000, 7200000)
    return wrk.format("PUT", path, headers, "")
  elseif kind == 1 then
    local path = ACTIVITY .. "fav/" .. sub .. "/" .. asset_id(n, math.random(0, ASSETS - 1))
    return wrk.format("PUT", path, headers, "")
  end
  return wrk.format("GET", ACTIVITY .. "continue/" .. sub .. "?limit=20", headers)
end

local pool = {}
local size = 0
local position = 0

function init(args)
  local scenario = os.getenv("BENCH_SCENARIO") or "get"
  local token = os.getenv("BENCH_TOKEN") or ""
  local subscribers = tonumber(os.getenv("BENCH_SUBSCRIBERS") or "10000")
  local seed = tonumber(os.getenv("BENCH_SEED") or "1")
  size = tonumber(os.getenv("BENCH_POOL") or (scenario == "activity" and "20000" or "4000"))
  local number = thread_number or 1
  math.randomseed(seed * 1000 + number)
  for i = 1, size do
    local n = math.random(0, subscribers - 1)
    local headers = { ["Authorization"] = "Bearer " .. token }
    if scenario == "get" then
      pool[i] = wrk.format("GET", PREFIX .. string.format("user%05d@example.org", n), headers)
    elseif scenario == "activity" then
      pool[i] = activity_request(i, n, headers)
    else
      headers["Content-Type"] = "application/json"
      local path
      if scenario == "put-delta" then
        path = PREFIX .. string.format("user%05d@example.org", n) .. "?isDelta=true"
      elseif scenario == "put-overwrite" then
        path = PREFIX .. string.format("ovwr%05d@example.org", n) .. "?isDelta=false"
      else
        error("unknown BENCH_SCENARIO " .. scenario)
      end
      pool[i] = wrk.format("PUT", path, headers, put_body(n))
    end
  end
  local sample = os.getenv("BENCH_SAMPLE")
  if sample and sample ~= "" and number == 1 then
    local f = assert(io.open(sample, "wb"))
    f:write(pool[1])
    f:close()
  end
end

sent = 0 -- requests handed to wrk, read by done() through thread:get()

function request()
  sent = sent + 1
  position = position + 1
  if position > size then
    position = 1
  end
  return pool[position]
end

-- "requests" are the responses wrk read; "sent" also counts the requests
-- still in flight when wrk stopped, which the server handles all the same.
function done(summary, latency, requests)
  local e = summary.errors
  local total_sent = 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + (thread:get("sent") or 0)
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%.0f,"sent":%.0f,"duration_us":%.0f,"bytes":%.0f,'
      .. '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},'
      .. '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"mean":%.1f,"max":%.0f}}\n',
    summary.requests, total_sent, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max
  ))
end
