//! The identity store: users, groups and memberships in real tables, behind the [`Store`] trait.
//!
//! [`SqlStore`] runs on SQLite (the embedded default, WAL, fsync on commit) and PostgreSQL through sqlx, with
//! one set of migrations. Filters arrive resolved (see `scimgate_scim::eval`); [`lower`] turns what it can into
//! SQL over indexed columns, and the rest is evaluated in memory with the same semantics. Versions and
//! uniqueness are checked inside the write transaction: an update is a compare-and-swap on `version`.

pub mod audit;
pub mod cache;
pub mod lifecycle;
mod lower;
pub mod outbox;
pub mod sql;

use async_trait::async_trait;
use serde_json::{Map, Value};

use scimgate_scim::filter::{AttrPath, Filter};
use scimgate_scim::patch::{Member, MemberOp};
use scimgate_scim::schema::{Registry, ResourceKind};

pub use audit::{AuditEntry, AuditFilter, AuditRecord, AuditStore, VerifyReport};
pub use lifecycle::{
    ApprovalRecord, DecisionInputs, Effects, ExceptionRecord, IdentityState, PlanRecord, StateWrite, UserForChange,
};
pub use outbox::{OutboxEntry, OutboxFilter, OutboxNew, OutboxStore, Outcome};
pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("resource not found")]
    NotFound,
    /// The version the caller read is no longer current.
    #[error("the resource changed since it was read")]
    VersionMismatch,
    /// An identity's lifecycle state changed since it was read (a concurrent change); retry the operation.
    #[error("the identity's lifecycle state changed concurrently")]
    StateConflict,
    #[error("{0}")]
    Uniqueness(String),
    #[error("{0}")]
    InvalidMember(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A stored resource: the canonical document (no `id`, `meta`, members or groups) plus its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: String,
    pub version: i64,
    pub created: String,
    pub last_modified: String,
    pub doc: Map<String, Value>,
}

/// What a create or replace writes.
#[derive(Debug, Clone)]
pub struct Write {
    pub doc: Map<String, Value>,
    /// For users: `Some(hash)` sets the password hash, `None` keeps the current one.
    pub password_hash: Option<String>,
    /// Whether the document differs from the stored one. A replace that changes neither the document nor the
    /// membership keeps the version and lastModified (an IdP re-push must not invalidate ETags).
    pub doc_changed: bool,
    /// A replacement of a user whose email values are those already stored ([`emails_differ`] is false): its
    /// email index rows stay as they are (two statements fewer). Ignored by creates and rehires, which always
    /// write them.
    pub emails_unchanged: bool,
    /// Lifecycle effects (identity state, plan, approvals) written in the same transaction.
    pub effects: Vec<Effects>,
    /// Audit records of the change, appended to the tenant's hash chain in the same transaction.
    pub audit: Vec<audit::AuditEntry>,
}

/// Whether two user documents index different email values (compared as the store indexes them: lowercased,
/// empty values skipped, duplicates once, in order).
pub fn emails_differ(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    sql::email_values(a) != sql::email_values(b)
}

/// One replacement of [`Store::replace_many`]: the arguments of a [`Store::replace`].
#[derive(Debug, Clone)]
pub struct Replacement {
    pub kind: ResourceKind,
    pub id: String,
    pub expect: i64,
    pub write: Write,
    pub members: Vec<MemberOp>,
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Skip this many matches (index paging, 0-based).
    Offset(usize),
    /// Resources with an id greater than this (cursor paging in id order).
    After(String),
}

