-- Scenario create_user: POST {base}/Users, each request a new user. The userName is unique per run
-- (BENCH_TAG), per wrk thread and per request, so a 409 here is a real error, not a duplicate.
-- The body has the same members as the users the load step created.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

wrk.headers["Content-Type"] = "application/scim+json"

local template = '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"%s",'
  .. '"name":{"givenName":"Given%s","familyName":"Family%s","formatted":"Given%s Family%s"},'
  .. '"displayName":"Given%s Family%s","emails":[{"value":"%s@example.com","type":"work","primary":true}],'
  .. '"active":true}'

function init(args)
  tag = os.getenv("BENCH_TAG") or "x"
  counter = 0
end

function request()
  counter = counter + 1
  local n = string.format("%s-%d-%d", tag, tid, counter)
  local u = "post" .. n
  local body = string.format(template, u, n, n, n, n, n, n, u)
  return wrk.format("POST", base .. "/Users", nil, body)
end
