//! The outbox: downstream work that is durable before the IdP hears 2xx.
//!
//! [`OutboxNew`] rows ride in [`crate::Effects`] and are inserted in the same transaction as the identity change
//! that caused them. Workers [`OutboxStore::claim`] ready rows with a lease, per target, leavers' locks first; a row
//! is ready when nothing older for the same identity and target is still pending or running, so order is kept per
//! identity and target while different identities run in parallel. On PostgreSQL the claim takes
//! `FOR UPDATE SKIP LOCKED`, so several gateway processes share one queue; SQLite runs one process. A finished row
//! records its outcome, the account id and an audit record in one transaction. Dead rows are never deleted; an
//! operator replays them.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::audit::{AuditEntry, append_tx};
use crate::lower::Dialect;
use crate::{SqlStore, StoreError};

/// A new outbox row, written with the change that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxNew {
    pub id: String,
    pub target: String,
    /// The row's number within its decision (the identity-state version gives the rest of the order).
    pub item_no: i64,
    pub plan_id: Option<String>,
    /// `apply` or `remove`.
    pub operation: String,
    /// 1 for a leaver's lock: claimed ahead of everything else.
    pub priority: i64,
    /// JSON: the plan items and the desired account.
    pub payload: String,
    /// The sealed password, if one must reach the target.
    pub secret: Option<String>,
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub tenant: String,
    pub id: String,
    pub identity_id: String,
    pub target: String,
    pub seq: i64,
    pub item_no: i64,
    pub plan_id: Option<String>,
    pub operation: String,
    pub priority: i64,
    pub payload: String,
    pub secret: Option<String>,
    /// pending, running, done, dead, superseded.
    pub status: String,
    pub attempts: i64,
    pub next_at: String,
    pub lease_owner: Option<String>,
    pub lease_until: Option<String>,
    pub last_error: Option<String>,
    pub created: String,
    pub updated: String,
    pub done_at: Option<String>,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Delivered. `account`: the adapter's account id (JSON) to remember, or `None` when the account was removed.
    Done { account: Option<String> },
    /// Try again at `next_at`.
    Retry { next_at: String, error: String },
    /// Out of attempts, or an error that retrying cannot fix.
    Dead { error: String },
    /// A newer row for the same identity and target was already delivered: this one would only go back in time.
    Superseded,
}

/// Which rows a listing wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxFilter {
    pub status: Option<String>,
    pub target: Option<String>,
    pub identity: Option<String>,
    /// Rows created after this id (ids are UUIDv7, so this pages in creation order).
    pub after: Option<String>,
    pub limit: usize,
}

