//! Durable provisioning end to end: the real gateway binary, a real slapd (testkit) and a real MariaDB holding a
//! legacy application's tables. Every assertion reads slapd (ldapsearch) or the database (the mariadb CLI)
//! directly, never through the gateway or the adapters.
//!
//! - a joiner becomes an LDAP entry with its groups and a row with its roles in the legacy app; a mover changes
//!   both; a leaver is locked on both at once and removed from both after the revoke delay;
//! - crash: 2,000 joiners in flight while the gateway is SIGKILLed three times; every 2xx is in the store and
//!   downstream exactly once;
//! - outage: slapd stopped during a load for 30 s; nothing is lost, the alert webhook hears the target go down and
//!   come back and the dead letters appear, the backlog drains, and the replayed dead letters are delivered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Backend, Gateway, Options, set, sha256_hex};
use scimgate_testkit::db::TempDb;
use scimgate_testkit::slapd::Slapd;

const SUFFIX: &str = "dc=example,dc=com";
const ADMIN_TOKEN: &str = "provisioning-admin-token-0123456789";
const DORA_PASSWORD: &str = "Dora-Pa55word-7Qx";
/// 32 bytes, base64: the key that seals passwords in the outbox.
const OUTBOX_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn policy(revoke_minutes: u32) -> String {
    format!(
        r#"
version = 1
mode = "enforce"

[lifecycle]
lock_delay_minutes = 0
revoke_delay_minutes = {revoke_minutes}

[[targets]]
id = "directory"
[[targets]]
id = "crm"

[[entitlements]]
id = "directory:staff"
target = "directory"
value = "cn=staff,ou=groups,{SUFFIX}"
risk = "low"
owner = "it"
[[entitlements]]
id = "directory:sales"
target = "directory"
value = "cn=sales,ou=groups,{SUFFIX}"
risk = "low"
owner = "it"
[[entitlements]]
id = "directory:finance"
target = "directory"
value = "cn=finance,ou=groups,{SUFFIX}"
risk = "low"
owner = "it"
[[entitlements]]
id = "crm:read"
target = "crm"
value = "APP_READ"
risk = "low"
owner = "crm"
[[entitlements]]
id = "crm:write"
target = "crm"
value = "APP_WRITE"
risk = "low"
owner = "crm"

[[roles]]
id = "employee"
grants = ["directory:staff", "crm:read"]
birthright = true
[[roles]]
id = "sales"
grants = ["directory:sales", "crm:write"]
birthright = true
[[roles]]
id = "finance"
grants = ["directory:finance"]
birthright = true

[[rules]]
id = "everyone"
when = 'has(user.userName)'
roles = ["employee"]
[[rules]]
id = "sales"
when = 'has(enterprise.department) && enterprise.department == "Sales"'
roles = ["sales"]
[[rules]]
id = "finance"
when = 'has(enterprise.department) && enterprise.department == "Finance"'
roles = ["finance"]

[tiers.low]
escalate_after_hours = 24
expire_after_hours = 72
[[tiers.low.stages]]
id = "owner"
approvers = {{ kind = "app_owner" }}
decision = "first"
"#
    )
}

const LEGACY_SCHEMA: &str = "CREATE TABLE app_users (
    user_id INT AUTO_INCREMENT PRIMARY KEY,
    login VARCHAR(200) NOT NULL UNIQUE,
    first_name VARCHAR(100),
    last_name VARCHAR(100),
    email VARCHAR(200),
    dept VARCHAR(100),
    status CHAR(1) NOT NULL DEFAULT 'A',
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB;
 CREATE TABLE app_roles (role_id INT AUTO_INCREMENT PRIMARY KEY, role_name VARCHAR(100) NOT NULL UNIQUE) ENGINE=InnoDB;
 CREATE TABLE app_user_roles (
    user_id INT NOT NULL,
    role_id INT NOT NULL,
    PRIMARY KEY (user_id, role_id),
    FOREIGN KEY (user_id) REFERENCES app_users (user_id) ON DELETE CASCADE,
    FOREIGN KEY (role_id) REFERENCES app_roles (role_id)) ENGINE=InnoDB;
 INSERT INTO app_roles (role_name) VALUES ('APP_READ'), ('APP_WRITE'), ('APP_ADMIN');";

