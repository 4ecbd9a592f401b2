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
    let reg = crate::schemas::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schemas");
    let store = SqlStore::connect(&StoreOptions {
        url: "sqlite::memory:".into(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
    })
    .await
    .expect("store");
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
