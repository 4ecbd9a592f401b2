-- Scenario get_user: GET {base}/Users/{id}, the id drawn at random from the ids that the load step created on
-- this server (BENCH_IDS).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  local by_num, nums = load_ids()
  ids = {}
  for i, n in ipairs(nums) do
    ids[i] = by_num[n]
  end
  math.randomseed(7919 * (tid + 1))
end

function request()
  return wrk.format("GET", base .. "/Users/" .. ids[math.random(#ids)])
end
