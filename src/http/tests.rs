//! Router tests: the whole `app()` driven with `oneshot`, no socket, on an in-memory SQLite store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use scimgate_store::SqlStore;
use scimgate_store::sql::StoreOptions;

use super::{AppState, app, tenant_routes};
use crate::config::{Tenant, sha256};
use crate::cursor::CursorKey;
use crate::service::{Limits, ScimService};

const TOKEN: &str = "router-test-token-0123456789";

async fn state() -> Arc<AppState> {
    let store = SqlStore::connect(&StoreOptions {
        url: "sqlite::memory:".into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .expect("store")
    // The read cache is on, as in production: every test below also checks that it never answers stale.
    .with_cache(1 << 20);
    state_on(store, None)
}

/// A gateway on `store`; `listener`: the task that follows other nodes' writes (PostgreSQL).
fn state_on(store: SqlStore, listener: Option<super::AbortOnDrop>) -> Arc<AppState> {
    let reg = crate::schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schemas");
    let tenant = Tenant {
        id: "t".into(),
        base_path: "/scim/v2".into(),
        public_url: Some("https://idp.example.com/scim/v2".into()),
        token_hashes: vec![sha256(TOKEN.as_bytes())],
        jwt: None,
        rate_limit: None,
    };
    let tenant = Arc::new(tenant);
    let guards = [(
        tenant.id.clone(),
        Arc::new(super::auth::TenantGuard::new(tenant.clone())),
    )]
    .into_iter()
    .collect();
    let store: Arc<dyn scimgate_store::Backend> = Arc::new(store);
    let wake = Arc::new(tokio::sync::Notify::new());
    let outbox = crate::outbox::Outbox::new(
        store.clone(),
        vec![],
        &crate::config::OutboxConfig::default(),
        wake.clone(),
        None,
        crate::outbox::alert::Alerter::none(),
    );
    Arc::new(AppState {
        admins: vec![],
        guards,
        outbox,
        service: ScimService {
            // SQLite's lanes on their own thread, PostgreSQL's (the store a listener follows) on the test's runtime.
            commits: crate::group_commit::GroupCommit::start(store.clone(), 1, listener.is_none()),
            reg: Arc::new(reg),
            store,
            engine: None,
            limits: Limits::from(&crate::config::ScimConfig::default()),
            cursor_key: CursorKey::new([1; 32]),
            sealer: None,
            wake,
        },
        tenants: vec![tenant],
        max_body_bytes: 64 * 1024,
        cache_listener: listener,
        span_reads: false,
        request_timeout: Duration::from_secs(10),
        scheme: "http",
    })
}

async fn send(
    state: &Arc<AppState>,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/scim+json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app(state.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v, headers)
}

#[tokio::test]
async fn every_route_and_method_requires_the_tenant_token() {
    let st = state().await;
    let routes = tenant_routes();
    assert!(routes.len() >= 15, "the route table lists the whole API");
    for (path, _) in routes {
        let concrete = path.replace("{id}", "some-id").replace("{*rest}", "x");
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            for token in [None, Some("wrong-token-0123456789")] {
                let (s, v, h) = send(&st, method.clone(), &format!("/scim/v2{concrete}"), token, None).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {concrete} with {token:?}");
                assert_eq!(v["status"], "401");
                assert_eq!(v["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
                assert!(h.contains_key(header::WWW_AUTHENTICATE));
            }
        }
    }
}

#[tokio::test]
async fn every_admin_route_requires_an_admin_token() {
    let st = state().await;
    let routes = super::admin::admin_routes();
    assert!(routes.len() >= 11);
    for (path, _) in routes {
        let concrete = path.replace("{tenant}", "t").replace("{id}", "x");
        for method in [Method::GET, Method::POST] {
            // No token, a wrong token, and the tenant's SCIM token (which is not an admin token).
            for token in [None, Some("wrong-token-0123456789"), Some(TOKEN)] {
                let (s, v, _) = send(&st, method.clone(), &concrete, token, None).await;
                assert!(
                    s == StatusCode::UNAUTHORIZED || (s == StatusCode::METHOD_NOT_ALLOWED && v["status"] == "405"),
                    "{method} {concrete} with {token:?}: {s}"
                );
                if s == StatusCode::UNAUTHORIZED {
                    assert_eq!(v["status"], "401");
                }
            }
        }
    }
}

#[tokio::test]
async fn discovery_methods_and_unknown_paths() {
    let st = state().await;
    let (s, v, h) = send(&st, Method::GET, "/scim/v2/ServiceProviderConfig", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/scim+json");
    assert_eq!(v["bulk"]["maxOperations"], json!(1000));
    assert_eq!(v["pagination"]["cursor"], json!(true));
    assert_eq!(
        v["meta"]["location"],
        "https://idp.example.com/scim/v2/ServiceProviderConfig"
    );
    for path in ["/ServiceProviderConfig", "/ResourceTypes", "/Schemas", "/Users/.search"] {
        for m in [Method::PUT, Method::DELETE, Method::PATCH] {
            let (s, v, _) = send(&st, m.clone(), &format!("/scim/v2{path}"), Some(TOKEN), None).await;
            assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            assert_eq!(v["status"], "405");
        }
    }
    let (s, v, _) = send(&st, Method::GET, "/scim/v2/Me", Some(TOKEN), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("501")));
    let (s, v, _) = send(&st, Method::GET, "/scim/v2/Nope", Some(TOKEN), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::NOT_FOUND, Some("404")));
    let (s, _, _) = send(&st, Method::GET, "/elsewhere", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(&st, Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = send(&st, Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    // Schemas are generated from the loaded files.
    let (_, v, _) = send(&st, Method::GET, "/scim/v2/Schemas", Some(TOKEN), None).await;
    let ids: Vec<&str> = v["Resources"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(
        ids.contains(&"urn:scimgate:params:scim:schemas:extension:workforce:2.0:User"),
        "{ids:?}"
    );
    let (_, v, _) = send(&st, Method::GET, "/scim/v2/ResourceTypes/User", Some(TOKEN), None).await;
    assert_eq!(v["endpoint"], "/Users");
}

#[tokio::test]
async fn okta_create_and_entra_disable_through_the_router() {
    let st = state().await;
    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "okta@example.com",
        "password": "SuperSecret1!", "groups": [], "locale": "en-US", "active": true,
        "name": {"givenName": "O", "familyName": "K"}});
    let (s, v, h) = send(&st, Method::POST, "/scim/v2/Users", Some(TOKEN), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(v.get("password").is_none());
    assert_eq!(h[header::LOCATION].to_str().ok(), v["meta"]["location"].as_str());
    let id = v["id"].as_str().expect("id");
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let (s, v, _) = send(
        &st,
        Method::PATCH,
        &format!("/scim/v2/Users/{id}"),
        Some(TOKEN),
        Some(patch),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["active"], json!(false));
    // The same PATCH again changes nothing and keeps the version.
    let version = v["meta"]["version"].clone();
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "value": {"active": false}}]});
    let (_, v, _) = send(
        &st,
        Method::PATCH,
        &format!("/scim/v2/Users/{id}"),
        Some(TOKEN),
        Some(patch),
    )
    .await;
    assert_eq!(v["meta"]["version"], version);
}

#[tokio::test]
async fn oversized_and_malformed_bodies() {
    let st = state().await;
    let big = json!({"userName": "x".repeat(70 * 1024)});
    let (s, v, _) = send(&st, Method::POST, "/scim/v2/Users", Some(TOKEN), Some(big)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("413")));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/scim/v2/Users")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .expect("request");
    let resp = app(st.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/scim/v2/Users")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/xml")
        .body(Body::from("<user/>"))
        .expect("request");
    let resp = app(st).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// The OpenAPI document and the router agree: every route of both tables is documented, with exactly the
/// methods it serves, and the document names no route the router lacks.
#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let doc: Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let documented = |router: &str| -> std::collections::BTreeMap<String, Vec<String>> {
        doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .filter(|item| item["x-scimgate-router"] == router)
            .map(|item| {
                let mut methods: Vec<String> = ["get", "post", "put", "patch", "delete"]
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect();
                methods.sort();
                (item["x-scimgate-route"].as_str().expect("route").to_string(), methods)
            })
            .collect()
    };
    let st = state().await;
    let check = |router: &str, routes: Vec<&'static str>, prefix: &str, token: Option<&str>| {
        let docs = documented(router);
        let routes: std::collections::BTreeSet<String> = routes.into_iter().map(str::to_string).collect();
        let named: std::collections::BTreeSet<String> = docs.keys().cloned().collect();
        assert_eq!(named, routes, "{router}: documented routes differ from the router's");
        (docs, prefix.to_string(), token.map(str::to_string))
    };
    let tenant = check(
        "tenant",
        tenant_routes().into_iter().map(|(p, _)| p).collect(),
        "/scim/v2",
        Some(TOKEN),
    );
    let admin = check(
        "admin",
        super::admin::admin_routes().into_iter().map(|(p, _)| p).collect(),
        "",
        None,
    );
    // Methods: a documented method is served (not 405) and an undocumented one answers 405.
    for (docs, prefix, token) in [tenant, admin] {
        for (route, methods) in docs {
            let path = format!(
                "{prefix}{}",
                route
                    .replace("{id}", "x")
                    .replace("{*rest}", "x")
                    .replace("{tenant}", "t")
            );
            for m in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                let (s, _, _) = send(&st, m.clone(), &path, token.as_deref(), None).await;
                let documented = methods.contains(&m.to_string());
                if token.is_some() {
                    assert_eq!(s == StatusCode::METHOD_NOT_ALLOWED, !documented, "{m} {path}: {s}");
                } else if !documented {
                    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                }
            }
        }
    }
    let (s, _, h) = send(&st, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
}

