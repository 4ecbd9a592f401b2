//! SCIM resource handlers: thin adapters from HTTP to [`ScimService`](crate::service::ScimService).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use scimgate_scim::schema::ResourceKind;

use super::error::ApiError;
use super::extract::{QueryMap, ReqInfo, ScimPath};
use super::{TenantState, json_response, read_json, respond};
use crate::service::{Ctx, ListParams, Preconditions};

type Params = QueryMap;

fn ctx(ts: &TenantState, headers: &ReqInfo) -> Ctx {
    let request_id = headers
        .get("x-request-id")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    Ctx {
        tenant: ts.tenant.clone(),
        base_url: base_url(ts, headers),
        actor: headers.actor.clone(),
        request_id,
    }
}

/// Query parameter names are matched case-insensitively.
fn param<'a>(q: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn preconditions(headers: &HeaderMap) -> Preconditions {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
    Preconditions {
        if_match: get(header::IF_MATCH),
        if_none_match: get(header::IF_NONE_MATCH),
    }
}

fn list_params(q: &HashMap<String, String>) -> ListParams {
    let p = |n: &str| param(q, n).map(str::to_string);
    ListParams {
        filter: p("filter"),
        sort_by: p("sortBy"),
        sort_order: p("sortOrder"),
        start_index: p("startIndex"),
        count: p("count"),
        cursor: p("cursor"),
        attributes: p("attributes"),
        excluded: p("excludedAttributes"),
    }
}

/// A SearchRequest body (RFC 7644 §3.4.3) as list parameters; values may be JSON strings or numbers.
fn search_params(body: Value) -> Result<ListParams, ApiError> {
    let Value::Object(o) = body else {
        return Err(scimgate_scim::ProtocolError::InvalidSyntax("a SearchRequest must be a JSON object".into()).into());
    };
    let get = |n: &str| -> Option<String> {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Array(a) => Some(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
                _ => None,
            })
    };
    Ok(ListParams {
        filter: get("filter"),
        sort_by: get("sortBy"),
        sort_order: get("sortOrder"),
        start_index: get("startIndex"),
        count: get("count"),
        cursor: get("cursor"),
        attributes: get("attributes"),
        excluded: get("excludedAttributes"),
    })
}

async fn list(
    ts: TenantState,
    headers: ReqInfo,
    kind: Option<ResourceKind>,
    p: ListParams,
) -> Result<Response, ApiError> {
    let cx = ctx(&ts, &headers);
    if let Some(raw) = ts.app.service.list_by_user_name(&cx, kind, &p).await? {
        return Ok(super::raw_json_response(StatusCode::OK, raw));
    }
    let body = ts.app.service.list(&cx, kind, &p).await?;
    Ok(json_response(StatusCode::OK, &body))
}

async fn search(
    ts: TenantState,
    headers: ReqInfo,
    kind: Option<ResourceKind>,
    body: Body,
) -> Result<Response, ApiError> {
    let json = read_json(&headers, body, ts.app.max_body_bytes).await?;
    let p = search_params(json)?;
    list(ts, headers, kind, p).await
}

async fn create(
    ts: TenantState,
    headers: ReqInfo,
    q: HashMap<String, String>,
    kind: ResourceKind,
    body: Body,
) -> Result<Response, ApiError> {
    let json = read_json(&headers, body, ts.app.max_body_bytes).await?;
    let svc = &ts.app.service;
    let proj = svc.projection(kind, param(&q, "attributes"), param(&q, "excludedAttributes"))?;
    Ok(respond(svc.create(&ctx(&ts, &headers), kind, json, &proj).await?))
}

async fn get_one(
    ts: TenantState,
    headers: ReqInfo,
    q: HashMap<String, String>,
    kind: ResourceKind,
    id: String,
) -> Result<Response, ApiError> {
    let svc = &ts.app.service;
    let proj = svc.projection(kind, param(&q, "attributes"), param(&q, "excludedAttributes"))?;
    Ok(respond(
        svc.get(&ctx(&ts, &headers), kind, &id, &proj, &preconditions(&headers))
            .await?,
    ))
}

