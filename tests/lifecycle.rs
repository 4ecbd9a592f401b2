//! The Joiner-Mover-Leaver scenario suite: every lifecycle case driven through the SCIM API and the admin API,
//! with a manual clock instead of sleeps. The gateway runs in-process (`app()` + `oneshot`) on a SQLite file, so
//! a "restart" rebuilds it on the same database.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, header};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use scimgate::config::Config;
use scimgate::engine::clock::ManualClock;
use scimgate::http::{AppState, app};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const WF: &str = "urn:scimgate:params:scim:schemas:extension:workforce:2.0:User";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const SCIM_TOKEN: &str = "lifecycle-scim-token-0123456789";
const ADMINS: &[(&str, &str)] = &[
    ("boss", "approver"),
    ("erp-owner", "approver"),
    ("sec-1", "approver"),
    ("sec-2", "approver"),
    ("sec-lead", "approver"),
    ("ciso-delegate", "approver"),
    ("ops", "operator"),
    ("audit", "auditor"),
];

fn token(name: &str) -> String {
    format!("admin-token-{name}-0123456789")
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 6, 9, 0, 0).single().expect("valid date")
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct World {
    state: Arc<AppState>,
    clock: ManualClock,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        Self::with_policy(&std::fs::read_to_string(repo("tests/data/lifecycle-policy.toml")).expect("policy")).await
    }

    async fn with_policy(policy: &str) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("policy.toml"), policy).expect("write policy");
        let mut admins = String::new();
        for (name, role) in ADMINS {
            admins.push_str(&format!(
                "[[admin.users]]\nname = \"{name}\"\nroles = [\"{role}\"]\ntoken = {{ sha256 = \"{}\" }}\n\n",
                hex(token(name).as_bytes())
            ));
        }
        let config = dir.path().join("scimgate.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nurl = \"sqlite://{}\"\n\n[scim]\nschemas_dir = \"{}\"\n\n[policy]\nfile = \"policy.toml\"\n\n{admins}\
                 [[tenants]]\nid = \"acme\"\nbase_path = \"/scim/v2\"\ntokens = [{{ sha256 = \"{}\" }}]\n",
                dir.path().join("scimgate.db").display(),
                repo("schemas").display(),
                hex(SCIM_TOKEN.as_bytes())
            ),
        )
        .expect("write config");
        let clock = ManualClock::new(t0());
        let state = Self::build(&config, &clock).await;
        World {
            state,
            clock,
            config,
            _dir: dir,
        }
    }

    async fn build(config: &std::path::Path, clock: &ManualClock) -> Arc<AppState> {
        let cfg = Config::load(config).expect("config");
        scimgate::build_state(&cfg, Arc::new(clock.clone()))
            .await
            .expect("state")
    }

    /// Drop the running gateway and start it again on the same database.
    async fn restart(&mut self) {
        self.state = Self::build(&self.config, &self.clock).await;
    }

    fn policy_path(&self) -> PathBuf {
        self.config.with_file_name("policy.toml")
    }

    async fn send(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let req = match body {
            Some(Value::String(text)) => req.body(Body::from(text)),
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/scim+json");
                req.body(Body::from(b.to_string()))
            }
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = app(self.state.clone()).oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn scim(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(method, &format!("/scim/v2{path}"), SCIM_TOKEN, body).await
    }

    async fn admin(&self, who: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(method, &format!("/admin/v1{path}"), &token(who), body).await
    }

    async fn create(&self, body: Value) -> String {
        let (s, v) = self.scim(Method::POST, "/Users", Some(body)).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    async fn patch(&self, id: &str, ops: Value) -> Value {
        let (s, v) = self
            .scim(
                Method::PATCH,
                &format!("/Users/{id}"),
                Some(json!({"schemas": [PATCH], "Operations": ops})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The identity as the admin API shows it.
    async fn identity(&self, id: &str) -> Value {
        let (s, v) = self
            .admin("audit", Method::GET, &format!("/tenants/acme/identities/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Entitlements held on a target, and the account state.
    async fn holds(&self, id: &str, target: &str) -> (String, Vec<String>) {
        let v = self.identity(id).await;
        let t = &v["state"]["current"]["targets"][target];
        let account = t["account"].as_str().unwrap_or("absent").to_string();
        let mut ents: Vec<String> = t["entitlements"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        ents.sort();
        (account, ents)
    }

    /// The newest plan of an identity.
    async fn last_plan(&self, id: &str) -> Value {
        let (s, v) = self
            .admin(
                "audit",
                Method::GET,
                &format!("/tenants/acme/plans?identity={id}&limit=1"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["plans"][0].clone()
    }

    async fn tick(&self) -> usize {
        self.state.service.tick().await.expect("tick")
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    async fn pending(&self, who: &str) -> Vec<Value> {
        let (s, v) = self
            .admin(who, Method::GET, "/tenants/acme/approvals?status=pending", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["approvals"].as_array().cloned().unwrap_or_default()
    }

    async fn decide(&self, who: &str, approval: &str, decision: &str) -> (u16, Value) {
        self.admin(
            who,
            Method::POST,
            &format!("/tenants/acme/approvals/{approval}/decision"),
            Some(json!({"decision": decision, "reason": format!("{who} says {decision}")})),
        )
        .await
    }
}

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn employee(name: &str, department: &str, extra: Value) -> Value {
    let mut v = json!({
        "schemas": [USER, ENT, WF],
        "userName": name,
        "externalId": format!("hr-{name}"),
        "active": true,
        ENT: {"department": department, "employeeNumber": format!("E-{name}")},
        WF: {"workerType": "employee", "employmentStatus": "active"},
    });
    if let (Some(base), Value::Object(extra)) = (v.as_object_mut(), extra) {
        for (k, x) in extra {
            match (base.get_mut(&k), x) {
                (Some(Value::Object(b)), Value::Object(x)) => b.extend(x),
                (_, x) => {
                    base.insert(k, x);
                }
            }
        }
    }
    v
}

fn actions(plan: &Value) -> Vec<String> {
    plan["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let action = i["action"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i["action"].to_string());
                    format!(
                        "{}:{}:{}:{}",
                        i["status"].as_str().unwrap_or("?"),
                        action,
                        i["target"].as_str().unwrap_or("?"),
                        i["entitlement"].as_str().unwrap_or("-")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn joiner_with_future_start_date_is_provisioned_ahead_and_enabled_by_a_durable_timer() {
    let mut w = World::new().await;
    let start = t0() + Duration::days(30);
    let id = w
        .create(employee("joiner", "Sales", json!({WF: {"startDate": iso(start)}})))
        .await;
    // Too early: nothing planned yet, a timer is set for the lead time.
    assert_eq!(w.holds(&id, "ldap").await.0, "absent");
    let v = w.identity(&id).await;
    assert_eq!(
        v["state"]["wakeup_at"],
        json!(scimgate_scim::resource::format_datetime(start - Duration::days(7)))
    );
    // The timer survives a restart.
    w.restart().await;
    w.advance(Duration::days(23) + Duration::hours(1));
    assert_eq!(w.tick().await, 1);
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("disabled".into(), vec!["ldap:sales".into(), "ldap:staff".into()])
    );
    assert_eq!(
        w.holds(&id, "vpn").await,
        ("disabled".into(), vec!["vpn:access".into()])
    );
    let plan = w.last_plan(&id).await;
    assert_eq!(plan["cause"], "timer");
    assert!(actions(&plan).iter().any(|a| a.contains("create_account")), "{plan}");
    // Every item carries its rationale: rules, roles and the policy hash.
    let staff = plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["entitlement"] == "ldap:staff")
        .expect("staff grant");
    assert_eq!(staff["rationale"]["rules"], json!(["all-employees"]));
    assert_eq!(staff["rationale"]["roles"], json!(["employee"]));
    assert_eq!(staff["rationale"]["policy_hash"], plan["policy_hash"]);
    // On the start date the accounts are enabled.
    w.restart().await;
    w.advance(Duration::days(7));
    assert_eq!(w.tick().await, 1);
    assert_eq!(w.holds(&id, "ldap").await.0, "enabled");
    assert_eq!(w.holds(&id, "vpn").await.0, "enabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn mover_gets_a_role_reset() {
    let w = World::new().await;
    let id = w.create(employee("mover", "Sales", json!({}))).await;
    assert_eq!(w.holds(&id, "ldap").await.1, vec!["ldap:sales", "ldap:staff"]);
    w.patch(
        &id,
        json!([{"op": "replace", "path": format!("{ENT}:department"), "value": "Finance"}]),
    )
    .await;
    assert_eq!(
        w.holds(&id, "ldap").await.1,
        vec!["ldap:finance", "ldap:staff"],
        "sales access does not survive the move"
    );
    assert_eq!(
        w.holds(&id, "erp").await,
        ("enabled".into(), vec!["erp:vendor-create".into()])
    );
    let acts = actions(&w.last_plan(&id).await);
    assert!(
        acts.contains(&"accepted:revoke:ldap:ldap:sales".to_string()),
        "{acts:?}"
    );
    assert!(
        acts.contains(&"accepted:grant:ldap:ldap:finance".to_string()),
        "{acts:?}"
    );
}

async fn leaver_case(how: &str) {
    let w = World::new().await;
    let id = w
        .create(employee(
            "leaver",
            "Finance",
            json!({WF: {"jobCode": "ERPADM"}, ENT: {"manager": {"value": "nobody"}}}),
        ))
        .await;
    // erp:admin is privileged: held for approval. Approve it through the whole high chain first.
    // (Manager stage has no resolvable manager here, so operators see it stuck: instead give the user a manager.)
    let boss = w.create(employee("boss", "Finance", json!({}))).await;
    w.patch(
        &id,
        json!([{"op": "replace", "path": format!("{ENT}:manager"), "value": boss}]),
    )
    .await;
    approve_all(&w, &id).await;
    assert_eq!(w.holds(&id, "erp").await.1, vec!["erp:admin", "erp:vendor-create"]);
    match how {
        "inactive" => {
            w.patch(&id, json!([{"op": "Replace", "path": "active", "value": "False"}]))
                .await;
        }
        "terminated" => {
            w.patch(
                &id,
                json!([{"op": "replace", "path": format!("{WF}:employmentStatus"), "value": "terminated"}]),
            )
            .await;
        }
        _ => {
            let (s, _) = w.scim(Method::DELETE, &format!("/Users/{id}"), None).await;
            assert_eq!(s, 204);
            let (s, _) = w.scim(Method::GET, &format!("/Users/{id}"), None).await;
            assert_eq!(s, 404, "deleted for SCIM");
            assert_eq!(w.identity(&id).await["archived"], json!(true), "kept, archived");
        }
    }
    // Lock first: every account disabled, entitlements still there, nothing revoked yet.
    let plan = w.last_plan(&id).await;
    let acts = actions(&plan);
    assert!(
        acts.iter().all(|a| a.contains("disable_account")),
        "{how}: only locks at first: {acts:?}"
    );
    assert_eq!(acts.len(), 3, "{acts:?}");
    assert_eq!(w.holds(&id, "erp").await.0, "disabled");
    assert!(
        w.identity(&id).await["state"]["evaluation"]["state"]
            .get("leaver")
            .is_some(),
        "{how}"
    );
    // Revoke after the configured delay, privileged first, then the rest, then the accounts.
    w.advance(Duration::hours(23));
    w.tick().await;
    assert_eq!(w.holds(&id, "erp").await.0, "disabled", "not before the delay");
    w.advance(Duration::hours(2));
    assert!(w.tick().await >= 1);
    let acts = actions(&w.last_plan(&id).await);
    assert_eq!(
        acts.first().map(String::as_str),
        Some("accepted:revoke:erp:erp:admin"),
        "{acts:?}"
    );
    assert!(
        acts.iter().rev().take(3).all(|a| a.contains("delete_account")),
        "{acts:?}"
    );
    for t in ["ldap", "erp", "vpn"] {
        assert_eq!(w.holds(&id, t).await, ("absent".into(), vec![]), "{how} {t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leaver_by_active_false() {
    leaver_case("inactive").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leaver_by_employment_status() {
    leaver_case("terminated").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leaver_by_delete_is_archived() {
    leaver_case("delete").await;
}

/// Approve every pending request of an identity, stage by stage, with whoever may.
async fn approve_all(w: &World, id: &str) {
    for _ in 0..10 {
        let (_, v) = w
            .admin(
                "audit",
                Method::GET,
                &format!("/tenants/acme/approvals?status=pending&identity={id}"),
                None,
            )
            .await;
        let pending = v["approvals"].as_array().cloned().unwrap_or_default();
        if pending.is_empty() {
            return;
        }
        for a in pending {
            let stage = a["request"]["stage"].as_u64().unwrap_or(0) as usize;
            let st = &a["request"]["stages"][stage];
            for who in st["approvers"].as_array().cloned().unwrap_or_default() {
                let who = who.as_str().expect("name");
                if st["approved_by"].as_array().is_some_and(|b| b.contains(&json!(who))) {
                    continue;
                }
                let (s, v) = w.decide(who, a["id"].as_str().expect("id"), "approve").await;
                assert_eq!(s, 200, "{who}: {v}");
                if v["status"] != "pending" || v["request"]["stage"] != a["request"]["stage"] {
                    break;
                }
            }
        }
    }
    panic!("approvals did not finish");
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_of_absence_disables_and_keeps_entitlements() {
    let w = World::new().await;
    let id = w.create(employee("away", "Sales", json!({}))).await;
    w.patch(
        &id,
        json!([{"op": "replace", "path": format!("{WF}:employmentStatus"), "value": "leave"}]),
    )
    .await;
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("disabled".into(), vec!["ldap:sales".into(), "ldap:staff".into()])
    );
    let acts = actions(&w.last_plan(&id).await);
    assert!(acts.iter().all(|a| a.contains("disable_account")), "{acts:?}");
    w.patch(
        &id,
        json!([{"op": "replace", "path": format!("{WF}:employmentStatus"), "value": "active"}]),
    )
    .await;
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("enabled".into(), vec!["ldap:sales".into(), "ldap:staff".into()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rehire_reuses_the_identity_and_restores_nothing_stale() {
    let w = World::new().await;
    let id = w.create(employee("rehire", "Finance", json!({}))).await;
    let (s, _) = w.scim(Method::DELETE, &format!("/Users/{id}"), None).await;
    assert_eq!(s, 204);
    // Before the revoke delay ends, the same person comes back, in Sales, under a new userName.
    w.advance(Duration::hours(2));
    let mut again = employee("rehire2", "Sales", json!({}));
    again["externalId"] = json!("hr-rehire");
    let (s, v) = w.scim(Method::POST, "/Users", Some(again)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["id"], json!(id), "the archived identity is reused");
    assert_eq!(v["userName"], "rehire2");
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("enabled".into(), vec!["ldap:sales".into(), "ldap:staff".into()])
    );
    assert_eq!(
        w.holds(&id, "erp").await,
        ("absent".into(), vec![]),
        "finance access is not restored"
    );
    let v = w.identity(&id).await;
    assert_eq!(v["archived"], json!(false));
    assert_eq!(v["state"]["leaver_since"], Value::Null);
    // The old leaver timer does not fire on the rehired identity.
    w.advance(Duration::days(2));
    w.tick().await;
    assert_eq!(w.holds(&id, "ldap").await.0, "enabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn dual_role_gets_the_union_and_sod_refuses_the_conflict_but_keeps_the_hr_fact() {
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let id = w
        .create(employee("dual", "Finance", json!({ENT: {"manager": boss}})))
        .await;
    // Title change from HR: dual role finance-clerk + finance-approver, which conflicts (enforce).
    let v = w
        .patch(&id, json!([{"op": "replace", "path": "title", "value": "AP Manager"}]))
        .await;
    assert_eq!(v["title"], "AP Manager", "the HR fact is stored");
    let plan = w.last_plan(&id).await;
    let refused: Vec<&Value> = plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i["status"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{plan}");
    assert_eq!(refused[0]["entitlement"], "erp:payment-approve");
    assert_eq!(refused[0]["rule"], "vendor-payments");
    assert_eq!(
        w.holds(&id, "erp").await.1,
        vec!["erp:vendor-create"],
        "the conflicting grant is refused"
    );
    assert!(
        w.pending("boss").await.is_empty(),
        "a refused grant is not sent for approval"
    );
    let eval = &w.identity(&id).await["state"]["evaluation"];
    assert!(
        eval["roles"].as_array().expect("roles").len() >= 3,
        "union of roles: {eval}"
    );
    assert_eq!(eval["sod"][0]["rule"], "vendor-payments");
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_group_push_that_creates_a_conflict_gets_403_naming_the_rule() {
    let w = World::new().await;
    let id = w.create(employee("clerk", "Finance", json!({}))).await;
    let (s, g) = w
        .scim(
            Method::POST,
            "/Groups",
            Some(
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Payment Approvers"}),
            ),
        )
        .await;
    assert_eq!(s, 201);
    let gid = g["id"].as_str().expect("id");
    let body = json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
    let (s, v) = w.scim(Method::PATCH, &format!("/Groups/{gid}"), Some(body)).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["status"], "403");
    assert!(v["detail"].as_str().expect("detail").contains("vendor-payments"), "{v}");
    let (_, g) = w.scim(Method::GET, &format!("/Groups/{gid}"), None).await;
    assert!(g.get("members").is_none(), "nothing stored: {g}");
    // A user without the conflicting role may join: the mapped, non-birthright grant is held for approval.
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let other = w
        .create(employee("seller", "Sales", json!({ENT: {"manager": boss}})))
        .await;
    let body =
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": other}]}]});
    let (s, v) = w.scim(Method::PATCH, &format!("/Groups/{gid}"), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    let held = w.pending("boss").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["request"]["item"]["entitlement"], "erp:payment-approve");
    assert_eq!(held[0]["request"]["tier"], "medium");
    assert_eq!(
        w.holds(&other, "erp").await.1,
        Vec::<String>::new(),
        "held, not granted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_run_their_stages_and_deny_is_never_executed() {
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let a = w
        .create(employee(
            "ann",
            "Sales",
            json!({ENT: {"manager": boss}, "title": "AP Manager"}),
        ))
        .await;
    let b = w
        .create(employee(
            "bob",
            "Sales",
            json!({ENT: {"manager": boss}, "title": "AP Manager"}),
        ))
        .await;
    // Stage 1: the manager. The owner cannot decide before their stage; an operator can never decide.
    let pending = w.pending("boss").await;
    assert_eq!(pending.len(), 2);
    let for_a = pending.iter().find(|p| p["identity"] == json!(a)).expect("a's request")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let for_b = pending.iter().find(|p| p["identity"] == json!(b)).expect("b's request")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(w.pending("erp-owner").await.is_empty(), "not their stage yet");
    assert_eq!(w.decide("erp-owner", &for_a, "approve").await.0, 403);
    assert_eq!(w.decide("ops", &for_a, "approve").await.0, 403);
    assert_eq!(w.decide("audit", &for_a, "approve").await.0, 403);
    let (s, v) = w.decide("boss", &for_a, "approve").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("pending")), "{v}");
    assert_eq!(v["request"]["stage"], json!(1));
    // Stage 2: the application owner (from the entitlement).
    assert_eq!(w.pending("erp-owner").await.len(), 1);
    let (s, v) = w.decide("erp-owner", &for_a, "approve").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("approved")), "{v}");
    assert_eq!(w.holds(&a, "erp").await.1, vec!["erp:payment-approve"]);
    assert_eq!(w.last_plan(&a).await["cause"], "approval");
    // Denied: recorded with its reason, never executed.
    let (s, v) = w.decide("boss", &for_b, "deny").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("denied")));
    assert_eq!(v["request"]["history"][0]["reason"], "boss says deny");
    assert_eq!(w.holds(&b, "erp").await.1, Vec::<String>::new());
    assert_eq!(
        w.decide("boss", &for_b, "approve").await.0,
        409,
        "a decided request stays decided"
    );
    // The approver sees their history.
    let (_, v) = w
        .admin("boss", Method::GET, "/tenants/acme/approvals?status=denied", None)
        .await;
    assert_eq!(v["approvals"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn approvals_escalate_then_expire() {
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let id = w
        .create(employee(
            "admin",
            "Sales",
            json!({ENT: {"manager": boss}, WF: {"jobCode": "ERPADM"}}),
        ))
        .await;
    let pending = w.pending("boss").await;
    assert_eq!(pending.len(), 1);
    let req = pending[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        pending[0]["request"]["tier"], "high",
        "privileged: always the high-risk chain"
    );
    assert_eq!(pending[0]["request"]["reason"], "privileged");
    assert_eq!(w.decide("boss", &req, "approve").await.0, 200);
    // Security stage needs both; nobody answers for a day: it escalates to the security lead.
    assert_eq!(w.decide("sec-lead", &req, "approve").await.0, 403);
    w.advance(Duration::hours(25));
    w.tick().await;
    let (_, v) = w
        .admin("audit", Method::GET, &format!("/tenants/acme/approvals/{req}"), None)
        .await;
    assert!(
        v["request"]["stages"][1]["approvers"]
            .as_array()
            .expect("approvers")
            .contains(&json!("sec-lead")),
        "{v}"
    );
    assert_eq!(
        v["request"]["history"]
            .as_array()
            .expect("history")
            .last()
            .expect("entry")["action"],
        "escalate"
    );
    // Nobody decides before the deadline: it expires and is never executed.
    w.advance(Duration::hours(48));
    w.tick().await;
    let (_, v) = w
        .admin("audit", Method::GET, &format!("/tenants/acme/approvals/{req}"), None)
        .await;
    assert_eq!(v["status"], "expired");
    assert_eq!(w.holds(&id, "erp").await.1, Vec::<String>::new());
    assert_eq!(w.decide("sec-1", &req, "approve").await.0, 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn contractor_needs_an_end_date_and_leaves_on_it() {
    let w = World::new().await;
    let mut c = employee("temp", "Sales", json!({}));
    c[WF]["workerType"] = json!("contractor");
    let id = w.create(c).await;
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("absent".into(), vec![]),
        "no endDate: no access"
    );
    assert!(
        w.identity(&id).await["state"]["evaluation"]["state"]
            .get("invalid")
            .is_some()
    );
    let end = t0() + Duration::days(10);
    w.patch(
        &id,
        json!([{"op": "add", "path": format!("{WF}:endDate"), "value": iso(end)}]),
    )
    .await;
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("enabled".into(), vec!["ldap:sales".into(), "ldap:staff".into()])
    );
    w.advance(Duration::days(10) + Duration::minutes(1));
    w.tick().await;
    assert_eq!(
        w.holds(&id, "ldap").await.0,
        "disabled",
        "deprovisioned automatically on the end date"
    );
    w.advance(Duration::days(2));
    w.tick().await;
    assert_eq!(w.holds(&id, "ldap").await, ("absent".into(), vec![]));
}

fn policy_with_mode(sod_mode: &str, policy_mode: &str) -> String {
    std::fs::read_to_string(repo("tests/data/lifecycle-policy.toml"))
        .expect("policy")
        .replace(
            "mode = \"enforce\"\nmax_exception_days",
            &format!("mode = \"{sod_mode}\"\nmax_exception_days"),
        )
        .replace(
            "version = 1\nmode = \"enforce\"",
            &format!("version = 1\nmode = \"{policy_mode}\""),
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn sod_approve_mode_holds_the_grant_and_records_an_exception_with_expiry() {
    let w = World::with_policy(&policy_with_mode("approve", "enforce")).await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let id = w
        .create(employee("dual", "Finance", json!({ENT: {"manager": boss}})))
        .await;
    // The mover's new title adds the conflicting role: only the new grant is held for the security chain.
    w.patch(&id, json!([{"op": "replace", "path": "title", "value": "AP Manager"}]))
        .await;
    let (_, v) = w
        .admin(
            "audit",
            Method::GET,
            &format!("/tenants/acme/approvals?status=pending&identity={id}"),
            None,
        )
        .await;
    let held = v["approvals"].as_array().expect("list");
    assert_eq!(
        held.len(),
        1,
        "{}",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    );
    assert_eq!(
        held[0]["request"]["reason"],
        json!({"sod": {"rule": "vendor-payments"}})
    );
    assert_eq!(
        held[0]["request"]["tier"], "high",
        "the security chain decides SoD exceptions"
    );
    approve_all(&w, &id).await;
    assert_eq!(
        w.holds(&id, "erp").await.1,
        vec!["erp:payment-approve", "erp:vendor-create"]
    );
    let (_, v) = w
        .admin("audit", Method::GET, "/tenants/acme/sod/exceptions", None)
        .await;
    let x = &v["exceptions"][0];
    assert_eq!(x["rule"], "vendor-payments");
    assert_eq!(x["active"], json!(true));
    assert_eq!(
        x["expires_at"],
        json!(scimgate_scim::resource::format_datetime(
            w.clock_now() + Duration::days(30)
        ))
    );
    // Reported until it expires; after that the conflict is back and asks for approval again.
    w.advance(Duration::days(31));
    w.tick().await;
    let (_, v) = w
        .admin("audit", Method::GET, "/tenants/acme/sod/exceptions", None)
        .await;
    assert_eq!(v["exceptions"][0]["active"], json!(false));
}

impl World {
    fn clock_now(&self) -> DateTime<Utc> {
        use scimgate::engine::clock::Clock;
        self.clock.now()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sod_record_mode_grants_and_reports() {
    let w = World::with_policy(&policy_with_mode("record", "enforce")).await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let id = w
        .create(employee("dual", "Finance", json!({ENT: {"manager": boss}})))
        .await;
    w.patch(&id, json!([{"op": "replace", "path": "title", "value": "AP Manager"}]))
        .await;
    // Not refused and not SoD-held: it follows the normal (requested → medium) chain, with the conflict reported.
    let plan = w.last_plan(&id).await;
    let item = plan["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["entitlement"] == "erp:payment-approve")
        .expect("item")
        .clone();
    assert_eq!(item["sod_reported"], json!(["vendor-payments"]), "{item}");
    assert_ne!(item["status"], "refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_mode_plans_and_records_but_never_executes() {
    let w = World::with_policy(&policy_with_mode("enforce", "shadow")).await;
    let id = w.create(employee("shadowed", "Sales", json!({}))).await;
    let plan = w.last_plan(&id).await;
    assert_eq!(plan["mode"], "shadow");
    assert!(actions(&plan).iter().all(|a| a.starts_with("shadow:")), "{plan}");
    assert_eq!(
        w.holds(&id, "ldap").await,
        ("absent".into(), vec![]),
        "nothing executed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_policy_reload_keeps_the_last_good_policy_and_says_where() {
    let w = World::new().await;
    let (_, before) = w.admin("ops", Method::GET, "/policy", None).await;
    let good = std::fs::read_to_string(w.policy_path()).expect("policy");
    std::fs::write(
        w.policy_path(),
        good.replace("grants = [\"ldap:sales\"]", "grants = [\"ldap:nope\"]"),
    )
    .expect("write");
    let (s, v) = w.admin("ops", Method::POST, "/policy/reload", None).await;
    assert_eq!(s, 400, "{v}");
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains("ldap:nope") && msg.contains("grants"),
        "names the key: {msg}"
    );
    assert!(msg.contains(':'), "names the line: {msg}");
    assert_eq!(v["running_policy_hash"], before["hash"]);
    let (_, after) = w.admin("audit", Method::GET, "/policy", None).await;
    assert_eq!(after["hash"], before["hash"]);
    assert!(after["last_reload_error"].as_str().is_some());
    // Only an operator may reload.
    assert_eq!(w.admin("audit", Method::POST, "/policy/reload", None).await.0, 403);
    assert_eq!(w.admin("boss", Method::POST, "/policy/reload", None).await.0, 403);
    assert_eq!(
        w.send(Method::POST, "/admin/v1/policy/reload", SCIM_TOKEN, None)
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_shows_what_a_new_policy_would_grant_and_revoke() {
    let w = World::new().await;
    let seller = w.create(employee("seller", "Sales", json!({}))).await;
    w.create(employee("fin", "Finance", json!({}))).await;
    let good = std::fs::read_to_string(w.policy_path()).expect("policy");
    let candidate = good.replace("grants = [\"ldap:sales\"]", "grants = [\"vpn:access\"]");
    let (s, v) = w
        .admin(
            "ops",
            Method::POST,
            "/tenants/acme/policy/preview",
            Some(Value::String(candidate)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["identities"], json!(2));
    assert_eq!(v["changed"], json!(1), "only the sales user changes: {v}");
    assert_eq!(v["plans"][0]["identity"], json!(seller));
    let items = v["plans"][0]["items"].as_array().expect("items");
    assert!(
        items
            .iter()
            .any(|i| i["action"] == "revoke" && i["entitlement"] == "ldap:sales"),
        "{items:?}"
    );
    // Nothing changed for real.
    assert_eq!(w.holds(&seller, "ldap").await.1, vec!["ldap:sales", "ldap:staff"]);
    let (s, v) = w
        .admin(
            "ops",
            Method::POST,
            "/tenants/acme/policy/preview",
            Some(Value::String("version = [".into())),
        )
        .await;
    assert_eq!(s, 400, "{v}");
}

/// `/metrics`, scraped after a scenario, shows every family with non-zero values where the scenario exercised it.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_every_family_the_scenario_exercised() {
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let dual = w
        .create(employee("dual", "Finance", json!({ENT: {"manager": boss}})))
        .await;
    w.patch(
        &dual,
        json!([{"op": "replace", "path": "title", "value": "AP Manager"}]),
    )
    .await; // SoD refused
    w.create(employee(
        "priv",
        "Sales",
        json!({ENT: {"manager": boss}, WF: {"jobCode": "ERPADM"}}),
    ))
    .await; // held
    let (s, _) = w.scim(Method::GET, "/Users?filter=userName%20zz", None).await; // scim error
    assert_eq!(s, 400);
    let (s, _) = w.scim(Method::DELETE, &format!("/Users/{dual}"), None).await; // leaver: lock
    assert_eq!(s, 204);
    w.advance(Duration::days(2));
    assert!(w.tick().await >= 1);
    let (s, text) = w.send(Method::GET, "/metrics", &token("audit"), None).await;
    assert_eq!(s, 200);
    let text = match text {
        Value::Null => {
            // Not JSON: fetch the raw text.
            let req = Request::builder()
                .uri("/metrics")
                .header(header::AUTHORIZATION, format!("Bearer {}", token("audit")))
                .body(Body::empty())
                .expect("request");
            let resp = app(w.state.clone()).oneshot(req).await.expect("infallible");
            String::from_utf8(
                axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .expect("body")
                    .to_vec(),
            )
            .expect("utf8")
        }
        other => other.to_string(),
    };
    let value = |family: &str, needle: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(family) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    assert!(value("scimgate_http_requests_total", "tenant=\"acme\"") > 0.0, "{text}");
    assert!(
        value(
            "scimgate_http_request_duration_seconds_count",
            "route=\"/scim/v2/Users\""
        ) > 0.0
    );
    assert!(value("scimgate_scim_errors_total", "scim_type=\"invalidFilter\"") > 0.0);
    assert!(value("scimgate_policy_decisions_total", "cause=\"create\"") > 0.0);
    assert!(value("scimgate_policy_decisions_total", "cause=\"timer\"") > 0.0);
    assert!(value("scimgate_plan_items_total", "status=\"refused\"") > 0.0);
    assert!(value("scimgate_sod_violations_total", "rule=\"vendor-payments\"") > 0.0);
    assert!(
        value(
            "scimgate_approvals_pending",
            "stage=\"manager\",tenant=\"acme\",tier=\"high\""
        ) > 0.0,
        "{text}"
    );
    assert!(value("scimgate_leaver_time_to_lock_seconds_count", "") > 0.0);
    assert!(value("scimgate_lifecycle_timers_total", "") > 0.0);
    // Without an admin token there is nothing to scrape.
    assert_eq!(w.send(Method::GET, "/metrics", SCIM_TOKEN, None).await.0, 401);
}

/// Requests (redacted), decisions with their rationale, approvals and policy operations land in the tenant's
/// hash chain, which verifies; and no attribute value (only names) is in a request record.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_trail_records_requests_decisions_and_approvals() {
    use scimgate_store::AuditFilter;
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    let id = w
        .create(employee(
            "ann",
            "Sales",
            json!({ENT: {"manager": boss}, "title": "AP Manager"}),
        ))
        .await;
    let pending = w.pending("boss").await;
    let req = pending[0]["id"].as_str().expect("id").to_string();
    assert_eq!(w.decide("boss", &req, "approve").await.0, 200);
    assert_eq!(w.admin("ops", Method::POST, "/policy/reload", None).await.0, 200);
    let store = &w.state.service.store;
    let report = store.verify("acme").await.expect("verify");
    assert!(report.ok, "{report:?}");
    let records = store
        .audit_export("acme", &AuditFilter::default(), 0, 1000)
        .await
        .expect("export");
    let kinds: std::collections::BTreeSet<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    for k in ["request", "decision", "approval", "policy"] {
        assert!(kinds.contains(k), "{k} in {kinds:?}");
    }
    let ann: Vec<_> = records
        .iter()
        .filter(|r| r.identity_id.as_deref() == Some(id.as_str()))
        .collect();
    let create = ann.iter().find(|r| r.kind == "request").expect("the create");
    let text = create.data.to_string();
    assert!(text.contains("\"userName\""), "attribute names are recorded");
    assert!(!text.contains("\"ann\""), "values are not: {text}");
    let decision = ann.iter().find(|r| r.kind == "decision").expect("the decision");
    let text = decision.data.to_string();
    assert!(text.contains("policy_hash") && text.contains("all-employees"), "{text}");
    let approval = ann.iter().find(|r| r.kind == "approval").expect("the approval");
    assert_eq!(approval.actor, "boss");
}

/// Nobody approves their own access; approvers see only the requests that name them, and not identities.
#[tokio::test(flavor = "multi_thread")]
async fn approvers_cannot_approve_themselves_or_read_what_is_not_theirs() {
    let w = World::new().await;
    let boss = w.create(employee("boss", "Sales", json!({}))).await;
    // The security approver sec-1 is also an ERP admin requesting privileged access.
    let id = w
        .create(employee(
            "sec-1",
            "Sales",
            json!({ENT: {"manager": boss}, WF: {"jobCode": "ERPADM"}}),
        ))
        .await;
    let req = w.pending("boss").await[0]["id"].as_str().expect("id").to_string();
    assert_eq!(w.decide("boss", &req, "approve").await.0, 200);
    let (s, v) = w.decide("sec-1", &req, "approve").await;
    assert_eq!(s, 403, "{v}");
    assert!(v["detail"].as_str().expect("detail").contains("own access"));
    assert_eq!(w.holds(&id, "erp").await.1, Vec::<String>::new());
    // erp-owner is named nowhere in this high-tier request: it cannot read it, nor the identity.
    assert_eq!(
        w.admin(
            "erp-owner",
            Method::GET,
            &format!("/tenants/acme/approvals/{req}"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        w.admin(
            "erp-owner",
            Method::GET,
            &format!("/tenants/acme/identities/{id}"),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        w.admin("sec-2", Method::GET, &format!("/tenants/acme/approvals/{req}"), None)
            .await
            .0,
        200
    );
}

/// Outbox rows of an identity as (target, operation), sorted.
async fn outbox_of(w: &World, id: &str) -> Vec<(String, String)> {
    let (s, v) = w
        .admin("ops", Method::GET, &format!("/tenants/acme/outbox?identity={id}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let mut rows: Vec<(String, String)> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap_or("?").into(),
                r["operation"].as_str().unwrap_or("?").into(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Bulk creates commit in batches, each user with what a single POST writes: its identity state, plan, outbox
/// rows and audit records; in a batch that commits at once and in one that cannot (a taken userName inside it)
/// and runs again one operation at a time.
#[tokio::test(flavor = "multi_thread")]
async fn bulk_creates_in_batches_have_the_effects_of_single_posts() {
    use scimgate_store::AuditFilter;
    let w = World::new().await;
    let single = w.create(employee("single", "Sales", json!({}))).await;
    let want_state = w.identity(&single).await["state"]["current"].clone();
    let want_plan = {
        let mut a = actions(&w.last_plan(&single).await);
        a.sort();
        a
    };
    assert!(want_plan.iter().any(|a| a.contains("create_account")), "{want_plan:?}");
    let want_outbox = outbox_of(&w, &single).await;
    assert!(!want_outbox.is_empty(), "the policy provisions a Sales employee");

    let n = 300;
    let ops: Vec<Value> = (0..n)
        .map(|i| {
            // #100 takes #3's userName: the first batch falls back, the second commits at once.
            let name = if i == 100 {
                "bulk-0003".to_string()
            } else {
                format!("bulk-{i:04}")
            };
            let mut e = employee(&name, "Sales", json!({}));
            e["externalId"] = json!(format!("hr-bulk-{i}"));
            e[ENT]["employeeNumber"] = json!(format!("E-bulk-{i}"));
            json!({"method": "POST", "bulkId": format!("b{i}"), "path": "/Users", "data": e})
        })
        .collect();
    let (s, v) = w
        .scim(
            Method::POST,
            "/Bulk",
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let results = v["Operations"].as_array().expect("results");
    assert_eq!(results.len(), n);
    let mut ids = Vec::new();
    for (i, r) in results.iter().enumerate() {
        if i == 100 {
            assert_eq!(r["status"], "409", "{r}");
            continue;
        }
        assert_eq!(r["status"], "201", "{r}");
        ids.push(
            r["location"]
                .as_str()
                .expect("location")
                .rsplit('/')
                .next()
                .expect("id")
                .to_string(),
        );
    }
    for id in &ids {
        let v = w.identity(id).await;
        assert_eq!(v["archived"], json!(false));
        assert_eq!(v["state"]["version"], json!(1), "{v}");
        assert_eq!(v["state"]["current"], want_state, "{id}");
        let plan = w.last_plan(id).await;
        assert_eq!(plan["cause"], "create", "{plan}");
        let mut got = actions(&plan);
        got.sort();
        assert_eq!(got, want_plan, "{id}");
        assert_eq!(outbox_of(&w, id).await, want_outbox, "{id}");
    }
    // The audit chain holds each create's request and decision records, and verifies.
    let store = &w.state.service.store;
    let report = store.verify("acme").await.expect("verify");
    assert!(report.ok, "{report:?}");
    let records = store
        .audit_export("acme", &AuditFilter::default(), 0, 10_000)
        .await
        .expect("export");
    for id in &ids {
        let kinds: Vec<&str> = records
            .iter()
            .filter(|r| r.identity_id.as_deref() == Some(id.as_str()))
            .map(|r| r.kind.as_str())
            .collect();
        assert_eq!(kinds, ["request", "decision"], "{id}");
    }
    // Records of one create are adjacent, in request order, as consecutive single POSTs would leave them.
    let order: Vec<&str> = records
        .iter()
        .filter(|r| r.kind == "request" && ids.iter().any(|i| r.identity_id.as_deref() == Some(i.as_str())))
        .filter_map(|r| r.identity_id.as_deref())
        .collect();
    assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());
}
