#!/usr/bin/env bash
# scimgate load benchmark: one command, one machine, one run.
#
#   bench/run.sh
#   BENCH_USERS=160000 BENCH_GROUP_LARGE=160000 BENCH_GROUP_POOL=60000 bench/run.sh   # the issue 7 table (BENCHMARKS.md)
#
# Builds release, installs the load generator (wrk) if missing, starts the servers on loopback ports:
#   ceiling      bench/ceiling, a bare axum server with fixed answers of the same size (no auth, no store)
#   scimgate     scimgate on a fresh SQLite file (WAL, synchronous=FULL: fsync per commit)
#   scimgate_pg  scimgate on a fresh PostgreSQL database scimgate_bench_PID on BENCH_PG, dropped on exit
#   peer         the python scim2-server from PyPI (conformance/.venv, built like scripts/test.sh if missing)
# loads BENCH_USERS users into each server that stores them (through /Bulk), sets up two groups on each (a small
# one and one of min(100000, BENCH_USERS) members), then runs every scenario against every server with the same
# connections, threads and duration. Writes bench/results/latest.md and prints it. Everything it started is
# stopped on exit.
#
# Knobs (environment):
#   BENCH_USERS=10000        users loaded through /Bulk before the scenarios (issue 7 asks 100000)
#   BENCH_BULK_OPS=1000      operations per Bulk request (scimgate's and scim2-server's maxOperations is 1000)
#   BENCH_DURATION=10s       wrk duration per scenario and server
#   BENCH_WARMUP=2s          wrk run before each measured one, discarded (0 to skip)
#   BENCH_CONNECTIONS=32     open connections
#   BENCH_THREADS=nproc      wrk threads
#   BENCH_TIMEOUT=10s        wrk request timeout (a slower answer counts as a timeout error)
#   BENCH_SCENARIOS="..."    subset of scenarios to run, by name (default: all, see SCENARIOS below)
#   BENCH_SERVERS="..."      subset of servers (default: ceiling scimgate scimgate_pg peer)
#   BENCH_PG=URL             PostgreSQL server for scimgate_pg (default postgres://postgres@127.0.0.1:5432)
#   BENCH_GROUP_SMALL=10     members of the small group
#   BENCH_GROUP_LARGE=100000 members of the large group (at most BENCH_USERS)
#   BENCH_GROUP_POOL=20000   users kept out of each group at setup, for the PATCH scenarios to add (a PATCH that
#                            finds the pool used up adds a member already there: a no-op, reported in the notes)
#   BENCH_GROUP_CHUNK=1000   members per PATCH in the setup of the groups on scimgate
#   BENCH_PAGE=100           page size (count) of page_cursor
#   BENCH_IDLE_WAIT=600      after each wrk run, wait at most this long (s) for the server to go idle: servers keep
#                            working on requests wrk gave up on, which would land on the next measurement
#   BENCH_SKIP_BUILD=1       use the release binaries already built
#   BENCH_TMPDIR=DIR         where the temporary directory (SQLite file, logs) goes (default: TMPDIR or /tmp);
#                            its filesystem matters for writes: fsync on tmpfs is free
#
# To add a scenario: write bench/lua/NAME.lua (dofile common.lua, define request()) and add a line to SCENARIOS;
# list it in UNSUPPORTED_server for a server that cannot run it. To add a server: write a start_NAME function
# (bench/lib.sh) and add NAME to the SERVERS default.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"
LOG_TAG=bench
TOKEN="bench-token-$(date +%s)-$$-0123456789abcdef"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-$(nproc)}
TIMEOUT=${BENCH_TIMEOUT:-10s}
GROUP_SMALL=${BENCH_GROUP_SMALL:-10}
GROUP_LARGE=${BENCH_GROUP_LARGE:-100000}
((GROUP_LARGE <= USERS)) || GROUP_LARGE=$USERS
GROUP_POOL=${BENCH_GROUP_POOL:-20000}
GROUP_CHUNK=${BENCH_GROUP_CHUNK:-1000}
PAGE=${BENCH_PAGE:-100}

