//! The tamper-evident audit trail: one hash chain per tenant.
//!
//! Every record carries `seq` (1, 2, 3, … per tenant), the hash of the record before it (`prev_hash`; the first
//! record's is [`GENESIS_HASH`]) and its own `hash`: hex SHA-256 over an unambiguous encoding of all its fields
//! and `prev_hash` (see [`HashInput`]). So
//! - editing a record changes what its hash should be ([`Problem::Edited`]);
//! - moving a record (changing its `seq`, e.g. swapping two) leaves a hash that is valid only for its old place
//!   ([`Problem::Reordered`]);
//! - deleting records leaves a gap in `seq` ([`Problem::Missing`]), or, if the later ones were renumbered, moved
//!   records;
//! - replacing or inserting a record, even with a correctly computed hash, breaks the link of the record after it
//!   ([`Problem::BrokenLink`]), or, at the end of the chain, disagrees with `audit_head` ([`Problem::Appended`],
//!   [`Problem::HeadMismatch`]).
//!
//! Appends serialize per tenant on the tenant's `audit_head` row: `append_tx` first runs
//! `UPDATE audit_head SET seq = seq … RETURNING`, which in PostgreSQL takes the row lock (a concurrent appender
//! waits until this transaction ends, then reads the new head) and in SQLite takes the database write lock. This
//! is portable through sqlx `Any`, unlike `SELECT … FOR UPDATE` (a syntax error in SQLite). It relies on READ
//! COMMITTED (PostgreSQL's default): under REPEATABLE READ the waiting appender gets a serialization error instead.
//!
//! Retention ([`AuditStore::prune`]) deletes a prefix of the chain, records where it cut in `audit_anchor`
//! (the seq and hash of the last deleted record) and appends a `retention` record that names the same anchor, so
//! a moved or forged anchor is detected ([`Problem::AnchorUnconfirmed`], [`Problem::BeforeAnchor`]). Verification
//! starts after the anchor. Pruning refuses to delete a stretch of the chain that does not verify: it would hide
//! the evidence.
//!
//! # Append-only
//!
//! There is no API that updates or deletes an audit record other than retention, and no HTTP route that changes
//! one. At the database level (PostgreSQL), keep operators' and the gateway's hands off the records with
//! privileges: the tables are owned by a migration role (which runs the migrations: start the gateway once with
//! it after an upgrade), and the role the gateway serves with is granted, besides its privileges on the identity
//! tables, only what appending and reading need. `SqlStore::connect` checks the migrations at every start with
//! `CREATE TABLE IF NOT EXISTS _sqlx_migrations`, which PostgreSQL refuses without CREATE on the schema, hence
//! the schema grant (it allows creating new tables, not altering or writing other roles' tables):
//!
//! ```sql
//! -- the serving gateway: append and read the audit trail, never change or remove a record
//! GRANT USAGE, CREATE ON SCHEMA public TO scimgate;
//! GRANT SELECT ON _sqlx_migrations TO scimgate;
//! REVOKE ALL ON audit_log, audit_head, audit_anchor FROM scimgate;
//! GRANT SELECT, INSERT ON audit_log TO scimgate;
//! GRANT SELECT, INSERT, UPDATE ON audit_head TO scimgate;
//! GRANT SELECT ON audit_anchor TO scimgate;
//! -- retention (`scimgate audit prune`, run with its own store URL): delete a verified prefix, move the anchor
//! GRANT USAGE, CREATE ON SCHEMA public TO scimgate_retention;
//! GRANT SELECT ON _sqlx_migrations TO scimgate_retention;
//! GRANT SELECT, INSERT, DELETE ON audit_log TO scimgate_retention;
//! GRANT SELECT, INSERT, UPDATE ON audit_head, audit_anchor TO scimgate_retention;
//! ```
//!
//! `tests/audit.rs` (`privileges_keep_records_append_only`) runs exactly these grants: the gateway role appends
//! and verifies, and its UPDATE or DELETE of a record is refused. SQLite has no privileges: whoever can write
//! the file can change it, and the chain only makes that evident.
//!
//! What the chain cannot show on its own: someone who can write the database directly can cut the newest records
//! *and* rewind `audit_head` to match, or rewrite the whole chain from some record on. Against that, keep the
//! head that `scimgate audit verify` prints (seq and hash) somewhere outside the database, e.g. in the shipped
//! logs: a later verify must show the same record at that seq.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::any::AnyRow;

use scimgate_scim::resource::format_datetime;

use crate::{SqlStore, StoreError};

