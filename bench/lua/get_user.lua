-- Scenario get_user: GET {base}/Users/{id}, the id drawn at random from the ids that the load step created
-- (file named by BENCH_IDS, one id a line).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  ids = {}
  for line in io.lines(os.getenv("BENCH_IDS")) do
    ids[#ids + 1] = line
  end
  if #ids == 0 then
    error("no ids in " .. tostring(os.getenv("BENCH_IDS")))
  end
  math.randomseed(7919 * (tid + 1))
end

function request()
  return wrk.format("GET", base .. "/Users/" .. ids[math.random(#ids)])
end
