//! Protocol errors. Each variant knows the SCIM `scimType` and HTTP status it maps to (RFC 7644 §3.12,
//! RFC 9865 §2.4); the HTTP edge turns them into the one SCIM error body.

use crate::filter::FilterError;

/// The `scimType` values of RFC 7644 §3.12 and RFC 9865.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    InvalidFilter,
    TooMany,
    Uniqueness,
    Mutability,
    InvalidSyntax,
    InvalidPath,
    NoTarget,
    InvalidValue,
    InvalidVers,
    Sensitive,
    InvalidCursor,
    ExpiredCursor,
    InvalidCount,
}

impl ScimType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
            ScimType::InvalidCursor => "invalidCursor",
            ScimType::ExpiredCursor => "expiredCursor",
            ScimType::InvalidCount => "invalidCount",
        }
    }
}

/// A request that the protocol layer refuses. All of these are client errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    InvalidFilter(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    Uniqueness(String),
    #[error("{0}")]
    Mutability(String),
    #[error("{0}")]
    InvalidSyntax(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    NoTarget(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("{0}")]
    InvalidCursor(String),
    #[error("{0}")]
    ExpiredCursor(String),
    #[error("{0}")]
    InvalidCount(String),
    /// A Bulk request whose operations reference each other in a cycle that cannot be resolved.
    #[error("{0}")]
    Conflict(String),
}

impl ProtocolError {
    pub fn scim_type(&self) -> Option<ScimType> {
        Some(match self {
            ProtocolError::InvalidFilter(_) => ScimType::InvalidFilter,
            ProtocolError::TooMany(_) => ScimType::TooMany,
            ProtocolError::Uniqueness(_) => ScimType::Uniqueness,
            ProtocolError::Mutability(_) => ScimType::Mutability,
            ProtocolError::InvalidSyntax(_) => ScimType::InvalidSyntax,
            ProtocolError::InvalidPath(_) => ScimType::InvalidPath,
            ProtocolError::NoTarget(_) => ScimType::NoTarget,
            ProtocolError::InvalidValue(_) => ScimType::InvalidValue,
            ProtocolError::InvalidCursor(_) => ScimType::InvalidCursor,
            ProtocolError::ExpiredCursor(_) => ScimType::ExpiredCursor,
            ProtocolError::InvalidCount(_) => ScimType::InvalidCount,
            ProtocolError::Conflict(_) => return None,
        })
    }

    pub fn status(&self) -> u16 {
        match self {
            ProtocolError::Uniqueness(_) | ProtocolError::Conflict(_) => 409,
            _ => 400,
        }
    }

    pub fn filter(e: FilterError) -> Self {
        ProtocolError::InvalidFilter(e.to_string())
    }

    pub fn path(e: FilterError) -> Self {
        ProtocolError::InvalidPath(e.to_string())
    }
}

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
