-- wrk script of bench/run.py: realistic, random requests for one scenario.
--
-- Settings come from the environment (wrk's own argument passing is awkward):
--   BENCH_SCENARIO     put-delta | put-overwrite | get
--   BENCH_TOKEN        the bearer token (an admin token: any subscriber)
--   BENCH_SUBSCRIBERS  subscribers per population (default 10000)
--   BENCH_SEED         random seed (default 1); each thread adds its number
--   BENCH_POOL         requests pre-built per thread (default 4000)
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
-- Requests are built in init() and replayed in a loop, so the Lua cost per
-- request is a table lookup. done() prints one line "BENCH_JSON {...}".

local PREFIX = "/metax/3.0/ui/user/stat/"
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

local pool = {}
local size = 0
local position = 0

function init(args)
  local scenario = os.getenv("BENCH_SCENARIO") or "get"
  local token = os.getenv("BENCH_TOKEN") or ""
  local subscribers = tonumber(os.getenv("BENCH_SUBSCRIBERS") or "10000")
  local seed = tonumber(os.getenv("BENCH_SEED") or "1")
  size = tonumber(os.getenv("BENCH_POOL") or "4000")
  local number = thread_number or 1
  math.randomseed(seed * 1000 + number)
  for i = 1, size do
    local n = math.random(0, subscribers - 1)
    local headers = { ["Authorization"] = "Bearer " .. token }
    if scenario == "get" then
      pool[i] = wrk.format("GET", PREFIX .. string.format("user%05d@example.org", n), headers)
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
