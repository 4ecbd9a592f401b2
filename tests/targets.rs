//! The other three adapters end to end through the real gateway binary, each configured by its example under
//! examples/targets/ (only addresses, ports, keys and token files substituted):
//!
//! - `payroll-export`: the file adapter in delta mode over SFTP to a real OpenSSH sshd (testkit), host key pinned,
//!   key authentication; read back with the `sftp` CLI;
//! - `crm`: the REST adapter against a real json-server (testkit); read over its HTTP API and its db.json;
//! - `downstream-app`: the SCIM adapter against a real scim2-server (testkit); read over HTTP with its token.
//!
//! A joiner lands in all three; a mover (department change) changes its entitlements in each; a leaver is
//! disabled in each at once and removed from each after the one-minute revoke delay. Every assertion reads the
//! target directly, never through the gateway or the adapters. A second test runs `scimgate check` on a config
//! made of the three examples.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{Backend, Gateway, Options, set, sha256_hex};
use scimgate_testkit::json_server::JsonServer;
use scimgate_testkit::scim2_server::Scim2Server;
use scimgate_testkit::sshd::Sshd;

const ADMIN_TOKEN: &str = "targets-admin-token-0123456789abc";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// Everyone gets the staff entitlements of each target; Sales and Finance each add their own.
fn policy(revoke_minutes: u32) -> String {
    let mut p = format!(
        r#"
version = 1
mode = "enforce"

[lifecycle]
lock_delay_minutes = 0
revoke_delay_minutes = {revoke_minutes}

[[targets]]
id = "payroll-export"
[[targets]]
id = "crm"
[[targets]]
id = "downstream-app"
"#
    );
    let values = [
        ("payroll-export", ["PAY_STAFF", "PAY_SALES", "PAY_FINANCE"]),
        ("crm", ["crm-users", "crm-sales", "crm-finance"]),
        ("downstream-app", ["staff", "sales", "finance"]),
    ];
    let roles = ["staff", "sales", "finance"];
    for (target, vals) in values {
        for (role, value) in roles.iter().zip(vals) {
            p.push_str(&format!(
                "\n[[entitlements]]\nid = \"{target}:{role}\"\ntarget = \"{target}\"\nvalue = \"{value}\"\n\
                 risk = \"low\"\nowner = \"it\"\n"
            ));
        }
    }
    for role in roles {
        let grants: Vec<String> = values.iter().map(|(t, _)| format!("\"{t}:{role}\"")).collect();
        p.push_str(&format!(
            "\n[[roles]]\nid = \"{role}\"\ngrants = [{}]\nbirthright = true\n",
            grants.join(", ")
        ));
    }
    p.push_str(
        r#"
[[rules]]
id = "everyone"
when = 'has(user.userName)'
roles = ["staff"]
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
approvers = { kind = "app_owner" }
decision = "first"
"#,
    );
    p
}

