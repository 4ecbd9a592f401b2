#!/usr/bin/env python3
"""Walk a SCIM server's users by cursor (RFC 9865) with one sequential client and time every page.

    page_walk.py URL BASE TOKEN PAGE_SIZE OUT_TSV

GET BASE/Users?count=PAGE_SIZE&cursor= first, then follows nextCursor until an answer has none. One keep-alive
connection, standard library only. Writes one line per page to OUT_TSV (page number, milliseconds, resources)
and prints a Markdown summary: pages, users seen (and how many distinct ids), total time, and the time per page
in buckets (the first 1 % of the pages, the middle 1 %, the last 1 %, and each tenth of the walk), so that a time
per page that grows with the position shows.
"""

import http.client
import json
import sys
import time
import urllib.parse


def main() -> int:
    url, base, token, page_size, out_path = sys.argv[1:6]
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/scim+json"}
    times: list[float] = []
    seen: set[str] = set()
    items = 0
    total_results = None
    cursor = ""
    t_start = time.perf_counter()
    with open(out_path, "w") as out:
        while True:
            path = f"{base}/Users?count={page_size}&cursor={urllib.parse.quote(cursor, safe='')}"
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            ms = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                print(f"page {len(times) + 1}: status {resp.status}: {body[:500]!r}", file=sys.stderr)
                return 1
            doc = json.loads(body)
            resources = doc.get("Resources", [])
            times.append(ms)
            items += len(resources)
            seen.update(r["id"] for r in resources)
            if total_results is None:
                total_results = doc.get("totalResults")
            out.write(f"{len(times)}\t{ms:.3f}\t{len(resources)}\n")
            if len(times) % 1000 == 0:
                print(f"  {len(times)} pages, {items} users, last page {ms:.1f} ms", file=sys.stderr)
            cursor = doc.get("nextCursor") or ""
            if not cursor:
                break
    total = time.perf_counter() - t_start

    def stats(xs: list[float]) -> str:
        xs = sorted(xs)
        if not xs:
            return "| - | - | - | - |"
        p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        return f"| {sum(xs) / len(xs):.2f} | {p(0.5):.2f} | {p(0.99):.2f} | {xs[-1]:.2f} |"

    n = len(times)
    one = max(1, n // 100)
    mid = n // 2 - one // 2
    print(f"pages: {n} of {page_size}; users seen: {items} ({len(seen)} distinct ids; totalResults {total_results}); "
          f"walk took {total:.1f} s ({n / total:.0f} pages/s, {items / total:.0f} users/s)")
    print()
    print("| pages | count | mean ms | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| first 1 % (1..{one}) | {one} {stats(times[:one])}")
    print(f"| middle 1 % ({mid + 1}..{mid + one}) | {one} {stats(times[mid:mid + one])}")
    print(f"| last 1 % ({n - one + 1}..{n}) | {one} {stats(times[n - one:])}")
    for d in range(10):
        a, b = d * n // 10, (d + 1) * n // 10
        if b > a:
            print(f"| tenth {d + 1} ({a + 1}..{b}) | {b - a} {stats(times[a:b])}")
    print(f"| all | {n} {stats(times)}")
    return 0 if items == len(seen) else 2


if __name__ == "__main__":
    sys.exit(main())
