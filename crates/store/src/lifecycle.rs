//! Lifecycle records: identity state, plans, approvals and SoD exceptions.
//!
//! The store keeps the policy engine's documents as opaque JSON text: it knows nothing of policy. What it
//! guarantees is atomicity: [`Effects`] are written in the same transaction as the identity change that caused
//! them, and every update of identity state or of an approval is a compare-and-swap on its version.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::StoreError;

/// An identity's lifecycle state as last accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityState {
    pub identity_id: String,
    pub version: i64,
    pub leaver_since: Option<String>,
    /// JSON: what the identity holds on each target.
    pub current: String,
    /// JSON: the last evaluation (state, roles, SoD hits).
    pub evaluation: String,
    pub policy_hash: String,
    /// When the identity must be evaluated again (the durable timer).
    pub wakeup_at: Option<String>,
    pub updated: String,
}

/// A new identity state. `expect_version: None` means it must not exist yet.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    pub expect_version: Option<i64>,
    pub leaver_since: Option<String>,
    pub current: String,
    pub evaluation: String,
    pub policy_hash: String,
    pub wakeup_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanRecord {
    pub id: String,
    pub identity_id: String,
    pub created: String,
    /// What caused the plan: create, replace, patch, delete, membership, timer, approval, reload.
    pub cause: String,
    /// `enforce` or `shadow` (computed and recorded, never executed).
    pub mode: String,
    pub policy_hash: String,
    /// JSON: the plan items with their rationale.
    pub items: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    pub id: String,
    pub identity_id: String,
    /// pending, approved, denied, expired, cancelled.
    pub status: String,
    pub created: String,
    pub escalate_at: Option<String>,
    pub expires_at: String,
    pub decided_at: Option<String>,
    /// Compare-and-swap version: an update must name the version it read.
    pub version: i64,
    /// JSON: the held item, its stages with their approvers, and the decision history.
    pub request: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionRecord {
    pub identity_id: String,
    pub rule: String,
    pub approver: String,
    pub approval_id: String,
    pub created: String,
    pub expires_at: String,
}

/// What a policy decision on an existing identity reads besides the identity itself: its lifecycle state, its SoD
/// exceptions (by rule) and its pending approvals (oldest first). Read in one statement
/// ([`LifecycleStore::decision_inputs`](crate::LifecycleStore::decision_inputs)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionInputs {
    pub state: Option<IdentityState>,
    pub exceptions: Vec<ExceptionRecord>,
    pub pending: Vec<ApprovalRecord>,
}

/// A user about to change and everything the change reads, in one statement
/// ([`LifecycleStore::user_for_change`](crate::LifecycleStore::user_for_change)): the user, its groups (id,
/// displayName, by id) and its decision inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct UserForChange {
    pub user: crate::Stored,
    pub groups: Vec<(String, String)>,
    pub inputs: DecisionInputs,
}

/// Everything a change decides for one identity, written atomically with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub identity_id: String,
    pub state: Option<StateWrite>,
    pub plan: Option<PlanRecord>,
    pub new_approvals: Vec<ApprovalRecord>,
    /// Pending approvals that no longer apply (the identity changed).
    pub cancel_approvals: Vec<String>,
    /// Approvals decided, escalated or re-addressed; each `version` is the one read.
    pub update_approvals: Vec<ApprovalRecord>,
    pub new_exceptions: Vec<ExceptionRecord>,
    /// Drop the identity's SoD exceptions (a rehire starts from nothing).
    pub clear_exceptions: bool,
    /// Audit records of these effects (decisions, approvals).
    pub audit: Vec<crate::audit::AuditEntry>,
    /// Downstream work for the outbox. Needs `state`: its version orders the rows within the identity.
    pub outbox: Vec<crate::outbox::OutboxNew>,
}