/// Every write that changes what a user's answer shows (its own document, its deletion, a membership, the
/// name or deletion of one of its groups) is seen by the next GET and `userName eq` lookup, although both are
/// answered from the read cache once warm.
#[tokio::test]
async fn the_read_cache_never_answers_stale() {
    let st = state().await;
    let get = |id: String| {
        let st = st.clone();
        async move { send(&st, Method::GET, &format!("/scim/v2/Users/{id}"), Some(TOKEN), None).await }
    };
    let find = |name: &'static str| {
        let st = st.clone();
        async move {
            let uri = format!("/scim/v2/Users?filter=userName%20eq%20%22{name}%22");
            let (s, v, _) = send(&st, Method::GET, &uri, Some(TOKEN), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    let group_names = |v: &Value| -> Vec<String> {
        v["groups"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g["display"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let patch_op =
        |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});

    let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "alice",
        "displayName": "Alice"});
    let (s, v, _) = send(&st, Method::POST, "/scim/v2/Users", Some(TOKEN), Some(user)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let cached = st.service.store.read_cache().and_then(|c| c.get("t", &id));
    assert_eq!(
        cached.map(|r| serde_json::from_slice::<Value>(&r.body).expect("json")),
        Some(v.clone()),
        "a create is written through to the cache, exactly as answered"
    );
    let (_, first, h1) = get(id.clone()).await;
    let (_, second, h2) = get(id.clone()).await;
    assert_eq!(first, second, "a cache hit answers exactly what the store answered");
    assert_eq!(h1[header::ETAG], h2[header::ETAG]);
    assert_eq!(h2[header::CONTENT_TYPE], "application/scim+json");
    assert_eq!(
        first["meta"]["location"],
        format!("https://idp.example.com/scim/v2/Users/{id}")
    );
    let listed = find("ALICE").await;
    assert_eq!(listed["totalResults"], 1);
    assert_eq!(
        listed["Resources"][0], first,
        "the lookup is case-insensitive and answers the same document"
    );
    assert_eq!(find("ALICE").await, listed, "and again from the cache");
    // If-None-Match against the cached version.
    let req = Request::builder()
        .uri(format!("/scim/v2/Users/{id}"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::IF_NONE_MATCH, h2[header::ETAG].clone())
        .body(Body::empty())
        .expect("request");
    let resp = app(st.clone()).oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    // A membership added by a group PATCH.
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Eng"});
    let (s, g, _) = send(&st, Method::POST, "/scim/v2/Groups", Some(TOKEN), Some(group)).await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().expect("id").to_string();
    let gpath = format!("/scim/v2/Groups/{gid}");
    let add = patch_op(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]));
    assert_eq!(
        send(&st, Method::PATCH, &gpath, Some(TOKEN), Some(add)).await.0,
        StatusCode::OK
    );
    assert_eq!(group_names(&get(id.clone()).await.1), vec!["Eng"]);
    assert_eq!(group_names(&find("alice").await["Resources"][0]), vec!["Eng"]);
    // The group renamed.
    let rename = patch_op(json!([{"op": "replace", "path": "displayName", "value": "Engineering"}]));
    assert_eq!(
        send(&st, Method::PATCH, &gpath, Some(TOKEN), Some(rename)).await.0,
        StatusCode::OK
    );
    assert_eq!(group_names(&get(id.clone()).await.1), vec!["Engineering"]);
    // The membership removed, then the group's member list replaced with her again, then the group deleted.
    let remove = patch_op(json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]));
    assert_eq!(
        send(&st, Method::PATCH, &gpath, Some(TOKEN), Some(remove)).await.0,
        StatusCode::OK
    );
    assert!(group_names(&get(id.clone()).await.1).is_empty());
    let put = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Engineering",
        "members": [{"value": id}]});
    assert_eq!(
        send(&st, Method::PUT, &gpath, Some(TOKEN), Some(put)).await.0,
        StatusCode::OK
    );
    assert_eq!(group_names(&get(id.clone()).await.1), vec!["Engineering"]);
    assert_eq!(
        send(&st, Method::DELETE, &gpath, Some(TOKEN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(group_names(&get(id.clone()).await.1).is_empty());

    // The user's own document: renamed by PUT, then deleted.
    let put = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "alice2",
        "displayName": "Alice Two"});
    let upath = format!("/scim/v2/Users/{id}");
    let (s, v, _) = send(&st, Method::PUT, &upath, Some(TOKEN), Some(put)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, now, h) = get(id.clone()).await;
    assert_eq!(now["userName"], "alice2");
    assert_eq!(now["displayName"], "Alice Two");
    assert_ne!(h[header::ETAG], h2[header::ETAG]);
    assert_eq!(
        find("alice").await["totalResults"],
        0,
        "the old name no longer finds her"
    );
    assert_eq!(find("alice2").await["Resources"][0]["id"], id.as_str());
    assert_eq!(
        send(&st, Method::DELETE, &upath, Some(TOKEN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(get(id.clone()).await.0, StatusCode::NOT_FOUND);
    assert_eq!(find("alice2").await["totalResults"], 0);
}

/// Two gateway nodes on one PostgreSQL database, each with its read cache: a write through one node is seen by
/// the other's next read, although that node answered the same read from its cache before. And when a node's
/// invalidation feed is cut, its cache stops answering until the feed is back.
#[tokio::test]
async fn two_nodes_on_postgres_never_answer_stale_from_their_caches() {
    let db = scimgate_testkit::db::TempDb::postgres("scimgate_cache");
    let node = |url: String| async move {
        let store = SqlStore::connect(&StoreOptions {
            url: url.clone(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .expect("store")
        .with_cache(1 << 20);
        let follower = store.clone();
        let listener = super::AbortOnDrop(tokio::spawn(
            async move { follower.listen_for_invalidations(url).await },
        ));
        let st = state_on(store, Some(listener));
        let live = async || st.service.store.read_cache().is_some_and(|c| c.is_live());
        for _ in 0..200 {
            if live().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(live().await, "the cache goes live once the node listens");
        st
    };
    let a = node(db.url.clone()).await;
    let b = node(db.url.clone()).await;
    let user =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "bob", "displayName": "Bob"});
    let (s, v, _) = send(&a, Method::POST, "/scim/v2/Users", Some(TOKEN), Some(user)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let path = format!("/scim/v2/Users/{id}");
    let (_, v, _) = send(&b, Method::GET, &path, Some(TOKEN), None).await;
    assert_eq!(v["displayName"], "Bob");
    assert!(
        b.service.store.read_cache().and_then(|c| c.get("t", &id)).is_some(),
        "node b now answers bob from its cache"
    );
    // Node b sees each of node a's writes (within the notification's delivery time).
    let seen_on_b = async |want: &dyn Fn(&Value) -> bool| {
        for _ in 0..200 {
            let (_, v, _) = send(&b, Method::GET, &path, Some(TOKEN), None).await;
            if want(&v) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "displayName", "value": "Robert"}]});
    assert_eq!(
        send(&a, Method::PATCH, &path, Some(TOKEN), Some(patch)).await.0,
        StatusCode::OK
    );
    assert!(seen_on_b(&|v| v["displayName"] == "Robert").await, "b saw the rename");
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Ops",
        "members": [{"value": id}]});
    assert_eq!(
        send(&a, Method::POST, "/scim/v2/Groups", Some(TOKEN), Some(group))
            .await
            .0,
        StatusCode::CREATED
    );
    assert!(
        seen_on_b(&|v| v["groups"][0]["display"] == "Ops").await,
        "b saw the membership"
    );

    // Cut node b's feed: its cache stops answering, then resumes, empty, once the listener reconnects.
    let cache = || b.service.store.read_cache().expect("cache");
    let before = cache().suspensions();
    db.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE 'LISTEN%'",
    );
    let mut resumed = false;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if cache().suspensions() > before && cache().is_live() {
            resumed = true;
            break;
        }
    }
    assert!(cache().suspensions() > before, "a lost feed suspends the cache");
    assert!(resumed, "the listener reconnects and the cache resumes");
    assert!(
        cache().get("t", &id).is_none(),
        "it resumes empty: what it missed meanwhile cannot be stale"
    );
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "displayName", "value": "Rob"}]});
    assert_eq!(
        send(&a, Method::PATCH, &path, Some(TOKEN), Some(patch)).await.0,
        StatusCode::OK
    );
    assert!(seen_on_b(&|v| v["displayName"] == "Rob").await, "b follows a again");
}

