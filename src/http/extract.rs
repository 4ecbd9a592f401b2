//! Extractors whose rejections are SCIM errors (axum's own answer in text/plain), and the bearer token.

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

/// The request's headers plus its authenticated actor.
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
        let actor = parts
            .extensions
            .get::<Actor>()
            .map_or_else(|| "anonymous".to_string(), |a| a.0.clone());
        Ok(ReqInfo {
            headers: parts.headers.clone(),
            actor,
        })
    }
}