/// A TOML basic string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The example `examples/targets/<name>`, with the value of each `key = …` line named in `subs` replaced by the
/// given TOML value. Every substitution must hit exactly one line, so a renamed key in an example fails here.
fn example(name: &str, subs: &[(&str, String)]) -> String {
    let path = common::repo_root().join("examples/targets").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hits: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = String::new();
    for line in text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match subs
            .iter()
            .find(|(k, _)| line.contains('=') && !line.trim_start().starts_with('#') && *k == key)
        {
            Some((k, v)) => {
                *hits.entry(k).or_default() += 1;
                out.push_str(&format!("{k} = {v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, _) in subs {
        assert_eq!(hits.get(k), Some(&1), "{name}: `{k} = ` should be on exactly one line");
    }
    out
}

fn file_target(sshd: &Sshd) -> String {
    example(
        "file-sftp.toml",
        &[
            ("host", q("127.0.0.1")),
            ("port", sshd.port.to_string()),
            ("user", q(&sshd.user)),
            ("private_key_file", q(&sshd.client_key.display().to_string())),
            ("host_key", q(&sshd.host_public_key)),
            ("dir", q(&sshd.upload_dir.display().to_string())),
        ],
    )
}

fn rest_target(js: &JsonServer) -> String {
    example(
        "rest-json-server.toml",
        &[
            ("base_url", q(&js.url())),
            ("allowed_hosts", format!("[{}]", q(&js.host()))),
        ],
    )
}

fn scim_target(url: &str, token_file: &Path) -> String {
    example(
        "scim-downstream.toml",
        &[
            ("base_url", q(url)),
            ("token_file", q(&token_file.display().to_string())),
        ],
    )
}

struct World {
    gw: Gateway,
    sshd: Sshd,
    js: JsonServer,
    scim: Scim2Server,
    http: reqwest::Client,
    /// Delivered delta files by name: they are never rewritten, so each is downloaded once.
    deltas: std::sync::Mutex<BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    _dir: tempfile::TempDir,
}

async fn world(revoke_minutes: u32) -> World {
    let sshd = Sshd::start();
    let js = JsonServer::start();
    let scim = Scim2Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy(revoke_minutes)).expect("policy");
    let extra = format!(
        r#"
[policy]
file = "{policy}"
tick_secs = 1

[outbox]
poll_ms = 100
backoff_base_ms = 200
backoff_max_ms = 2000

[[admin.users]]
name = "ops"
roles = ["operator"]
token = {{ sha256 = "{admin_hash}" }}

{file}
{rest}
{scim}
"#,
        policy = policy_file.display(),
        admin_hash = sha256_hex(ADMIN_TOKEN),
        file = file_target(&sshd),
        rest = rest_target(&js),
        scim = scim_target(&scim.url(), &scim.token_file),
    );
    let gw = Gateway::start_with(Options {
        backend: Backend::Sqlite,
        extra_config: extra,
        rust_log: Some("info,scimgate=info".into()),
        ..Options::default()
    })
    .await;
    World {
        gw,
        sshd,
        js,
        scim,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        deltas: std::sync::Mutex::new(BTreeMap::new()),
        _dir: dir,
    }
}

fn user(name: &str, dept: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": name,
        "name": {"givenName": "Given", "familyName": format!("Family-{name}")},
        "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": true}],
        "title": "Engineer",
        "active": true,
        ENTERPRISE: {"department": dept, "employeeNumber": "E-1001"}
    })
}

/// The strings of a JSON array, as a set.
fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// Reading the SFTP server: the example writes `;`-separated windows-1252 with CRLF and necessary quoting.

/// Parse the example's CSV dialect into rows of cells (a quote is doubled inside a quoted cell).
fn parse_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    // windows-1252 agrees with Latin-1 outside 0x80–0x9F; the test data is ASCII.
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let mut rows = Vec::new();
    let (mut row, mut cell) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ';') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

/// Rows keyed by the header row's names.
fn records(bytes: &[u8]) -> Vec<BTreeMap<String, String>> {
    let rows = parse_csv(bytes);
    let Some((header, rest)) = rows.split_first() else {
        return vec![];
    };
    rest.iter()
        .map(|r| {
            assert_eq!(r.len(), header.len(), "a row with the header's width: {r:?}");
            header.iter().cloned().zip(r.iter().cloned()).collect()
        })
        .collect()
}

impl World {
    fn remote(&self, name: &str) -> String {
        format!("{}/{name}", self.sshd.upload_dir.display())
    }

    /// The names in the SFTP upload directory, over SFTP.
    fn sftp_names(&self) -> Vec<String> {
        self.sshd.sftp_ls(&self.sshd.upload_dir.display().to_string())
    }

    /// The delta rows for the account keyed `id`, in delivery order (file names sort by timestamp, then sequence).
    fn delta_rows(&self, id: &str) -> Vec<BTreeMap<String, String>> {
        let names: Vec<String> = self
            .sftp_names()
            .into_iter()
            .filter(|n| n.starts_with("users-") && n.ends_with(".csv"))
            .collect();
        let mut cache = self.deltas.lock().expect("lock");
        let mut out = Vec::new();
        for n in names {
            let rows = cache
                .entry(n.clone())
                .or_insert_with(|| records(&self.sshd.sftp_get(&self.remote(&n))));
            assert_eq!(rows.len(), 1, "a delta file holds one row: {n}: {rows:?}");
            out.extend(rows.iter().filter(|r| r["id"] == id).cloned());
        }
        out
    }

    /// The population file's row for `id`, over SFTP.
    fn population_row(&self, id: &str) -> Option<BTreeMap<String, String>> {
        if !self.sftp_names().iter().any(|n| n == "users.csv") {
            return None;
        }
        let rows = records(&self.sshd.sftp_get(&self.remote("users.csv")));
        let mut mine: Vec<_> = rows.into_iter().filter(|r| r["id"] == id).collect();
        assert!(mine.len() <= 1, "{} population rows for {id}", mine.len());
        mine.pop()
    }