/// Many IdP pushes adding members to one group at the same time all succeed (no If-Match: adding members does
/// not depend on the version read), and every member is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_member_adds_to_one_group_all_succeed() {
    let st = state().await;
    let mut ids = Vec::new();
    for i in 0..24 {
        let user = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("m{i}")});
        let (s, v, _) = send(&st, Method::POST, "/scim/v2/Users", Some(TOKEN), Some(user)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Busy"});
    let (_, g, _) = send(&st, Method::POST, "/scim/v2/Groups", Some(TOKEN), Some(group)).await;
    let gpath = format!("/scim/v2/Groups/{}", g["id"].as_str().expect("id"));
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (st, gpath) = (st.clone(), gpath.clone());
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
            tokio::spawn(async move { send(&st, Method::PATCH, &gpath, Some(TOKEN), Some(body)).await })
        })
        .collect();
    for t in tasks {
        let (s, v, _) = t.await.expect("task");
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, v, h) = send(&st, Method::GET, &gpath, Some(TOKEN), None).await;
    let mut got: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["value"].as_str().map(str::to_string))
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert_eq!(h[header::ETAG], "W/\"25\"", "each add bumped the version once");
}

/// Log lines written by the code under test, for the one test that reads them.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn request_ids_go_out_and_a_500_is_logged_with_its_request() {
    use axum::routing::get;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let context = super::RequestContext {
        ids: super::RequestIds::default(),
        span_reads: false,
        tenants: Vec::new().into(),
        outbox: None,
    };
    let router = axum::Router::new()
        .route(
            "/boom",
            get(|| async {
                Err::<(), _>(super::error::ApiError::internal(std::io::Error::other(
                    "the disk is on fire",
                )))
            }),
        )
        .route("/ok", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(context, super::request_context));
    let call = |path: &'static str, rid: Option<String>| {
        let router = router.clone();
        async move {
            let mut req = Request::builder().uri(path);
            if let Some(r) = rid {
                req = req.header("x-request-id", r);
            }
            let resp = router
                .oneshot(req.body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let rid = resp.headers()["x-request-id"].to_str().expect("ascii").to_string();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
            (rid, String::from_utf8_lossy(&body).to_string())
        }
    };
    // A new id for each request without one; the client's own kept; an overlong one replaced.
    let (a, _) = call("/ok", None).await;
    let (b, _) = call("/ok", None).await;
    assert!(!a.is_empty() && a != b, "{a} {b}");
    assert_eq!(call("/ok", Some("okta-7f3a".into())).await.0, "okta-7f3a");
    let long = "x".repeat(200);
    let (replaced, _) = call("/ok", Some(long.clone())).await;
    assert!(!replaced.is_empty() && replaced != long);
    // A 500 says nothing inside; its log line has the cause chain and the request it belongs to.
    let (rid, body) = call("/boom", Some("entra-42".into())).await;
    assert_eq!(rid, "entra-42");
    assert!(!body.contains("fire"), "{body}");
    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "request failed")
        .unwrap_or_else(|| panic!("no 500 line in {text}"));
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["fields"]["request_id"], "entra-42");
    assert_eq!(line["fields"]["path"], "/boom");
    assert_eq!(line["fields"]["method"], "GET");
    assert!(
        line["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("the disk is on fire")),
        "{line}"
    );
}