async fn replace(
    ts: TenantState,
    headers: ReqInfo,
    q: HashMap<String, String>,
    kind: ResourceKind,
    id: String,
    body: Body,
) -> Result<Response, ApiError> {
    let json = read_json(&headers, body, ts.app.max_body_bytes).await?;
    let svc = &ts.app.service;
    let proj = svc.projection(kind, param(&q, "attributes"), param(&q, "excludedAttributes"))?;
    Ok(respond(
        svc.replace(&ctx(&ts, &headers), kind, &id, json, &proj, &preconditions(&headers))
            .await?,
    ))
}

async fn patch(
    ts: TenantState,
    headers: ReqInfo,
    q: HashMap<String, String>,
    kind: ResourceKind,
    id: String,
    body: Body,
) -> Result<Response, ApiError> {
    let json = read_json(&headers, body, ts.app.max_body_bytes).await?;
    let svc = &ts.app.service;
    let proj = svc.projection(kind, param(&q, "attributes"), param(&q, "excludedAttributes"))?;
    Ok(respond(
        svc.patch(&ctx(&ts, &headers), kind, &id, json, &proj, &preconditions(&headers))
            .await?,
    ))
}

async fn delete(ts: TenantState, headers: ReqInfo, kind: ResourceKind, id: String) -> Result<Response, ApiError> {
    Ok(respond(
        ts.app
            .service
            .delete(&ctx(&ts, &headers), kind, &id, &preconditions(&headers))
            .await?,
    ))
}

macro_rules! kind_handlers {
    ($kind:expr, $list:ident, $search:ident, $create:ident, $get:ident, $replace:ident, $patch:ident, $delete:ident) => {
        pub async fn $list(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            QueryMap(q): Params,
        ) -> Result<Response, ApiError> {
            list(ts, headers, Some($kind), list_params(&q)).await
        }
        pub async fn $search(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            body: Body,
        ) -> Result<Response, ApiError> {
            search(ts, headers, Some($kind), body).await
        }
        pub async fn $create(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            QueryMap(q): Params,
            body: Body,
        ) -> Result<Response, ApiError> {
            create(ts, headers, q, $kind, body).await
        }
        pub async fn $get(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            QueryMap(q): Params,
            ScimPath(id): ScimPath<String>,
        ) -> Result<Response, ApiError> {
            get_one(ts, headers, q, $kind, id).await
        }
        pub async fn $replace(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            QueryMap(q): Params,
            ScimPath(id): ScimPath<String>,
            body: Body,
        ) -> Result<Response, ApiError> {
            replace(ts, headers, q, $kind, id, body).await
        }
        pub async fn $patch(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            QueryMap(q): Params,
            ScimPath(id): ScimPath<String>,
            body: Body,
        ) -> Result<Response, ApiError> {
            patch(ts, headers, q, $kind, id, body).await
        }
        pub async fn $delete(
            State(ts): State<TenantState>,
            headers: ReqInfo,
            ScimPath(id): ScimPath<String>,
        ) -> Result<Response, ApiError> {
            delete(ts, headers, $kind, id).await
        }
    };
}

kind_handlers!(
    ResourceKind::User,
    list_users,
    search_users,
    create_user,
    get_user,
    replace_user,
    patch_user,
    delete_user
);
kind_handlers!(
    ResourceKind::Group,
    list_groups,
    search_groups,
    create_group,
    get_group,
    replace_group,
    patch_group,
    delete_group
);

pub async fn search_root(State(ts): State<TenantState>, headers: ReqInfo, body: Body) -> Result<Response, ApiError> {
    search(ts, headers, None, body).await
}

pub async fn bulk(State(ts): State<TenantState>, headers: ReqInfo, body: Body) -> Result<Response, ApiError> {
    let json = read_json(&headers, body, ts.app.service.limits.bulk_max_payload).await?;
    let out = ts.app.service.bulk(&ctx(&ts, &headers), json).await?;
    Ok(json_response(StatusCode::OK, &out))
}

/// The absolute URL of the tenant's SCIM base, for meta.location: the configured public URL, or the Host header.
pub(super) fn base_url(ts: &TenantState, headers: &HeaderMap) -> String {
    match &ts.tenant.public_url {
        Some(u) => u.clone(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("{}://{host}{}", ts.app.scheme, ts.tenant.base_path)
        }
    }
}
