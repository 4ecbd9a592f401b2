//! The REST adapter against a real json-server (npm json-server 0.17.4, installed by `npm ci` into tests/node),
//! configured by the example in examples/targets/rest-json-server.toml; and against a small in-test server for
//! what json-server cannot show: auth (bearer, basic, OAuth2 with token refresh), 429/5xx/timeouts, the host
//! allow-list, redirects, and the exact request paths an injection attempt produces.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use scimgate_adapter_rest::{Config, RestAdapter};
use scimgate_adapter_sdk::compliance::{self, Fixture, user_doc};
use scimgate_adapter_sdk::{AccountId, Adapter, DesiredAccount, ErrorKind};
use scimgate_testkit::json_server::JsonServer;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------------------------
// json-server

/// Reads of json-server over HTTP (not through the adapter).
trait Reads {
    /// The users as json-server stores them.
    async fn users(&self) -> Vec<Value>;
    async fn user_named(&self, user_name: &str) -> Option<Value>;
}

impl Reads for JsonServer {
    async fn users(&self) -> Vec<Value> {
        let v: Value = reqwest::get(format!("{}/users", self.url()))
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        v.as_array().cloned().expect("an array")
    }

    async fn user_named(&self, user_name: &str) -> Option<Value> {
        self.users().await.into_iter().find(|u| u["userName"] == user_name)
    }
}

/// The example config (examples/targets/rest-json-server.toml), pointed at `url`.
fn example_config(url: &str, host: &str) -> Config {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/targets/rest-json-server.toml"),
    )
    .expect("example config");
    let mut doc: toml::Table = toml::from_str(&text).expect("the example is TOML");
    let targets = doc
        .get_mut("targets")
        .and_then(|t| t.as_array_mut())
        .expect("[[targets]]");
    let rest = targets[0]
        .get_mut("rest")
        .and_then(|r| r.as_table_mut())
        .expect("[targets.rest]");
    rest.insert("base_url".into(), toml::Value::String(url.into()));
    rest.insert(
        "allowed_hosts".into(),
        toml::Value::Array(vec![toml::Value::String(host.into())]),
    );
    toml::Value::Table(rest.clone())
        .try_into()
        .expect("the example deserialises into Config")
}

fn adapter_for(js: &JsonServer) -> RestAdapter {
    RestAdapter::new(example_config(&js.url(), &js.host())).expect("adapter")
}

