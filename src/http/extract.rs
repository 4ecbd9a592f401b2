//! Extractors whose rejections are SCIM errors (axum's own answer in text/plain), and the bearer token.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use scimgate_scim::ProtocolError;

use super::error::ApiError;

/// Query parameters; a malformed query is 400 invalidValue.
pub struct ScimQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ScimQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ScimQuery(q.0))
            .map_err(|e| ProtocolError::InvalidValue(format!("query: {}", e.body_text())).into())
    }
}

/// The SCIM endpoints' query parameters as sent (the handlers match names case-insensitively), decoded with
/// `form_urlencoded` straight into the map: what `Query<HashMap<String, String>>` gives, without its serde layers
/// (a fifth of the CPU of a cached `userName eq` lookup). Undecodable UTF-8 becomes U+FFFD, as there; a repeated
/// name keeps its last value, as there.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let map = parts
            .uri
            .query()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(QueryMap(map))
    }
}

/// Path parameters; a path that does not decode (bad UTF-8) is 400 invalidValue.
pub struct ScimPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ScimPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ScimPath(p.0))
            .map_err(|e| ProtocolError::InvalidValue(format!("path: {}", e.body_text())).into())
    }
}

/// The bearer token of an `Authorization` header (the scheme name is case-insensitive, RFC 7235).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Who made the request, as authentication established it (`token:N` or `jwt:SUBJECT`): for the audit trail.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// The request's headers plus its authenticated actor, both moved out of the request: an extractor after this one
/// sees no headers.
pub struct ReqInfo {
    pub headers: HeaderMap,
    pub actor: String,
}

impl std::ops::Deref for ReqInfo {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        &self.headers
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReqInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The SCIM handlers take this first and need the headers for nothing else: moved, not copied.
        let actor = parts
            .extensions
            .remove::<Actor>()
            .map_or_else(|| "anonymous".to_string(), |a| a.0);
        Ok(ReqInfo {
            headers: std::mem::take(&mut parts.headers),
            actor,
        })
    }
}
