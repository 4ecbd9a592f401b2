#!/usr/bin/env bash
# Provisioning benchmark (issue #4): end-to-end joiner throughput into slapd, against raw ldap3 writes of the same
# entries at the same concurrency, in the same run.
#
#   bench/ldap.sh            (env: N=2000, C=4, HTTP_C=16, BENCH_SKIP_BUILD=1, BENCH_TMPDIR=DIR)
#
# Builds release (scimgate and bench/ldap-driver), then, each on a fresh private slapd started with the testkit's
# recipe (crates/testkit/src/slapd.rs: mdb with dbnosync, memberof + refint, ppolicy; one groupOfNames):
#   A1  ceiling: N joiners written with ldap3 over C bound connections: add the entry (the attributes the gateway
#       writes), add its DN to the group's member;
#   A2  the same, plus the two searches the LDAP adapter makes for a new account (key search, base read after add);
#   B   scimgate (release, SQLite store, a policy granting the group to everyone, an LDAP target with concurrency C)
#       takes N SCIM POST /Users at HTTP_C requests in flight; timed from the first POST until every joiner is a
#       member of the group in slapd (polled every 100 ms with one base search of the group).
# Prints a table; BENCHMARKS.md records it. Everything it started is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${N:-2000}
C=${C:-4}
HTTP_C=${HTTP_C:-16}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SCIMGATE_BIN=$TARGET_DIR/release/scimgate
DRIVER_BIN=$TARGET_DIR/release/ldap-driver
TICK=$(getconf CLK_TCK)

