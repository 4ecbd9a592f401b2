# Shared by bench/run.sh and bench/scale.sh (sourced, not run): logging, cleanup, tools, the servers, the load
# step. The caller sets `set -euo pipefail`, BENCH_DIR, ROOT, LOG_TAG and TOKEN before sourcing it.
# shellcheck shell=bash
# Variables named per server (URL_NAME, ...) and the load step's results are read indirectly or by the caller.
# shellcheck disable=SC2034

BASE=/scim/v2
USERS=${BENCH_USERS:-10000}
BULK_OPS=${BENCH_BULK_OPS:-1000}
PG_URL=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
VENV=$ROOT/conformance/.venv

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$LOG_TAG" -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------- cleanup
# Servers (PIDS) are stopped first, then the PostgreSQL database is dropped, then WORK is removed.
PIDS=()
WORK=""
PG_DB=""
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$PG_DB" ]]; then
    psql "$PG_URL/postgres" -qtAc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
      log "could not drop database $PG_DB"
  fi
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

install_wrk() {
  command -v wrk >/dev/null 2>&1 && return
  log "wrk not found: installing Debian's wrk"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null 2>&1 || die "could not install wrk"
}

# The release binaries (SCIMGATE_BIN, CEILING_BIN), built unless BENCH_SKIP_BUILD=1. PACKAGES: cargo -p arguments.
build_release() {
  local target_dir
  target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [[ -n "$target_dir" ]] || target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
  SCIMGATE_BIN=$target_dir/release/scimgate
  CEILING_BIN=$target_dir/release/scimgate-ceiling
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building release (cargo build --release $*)"
    local t0
    t0=$(date +%s)
    cargo build --release "$@" >&2
    log "build took $(($(date +%s) - t0))s"
  fi
}

# The conformance venv with the pinned scim2-server, built the way scripts/test.sh builds it.
ensure_venv() {
  if [[ ! -x "$VENV/bin/scim2-server" ]] ||
    ! "$VENV/bin/pip" freeze 2>/dev/null | diff -q - "$ROOT/conformance/requirements.txt" >/dev/null; then
    log "building $VENV (python3 -m venv, pip install -r conformance/requirements.txt)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/conformance/requirements.txt" >&2
  fi
  [[ -x "$VENV/bin/scim2-server" ]] || die "scim2-server missing in $VENV"
}

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

# wait_http NAME PID URL [curl args...]: until URL answers 2xx, or the process dies, or 60 s pass.
wait_http() {
  local name=$1 pid=$2 url=$3
  shift 3
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup (log: $WORK/$name.log)"
    if curl -fsS -o /dev/null "$@" "$url" 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  die "$name did not answer $url within 60 s"
}

# Each start_NAME starts the server in the background, appends its pid to PIDS and sets PID_NAME, URL_NAME,
# AUTH_NAME, BASE_NAME (SCIM base path), DESC_NAME (one line for the report) and STORES_NAME (1: the load step
# fills it; 0: fixed answers).
start_ceiling() {
  [[ -x "$CEILING_BIN" ]] || die "release binary missing: $CEILING_BIN"
  local port
  port=$(free_port)
  "$CEILING_BIN" --listen "127.0.0.1:$port" --users "$USERS" >"$WORK/ceiling.log" 2>&1 &
  PIDS+=($!)
  PID_ceiling=$!
  wait_http ceiling $! "http://127.0.0.1:$port$BASE/Users/probe"
  URL_ceiling="http://127.0.0.1:$port"
  AUTH_ceiling="Authorization: Bearer $TOKEN" # ignored; sent so every server parses the same request
  BASE_ceiling=$BASE
  STORES_ceiling=0
  DESC_ceiling="bench/ceiling: axum, fixed pre-serialised answers, no auth, no store"
}

# start_scimgate_on NAME STORE_URL: scimgate with examples/quickstart.toml on STORE_URL.
start_scimgate_on() {
  local name=$1 store=$2 port
  [[ -x "$SCIMGATE_BIN" ]] || die "release binary missing: $SCIMGATE_BIN"
  port=$(free_port)
  SCIMGATE_TOKEN=$TOKEN \
    SCIMGATE_STORE__URL="$store" \
    SCIMGATE_LOG__FORMAT=json \
    "$SCIMGATE_BIN" serve --config "$ROOT/examples/quickstart.toml" --listen "127.0.0.1:$port" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' $!
  wait_http "$name" $! "http://127.0.0.1:$port/readyz"
  printf -v "URL_$name" '%s' "http://127.0.0.1:$port"
  printf -v "AUTH_$name" '%s' "Authorization: Bearer $TOKEN"
  printf -v "BASE_$name" '%s' "$BASE"
  printf -v "STORES_$name" '%s' 1
}

start_scimgate() {
  start_scimgate_on scimgate "sqlite://$WORK/scimgate.db"
  DESC_scimgate="scimgate, examples/quickstart.toml, SQLite WAL synchronous=FULL ($(df -T "$WORK" | awk 'NR==2{print $2}') at $WORK)"
}

