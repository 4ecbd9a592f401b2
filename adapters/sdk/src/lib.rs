//! The adapter SDK: what scimgate asks of a downstream target (LDAP/AD, SQL, files, REST, SCIM).
//!
//! This crate is the boundary the durable-provisioning work builds on. It holds only types and the
//! [`Adapter`] trait; adapters depend on it and on nothing of the gateway. What is here now:
//! - [`Capabilities`], reported at run time (not guessed from the adapter kind);
//! - [`AccountId`], a compound identifier (a DN *and* a GUID, say), since many systems have two;
//! - [`DesiredAccount`], the idempotent unit of work: the state an account should have, applied or removed;
//! - [`AdapterError`], flat and typed, with a `retriable` flag the outbox uses to decide retry or dead letter.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a target can do, reported by the adapter itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Accounts can be disabled (locked) without being deleted.
    pub disable: bool,
    /// Group membership is managed on the target.
    pub groups: bool,
    /// Passwords can be set.
    pub passwords: bool,
    /// Searches can filter on the target (otherwise they page through everything).
    pub search_filters: bool,
    /// Largest batch of operations the target takes at once (1: no batching).
    pub max_batch: usize,
}

/// An account's identifiers on a target: the one the adapter addresses it by, plus any stable extra ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId {
    /// e.g. the DN, a primary key, a REST resource id.
    pub primary: String,
    /// e.g. `objectGUID`, `entryUUID`: ids that survive a rename.
    pub secondary: BTreeMap<String, String>,
}

/// The state an account should have on a target. Applying it twice is the same as applying it once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredAccount {
    /// The scimgate identity this account belongs to.
    pub identity_id: String,
    /// Target-side attribute values, already mapped.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Entitlements (groups, roles) the account should hold on this target; others are removed.
    pub entitlements: Vec<String>,
    /// Whether the account should be enabled.
    pub enabled: bool,
}

/// A target error. Flat on purpose: the outbox needs to know whether to retry, and an operator needs a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AdapterError {
    pub kind: ErrorKind,
    pub message: String,
    /// Retrying the same operation later may succeed (timeouts, 5xx, unavailable).
    pub retriable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The target could not be reached or timed out.
    Unavailable,
    /// The target refused our credentials.
    Unauthorized,
    /// The target refused the data (schema, constraint).
    Rejected,
    /// The account does not exist.
    NotFound,
    /// The target asked us to slow down.
    Throttled,
    /// Anything else.
    Other,
}

impl AdapterError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retriable = matches!(kind, ErrorKind::Unavailable | ErrorKind::Throttled);
        AdapterError {
            kind,
            message: message.into(),
            retriable,
        }
    }
}

/// A downstream target.
#[async_trait]
pub trait Adapter: Send + Sync {
    fn capabilities(&self) -> Capabilities;
    /// Whether the target answers and accepts our credentials.
    async fn health(&self) -> Result<(), AdapterError>;
    /// Make the account match `desired`, creating it if needed. Idempotent.
    async fn apply(&self, id: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError>;
    /// Remove the account. Removing one that is already gone succeeds.
    async fn remove(&self, id: &AccountId) -> Result<(), AdapterError>;
    /// Accounts on the target, for reconciliation: a page after `cursor`.
    async fn search(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(AccountId, DesiredAccount)>, Option<String>), AdapterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_follows_the_kind() {
        assert!(AdapterError::new(ErrorKind::Unavailable, "down").retriable);
        assert!(AdapterError::new(ErrorKind::Throttled, "429").retriable);
        assert!(!AdapterError::new(ErrorKind::Rejected, "bad").retriable);
    }
}