/// Every audit entry of a change: the request's, then each identity's effects'.
pub(crate) fn audit_entries<'a>(
    request: &'a [crate::audit::AuditEntry],
    effects: &'a [Effects],
) -> Vec<crate::audit::AuditEntry> {
    request
        .iter()
        .chain(effects.iter().flat_map(|e| e.audit.iter()))
        .cloned()
        .collect()
}

/// Insert plans with multi-row statements ([`crate::sql::insert_rows`]).
pub(crate) async fn insert_plans(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    plans: &[&PlanRecord],
) -> Result<(), StoreError> {
    use crate::sql::Arg;
    let rows: Vec<Vec<Arg>> = plans
        .iter()
        .map(|p| {
            vec![
                Arg::Text(Some(tenant)),
                Arg::Text(Some(&p.id)),
                Arg::Text(Some(&p.identity_id)),
                Arg::Text(Some(&p.created)),
                Arg::Text(Some(&p.cause)),
                Arg::Text(Some(&p.mode)),
                Arg::Text(Some(&p.policy_hash)),
                Arg::Text(Some(&p.items)),
            ]
        })
        .collect();
    let head = "INSERT INTO plans (tenant, id, identity_id, created, cause, mode, policy_hash, items)";
    crate::sql::insert_rows(tx, head, "", 8, &rows).await?;
    Ok(())
}

pub(crate) async fn apply(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    now: &str,
    effects: &[Effects],
) -> Result<(), StoreError> {
    let mut plans = Vec::new();
    apply_deferring_plans(tx, tenant, now, effects, &mut plans).await?;
    insert_plans(tx, tenant, &plans).await
}