#[derive(Debug, Clone)]
pub struct Query<'a> {
    pub reg: &'a Registry,
    pub filter: Option<&'a Filter>,
    /// Sort attribute (resolved) and descending flag. `None`: id order.
    pub sort: Option<(AttrPath, bool)>,
    pub start: Start,
    pub count: usize,
    /// Lower what can be lowered to SQL. `false` evaluates everything in memory (the property test compares).
    pub lowering: bool,
    /// The number of matches, when the caller already knows it (a cursor's later pages carry the count of the
    /// first): the store does not count again, so a page costs the same at the end of a million as at the start.
    pub total: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub total: usize,
    pub rows: Vec<Stored>,
    /// More matches follow this page.
    pub more: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create a resource; groups may start with members.
    async fn create(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        w: Write,
        members: &[Member],
    ) -> Result<Stored, StoreError>;
    /// Create several resources (no group members) in one transaction, each exactly as [`Store::create`] would,
    /// with their lifecycle effects, and their audit records appended in item order. All or nothing: on any
    /// error (a taken userName, a `StateConflict`, …) nothing is written and the caller may retry item by item.
    async fn create_many(
        &self,
        tenant: &str,
        kind: ResourceKind,
        items: &[(String, Write)],
    ) -> Result<Vec<Stored>, StoreError>;
    async fn get(&self, tenant: &str, kind: ResourceKind, id: &str) -> Result<Option<Stored>, StoreError>;
    /// Replace the document if the stored version is still `expect`, applying membership changes in the same
    /// transaction. `VersionMismatch` otherwise. A negative `expect` (groups: membership changes only, no If-Match)
    /// takes whatever version is current: the row lock orders concurrent changes, and adding or removing members
    /// does not depend on the version they were read at.
    async fn replace(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        expect: i64,
        w: Write,
        members: &[MemberOp],
    ) -> Result<Stored, StoreError>;
    /// Several replacements in one transaction, each exactly as [`Store::replace`] would apply it, in order, each
    /// with its own outcome: one that fails leaves nothing behind and the others still apply. `Err` when the
    /// transaction itself failed: then nothing was written.
    async fn replace_many(
        &self,
        tenant: &str,
        items: &[Replacement],
    ) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for r in items {
            out.push(
                self.replace(tenant, r.kind, &r.id, r.expect, r.write.clone(), &r.members)
                    .await,
            );
        }
        Ok(out)
    }
    /// Delete (users: archive), if `expect` is given only at that version, with the lifecycle effects.
    async fn delete(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        expect: Option<i64>,
        effects: &[Effects],
        audit: &[audit::AuditEntry],
    ) -> Result<(), StoreError>;
    async fn query(&self, tenant: &str, kind: ResourceKind, q: &Query<'_>) -> Result<Page, StoreError>;
    /// A group's members.
    async fn members(&self, tenant: &str, group_id: &str) -> Result<Vec<Member>, StoreError>;
    /// The groups a user or group is a direct member of: (id, displayName).
    async fn groups_of(&self, tenant: &str, member_id: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// [`Store::groups_of`] for several members at once (a page of a list), keyed by member id; members in no
    /// group are absent.
    async fn groups_of_many(
        &self,
        tenant: &str,
        member_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<(String, String)>>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for id in member_ids {
            let g = self.groups_of(tenant, id).await?;
            if !g.is_empty() {
                out.insert((*id).to_string(), g);
            }
        }
        Ok(out)
    }
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The read cache the store keeps correct, if one is enabled.
    fn read_cache(&self) -> Option<&cache::ReadCache> {
        None
    }
}

/// Lifecycle records for the policy engine. JSON documents are opaque to the store.
#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    /// An archived user matching a rehire key.
    async fn find_archived(
        &self,
        tenant: &str,
        external_id: Option<&str>,
        employee_number: Option<&str>,
    ) -> Result<Option<Stored>, StoreError>;
    /// A user, archived or not: (resource, archived).
    async fn get_with_archived(&self, tenant: &str, id: &str) -> Result<Option<(Stored, bool)>, StoreError>;
    /// Bring an archived user back with a new document (rehire), if still at version `expect`.
    async fn revive(&self, tenant: &str, id: &str, expect: i64, w: Write) -> Result<Stored, StoreError>;
    async fn apply_effects(&self, tenant: &str, effects: &[Effects]) -> Result<(), StoreError>;
    async fn identity_state(&self, tenant: &str, id: &str) -> Result<Option<IdentityState>, StoreError>;
    async fn plans(&self, tenant: &str, identity: Option<&str>, limit: usize) -> Result<Vec<PlanRecord>, StoreError>;
    async fn approvals(
        &self,
        tenant: &str,
        status: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    async fn exceptions(&self, tenant: &str, identity: Option<&str>) -> Result<Vec<ExceptionRecord>, StoreError>;
    /// An identity's state, SoD exceptions and pending approvals: [`LifecycleStore::identity_state`],
    /// [`LifecycleStore::exceptions`] and the pending [`LifecycleStore::approvals`], in one statement.
    async fn decision_inputs(&self, tenant: &str, id: &str) -> Result<DecisionInputs, StoreError>;
    /// A user that is not archived ([`Store::get`]), its groups ([`Store::groups_of`]) and its decision inputs,
    /// in one statement: what a PUT or PATCH of a user reads before its policy decision.
    async fn user_for_change(&self, tenant: &str, id: &str) -> Result<Option<UserForChange>, StoreError>;
    /// Identities whose timer is due: (tenant, id).
    async fn due_identities(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError>;
    /// Pending approvals due to escalate or expire: (tenant, approval).
    async fn due_approvals(&self, now: &str, limit: usize) -> Result<Vec<(String, ApprovalRecord)>, StoreError>;
    /// A page of users (archived included) in id order after `after`, each with its lifecycle state and the
    /// displayNames of its groups: what a whole-population evaluation (`scimgate plan`) needs, in three queries.
    async fn identity_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentityRow>, StoreError>;
    /// Every user id (archived included), in id order after `after`.
    async fn identity_ids(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError>;
}

/// One row of [`LifecycleStore::identity_page`].
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub user: Stored,
    pub archived: bool,
    pub state: Option<IdentityState>,
    pub groups: Vec<String>,
}

/// Everything the gateway needs of a store.
pub trait Backend: Store + LifecycleStore + AuditStore + OutboxStore {}
impl<T: Store + LifecycleStore + AuditStore + OutboxStore> Backend for T {}

/// Indexed columns extracted from a canonical document.
pub(crate) fn str_at<'d>(doc: &'d Map<String, Value>, key: &str) -> Option<&'d str> {
    doc.get(key).and_then(Value::as_str)
}
