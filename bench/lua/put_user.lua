-- Scenario put_user: PUT {base}/Users/{id} for a random loaded user: the full document (same userName, name and
-- email as loaded), with a displayName that changes on every request. No If-Match.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.headers["Content-Type"] = "application/scim+json"

local template = '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"user%s",'
  .. '"name":{"givenName":"Given%s","familyName":"Family%s","formatted":"Given%s Family%s"},'
  .. '"displayName":"Given%s Family%s %s-%d-%d","emails":[{"value":"user%s@example.com","type":"work","primary":true}],'
  .. '"active":true}'

function init(args)
  ids, nums = load_ids()
  tag = os.getenv("BENCH_TAG") or "x"
  counter = 0
  math.randomseed(104723 * (tid + 1))
end

function request()
  counter = counter + 1
  local num = nums[math.random(#nums)]
  local n = string.format("%07d", num)
  local body = string.format(template, n, n, n, n, n, n, n, tag, tid, counter, n)
  return wrk.format("PUT", base .. "/Users/" .. ids[num], nil, body)
end
