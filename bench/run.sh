#!/usr/bin/env bash
# scimgate load benchmark: one command, one machine, one run.
#
#   bench/run.sh
#
# Builds release, installs the load generator (wrk) if missing, starts the ceiling (bench/ceiling, a bare axum
# server with fixed answers) and scimgate on a fresh SQLite file (WAL, synchronous=FULL: fsync per commit) on
# loopback ports, loads BENCH_USERS users through scimgate's /Bulk, then runs every scenario against every
# server with the same connections, threads and duration. Writes bench/results/latest.md and prints it.
# Everything it started is stopped on exit.
#
# Knobs (environment):
#   BENCH_USERS=10000        users loaded through /Bulk before the scenarios
#   BENCH_BULK_OPS=1000      operations per Bulk request (scimgate's default maxOperations is 1000)
#   BENCH_DURATION=10s       wrk duration per scenario and server
#   BENCH_WARMUP=2s          wrk run before each measured one, discarded (0 to skip)
#   BENCH_CONNECTIONS=32     open connections
#   BENCH_THREADS=nproc      wrk threads
#   BENCH_TIMEOUT=10s        wrk request timeout (a slower answer counts as a timeout error)
#   BENCH_SCENARIOS="..."    subset of scenarios to run, by name (default: all, see SCENARIOS below)
#   BENCH_SERVERS="..."      subset of servers (default: ceiling scimgate)
#   BENCH_SKIP_BUILD=1       use the release binaries already built
#   BENCH_TMPDIR=DIR         where the temporary directory (SQLite file, logs) goes (default: TMPDIR or /tmp);
#                            its filesystem matters for POST: fsync on tmpfs is free
#
# To add a scenario: write bench/lua/NAME.lua (dofile common.lua, define request()) and add a line to SCENARIOS.
# To add a server: write a start_NAME function that starts it and sets URL_NAME and AUTH_NAME, and add NAME to
# SERVERS. The first server in SERVERS is the one the ratio column divides by.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"

USERS=${BENCH_USERS:-10000}
BULK_OPS=${BENCH_BULK_OPS:-1000}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-$(nproc)}
TIMEOUT=${BENCH_TIMEOUT:-10s}
TOKEN="bench-token-$(date +%s)-$$-0123456789abcdef"
BASE=/scim/v2

