#!/usr/bin/env bash
# Policy benchmarks (issue: policy engine and the JML lifecycle):
#   1. one change evaluated against 50 roles, 500 rules and 20 SoD rules: criterion, crates/policy/benches;
#   2. `scimgate plan` over N identities (default 100,000) on SQLite, with examples/policy.toml.
#
#   bench/plan.sh            (env: PLAN_USERS=100000, PLAN_BULK_OPS=1000, BENCH_SKIP_BUILD=1)
# Prints the figures; BENCHMARKS.md records them.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
users=${PLAN_USERS:-100000}
ops=${PLAN_BULK_OPS:-1000}
target=${CARGO_TARGET_DIR:-$root/target}
log() { printf '[plan-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ -z "${BENCH_SKIP_BUILD:-}" ]]; then
  log "building release"
  cargo build --release -p scimgate >&2
fi
bin="$target/release/scimgate"

log "criterion: evaluate + plan, 50 roles / 500 rules / 20 SoD rules"
cargo bench -p scimgate-policy --bench evaluate -- --warm-up-time 1 --measurement-time 3 2>/dev/null | grep -E "^[a-z_/ +]+time:|time:" || true

work=$(mktemp -d "${TMPDIR:-/tmp}/scimgate-plan.XXXXXX")
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="plan-bench-token-$$-0123456789"
# Enforce mode, so identities hold what the policy grants; the candidate then changes one role.
sed 's/^mode = "shadow"/mode = "enforce"/' examples/policy.toml >"$work/policy.toml"
cat >"$work/scimgate.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[store]
url = "sqlite://$work/scimgate.db"
[scim]
schemas_dir = "$root/schemas"
[policy]
file = "policy.toml"
[[tenants]]
id = "bench"
base_path = "/scim/v2"
tokens = [{ env = "PLAN_TOKEN" }]
TOML
PLAN_TOKEN=$token RUST_LOG=warn "$bin" serve --config "$work/scimgate.toml" >"$work/gateway.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done

log "loading $users users through /Bulk (each create is evaluated by the policy)"
t0=$(date +%s.%N)
python3 - "$users" "$ops" "http://127.0.0.1:$port/scim/v2/Bulk" "$token" <<'PY'
import json, sys, urllib.request
users, ops, url, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
depts = ["Sales", "Finance", "Engineering", "Support", "Marketing"]
jobs = ["GL-100", "FIN-CTRL", "ENG-SRE", "SUP-1", "MKT-2", "ENG-DEV"]
ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
wf = "urn:scimgate:params:scim:schemas:extension:workforce:2.0:User"
for first in range(0, users, ops):
    batch = []
    for i in range(first, min(first + ops, users)):
        batch.append({"method": "POST", "bulkId": f"u{i}", "path": "/Users", "data": {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ent, wf],
            "userName": f"user{i:07d}", "externalId": f"hr-{i}", "active": True,
            ent: {"department": depts[i % len(depts)], "employeeNumber": f"E{i}"},
            wf: {"workerType": "contractor" if i % 10 == 0 else "employee", "employmentStatus": "active",
                 "endDate": "2099-01-01T00:00:00Z", "jobCode": jobs[i % len(jobs)]}}})
    body = json.dumps({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": batch}).encode()
    req = urllib.request.Request(url, body, {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"})
    out = json.load(urllib.request.urlopen(req, timeout=600))
    bad = [o for o in out["Operations"] if o["status"] != "201"]
    if bad:
        sys.exit(f"bulk failures: {bad[:3]}")
PY
t1=$(date +%s.%N)
log "loaded in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

# The candidate: Sales loses a share, Engineering gains one.
sed 's/^mode = "shadow"/mode = "enforce"/' examples/policy.toml >"$work/candidate.toml"
python3 - "$work/candidate.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
s = s.replace('when = \'has(enterprise.department) && enterprise.department == "Sales"\'', 'when = \'has(enterprise.department) && enterprise.department == "Salez"\'')
open(p, "w").write(s)
PY
log "scimgate plan over $users identities"
t0=$(date +%s.%N)
PLAN_TOKEN=$token RUST_LOG=warn "$bin" plan --config "$work/scimgate.toml" --policy "$work/candidate.toml" >"$work/plan.json"
t1=$(date +%s.%N)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
python3 - "$work/plan.json" "$secs" "$users" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[0])["report"]
print(f"scimgate plan: {r['identities']} identities in {sys.argv[2]} s; {r['changed']} would change "
      f"({r['grants']} grants, {r['revokes']} revokes)")
assert r["identities"] == int(sys.argv[3]), "every identity was planned"
PY
