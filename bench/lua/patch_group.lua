-- Scenarios patch_group_small and patch_group_large: PATCH {base}/Groups/{id}?excludedAttributes=members adding one
-- user to the group BENCH_GROUP (set up by run.sh). The users come from the pool BENCH_POOL_FIRST..BENCH_POOL_LAST
-- (user numbers; none of them is a member after the setup), walked in order, each wrk thread taking every
-- BENCH_THREADS-th one, and round again from the start when it is used up (an add of a member is a no-op).
-- excludedAttributes=members keeps the answer to the group without its member list (the large group's list is
-- about 10 MB).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.headers["Content-Type"] = "application/scim+json"

local template = '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],'
  .. '"Operations":[{"op":"add","path":"members","value":[{"value":"%s"}]}]}'

function init(args)
  ids = load_ids()
  group = os.getenv("BENCH_GROUP")
  first = tonumber(os.getenv("BENCH_POOL_FIRST"))
  last = tonumber(os.getenv("BENCH_POOL_LAST"))
  step = tonumber(os.getenv("BENCH_THREADS")) or 1
  path = base .. "/Groups/" .. group .. "?excludedAttributes=members"
  nextn = first + tid
end

function request()
  local id
  for _ = 1, 100 do
    if nextn > last then
      nextn = first + tid
    end
    id = ids[nextn]
    nextn = nextn + step
    if id then
      break
    end
  end
  return wrk.format("PATCH", path, nil, string.format(template, id))
end
