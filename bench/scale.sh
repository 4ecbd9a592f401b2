#!/usr/bin/env bash
# scimgate at scale: 1M users on SQLite.
#
#   bench/scale.sh
#
# Builds release (scimgate), starts scimgate on a fresh SQLite file (WAL, synchronous=FULL; examples/quickstart.toml),
# loads BENCH_USERS users through /Bulk, and reports:
#   - the load time;
#   - scimgate's resident memory (VmRSS, and the peak VmHWM, from /proc/PID/status) after start, after the load,
#     after a burst of read traffic (wrk: get_user, filter_username, filter_andor, BENCH_BURST each), and after
#     the cursor walk;
#   - a cursor walk through ALL users (bench/page_walk.py: one sequential keep-alive client following nextCursor,
#     BENCH_PAGE users a page) with the time per page for the first 1 %, the middle 1 % and the last 1 % of the
#     pages (and each tenth), to show whether it stays flat.
# Writes bench/results/scale.md (per-page times in bench/results/scale-raw/) and prints it.
#
# Knobs (environment): BENCH_USERS=1000000, BENCH_BULK_OPS=1000, BENCH_BURST=10s (0: no burst),
# BENCH_CONNECTIONS=32, BENCH_THREADS=nproc, BENCH_TIMEOUT=10s, BENCH_PAGE=100 (scimgate's default page size),
# BENCH_SKIP_BUILD=1, BENCH_IDLE_WAIT=600, BENCH_TMPDIR=DIR
# (1M users take about 2.3 GB of SQLite file there).
# PID_scimgate, URL_scimgate, AUTH_scimgate, DESC_scimgate: set by start_scimgate in lib.sh (printf -v).
# shellcheck disable=SC2154
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"
LOG_TAG=scale
TOKEN="bench-token-$(date +%s)-$$-0123456789abcdef"
BENCH_USERS=${BENCH_USERS:-1000000}
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

BURST=${BENCH_BURST:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-$(nproc)}
TIMEOUT=${BENCH_TIMEOUT:-10s}
PAGE=${BENCH_PAGE:-100}

need curl
need awk
need cargo
need python3
install_wrk
build_release -p scimgate

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/scimgate-scale.XXXXXX")
RESULTS=$BENCH_DIR/results
RAW=$RESULTS/scale-raw
mkdir -p "$RESULTS"
rm -rf "$RAW"
mkdir -p "$RAW"

log "starting scimgate"
start_scimgate
declare -A RSS=()
RSS[start]=$(rss_of "$PID_scimgate")

log "loading $USERS users through /Bulk, $BULK_OPS operations per request"
load_users scimgate "$WORK/ids.scimgate"
LOAD_RATE=$(awk -v n="$LOAD_IDS" -v t="$LOAD_SECS" 'BEGIN{ if (t > 0) printf "%.0f", n / t; else print "-" }')
log "loaded $LOAD_IDS users in ${LOAD_SECS}s ($LOAD_RATE users/s; $LOAD_FAILED operations failed)"
((LOAD_IDS > 0)) || die "the load step created no user"
wait_idle scimgate "$PID_scimgate"
RSS[load]=$(rss_of "$PID_scimgate")
DB_SIZE=$(du -sh "$WORK" | cut -f1)
log "RSS after the load (VmRSS VmHWM, MiB): ${RSS[load]}; $WORK holds $DB_SIZE"

BURST_ROWS=()
if [[ "$BURST" != 0 && "$BURST" != 0s ]]; then
  for scenario in get_user filter_username filter_andor; do
    log "burst: $scenario for $BURST, $CONNECTIONS connections, $THREADS threads"
    out=$RAW/$scenario.txt
    BENCH_IDS=$WORK/ids.scimgate BENCH_USERS=$USERS BENCH_BASE=$BASE BENCH_THREADS=$THREADS \
      BENCH_TAG="scale-$scenario-$(date +%s%N)" \
      wrk -t "$THREADS" -c "$CONNECTIONS" -d "$BURST" --timeout "$TIMEOUT" \
      -H "$AUTH_scimgate" -s "$BENCH_DIR/lua/$scenario.lua" "$URL_scimgate" >"$out" 2>&1 || {
      cat "$out" >&2
      die "wrk failed for $scenario"
    }
    BURST_ROWS+=("$(awk -v s="$scenario" '/^BENCH_RESULT/ {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      printf "| %s | %.0f | %.2f | %.2f | %d |", s, v["requests"] / (v["duration_us"] / 1e6),
        v["p50_us"] / 1000, v["p99_us"] / 1000, v["status"] + v["connect"] + v["read"] + v["write"] + v["timeout"]
    }' "$out")")
    log "  ${BURST_ROWS[-1]}"
    wait_idle scimgate "$PID_scimgate"
  done
  RSS[burst]=$(rss_of "$PID_scimgate")
  log "RSS after the burst (VmRSS VmHWM, MiB): ${RSS[burst]}"
fi

log "cursor walk through all users, $PAGE a page, one sequential client"
WALK=$(python3 "$BENCH_DIR/page_walk.py" "$URL_scimgate" "$BASE" "$TOKEN" "$PAGE" "$RAW/pages.tsv") ||
  die "the cursor walk failed or saw a user twice (exit $?)"
RSS[walk]=$(rss_of "$PID_scimgate")
log "RSS after the walk (VmRSS VmHWM, MiB): ${RSS[walk]}"

commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit (with uncommitted changes)"
fi
rss_row() { # LABEL KEY
  [[ -n "${RSS[$2]:-}" ]] || return 0
  local r h
  read -r r h <<<"${RSS[$2]}"
  echo "| $1 | $r | $h |"
}

REPORT=$RESULTS/scale.md
{
  echo "# scimgate at scale: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| commit | $commit |"
  echo "| cpu | $(nproc) x $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo) |"
  echo "| memory | $(awk '/^MemTotal/{printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) |"
  echo "| load average (1, 5, 15 min) | at start $LOADAVG_START; at end $(cut -d' ' -f1-3 /proc/loadavg) |"
  echo "| server | $DESC_scimgate |"
  echo "| users loaded (/Bulk, $BULK_OPS ops per request) | $LOAD_IDS of $USERS in ${LOAD_SECS} s ($LOAD_RATE users/s), $LOAD_FAILED operations failed; store directory $DB_SIZE |"
  echo
  echo "Resident memory of scimgate (MiB, from /proc/PID/status):"
  echo
  echo "| after | VmRSS | VmHWM (peak) |"
  echo "| --- | ---: | ---: |"
  rss_row "start (empty store)" start
  rss_row "the load" load
  rss_row "the read burst" burst
  rss_row "the cursor walk" walk
  if ((${#BURST_ROWS[@]})); then
    echo
    echo "Read burst (wrk, $THREADS threads, $CONNECTIONS connections, $BURST each, no warmup; scripts in bench/lua/):"
    echo
    echo "| scenario | req/s | p50 ms | p99 ms | errors |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${BURST_ROWS[@]}"
  fi
  echo
  echo "Cursor walk through all users (bench/page_walk.py: GET $BASE/Users?count=$PAGE&cursor=..., one keep-alive"
  echo "connection, each page requested after the previous one arrived; time per page as the client sees it):"
  echo
  echo "$WALK"
  echo
  echo "Per-page times: bench/results/scale-raw/pages.tsv (page, ms, resources)."
} >"$REPORT"

cat "$REPORT"