/// slapd with the three groups (each holding a placeholder member, as groupOfNames requires one), the legacy app's
/// database, and a gateway configured with both as targets.
struct World {
    gw: Gateway,
    slapd: Slapd,
    db: TempDb,
    _dir: tempfile::TempDir,
}

struct Tuning {
    revoke_minutes: u32,
    outbox: String,
    directory: String,
    /// Extra keys for `[targets.ldap]`.
    ldap: String,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            revoke_minutes: 24 * 60,
            outbox: "poll_ms = 100\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\n".into(),
            directory: String::new(),
            ldap: String::new(),
        }
    }
}

async fn world(backend: Backend, tuning: Tuning) -> World {
    let slapd = Slapd::start(SUFFIX);
    let mut groups = String::new();
    for g in ["staff", "sales", "finance"] {
        groups.push_str(&format!(
            "dn: cn={g},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {g}\nmember: cn=nobody\n\n"
        ));
    }
    slapd.ldapadd(&groups);
    let db = TempDb::mariadb("scimgate_legacy");
    db.exec(LEGACY_SCHEMA);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(tuning.revoke_minutes)).expect("policy");
    let pw_file = dir.path().join("ldap-password");
    std::fs::write(&pw_file, &slapd.root_pw).expect("password file");
    let extra = format!(
        r#"
[policy]
file = "{policy}"
tick_secs = 1

[outbox]
{outbox}
[[admin.users]]
name = "ops"
roles = ["operator"]
token = {{ sha256 = "{admin_hash}" }}

[[targets]]
id = "directory"
concurrency = 4
{directory}
[targets.ldap]
url = "{ldap_url}"
bind_dn = "{root_dn}"
bind_password_file = "{pw_file}"
base_dn = "ou=people,{SUFFIX}"
dn = "uid={{userName}},ou=people,{SUFFIX}"
key = {{ attribute = "uid", value = "{{userName}}" }}
object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
disable = {{ mode = "ppolicy" }}
groups = {{ placeholder_member = "cn=nobody" }}
{ldap_extra}
[targets.ldap.attributes]
cn = "{{name.givenName}} {{name.familyName}}"
sn = "name.familyName"
givenName = "name.givenName"
mail = "emails.value"
title = "title"
departmentNumber = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"

[[targets]]
id = "crm"
concurrency = 4
[targets.sql]
url = "{sql_url}"
[targets.sql.users]
table = "app_users"
key_column = "login"
key = "userName"
id_column = "user_id"
disable = {{ column = "status", enabled_value = "A", disabled_value = "L" }}
[targets.sql.users.columns]
first_name = "name.givenName"
last_name = "name.familyName"
email = "emails.value"
dept = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
[targets.sql.groups]
table = "app_roles"
key_column = "role_id"
name_column = "role_name"
[targets.sql.memberships]
table = "app_user_roles"
user_column = "user_id"
group_column = "role_id"
user_ref = "id"
group_ref = "id"
"#,
        policy = policy_file.display(),
        outbox = tuning.outbox,
        admin_hash = sha256_hex(ADMIN_TOKEN),
        directory = tuning.directory,
        ldap_extra = tuning.ldap,
        ldap_url = slapd.url,
        root_dn = slapd.root_dn,
        pw_file = pw_file.display(),
        sql_url = db.url,
    );
    let gw = Gateway::start_with(Options {
        backend,
        extra_config: extra,
        rust_log: Some("info,scimgate=info".into()),
        ..Options::default()
    })
    .await;
    World {
        gw,
        slapd,
        db,
        _dir: dir,
    }
}

fn user(name: &str, dept: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "userName": name,
        "name": {"givenName": "Given", "familyName": format!("Family-{name}")},
        "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": true}],
        "title": "Engineer",
        "active": true,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": dept}
    })
}

impl World {
    fn ldap_user(&self, name: &str) -> Option<scimgate_testkit::slapd::Entry> {
        let mut found = self
            .slapd
            .ldapsearch(&format!("ou=people,{SUFFIX}"), &format!("(uid={name})"), &["*", "+"]);
        assert!(found.len() <= 1, "{} entries for {name}", found.len());
        found.pop()
    }

