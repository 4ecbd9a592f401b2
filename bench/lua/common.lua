-- Shared by every scenario script (loaded with dofile from the scenario's own directory).
--
-- Gives each wrk thread a number (global `tid`, set before init runs), loads the ids file, and prints the one
-- line run.sh parses. A script that sets the global `result_fields` (names of per-thread numeric globals) gets
-- their sums appended to that line as name=value.
--
-- Environment (run.sh sets it per server and scenario):
--   BENCH_BASE     SCIM base path of the server (/scim/v2; /v2 for scim2-server)
--   BENCH_IDS      file of "N id" lines: user N (userNNNNNNN) has that id on this server
--   BENCH_USERS    how many users the load step created (1..BENCH_USERS)
--   BENCH_THREADS  wrk threads
--   BENCH_TAG      unique per run and server

base = os.getenv("BENCH_BASE") or "/scim/v2"

local next_tid = 0
local threads = {}
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  threads[#threads + 1] = thread
end

-- The ids file as a table number -> id, and the list of the numbers present (a failed create has no line).
function load_ids()
  local path = os.getenv("BENCH_IDS")
  local ids, nums = {}, {}
  for line in io.lines(path) do
    local n, id = line:match("^(%d+) (%S+)$")
    if n then
      n = tonumber(n)
      ids[n] = id
      nums[#nums + 1] = n
    end
  end
  if #nums == 0 then
    error("no ids in " .. tostring(path))
  end
  return ids, nums
end

-- wrk counts a response with status > 399 as a "status" error; socket errors and timeouts are counted apart.
function done(summary, latency, requests)
  local e = summary.errors
  local extra = ""
  for _, name in ipairs(result_fields or {}) do
    local sum = 0
    for _, t in ipairs(threads) do
      sum = sum + (tonumber(t:get(name)) or 0)
    end
    extra = extra .. string.format(" %s=%d", name, sum)
  end
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d"
      .. " connect=%d read=%d write=%d status=%d timeout=%d%s\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, extra))
end
