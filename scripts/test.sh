#!/usr/bin/env bash
# Run every test of scimgate on this machine: gates, unit/property/router tests, integration tests against the
# real binary on SQLite and PostgreSQL, the lifecycle and security suites, IdP replay fixtures, the provisioning
# suites against real targets (OpenLDAP slapd, a Samba AD DC, MariaDB and PostgreSQL legacy schemas, OpenSSH
# sftp, json-server, the python scim2-server), scim2-tester conformance, and schemathesis against the OpenAPI
# document.
#
#   scripts/test.sh
#
# It installs what is missing (Debian packages, cargo-nextest, a Python venv with the pinned PyPI tools, the
# pinned json-server from npm) and starts what is not running (a private PostgreSQL when none answers on
# 127.0.0.1:5432, a private MariaDB when none answers on 127.0.0.1:3306). The tests start their own private
# slapd, Samba AD DC, sshd, json-server and scim2-server instances on loopback (crates/testkit). A service that
# cannot be provided makes the run fail; nothing is skipped silently. Run it as root: Samba binds 127.0.0.N:636
# and the sftp tests create a local user.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
target=${CARGO_TARGET_DIR:-$root/target}
log() { printf '\n=== %s\n' "$*"; }
cleanups=()
on_exit() { for c in "${cleanups[@]}"; do eval "$c" || true; done; }
trap on_exit EXIT

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
# Installing slapd, samba or openssh-server must not start the system-wide daemons (they would take ports 389/636
# and 22 from the private instances): a policy-rc.d that refuses every start, for the duration of the install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  cleanups+=("rm -f /usr/sbin/policy-rc.d")
fi
apt_install postgresql-client mariadb-client curl ca-certificates python3-venv \
  slapd ldap-utils \
  samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind krb5-user \
  openssh-server openssh-client
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
mkdir -p -m 0755 /run/sshd

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
  cleanups+=("as_pg \"$pgbin/pg_ctl -D $pgdir/data -m fast stop\" >/dev/null 2>&1")
  psql "$SCIMGATE_TEST_PG/postgres" -qtAc 'select 1' >/dev/null || { echo "PostgreSQL could not be started" >&2; exit 1; }
fi

# MariaDB: use the one on 127.0.0.1:3306 if it answers, else start a private one (the SQL adapter's legacy-app
# tests and the provisioning suite need it).
export SCIMGATE_TEST_MYSQL=${SCIMGATE_TEST_MYSQL:-mysql://root@127.0.0.1:3306}
myport=${SCIMGATE_TEST_MYSQL##*:}
if ! mariadb -h 127.0.0.1 -P "$myport" -u root -e 'select 1' >/dev/null 2>&1; then
  log "no MariaDB at $SCIMGATE_TEST_MYSQL: starting a private instance"
  apt_install mariadb-server
  mydir=$(mktemp -d /tmp/scimgate-mariadb.XXXXXX)
  chown mysql "$mydir" 2>/dev/null || true
  mariadb-install-db --user=mysql --datadir="$mydir/data" --auth-root-authentication-method=normal >/dev/null
  myport=53306
  mariadbd --user=mysql --datadir="$mydir/data" --port=$myport --bind-address=127.0.0.1 \
    --socket="$mydir/sock" --pid-file="$mydir/pid" >"$mydir/log" 2>&1 &
  mypid=$!
  cleanups+=("kill $mypid 2>/dev/null")
  for _ in $(seq 1 100); do [ -S "$mydir/sock" ] && break; sleep 0.2; done
  mariadb --socket="$mydir/sock" -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; \
    GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION" || true
  export SCIMGATE_TEST_MYSQL="mysql://root@127.0.0.1:$myport"
  mariadb -h 127.0.0.1 -P $myport -u root -e 'select 1' >/dev/null || { echo "MariaDB could not be started" >&2; exit 1; }
fi

log "tools"
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
venv="$root/conformance/.venv"
if [ ! -x "$venv/bin/scim2" ] || ! "$venv/bin/pip" freeze 2>/dev/null | diff -q - conformance/requirements.txt >/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r conformance/requirements.txt
fi

# json-server (the REST adapter's real HTTP target), pinned by its lockfile.
if [ ! -x adapters/rest/tests/node/node_modules/.bin/json-server ]; then
  npm ci --prefix adapters/rest/tests/node --no-audit --no-fund --loglevel=error
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