/// [`apply`], except that the plans are pushed onto `plans` for one [`insert_plans`] of a whole group (a plan is
/// a plain insert that nothing in the transaction reads back).
pub(crate) async fn apply_deferring_plans<'e>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    tenant: &str,
    now: &str,
    effects: &'e [Effects],
    plans: &mut Vec<&'e PlanRecord>,
) -> Result<(), StoreError> {
    for e in effects {
        if let Some(s) = &e.state {
            let done = match s.expect_version {
                None => sqlx::query(
                    "INSERT INTO identity_state (tenant, identity_id, version, leaver_since, current, evaluation, \
                     policy_hash, wakeup_at, updated) VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(tenant)
                .bind(&e.identity_id)
                .bind(s.leaver_since.as_deref())
                .bind(&s.current)
                .bind(&s.evaluation)
                .bind(&s.policy_hash)
                .bind(s.wakeup_at.as_deref())
                .bind(now)
                .execute(&mut **tx)
                .await?,
                Some(v) => sqlx::query(
                    "UPDATE identity_state SET version = version + 1, leaver_since = $1, current = $2, evaluation = $3, \
                     policy_hash = $4, wakeup_at = $5, updated = $6 WHERE tenant = $7 AND identity_id = $8 AND version = $9",
                )
                .bind(s.leaver_since.as_deref())
                .bind(&s.current)
                .bind(&s.evaluation)
                .bind(&s.policy_hash)
                .bind(s.wakeup_at.as_deref())
                .bind(now)
                .bind(tenant)
                .bind(&e.identity_id)
                .bind(v)
                .execute(&mut **tx)
                .await?,
            };
            if done.rows_affected() == 0 {
                return Err(StoreError::StateConflict);
            }
        }
        if !e.outbox.is_empty() {
            let seq = match &e.state {
                Some(StateWrite {
                    expect_version: Some(v),
                    ..
                }) => v + 1,
                Some(_) => 1,
                None => {
                    return Err(StoreError::Corrupt(
                        "outbox rows without an identity-state write cannot be ordered".into(),
                    ));
                }
            };
            crate::outbox::insert(tx, tenant, &e.identity_id, seq, now, &e.outbox).await?;
        }
        if let Some(p) = &e.plan {
            plans.push(p);
        }
        for id in &e.cancel_approvals {
            sqlx::query(
                "UPDATE approvals SET status = 'cancelled', decided_at = $1, version = version + 1 \
                 WHERE tenant = $2 AND id = $3 AND status = 'pending'",
            )
            .bind(now)
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        for a in &e.new_approvals {
            sqlx::query(
                "INSERT INTO approvals (tenant, id, identity_id, status, created, escalate_at, expires_at, decided_at, \
                 version, request) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9)",
            )
            .bind(tenant)
            .bind(&a.id)
            .bind(&a.identity_id)
            .bind(&a.status)
            .bind(&a.created)
            .bind(a.escalate_at.as_deref())
            .bind(&a.expires_at)
            .bind(a.decided_at.as_deref())
            .bind(&a.request)
            .execute(&mut **tx)
            .await?;
        }
        for a in &e.update_approvals {
            let done = sqlx::query(
                "UPDATE approvals SET status = $1, escalate_at = $2, expires_at = $3, decided_at = $4, request = $5, \
                 version = version + 1 WHERE tenant = $6 AND id = $7 AND version = $8",
            )
            .bind(&a.status)
            .bind(a.escalate_at.as_deref())
            .bind(&a.expires_at)
            .bind(a.decided_at.as_deref())
            .bind(&a.request)
            .bind(tenant)
            .bind(&a.id)
            .bind(a.version)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::StateConflict);
            }
        }
        if e.clear_exceptions {
            sqlx::query("DELETE FROM sod_exceptions WHERE tenant = $1 AND identity_id = $2")
                .bind(tenant)
                .bind(&e.identity_id)
                .execute(&mut **tx)
                .await?;
        }
        for x in &e.new_exceptions {
            sqlx::query(
                "INSERT INTO sod_exceptions (tenant, identity_id, rule, approver, approval_id, created, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, identity_id, rule) DO UPDATE SET \
                 approver = excluded.approver, approval_id = excluded.approval_id, created = excluded.created, \
                 expires_at = excluded.expires_at",
            )
            .bind(tenant)
            .bind(&x.identity_id)
            .bind(&x.rule)
            .bind(&x.approver)
            .bind(&x.approval_id)
            .bind(&x.created)
            .bind(&x.expires_at)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

pub(crate) fn state_row(r: &AnyRow) -> Result<IdentityState, StoreError> {
    Ok(IdentityState {
        identity_id: r.try_get("identity_id")?,
        version: r.try_get("version")?,
        leaver_since: r.try_get("leaver_since")?,
        current: r.try_get("current")?,
        evaluation: r.try_get("evaluation")?,
        policy_hash: r.try_get("policy_hash")?,
        wakeup_at: r.try_get("wakeup_at")?,
        updated: r.try_get("updated")?,
    })
}

pub(crate) fn plan_row(r: &AnyRow) -> Result<PlanRecord, StoreError> {
    Ok(PlanRecord {
        id: r.try_get("id")?,
        identity_id: r.try_get("identity_id")?,
        created: r.try_get("created")?,
        cause: r.try_get("cause")?,
        mode: r.try_get("mode")?,
        policy_hash: r.try_get("policy_hash")?,
        items: r.try_get("items")?,
    })
}

pub(crate) fn approval_row(r: &AnyRow) -> Result<ApprovalRecord, StoreError> {
    Ok(ApprovalRecord {
        id: r.try_get("id")?,
        identity_id: r.try_get("identity_id")?,
        status: r.try_get("status")?,
        created: r.try_get("created")?,
        escalate_at: r.try_get("escalate_at")?,
        expires_at: r.try_get("expires_at")?,
        decided_at: r.try_get("decided_at")?,
        version: r.try_get("version")?,
        request: r.try_get("request")?,
    })
}

pub(crate) fn exception_row(r: &AnyRow) -> Result<ExceptionRecord, StoreError> {
    Ok(ExceptionRecord {
        identity_id: r.try_get("identity_id")?,
        rule: r.try_get("rule")?,
        approver: r.try_get("approver")?,
        approval_id: r.try_get("approval_id")?,
        created: r.try_get("created")?,
        expires_at: r.try_get("expires_at")?,
    })
}