/// The `prev_hash` of a tenant's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The kind of the record [`AuditStore::prune`] appends.
pub const RETENTION_KIND: &str = "retention";

const VERIFY_PAGE: usize = 1000;
const PRUNE_BATCH: usize = 5000;
/// Verification tries this many positions at most when it looks for where a moved record belongs.
const MAX_RELOCATE_TRIES: i64 = 2_000_000;

/// What the gateway records. Kinds in use: `request`, `decision`, `approval`, `operation`, `policy`, `admin`, and
/// `retention` (written by pruning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub kind: String,
    /// Who: a SCIM client (tenant token), an admin user, or the engine (`system`).
    pub actor: String,
    pub identity_id: Option<String>,
    pub request_id: Option<String>,
    pub data: Value,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tenant: String,
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub actor: String,
    pub identity_id: Option<String>,
    pub request_id: Option<String>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Which records an export returns. `from` is inclusive, `to` exclusive; both in the stored form
/// (`scimgate_scim::resource::format_datetime`: fixed-width UTC, so text order is time order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    pub identity: Option<String>,
}

/// Where retention cut a tenant's chain: the last pruned record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
    pub pruned_at: String,
}

/// The fields a record's hash covers, in order.
///
/// Encoding: the domain tag `scimgate-audit-v1`, then each field in turn: `seq` as 8 bytes big-endian; a string
/// as the byte `1`, its UTF-8 length as 8 bytes big-endian, and its bytes; an absent optional string as the byte
/// `0`. Every field is self-delimiting, so no two different records encode alike (`("ab","c")` and `("a","bc")`
/// differ, as do `None` and `Some("")`). `data` is the JSON text exactly as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashInput<'a> {
    pub tenant: &'a str,
    pub seq: i64,
    pub at: &'a str,
    pub kind: &'a str,
    pub actor: &'a str,
    pub identity_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub data: &'a str,
    pub prev_hash: &'a str,
}

impl HashInput<'_> {
    /// The canonical byte encoding (see the type's documentation).
    pub fn encode(&self) -> Vec<u8> {
        fn text(out: &mut Vec<u8>, s: &str) {
            out.push(1);
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn opt(out: &mut Vec<u8>, s: Option<&str>) {
            match s {
                Some(s) => text(out, s),
                None => out.push(0),
            }
        }
        let mut out = Vec::with_capacity(
            64 + self.tenant.len() + self.at.len() + self.kind.len() + self.actor.len() + self.data.len() + 64,
        );
        out.extend_from_slice(b"scimgate-audit-v1");
        text(&mut out, self.tenant);
        out.extend_from_slice(&self.seq.to_be_bytes());
        text(&mut out, self.at);
        text(&mut out, self.kind);
        text(&mut out, self.actor);
        opt(&mut out, self.identity_id);
        opt(&mut out, self.request_id);
        text(&mut out, self.data);
        text(&mut out, self.prev_hash);
        out
    }

    /// Lower-case hex SHA-256 of [`HashInput::encode`].
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(self.encode()))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The first thing verification found wrong, by the seq where it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// The record's fields no longer match its hash: edited in place (or forged without the right hash).
    Edited { seq: i64 },
    /// The record is intact but its hash is valid only at `original_seq`: it was moved (its seq changed, e.g. two
    /// records swapped, or later records renumbered to close a gap).
    Reordered { seq: i64, original_seq: i64 },
    /// Records `from..=to` are missing: deleted (in the middle, at the start, or at the end of the chain).
    Missing { from: i64, to: i64 },
    /// The record is intact but does not link to the one before it: that one was replaced, or this one was
    /// forged or inserted.
    BrokenLink { seq: i64 },
    /// Records exist after the end of the chain that `audit_head` records: appended around the gateway.
    Appended { seq: i64 },
    /// `audit_head` (the recorded end of the chain) disagrees with the last record.
    HeadMismatch {
        head_seq: Option<i64>,
        head_hash: Option<String>,
        chain_seq: i64,
        chain_hash: String,
    },
    /// A record lies at or before the pruning anchor: the anchor was moved forward.
    BeforeAnchor { seq: i64, anchor_seq: i64 },
    /// No `retention` record in the chain confirms the pruning anchor: it was moved or forged.
    AnchorUnconfirmed { anchor_seq: i64 },
}