#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Lease up to `limit` ready (pending, due, first in line) rows of `target` to `owner` until `lease_until`,
    /// leavers' locks first, then oldest first. Claiming counts an attempt.
    async fn claim(
        &self,
        target: &str,
        owner: &str,
        now: &str,
        lease_until: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Record how a leased delivery ended, with its audit records. `false`: the lease was lost (another worker
    /// took the row over after it expired) and nothing was written.
    async fn finish(
        &self,
        entry: &OutboxEntry,
        owner: &str,
        now: &str,
        outcome: &Outcome,
        audit: &[AuditEntry],
    ) -> Result<bool, StoreError>;
    /// Whether a newer row for the same identity and target was already delivered.
    async fn superseded(&self, entry: &OutboxEntry) -> Result<bool, StoreError>;
    /// The account id (JSON) recorded for an identity on a target.
    async fn target_account(&self, tenant: &str, identity: &str, target: &str) -> Result<Option<String>, StoreError>;
    async fn outbox_list(&self, tenant: &str, filter: &OutboxFilter) -> Result<Vec<OutboxEntry>, StoreError>;
    async fn outbox_get(&self, tenant: &str, id: &str) -> Result<Option<OutboxEntry>, StoreError>;
    /// Put a dead row back in the queue (attempts start again), with an audit record. `false`: not dead.
    async fn replay(&self, tenant: &str, id: &str, now: &str, audit: &[AuditEntry]) -> Result<bool, StoreError>;
    /// Row counts by (target, status) for pending, running and dead rows, over every tenant (metrics).
    async fn outbox_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError>;
    /// The oldest `next_at` of a pending row per target: how far behind each target is.
    async fn outbox_oldest(&self) -> Result<Vec<(String, String)>, StoreError>;
    /// Put rows whose lease ran out (their worker died or hung) back to pending. Returns how many.
    async fn reclaim_expired(&self, now: &str) -> Result<u64, StoreError>;
    /// Return every running row leased by anyone to pending (a single SQLite process starting up: whoever held
    /// those leases is gone). Returns how many.
    async fn release_leases(&self, now: &str) -> Result<u64, StoreError>;
    /// Delete delivered and superseded rows finished before `before` (dead rows stay). Returns how many.
    async fn prune_done(&self, before: &str) -> Result<u64, StoreError>;
}

const COLUMNS: &str = "tenant, id, identity_id, target, seq, item_no, plan_id, operation, priority, payload, secret, \
                       status, attempts, next_at, lease_owner, lease_until, last_error, created, updated, done_at";

fn row(r: &AnyRow) -> Result<OutboxEntry, StoreError> {
    Ok(OutboxEntry {
        tenant: r.try_get("tenant")?,
        id: r.try_get("id")?,
        identity_id: r.try_get("identity_id")?,
        target: r.try_get("target")?,
        seq: r.try_get("seq")?,
        item_no: r.try_get("item_no")?,
        plan_id: r.try_get("plan_id")?,
        operation: r.try_get("operation")?,
        priority: r.try_get("priority")?,
        payload: r.try_get("payload")?,
        secret: r.try_get("secret")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_at: r.try_get("next_at")?,
        lease_owner: r.try_get("lease_owner")?,
        lease_until: r.try_get("lease_until")?,
        last_error: r.try_get("last_error")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
        done_at: r.try_get("done_at")?,
    })
}

/// Insert the outbox rows of one identity's effects. `seq` is the identity-state version the effects wrote.
pub(crate) const INSERT_HEAD: &str = "INSERT INTO outbox (tenant, id, identity_id, target, seq, item_no, plan_id, \
     operation, priority, payload, secret, status, attempts, next_at, created, updated)";
pub(crate) const INSERT_WIDTH: usize = 16;

/// The values of one outbox row, in [`INSERT_HEAD`] order.
pub(crate) fn insert_args<'a>(
    tenant: &'a str,
    identity: &'a str,
    seq: i64,
    now: &'a str,
    o: &'a OutboxNew,
) -> Vec<crate::sql::Arg<'a>> {
    use crate::sql::Arg::{Int, Text};
    vec![
        Text(Some(tenant)),
        Text(Some(&o.id)),
        Text(Some(identity)),
        Text(Some(&o.target)),
        Int(seq),
        Int(o.item_no),
        Text(o.plan_id.as_deref()),
        Text(Some(&o.operation)),
        Int(o.priority),
        Text(Some(&o.payload)),
        Text(o.secret.as_deref()),
        Text(Some("pending")),
        Int(0),
        Text(Some(now)),
        Text(Some(now)),
        Text(Some(now)),
    ]
}

pub(crate) async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    identity: &str,
    seq: i64,
    now: &str,
    rows: &[OutboxNew],
) -> Result<(), StoreError> {
    let args: Vec<_> = rows
        .iter()
        .map(|o| insert_args(tenant, identity, seq, now, o))
        .collect();
    crate::sql::insert_rows(tx, INSERT_HEAD, "", INSERT_WIDTH, &args).await?;
    Ok(())
}

