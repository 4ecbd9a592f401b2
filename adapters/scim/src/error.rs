//! SCIM error responses (RFC 7644 §3.12) → [`AdapterError`]. Transport errors, 429, 5xx and 401/403 are mapped
//! by the shared HTTP client before a response reaches this adapter.

use scimgate_adapter_rest::http::Response;
use scimgate_adapter_sdk::{AdapterError, ErrorKind};

/// `Ok(response)` for a success; otherwise the error its status and `scimType` mean.
pub fn check(resp: Response, what: &str) -> Result<Response, AdapterError> {
    if resp.status.is_success() {
        return Ok(resp);
    }
    let scim_type = resp
        .body
        .as_ref()
        .and_then(|b| b.get("scimType"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let status = resp.status;
    let mut e = resp
        .success(what)
        .err()
        .unwrap_or_else(|| AdapterError::rejected(what.to_string()));
    if status.as_u16() == 400 && scim_type.as_deref() == Some("uniqueness") {
        e.kind = ErrorKind::Conflict;
        e.retriable = false;
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use serde_json::json;

    fn resp(status: u16, body: serde_json::Value) -> Response {
        Response {
            status: StatusCode::from_u16(status).expect("status"),
            body: Some(body),
            location: None,
        }
    }

    #[test]
    fn scim_errors_map_to_kinds() {
        assert!(check(resp(200, json!({})), "x").is_ok());
        let e = check(resp(409, json!({"scimType": "uniqueness"})), "x").expect_err("409");
        assert_eq!((e.kind, e.retriable), (ErrorKind::Conflict, false));
        let e = check(resp(400, json!({"scimType": "uniqueness"})), "x").expect_err("400");
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = check(
            resp(400, json!({"scimType": "invalidValue", "detail": "bad email"})),
            "x",
        )
        .expect_err("400");
        assert_eq!((e.kind, e.retriable), (ErrorKind::Rejected, false));
        assert!(e.message.contains("bad email"));
        assert_eq!(
            check(resp(404, json!({})), "x").expect_err("404").kind,
            ErrorKind::NotFound
        );
    }
}