impl Problem {
    /// The seq where the problem shows.
    pub fn seq(&self) -> i64 {
        match self {
            Problem::Edited { seq }
            | Problem::Reordered { seq, .. }
            | Problem::BrokenLink { seq }
            | Problem::Appended { seq }
            | Problem::BeforeAnchor { seq, .. } => *seq,
            Problem::Missing { from, .. } => *from,
            Problem::HeadMismatch { chain_seq, .. } => *chain_seq,
            Problem::AnchorUnconfirmed { anchor_seq } => *anchor_seq,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited { seq } => write!(f, "record {seq} was edited: its content no longer matches its hash"),
            Problem::Reordered { seq, original_seq } => {
                write!(f, "record {seq} was moved: it is the record written as {original_seq}")
            }
            Problem::Missing { from, to } if from == to => write!(f, "record {from} is missing (deleted)"),
            Problem::Missing { from, to } => write!(f, "records {from} to {to} are missing (deleted)"),
            Problem::BrokenLink { seq } => write!(
                f,
                "record {seq} does not link to record {}: one of them was replaced or inserted",
                seq - 1
            ),
            Problem::Appended { seq } => {
                write!(
                    f,
                    "record {seq} lies after the recorded end of the chain: appended outside the gateway"
                )
            }
            Problem::HeadMismatch {
                head_seq,
                head_hash,
                chain_seq,
                chain_hash,
            } => match (head_seq, head_hash) {
                (Some(s), Some(h)) => write!(
                    f,
                    "the recorded end of the chain (seq {s}, hash {h}) does not match its last record \
                     (seq {chain_seq}, hash {chain_hash})"
                ),
                _ => write!(
                    f,
                    "the recorded end of the chain is missing, but the chain reaches seq {chain_seq} \
                     (hash {chain_hash})"
                ),
            },
            Problem::BeforeAnchor { seq, anchor_seq } => write!(
                f,
                "record {seq} lies before the pruning anchor (seq {anchor_seq}): the anchor was moved"
            ),
            Problem::AnchorUnconfirmed { anchor_seq } => write!(
                f,
                "no retention record confirms the pruning anchor at seq {anchor_seq}: the anchor was moved or forged"
            ),
        }
    }
}

/// The result of verifying one tenant's chain. Printable ([`fmt::Display`]) and machine-readable (serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub tenant: String,
    pub ok: bool,
    /// Records checked (after the anchor).
    pub checked: u64,
    /// The first and last seq checked.
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The hash at the end of the verified chain (of `last_seq`, else of the anchor, else genesis). Keep it
    /// outside the database to detect a rewritten tail later.
    pub last_hash: String,
    pub anchor: Option<Anchor>,
    /// The first problem found; `None` when `ok`.
    pub problem: Option<Problem>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tenant {}: ", self.tenant)?;
        match &self.problem {
            None => {
                write!(f, "ok, {} records", self.checked)?;
                if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
                    write!(f, " (seq {a}..{b})")?;
                }
                write!(f, ", last hash {}", self.last_hash)?;
            }
            Some(p) => write!(
                f,
                "BROKEN at seq {}: {p} ({} records verified before it)",
                p.seq(),
                self.checked
            )?,
        }
        if let Some(a) = &self.anchor {
            write!(f, "; pruned through seq {} at {}", a.seq, a.pruned_at)?;
        }
        Ok(())
    }
}

