#!/usr/bin/env bash
# Run every test of scimgate on this machine: gates, unit/property/router tests, integration tests against the
# real binary on SQLite and PostgreSQL, the lifecycle and security suites, IdP replay fixtures, scim2-tester
# conformance, and schemathesis against the OpenAPI document.
#
#   scripts/test.sh
#
# It installs what is missing (Debian packages, cargo-nextest, a Python venv with the pinned PyPI tools) and
# starts what is not running (a private PostgreSQL when none answers on 127.0.0.1:5432). A service it cannot
# provide makes the run fail; nothing is skipped silently.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
target=${CARGO_TARGET_DIR:-$root/target}
log() { printf '\n=== %s\n' "$*"; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

log "system packages"
apt_install postgresql-client curl ca-certificates python3-venv

# PostgreSQL: use the one on 127.0.0.1:5432 if it answers, else start a private one on a temp dir.
export SCIMGATE_TEST_PG=${SCIMGATE_TEST_PG:-postgres://postgres@127.0.0.1:5432}
if ! psql "$SCIMGATE_TEST_PG/postgres" -qtAc 'select 1' >/dev/null 2>&1; then
  log "no PostgreSQL at $SCIMGATE_TEST_PG: starting a private instance"
  apt_install postgresql
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  pgdir=$(mktemp -d /tmp/scimgate-pg.XXXXXX)
  chown postgres "$pgdir" 2>/dev/null || true
  as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
  as_pg "$pgbin/initdb -D $pgdir/data -U postgres -A trust >/dev/null"
  port=55432
  as_pg "$pgbin/pg_ctl -D $pgdir/data -o '-p $port -k $pgdir -c listen_addresses=127.0.0.1' -l $pgdir/log -w start >/dev/null"
  export SCIMGATE_TEST_PG="postgres://postgres@127.0.0.1:$port"
  trap 'as_pg "$pgbin/pg_ctl -D $pgdir/data -m fast stop" >/dev/null 2>&1 || true' EXIT
  psql "$SCIMGATE_TEST_PG/postgres" -qtAc 'select 1' >/dev/null || { echo "PostgreSQL could not be started" >&2; exit 1; }
fi

log "tools"
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
venv="$root/conformance/.venv"
if [ ! -x "$venv/bin/scim2" ] || ! "$venv/bin/pip" freeze 2>/dev/null | diff -q - conformance/requirements.txt >/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r conformance/requirements.txt
fi

log "gates: fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "build"
cargo build --workspace --locked

log "tests: unit, property, router, integration (SQLite and PostgreSQL), replay fixtures"
summary=$(mktemp)
cargo nextest run --workspace --locked --profile ci 2>&1 | tee "$summary"
passed=$(grep -Eo '[0-9]+ tests run: [0-9]+ passed' "$summary" | tail -n 1 | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || echo 0)
rm -f "$summary"

log "conformance: scim2-tester"
SCIMGATE_BIN="$target/debug/scimgate" SCIMGATE_VENV="$venv" bash conformance/run.sh

log "schemathesis: the OpenAPI document against the running gateway"
SCIMGATE_BIN="$target/debug/scimgate" SCHEMATHESIS_VENV="$venv" bash conformance/schemathesis.sh

log "all tests passed"
# The plain closing line: cargo tests, plus the scim2-tester and schemathesis suites counted as one each.
echo "scimgate: $((passed + 2)) passed, 0 failed"