# name | wrk script in bench/lua | what it does
SCENARIOS=(
  "get_user|get_user.lua|GET $BASE/Users/{id}, id drawn at random from the loaded users"
  "filter_username|filter_username.lua|GET $BASE/Users?filter=userName eq \"userNNNNNNN\", random loaded user"
  "create_user|create_user.lua|POST $BASE/Users, a new unique user per request"
)
SERVERS=(${BENCH_SERVERS:-ceiling scimgate})

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------- cleanup
PIDS=()
WORK=""
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ $rc -ne 0 ]]; then
      for f in "$WORK"/*.log; do
        [[ -f "$f" ]] || continue
        log "last lines of $(basename "$f"):"
        tail -n 20 "$f" >&2 || true
      done
    fi
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required"; }
need curl
need awk
need cargo

install_wrk() {
  command -v wrk >/dev/null 2>&1 && return
  log "wrk not found: installing Debian's wrk"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null 2>&1 || die "could not install wrk"
}
install_wrk

TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[[ -n "$TARGET_DIR" ]] || TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SCIMGATE_BIN=$TARGET_DIR/release/scimgate
CEILING_BIN=$TARGET_DIR/release/scimgate-ceiling

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (cargo build --release -p scimgate -p scimgate-ceiling)"
  t0=$(date +%s)
  cargo build --release -p scimgate -p scimgate-ceiling >&2
  log "build took $(($(date +%s) - t0))s"
fi
[[ -x "$SCIMGATE_BIN" && -x "$CEILING_BIN" ]] || die "release binaries missing in $TARGET_DIR/release"

# Other work on the machine skews every figure: keep the load average from before the servers start.
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/scimgate-bench.XXXXXX")
RESULTS=$BENCH_DIR/results
RAW=$RESULTS/latest-raw
mkdir -p "$RESULTS"
rm -rf "$RAW"
mkdir -p "$RAW"

# ---------------------------------------------------------------- servers
# A free loopback port: random, and nothing answers on it.
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

# wait_http NAME PID URL [curl args...]: until URL answers 2xx, or the process dies, or 30 s pass.
wait_http() {
  local name=$1 pid=$2 url=$3
  shift 3
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $WORK/$name.log)"
    if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  die "$name did not answer $url within 30 s"
}

start_ceiling() {
  local port
  port=$(free_port)
  "$CEILING_BIN" --listen "127.0.0.1:$port" >"$WORK/ceiling.log" 2>&1 &
  PIDS+=($!)
  wait_http ceiling $! "http://127.0.0.1:$port$BASE/Users/probe"
  URL_ceiling="http://127.0.0.1:$port"
  AUTH_ceiling="Authorization: Bearer $TOKEN" # ignored; sent so both servers parse the same request
  DESC_ceiling="bench/ceiling: axum, fixed pre-serialised answers, no auth, no store"
}

start_scimgate() {
  local port
  port=$(free_port)
  SCIMGATE_TOKEN=$TOKEN \
    SCIMGATE_STORE__URL="sqlite://$WORK/scimgate.db" \
    SCIMGATE_LOG__FORMAT=json \
    "$SCIMGATE_BIN" serve --config "$ROOT/examples/quickstart.toml" --listen "127.0.0.1:$port" \
    >"$WORK/scimgate.log" 2>&1 &
  PIDS+=($!)
  wait_http scimgate $! "http://127.0.0.1:$port/readyz"
  URL_scimgate="http://127.0.0.1:$port"
  AUTH_scimgate="Authorization: Bearer $TOKEN"
  DESC_scimgate="scimgate, examples/quickstart.toml, SQLite WAL synchronous=FULL ($(df -T "$WORK" | awk 'NR==2{print $2}') at $WORK)"
}

for s in "${SERVERS[@]}"; do
  declare -F "start_$s" >/dev/null || die "unknown server $s"
  log "starting $s"
  "start_$s"
done

# ---------------------------------------------------------------- load users through /Bulk
# The users: userNNNNNNN, GivenNNNNNNN FamilyNNNNNNN, one work email. bench/ceiling answers with this shape.
IDS=$WORK/ids.txt
: >"$IDS"
bulk_body() { # FIRST LAST
  awk -v first="$1" -v last="$2" 'BEGIN {
    printf "{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:BulkRequest\"],\"Operations\":["
    for (i = first; i <= last; i++) {
      n = sprintf("%07d", i)
      if (i > first) printf ","
      printf "{\"method\":\"POST\",\"bulkId\":\"b%d\",\"path\":\"/Users\",\"data\":{", i
      printf "\"schemas\":[\"urn:ietf:params:scim:schemas:core:2.0:User\"],\"userName\":\"user%s\",", n
      printf "\"name\":{\"givenName\":\"Given%s\",\"familyName\":\"Family%s\",\"formatted\":\"Given%s Family%s\"},", n, n, n, n
      printf "\"displayName\":\"Given%s Family%s\",", n, n
      printf "\"emails\":[{\"value\":\"user%s@example.com\",\"type\":\"work\",\"primary\":true}],\"active\":true}}", n
    }
    printf "]}"
  }'
}

load_users() {
  local url=$1 auth=$2 first last code created t0 t1 failed=0
  t0=$(date +%s.%N)
  for ((first = 1; first <= USERS; first += BULK_OPS)); do
    last=$((first + BULK_OPS - 1))
    ((last <= USERS)) || last=$USERS
    bulk_body "$first" "$last" >"$WORK/bulk.json"
    code=$(curl -sS -o "$WORK/bulk.out" -w '%{http_code}' -X POST \
      -H "$auth" -H 'Content-Type: application/scim+json' \
      --data-binary "@$WORK/bulk.json" "$url$BASE/Bulk") || die "Bulk request failed"
    [[ "$code" == 200 ]] || die "Bulk answered $code: $(head -c 500 "$WORK/bulk.out")"
    grep -o '"location":"[^"]*/Users/[^"]*"' "$WORK/bulk.out" | sed 's/.*\/Users\///; s/"$//' >>"$IDS"
    created=$(grep -o '"status":"201"' "$WORK/bulk.out" | wc -l)
    failed=$((failed + (last - first + 1) - created))
  done
  t1=$(date +%s.%N)
  LOAD_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
  LOAD_FAILED=$failed
  LOAD_IDS=$(wc -l <"$IDS")
}

if [[ -n "${URL_scimgate:-}" ]]; then
  log "loading $USERS users through $BASE/Bulk, $BULK_OPS operations per request"
  load_users "$URL_scimgate" "$AUTH_scimgate"
  log "loaded $LOAD_IDS users in ${LOAD_SECS}s ($LOAD_FAILED operations failed)"
  ((LOAD_IDS > 0)) || die "the load step created no user"
else
  # No scimgate to take ids from: the ceiling answers any id.
  for i in $(seq 1 100); do echo "id$i"; done >"$IDS"
  LOAD_SECS="-" LOAD_FAILED="-" LOAD_IDS=0
fi

# ---------------------------------------------------------------- scenarios
# run_wrk SCENARIO SCRIPT SERVER DURATION OUTFILE
run_wrk() {
  local scenario=$1 script=$2 server=$3 dur=$4 out=$5 url auth
  url=URL_$server auth=AUTH_$server
  BENCH_IDS=$IDS BENCH_USERS=$USERS BENCH_BASE=$BASE \
    BENCH_TAG="$server-$scenario-$(date +%s%N)" \
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$dur" --timeout "$TIMEOUT" \
    -H "${!auth}" -s "$BENCH_DIR/lua/$script" "${!url}" >"$out" 2>&1 || {
    cat "$out" >&2
    die "wrk failed for $scenario on $server"
  }
}

