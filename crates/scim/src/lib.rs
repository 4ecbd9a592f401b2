//! The SCIM 2.0 protocol core of scimgate: RFC 7643 schemas and RFC 7644 operations as pure functions.
//!
//! - [`schema`]: the registry of schemas and resource types, loaded from JSON the gateway reads at start.
//! - [`filter`]: the filter and PATCH-path grammar, parsed into a syntax tree.
//! - [`eval`]: filter resolution to canonical attribute names, and in-memory evaluation.
//! - [`resource`]: request bodies checked and canonicalised against their schemas.
//! - [`patch`]: PATCH in all the forms real clients send; group membership split out for the store.
//! - [`project`]: `returned`, `attributes` and `excludedAttributes`.
//! - [`bulk`]: Bulk requests, `bulkId` references and ordering.
//! - [`error`]: protocol errors, each knowing its `scimType` and status.
//!
//! Nothing here does I/O, knows HTTP or knows SQL.

pub mod bulk;
pub mod error;
pub mod eval;
pub mod filter;
pub mod patch;
pub mod project;
pub mod resource;
pub mod schema;

pub use error::{ProtocolError, ScimType};

/// Message schema URNs (RFC 7644 §3.1).
pub mod urn {
    pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
    pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
    pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
    pub const SERVICE_PROVIDER_CONFIG: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
    pub const RESOURCE_TYPE: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
    pub const SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";
}
