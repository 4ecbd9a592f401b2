//! The SCIM outbound adapter against a real scim2-server (PyPI scim2-server 0.8.3, from the conformance venv that
//! scripts/test.sh builds), configured by examples/targets/scim-downstream.toml; every promise is also checked by
//! reading the server directly over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use scimgate_adapter_scim::{Config, ScimAdapter};
use scimgate_adapter_sdk::compliance::{self, Fixture, user_doc};
use scimgate_adapter_sdk::{AccountId, Adapter, DesiredAccount};
use scimgate_testkit::scim2_server::{Scim2Server, TOKEN};
use serde_json::{Value, json};

/// The server (crates/testkit) and direct reads of it over HTTP.
struct ScimServer {
    server: Scim2Server,
    http: reqwest::Client,
}

impl ScimServer {
    fn start() -> ScimServer {
        ScimServer {
            server: Scim2Server::start(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Read the server directly (not through the adapter).
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .query(query)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        if r.status() == 404 {
            return Value::Null;
        }
        r.json().await.expect("json")
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(TOKEN)
            .header("content-type", "application/scim+json")
            .json(&body)
            .send()
            .await
            .expect("send");
        assert!(
            r.status().is_success(),
            "{} {path}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
        r.json().await.unwrap_or(Value::Null)
    }

    async fn users_where(&self, filter: &str) -> Vec<Value> {
        self.get("/Users", &[("filter", filter)]).await["Resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn group(&self, name: &str) -> Option<Value> {
        let f = format!("displayName eq {}", Value::String(name.into()));
        self.get("/Groups", &[("filter", &f)]).await["Resources"]
            .as_array()
            .and_then(|a| a.first().cloned())
    }

    async fn members(&self, name: &str) -> Vec<String> {
        self.group(name)
            .await
            .and_then(|g| g["members"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["value"].as_str().map(str::to_string))
            .collect()
    }

    async fn make_group(&self, name: &str) -> String {
        let g = self
            .send(
                reqwest::Method::POST,
                "/Groups",
                json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": name}),
            )
            .await;
        g["id"].as_str().expect("id").to_string()
    }

    fn config(&self) -> Config {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/targets/scim-downstream.toml"),
        )
        .expect("example config");
        let mut doc: toml::Table = toml::from_str(&text).expect("the example is TOML");
        let targets = doc
            .get_mut("targets")
            .and_then(|t| t.as_array_mut())
            .expect("[[targets]]");
        let scim = targets[0]
            .get_mut("scim")
            .and_then(|r| r.as_table_mut())
            .expect("[targets.scim]");
        scim.insert("base_url".into(), toml::Value::String(self.url()));
        let auth = scim.get_mut("auth").and_then(|a| a.as_table_mut()).expect("auth");
        auth.insert(
            "token_file".into(),
            toml::Value::String(self.server.token_file.display().to_string()),
        );
        toml::Value::Table(scim.clone())
            .try_into()
            .expect("the example deserialises into Config")
    }

    fn adapter(&self) -> ScimAdapter {
        ScimAdapter::new(self.config()).expect("adapter")
    }
}

fn desired(id: &str, user_name: &str, ents: &[&str], managed: &[&str], enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: id.into(),
        user: user_doc(id, user_name, "Grace", "Hopper"),
        entitlements: ents.iter().map(|s| s.to_string()).collect(),
        managed: managed.iter().map(|s| s.to_string()).collect(),
        enabled,
        password: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_against_scim2_server() {
    let s = ScimServer::start();
    let a = s.adapter();
    let prefix = scimgate_testkit::unique("scim");
    let (g1, g2) = (format!("{prefix}-admins"), format!("{prefix}-users"));
    s.make_group(&g1).await; // the other one the adapter creates (create_groups = true)
    let fx = Fixture {
        prefix: prefix.clone(),
        entitlements: [g1.clone(), g2.clone()],
        family_name_attr: "name.familyName".into(),
        user_name_attr: "userName".into(),
        password: true,
    };
    let report = compliance::run(&a, &fx).await.unwrap_or_else(|f| panic!("{f}"));
    assert!(report.steps.contains(&"grant and revoke") && report.steps.contains(&"disable and enable"));
    let left = s.get("/Users", &[]).await;
    assert_eq!(left["totalResults"], 0, "the kit leaves no user behind: {left}");
    assert!(
        s.members(&g1).await.is_empty() && s.members(&g2).await.is_empty(),
        "and no dangling member"
    );
}

#[tokio::test]
async fn unreachable_is_retriable() {
    let port = scimgate_testkit::free_port();
    let cfg: Config =
        toml::from_str(&format!("base_url = \"http://127.0.0.1:{port}\"\nallow_http = true\n")).expect("toml");
    compliance::unreachable(&ScimAdapter::new(cfg).expect("adapter"))
        .await
        .unwrap_or_else(|f| panic!("{f}"));
}

/// The issue's "done when": a joiner lands as a user downstream, a leaver shows up (inactive and out of its
/// groups, then deleted), read from scim2-server directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_and_leaver_land_in_scim2_server() {
    let s = ScimServer::start();
    let a = s.adapter();
    s.make_group("local-only").await;
    let managed = ["engineering", "on-call"];
    let d = desired("gw-user-1", "grace@example.test", &["engineering"], &managed, true);
    let id = a.apply(None, &d).await.expect("joiner");
    assert_eq!(id.secondary.get("externalId").map(String::as_str), Some("gw-user-1"));
    let u = s.get(&format!("/Users/{}", id.primary), &[]).await;
    assert_eq!(u["userName"], "grace@example.test");
    assert_eq!(
        u["externalId"], "gw-user-1",
        "the downstream externalId is scimgate's id"
    );
    assert_eq!(u["active"], true);
    assert_eq!(u["name"]["familyName"], "Hopper");
    assert_eq!(u["emails"][0]["value"], "gw-user-1@example.test");
    assert_eq!(
        u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
        "R&D"
    );
    assert_eq!(
        s.members("engineering").await,
        vec![id.primary.clone()],
        "the group was created with the member"
    );

    // A membership scimgate does not manage, made downstream, survives.
    let local = s.group("local-only").await.expect("group")["id"]
        .as_str()
        .expect("id")
        .to_string();
    s.send(
        reqwest::Method::PATCH,
        &format!("/Groups/{local}"),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "add", "path": "members", "value": [{"value": id.primary}]}]}),
    )
    .await;

