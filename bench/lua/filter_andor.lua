-- Scenario filter_andor: GET {base}/Users?filter=(userName eq "userA" or userName eq "userB") and displayName sw
-- "Given" for two random loaded users. Every attribute in it is indexed (crates/store/src/lower.rs lowers the whole
-- filter to SQL: user_name_lower, display_name_lower); the answer holds both users.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  users = tonumber(os.getenv("BENCH_USERS"))
  math.randomseed(15485863 * (tid + 1))
end

function request()
  local a = math.random(users)
  local b = math.random(users - 1)
  if b >= a then
    b = b + 1
  end
  local path = string.format(
    '%s/Users?filter=%%28userName%%20eq%%20%%22user%07d%%22%%20or%%20userName%%20eq%%20%%22user%07d%%22%%29'
      .. '%%20and%%20displayName%%20sw%%20%%22Given%%22',
    base, a, b)
  return wrk.format("GET", path)
end