log() { printf '[ldap-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
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

# stop PID: SIGTERM, wait for it, forget it.
stop() {
  local pid=$1 keep=() p
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do
    [[ "$p" == "$pid" ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

for tool in cargo curl python3 sha256sum slapd ldapadd; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || die "$tool is required (Debian: slapd, ldap-utils)"
done

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release (cargo build --release -p scimgate -p scimgate-bench-ldap)"
  cargo build --release -p scimgate -p scimgate-bench-ldap >&2
fi
[[ -x "$SCIMGATE_BIN" && -x "$DRIVER_BIN" ]] || die "release binaries missing in $TARGET_DIR/release"

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/scimgate-ldap-bench.XXXXXX")

# CPU seconds (user + system) a process has used so far.
cpu_secs() {
  awk -v t="$TICK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# start_slapd NAME: a fresh slapd through the driver (testkit recipe); sets SLAPD_DRIVER_PID, SLAPD_PID and the
# LDAP_* variables.
start_slapd() {
  local name=$1 info=$WORK/$1.env
  "$DRIVER_BIN" slapd --info "$info" >"$WORK/$name-slapd.log" 2>&1 &
  SLAPD_DRIVER_PID=$!
  PIDS+=("$SLAPD_DRIVER_PID")
  for _ in $(seq 1 300); do
    [[ -f "$info" ]] && break
    kill -0 "$SLAPD_DRIVER_PID" 2>/dev/null || die "slapd ($name) did not start (log: $WORK/$name-slapd.log)"
    sleep 0.1
  done
  [[ -f "$info" ]] || die "slapd ($name) not ready within 30 s"
  # shellcheck disable=SC1090
  source "$info"
  SLAPD_PID=$(pgrep -P "$SLAPD_DRIVER_PID" -x slapd | head -n1 || true)
  [[ -n "$SLAPD_PID" ]] || die "no slapd process under the driver ($SLAPD_DRIVER_PID)"
}

# run OUT ERR CMD...: run CMD in the background and wait for it, so that a signal reaches the traps at once (bash
# runs traps only after a foreground command ends) and cleanup stops CMD too.
run() {
  local out=$1 err=$2 pid rc=0
  shift 2
  "$@" >"$out" 2>"$err" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  stop "$pid"
  return "$rc"
}

ldap_args() {
  echo --ldap-url "$LDAP_URL" --bind-dn "$LDAP_ROOT_DN" --pw-file "$LDAP_PW_FILE" --group "$LDAP_GROUP"
}

# read_kv FILE PREFIX: each key=value line of FILE becomes the variable PREFIX_key.
read_kv() {
  local k v
  while IFS='=' read -r k v; do
    [[ "$k" =~ ^[a-z0-9_]+$ ]] || continue
    printf -v "$2_$k" '%s' "$v"
  done <"$1"
}

# ---------------------------------------------------------------- A: raw ldap3 at concurrency C
raw_phase() { # NAME OPS
  local name=$1 ops=$2 cpu0 cpu1
  start_slapd "$name"
  log "$name: $N joiners straight into slapd with ldap3 ($ops operations), $C connections"
  cpu0=$(cpu_secs "$SLAPD_PID")
  # shellcheck disable=SC2046
  run "$WORK/$name.out" "$WORK/$name.log" \
    "$DRIVER_BIN" raw $(ldap_args) --people "ou=people,$LDAP_SUFFIX" -n "$N" -c "$C" --ops "$ops" ||
    die "$name failed: $(tail -n 5 "$WORK/$name.log")"
  cpu1=$(cpu_secs "$SLAPD_PID")
  read_kv "$WORK/$name.out" "$name"
  printf -v "${name}_slapd_cpu" '%s' "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b-a}')"
  stop "$SLAPD_DRIVER_PID"
  local members=${name}_members rate=${name}_rate
  [[ "${!members}" == "$N" ]] || die "$name: $N joiners written, ${!members} members in the group"
  log "$name: ${!rate} joiners/s"
}
raw_phase a1 minimal
raw_phase a2 adapter

# ---------------------------------------------------------------- B: scimgate end to end
start_slapd b
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SCIM_TOKEN="ldap-bench-token-$$-$(date +%s)-0123456789"
ADMIN_TOKEN="ldap-bench-admin-$$-$(date +%s)-0123456789"
ADMIN_HASH=$(printf '%s' "$ADMIN_TOKEN" | sha256sum | cut -d' ' -f1)
export SCIM_TOKEN
cat >"$WORK/policy.toml" <<TOML
version = 1
mode = "enforce"

[lifecycle]
lock_delay_minutes = 0
revoke_delay_minutes = 1440

[[targets]]
id = "directory"

[[entitlements]]
id = "directory:staff"
target = "directory"
value = "$LDAP_GROUP"
risk = "low"
owner = "it"

[[roles]]
id = "employee"
grants = ["directory:staff"]
birthright = true

[[rules]]
id = "everyone"
when = 'has(user.userName)'
roles = ["employee"]

[tiers.low]
escalate_after_hours = 24
expire_after_hours = 72
[[tiers.low.stages]]
id = "owner"
approvers = { kind = "app_owner" }
decision = "first"
TOML
cat >"$WORK/scimgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"

[store]
url = "sqlite://$WORK/scimgate.db"

[scim]
schemas_dir = "$ROOT/schemas"

[policy]
file = "$WORK/policy.toml"

[[admin.users]]
name = "bench"
roles = ["operator"]
token = { sha256 = "$ADMIN_HASH" }

[[targets]]
id = "directory"
concurrency = $C

[targets.ldap]
url = "$LDAP_URL"
bind_dn = "$LDAP_ROOT_DN"
bind_password_file = "$LDAP_PW_FILE"
base_dn = "ou=people,$LDAP_SUFFIX"
dn = "uid={userName},ou=people,$LDAP_SUFFIX"
key = { attribute = "uid", value = "{userName}" }
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
disable = { mode = "ppolicy" }
groups = { placeholder_member = "cn=nobody" }
pool_size = $C

[targets.ldap.attributes]
cn = "{name.givenName} {name.familyName}"
sn = "name.familyName"
givenName = "name.givenName"
mail = "emails.value"
title = "title"
departmentNumber = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"

[[tenants]]
id = "default"
base_path = "/scim/v2"
tokens = [{ env = "SCIM_TOKEN" }]
TOML
SCIM_TOKEN=$SCIM_TOKEN SCIMGATE_LOG__FORMAT=json "$SCIMGATE_BIN" serve --config "$WORK/scimgate.toml" \
  >"$WORK/scimgate.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
for _ in $(seq 1 300); do
  kill -0 "$GW_PID" 2>/dev/null || die "scimgate exited during startup"
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz" || die "scimgate not ready within 30 s"

log "b: $N SCIM joiners through scimgate ($HTTP_C requests in flight, target concurrency $C)"
gw0=$(cpu_secs "$GW_PID")
sl0=$(cpu_secs "$SLAPD_PID")
PERF_PID=""
if [[ "${BENCH_PERF:-0}" == 1 ]]; then
  command -v perf >/dev/null 2>&1 || die "BENCH_PERF=1 needs perf"
  perf record -q -F 499 -g -p "$GW_PID" -o "$WORK/perf.data" >"$WORK/perf.log" 2>&1 &
  PERF_PID=$!
  PIDS+=("$PERF_PID")
  sleep 0.5
fi
# shellcheck disable=SC2046
run "$WORK/b.out" "$WORK/b.log" \
  "$DRIVER_BIN" scim $(ldap_args) --base "http://127.0.0.1:$PORT/scim/v2" -n "$N" --http-c "$HTTP_C" ||
  die "b failed: $(tail -n 5 "$WORK/b.log")"
if [[ -n "$PERF_PID" ]]; then
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  stop "$PERF_PID"
  log "perf: scimgate's hottest symbols during b (self time)"
  perf report -i "$WORK/perf.data" --no-children --sort dso,symbol -g none --stdio 2>/dev/null |
    grep -E "^ +[0-9]" | head -n 25 | cut -c1-100 >&2 || true
fi
gw1=$(cpu_secs "$GW_PID")
sl1=$(cpu_secs "$SLAPD_PID")
read_kv "$WORK/b.out" b
b_gw_cpu=$(awk -v a="$gw0" -v b="$gw1" 'BEGIN{printf "%.2f", b-a}')
b_slapd_cpu=$(awk -v a="$sl0" -v b="$sl1" 'BEGIN{printf "%.2f", b-a}')

# The outbox after the run: every row delivered once, none dead.
outbox_count() {
  curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" \
    "http://127.0.0.1:$PORT/admin/v1/tenants/default/outbox?status=$1&limit=1000" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["entries"]))'
}
b_dead=$(outbox_count dead)
b_pending=$(outbox_count pending)
b_retries=$(grep -c '"delivery failed; will retry"' "$WORK/scimgate.log" || true)
# Mean time per delivery attempt (superseded check, account lookup, the adapter's apply) and per POST, from the
# gateway's own histograms.
curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics.txt" || true
hist_mean_ms() { # METRIC LABEL-SUBSTRING
  awk -v m="$1" -v l="$2" 'index($0, m "_sum") == 1 && index($0, l) { s += $NF }
    index($0, m "_count") == 1 && index($0, l) { c += $NF }
    END { if (c > 0) printf "%.1f", s * 1000 / c; else printf "n/a" }' "$WORK/metrics.txt"
}
b_deliver_ms=$(hist_mean_ms scimgate_outbox_delivery_duration_seconds 'outcome="done"')
b_post_ms=$(hist_mean_ms scimgate_http_request_duration_seconds 'method="POST"')
b_deliveries=$(awk 'index($0, "scimgate_outbox_deliveries_total{") == 1 && index($0, "outcome=\"done\"") { s += $NF }
  END { printf "%d", s }' "$WORK/metrics.txt")
stop "$GW_PID"
stop "$SLAPD_DRIVER_PID"
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
[[ "$b_failed" == 0 && "$b_members" == "$N" ]] || die "b: $b_accepted accepted, $b_failed failed, $b_members in slapd"

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
per_k() { awk -v c="$1" -v n="$N" 'BEGIN{printf "%.2f", c*1000/n}'; }
cat <<EOF

Provisioning into slapd: N=$N joiners, LDAP concurrency C=$C, HTTP requests in flight $HTTP_C
machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); load average $LOADAVG_START at the start, $LOADAVG_END at the end
commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)

| figure | joiners/s | seconds | ratio to A1 | CPU s per 1000 joiners |
| --- | ---: | ---: | ---: | --- |
| A1 raw ldap3: add + member add, $C connections | $a1_rate | $a1_secs | 1.00 | slapd $(per_k "$a1_slapd_cpu") |
| A2 raw ldap3: key search + add + base read + member add, $C connections | $a2_rate | $a2_secs | $(ratio "$a2_rate" "$a1_rate") | slapd $(per_k "$a2_slapd_cpu") |
| B scimgate end to end: first POST to the last joiner in the group | $b_e2e_rate | $b_e2e_secs | $(ratio "$b_e2e_rate" "$a1_rate") | scimgate $(per_k "$b_gw_cpu"), slapd $(per_k "$b_slapd_cpu") |
| B POST /Users accepted (201) | $b_accept_rate | $b_accept_secs | — | — |
| B delivered while POSTs ran ($b_at_accept of $N) | $b_during_rate | — | $(ratio "$b_during_rate" "$a1_rate") | — |
| B delivered after the last POST | $b_after_rate | — | $(ratio "$b_after_rate" "$a1_rate") | — |

B: $b_accepted accepted, $b_failed failed; $b_deliveries outbox rows delivered; after the run $b_dead dead, $b_pending pending;
$b_retries retried deliveries.
B, from scimgate's histograms: mean POST /Users $b_post_ms ms; mean delivery attempt $b_deliver_ms ms (outbox
row read, known-account lookup, the adapter's apply; not the claim or the outcome commit). Each of the $C
workers needed $(awk -v c="$C" -v r="$b_after_rate" 'BEGIN{printf "%.1f", c*1000/r}') ms per joiner after the last POST.
EOF