    // Mover: new title, a second group; found by externalId even without the known id, and by it after a rename.
    let mut d = desired(
        "gw-user-1",
        "grace.hopper@example.test",
        &["engineering", "on-call"],
        &managed,
        true,
    );
    d.user.insert("title".into(), json!("Rear Admiral"));
    let again = a.apply(None, &d).await.expect("mover");
    assert_eq!(again.primary, id.primary);
    let u = s.get(&format!("/Users/{}", id.primary), &[]).await;
    assert_eq!(
        (u["userName"].as_str(), u["title"].as_str()),
        (Some("grace.hopper@example.test"), Some("Rear Admiral"))
    );
    assert_eq!(s.get("/Users", &[]).await["totalResults"], 1);

    // Leaver: inactive, out of the managed groups.
    let d = desired("gw-user-1", "grace.hopper@example.test", &[], &managed, false);
    a.apply(Some(&id), &d).await.expect("leaver");
    let u = s.get(&format!("/Users/{}", id.primary), &[]).await;
    assert_eq!(u["active"], false);
    assert!(s.members("engineering").await.is_empty() && s.members("on-call").await.is_empty());
    assert_eq!(s.members("local-only").await, vec![id.primary.clone()]);

    // Deleted: gone, and no managed group keeps a dangling member.
    a.remove(Some(&id), &d).await.expect("remove");
    assert!(s.get(&format!("/Users/{}", id.primary), &[]).await.is_null());
    a.remove(Some(&id), &d).await.expect("remove again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_injection_does_not_match_someone_else() {
    let s = ScimServer::start();
    let a = s.adapter();
    let victim = a
        .apply(None, &desired("victim", "victim", &[], &[], true))
        .await
        .expect("victim");
    // Values that would widen an unescaped filter to match every user.
    let evil = r#"x" or userName pr or userName eq "y"#;
    let mut d = desired(r#"e" or externalId pr or externalId eq "\"#, evil, &[], &[], true);
    d.user.insert("title".into(), json!("Intruder"));
    let id = a.apply(None, &d).await.expect("apply");
    assert_ne!(id.primary, victim.primary);
    let v = s.get(&format!("/Users/{}", victim.primary), &[]).await;
    assert_eq!(v["userName"], "victim");
    assert!(
        v.get("title").is_none_or(|t| t != "Intruder"),
        "the victim was not updated: {v}"
    );
    let u = s.get(&format!("/Users/{}", id.primary), &[]).await;
    assert_eq!(u["userName"], evil);
    assert_eq!(
        s.users_where(&format!("userName eq {}", Value::String(evil.into())))
            .await
            .len(),
        1
    );
    // Applying again finds the same user, and removing it leaves the victim alone.
    assert_eq!(a.apply(None, &d).await.expect("again").primary, id.primary);
    a.remove(None, &d).await.expect("remove");
    assert_eq!(
        s.get(&format!("/Users/{}", victim.primary), &[]).await["userName"],
        "victim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_fallback_and_missing_groups() {
    let s = ScimServer::start();
    let mut cfg = s.config();
    cfg.update_method = scimgate_adapter_scim::config::UpdateMethod::Put;
    cfg.create_groups = false;
    let a = ScimAdapter::new(cfg).expect("adapter");
    let d = desired("p1", "put.user", &[], &[], true);
    let id = a.apply(None, &d).await.expect("create");
    let mut d2 = desired("p1", "put.user", &[], &[], true);
    d2.user
        .insert("name".into(), json!({"givenName": "Grace", "familyName": "Replaced"}));
    a.apply(Some(&id), &d2).await.expect("put");
    assert_eq!(
        s.get(&format!("/Users/{}", id.primary), &[]).await["name"]["familyName"],
        "Replaced"
    );
    // A group that does not exist is refused, not created, without retry.
    let e = a
        .apply(Some(&id), &desired("p1", "put.user", &["nope"], &["nope"], true))
        .await
        .expect_err("no group");
    assert!(!e.retriable, "{e}");
    assert!(s.group("nope").await.is_none());
    // A known id whose user was deleted behind our back: found by nothing, so created again.
    s.http
        .delete(format!("{}/Users/{}", s.url(), id.primary))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("delete");
    let fresh = a
        .apply(Some(&AccountId::new(id.primary.clone())), &d)
        .await
        .expect("recreate");
    assert_ne!(fresh.primary, id.primary);
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let s = ScimServer::start();
    let mut cfg = s.config();
    cfg.auth = toml::from_str("kind = \"bearer\"\ntoken = \"wrong\"").expect("auth");
    let e = ScimAdapter::new(cfg).expect("adapter").health().await.expect_err("401");
    assert_eq!(
        (e.kind, e.retriable),
        (scimgate_adapter_sdk::ErrorKind::Unauthorized, false)
    );
}
