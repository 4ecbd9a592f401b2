//! `scimgate audit verify | export | prune`: the audit trail from the command line.
//!
//! - [`verify`]: walk each tenant's hash chain and report the first problem (edited, moved, missing, inserted
//!   records; a moved anchor). [`VerifyOutcome`] prints one line per tenant and serializes as JSON.
//! - [`export`]: the records as JSON lines, filtered by time range and identity.
//! - [`prune`]: retention: delete records older than N days (a verified prefix of each chain) and move the anchor.
//!
//! The chain itself is described in `scimgate_store::audit`. This module depends only on the store crate, so it
//! works whatever the rest of the gateway's configuration is.

use std::fmt;
use std::io::Write;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use scimgate_scim::resource::{format_datetime, parse_datetime};
use scimgate_store::audit::{AuditFilter, AuditStore, VerifyReport};
use scimgate_store::{SqlStore, StoreError};

const EXPORT_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AuditCliError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the export: {0}")]
    Json(#[from] serde_json::Error),
    #[error("--{flag} {value:?} is not an RFC 3339 date-time (e.g. 2026-01-31T09:00:00Z)")]
    BadTime { flag: &'static str, value: String },
    #[error("--from {from} is not before --to {to}")]
    EmptyRange { from: String, to: String },
    #[error("--older-than-days must be between 1 and 1000000, not {0}")]
    BadRetention(u32),
}

/// Every verified tenant, and whether all of them are intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    pub ok: bool,
    pub tenants: Vec<VerifyReport>,
}

impl fmt::Display for VerifyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.tenants {
            writeln!(f, "{r}")?;
        }
        if self.tenants.is_empty() {
            write!(f, "no audit trail to verify")
        } else if self.ok {
            write!(f, "audit trail intact ({} tenants)", self.tenants.len())
        } else {
            let broken: Vec<&str> = self
                .tenants
                .iter()
                .filter(|r| !r.ok)
                .map(|r| r.tenant.as_str())
                .collect();
            write!(f, "audit trail BROKEN for tenant(s): {}", broken.join(", "))
        }
    }
}

/// Records deleted per tenant by [`prune`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneOutcome {
    /// Records older than this were pruned (stored time form).
    pub cutoff: String,
    pub tenants: Vec<(String, usize)>,
}

impl fmt::Display for PruneOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (t, n) in &self.tenants {
            writeln!(f, "tenant {t}: pruned {n} records older than {}", self.cutoff)?;
        }
        let total: usize = self.tenants.iter().map(|(_, n)| n).sum();
        write!(f, "pruned {total} records in {} tenants", self.tenants.len())
    }
}

async fn tenants(store: &SqlStore, tenant: Option<&str>) -> Result<Vec<String>, StoreError> {
    match tenant {
        Some(t) => Ok(vec![t.to_string()]),
        None => store.tenants_with_audit().await,
    }
}

fn stored_time(flag: &'static str, value: Option<&str>) -> Result<Option<String>, AuditCliError> {
    value
        .map(|v| {
            parse_datetime(v)
                .map(format_datetime)
                .ok_or_else(|| AuditCliError::BadTime {
                    flag,
                    value: v.to_string(),
                })
        })
        .transpose()
}

/// Verify one tenant's chain, or every tenant that has one. The caller prints the outcome (or its JSON) and
/// exits non-zero unless `ok`.
pub async fn verify(store: &SqlStore, tenant: Option<&str>) -> Result<VerifyOutcome, AuditCliError> {
    let mut reports = Vec::new();
    for t in tenants(store, tenant).await? {
        reports.push(store.verify(&t).await?);
    }
    Ok(VerifyOutcome {
        ok: reports.iter().all(|r| r.ok),
        tenants: reports,
    })
}

/// Write the records of one tenant (or of every tenant, one after the other) as JSON lines, in seq order:
/// `from` inclusive, `to` exclusive (RFC 3339), and only records about `identity` if given. Returns how many
/// records were written. The records are written as stored; run [`verify`] to know they are intact.
pub async fn export(
    store: &SqlStore,
    tenant: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
    identity: Option<&str>,
    out: &mut impl Write,
) -> Result<u64, AuditCliError> {
    let filter = AuditFilter {
        from: stored_time("from", from)?,
        to: stored_time("to", to)?,
        identity: identity.map(str::to_string),
    };
    if let (Some(f), Some(t)) = (&filter.from, &filter.to)
        && f >= t
    {
        return Err(AuditCliError::EmptyRange {
            from: f.clone(),
            to: t.clone(),
        });
    }
    let mut written = 0;
    for t in tenants(store, tenant).await? {
        let mut after = 0;
        loop {
            let page = store.audit_export(&t, &filter, after, EXPORT_PAGE).await?;
            for r in &page {
                serde_json::to_writer(&mut *out, r)?;
                out.write_all(b"\n")?;
                written += 1;
            }
            match page.last() {
                Some(r) if page.len() == EXPORT_PAGE => after = r.seq,
                _ => break,
            }
        }
    }
    out.flush()?;
    Ok(written)
}

/// Retention: in one tenant (or every tenant), delete the records older than `older_than_days` days, as of now.
pub async fn prune(
    store: &SqlStore,
    tenant: Option<&str>,
    older_than_days: u32,
) -> Result<PruneOutcome, AuditCliError> {
    prune_before(store, tenant, Utc::now(), older_than_days).await
}

/// [`prune`] as of `now` (tests and callers with their own clock).
pub async fn prune_before(
    store: &SqlStore,
    tenant: Option<&str>,
    now: DateTime<Utc>,
    older_than_days: u32,
) -> Result<PruneOutcome, AuditCliError> {
    if !(1..=1_000_000).contains(&older_than_days) {
        return Err(AuditCliError::BadRetention(older_than_days));
    }
    let cutoff = TimeDelta::try_days(i64::from(older_than_days))
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or(AuditCliError::BadRetention(older_than_days))?;
    let cutoff = format_datetime(cutoff);
    let mut done = Vec::new();
    for t in tenants(store, tenant).await? {
        let n = store.prune(&t, &cutoff).await?;
        done.push((t, n));
    }
    Ok(PruneOutcome { cutoff, tenants: done })
}
