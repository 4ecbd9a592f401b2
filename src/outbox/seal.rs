//! Passwords at rest in the outbox: sealed with ChaCha20-Poly1305 under the configured key, bound to the row
//! they belong to (tenant and row id are the associated data, so a sealed value moved to another row does not
//! open). A row's secret is cleared when it is delivered.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the outbox key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("cannot read the outbox key file {0}: {1}")]
    KeyFile(String, std::io::Error),
    #[error("a sealed secret does not open with this key (was the key changed?)")]
    Open,
}

#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(**key**)")
    }
}

const PREFIX: &str = "v1:";

impl Sealer {
    pub fn from_base64(key: &str) -> Result<Sealer, SealError> {
        let bytes = B64.decode(key.trim()).map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Sealer, SealError> {
        let text = std::fs::read_to_string(path).map_err(|e| SealError::KeyFile(path.display().to_string(), e))?;
        Self::from_base64(&text)
    }

    pub fn seal(&self, tenant: &str, row: &str, secret: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        let aad = format!("{tenant}\u{0}{row}");
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(ct);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn open(&self, tenant: &str, row: &str, sealed: &str) -> Result<String, SealError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .ok_or(SealError::Open)?;
        if raw.len() < 12 + 16 {
            return Err(SealError::Open);
        }
        let (nonce, ct) = raw.split_at(12);
        let aad = format!("{tenant}\u{0}{row}");
        let pt = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(pt).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        B64.encode([7u8; 32])
    }

    #[test]
    fn seals_and_opens_only_for_its_row() {
        let s = Sealer::from_base64(&key()).expect("key");
        let sealed = s.seal("t", "row1", "Sekr3t!");
        assert!(!sealed.contains("Sekr3t"));
        assert_eq!(s.open("t", "row1", &sealed).expect("open"), "Sekr3t!");
        assert!(s.open("t", "row2", &sealed).is_err(), "moved to another row");
        assert!(s.open("u", "row1", &sealed).is_err(), "moved to another tenant");
        let other = Sealer::from_base64(&B64.encode([8u8; 32])).expect("key");
        assert!(other.open("t", "row1", &sealed).is_err(), "another key");
        assert_ne!(sealed, s.seal("t", "row1", "Sekr3t!"), "fresh nonce each time");
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
    }
}