field() { # FILE NAME: a value from the BENCH_RESULT line
  sed -n 's/^BENCH_RESULT.* '"$2"'=\([0-9]*\).*/\1/p' "$1" | head -n 1
}

declare -A RPS P50 P99 ERRS ERRDETAIL
WANT=(${BENCH_SCENARIOS:-})
RUN_SCENARIOS=()
for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r name script desc <<<"$entry"
  if ((${#WANT[@]})) && [[ ! " ${WANT[*]} " == *" $name "* ]]; then
    continue
  fi
  RUN_SCENARIOS+=("$entry")
  for server in "${SERVERS[@]}"; do
    if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
      log "$name on $server: warmup $WARMUP"
      run_wrk "$name" "$script" "$server" "$WARMUP" "$RAW/$name.$server.warmup.txt"
    fi
    log "$name on $server: $DURATION, $CONNECTIONS connections, $THREADS threads"
    out=$RAW/$name.$server.txt
    run_wrk "$name" "$script" "$server" "$DURATION" "$out"
    grep -q '^BENCH_RESULT' "$out" || die "no result line in $out"
    requests=$(field "$out" requests)
    duration=$(field "$out" duration_us)
    key="$name/$server"
    RPS[$key]=$(awk -v r="$requests" -v d="$duration" 'BEGIN{printf "%.0f", r / (d / 1e6)}')
    P50[$key]=$(awk -v v="$(field "$out" p50_us)" 'BEGIN{printf "%.2f", v / 1000}')
    P99[$key]=$(awk -v v="$(field "$out" p99_us)" 'BEGIN{printf "%.2f", v / 1000}')
    e_status=$(field "$out" status)
    e_sock=$(($(field "$out" connect) + $(field "$out" read) + $(field "$out" write)))
    e_timeout=$(field "$out" timeout)
    ERRS[$key]=$((e_status + e_sock + e_timeout))
    ERRDETAIL[$key]="status>=400: $e_status, socket: $e_sock, timeout: $e_timeout, of $requests requests"
    log "  ${RPS[$key]} req/s, p50 ${P50[$key]} ms, p99 ${P99[$key]} ms, errors ${ERRS[$key]}"
  done
done

# ---------------------------------------------------------------- report
ratio() { # KEY CEILING_KEY
  local c=${RPS[$2]:-}
  if [[ -z "$c" || "$c" == 0 ]]; then
    echo "-"
  else
    awk -v a="${RPS[$1]}" -v b="$c" 'BEGIN{printf "%.2f", a / b}'
  fi
}

commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="$commit (with uncommitted changes)"
fi
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/{printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

REPORT=$RESULTS/latest.md
{
  echo "# scimgate benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| commit | $commit |"
  echo "| cpu | $(nproc) x ${cpu_model:-unknown} |"
  echo "| memory | $mem |"
  echo "| kernel | $(uname -sr) |"
  echo "| load average (1, 5, 15 min) | at start $LOADAVG_START; at end $(cut -d' ' -f1-3 /proc/loadavg) |"
  echo "| rustc | $(rustc --version 2>/dev/null || echo unknown) |"
  echo "| load generator | $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2), $THREADS threads, $CONNECTIONS connections, $DURATION per run (after ${WARMUP} warmup), timeout $TIMEOUT |"
  if [[ -n "${URL_scimgate:-}" ]]; then
    echo "| users loaded | $LOAD_IDS of $USERS through /Bulk ($BULK_OPS ops per request) in ${LOAD_SECS}s, $LOAD_FAILED operations failed |"
  else
    echo "| users loaded | none (no scimgate in BENCH_SERVERS) |"
  fi
  echo
  echo "The load generator runs on the same $(nproc) cores as the server under test: every figure is a"
  echo "share of one machine, not a server's capacity alone. Loopback only; HTTP/1.1 keep-alive."
  echo
  echo "Servers:"
  for server in "${SERVERS[@]}"; do
    d=DESC_$server
    echo "- $server: ${!d}"
  done
  echo
  echo "| scenario | server | req/s | p50 ms | p99 ms | errors | ratio to ceiling |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  for entry in "${RUN_SCENARIOS[@]}"; do
    IFS='|' read -r name script desc <<<"$entry"
    for server in "${SERVERS[@]}"; do
      key="$name/$server"
      echo "| $name | $server | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} | ${ERRS[$key]} | $(ratio "$key" "$name/${SERVERS[0]}") |"
    done
  done
  echo
  echo "Scenarios:"
  for entry in "${RUN_SCENARIOS[@]}"; do
    IFS='|' read -r name script desc <<<"$entry"
    echo "- $name: $desc (bench/lua/$script)"
  done
  echo
  echo "Errors (wrk counts a status of 400 or more; it does not see 1xx/3xx):"
  for entry in "${RUN_SCENARIOS[@]}"; do
    IFS='|' read -r name script desc <<<"$entry"
    for server in "${SERVERS[@]}"; do
      echo "- $name on $server: ${ERRDETAIL[$name/$server]}"
    done
  done
  echo
  echo "Raw wrk output: bench/results/latest-raw/."
} >"$REPORT"

cat "$REPORT"
