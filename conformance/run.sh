#!/usr/bin/env bash
# Run scim2-tester (PyPI) against scimgate on an EMPTY store, on SQLite and on PostgreSQL.
#   conformance/run.sh [path/to/scimgate]
# Needs: the venv from scripts/test.sh (conformance/.venv with scim2-tester and scim2-cli), PostgreSQL reachable
# at $SCIMGATE_TEST_PG (default postgres://postgres@127.0.0.1:5432). Any failure exits non-zero.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${1:-${SCIMGATE_BIN:-$root/target/debug/scimgate}}
venv=${SCIMGATE_VENV:-$here/.venv}
pg=${SCIMGATE_TEST_PG:-postgres://postgres@127.0.0.1:5432}
token="conformance-token-$(date +%s%N)"
work=$(mktemp -d)
dbs=()
cleanup() {
  # start() runs in a command substitution (a subshell), so its PIDs are kept in a file.
  if [ -f "$work/pids" ]; then while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"; fi
  for d in "${dbs[@]}"; do psql "$pg/postgres" -q -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME DB_URL SCHEMA_DIR -> prints base URL
start() {
  local name=$1 url=$2 schemas=$3 port
  port=$(free_port)
  cat >"$work/$name.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[store]
url = "$url"
[scim]
schemas_dir = "$schemas"
[[tenants]]
id = "conformance"
base_path = "/scim/v2"
tokens = [{ env = "CONFORMANCE_TOKEN" }]
TOML
  CONFORMANCE_TOKEN=$token "$bin" serve --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
  echo $! >>"$work/pids"
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && { echo "http://127.0.0.1:$port/scim/v2"; return; }
    sleep 0.05
  done
  echo "gateway $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}

# The RFC 7643 schema set (core User, Group, EnterpriseUser): the stock tester, no shim.
mkdir -p "$work/rfc7643"
cp "$root/schemas/user.json" "$root/schemas/group.json" "$root/schemas/enterprise-user.json" "$work/rfc7643/"
cp "$here/rfc7643/resource-types.json" "$work/rfc7643/"

status=0
run() {
  local label=$1; shift
  echo "== scim2-tester: $label"
  if "$@" >"$work/out.txt" 2>&1; then
    grep -E "passed|SUCCESS" -c "$work/out.txt" >/dev/null
    tail -n 1 "$work/out.txt"
  else
    status=1
    grep -v -E "^(SUCCESS|  )" "$work/out.txt" | head -n 60 || true
    tail -n 3 "$work/out.txt"
  fi
}

for backend in sqlite postgres; do
  for set in rfc7643 default; do
    name="$backend-$set"
    if [ "$backend" = sqlite ]; then
      url="sqlite://$work/$name.db"
    else
      db="scimgate_conf_$(date +%s%N)"
      psql "$pg/postgres" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db TEMPLATE template0" >/dev/null
      dbs+=("$db")
      url="$pg/$db"
    fi
    if [ "$set" = rfc7643 ]; then schemas="$work/rfc7643"; else schemas="$root/schemas"; fi
    base=$(start "$name" "$url" "$schemas")
    if [ "$set" = rfc7643 ]; then
      run "$name (stock scim2 test CLI)" "$venv/bin/scim2" --url "$base" -h "Authorization: Bearer $token" test
      # The CLI prints one line per check; count them for the summary.
      echo "   $(grep -c '^SUCCESS' "$work/out.txt" || true) checks passed, $(grep -c -E '^(ERROR|CRITICAL|DEVIATION|SKIPPED)' "$work/out.txt" || true) failed"
    else
      run "$name (workforce extension, dateTime shim)" "$venv/bin/python" "$here/scim2_tester_run.py" "$base" "$token"
    fi
  done
done
if [ $status -eq 0 ]; then echo "conformance: all scim2-tester checks passed"; else echo "conformance: FAILED"; fi
exit $status
