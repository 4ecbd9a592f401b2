-- Scenario page_cursor: list paging by cursor (RFC 9865). GET {base}/Users?count=BENCH_PAGE&cursor= starts a walk
-- through all users; each answer's nextCursor is queued and the next request of this wrk thread follows it; with
-- no cursor queued (a walk ended: no nextCursor; or an error) the request starts a new walk. So about as many
-- walks run at once as the thread has connections, and every request is one page: the latency is the time per page.
-- Reported besides: walks started (starts) and walks that reached the last page (ends).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

result_fields = { "starts", "ends" }

function init(args)
  page = tonumber(os.getenv("BENCH_PAGE")) or 100
  prefix = string.format("%s/Users?count=%d&cursor=", base, page)
  queue, head, tail = {}, 1, 0
  starts, ends = 0, 0
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

function request()
  local cursor = ""
  if head <= tail then
    cursor = queue[head]
    queue[head] = nil
    head = head + 1
  else
    starts = starts + 1
  end
  return wrk.format("GET", prefix .. urlencode(cursor))
end

function response(status, headers, body)
  if status ~= 200 then
    return
  end
  local c = body:match('"nextCursor"%s*:%s*"([^"]+)"')
  if c then
    tail = tail + 1
    queue[tail] = c
  else
    ends = ends + 1
  end
end
