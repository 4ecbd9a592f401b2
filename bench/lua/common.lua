-- Shared by every scenario script (loaded with dofile from the scenario's own directory).
--
-- Gives each wrk thread a number (global `tid`, set before init runs) and prints the one line run.sh parses.
-- Environment: BENCH_BASE (SCIM base path, default /scim/v2).

base = os.getenv("BENCH_BASE") or "/scim/v2"

local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

-- wrk counts a response with status > 399 as a "status" error; socket errors and timeouts are counted apart.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d"
      .. " connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
