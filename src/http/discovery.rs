//! Discovery endpoints (RFC 7644 §4), generated from the loaded schemas and the configured limits.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use scimgate_scim::schema::ResourceType;
use scimgate_scim::urn;

use super::error::ApiError;
use super::extract::ScimPath;
use super::resources::base_url;
use super::{TenantState, json_response};

pub async fn service_provider_config(State(ts): State<TenantState>, headers: HeaderMap) -> Response {
    let l = &ts.app.service.limits;
    let base = base_url(&ts, &headers);
    let body = json!({
        "schemas": [urn::SERVICE_PROVIDER_CONFIG],
        "documentationUri": "https://github.com/scimgate/scimgate#readme",
        "patch": {"supported": true},
        "bulk": {"supported": true, "maxOperations": l.bulk_max_ops, "maxPayloadSize": l.bulk_max_payload},
        "filter": {"supported": true, "maxResults": l.max_page},
        "changePassword": {"supported": true},
        "sort": {"supported": true},
        "etag": {"supported": true},
        "pagination": {
            "cursor": true,
            "index": true,
            "defaultPaginationMethod": "index",
            "defaultPageSize": l.default_page,
            "maxPageSize": l.max_page,
            "cursorTimeout": l.cursor_timeout_secs,
        },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "Authentication with a bearer token issued to the tenant (RFC 6750)",
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    });
    json_response(StatusCode::OK, &body)
}

fn resource_type_json(rt: &ResourceType, base: &str) -> Value {
    let mut v = serde_json::to_value(&rt.def).unwrap_or(Value::Null);
    v["schemas"] = json!([urn::RESOURCE_TYPE]);
    v["meta"] = json!({"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{}", rt.def.id)});
    v
}

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [urn::LIST_RESPONSE],
        "totalResults": resources.len(),
        "itemsPerPage": resources.len(),
        "startIndex": 1,
        "Resources": resources,
    })
}

pub async fn resource_types(State(ts): State<TenantState>, headers: HeaderMap) -> Response {
    let base = base_url(&ts, &headers);
    let all = ts
        .app
        .service
        .reg
        .types()
        .iter()
        .map(|rt| resource_type_json(rt, &base))
        .collect();
    json_response(StatusCode::OK, &list(all))
}

pub async fn resource_type(
    State(ts): State<TenantState>,
    headers: HeaderMap,
    ScimPath(id): ScimPath<String>,
) -> Result<Response, ApiError> {
    let base = base_url(&ts, &headers);
    let rt = ts
        .app
        .service
        .reg
        .types()
        .iter()
        .find(|t| t.def.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("resource type {id} not found")))?;
    Ok(json_response(StatusCode::OK, &resource_type_json(rt, &base)))
}

fn schema_json(s: &scimgate_scim::schema::Schema, base: &str) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    v["schemas"] = json!([urn::SCHEMA]);
    v["meta"] = json!({"resourceType": "Schema", "location": format!("{base}/Schemas/{}", s.id)});
    v
}

pub async fn schemas(State(ts): State<TenantState>, headers: HeaderMap) -> Response {
    let base = base_url(&ts, &headers);
    let all = ts
        .app
        .service
        .reg
        .schemas()
        .iter()
        .map(|s| schema_json(s, &base))
        .collect();
    json_response(StatusCode::OK, &list(all))
}

pub async fn schema(
    State(ts): State<TenantState>,
    headers: HeaderMap,
    ScimPath(id): ScimPath<String>,
) -> Result<Response, ApiError> {
    let base = base_url(&ts, &headers);
    let s = ts
        .app
        .service
        .reg
        .schema(&id)
        .ok_or_else(|| ApiError::NotFound(format!("schema {id} not found")))?;
    Ok(json_response(StatusCode::OK, &schema_json(s, &base)))
}
