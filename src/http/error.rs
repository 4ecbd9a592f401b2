//! The one SCIM error type at the HTTP edge. Every failure becomes status + `scimType` + detail in the RFC 7644
//! §3.12 body; a 500 says nothing about its cause to the client and logs the whole chain.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use scimgate_scim::{ProtocolError, urn};
use scimgate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    NotFound(String),
    /// Refused by policy (an enforce-mode SoD rule), or an admin role that may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("the resource version does not match If-Match")]
    PreconditionFailed,
    #[error("not modified")]
    NotModified(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a rate limit; retry after this many seconds.
    #[error("too many requests; retry after {0} s")]
    TooManyRequests(u64),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Protocol(p) => StatusCode::from_u16(p.status()).unwrap_or(StatusCode::BAD_REQUEST),
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ApiError::NotModified(_) => StatusCode::NOT_MODIFIED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn scim_type(&self) -> Option<&'static str> {
        match self {
            ApiError::Protocol(p) => p.scim_type().map(|t| t.as_str()),
            _ => None,
        }
    }

    /// The RFC 7644 §3.12 error body.
    pub fn body(&self) -> serde_json::Value {
        let status = self.status();
        let detail = match self {
            ApiError::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({
            "schemas": [urn::ERROR],
            "status": status.as_u16().to_string(),
            "detail": detail,
        });
        if let Some(t) = self.scim_type() {
            body["scimType"] = json!(t);
        }
        body
    }

    /// A 500's whole cause chain, one line.
    fn chain(&self) -> Option<String> {
        let ApiError::Internal(e) = self else { return None };
        let mut chain = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            src = s.source();
        }
        Some(chain)
    }

    /// Log a 500 with its whole cause chain; client errors at debug.
    pub fn log(&self) {
        match self.chain() {
            Some(chain) => tracing::error!(error = %chain, "request failed"),
            None => self.log_refusal(),
        }
    }

    fn log_refusal(&self) {
        tracing::debug!(status = self.status().as_u16(), scim_type = self.scim_type(), detail = %self, "request refused");
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource not found".into()),
            StoreError::VersionMismatch => ApiError::PreconditionFailed,
            StoreError::Uniqueness(m) => ApiError::Protocol(ProtocolError::Uniqueness(m)),
            StoreError::InvalidMember(m) => ApiError::Protocol(ProtocolError::InvalidValue(m)),
            StoreError::StateConflict => ApiError::Protocol(ProtocolError::Conflict(
                "a concurrent change to this identity; retry".into(),
            )),
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A 500 is logged by the outermost layer (`request_context`), with the request's id, method and path.
        let failure = self.chain().map(InternalFailure);
        if failure.is_none() {
            self.log_refusal();
        }
        let status = self.status();
        crate::metrics::METRICS
            .scim_errors
            .with_label_values(&[self.scim_type().unwrap_or("none"), status.as_str()])
            .inc();
        if let ApiError::NotModified(etag) = &self {
            let mut r = status.into_response();
            if let Ok(v) = HeaderValue::from_str(etag) {
                r.headers_mut().insert(header::ETAG, v);
            }
            return r;
        }
        let mut r = (status, self.body().to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(super::SCIM_JSON));
        if let ApiError::TooManyRequests(secs) = &self
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body may not have been read to its end (past `read_limited`'s drain bound): no reuse.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"scimgate\""),
            );
        }
        if let Some(f) = failure {
            r.extensions_mut().insert(f);
        }
        r
    }
}

/// A 500's cause chain, carried on its response to the layer that logs it with the request's context.
#[derive(Debug, Clone)]
pub struct InternalFailure(pub String);