/// The email index follows every PUT and PATCH: one that keeps the user's emails leaves the index rows as they
/// are, one that changes them (value, case, order, removal) rewrites them; `emails.value eq` always finds exactly
/// the emails the user has.
#[tokio::test]
async fn the_email_index_follows_puts_and_patches() {
    let st = state().await;
    let count = |email: &'static str| {
        let st = st.clone();
        async move {
            let uri = format!("/scim/v2/Users?filter=emails.value%20eq%20%22{email}%22");
            let (s, v, _) = send(&st, Method::GET, &uri, Some(TOKEN), None).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["totalResults"].as_u64().expect("totalResults")
        }
    };
    let user = |display: &str, emails: Value| {
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "erin",
            "displayName": display, "emails": emails})
    };
    let (s, v, _) = send(
        &st,
        Method::POST,
        "/scim/v2/Users",
        Some(TOKEN),
        Some(user("Erin", json!([{"value": "erin@a.example"}]))),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let path = format!("/scim/v2/Users/{}", v["id"].as_str().expect("id"));
    let put = |body: Value| {
        let (st, path) = (st.clone(), path.clone());
        async move {
            let (s, v, _) = send(&st, Method::PUT, &path, Some(TOKEN), Some(body)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    assert_eq!(count("erin@a.example").await, 1);

    // The document changes, the emails do not.
    put(user("Erin E.", json!([{"value": "erin@a.example"}]))).await;
    assert_eq!(count("erin@a.example").await, 1);
    // Another email added, then the first one's case changed and the order swapped.
    put(user(
        "Erin E.",
        json!([{"value": "erin@a.example"}, {"value": "e@b.example"}]),
    ))
    .await;
    assert_eq!((count("erin@a.example").await, count("e@b.example").await), (1, 1));
    put(user(
        "Erin",
        json!([{"value": "E@B.example"}, {"value": "Erin@A.example"}]),
    ))
    .await;
    assert_eq!((count("erin@a.example").await, count("e@b.example").await), (1, 1));
    // A PATCH that changes only the displayName, then one that replaces the emails.
    let patch = |ops: Value| {
        let (st, path) = (st.clone(), path.clone());
        async move {
            let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
            let (s, v, _) = send(&st, Method::PATCH, &path, Some(TOKEN), Some(body)).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    patch(json!([{"op": "replace", "path": "displayName", "value": "E."}])).await;
    assert_eq!((count("erin@a.example").await, count("e@b.example").await), (1, 1));
    patch(json!([{"op": "replace", "path": "emails", "value": [{"value": "erin@c.example"}]}])).await;
    assert_eq!(
        (
            count("erin@a.example").await,
            count("e@b.example").await,
            count("erin@c.example").await
        ),
        (0, 0, 1)
    );
    // Every email removed.
    put(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "erin"})).await;
    assert_eq!(count("erin@c.example").await, 0);
}
