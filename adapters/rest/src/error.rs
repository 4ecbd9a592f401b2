//! HTTP outcomes → [`AdapterError`]: what the outbox retries and what it dead-letters.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use scimgate_adapter_sdk::{AdapterError, ErrorKind};

/// A Retry-After longer than this is clamped (a target asking for a week is misconfigured, not throttling).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A transport error: unreachable, refused, timed out → retriable `Unavailable`.
pub fn from_reqwest(e: &reqwest::Error) -> AdapterError {
    if e.is_timeout() {
        AdapterError::unavailable(format!("the request timed out: {e}"))
    } else if e.is_connect() || e.is_request() || e.is_body() {
        AdapterError::unavailable(format!("the target could not be reached: {e}"))
    } else if e.is_decode() {
        AdapterError::rejected(format!("the response could not be read: {e}"))
    } else {
        AdapterError::new(ErrorKind::Other, format!("HTTP error: {e}"))
    }
}

/// Parse `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3), clamped to a day.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// The error for a status that is not a success. `what` names the call for the message.
pub fn for_status(status: StatusCode, retry_after: Option<Duration>, what: &str) -> AdapterError {
    let msg = format!("{what}: the target answered {status}");
    let e = match status.as_u16() {
        429 => AdapterError::new(ErrorKind::Throttled, msg),
        401 | 403 => AdapterError::new(ErrorKind::Unauthorized, msg),
        404 | 410 => AdapterError::new(ErrorKind::NotFound, msg),
        409 => AdapterError::new(ErrorKind::Conflict, msg),
        408 => AdapterError::unavailable(msg),
        300..=399 => AdapterError::rejected(format!("{msg}; redirects are not followed")),
        500..=599 => AdapterError::unavailable(msg),
        _ => AdapterError::rejected(msg),
    };
    match retry_after {
        Some(d) if e.retriable => e.retry_after(d),
        _ => e,
    }
}

/// Read a response body, refusing one larger than `max` bytes without reading past it.
pub async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, AdapterError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(AdapterError::rejected(format!(
            "the response is larger than {max} bytes"
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| from_reqwest(&e))? {
        if out.len() + chunk.len() > max {
            return Err(AdapterError::rejected(format!(
                "the response is larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_map_to_kinds() {
        let s = |n| StatusCode::from_u16(n).expect("status");
        let e = for_status(s(429), Some(Duration::from_secs(3)), "x");
        assert_eq!(
            (e.kind, e.retriable, e.retry_after),
            (ErrorKind::Throttled, true, Some(Duration::from_secs(3)))
        );
        assert_eq!(for_status(s(503), None, "x").kind, ErrorKind::Unavailable);
        assert!(for_status(s(502), None, "x").retriable);
        assert_eq!(for_status(s(401), None, "x").kind, ErrorKind::Unauthorized);
        assert!(!for_status(s(403), None, "x").retriable);
        assert_eq!(for_status(s(400), None, "x").kind, ErrorKind::Rejected);
        assert!(!for_status(s(302), None, "x").retriable);
        assert_eq!(for_status(s(409), None, "x").kind, ErrorKind::Conflict);
    }
}