    // -----------------------------------------------------------------------------------------------------------
    // json-server, over its HTTP API

    async fn crm_user(&self, user_name: &str) -> Option<Value> {
        let v: Value = self
            .http
            .get(format!("{}/users", self.js.url()))
            .query(&[("userName", user_name)])
            .send()
            .await
            .expect("GET json-server")
            .json()
            .await
            .expect("json");
        let mut found = v.as_array().cloned().expect("an array");
        assert!(found.len() <= 1, "{} json-server users named {user_name}", found.len());
        found.pop()
    }

    // -----------------------------------------------------------------------------------------------------------
    // scim2-server, over HTTP with its bearer token

    async fn scim_get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.scim.url()))
            .query(query)
            .bearer_auth(&self.scim.token)
            .send()
            .await
            .expect("GET scim2-server");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// The downstream user whose externalId is scimgate's id.
    async fn scim_user(&self, gateway_id: &str) -> Option<Value> {
        let f = format!("externalId eq {}", Value::String(gateway_id.into()));
        let mut found = self.scim_get("/Users", &[("filter", &f)]).await["Resources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(found.len() <= 1, "{} downstream users for {gateway_id}", found.len());
        found.pop()
    }

    /// The displayNames of the downstream groups that list `member` (a downstream user id).
    async fn scim_groups_of(&self, member: &str) -> BTreeSet<String> {
        self.scim_get("/Groups", &[("count", "1000")]).await["Resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|g| {
                g["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["value"] == member))
            })
            .filter_map(|g| g["displayName"].as_str().map(str::to_string))
            .collect()
    }

    // -----------------------------------------------------------------------------------------------------------
    // the gateway's admin API (outbox bookkeeping only)

    async fn outbox(&self, status: &str) -> Vec<Value> {
        let url = self.gw.base.replace(
            "/scim/v2",
            &format!("/admin/v1/tenants/default/outbox?status={status}&limit=1000"),
        );
        let r = self
            .gw
            .client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.expect("json");
        body["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// Poll `check` until it holds, or fail after `secs` with what it last saw.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, seen) = check().await;
        if ok {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: still {seen:?} after {secs} s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn actions(rows: &[BTreeMap<String, String>]) -> Vec<String> {
    rows.iter().map(|r| r["action"].clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_mover_leaver_reach_sftp_rest_and_scim() {
    let w = world(1).await;

    // Joiner.
    let (code, created) = w.gw.call("POST", "/Users", Some(&user("carol", "Sales"))).await;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();

    // ... a delta file with one upsert row on the SFTP server, and the population file holding it.
    let rows = eventually(20, "carol's upsert delivered over SFTP", || async {
        let rows = w.delta_rows(&id);
        (!rows.is_empty(), rows)
    })
    .await;
    assert_eq!(actions(&rows), vec!["upsert"], "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["login"], "carol");
    assert_eq!(row["first_name"], "Given");
    assert_eq!(row["last_name"], "Family-carol");
    assert_eq!(row["email"], "carol@example.com");
    assert_eq!(row["employee_no"], "E-1001");
    assert_eq!(row["status"], "A");
    assert_eq!(row["roles"], "PAY_SALES|PAY_STAFF");
    let raw = w.sshd.sftp_get(&w.remote("users.csv"));
    assert!(
        raw.starts_with(b"id;login;first_name;last_name;email;employee_no;status;roles;action\r\n"),
        "the example's dialect: {}",
        String::from_utf8_lossy(&raw)
    );
    let pop = w.population_row(&id).expect("carol in users.csv");
    assert_eq!((pop["login"].as_str(), pop["status"].as_str()), ("carol", "A"));

    // ... a resource in json-server.
    let u = eventually(20, "carol in json-server", || async {
        let u = w.crm_user("carol").await;
        (u.is_some(), u)
    })
    .await
    .expect("resource");
    assert_eq!(u["scimgateId"], id.as_str());
    assert_eq!(u["externalId"], Value::Null, "the IdP sent no externalId");
    assert_eq!(u["name"]["familyName"], "Family-carol");
    assert_eq!(u["email"], "carol@example.com");
    assert_eq!(u["department"], "Sales");
    assert_eq!(u["title"], "Engineer");
    assert_eq!(u["active"], true);
    assert_eq!(strings(&u["groups"]), set(&["crm-users", "crm-sales"]));
    let crm_id = u["id"].clone();

    // ... a user in scim2-server, in the staff and sales groups.
    let d = eventually(20, "carol in scim2-server", || async {
        let u = w.scim_user(&id).await;
        let groups = match &u {
            Some(u) => w.scim_groups_of(u["id"].as_str().unwrap_or("")).await,
            None => BTreeSet::new(),
        };
        (groups == set(&["staff", "sales"]), (u, groups))
    })
    .await
    .0
    .expect("downstream user");
    assert_eq!(d["userName"], "carol");
    assert_eq!(d["active"], true);
    assert_eq!(d["title"], "Engineer");
    assert_eq!(d["name"]["familyName"], "Family-carol");
    assert_eq!(d["emails"][0]["value"], "carol@example.com");
    assert_eq!(d[ENTERPRISE]["department"], "Sales");
    let scim_id = d["id"].as_str().expect("downstream id").to_string();

    // Mover: Sales → Finance, and a new title.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
        {"op": "replace", "path": format!("{ENTERPRISE}:department"), "value": "Finance"},
        {"op": "replace", "path": "title", "value": "Controller"}]});
    let (code, body) = w.gw.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    assert_eq!(code, 200, "{body}");
    let rows = eventually(20, "carol moved over SFTP", || async {
        let rows = w.delta_rows(&id);
        (rows.len() >= 2, rows)
    })
    .await;
    assert_eq!(actions(&rows), vec!["upsert", "upsert"], "{rows:?}");
    assert_eq!(
        rows[1]["roles"], "PAY_FINANCE|PAY_STAFF",
        "sales access went, finance came"
    );
    assert_eq!(rows[1]["status"], "A");
    assert_eq!(w.population_row(&id).expect("carol")["roles"], "PAY_FINANCE|PAY_STAFF");
    let u = eventually(20, "carol moved in json-server", || async {
        let u = w.crm_user("carol").await;
        let ok = u
            .as_ref()
            .is_some_and(|u| strings(&u["groups"]) == set(&["crm-users", "crm-finance"]));
        (ok, u)
    })
    .await
    .expect("resource");
    assert_eq!(
        (u["department"].as_str(), u["title"].as_str()),
        (Some("Finance"), Some("Controller"))
    );
    assert_eq!(u["id"], crm_id, "updated in place");
    let d = eventually(20, "carol moved in scim2-server", || async {
        let g = w.scim_groups_of(&scim_id).await;
        (g == set(&["staff", "finance"]), g)
    })
    .await;
    assert_eq!(d, set(&["staff", "finance"]));
    let d = w.scim_user(&id).await.expect("downstream user");
    assert_eq!(d["id"], scim_id.as_str(), "updated in place");
    assert_eq!(d["title"], "Controller");
    assert_eq!(d[ENTERPRISE]["department"], "Finance");

    // Leaver: disabled at once everywhere ...
    let (code, body) = w.gw.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(code, 204, "{body}");
    let left_at = Instant::now();
    let rows = eventually(20, "carol's disable row over SFTP", || async {
        let rows = w.delta_rows(&id);
        (rows.len() >= 3, rows)
    })
    .await;
    assert_eq!(actions(&rows), vec!["upsert", "upsert", "disable"], "{rows:?}");
    assert_eq!(rows[2]["status"], "I");
    assert_eq!(w.population_row(&id).expect("still in users.csv")["status"], "I");
    eventually(20, "carol inactive in json-server", || async {
        let u = w.crm_user("carol").await;
        (u.as_ref().is_some_and(|u| u["active"] == false), u)
    })
    .await;
    eventually(20, "carol inactive in scim2-server", || async {
        let u = w.scim_user(&id).await;
        (u.as_ref().is_some_and(|u| u["active"] == false), u)
    })
    .await;

    // ... and removed everywhere after the one-minute revoke delay.
    let rows = eventually(120, "carol's delete row over SFTP", || async {
        let rows = w.delta_rows(&id);
        (rows.len() >= 4, rows)
    })
    .await;
    assert!(
        left_at.elapsed() >= Duration::from_secs(50),
        "removed only after the revoke delay ({:?})",
        left_at.elapsed()
    );
    assert_eq!(
        actions(&rows),
        vec!["upsert", "upsert", "disable", "delete"],
        "{rows:?}"
    );
    assert_eq!(rows[3]["login"], "carol", "a delete row carries the last values");
    assert_eq!(w.population_row(&id), None, "gone from users.csv");
    eventually(30, "carol gone from json-server", || async {
        let u = w.crm_user("carol").await;
        (u.is_none(), u)
    })
    .await;
    // And from the file json-server persists (written after its answer: polled).
    let db = w.js.db_when(|db| db["users"] == json!([]));
    assert_eq!(db["users"], json!([]));
    eventually(30, "carol gone from scim2-server", || async {
        let u = w.scim_user(&id).await;
        (u.is_none(), u)
    })
    .await;
    assert!(
        w.scim_groups_of(&scim_id).await.is_empty(),
        "no downstream group keeps a dangling member"
    );
    let all = w.scim_get("/Users", &[]).await;
    assert_eq!(all["totalResults"], 0, "{all}");

    // Every delivery is on the record: nothing dead, nothing waiting; no temporary files left on the server.
    assert!(w.outbox("dead").await.is_empty());
    assert!(w.outbox("pending").await.is_empty());
    let done = w.outbox("done").await;
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    for d in &done {
        *per_target
            .entry(d["target"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for t in ["payroll-export", "crm", "downstream-app"] {
        assert_eq!(per_target.get(t), Some(&4), "{t}: create, move, lock, remove: {done:?}");
    }
    let names = w.sftp_names();
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "no temporary files: {names:?}"
    );
}

/// `scimgate check` accepts a config made of the three examples (addresses, keys and token files substituted;
/// check builds the adapters but connects to nothing).
#[test]
fn check_accepts_the_target_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("client_ed25519");
    let keygen = scimgate_testkit::require("ssh-keygen", "openssh-client");
    let st = std::process::Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "example-token\n").expect("token");
    let (p1, p2) = (scimgate_testkit::free_port(), scimgate_testkit::free_port());
    let file = example(
        "file-sftp.toml",
        &[
            ("host", q("127.0.0.1")),
            ("private_key_file", q(&key.display().to_string())),
        ],
    );
    let rest = example(
        "rest-json-server.toml",
        &[
            ("base_url", q(&format!("http://127.0.0.1:{p1}"))),
            ("allowed_hosts", format!("[{}]", q(&format!("127.0.0.1:{p1}")))),
        ],
    );
    let scim = scim_target(&format!("http://127.0.0.1:{p2}"), &token_file);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "example-secret\n").expect("secret");
    let db_url = dir.path().join("db-url");
    std::fs::write(&db_url, "mysql://scimgate@127.0.0.1:3306/crm\n").expect("db url");
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["ldap.example.com".to_string()]).expect("cert");
    std::fs::write(&ca, cert.cert.pem()).expect("ca");
    let tls = format!("{{ ca_file = {} }}", q(&ca.display().to_string()));
    let ldap = example(
        "ldap-openldap.toml",
        &[
            ("bind_password_file", q(&secret.display().to_string())),
            ("tls", tls.clone()),
        ],
    );
    let ad = example(
        "ldap-ad.toml",
        &[("bind_password_file", q(&secret.display().to_string())), ("tls", tls)],
    );
    let sql = example("sql-legacy.toml", &[("url_file", q(&db_url.display().to_string()))]);
    let config = dir.path().join("scimgate.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}/x.db\"\n[scim]\nschemas_dir = {}\n\n{file}\n{rest}\n{scim}\n{ldap}\n{ad}\n{sql}\n\
             [[tenants]]\nid = \"t\"\nbase_path = \"/scim/v2\"\ntokens = [{{ env = \"TARGETS_TEST_TOKEN\" }}]\n",
            dir.path().display(),
            q(&common::repo_root().join("schemas").display().to_string()),
        ),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimgate"))
        .args(["check", "--config"])
        .arg(&config)
        .env("TARGETS_TEST_TOKEN", "t".repeat(24))
        .output()
        .expect("run scimgate check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "target ok: payroll-export (file)",
        "target ok: crm (rest)",
        "target ok: downstream-app (scim)",
        "target ok: directory (ldap)",
        "target ok: ad (ldap)",
        "target ok: crm-legacy (sql)",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}