fn desired(id: &str, user_name: &str, ents: &[&str], enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: id.into(),
        user: user_doc(id, user_name, "Ada", "Lovelace"),
        entitlements: ents.iter().map(|s| s.to_string()).collect(),
        managed: ["crm-admins", "crm-users"].iter().map(|s| s.to_string()).collect(),
        enabled,
        password: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_against_json_server() {
    let js = JsonServer::start();
    let a = adapter_for(&js);
    let fx = Fixture {
        prefix: scimgate_testkit::unique("rest"),
        entitlements: ["crm-admins".into(), "crm-users".into()],
        family_name_attr: "name.familyName".into(),
        user_name_attr: "userName".into(),
        password: false,
    };
    let report = compliance::run(&a, &fx).await.unwrap_or_else(|f| panic!("{f}"));
    assert!(report.steps.contains(&"grant and revoke") && report.steps.contains(&"disable and enable"));
    assert!(js.users().await.is_empty(), "the kit leaves nothing behind");
}

#[tokio::test]
async fn unreachable_is_retriable() {
    let port = scimgate_testkit::free_port();
    let a = RestAdapter::new(example_config(
        &format!("http://127.0.0.1:{port}"),
        &format!("127.0.0.1:{port}"),
    ))
    .expect("adapter");
    compliance::unreachable(&a).await.unwrap_or_else(|f| panic!("{f}"));
}

/// The issue's "done when": a joiner lands as a resource, a leaver shows up (disabled, then deleted), read from
/// json-server directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_and_leaver_land_in_json_server() {
    let js = JsonServer::start();
    let a = adapter_for(&js);
    let un = "grace.hopper@example.test";
    let mut d = desired("id-grace", un, &["crm-users"], true);
    d.user.insert("title".into(), json!("Rear Admiral"));
    let id = a.apply(None, &d).await.expect("joiner");
    let u = js.user_named(un).await.expect("the joiner is in json-server");
    assert_eq!(u["id"].to_string(), id.primary);
    assert_eq!(u["name"]["familyName"], "Lovelace");
    assert_eq!(u["email"], "id-grace@example.test");
    assert_eq!(u["title"], "Rear Admiral");
    assert_eq!(u["department"], "R&D");
    assert_eq!(u["externalId"], "ext-id-grace");
    assert_eq!(u["active"], true);
    assert_eq!(u["groups"], json!(["crm-users"]));
    // A group the gateway does not manage, added on the target, survives our updates.
    reqwest::Client::new()
        .patch(format!("{}/users/{}", js.url(), id.primary))
        .json(&json!({"groups": ["crm-users", "local-only"]}))
        .send()
        .await
        .expect("patch");
    // Leaver: disabled first.
    let d = desired("id-grace", un, &[], false);
    a.apply(Some(&id), &d).await.expect("leaver");
    let u = js.user_named(un).await.expect("still there");
    assert_eq!(u["active"], false);
    assert_eq!(u["groups"], json!(["local-only"]), "managed values go, others stay");
    // The file json-server persists holds the same.
    let db = js.db_when(|db| {
        db["users"]
            .as_array()
            .is_some_and(|users| users.iter().any(|x| x["userName"] == un && x["active"] == false))
    });
    assert!(db["users"].is_array());
    // Then deleted.
    a.remove(Some(&id), &d).await.expect("remove");
    assert!(js.user_named(un).await.is_none());
    a.remove(Some(&id), &d).await.expect("remove again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_injection_stays_a_string() {
    let js = JsonServer::start();
    let a = adapter_for(&js);
    let evil = r#"x","admin":true,"y":""#;
    let mut d = desired("id-evil", evil, &["crm-users"], true);
    d.user
        .insert("title".into(), json!("t\"}, \"admin\": true, \"z\": {\""));
    let id = a.apply(None, &d).await.expect("apply");
    let v: Value = reqwest::get(format!("{}/users/{}", js.url(), id.primary))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(v["userName"], evil);
    assert_eq!(v["title"], "t\"}, \"admin\": true, \"z\": {\"");
    assert!(
        v.get("admin").is_none() && v.get("y").is_none() && v.get("z").is_none(),
        "{v}"
    );
    // Found again by key (the value went through the find URL's query string too).
    assert_eq!(a.apply(None, &d).await.expect("again").primary, id.primary);
    assert_eq!(js.users().await.len(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// A small in-test server for auth, throttling, failures, redirects and request paths.

#[derive(Default)]
struct Mock {
    /// (method, path and query, Authorization header) of every request but /token.
    seen: Vec<(String, String, Option<String>)>,
    /// What the Authorization header must be; `latest-token` means the last token /token issued.
    require: Option<String>,
    tokens_issued: u32,
    expires_in: u64,
    retry_after: String,
    redirect_to: String,
}

type Shared = Arc<Mutex<Mock>>;

async fn handle(State(st): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = uri.path().to_string();
    let pq = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    if path == "/token" {
        let mut m = st.lock().unwrap();
        // client_secret_basic for client "cid" with secret "c sécret" (form-urlencoded, then base64)
        let want = "Basic Y2lkOmMrcyVDMyVBOWNyZXQ=";
        if auth.as_deref() != Some(want)
            || !body.contains("grant_type=client_credentials")
            || !body.contains("scope=users")
        {
            return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
        }
        m.tokens_issued += 1;
        let t = format!("tok-{}", m.tokens_issued);
        return axum::Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": m.expires_in}))
            .into_response();
    }
    let required = {
        let mut m = st.lock().unwrap();
        m.seen.push((method.to_string(), pq.clone(), auth.clone()));
        match m.require.as_deref() {
            Some("latest-token") => Some(format!("Bearer tok-{}", m.tokens_issued)),
            r => r.map(str::to_string),
        }
    };
    if required.is_some() && auth != required {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match path.strip_prefix("/api").unwrap_or(&path) {
        "/throttle" => {
            let ra = st.lock().unwrap().retry_after.clone();
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", ra)], "slow down").into_response()
        }
        "/down" => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(4)).await;
            axum::Json(json!([])).into_response()
        }
        "/redirect" => {
            let to = st.lock().unwrap().redirect_to.clone();
            (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response()
        }
        "/big" => axum::Json(json!(["x".repeat(64 * 1024)])).into_response(),
        _ => match method {
            Method::GET => axum::Json(json!([])).into_response(),
            Method::POST => (StatusCode::CREATED, axum::Json(json!({"id": "m1"}))).into_response(),
            _ => axum::Json(json!({})).into_response(),
        },
    }
}

async fn mock() -> (Shared, u16) {
    let st: Shared = Arc::new(Mutex::new(Mock {
        expires_in: 3600,
        ..Default::default()
    }));
    let app = Router::new().fallback(handle).with_state(st.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(l, app).await });
    (st, port)
}

/// A config against the mock: `ops` overrides operation URLs (`find`, `create`, `list`, …), `extra` is more TOML.
fn mock_config(port: u16, find: &str, create: &str, list: &str, extra: &str) -> Config {
    let text = format!(
        r#"
base_url = "http://127.0.0.1:{port}/api"
allowed_hosts = ["127.0.0.1:{port}"]
allow_http = true
timeout_secs = 1
max_response_bytes = 16384
key_pointer = "/login"
{extra}
[operations.find]
url = "{find}"
[operations.get]
url = "/users/{{{{ id }}}}"
[operations.create]
url = "{create}"
body = '{{"login": {{{{ user.userName }}}}}}'
[operations.update]
url = "/users/{{{{ id }}}}"
body = '{{"login": {{{{ user.userName }}}}}}'
[operations.delete]
url = "/users/{{{{ id }}}}"
[operations.list]
url = "{list}"
"#
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn seen(st: &Shared) -> Vec<(String, String, Option<String>)> {
    st.lock().unwrap().seen.clone()
}

#[tokio::test]
async fn url_injection_is_encoded_into_one_component() {
    let (st, port) = mock().await;
    let a = RestAdapter::new(mock_config(
        port,
        "/users/by-login/{{ key }}?exact={{ key }}",
        "/users",
        "/users",
        "",
    ))
    .expect("adapter");
    let d = desired("u1", "../../admin?x=1#", &[], true);
    assert_eq!(a.apply(None, &d).await.expect("apply").primary, "m1");
    let s = seen(&st);
    let enc = "..%2F..%2Fadmin%3Fx%3D1%23";
    assert_eq!(
        s[0],
        ("GET".into(), format!("/api/users/by-login/{enc}?exact={enc}"), None)
    );
    assert_eq!((s[1].0.as_str(), s[1].1.as_str()), ("POST", "/api/users"));
    assert_eq!(s.len(), 2, "{s:?}");

    // A value can neither be a dot segment nor empty out a path segment.
    for bad in ["..", "."] {
        let e = a.apply(None, &desired("u2", bad, &[], true)).await.expect_err(bad);
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
    }
    let mut d = desired("u3", "x", &[], true);
    d.user.insert("userName".into(), json!(""));
    assert!(!a.apply(None, &d).await.expect_err("empty").retriable);
    assert_eq!(seen(&st).len(), 2, "refused before any request");
}

#[tokio::test]
async fn hosts_outside_the_allow_list_are_refused() {
    let (st, port) = mock().await;
    let (evil, evil_port) = mock().await;
    // A URL whose host comes from a value.
    let a = RestAdapter::new(mock_config(
        port,
        "/users?login={{ key }}",
        "http://{{ user.title }}/users",
        "/users",
        "",
    ))
    .expect("adapter");
    let mut d = desired("u1", "ada", &[], true);
    d.user.insert("title".into(), json!("evil.example"));
    let e = a.apply(None, &d).await.expect_err("refused");
    assert_eq!((e.kind, e.retriable), (ErrorKind::Config, false), "{e}");
    assert!(e.message.contains("evil.example is not in allowed_hosts"), "{e}");
    // The @ trick in a value is encoded, so it cannot smuggle a host in either.
    let a = RestAdapter::new(mock_config(
        port,
        "/users?login={{ key }}",
        "http://127.0.0.1:{{ user.title }}/users",
        "/users",
        "",
    ))
    .expect("adapter");
    d.user
        .insert("title".into(), json!(format!("{port}@127.0.0.1:{evil_port}")));
    assert!(a.apply(None, &d).await.is_err());
    // In the config itself: a base URL with user info, or a host not listed.
    let mut c = mock_config(port, "/u", "/u", "/u", "");
    c.base_url = format!("http://127.0.0.1:{port}@127.0.0.1:{evil_port}/");
    assert_eq!(RestAdapter::new(c).err().map(|e| e.kind), Some(ErrorKind::Config));
    let mut c = mock_config(port, "/u", "/u", "/u", "");
    c.base_url = format!("http://127.0.0.1:{evil_port}/");
    assert_eq!(RestAdapter::new(c).err().map(|e| e.kind), Some(ErrorKind::Config));
    let mut c = mock_config(port, "/u", "/u", "/u", "");
    c.allow_http = false;
    assert_eq!(RestAdapter::new(c).err().map(|e| e.kind), Some(ErrorKind::Config));
    // Redirects are not followed, to any host.
    st.lock().unwrap().redirect_to = format!("http://127.0.0.1:{evil_port}/steal");
    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/redirect", "")).expect("adapter");
    let e = a.health().await.expect_err("redirect");
    assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
    assert!(evil.lock().unwrap().seen.is_empty(), "the other host saw nothing");
    assert!(
        seen(&st).iter().all(|(m, _, _)| m == "GET"),
        "nothing was created: {:?}",
        seen(&st)
    );
}

#[tokio::test]
async fn throttling_failures_and_timeouts_map_to_retriable_errors() {
    let (st, port) = mock().await;
    st.lock().unwrap().retry_after = "7".into();
    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/throttle", "")).expect("adapter");
    let e = a.health().await.expect_err("429");
    assert_eq!(
        (e.kind, e.retriable, e.retry_after),
        (ErrorKind::Throttled, true, Some(Duration::from_secs(7)))
    );
    let when = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
    st.lock().unwrap().retry_after = when;
    let e = a.health().await.expect_err("429");
    let ra = e.retry_after.expect("retry_after from a date");
    assert!(
        ra > Duration::from_secs(100) && ra <= Duration::from_secs(120),
        "{ra:?}"
    );

    let a = RestAdapter::new(mock_config(port, "/down", "/u", "/down", "")).expect("adapter");
    let e = a.apply(None, &desired("u", "ada", &[], true)).await.expect_err("503");
    assert_eq!((e.kind, e.retriable), (ErrorKind::Unavailable, true));

    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/slow", "")).expect("adapter");
    let e = a.health().await.expect_err("timeout");
    assert_eq!((e.kind, e.retriable), (ErrorKind::Unavailable, true), "{e}");

    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/big", "")).expect("adapter");
    let e = a.health().await.expect_err("too big");
    assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
}

#[tokio::test]
async fn bearer_and_basic_auth() {
    let (st, port) = mock().await;
    st.lock().unwrap().require = Some("Bearer s3cret-token".into());
    let dir = tempfile::tempdir().expect("tmp");
    let tf = dir.path().join("token");
    std::fs::write(&tf, "s3cret-token\n").expect("token file");
    let good = format!(
        "[auth]\nkind = \"bearer\"\ntoken_file = {:?}\n",
        tf.display().to_string()
    );
    let c = mock_config(port, "/u", "/u", "/users", &good);
    assert!(!format!("{c:?}").contains("s3cret"));
    RestAdapter::new(c)
        .expect("adapter")
        .health()
        .await
        .expect("bearer accepted");
    let bad = mock_config(
        port,
        "/u",
        "/u",
        "/users",
        "[auth]\nkind = \"bearer\"\ntoken = \"wrong\"\n",
    );
    let e = RestAdapter::new(bad)
        .expect("adapter")
        .health()
        .await
        .expect_err("refused");
    assert_eq!((e.kind, e.retriable), (ErrorKind::Unauthorized, false));
    assert!(!e.message.contains("wrong"));

    st.lock().unwrap().require = Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()); // aladdin:opensesame
    let c = mock_config(
        port,
        "/u",
        "/u",
        "/users",
        "[auth]\nkind = \"basic\"\nusername = \"aladdin\"\npassword = \"opensesame\"\n",
    );
    RestAdapter::new(c)
        .expect("adapter")
        .health()
        .await
        .expect("basic accepted");
}

#[tokio::test]
async fn oauth2_tokens_are_cached_and_refreshed() {
    let (st, port) = mock().await;
    st.lock().unwrap().require = Some("latest-token".into());
    let auth = format!(
        "[auth]\nkind = \"oauth2\"\ntoken_url = \"http://127.0.0.1:{port}/token\"\nclient_id = \"cid\"\nclient_secret = \"c sécret\"\nscope = \"users\"\n"
    );
    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/users", &auth)).expect("adapter");
    a.health().await.expect("first call fetches a token");
    a.health().await.expect("second call reuses it");
    assert_eq!(st.lock().unwrap().tokens_issued, 1, "cached");
    // The target rotates its tokens: our cached one gets 401, so the adapter fetches another, once, and retries.
    st.lock().unwrap().tokens_issued += 1;
    a.health().await.expect("refreshed on 401");
    assert_eq!(st.lock().unwrap().tokens_issued, 3);
    // Short-lived tokens are refreshed before they expire, without a 401.
    st.lock().unwrap().expires_in = 1;
    let a = RestAdapter::new(mock_config(port, "/u", "/u", "/users", &auth)).expect("adapter");
    a.health().await.expect("fetch");
    let before = seen(&st).len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.health().await.expect("refresh");
    assert_eq!(st.lock().unwrap().tokens_issued, 5);
    assert_eq!(seen(&st).len(), before + 1, "no request was refused on the way");
    // Wrong client credentials: Unauthorized, not retried.
    let bad = auth.replace("c sécret", "nope");
    let e = RestAdapter::new(mock_config(port, "/u", "/u", "/users", &bad))
        .expect("adapter")
        .health()
        .await
        .expect_err("bad");
    assert_eq!((e.kind, e.retriable), (ErrorKind::Unauthorized, false));
    // A token URL outside the allow-list is refused when the adapter is built.
    let off = auth.replace(&format!("127.0.0.1:{port}/token"), "auth.example.com/token");
    assert_eq!(
        RestAdapter::new(mock_config(port, "/u", "/u", "/users", &off))
            .err()
            .map(|e| e.kind),
        Some(ErrorKind::Config)
    );
}

#[tokio::test]
async fn a_known_id_that_names_someone_else_is_not_trusted() {
    let js = JsonServer::start();
    let a = adapter_for(&js);
    let first = a.apply(None, &desired("a", "first", &[], true)).await.expect("first");
    let d = desired("b", "second", &[], true);
    // A stale id pointing at another user's resource: the adapter must find "second" by key instead.
    let second = a.apply(Some(&first), &d).await.expect("second");
    assert_ne!(first.primary, second.primary);
    assert_eq!(
        js.user_named("first").await.expect("first untouched")["userName"],
        "first"
    );
    assert!(
        a.get(Some(&AccountId::new(first.primary.clone())), &d)
            .await
            .expect("get")
            .is_some_and(|acc| acc.id == second)
    );
}