/// The audit trail. Append-only: there is no update; only retention deletes, and only a verified prefix.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Append records in their own transaction (`at`: the stored time form, from the caller's clock). Inside a
    /// write transaction of the store, use the crate's `append_tx` so the change and its record commit together.
    async fn append(&self, tenant: &str, at: &str, entries: &[AuditEntry]) -> Result<(), StoreError>;
    /// Records with seq greater than `after_seq`, in seq order.
    async fn audit_page(&self, tenant: &str, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;
    /// Records matching `filter` with seq greater than `after_seq`, in seq order: page with the last seq.
    async fn audit_export(
        &self,
        tenant: &str,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Walk the tenant's chain from the anchor (or genesis) to the head, in pages; report the first problem.
    async fn verify(&self, tenant: &str) -> Result<VerifyReport, StoreError>;
    /// Retention: delete the longest prefix of the chain whose records are older than `older_than` (stored time
    /// form), after verifying it; move the anchor to the last deleted record and append a `retention` record.
    /// Returns how many records were deleted. Batches of a few thousand records, one transaction each.
    async fn prune(&self, tenant: &str, older_than: &str) -> Result<usize, StoreError>;
    /// Every tenant with an audit chain (head, anchor or records), sorted.
    async fn tenants_with_audit(&self) -> Result<Vec<String>, StoreError>;
}

/// Append `entries` to `tenant`'s chain inside `tx`, as seq head+1, head+2, …
///
/// Takes the tenant's head row lock with its first statement and holds it until `tx` ends, so call it as the
/// last statement before commit: every writer then takes the locks in the same order (its own rows, then the
/// head) and holds the head only briefly. In PostgreSQL, concurrent writers of one tenant queue on the head
/// row; the transaction must run at READ COMMITTED (the default). Nothing happens for an empty `entries`.
pub(crate) async fn append_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    at: &str,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev) = lock_head(tx, tenant).await?;
    let mut rows: Vec<(i64, String, String, String)> = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let data = serde_json::to_string(&e.data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let hash = HashInput {
            tenant,
            seq,
            at,
            kind: &e.kind,
            actor: &e.actor,
            identity_id: e.identity_id.as_deref(),
            request_id: e.request_id.as_deref(),
            data: &data,
            prev_hash: &prev,
        }
        .hash();
        rows.push((seq, data, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    use crate::sql::Arg::{Int, Text};
    let args: Vec<_> = entries
        .iter()
        .zip(&rows)
        .map(|(e, (seq, data, prev_hash, hash))| {
            vec![
                Text(Some(tenant)),
                Int(*seq),
                Text(Some(at)),
                Text(Some(&e.kind)),
                Text(Some(&e.actor)),
                Text(e.identity_id.as_deref()),
                Text(e.request_id.as_deref()),
                Text(Some(data)),
                Text(Some(prev_hash)),
                Text(Some(hash)),
            ]
        })
        .collect();
    let head = "INSERT INTO audit_log (tenant, seq, at, kind, actor, identity_id, request_id, data, prev_hash, hash)";
    crate::sql::insert_rows(tx, head, "", 10, &args).await?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE tenant = $3")
        .bind(seq)
        .bind(&prev)
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Lock the tenant's head row (creating it at genesis if needed) and return (seq, hash).
async fn lock_head(tx: &mut sqlx::Transaction<'_, sqlx::Any>, tenant: &str) -> Result<(i64, String), StoreError> {
    const LOCK: &str = "UPDATE audit_head SET seq = seq WHERE tenant = $1 RETURNING seq, hash";
    if let Some(head) = sqlx::query_as(LOCK).bind(tenant).fetch_optional(&mut **tx).await? {
        return Ok(head);
    }
    // First append of this tenant. A concurrent first appender's insert makes ours wait for its commit and then
    // do nothing; the UPDATE then locks the committed row.
    sqlx::query("INSERT INTO audit_head (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .bind(GENESIS_HASH)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query_as(LOCK).bind(tenant).fetch_one(&mut **tx).await?)
}

/// A record as stored, `data` still text (the hash covers the text exactly).
struct RawRecord {
    tenant: String,
    seq: i64,
    at: String,
    kind: String,
    actor: String,
    identity_id: Option<String>,
    request_id: Option<String>,
    data: String,
    prev_hash: String,
    hash: String,
}

const COLUMNS: &str = "tenant, seq, at, kind, actor, identity_id, request_id, data, prev_hash, hash";

impl RawRecord {
    fn from_row(r: &AnyRow) -> Result<Self, StoreError> {
        Ok(RawRecord {
            tenant: r.try_get("tenant")?,
            seq: r.try_get("seq")?,
            at: r.try_get("at")?,
            kind: r.try_get("kind")?,
            actor: r.try_get("actor")?,
            identity_id: r.try_get("identity_id")?,
            request_id: r.try_get("request_id")?,
            data: r.try_get("data")?,
            prev_hash: r.try_get("prev_hash")?,
            hash: r.try_get("hash")?,
        })
    }

    fn input_at(&self, seq: i64) -> HashInput<'_> {
        HashInput {
            tenant: &self.tenant,
            seq,
            at: &self.at,
            kind: &self.kind,
            actor: &self.actor,
            identity_id: self.identity_id.as_deref(),
            request_id: self.request_id.as_deref(),
            data: &self.data,
            prev_hash: &self.prev_hash,
        }
    }

    fn hash_ok(&self) -> bool {
        self.input_at(self.seq).hash() == self.hash
    }

    fn into_record(self) -> Result<AuditRecord, StoreError> {
        let data = serde_json::from_str(&self.data).map_err(|e| {
            StoreError::Corrupt(format!(
                "audit record {} of tenant {}: data is not JSON: {e}",
                self.seq, self.tenant
            ))
        })?;
        Ok(AuditRecord {
            tenant: self.tenant,
            seq: self.seq,
            at: self.at,
            kind: self.kind,
            actor: self.actor,
            identity_id: self.identity_id,
            request_id: self.request_id,
            data,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }

    /// The anchor a `retention` record names: (through_seq, anchor_hash).
    fn retention_anchor(&self) -> Option<(i64, String)> {
        if self.kind != RETENTION_KIND {
            return None;
        }
        let v: Value = serde_json::from_str(&self.data).ok()?;
        Some((
            v.get("through_seq")?.as_i64()?,
            v.get("anchor_hash")?.as_str()?.to_string(),
        ))
    }
}

/// Walks a chain segment: what the next record must be.
struct Cursor {
    next_seq: i64,
    prev_hash: String,
}

impl Cursor {
    /// Check the next record; `None` if it continues the chain. A wrong hash is reported as `Edited` here and
    /// refined by the caller (it may be a moved record).
    fn step(&mut self, r: &RawRecord) -> Option<Problem> {
        if r.seq != self.next_seq {
            return Some(Problem::Missing {
                from: self.next_seq,
                to: r.seq - 1,
            });
        }
        if !r.hash_ok() {
            return Some(Problem::Edited { seq: r.seq });
        }
        if r.prev_hash != self.prev_hash {
            return Some(Problem::BrokenLink { seq: r.seq });
        }
        self.next_seq += 1;
        self.prev_hash.clone_from(&r.hash);
        None
    }
}

fn now() -> String {
    format_datetime(chrono::Utc::now())
}

impl SqlStore {
    async fn read_anchor(&self, tenant: &str) -> Result<Option<Anchor>, StoreError> {
        let row: Option<(i64, String, String)> =
            sqlx::query_as("SELECT seq, hash, pruned_at FROM audit_anchor WHERE tenant = $1")
                .bind(tenant)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(seq, hash, pruned_at)| Anchor { seq, hash, pruned_at }))
    }

    async fn read_head(&self, tenant: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT seq, hash FROM audit_head WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(self.pool())
            .await?)
    }

    async fn raw_page(
        &self,
        tenant: &str,
        after_seq: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<RawRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE tenant = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT {limit}"
        ))
        .bind(tenant)
        .bind(after_seq)
        .bind(upto)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(RawRecord::from_row).collect()
    }

    /// Where a record whose hash does not match belongs, if its hash is valid at another seq.
    async fn relocate(&self, tenant: &str, r: &RawRecord) -> Result<Option<i64>, StoreError> {
        // Fast path: the record it links to is still in place.
        let linked: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_log WHERE tenant = $1 AND hash = $2")
            .bind(tenant)
            .bind(&r.prev_hash)
            .fetch_optional(self.pool())
            .await?;
        if let Some(k) = linked
            && r.input_at(k + 1).hash() == r.hash
        {
            return Ok(Some(k + 1));
        }
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(self.pool())
            .await?;
        let head = self.read_head(tenant).await?.map_or(0, |h| h.0);
        let top = max.unwrap_or(0).max(head);
        // Nearest positions first: moved records usually did not move far.
        let reach = r
            .seq
            .saturating_sub(1)
            .max(top.saturating_sub(r.seq))
            .min(MAX_RELOCATE_TRIES);
        for d in 1..=reach {
            for s in [r.seq.saturating_sub(d), r.seq.saturating_add(d)] {
                if (1..=top).contains(&s) && r.input_at(s).hash() == r.hash {
                    return Ok(Some(s));
                }
            }
        }
        Ok(None)
    }

    async fn verify_once(&self, tenant: &str, anchor: Option<Anchor>) -> Result<VerifyReport, StoreError> {
        let head = self.read_head(tenant).await?;
        let (start, genesis) = match &anchor {
            Some(a) => (a.seq + 1, a.hash.clone()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let mut report = VerifyReport {
            tenant: tenant.to_string(),
            ok: false,
            checked: 0,
            first_seq: None,
            last_seq: None,
            last_hash: genesis.clone(),
            anchor: anchor.clone(),
            problem: None,
        };
        let fail = |mut report: VerifyReport, p: Problem| {
            report.problem = Some(p);
            Ok(report)
        };
        if let Some(a) = &anchor {
            let before: Option<i64> =
                sqlx::query_scalar("SELECT MIN(seq) FROM audit_log WHERE tenant = $1 AND seq <= $2")
                    .bind(tenant)
                    .bind(a.seq)
                    .fetch_one(self.pool())
                    .await?;
            if let Some(seq) = before {
                return fail(report, Problem::BeforeAnchor { seq, anchor_seq: a.seq });
            }
        }
        // Walk up to the head read above; later appends are for the next verification.
        let upto = head.as_ref().map_or(i64::MAX, |h| h.0);
        let mut cur = Cursor {
            next_seq: start,
            prev_hash: genesis,
        };
        let mut retention: Option<(i64, String)> = None;
        loop {
            let page = self.raw_page(tenant, cur.next_seq - 1, upto, VERIFY_PAGE).await?;
            for r in &page {
                if let Some(mut p) = cur.step(r) {
                    if let Problem::Edited { seq } = p
                        && let Some(original_seq) = self.relocate(tenant, r).await?
                    {
                        p = Problem::Reordered { seq, original_seq };
                    }
                    return fail(report, p);
                }
                report.checked += 1;
                report.first_seq.get_or_insert(r.seq);
                report.last_seq = Some(r.seq);
                if let Some(a) = r.retention_anchor() {
                    retention = Some(a);
                }
            }
            if page.len() < VERIFY_PAGE {
                break;
            }
        }
        report.last_hash.clone_from(&cur.prev_hash);
        let chain_seq = cur.next_seq - 1;
        match &head {
            Some((hs, _)) if *hs > chain_seq => {
                return fail(
                    report,
                    Problem::Missing {
                        from: chain_seq + 1,
                        to: *hs,
                    },
                );
            }
            Some((hs, hh)) if *hs == chain_seq && *hh == cur.prev_hash => {}
            None if chain_seq == 0 => {}
            _ => {
                return fail(
                    report,
                    Problem::HeadMismatch {
                        head_seq: head.as_ref().map(|h| h.0),
                        head_hash: head.as_ref().map(|h| h.1.clone()),
                        chain_seq,
                        chain_hash: cur.prev_hash,
                    },
                );
            }
        }
        // Records after the head we walked to that a current head does not cover were not appended by us.
        // (Read them before the head: a legitimate append commits its records and the head together.)
        let beyond: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM audit_log WHERE tenant = $1 AND seq > $2")
            .bind(tenant)
            .bind(chain_seq)
            .fetch_one(self.pool())
            .await?;
        if let Some(seq) = beyond {
            let now_head = self.read_head(tenant).await?.map_or(0, |h| h.0);
            if seq > now_head {
                return fail(report, Problem::Appended { seq });
            }
        }
        if let Some(a) = &anchor
            && retention.as_ref() != Some(&(a.seq, a.hash.clone()))
        {
            return fail(report, Problem::AnchorUnconfirmed { anchor_seq: a.seq });
        }
        report.ok = true;
        Ok(report)
    }

    /// One retention batch: delete up to `limit` records older than `older_than` from the start of the chain.
    async fn prune_batch(&self, tenant: &str, older_than: &str, limit: usize) -> Result<usize, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // The head lock serializes prunes with each other and with appends of this tenant.
        if sqlx::query("UPDATE audit_head SET seq = seq WHERE tenant = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 0
        {
            return Ok(0);
        }
        let anchor: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM audit_anchor WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        let mut cur = match anchor {
            Some((seq, hash)) => Cursor {
                next_seq: seq + 1,
                prev_hash: hash,
            },
            None => Cursor {
                next_seq: 1,
                prev_hash: GENESIS_HASH.to_string(),
            },
        };
        let from = cur.next_seq;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE tenant = $1 AND seq >= $2 ORDER BY seq LIMIT {limit}"
        ))
        .bind(tenant)
        .bind(from)
        .fetch_all(&mut *tx)
        .await?;
        let mut through: Option<(i64, String)> = None;
        for row in &rows {
            let r = RawRecord::from_row(row)?;
            if r.at.as_str() >= older_than {
                break;
            }
            if let Some(p) = cur.step(&r) {
                return Err(StoreError::Corrupt(format!(
                    "audit chain of tenant {tenant} does not verify at seq {}: {p}; refusing to prune it \
                     (run `scimgate audit verify`)",
                    p.seq()
                )));
            }
            through = Some((r.seq, r.hash));
        }
        let Some((seq, hash)) = through else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM audit_log WHERE tenant = $1 AND seq >= $2 AND seq <= $3")
            .bind(tenant)
            .bind(from)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let n = usize::try_from(seq - from + 1).unwrap_or(0);
        if usize::try_from(deleted).ok() != Some(n) {
            return Err(StoreError::Corrupt(format!(
                "audit prune of tenant {tenant}: expected to delete {n} records, deleted {deleted}"
            )));
        }
        let ts = now();
        sqlx::query(
            "INSERT INTO audit_anchor (tenant, seq, hash, pruned_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, \
             pruned_at = excluded.pruned_at",
        )
        .bind(tenant)
        .bind(seq)
        .bind(&hash)
        .bind(&ts)
        .execute(&mut *tx)
        .await?;
        let record = AuditEntry {
            kind: RETENTION_KIND.into(),
            actor: "scimgate audit prune".into(),
            identity_id: None,
            request_id: None,
            data: serde_json::json!({
                "older_than": older_than,
                "from_seq": from,
                "through_seq": seq,
                "anchor_hash": hash,
                "records": n,
            }),
        };
        append_tx(&mut tx, tenant, &ts, std::slice::from_ref(&record)).await?;
        tx.commit().await?;
        Ok(n)
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn append(&self, tenant: &str, at: &str, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        append_tx(&mut tx, tenant, at, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_page(&self, tenant: &str, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.raw_page(tenant, after_seq, i64::MAX, limit)
            .await?
            .into_iter()
            .map(RawRecord::into_record)
            .collect()
    }

    async fn audit_export(
        &self,
        tenant: &str,
        filter: &AuditFilter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_log WHERE tenant = $1 AND seq > $2");
        let mut binds: Vec<&str> = Vec::new();
        for (cond, value) in [
            ("at >=", &filter.from),
            ("at <", &filter.to),
            ("identity_id =", &filter.identity),
        ] {
            if let Some(v) = value {
                binds.push(v);
                sql.push_str(&format!(" AND {cond} ${}", binds.len() + 2));
            }
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT {limit}"));
        let mut q = sqlx::query(&sql).bind(tenant).bind(after_seq);
        for b in binds {
            q = q.bind(b);
        }
        q.fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| RawRecord::from_row(r)?.into_record())
            .collect()
    }

    async fn verify(&self, tenant: &str) -> Result<VerifyReport, StoreError> {
        let mut anchor = self.read_anchor(tenant).await?;
        let mut tries = 0;
        loop {
            let report = self.verify_once(tenant, anchor.clone()).await?;
            let now_anchor = self.read_anchor(tenant).await?;
            tries += 1;
            // A prune that ran meanwhile moves the anchor and deletes records: verify again from the new anchor.
            // Each retry needs the anchor to have moved again, and retention moves it a bounded number of times,
            // so this ends; the cap only guards against a pruner that never stops.
            if report.ok || now_anchor == anchor || tries == 100 {
                return Ok(report);
            }
            anchor = now_anchor;
        }
    }

    async fn prune(&self, tenant: &str, older_than: &str) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.prune_batch(tenant, older_than, PRUNE_BATCH).await?;
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn tenants_with_audit(&self) -> Result<Vec<String>, StoreError> {
        let mut tenants: Vec<String> = sqlx::query_scalar(
            "SELECT tenant FROM audit_head UNION SELECT tenant FROM audit_anchor \
             UNION SELECT DISTINCT tenant FROM audit_log",
        )
        .fetch_all(self.pool())
        .await?;
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(kind: &'a str, actor: &'a str) -> HashInput<'a> {
        HashInput {
            tenant: "t",
            seq: 1,
            at: "2026-01-01T00:00:00.000Z",
            kind,
            actor,
            identity_id: None,
            request_id: None,
            data: "{}",
            prev_hash: GENESIS_HASH,
        }
    }

    #[test]
    fn field_boundaries_cannot_shift() {
        assert_ne!(input("ab", "c").hash(), input("a", "bc").hash());
        assert_ne!(input("ab", "c").encode(), input("a", "bc").encode());
        assert_ne!(input("", "abc").hash(), input("abc", "").hash());
        let mut a = input("k", "x");
        a.tenant = "ab";
        a.at = "c";
        let mut b = a;
        b.tenant = "a";
        b.at = "bc";
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn absent_and_empty_and_swapped_options_differ() {
        let base = input("request", "okta");
        let empty = HashInput {
            identity_id: Some(""),
            ..base
        };
        assert_ne!(base.hash(), empty.hash());
        let id_only = HashInput {
            identity_id: Some("x"),
            ..base
        };
        let req_only = HashInput {
            request_id: Some("x"),
            ..base
        };
        assert_ne!(id_only.hash(), req_only.hash());
        // A string field cannot absorb an absent neighbour either.
        let shifted = HashInput {
            actor: "okta\0",
            ..base
        };
        assert_ne!(base.hash(), shifted.hash());
    }

    #[test]
    fn every_field_is_covered() {
        let base = input("request", "okta");
        let variants = [
            HashInput { tenant: "u", ..base },
            HashInput { seq: 2, ..base },
            HashInput {
                at: "2026-01-01T00:00:00.001Z",
                ..base
            },
            HashInput { kind: "admin", ..base },
            HashInput { actor: "entra", ..base },
            HashInput {
                identity_id: Some("i"),
                ..base
            },
            HashInput {
                request_id: Some("r"),
                ..base
            },
            HashInput {
                data: "{\"a\":1}",
                ..base
            },
            HashInput {
                prev_hash: "1111111111111111111111111111111111111111111111111111111111111111",
                ..base
            },
        ];
        let mut seen = std::collections::HashSet::new();
        seen.insert(base.hash());
        for v in &variants {
            assert!(seen.insert(v.hash()), "{v:?} hashes like another input");
        }
    }

    #[test]
    fn encoding_is_stable() {
        // A known answer: the encoding is part of the stored data and must never change silently.
        let i = HashInput {
            tenant: "acme",
            seq: 7,
            at: "2026-01-31T09:00:00.000Z",
            kind: "request",
            actor: "okta",
            identity_id: Some("u1"),
            request_id: None,
            data: "{\"op\":\"create\"}",
            prev_hash: GENESIS_HASH,
        };
        let mut want = b"scimgate-audit-v1".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 4]);
        want.extend_from_slice(b"acme");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 24]);
        want.extend_from_slice(b"2026-01-31T09:00:00.000Z");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(b"request");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 4]);
        want.extend_from_slice(b"okta");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(b"u1");
        want.push(0);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 15]);
        want.extend_from_slice(b"{\"op\":\"create\"}");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 64]);
        want.extend_from_slice(GENESIS_HASH.as_bytes());
        assert_eq!(i.encode(), want);
        assert_eq!(i.hash(), hex(&Sha256::digest(&want)));
        assert_eq!(i.hash().len(), 64);
        assert!(
            i.hash()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn hex_and_genesis() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(GENESIS_HASH.len(), 64);
        assert!(GENESIS_HASH.bytes().all(|b| b == b'0'));
        // SHA-256 of the empty string, to pin the digest and the hex form together.
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn raw(seq: i64, prev: &str) -> RawRecord {
        let mut r = RawRecord {
            tenant: "t".into(),
            seq,
            at: "2026-01-01T00:00:00.000Z".into(),
            kind: "request".into(),
            actor: "a".into(),
            identity_id: None,
            request_id: None,
            data: "{}".into(),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        r.hash = r.input_at(seq).hash();
        r
    }

    #[test]
    fn cursor_classifies() {
        let r1 = raw(1, GENESIS_HASH);
        let r2 = raw(2, &r1.hash);
        let r3 = raw(3, &r2.hash);
        let fresh = || Cursor {
            next_seq: 1,
            prev_hash: GENESIS_HASH.into(),
        };
        let mut c = fresh();
        assert_eq!(c.step(&r1), None);
        assert_eq!(c.step(&r2), None);
        assert_eq!(c.step(&r3), None);
        // Gap.
        let mut c = fresh();
        assert_eq!(c.step(&r1), None);
        assert_eq!(c.step(&r3), Some(Problem::Missing { from: 2, to: 2 }));
        // Edit.
        let mut edited = raw(2, &r1.hash);
        edited.data = "{\"x\":1}".into();
        let mut c = fresh();
        assert_eq!(c.step(&r1), None);
        assert_eq!(c.step(&edited), Some(Problem::Edited { seq: 2 }));
        // A correctly hashed replacement breaks the link of the next record.
        let mut forged = raw(2, &r1.hash);
        forged.actor = "mallory".into();
        forged.hash = forged.input_at(2).hash();
        let mut c = fresh();
        assert_eq!(c.step(&r1), None);
        assert_eq!(c.step(&forged), None);
        assert_eq!(c.step(&r3), Some(Problem::BrokenLink { seq: 3 }));
    }

    #[test]
    fn report_prints_and_serializes() {
        let r = VerifyReport {
            tenant: "acme".into(),
            ok: false,
            checked: 16,
            first_seq: Some(1),
            last_seq: Some(16),
            last_hash: GENESIS_HASH.into(),
            anchor: None,
            problem: Some(Problem::Edited { seq: 17 }),
        };
        let s = r.to_string();
        assert!(s.contains("BROKEN at seq 17"), "{s}");
        assert!(s.contains("edited"), "{s}");
        let v = serde_json::to_value(&r).expect("serialize");
        assert_eq!(v["problem"]["problem"], "edited");
        assert_eq!(v["problem"]["seq"], 17);
        let back: VerifyReport = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, r);
    }
}
