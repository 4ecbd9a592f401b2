//! LDAP failures and how they map onto [`AdapterError`].

use std::time::Duration;

use ldap3::LdapError;
use scimgate_adapter_sdk::{AdapterError, ErrorKind};

/// LDAP result codes the adapter acts on (RFC 4511 appendix A).
pub mod rc {
    pub const TIME_LIMIT_EXCEEDED: u32 = 3;
    pub const ADMIN_LIMIT_EXCEEDED: u32 = 11;
    pub const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
    pub const CONFIDENTIALITY_REQUIRED: u32 = 13;
    pub const NO_SUCH_ATTRIBUTE: u32 = 16;
    pub const UNDEFINED_ATTRIBUTE_TYPE: u32 = 17;
    pub const CONSTRAINT_VIOLATION: u32 = 19;
    pub const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
    pub const INVALID_ATTRIBUTE_SYNTAX: u32 = 21;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_DN_SYNTAX: u32 = 34;
    pub const INAPPROPRIATE_AUTHENTICATION: u32 = 48;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS_RIGHTS: u32 = 50;
    pub const BUSY: u32 = 51;
    pub const UNAVAILABLE: u32 = 52;
    pub const UNWILLING_TO_PERFORM: u32 = 53;
    pub const STRONGER_AUTH_REQUIRED: u32 = 8;
    pub const OBJECT_CLASS_VIOLATION: u32 = 65;
    pub const ENTRY_ALREADY_EXISTS: u32 = 68;
    pub const OTHER: u32 = 80;
}

/// What went wrong with one operation: the server answered with a result code, or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fail {
    #[error("{op}: LDAP result {rc} {text}")]
    Result { op: &'static str, rc: u32, text: String },
    #[error("{op}: {detail}")]
    Transport { op: &'static str, detail: String },
    #[error("{0}")]
    Adapter(AdapterError),
}

impl Fail {
    pub fn from_ldap(op: &'static str, e: LdapError) -> Fail {
        match e {
            LdapError::LdapResult { result } => Fail::Result {
                op,
                rc: result.rc,
                text: result.text,
            },
            other => Fail::Transport {
                op,
                detail: other.to_string(),
            },
        }
    }

    /// The server's result code, when it answered.
    pub fn rc(&self) -> Option<u32> {
        match self {
            Fail::Result { rc, .. } => Some(*rc),
            _ => None,
        }
    }

    /// The connection is no longer usable.
    pub fn broken(&self) -> bool {
        matches!(self, Fail::Transport { .. }) || matches!(self.rc(), Some(rc::UNAVAILABLE | rc::BUSY | rc::OTHER))
    }
}

impl From<AdapterError> for Fail {
    fn from(e: AdapterError) -> Self {
        Fail::Adapter(e)
    }
}

/// The kind of error an LDAP result code means.
pub fn kind_of(rc: u32) -> ErrorKind {
    use rc::*;
    match rc {
        INVALID_CREDENTIALS | INAPPROPRIATE_AUTHENTICATION | INSUFFICIENT_ACCESS_RIGHTS => ErrorKind::Unauthorized,
        STRONGER_AUTH_REQUIRED | CONFIDENTIALITY_REQUIRED | UNAVAILABLE_CRITICAL_EXTENSION => ErrorKind::Config,
        UNDEFINED_ATTRIBUTE_TYPE => ErrorKind::Config,
        BUSY | ADMIN_LIMIT_EXCEEDED => ErrorKind::Throttled,
        UNAVAILABLE | TIME_LIMIT_EXCEEDED => ErrorKind::Unavailable,
        NO_SUCH_OBJECT => ErrorKind::NotFound,
        ENTRY_ALREADY_EXISTS | ATTRIBUTE_OR_VALUE_EXISTS => ErrorKind::Conflict,
        OTHER => ErrorKind::Other,
        // 16-21 attribute problems, 34-36 name problems, 53 unwilling, 64-69 update problems, and the rest.
        _ => ErrorKind::Rejected,
    }
}

impl From<Fail> for AdapterError {
    fn from(f: Fail) -> AdapterError {
        match f {
            Fail::Adapter(e) => e,
            Fail::Transport { .. } => AdapterError::unavailable(f.to_string()),
            Fail::Result { rc, .. } => {
                let kind = kind_of(rc);
                let e = AdapterError::new(kind, f.to_string());
                if kind == ErrorKind::Throttled {
                    e.retry_after(Duration::from_secs(5))
                } else {
                    e
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_map_to_kinds() {
        let e = |rc| {
            AdapterError::from(Fail::Result {
                op: "x",
                rc,
                text: String::new(),
            })
        };
        assert_eq!(e(49).kind, ErrorKind::Unauthorized);
        assert!(!e(49).retriable);
        assert_eq!(e(19).kind, ErrorKind::Rejected);
        assert_eq!(e(65).kind, ErrorKind::Rejected);
        assert_eq!(e(68).kind, ErrorKind::Conflict);
        assert_eq!(e(52).kind, ErrorKind::Unavailable);
        assert!(e(52).retriable);
        assert_eq!(e(51).kind, ErrorKind::Throttled);
        assert!(e(51).retry_after.is_some());
        let t = AdapterError::from(Fail::Transport {
            op: "connect",
            detail: "refused".into(),
        });
        assert!(t.retriable && t.kind == ErrorKind::Unavailable);
    }
}