# name | wrk script in bench/lua | what it does
SCENARIOS=(
  "get_user|get_user.lua|GET /Users/{id}, id drawn at random from the loaded users"
  "filter_username|filter_username.lua|GET /Users?filter=userName eq \"userNNNNNNN\", random loaded user"
  "filter_andor|filter_andor.lua|GET /Users?filter=(userName eq \"userA\" or userName eq \"userB\") and displayName sw \"Given\", two random loaded users (all indexed; 2 results)"
  "create_user|create_user.lua|POST /Users, a new unique user per request"
  "put_user|put_user.lua|PUT /Users/{id}, a random loaded user replaced by its full document with a new displayName, no If-Match"
  "patch_group_small|patch_group.lua|PATCH /Groups/{id}?excludedAttributes=members adding one user to the small group"
  "patch_group_large|patch_group.lua|PATCH /Groups/{id}?excludedAttributes=members adding one user to the large group"
  "page_cursor|page_cursor.lua|GET /Users?count=$PAGE&cursor=..., following nextCursor through all users and starting again at the end; one request is one page"
)
# shellcheck disable=SC2206 # word splitting of the list is the point
SERVERS=(${BENCH_SERVERS:-ceiling scimgate scimgate_pg peer})
# Scenarios a server cannot run (reported as n/a). scim2-server announces no cursor pagination in its default
# configuration, and enabling it needs the package's `cursor` extra (cryptography), which the venv lacks.
# shellcheck disable=SC2034 # read as ${!unsupported}
UNSUPPORTED_peer=" page_cursor "

need curl
need awk
need cargo
install_wrk

want_ceiling=0
for s in "${SERVERS[@]}"; do
  declare -F "start_$s" >/dev/null || die "unknown server $s"
  [[ "$s" != ceiling ]] || want_ceiling=1
done
if ((want_ceiling)); then
  build_release -p scimgate -p scimgate-ceiling
else
  build_release -p scimgate
fi

# Other work on the machine skews every figure: keep the load average from before the servers start.
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/scimgate-bench.XXXXXX")
RESULTS=$BENCH_DIR/results
RAW=$RESULTS/latest-raw
mkdir -p "$RESULTS"
rm -rf "$RAW"
mkdir -p "$RAW"