    /// The groups (cn) whose `member` holds the user's DN, read from the groups themselves.
    fn ldap_groups(&self, name: &str) -> BTreeSet<String> {
        self.slapd
            .ldapsearch(
                &format!("ou=groups,{SUFFIX}"),
                &format!("(member=uid={name},ou=people,{SUFFIX})"),
                &["cn"],
            )
            .iter()
            .filter_map(|e| e.first("cn"))
            .collect()
    }

    /// (status, dept, last_name) of the legacy row, and the role names it holds.
    fn sql_user(&self, name: &str) -> Option<(Vec<String>, BTreeSet<String>)> {
        let rows = self.db.query(&format!(
            "SELECT user_id, status, dept, last_name FROM app_users WHERE login = '{name}'"
        ));
        assert!(rows.len() <= 1, "{} rows for {name}", rows.len());
        let row = rows.into_iter().next()?;
        let roles = self
            .db
            .query(&format!(
                "SELECT r.role_name FROM app_user_roles ur JOIN app_roles r ON r.role_id = ur.role_id \
                 WHERE ur.user_id = {}",
                row[0]
            ))
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        Some((row[1..].to_vec(), roles))
    }

    async fn admin(&self, method: &str, path: &str) -> (u16, Value) {
        let url = self.gw.base.replace("/scim/v2", path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .gw
            .client
            .request(m, url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn outbox(&self, status: &str) -> Vec<Value> {
        let (code, body) = self
            .admin(
                "GET",
                &format!("/admin/v1/tenants/default/outbox?status={status}&limit=1000"),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        body["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// Poll `check` until it holds, or fail after `secs` with what it last saw.
async fn eventually<T: std::fmt::Debug>(secs: u64, what: &str, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, seen) = check();
        if ok {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: still {seen:?} after {secs} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn joiner_mover_leaver_reach_ldap_and_sql() {
    let w = world(
        Backend::Sqlite,
        Tuning {
            revoke_minutes: 1,
            ..Tuning::default()
        },
    )
    .await;

    // Joiner.
    let (code, created) = w.gw.call("POST", "/Users", Some(&user("alice", "Sales"))).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let entry = eventually(15, "alice in slapd", || {
        let e = w.ldap_user("alice");
        (
            e.as_ref()
                .is_some_and(|_| w.ldap_groups("alice") == set(&["staff", "sales"])),
            e,
        )
    })
    .await
    .expect("entry");
    assert_eq!(entry.dn, format!("uid=alice,ou=people,{SUFFIX}"));
    assert_eq!(entry.first("sn").as_deref(), Some("Family-alice"));
    assert_eq!(entry.first("mail").as_deref(), Some("alice@example.com"));
    assert_eq!(entry.first("departmentNumber").as_deref(), Some("Sales"));
    assert_eq!(entry.first("pwdAccountLockedTime"), None, "enabled");
    let row = eventually(15, "alice in the legacy app", || {
        let r = w.sql_user("alice");
        (
            r.as_ref()
                .is_some_and(|(_, roles)| *roles == set(&["APP_READ", "APP_WRITE"])),
            r,
        )
    })
    .await
    .expect("row");
    assert_eq!(row.0, vec!["A", "Sales", "Family-alice"]);

    // Mover: Sales → Finance, and a new title. Role reset: sales access goes, finance access comes.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Finance"},
        {"op": "replace", "path": "title", "value": "Controller"}]});
    let (code, body) = w.gw.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    assert_eq!(code, 200, "{body}");
    eventually(15, "alice moved in slapd", || {
        let e = w.ldap_user("alice");
        let g = w.ldap_groups("alice");
        let ok = g == set(&["staff", "finance"])
            && e.as_ref().and_then(|e| e.first("title")).as_deref() == Some("Controller")
            && e.as_ref().and_then(|e| e.first("departmentNumber")).as_deref() == Some("Finance");
        (ok, (g, e.map(|e| e.first("title"))))
    })
    .await;
    eventually(15, "alice moved in the legacy app", || {
        let r = w.sql_user("alice");
        let ok = r
            .as_ref()
            .is_some_and(|(cols, roles)| *roles == set(&["APP_READ"]) && cols[1] == "Finance");
        (ok, r)
    })
    .await;

    // Leaver: locked at once on both, memberships kept until the revoke.
    let (code, body) = w.gw.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(code, 204, "{body}");
    let locked_at = Instant::now();
    eventually(15, "alice locked in slapd", || {
        let e = w.ldap_user("alice");
        (
            e.as_ref().and_then(|e| e.first("pwdAccountLockedTime")).is_some(),
            e.map(|e| e.dn),
        )
    })
    .await;
    eventually(15, "alice locked in the legacy app", || {
        let r = w.sql_user("alice");
        (r.as_ref().is_some_and(|(cols, _)| cols[0] == "L"), r)
    })
    .await;
    assert_eq!(
        w.ldap_groups("alice"),
        set(&["staff", "finance"]),
        "revocation waits for the delay"
    );
    // ... then removed from both after the one-minute revoke delay.
    eventually(120, "alice removed from slapd", || {
        let e = w.ldap_user("alice");
        (e.is_none() && w.ldap_groups("alice").is_empty(), e.map(|e| e.dn))
    })
    .await;
    eventually(30, "alice removed from the legacy app", || {
        let r = w.sql_user("alice");
        (r.is_none(), r)
    })
    .await;
    assert!(
        locked_at.elapsed() >= Duration::from_secs(50),
        "removed only after the revoke delay"
    );

    // Every delivery is on the record: nothing dead, nothing waiting, each step audited.
    assert!(w.outbox("dead").await.is_empty());
    assert!(w.outbox("pending").await.is_empty());
    let done = w.outbox("done").await;
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for d in &done {
        *per_target
            .entry(d["target"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_target.get("directory"),
        Some(&4),
        "create, move, lock, remove: {done:?}"
    );
    assert_eq!(per_target.get("crm"), Some(&4), "create, move, lock, remove: {done:?}");
    assert!(done.iter().all(|d| d["has_secret"] == false));
}

/// POST `names` with `parallel` requests in flight; returns the userNames that got 201.
async fn post_all(gw_base: String, names: Vec<String>, parallel: usize) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let queue = Arc::new(Mutex::new(names));
    let ok = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let (client, queue, ok, base) = (client.clone(), queue.clone(), ok.clone(), gw_base.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(name) = queue.lock().expect("lock").pop() else {
                    return;
                };
                // While the gateway is down (killed, restarting), keep trying the same joiner, as an IdP does. A
                // request whose answer was cut off may have committed: its retry then gets 409, and it is not
                // counted as acknowledged (the store check below covers it anyway).
                for _ in 0..300 {
                    let r = client
                        .post(format!("{base}/Users"))
                        .bearer_auth(common::TOKEN)
                        .header("content-type", "application/scim+json")
                        .body(user(&name, if name.ends_with('0') { "Sales" } else { "Engineering" }).to_string())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => {
                            ok.lock().expect("lock").push(name);
                            break;
                        }
                        Ok(r) if r.status().as_u16() == 409 => break,
                        Ok(r) if r.status().is_client_error() => panic!("{name}: {}", r.status()),
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ok.lock().expect("lock").clone()
}

/// Every user the store holds, by userName (paging through /Users).
async fn stored_users(gw: &Gateway) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut start = 1;
    loop {
        let (code, page) = gw
            .call(
                "GET",
                &format!("/Users?attributes=userName&count=1000&startIndex={start}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{page}");
        let rs = page["Resources"].as_array().cloned().unwrap_or_default();
        out.extend(rs.iter().filter_map(|r| r["userName"].as_str().map(str::to_string)));
        if rs.len() < 1000 {
            return out;
        }
        start += 1000;
    }
}

fn ldap_uids(w: &World) -> Vec<String> {
    w.slapd
        .ldapsearch(&format!("ou=people,{SUFFIX}"), "(objectClass=inetOrgPerson)", &["uid"])
        .iter()
        .filter_map(|e| e.first("uid"))
        .collect()
}

fn sql_logins(w: &World) -> Vec<String> {
    w.db.query("SELECT login FROM app_users")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

fn exactly_once(what: &str, seen: &[String], want: &BTreeSet<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in seen {
        *counts.entry(s).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "{what}: duplicates {dupes:?}");
    let got: BTreeSet<String> = seen.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
}

#[tokio::test]
async fn crash_three_sigkills_lose_nothing_and_duplicate_nothing() {
    let mut w = world(Backend::Sqlite, Tuning::default()).await;
    let names: Vec<String> = (0..2000).map(|i| format!("crash{i:04}")).collect();
    let load = tokio::spawn(post_all(w.gw.base.clone(), names.clone(), 16));
    let mut kills = 0;
    while kills < 3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        if load.is_finished() {
            break;
        }
        w.gw.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.gw.restart().await;
    }
    let acked: BTreeSet<String> = load.await.expect("load").into_iter().collect();
    assert_eq!(kills, 3, "the load outlived three kills");
    assert!(acked.len() > 1000, "most joiners were acknowledged ({})", acked.len());
    // Every acknowledged joiner is in the store; the store may also hold requests whose answer the kill cut off.
    let stored = stored_users(&w.gw).await;
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    // Downstream converges on exactly the stored population, each account once.
    eventually(240, "the outbox drains", || {
        let (l, s) = (ldap_uids(&w).len(), sql_logins(&w).len());
        (l == stored.len() && s == stored.len(), (l, s, stored.len()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exactly_once("slapd", &ldap_uids(&w), &stored);
    exactly_once("legacy app", &sql_logins(&w), &stored);
    assert!(w.outbox("dead").await.is_empty(), "no dead letters");
    // Memberships too: every stored user is in staff, and the *0 users in sales.
    let staff = w
        .slapd
        .ldapsearch(&format!("cn=staff,ou=groups,{SUFFIX}"), "(objectClass=*)", &["member"]);
    let members: BTreeSet<String> = staff[0].all("member").into_iter().collect();
    assert_eq!(
        members.len(),
        stored.len() + 1,
        "every user plus the placeholder in staff"
    );
}

#[tokio::test]
async fn slapd_outage_alerts_drains_and_replays() {
    // The alert webhook: a receiver inside the test (the operator's alerting system stands in here).
    let alerts = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink = alerts.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut w = world(
        Backend::Postgres,
        Tuning {
            // One attempt on the directory: what fails before the circuit opens becomes a dead letter at once.
            directory: "max_attempts = 1\n".into(),
            outbox: format!(
                "poll_ms = 100\nbackoff_base_ms = 200\nbackoff_max_ms = 2000\nbreaker_failures = 3\n\
                 breaker_cooldown_ms = 2000\nalert_webhook = \"{hook}\"\n"
            ),
            ..Tuning::default()
        },
    )
    .await;
    let first: Vec<String> = (0..100).map(|i| format!("before{i:03}")).collect();
    let acked = post_all(w.gw.base.clone(), first.clone(), 8).await;
    assert_eq!(acked.len(), 100);
    eventually(60, "the first users in slapd", || {
        let n = ldap_uids(&w).len();
        (n == 100, n)
    })
    .await;

    // slapd goes away while joiners keep coming; the gateway keeps accepting them.
    w.slapd.stop();
    let stopped = Instant::now();
    let during: Vec<String> = (0..200).map(|i| format!("during{i:03}")).collect();
    let acked = post_all(w.gw.base.clone(), during.clone(), 8).await;
    assert_eq!(acked.len(), 200, "every joiner accepted while the directory is down");
    let down = eventually(30, "the directory reported down", || {
        let a = alerts.lock().expect("lock").clone();
        let ok = a
            .iter()
            .any(|a| a["alert"]["kind"] == "target_down" && a["alert"]["target"] == "directory");
        (ok, a.len())
    })
    .await;
    let (_, ready) = w.admin("GET", "/readyz").await;
    assert_eq!(ready["targets"]["directory"], "down", "{ready}");
    assert_eq!(ready["targets"]["crm"], "up", "{ready}");
    // Prometheus sees it too: the circuit is open and the directory's backlog grows.
    let metrics_url = w.gw.base.replace("/scim/v2", "/metrics");
    let mut last = String::new();
    for _ in 0..100 {
        last =
            w.gw.client
                .get(&metrics_url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
        let pending = last
            .lines()
            .find(|l| {
                l.starts_with("scimgate_outbox_entries{")
                    && l.contains("status=\"pending\"")
                    && l.contains("target=\"directory\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if last.contains("scimgate_target_up{target=\"directory\"} 0") && pending > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last.contains("scimgate_target_up{target=\"directory\"} 0"),
        "target_up:\n{last}"
    );
    assert!(last.contains("scimgate_target_up{target=\"crm\"} 1"));
    assert!(
        last.lines().any(|l| l.starts_with("scimgate_outbox_entries{")
            && l.contains("status=\"pending\"")
            && l.contains("target=\"directory\"")
            && !l.ends_with(" 0")),
        "a pending backlog for the directory:\n{last}"
    );
    // The legacy app is unaffected: everyone reaches it.
    eventually(60, "every user in the legacy app", || {
        let n = sql_logins(&w).len();
        (n == 300, n)
    })
    .await;
    let remaining = Duration::from_secs(30).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    w.slapd.start_again();

    // The circuit closes, the backlog drains.
    eventually(60, "the directory reported up", || {
        let a = alerts.lock().expect("lock").clone();
        let ok = a
            .iter()
            .any(|a| a["alert"]["kind"] == "target_up" && a["alert"]["target"] == "directory");
        (ok, a.len())
    })
    .await;
    eventually(120, "the backlog drains", || {
        let (p, r) = (outbox_count(&w, "pending"), outbox_count(&w, "running"));
        (p + r == 0, (p, r, ldap_uids(&w).len()))
    })
    .await;

    // What failed before the circuit opened is a dead letter, announced, and replayable.
    let dead = w.outbox("dead").await;
    assert!(
        !dead.is_empty(),
        "the first failures became dead letters (max_attempts = 1)"
    );
    assert!(dead.iter().all(|d| d["target"] == "directory"));
    assert_eq!(
        ldap_uids(&w).len() + dead.len(),
        300,
        "everything else was delivered after the outage"
    );
    eventually(10, "the dead-letter alert", || {
        let a = alerts.lock().expect("lock").clone();
        (a.iter().any(|a| a["alert"]["kind"] == "dead_letters"), down)
    })
    .await;
    for d in &dead {
        let id = d["id"].as_str().expect("id");
        let (code, body) = w
            .admin("POST", &format!("/admin/v1/tenants/default/outbox/{id}/replay"))
            .await;
        assert_eq!(code, 200, "{body}");
        // Back in the queue; a worker may already have taken it by the time the answer is written.
        assert!(
            ["pending", "running", "done"].contains(&body["status"].as_str().unwrap_or("")),
            "{body}"
        );
    }
    let everyone: BTreeSet<String> = first.iter().chain(during.iter()).cloned().collect();
    eventually(60, "replayed dead letters delivered", || {
        let n = ldap_uids(&w).len();
        (n == 300, n)
    })
    .await;
    exactly_once("slapd", &ldap_uids(&w), &everyone);
    exactly_once("legacy app", &sql_logins(&w), &everyone);
    assert!(w.outbox("dead").await.is_empty(), "no dead letter left");
    let audit = w.gw.logs();
    assert!(audit.contains("target down"), "the outage is in the log");
}

/// The number of outbox rows in `status`, through the gateway's admin API, on a thread of its own so that
/// `eventually`'s plain closures can poll it.
fn outbox_count(w: &World, status: &str) -> usize {
    let url = w.gw.base.replace(
        "/scim/v2",
        &format!("/admin/v1/tenants/default/outbox?status={status}&limit=1000"),
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let r = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("admin");
                let v: Value = r.json().await.expect("json");
                v["entries"].as_array().map_or(0, Vec::len)
            })
        })
        .join()
        .expect("thread")
    })
}

/// The operator's side: a dead letter listed, shown and replayed with the CLI, the replay audited, the audit chain
/// (requests, decisions, deliveries, the replay) intact, and `scimgate check` validating the targets.
#[tokio::test]
async fn dead_letters_from_the_cli() {
    let mut w = world(
        Backend::Sqlite,
        Tuning {
            directory: "max_attempts = 1\n".into(),
            outbox: format!("poll_ms = 100\nbreaker_failures = 1000\nsecret_key = \"{OUTBOX_KEY}\"\n"),
            // slapd here speaks plain LDAP; the adapter refuses passwords without TLS unless told otherwise.
            ldap: "allow_plaintext_passwords = true\n".into(),
            ..Tuning::default()
        },
    )
    .await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimgate"))
            .args(args)
            .arg("--config")
            .arg(w.gw.config_path())
            .env("SCIMGATE_TEST_TOKEN", common::TOKEN)
            .output()
            .expect("run scimgate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = cli(&["check"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("target ok: directory (ldap)") && out.contains("target ok: crm (sql)"),
        "{out}"
    );

    w.slapd.stop();
    let mut dora = user("dora", "Sales");
    dora["password"] = json!(DORA_PASSWORD);
    let (code, body) = w.gw.call("POST", "/Users", Some(&dora)).await;
    assert_eq!(code, 201, "{body}");
    let dead = eventually(30, "a dead letter", || {
        let (_, out, _) = cli(&["outbox", "list", "--tenant", "default"]);
        let rows: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (rows.len() == 1, rows)
    })
    .await;
    assert_eq!(dead[0]["target"], "directory");
    assert_eq!(dead[0]["status"], "dead");
    let id = dead[0]["id"].as_str().expect("id").to_string();
    let (ok, out, err) = cli(&["outbox", "show", "--tenant", "default", &id]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["payload"]["desired"]["user"]["userName"], "dora");
    assert!(
        shown["last_error"].as_str().unwrap_or("").contains("navailable"),
        "{shown}"
    );
    assert!(!out.contains(&w.slapd.root_pw), "no secret in the output");
    assert_eq!(
        shown["has_secret"], true,
        "the dead letter keeps its sealed password for the replay"
    );
    assert!(!out.contains(DORA_PASSWORD));
    let db = std::fs::read(w.gw.dir.path().join("scimgate.db")).expect("db");
    let wal = std::fs::read(w.gw.dir.path().join("scimgate.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(DORA_PASSWORD.len())
                .any(|win| win == DORA_PASSWORD.as_bytes()),
            "the password is never stored in clear"
        );
    }

    w.slapd.start_again();
    let (ok, out, err) = cli(&["outbox", "replay", "--tenant", "default", "--all"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 dead letter(s) put back"), "{out}");
    eventually(30, "dora in slapd after the replay", || {
        let e = w.ldap_user("dora");
        (
            e.is_some() && w.ldap_groups("dora") == set(&["staff", "sales"]),
            e.map(|e| e.dn),
        )
    })
    .await;
    let (ok, out, _) = cli(&["outbox", "list", "--tenant", "default"]);
    assert!(ok && out.trim().is_empty(), "no dead letter left: {out}");
    // The sealed password reached slapd: dora binds with it; and the delivered row holds no secret any more.
    let bind = std::process::Command::new("ldapwhoami")
        .args([
            "-x",
            "-H",
            &w.slapd.url,
            "-D",
            &format!("uid=dora,ou=people,{SUFFIX}"),
            "-w",
            DORA_PASSWORD,
        ])
        .output()
        .expect("ldapwhoami");
    assert!(bind.status.success(), "{}", String::from_utf8_lossy(&bind.stderr));
    let (_, out, _) = cli(&["outbox", "show", "--tenant", "default", &id]);
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["status"], "done");
    assert_eq!(shown["has_secret"], false, "cleared once delivered");

    let (ok, out, err) = cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = cli(&["audit", "export"]);
    assert!(ok);
    let kinds: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["kind"].as_str().map(str::to_string))
        .collect();
    for k in ["request", "decision", "dead_letter", "dead_letter_replayed", "delivery"] {
        assert!(kinds.iter().any(|x| x == k), "audit has {k}: {kinds:?}");
    }
    let replayed = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["kind"] == "dead_letter_replayed")
        .expect("replay record");
    assert!(
        replayed["actor"].as_str().unwrap_or("").starts_with("cli:"),
        "{replayed}"
    );
}