#[async_trait]
impl OutboxStore for SqlStore {
    async fn claim(
        &self,
        target: &str,
        owner: &str,
        now: &str,
        lease_until: &str,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        // Ready: pending and due, and nothing older for the same identity and target still waits. Rows whose
        // lease ran out are put back to pending by `reclaim_expired` first. The scan follows `outbox_ready`
        // (target, status, priority DESC, created, id), so it reads only this target's pending rows, in order.
        let lock = if self.dialect() == Dialect::Postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE outbox SET status = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1, \
             updated = $3 WHERE (tenant, id) IN (\
               SELECT o.tenant, o.id FROM outbox o WHERE o.target = $4 AND o.status = 'pending' \
                 AND o.next_at <= $3 AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.tenant = o.tenant \
                   AND p.identity_id = o.identity_id AND p.target = o.target \
                   AND (p.seq < o.seq OR (p.seq = o.seq AND p.item_no < o.item_no)) \
                   AND (p.status = 'pending' OR p.status = 'running')) \
               ORDER BY o.priority DESC, o.created, o.id LIMIT $5{lock}) \
             RETURNING {COLUMNS}"
        );
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until)
            .bind(now)
            .bind(target)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows.iter().map(row).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)));
        Ok(out)
    }

    async fn finish(
        &self,
        e: &OutboxEntry,
        owner: &str,
        now: &str,
        outcome: &Outcome,
        audit: &[AuditEntry],
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let guard = "WHERE tenant = $1 AND id = $2 AND status = 'running' AND lease_owner = $3";
        let done = match outcome {
            Outcome::Done { .. } | Outcome::Superseded => {
                let status = if matches!(outcome, Outcome::Superseded) {
                    "superseded"
                } else {
                    "done"
                };
                sqlx::query(&format!(
                    "UPDATE outbox SET status = '{status}', secret = NULL, lease_owner = NULL, lease_until = NULL, \
                     last_error = NULL, updated = $4, done_at = $4 {guard}"
                ))
                .bind(&e.tenant)
                .bind(&e.id)
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?
            }
            Outcome::Retry { next_at, error } => {
                sqlx::query(&format!(
                    "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_until = NULL, next_at = $4, \
                     last_error = $5, updated = $6 {guard}"
                ))
                .bind(&e.tenant)
                .bind(&e.id)
                .bind(owner)
                .bind(next_at)
                .bind(error)
                .bind(now)
                .execute(&mut *tx)
                .await?
            }
            Outcome::Dead { error } => {
                sqlx::query(&format!(
                    "UPDATE outbox SET status = 'dead', lease_owner = NULL, lease_until = NULL, last_error = $4, \
                     updated = $5 {guard}"
                ))
                .bind(&e.tenant)
                .bind(&e.id)
                .bind(owner)
                .bind(error)
                .bind(now)
                .execute(&mut *tx)
                .await?
            }
        };
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if let Outcome::Done { account } = outcome {
            match account {
                Some(acc) => {
                    sqlx::query(
                        "INSERT INTO target_accounts (tenant, identity_id, target, account, updated) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, identity_id, target) DO UPDATE SET \
                         account = excluded.account, updated = excluded.updated",
                    )
                    .bind(&e.tenant)
                    .bind(&e.identity_id)
                    .bind(&e.target)
                    .bind(acc)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM target_accounts WHERE tenant = $1 AND identity_id = $2 AND target = $3")
                        .bind(&e.tenant)
                        .bind(&e.identity_id)
                        .bind(&e.target)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        append_tx(&mut tx, &e.tenant, now, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn superseded(&self, e: &OutboxEntry) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM outbox WHERE tenant = $1 AND identity_id = $2 AND target = $3 \
             AND (seq > $4 OR (seq = $4 AND item_no > $5)) AND status = 'done'",
        )
        .bind(&e.tenant)
        .bind(&e.identity_id)
        .bind(&e.target)
        .bind(e.seq)
        .bind(e.item_no)
        .fetch_one(self.pool())
        .await?;
        Ok(r.try_get::<i64, _>("n")? > 0)
    }

    async fn target_account(&self, tenant: &str, identity: &str, target: &str) -> Result<Option<String>, StoreError> {
        let r =
            sqlx::query("SELECT account FROM target_accounts WHERE tenant = $1 AND identity_id = $2 AND target = $3")
                .bind(tenant)
                .bind(identity)
                .bind(target)
                .fetch_optional(self.pool())
                .await?;
        Ok(match r {
            Some(r) => Some(r.try_get("account")?),
            None => None,
        })
    }

    async fn outbox_list(&self, tenant: &str, f: &OutboxFilter) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM outbox WHERE tenant = $1");
        let mut binds = vec![tenant];
        for (cond, v) in [
            ("status =", &f.status),
            ("target =", &f.target),
            ("identity_id =", &f.identity),
            ("id >", &f.after),
        ] {
            if let Some(v) = v {
                binds.push(v);
                sql.push_str(&format!(" AND {cond} ${}", binds.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {}", f.limit.clamp(1, 1000)));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        q.fetch_all(self.pool()).await?.iter().map(row).collect()
    }

    async fn outbox_get(&self, tenant: &str, id: &str) -> Result<Option<OutboxEntry>, StoreError> {
        sqlx::query(&format!("SELECT {COLUMNS} FROM outbox WHERE tenant = $1 AND id = $2"))
            .bind(tenant)
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    async fn replay(&self, tenant: &str, id: &str, now: &str, audit: &[AuditEntry]) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let done = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_at = $1, updated = $1 \
             WHERE tenant = $2 AND id = $3 AND status = 'dead'",
        )
        .bind(now)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        append_tx(&mut tx, tenant, now, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        sqlx::query(
            "SELECT target, status, COUNT(*) AS n FROM outbox WHERE status IN ('pending', 'running', 'dead') \
             GROUP BY target, status",
        )
        .fetch_all(self.pool())
        .await?
        .iter()
        .map(|r| Ok((r.try_get("target")?, r.try_get("status")?, r.try_get("n")?)))
        .collect()
    }

    async fn outbox_oldest(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query("SELECT target, MIN(created) AS oldest FROM outbox WHERE status = 'pending' GROUP BY target")
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("target")?, r.try_get("oldest")?)))
            .collect()
    }

    async fn reclaim_expired(&self, now: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated = $1 \
             WHERE status = 'running' AND lease_until < $1",
        )
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn release_leases(&self, now: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE outbox SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated = $1 \
             WHERE status = 'running'",
        )
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    async fn prune_done(&self, before: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM outbox WHERE status IN ('done', 'superseded') AND done_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
