-- Scenario filter_username: GET {base}/Users?filter=userName eq "userNNNNNNN" for a random loaded user
-- (1..BENCH_USERS; the names run.sh's load step gave them).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  users = tonumber(os.getenv("BENCH_USERS"))
  math.randomseed(104729 * (tid + 1))
end

function request()
  local path = string.format('%s/Users?filter=userName%%20eq%%20%%22user%07d%%22', base, math.random(users))
  return wrk.format("GET", path)
end