# shellcheck disable=SC2206 # word splitting of the list is the point
WANT=(${BENCH_SCENARIOS:-})
RUN_SCENARIOS=()
for entry in "${SCENARIOS[@]}"; do
  IFS='|' read -r name _ _ <<<"$entry"
  if ((${#WANT[@]})) && [[ ! " ${WANT[*]} " == *" $name "* ]]; then
    continue
  fi
  RUN_SCENARIOS+=("$entry")
done
((${#RUN_SCENARIOS[@]})) || die "no scenario matches BENCH_SCENARIOS=${BENCH_SCENARIOS:-}"
want_groups=0
[[ " ${RUN_SCENARIOS[*]} " != *"patch_group_"* ]] || want_groups=1

# ---------------------------------------------------------------- servers and their data
for s in "${SERVERS[@]}"; do
  log "starting $s"
  "start_$s"
done

scim() { # SERVER METHOD PATH [curl args...]: the answer's body on stdout; dies unless 2xx
  local server=$1 method=$2 path=$3 url auth base code
  shift 3
  url=URL_$server auth=AUTH_$server base=BASE_$server
  code=$(curl -sS --max-time 900 -o "$WORK/scim.out" -w '%{http_code}' -X "$method" -H "${!auth}" \
    -H 'Content-Type: application/scim+json' "$@" "${!url}${!base}$path") || die "$server: $method $path failed"
  [[ "$code" == 2* ]] || die "$server: $method $path answered $code: $(head -c 500 "$WORK/scim.out")"
  cat "$WORK/scim.out"
}

members_body() { # IDS FIRST LAST: {"value":"id"},... for users FIRST..LAST
  awk -v a="$2" -v b="$3" '$1 >= a && $1 <= b { if (k++) printf ","; printf "{\"value\":\"%s\"}", $2 }' "$1"
}

# make_group SERVER NAME FIRST LAST: a group of users FIRST..LAST; prints its id. scimgate: POST /Groups, then
# PATCH adds of GROUP_CHUNK members each. scim2-server: one POST with every member (its PATCH copies the whole group,
# so a 100k group built by PATCHes would take a quarter of an hour).
make_group() {
  local server=$1 name=$2 first=$3 last=$4 ids=$WORK/ids.$1 id a b t0
  t0=$(date +%s)
  if [[ "$server" == peer ]]; then
    {
      printf '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"displayName":"%s","members":[' "$name"
      members_body "$ids" "$first" "$last"
      printf ']}'
    } >"$WORK/group.json"
    scim "$server" POST /Groups -H 'Expect:' --data-binary "@$WORK/group.json" |
      grep -o '"id": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/'
    return
  fi
  id=$(scim "$server" POST /Groups \
    -d "{\"schemas\":[\"urn:ietf:params:scim:schemas:core:2.0:Group\"],\"displayName\":\"$name\"}" |
    grep -o '"id": *"[^"]*"' | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/')
  [[ -n "$id" ]] || die "$server: no id in the answer to POST /Groups"
  for ((a = first; a <= last; a += GROUP_CHUNK)); do
    b=$((a + GROUP_CHUNK - 1))
    ((b <= last)) || b=$last
    {
      printf '{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],'
      printf '"Operations":[{"op":"add","path":"members","value":['
      members_body "$ids" "$a" "$b"
      printf ']}]}'
    } >"$WORK/group.json"
    scim "$server" PATCH "/Groups/$id?excludedAttributes=members" -H 'Expect:' \
      --data-binary "@$WORK/group.json" >/dev/null
    if (((b - first + 1) % (10 * GROUP_CHUNK) == 0)); then
      log "$server: $name: $((b - first + 1)) of $((last - first + 1)) members, $(($(date +%s) - t0)) s"
    fi
  done
  echo "$id"
}

count_members() { # SERVER GROUP_ID
  # The peer takes minutes to serialise a 100k-member group: its counts are not read.
  if [[ "$1" == peer ]]; then
    echo "n/a"
    return
  fi
  scim "$1" GET "/Groups/$2?attributes=members" | grep -o '"value": *"' | wc -l
}

# The groups: small = users 1..GROUP_SMALL, its pool the next SMALL_POOL users; large = users 1..GROUP_LARGE minus
# the last LARGE_POOL, its pool those. The PATCH scenarios add pool users (bench/lua/patch_group.lua).
SMALL_POOL=$GROUP_POOL
((GROUP_SMALL + SMALL_POOL <= USERS)) || SMALL_POOL=$((USERS - GROUP_SMALL))
LARGE_POOL=$GROUP_POOL
((LARGE_POOL <= GROUP_LARGE / 2)) || LARGE_POOL=$((GROUP_LARGE / 2))
POOL_FIRST_small=$((GROUP_SMALL + 1)) POOL_LAST_small=$((GROUP_SMALL + SMALL_POOL))
POOL_FIRST_large=$((GROUP_LARGE - LARGE_POOL + 1)) POOL_LAST_large=$GROUP_LARGE
if ((want_groups)) && ((SMALL_POOL < 1 || GROUP_LARGE - LARGE_POOL < 1)); then
  die "BENCH_USERS=$USERS is too few for the groups"
fi

declare -A LOADED=() GROUPS_SETUP=()
for s in "${SERVERS[@]}"; do
  stores=STORES_$s
  if [[ "${!stores}" != 1 ]]; then
    # The ceiling answers any id: UUID-shaped ids for users 1..USERS, groups named by a fixed id.
    awk -v n="$USERS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d 01a21475-0462-71f5-b655-%012x\n", i, i }' \
      >"$WORK/ids.$s"
    printf -v "GROUP_small_$s" '%s' 01a21475-0463-7a2c-8d1e-3f6b2c9d4e10
    printf -v "GROUP_large_$s" '%s' 01a21475-0463-7a2c-8d1e-3f6b2c9d4e10
    continue
  fi
  log "$s: loading $USERS users through /Bulk, $BULK_OPS operations per request"
  load_users "$s" "$WORK/ids.$s"
  rate=$(awk -v n="$LOAD_IDS" -v t="$LOAD_SECS" 'BEGIN{ if (t > 0) printf "%.0f", n / t; else print "-" }')
  log "$s: loaded $LOAD_IDS users in ${LOAD_SECS}s ($rate users/s; $LOAD_FAILED operations failed)"
  ((LOAD_IDS > 0)) || die "the load step created no user on $s"
  LOADED[$s]="$LOAD_IDS of $USERS in ${LOAD_SECS} s ($rate users/s), $LOAD_FAILED operations failed"
  if ((want_groups)); then
    t0=$(date +%s.%N)
    g=$(make_group "$s" "bench-small-$$" 1 "$GROUP_SMALL")
    printf -v "GROUP_small_$s" '%s' "$g"
    t1=$(date +%s.%N)
    g=$(make_group "$s" "bench-large-$$" 1 $((GROUP_LARGE - LARGE_POOL)))
    printf -v "GROUP_large_$s" '%s' "$g"
    t2=$(date +%s.%N)
    gs=GROUP_small_$s
    small_n=$(count_members "$s" "${!gs}")
    large_n=$(count_members "$s" "$g")
    how="POST /Groups, then PATCHes of $GROUP_CHUNK members"
    [[ "$s" != peer ]] || how="one POST /Groups with the members"
    GROUPS_SETUP[$s]=$(awk -v a="$t0" -v b="$t1" -v c="$t2" -v sn="$small_n" -v ln="$large_n" -v how="$how" \
      'BEGIN { printf "small %d members in %.1f s, large %d members in %.1f s (%s)", sn, b - a, ln, c - b, how }')
    log "$s: groups: ${GROUPS_SETUP[$s]}"
  fi
  pid=PID_$s
  wait_idle "$s" "${!pid}"
done

# ---------------------------------------------------------------- scenarios
# run_wrk SCENARIO SCRIPT SERVER DURATION OUTFILE
run_wrk() {
  local scenario=$1 script=$2 server=$3 dur=$4 out=$5 url auth base group="" size
  url=URL_$server auth=AUTH_$server base=BASE_$server
  case $scenario in
  patch_group_*)
    size=${scenario#patch_group_}
    group=GROUP_${size}_$server
    group=${!group}
    ;;
  esac
  local pf=POOL_FIRST_${size:-small} pl=POOL_LAST_${size:-small}
  BENCH_IDS=$WORK/ids.$server BENCH_USERS=$USERS BENCH_BASE=${!base} BENCH_THREADS=$THREADS \
    BENCH_TAG="$server-$scenario-$(date +%s%N)" BENCH_GROUP=$group BENCH_POOL_FIRST=${!pf} \
    BENCH_POOL_LAST=${!pl} BENCH_PAGE=$PAGE \
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$dur" --timeout "$TIMEOUT" \
    -H "${!auth}" -s "$BENCH_DIR/lua/$script" "${!url}" >"$out" 2>&1 || {
    cat "$out" >&2
    die "wrk failed for $scenario on $server"
  }
}

field() { # FILE NAME: a value from the BENCH_RESULT line
  sed -n 's/^BENCH_RESULT.* '"$2"'=\([0-9]*\).*/\1/p' "$1" | head -n 1
}

declare -A RPS=() P50=() P99=() ERRS=() ERRDETAIL=() NOTES=() IDLE=()
for entry in "${RUN_SCENARIOS[@]}"; do
  IFS='|' read -r name script desc <<<"$entry"
  for server in "${SERVERS[@]}"; do
    key="$name/$server"
    unsupported=UNSUPPORTED_$server
    if [[ "${!unsupported:-}" == *" $name "* ]]; then
      log "$name on $server: not supported, skipped"
      RPS[$key]=n/a P50[$key]=n/a P99[$key]=n/a ERRS[$key]=n/a
      ERRDETAIL[$key]="not run: $server does not support it"
      continue
    fi
    before=""
    pid=PID_$server
    stores=STORES_$server
    if [[ "$name" == patch_group_* && "${!stores}" == 1 ]]; then
      group=GROUP_${name#patch_group_}_$server
      before=$(count_members "$server" "${!group}")
    fi
    if [[ "$WARMUP" != 0 && "$WARMUP" != 0s ]]; then
      log "$name on $server: warmup $WARMUP"
      run_wrk "$name" "$script" "$server" "$WARMUP" "$RAW/$name.$server.warmup.txt"
      wait_idle "$server" "${!pid}"
      [[ -z "$before" ]] || before="$before before the warmup, $(count_members "$server" "${!group}")"
    fi
    log "$name on $server: $DURATION, $CONNECTIONS connections, $THREADS threads"
    out=$RAW/$name.$server.txt
    run_wrk "$name" "$script" "$server" "$DURATION" "$out"
    grep -q '^BENCH_RESULT' "$out" || die "no result line in $out"
    wait_idle "$server" "${!pid}"
    ((IDLE_WAITED < 2)) || IDLE[$key]=$IDLE_WAITED
    requests=$(field "$out" requests)
    duration=$(field "$out" duration_us)
    RPS[$key]=$(awk -v r="$requests" -v d="$duration" 'BEGIN{printf "%.0f", r / (d / 1e6)}')
    if ((requests > 0)); then
      P50[$key]=$(awk -v v="$(field "$out" p50_us)" 'BEGIN{printf "%.2f", v / 1000}')
      P99[$key]=$(awk -v v="$(field "$out" p99_us)" 'BEGIN{printf "%.2f", v / 1000}')
    else
      # No answer arrived within the run: wrk has no latency (and counts the requests in flight as nothing).
      P50[$key]="-" P99[$key]="-"
    fi
    e_status=$(field "$out" status)
    e_sock=$(($(field "$out" connect) + $(field "$out" read) + $(field "$out" write)))
    e_timeout=$(field "$out" timeout)
    ERRS[$key]=$((e_status + e_sock + e_timeout))
    ERRDETAIL[$key]="status>=400: $e_status, socket: $e_sock, timeout: $e_timeout, of $requests requests"
    if [[ -n "$before" ]]; then
      NOTES[$key]="members: $before before the measured run, $(count_members "$server" "${!group}") after"
    elif [[ "$name" == page_cursor ]]; then
      NOTES[$key]="$requests pages; walks started: $(field "$out" starts), reached the last page: $(field "$out" ends)"
    fi
    if [[ -n "${IDLE[$key]:-}" ]]; then
      NOTES[$key]="${NOTES[$key]:+${NOTES[$key]:-}; }busy for ${IDLE[$key]} s after the run (requests wrk gave up on)"
    fi
    if ((requests == 0)); then
      NOTES[$key]="no answer arrived within the $DURATION run${NOTES[$key]:+; ${NOTES[$key]:-}}"
    fi
    log "  ${RPS[$key]} req/s, p50 ${P50[$key]} ms, p99 ${P99[$key]} ms, errors ${ERRS[$key]}${NOTES[$key]:+; ${NOTES[$key]:-}}"
  done
done

# ---------------------------------------------------------------- report
ratio() { # KEY DENOMINATOR_KEY
  local a=${RPS[$1]:-} b=${RPS[$2]:-}
  if [[ "$a" == n/a ]]; then
    echo n/a
  elif [[ -z "$a" || -z "$b" || "$b" == n/a || "$b" == 0 ]]; then
    echo "-"
  else
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a / b}'
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
  for s in "${SERVERS[@]}"; do
    [[ -z "${LOADED[$s]:-}" ]] || echo "| users loaded into $s (/Bulk, $BULK_OPS ops per request) | ${LOADED[$s]} |"
  done
  for s in "${SERVERS[@]}"; do
    [[ -z "${GROUPS_SETUP[$s]:-}" ]] || echo "| groups on $s | ${GROUPS_SETUP[$s]} |"
  done
  echo
  echo "The load generator runs on the same $(nproc) cores as the server under test: every figure is a"
  echo "share of one machine, not a server's capacity alone. Loopback only; HTTP/1.1 keep-alive (scim2-server"
  echo "answers HTTP/1.0 and closes every connection)."
  echo
  echo "Servers:"
  for server in "${SERVERS[@]}"; do
    d=DESC_$server
    echo "- $server: ${!d}"
  done
  echo
  echo "| scenario | server | req/s | p50 ms | p99 ms | errors | ratio to ceiling | ratio to peer |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for entry in "${RUN_SCENARIOS[@]}"; do
    IFS='|' read -r name script desc <<<"$entry"
    for server in "${SERVERS[@]}"; do
      key="$name/$server"
      echo "| $name | $server | ${RPS[$key]} | ${P50[$key]} | ${P99[$key]} | ${ERRS[$key]} | $(ratio "$key" "$name/ceiling") | $(ratio "$key" "$name/peer") |"
    done
  done
  echo
  echo "Ratios divide the row's req/s by the ceiling's and by the peer's (scim2-server) in the same scenario."
  echo
  echo "Scenarios:"
  for entry in "${RUN_SCENARIOS[@]}"; do
    IFS='|' read -r name script desc <<<"$entry"
    echo "- $name: $desc (bench/lua/$script)"
  done
  if ((want_groups)); then
    echo "- groups: small = users 1..$GROUP_SMALL, PATCHes add users $POOL_FIRST_small..$POOL_LAST_small;" \
      "large = users 1..$((GROUP_LARGE - LARGE_POOL)), PATCHes add users $POOL_FIRST_large..$POOL_LAST_large" \
      "(in order, split between the $THREADS wrk threads; once a pool is used up, the adds are of members: no-ops)"
  fi
  if ((${#NOTES[@]})); then
    echo
    echo "Notes:"
    for entry in "${RUN_SCENARIOS[@]}"; do
      IFS='|' read -r name script desc <<<"$entry"
      for server in "${SERVERS[@]}"; do
        [[ -z "${NOTES[$name/$server]:-}" ]] || echo "- $name on $server: ${NOTES[$name/$server]}"
      done
    done
  fi
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
