//! Opaque, signed cursors for RFC 9865 paging.
//!
//! A cursor carries where the next page starts, a hash of the query it belongs to, the tenant and an expiry,
//! signed with HMAC-SHA256. A cursor that was altered, belongs to another query or tenant, or is garbage is
//! `invalidCursor`; an old one is `expiredCursor`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use scimgate_scim::ProtocolError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// After this resource id (id order).
    #[serde(rename = "a")]
    After(String),
    /// Skip this many results.
    #[serde(rename = "o")]
    Offset(usize),
    /// After this resource id (id order), in a listing of `total` matches counted on its first page.
    #[serde(rename = "k")]
    Counted { after: String, total: usize },
}

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    p: Position,
    /// Query hash (hex prefix).
    q: String,
    t: String,
    /// Expiry, unix seconds.
    e: i64,
}

#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl CursorKey {
    pub fn new(key: [u8; 32]) -> Self {
        CursorKey(key)
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length; this cannot fail for a 32-byte key.
        let mut m = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes any key length"),
        };
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    pub fn encode(&self, pos: Position, query_hash: &str, tenant: &str, expires: i64) -> String {
        let payload = Payload {
            p: pos,
            q: query_hash.to_string(),
            t: tenant.to_string(),
            e: expires,
        };
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        let body = B64.encode(&json);
        let sig = B64.encode(&self.mac(body.as_bytes())[..16]);
        format!("{body}.{sig}")
    }

    pub fn decode(&self, cursor: &str, query_hash: &str, tenant: &str, now: i64) -> Result<Position, ProtocolError> {
        let bad = || ProtocolError::InvalidCursor("the cursor is not valid for this query".into());
        let (body, sig) = cursor.split_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let want = self.mac(body.as_bytes());
        if sig.len() != 16 || !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..16], &sig[..])) {
            return Err(bad());
        }
        let json = B64.decode(body).map_err(|_| bad())?;
        let payload: Payload = serde_json::from_slice(&json).map_err(|_| bad())?;
        if payload.q != query_hash || payload.t != tenant {
            return Err(bad());
        }
        if payload.e < now {
            return Err(ProtocolError::ExpiredCursor(
                "the cursor has expired; start again".into(),
            ));
        }
        Ok(payload.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let k = CursorKey::new([7; 32]);
        let c = k.encode(Position::After("abc".into()), "q1", "t", 100);
        assert_eq!(k.decode(&c, "q1", "t", 50), Ok(Position::After("abc".into())));
        let counted = Position::Counted {
            after: "abc".into(),
            total: 1_000_000,
        };
        let c2 = k.encode(counted.clone(), "q1", "t", 100);
        assert_eq!(k.decode(&c2, "q1", "t", 50), Ok(counted));
        assert!(matches!(
            k.decode(&c, "q2", "t", 50),
            Err(ProtocolError::InvalidCursor(_))
        ));
        assert!(matches!(
            k.decode(&c, "q1", "other", 50),
            Err(ProtocolError::InvalidCursor(_))
        ));
        assert!(matches!(
            k.decode(&c, "q1", "t", 101),
            Err(ProtocolError::ExpiredCursor(_))
        ));
        let mut tampered = c.clone().into_bytes();
        tampered[3] ^= 1;
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(matches!(
            k.decode(&tampered, "q1", "t", 50),
            Err(ProtocolError::InvalidCursor(_))
        ));
        assert!(matches!(
            k.decode("garbage", "q1", "t", 50),
            Err(ProtocolError::InvalidCursor(_))
        ));
        let other = CursorKey::new([8; 32]);
        assert!(matches!(
            other.decode(&c, "q1", "t", 50),
            Err(ProtocolError::InvalidCursor(_))
        ));
    }
}
