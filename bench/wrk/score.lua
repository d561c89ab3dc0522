-- wrk script for the userip server's scoring routes (scripts/bench/serve_latency.sh drives it).
--
--   wrk -s bench/wrk/score.lua URL -- USERS_FILE ITEMS_FILE CANDIDATES [RATE_PER_CONNECTION] [PATH]
--
-- Each request scores CANDIDATES items, drawn from ITEMS_FILE, for a user drawn from USERS_FILE
-- (one id per line); 512 distinct bodies are prepared up front so the Lua side costs nothing per
-- request. PATH is /v1/score (default) or /v1/users/{user}/profile:infer, for which ITEMS_FILE's
-- items become the posted history. With RATE_PER_CONNECTION > 0 each connection waits a random
-- exponential time of mean 1000 / RATE ms between requests (wrk's delay() hook), so that the
-- offered load is about connections x RATE requests/s with Poisson arrivals; latencies are measured
-- from sending each request, so the wait never counts in them. wrk prints the rate it achieved.

local bodies, paths = {}, {}
local counter = 0
local delay_ms = 0

local function read_lines(file)
  local lines = {}
  for line in io.lines(file) do
    if line ~= "" then lines[#lines + 1] = line end
  end
  assert(#lines > 0, file .. " is empty")
  return lines
end

local function quote(s)
  return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"'
end

function init(args)
  local users = read_lines(args[1])
  local items = read_lines(args[2])
  local candidates = tonumber(args[3]) or 1
  local rate = tonumber(args[4]) or 0
  local route = args[5] or "/v1/score"
  if rate > 0 then delay_ms = 1000 / rate end
  math.randomseed(7 + (wrk.thread and 1 or 0))
  for b = 1, 512 do
    local user = users[math.random(#users)]
    local picked = {}
    for i = 1, candidates do picked[i] = items[math.random(#items)] end
    if route == "/v1/score" then
      local list = {}
      for i = 1, candidates do list[i] = quote(picked[i]) end
      bodies[b] = '{"user":' .. quote(user) .. ',"items":[' .. table.concat(list, ",") .. ']}'
      paths[b] = route
    else
      local history = {}
      for i = 1, candidates do history[i] = '{"item":' .. quote(picked[i]) .. ',"rating":4}' end
      bodies[b] = '{"history":[' .. table.concat(history, ",") .. ']}'
      paths[b] = "/v1/users/bench-" .. b .. "/profile:infer"
    end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter % #bodies + 1
  return wrk.format(nil, paths[counter], nil, bodies[counter])
end

-- Exponential waits: each connection's requests form a Poisson process, and so does their sum.
-- Equal waits would keep the connections in phase and send their requests in bursts.
function delay()
  if delay_ms == 0 then return 0 end
  return -math.log(1 - math.random()) * delay_ms
end


function done(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses and socket errors: %d / %d\n", summary.errors.status,
                         summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
  io.write(string.format("RESULT requests=%d seconds=%.2f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d\n",
                         summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
                         latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
                         latency.max / 1000,
                         summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write +
                             summary.errors.timeout))
end