# scimgate on a fresh PostgreSQL database scimgate_bench_PID on BENCH_PG, dropped on exit.
start_scimgate_pg() {
  need psql
  psql "$PG_URL/postgres" -qtAc 'select 1' >/dev/null 2>&1 || die "no PostgreSQL answers at $PG_URL (BENCH_PG)"
  local db=scimgate_bench_$$ settings
  psql "$PG_URL/postgres" -qtAc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  psql "$PG_URL/postgres" -qtAc "CREATE DATABASE $db" >/dev/null || die "could not create database $db"
  PG_DB=$db
  settings=$(psql "$PG_URL/$db" -qtAc "select 'PostgreSQL ' || current_setting('server_version') || ', fsync=' ||
    current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') ||
    ', shared_buffers=' || current_setting('shared_buffers')")
  start_scimgate_on scimgate_pg "$PG_URL/$db"
  DESC_scimgate_pg="scimgate, examples/quickstart.toml, $settings, database $db at ${PG_URL#*@} (dropped on exit)"
}

# The python scim2-server from PyPI (conformance/requirements.txt pins it): in memory, a threaded wsgiref server
# (HTTP/1.0, one connection per request), base path /v2. Started the way crates/testkit/src/scim2_server.rs does.
start_peer() {
  ensure_venv
  local port version
  port=$(free_port)
  "$VENV/bin/scim2-server" --hostname 127.0.0.1 --port "$port" --bearer-token "$TOKEN" >"$WORK/peer.log" 2>&1 &
  PIDS+=($!)
  PID_peer=$!
  wait_http peer $! "http://127.0.0.1:$port/v2/ServiceProviderConfig" -H "Authorization: Bearer $TOKEN"
  URL_peer="http://127.0.0.1:$port"
  AUTH_peer="Authorization: Bearer $TOKEN"
  BASE_peer=/v2
  STORES_peer=1
  version=$(sed -n 's/^scim2-server==//p' "$ROOT/conformance/requirements.txt")
  DESC_peer="scim2-server $version (PyPI, $("$VENV/bin/python" -V 2>&1)), in memory, threaded wsgiref (HTTP/1.0: a new connection per request), default service provider config"
}

# ---------------------------------------------------------------- load users through /Bulk
# The users: userNNNNNNN, GivenNNNNNNN FamilyNNNNNNN, one work email. bench/ceiling answers with this shape.
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

# load_users SERVER IDS_FILE: users 1..USERS through SERVER's /Bulk, BULK_OPS operations a request, one request at
# a time. Writes "N id" lines (N: the user's number, from its bulkId) to IDS_FILE; sets LOAD_SECS, LOAD_FAILED,
# LOAD_IDS.
load_users() {
  local server=$1 ids=$2 url auth base first last code created t0 t1 failed=0
  url=URL_$server auth=AUTH_$server base=BASE_$server
  : >"$ids"
  t0=$(date +%s.%N)
  for ((first = 1; first <= USERS; first += BULK_OPS)); do
    last=$((first + BULK_OPS - 1))
    ((last <= USERS)) || last=$USERS
    bulk_body "$first" "$last" >"$WORK/bulk.json"
    code=$(curl -sS -o "$WORK/bulk.out" -w '%{http_code}' -X POST -H 'Expect:' \
      -H "${!auth}" -H 'Content-Type: application/scim+json' \
      --data-binary "@$WORK/bulk.json" "${!url}${!base}/Bulk") || die "Bulk request to $server failed"
    [[ "$code" == 200 ]] || die "$server: Bulk answered $code: $(head -c 500 "$WORK/bulk.out")"
    # Each operation's result has its bulkId before its location (scimgate sorts keys; scim2-server keeps the
    # RFC's order); a failed one has no location. scim2-server puts a space after the colon.
    grep -o '"bulkId": *"b[0-9]*"\|"location": *"[^"]*"' "$WORK/bulk.out" |
      awk -F'"' '/^"bulkId"/ {n = substr($4, 2)} /^"location"/ {sub(/.*\/Users\//, "", $4); print n, $4}' >>"$ids"
    created=$(grep -o '"status": *"201"' "$WORK/bulk.out" | wc -l)
    failed=$((failed + (last - first + 1) - created))
  done
  t1=$(date +%s.%N)
  LOAD_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
  LOAD_FAILED=$failed
  LOAD_IDS=$(wc -l <"$ids")
}

# cpu_ticks PID: user + system CPU time of the process (all threads), in clock ticks.
cpu_ticks() {
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# wait_idle NAME PID: until the process uses under 10 % of a core over half a second, at most BENCH_IDLE_WAIT
# seconds (default 600). A server keeps working on requests wrk gave up on (timeouts, the end of a run); that work
# would otherwise land on the next measurement. Sets IDLE_WAITED (seconds waited).
wait_idle() {
  local name=$1 pid=$2 max=${BENCH_IDLE_WAIT:-600} hz t0 a b
  hz=$(getconf CLK_TCK)
  t0=$(date +%s)
  IDLE_WAITED=0
  a=$(cpu_ticks "$pid") || return 0
  while sleep 0.5; do
    b=$(cpu_ticks "$pid") || return 0
    ((b - a > hz / 20)) || break
    a=$b
    IDLE_WAITED=$(($(date +%s) - t0))
    if ((IDLE_WAITED >= max)); then
      log "$name: still busy after ${max} s (BENCH_IDLE_WAIT); going on"
      break
    fi
  done
  ((IDLE_WAITED < 2)) || log "$name: waited ${IDLE_WAITED} s until it was idle"
}

# VmRSS and VmHWM of PID, in MiB: "rss hwm".
rss_of() {
  awk '/^VmRSS/ {r = $2} /^VmHWM/ {h = $2} END {printf "%.0f %.0f\n", r / 1024, h / 1024}' "/proc/$1/status"
}
