//! The adapter SDK: what scimgate asks of a downstream target (LDAP/AD, SQL, files, REST, SCIM).
//!
//! Adapters depend on this crate and on nothing of the gateway. It holds:
//! - the [`Adapter`] trait: capabilities, a health check, idempotent [`Adapter::apply`] and [`Adapter::remove`] of a
//!   [`DesiredAccount`], a read-back [`Adapter::get`] and a paged [`Adapter::search`] (reconciliation reads through it);
//! - [`AccountId`], a compound identifier (a DN *and* a GUID, say), since many systems have two;
//! - [`AdapterError`], flat and typed, with a `retriable` flag the outbox uses to decide retry or dead letter;
//! - [`mapping`]: reading SCIM attribute paths out of the user document, and `{path}` templates, which every
//!   declarative mapping shares;
//! - [`compliance`]: the kit every adapter passes against its real server.

pub mod compliance;
pub mod mapping;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a target can do, reported by the adapter itself (from its configuration, not guessed from its kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Accounts can be disabled (locked) without being deleted.
    pub disable: bool,
    /// Entitlements (group memberships, roles) are managed on the target.
    pub groups: bool,
    /// Passwords can be set.
    pub passwords: bool,
    /// [`Adapter::search`] filters on the target (otherwise it pages through everything).
    pub search_filters: bool,
    /// Largest batch of operations the target takes at once (1: no batching).
    pub max_batch: usize,
}

/// An account's identifiers on a target: the one the adapter addresses it by, plus stable extra ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId {
    /// e.g. the DN, a primary key, a REST resource id.
    pub primary: String,
    /// e.g. `entryUUID`, `objectGUID`: ids that survive a rename.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

impl AccountId {
    pub fn new(primary: impl Into<String>) -> Self {
        AccountId {
            primary: primary.into(),
            secondary: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.secondary.insert(key.into(), value.into());
        self
    }
}

/// A secret (a password) on its way to a target. Its `Debug` never shows it, and it is never serialised: the
/// outbox stores it sealed, apart from the rest of the entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(**redacted**)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort without unsafe: overwrite the bytes we own before the allocation is freed.
        let len = self.0.len();
        self.0.clear();
        self.0.extend(std::iter::repeat_n('\0', len));
    }
}

/// The state an account should have on a target. Applying it twice is the same as applying it once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredAccount {
    /// The scimgate identity this account belongs to.
    pub identity_id: String,
    /// The identity's SCIM User in canonical form: schema attribute names, `id` and `externalId` at the top,
    /// extensions under their URN. Every adapter's declarative mapping reads from it ([`mapping::lookup`]).
    pub user: Map<String, Value>,
    /// Target-side entitlement values (group DNs, role names) the account should hold.
    pub entitlements: BTreeSet<String>,
    /// Every entitlement value the gateway manages on this target. Values in `managed` but not in `entitlements`
    /// are removed; values outside `managed` are never touched (a directory has groups we do not own).
    pub managed: BTreeSet<String>,
    /// Whether the account should be enabled.
    pub enabled: bool,
    /// A password to set, if the IdP sent one and the target takes passwords.
    #[serde(skip)]
    pub password: Option<Secret>,
}

impl DesiredAccount {
    /// The user's `userName` (every SCIM User has one).
    pub fn user_name(&self) -> &str {
        self.user.get("userName").and_then(Value::as_str).unwrap_or_default()
    }
}

/// An account as the target holds it, read back by [`Adapter::get`] or [`Adapter::search`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    /// Target-side attributes (names as the target spells them), values as strings.
    pub attributes: BTreeMap<String, Vec<String>>,
    /// Entitlement values held (all of them, managed or not).
    pub entitlements: BTreeSet<String>,
    /// `None` when the target has no notion of a disabled account.
    pub enabled: Option<bool>,
}

impl Account {
    /// The first value of a target attribute, compared case-insensitively on the name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
}

/// A page request for [`Adapter::search`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// Only accounts whose target attribute equals this value (case-insensitive where the target is). Adapters
    /// without `search_filters` filter the page themselves.
    pub filter: Option<(String, String)>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    pub limit: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchPage {
    pub accounts: Vec<Account>,
    /// More accounts follow: pass this as the next cursor.
    pub next: Option<String>,
}

/// A target error. Flat on purpose: the outbox needs to know whether to retry, and an operator needs a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AdapterError {
    pub kind: ErrorKind,
    pub message: String,
    /// Retrying the same operation later may succeed (timeouts, 5xx, unavailable, throttled).
    pub retriable: bool,
    /// The target said when to come back (HTTP Retry-After).
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target could not be reached, or timed out.
    Unavailable,
    /// The target refused our credentials.
    Unauthorized,
    /// The target refused the data (schema, constraint, policy).
    Rejected,
    /// The account does not exist.
    NotFound,
    /// Another account already holds a unique value.
    Conflict,
    /// The target asked us to slow down.
    Throttled,
    /// The adapter's own configuration cannot work (a mapping names a missing attribute, a host is not allowed).
    Config,
    /// Anything else; retried, as a transient fault is the likelier cause.
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Rejected => "rejected",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Config => "config",
            ErrorKind::Other => "other",
        }
    }
}

impl AdapterError {
    /// An error whose retriability follows its kind: unavailable, throttled and other are retried.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retriable = matches!(kind, ErrorKind::Unavailable | ErrorKind::Throttled | ErrorKind::Other);
        AdapterError {
            kind,
            message: message.into(),
            retriable,
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Override the retriable flag.
    pub fn retriable(mut self, retriable: bool) -> Self {
        self.retriable = retriable;
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// A downstream target. Every method is idempotent; the outbox may call any of them again after a crash or a
/// timeout whose outcome it never saw.
#[async_trait]
pub trait Adapter: Send + Sync {
    /// The adapter kind (`ldap`, `sql`, …), for logs and metrics.
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Whether the target answers and accepts our credentials.
    async fn health(&self) -> Result<(), AdapterError>;

    /// Make the account match `desired`, creating it if needed. `known` is the id recorded after the last success,
    /// if any; the adapter must still find the account by its mapped key when `known` is stale or absent, so a
    /// retry after a crash never creates a second account.
    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError>;

    /// Remove the account (and its managed entitlements). Removing one that is already gone succeeds.
    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError>;

    /// Read the account back, found by `known` or by the mapped key of `desired`. `None`: no such account.
    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError>;

    /// Accounts on the target, a page at a time (reconciliation reads through this).
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_follows_the_kind() {
        assert!(AdapterError::new(ErrorKind::Unavailable, "down").retriable);
        assert!(AdapterError::new(ErrorKind::Throttled, "429").retriable);
        assert!(!AdapterError::new(ErrorKind::Rejected, "bad").retriable);
        assert!(!AdapterError::new(ErrorKind::Config, "bad").retriable);
        assert!(!AdapterError::rejected("x").retriable(false).retriable);
    }

    #[test]
    fn secrets_do_not_print_and_do_not_serialise() {
        let d = DesiredAccount {
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        assert!(!format!("{d:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&d).expect("json").contains("hunter2"));
    }
}
