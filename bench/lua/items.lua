-- wrk script shared by every benchmark: each request takes the next item (one per line) of a file.
--
--   wrk -s bench/lua/items.lua <url> -- <file> <kind> <threads> <once>
--
-- kind   "bearer":  GET <url> with `Authorization: Bearer <item>`
--        "path":    GET <url><item>
--        "json:<field>": POST <url> with the body {"<field>": "<item>"}
--        "bearer-post": the item is `<token> <idempotency key> <JSON body>`: POST <url> with that
--                   body, `Authorization: Bearer <token>` and `Idempotency-Key: <key>`
-- once   "1": an item is never sent twice (single-use tokens); a thread that runs out stops
--        "0": items are reused round-robin
-- Thread n of N takes lines n, n+N, n+2N ... so threads never share an item.
-- wrk calls request() once on thread 0 before the run (to check for pipelining): that first item
-- is used up without being sent, which costs a single-use list one item and nothing else.
-- At the end one line `BENCH_JSON {...}` carries the figures for bench/common.py to parse.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local index = 0
local once = false
local fallback = nil

function init(args)
  local path, kind, nthreads = args[1], args[2], tonumber(args[3])
  once = args[4] == "1"
  local field = nil
  if string.sub(kind, 1, 5) == "json:" then
    field = string.sub(kind, 6)
  end
  local line_no = 0
  for line in io.lines(path) do
    if line ~= "" then
      if line_no % nthreads == tid then
        local req
        if kind == "bearer" then
          req = wrk.format("GET", wrk.path, { ["Authorization"] = "Bearer " .. line })
        elseif kind == "path" then
          req = wrk.format("GET", wrk.path .. line)
        elseif kind == "bearer-post" then
          local token, key, body = string.match(line, "^(%S+) (%S+) (.+)$")
          req = wrk.format("POST", wrk.path, {
            ["Authorization"] = "Bearer " .. token,
            ["Idempotency-Key"] = key,
            ["Content-Type"] = "application/json",
          }, body)
        elseif field ~= nil then
          req = wrk.format("POST", wrk.path, { ["Content-Type"] = "application/json" },
            '{"' .. field .. '":"' .. line .. '"}')
        else
          error("unknown kind " .. kind)
        end
        table.insert(requests, req)
      end
      line_no = line_no + 1
    end
  end
  if #requests == 0 then
    error("no items for thread " .. tid .. " in " .. path)
  end
  -- Sent (and counted) only in the instant between running out and the thread stopping.
  fallback = wrk.format("GET", "/healthz")
  exhausted = 0
end

function request()
  index = index + 1
  if index > #requests then
    if once then
      exhausted = 1
      wrk.thread:stop()
      return fallback
    end
    index = 1
  end
  return requests[index]
end

function done(summary, latency, requests_)
  local ran_out = 0
  for _, thread in ipairs(threads) do
    ran_out = ran_out + (tonumber(thread:get("exhausted")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%.0f,"p95_us":%.0f,' ..
    '"p99_us":%.0f,"max_us":%.0f,"threads_exhausted":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, ran_out))
end
