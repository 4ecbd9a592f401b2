//! The lifecycle engine: policy decisions turned into durable effects.
//!
//! For every identity change (and every due timer) the engine evaluates the identity against the current policy
//! (`scimgate_policy`, pure), diffs it with what the identity holds, and turns the plan into [`Effects`] that the
//! store writes in the same transaction as the change: the new identity state, the plan record (the handover to
//! provisioning), approval requests for held items, and the next wake-up (the durable timer). Approvals are
//! decided, escalated and expired here too.

pub mod clock;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use scimgate_adapter_sdk::DesiredAccount;
use scimgate_policy::AccountState;
use scimgate_policy::{
    ApprovalNeed, ApprovalReason, Approvers, Current, Decision as StageRule, IdentityInput, Plan, PlanItem, Policy,
    PolicyMode, Prior, SodException,
};
use scimgate_scim::resource::{format_datetime, parse_datetime};
use scimgate_store::{
    ApprovalRecord, AuditEntry, Effects, ExceptionRecord, IdentityState, OutboxNew, PlanRecord, StateWrite,
};

use crate::outbox::{Payload, PayloadItem};

use clock::Clock;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("stored lifecycle data is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("cannot read policy file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}")]
    Policy(#[from] scimgate_policy::PolicyError),
}

/// The identity being decided on.
pub struct Subject<'a> {
    pub tenant: &'a str,
    pub id: &'a str,
    pub doc: &'a Map<String, Value>,
    /// displayNames of the IdP groups it is a member of.
    pub groups: &'a [String],
    pub archived: bool,
    /// The userName of its manager (the approver principal of the manager stage).
    pub manager: Option<String>,
    /// The document (or password) changed: accounts it already has are brought up to date even when no plan item
    /// touches them.
    pub changed: bool,
}

/// What happened to one plan item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ItemStatus {
    /// Handed to provisioning.
    Accepted,
    /// Waiting for approval.
    Held { approval: String },
    /// Refused by an enforce-mode SoD rule: recorded, never executed.
    Refused { rule: String },
    /// Shadow mode: computed and recorded, never executed.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedItem {
    #[serde(flatten)]
    pub item: PlanItem,
    #[serde(flatten)]
    pub status: ItemStatus,
}

/// The decision for one identity.
#[derive(Debug, Clone)]
pub struct Decision {
    pub effects: Effects,
    /// SoD rules that refused a grant in this decision.
    pub refused: Vec<String>,
    pub items: Vec<RecordedItem>,
}

/// A stage of an approval request with its approvers resolved to principal names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedStage {
    pub id: String,
    pub approvers: Vec<String>,
    /// `first` or `all`.
    pub decision: String,
    pub escalate_to: Vec<String>,
    pub approved_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    pub actor: String,
    /// approve, deny, escalate, expire.
    pub action: String,
    pub stage: String,
    pub reason: String,
}

/// The JSON kept in `approvals.request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub item: PlanItem,
    pub tier: String,
    pub reason: ApprovalReason,
    pub stages: Vec<ResolvedStage>,
    pub stage: usize,
    pub history: Vec<HistoryEntry>,
    pub policy_hash: String,
}

impl ApprovalRequest {
    /// Whether `who` may decide the current stage.
    pub fn may_decide(&self, who: &str) -> bool {
        self.stages
            .get(self.stage)
            .is_some_and(|s| s.approvers.iter().any(|a| a == who) && !s.approved_by.iter().any(|a| a == who))
    }
}

pub struct Engine {
    policy: RwLock<Arc<Policy>>,
    path: Option<PathBuf>,
    last_error: RwLock<Option<String>>,
    pub clock: Arc<dyn Clock>,
}

fn ts(t: DateTime<Utc>) -> String {
    format_datetime(t)
}

fn same_item(a: &PlanItem, b: &PlanItem) -> bool {
    a.target == b.target && a.entitlement == b.entitlement && a.action == b.action
}

impl Engine {
    pub fn new(policy: Policy, path: Option<PathBuf>, clock: Arc<dyn Clock>) -> Self {
        Engine {
            policy: RwLock::new(Arc::new(policy)),
            path,
            last_error: RwLock::new(None),
            clock,
        }
    }

    /// Read and parse a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Policy::parse(&text, &path.display().to_string())?)
    }

    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().ok().and_then(|e| e.clone())
    }

    /// Re-read the policy file. A bad file keeps the last good policy running; the error is kept and returned.
    pub fn reload(&self) -> Result<String, String> {
        let Some(path) = &self.path else {
            return Err("no policy file is configured".into());
        };
        match Self::load(path) {
            Ok(p) => {
                let hash = p.hash().to_string();
                if let Ok(mut g) = self.policy.write() {
                    *g = Arc::new(p);
                }
                if let Ok(mut e) = self.last_error.write() {
                    *e = None;
                }
                tracing::info!(policy_hash = %hash, "policy reloaded");
                Ok(hash)
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, kept = %self.policy().hash(), "policy reload failed; keeping the last good policy");
                if let Ok(mut g) = self.last_error.write() {
                    *g = Some(msg.clone());
                }
                Err(msg)
            }
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Evaluate and plan with a given policy, without deciding anything (preview, `scimgate plan`).
    pub fn preview(
        policy: &Policy,
        s: &Subject<'_>,
        prior: Option<&IdentityState>,
        exceptions: &[ExceptionRecord],
        now: DateTime<Utc>,
    ) -> Result<Plan, EngineError> {
        let current = current_of(prior)?;
        let eval = policy.evaluate(
            &input(s),
            &prior_of(prior),
            &live_exceptions(s.id, exceptions, now),
            now,
        );
        Ok(policy.plan(&eval, &current))
    }

    /// Decide on one identity: the effects to write with the change that caused it.
    #[tracing::instrument(name = "policy.decide", skip_all, fields(tenant = s.tenant, identity = s.id, cause))]
    pub fn decide(
        &self,
        s: &Subject<'_>,
        prior: Option<&IdentityState>,
        exceptions: &[ExceptionRecord],
        pending: &[ApprovalRecord],
        cause: &str,
    ) -> Result<Decision, EngineError> {
        let policy = self.policy();
        let now = self.now();
        let current = current_of(prior)?;
        let eval = policy.evaluate(
            &input(s),
            &prior_of(prior),
            &live_exceptions(s.id, exceptions, now),
            now,
        );
        let plan = policy.plan(&eval, &current);
        let shadow = policy.mode() == PolicyMode::Shadow;
        let pending: Vec<(&ApprovalRecord, ApprovalRequest)> = pending
            .iter()
            .filter(|a| a.status == "pending")
            .map(|a| Ok((a, serde_json::from_str::<ApprovalRequest>(&a.request)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        let mut new_current = current.clone();
        let mut keep: HashSet<&str> = HashSet::new();
        let mut new_approvals = Vec::new();
        let mut readdressed = Vec::new();
        let mut items = Vec::new();
        let mut refused = Vec::new();
        for item in plan.items {
            let status = if let Some(rule) = &item.refused {
                refused.push(rule.clone());
                ItemStatus::Refused { rule: rule.clone() }
            } else if let Some(need) = &item.approval {
                if let Some((rec, req)) = pending.iter().find(|(_, r)| same_item(&r.item, &item)) {
                    keep.insert(rec.id.as_str());
                    if let Some(updated) = self.readdress(&policy, s, rec, req, need)? {
                        readdressed.push(updated);
                    }
                    ItemStatus::Held {
                        approval: rec.id.clone(),
                    }
                } else if shadow {
                    ItemStatus::Shadow
                } else {
                    let rec = self.request(&policy, s, &item, need, now)?;
                    let id = rec.id.clone();
                    new_approvals.push(rec);
                    ItemStatus::Held { approval: id }
                }
            } else if shadow {
                ItemStatus::Shadow
            } else {
                new_current.apply(&item);
                ItemStatus::Accepted
            };
            items.push(RecordedItem { item, status });
        }
        let cancel: Vec<String> = pending
            .iter()
            .filter(|(a, _)| !keep.contains(a.id.as_str()))
            .map(|(a, _)| a.id.clone())
            .collect();
        let leaver_since = match &eval.state {
            scimgate_policy::LifecycleState::Leaver { since } => Some(ts(*since)),
            _ => None,
        };
        let summary = json!({
            "state": eval.state,
            "roles": eval.roles,
            "sod": eval.sod,
            "warnings": eval.warnings,
            "next_wakeup": eval.next_wakeup.map(ts),
            "policy_hash": eval.policy_hash,
            "evaluated_at": ts(now),
        });
        let state = StateWrite {
            expect_version: prior.map(|p| p.version),
            leaver_since,
            current: serde_json::to_string(&new_current)?,
            evaluation: summary.to_string(),
            policy_hash: policy.hash().to_string(),
            wakeup_at: eval.next_wakeup.map(ts),
        };
        let plan = (!items.is_empty())
            .then(|| {
                Ok::<_, serde_json::Error>(PlanRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    identity_id: s.id.to_string(),
                    created: ts(now),
                    cause: cause.to_string(),
                    mode: if shadow { "shadow" } else { "enforce" }.to_string(),
                    policy_hash: policy.hash().to_string(),
                    items: serde_json::to_string(&items)?,
                })
            })
            .transpose()?;
        self.observe(&policy, cause, &eval, &items, now);
        for it in &items {
            if let ItemStatus::Refused { rule } = &it.status {
                tracing::warn!(tenant = s.tenant, identity = s.id, rule = %rule, entitlement = ?it.item.entitlement, "SoD refused a grant");
            }
        }
        let outbox = if shadow {
            vec![]
        } else {
            outbox_rows(
                &policy,
                s,
                &items,
                &new_current,
                plan.as_ref().map(|p| p.id.as_str()),
                cause,
            )?
        };
        let audit = (!items.is_empty() || !eval.sod.is_empty())
            .then(|| AuditEntry {
                kind: "decision".into(),
                actor: "scimgate".into(),
                identity_id: Some(s.id.to_string()),
                request_id: None,
                data: json!({
                    "cause": cause,
                    "policy_hash": policy.hash(),
                    "mode": if shadow { "shadow" } else { "enforce" },
                    "state": eval.state,
                    "roles": eval.roles,
                    "sod": eval.sod,
                    "items": items.iter().map(|i| json!({
                        "target": i.item.target, "action": i.item.action, "entitlement": i.item.entitlement,
                        "status": i.status, "rationale": i.item.rationale,
                    })).collect::<Vec<_>>(),
                }),
            })
            .into_iter()
            .collect();
        Ok(Decision {
            effects: Effects {
                identity_id: s.id.to_string(),
                state: Some(state),
                plan,
                new_approvals,
                cancel_approvals: cancel,
                update_approvals: readdressed,
                new_exceptions: vec![],
                clear_exceptions: false,
                audit,
                outbox,
            },
            refused,
            items,
        })
    }

    /// Metrics for one decision: the evaluation, its plan items, SoD conflicts, and a leaver's time to lock.
    fn observe(
        &self,
        policy: &Policy,
        cause: &str,
        eval: &scimgate_policy::Evaluation,
        items: &[RecordedItem],
        now: DateTime<Utc>,
    ) {
        let m = &crate::metrics::METRICS;
        let state = match &eval.state {
            scimgate_policy::LifecycleState::PreHire { .. } => "pre_hire",
            scimgate_policy::LifecycleState::Active => "active",
            scimgate_policy::LifecycleState::Leave => "leave",
            scimgate_policy::LifecycleState::Leaver { .. } => "leaver",
            scimgate_policy::LifecycleState::Invalid { .. } => "invalid",
        };
        let mode = match policy.mode() {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Shadow => "shadow",
        };
        m.policy_decisions.with_label_values(&[cause, state, mode]).inc();
        for hit in eval.sod.iter().filter(|h| !h.excepted) {
            let mode = match hit.mode {
                scimgate_policy::SodMode::Record => "record",
                scimgate_policy::SodMode::Approve => "approve",
                scimgate_policy::SodMode::Enforce => "enforce",
            };
            m.sod_violations.with_label_values(&[&hit.rule, mode]).inc();
        }
        let mut locked = false;
        for it in items {
            let action = match &it.item.action {
                scimgate_policy::Action::CreateAccount { .. } => "create_account",
                scimgate_policy::Action::EnableAccount => "enable_account",
                scimgate_policy::Action::DisableAccount => "disable_account",
                scimgate_policy::Action::DeleteAccount => "delete_account",
                scimgate_policy::Action::Grant => "grant",
                scimgate_policy::Action::Revoke => "revoke",
            };
            let status = match &it.status {
                ItemStatus::Accepted => "accepted",
                ItemStatus::Held { .. } => "held",
                ItemStatus::Refused { .. } => "refused",
                ItemStatus::Shadow => "shadow",
            };
            locked |= action == "disable_account" && status == "accepted";
            m.plan_items.with_label_values(&[&it.item.target, action, status]).inc();
        }
        if let (true, scimgate_policy::LifecycleState::Leaver { since }) = (locked, &eval.state) {
            m.leaver_time_to_lock
                .observe((now - *since).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }

    /// A pending request whose current stage nobody has decided yet follows the identity: if the stage's
    /// approvers resolve differently now (a new manager), the stage is re-addressed.
    fn readdress(
        &self,
        policy: &Policy,
        s: &Subject<'_>,
        rec: &ApprovalRecord,
        req: &ApprovalRequest,
        need: &ApprovalNeed,
    ) -> Result<Option<ApprovalRecord>, EngineError> {
        let Some(stage) = req.stages.get(req.stage) else {
            return Ok(None);
        };
        if !stage.approved_by.is_empty() {
            return Ok(None);
        }
        let (_, fresh) = resolve_stages(policy, s, &req.item, need)?;
        let Some(now_stage) = fresh.get(req.stage) else {
            return Ok(None);
        };
        if now_stage.approvers == stage.approvers {
            return Ok(None);
        }
        let mut req = req.clone();
        let mut approvers = now_stage.approvers.clone();
        // Escalation approvers already added stay.
        for a in &stage.approvers {
            if stage.escalate_to.contains(a) && !approvers.contains(a) {
                approvers.push(a.clone());
            }
        }
        req.stages[req.stage].approvers = approvers;
        let mut out = rec.clone();
        out.request = serde_json::to_string(&req)?;
        Ok(Some(out))
    }

    /// A new approval request for a held item, with its stages resolved to principals.
    fn request(
        &self,
        policy: &Policy,
        s: &Subject<'_>,
        item: &PlanItem,
        need: &ApprovalNeed,
        now: DateTime<Utc>,
    ) -> Result<ApprovalRecord, EngineError> {
        let (tier, stages) = resolve_stages(policy, s, item, need)?;
        let req = ApprovalRequest {
            item: item.clone(),
            tier: need.tier.clone(),
            reason: need.reason.clone(),
            stages,
            stage: 0,
            history: vec![],
            policy_hash: policy.hash().to_string(),
        };
        Ok(ApprovalRecord {
            id: uuid::Uuid::now_v7().to_string(),
            identity_id: s.id.to_string(),
            status: "pending".into(),
            created: ts(now),
            escalate_at: Some(ts(now + tier.escalate_after)),
            expires_at: ts(now + tier.expire_after),
            decided_at: None,
            version: 1,
            request: serde_json::to_string(&req)?,
        })
    }

    /// An approver's decision. Returns the effects: the updated request and, when the last stage approves, the
    /// item applied to the identity (plus an SoD exception for SoD approvals).
    pub fn decide_approval(
        &self,
        rec: &ApprovalRecord,
        state: Option<&IdentityState>,
        actor: &str,
        approve: bool,
        reason: &str,
    ) -> Result<(Effects, String), EngineError> {
        let now = self.now();
        if rec.status != "pending" {
            return Err(EngineError::Conflict(format!("the request is already {}", rec.status)));
        }
        let mut req: ApprovalRequest = serde_json::from_str(&rec.request)?;
        if !req.may_decide(actor) {
            return Err(EngineError::Forbidden(format!(
                "{actor} is not an approver of the current stage"
            )));
        }
        let policy = self.policy();
        let stage_id = req.stages.get(req.stage).map(|s| s.id.clone()).unwrap_or_default();
        req.history.push(HistoryEntry {
            at: ts(now),
            actor: actor.to_string(),
            action: if approve { "approve" } else { "deny" }.into(),
            stage: stage_id,
            reason: reason.to_string(),
        });
        let mut out = rec.clone();
        let mut effects = Effects {
            identity_id: rec.identity_id.clone(),
            ..Effects::default()
        };
        if !approve {
            out.status = "denied".into();
            out.decided_at = Some(ts(now));
        } else {
            let stage = &mut req.stages[req.stage];
            stage.approved_by.push(actor.to_string());
            let complete = stage.decision == "first" || stage.approvers.iter().all(|a| stage.approved_by.contains(a));
            if complete && req.stage + 1 < req.stages.len() {
                req.stage += 1;
                out.escalate_at = policy.tier(&req.tier).map(|t| ts(now + t.escalate_after));
            } else if complete {
                out.status = "approved".into();
                out.decided_at = Some(ts(now));
                let mut current = current_of(state)?;
                current.apply(&req.item);
                let recorded = vec![RecordedItem {
                    item: req.item.clone(),
                    status: ItemStatus::Accepted,
                }];
                effects.state = Some(StateWrite {
                    expect_version: state.map(|s| s.version),
                    leaver_since: state.and_then(|s| s.leaver_since.clone()),
                    current: serde_json::to_string(&current)?,
                    evaluation: state.map(|s| s.evaluation.clone()).unwrap_or_else(|| "{}".into()),
                    policy_hash: policy.hash().to_string(),
                    wakeup_at: state.and_then(|s| s.wakeup_at.clone()),
                });
                effects.plan = Some(PlanRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    identity_id: rec.identity_id.clone(),
                    created: ts(now),
                    cause: "approval".into(),
                    mode: "enforce".into(),
                    policy_hash: policy.hash().to_string(),
                    items: serde_json::to_string(&recorded)?,
                });
                if let ApprovalReason::Sod { rule } = &req.reason {
                    let days = policy.sod_rule(rule).map_or(30, |r| r.max_exception_days);
                    effects.new_exceptions.push(ExceptionRecord {
                        identity_id: rec.identity_id.clone(),
                        rule: rule.clone(),
                        approver: actor.to_string(),
                        approval_id: rec.id.clone(),
                        created: ts(now),
                        expires_at: ts(now + Duration::days(i64::from(days))),
                    });
                }
            }
        }
        out.request = serde_json::to_string(&req)?;
        let status = out.status.clone();
        effects.audit.push(AuditEntry {
            kind: "approval".into(),
            actor: actor.to_string(),
            identity_id: Some(rec.identity_id.clone()),
            request_id: None,
            data: json!({"approval": rec.id, "decision": if approve { "approve" } else { "deny" }, "reason": reason,
                "stage": req.stages.get(req.stage).map(|s| s.id.clone()), "status": status, "item": req.item}),
        });
        crate::metrics::METRICS
            .approval_decisions
            .with_label_values(&[&status])
            .inc();
        effects.update_approvals.push(out);
        Ok((effects, status))
    }

    /// Escalate or expire a due approval.
    pub fn tick_approval(&self, rec: &ApprovalRecord) -> Result<Option<Effects>, EngineError> {
        let now = self.now();
        let mut req: ApprovalRequest = serde_json::from_str(&rec.request)?;
        let mut out = rec.clone();
        let stage_id = req.stages.get(req.stage).map(|s| s.id.clone()).unwrap_or_default();
        let due = |t: &str| parse_datetime(t).is_some_and(|t| t <= now);
        if due(&rec.expires_at) {
            out.status = "expired".into();
            out.decided_at = Some(ts(now));
            req.history.push(HistoryEntry {
                at: ts(now),
                actor: "scimgate".into(),
                action: "expire".into(),
                stage: stage_id,
                reason: "no decision before the deadline".into(),
            });
            crate::metrics::METRICS
                .approval_decisions
                .with_label_values(&["expired"])
                .inc();
        } else if rec.escalate_at.as_deref().is_some_and(due) {
            out.escalate_at = None;
            if let Some(stage) = req.stages.get_mut(req.stage) {
                for who in stage.escalate_to.clone() {
                    if !stage.approvers.contains(&who) {
                        stage.approvers.push(who);
                    }
                }
            }
            req.history.push(HistoryEntry {
                at: ts(now),
                actor: "scimgate".into(),
                action: "escalate".into(),
                stage: stage_id,
                reason: "no decision in time".into(),
            });
        } else {
            return Ok(None);
        }
        out.request = serde_json::to_string(&req)?;
        Ok(Some(Effects {
            identity_id: rec.identity_id.clone(),
            update_approvals: vec![out],
            ..Effects::default()
        }))
    }
}

/// The tier's stages with their approvers resolved to principal names for this identity and item.
fn resolve_stages<'p>(
    policy: &'p Policy,
    s: &Subject<'_>,
    item: &PlanItem,
    need: &ApprovalNeed,
) -> Result<(&'p scimgate_policy::Tier, Vec<ResolvedStage>), EngineError> {
    let tier = policy
        .tier(&need.tier)
        .ok_or_else(|| EngineError::Conflict(format!("approval tier {} is not in the policy", need.tier)))?;
    let owner = item
        .entitlement
        .as_deref()
        .and_then(|e| policy.entitlement(e))
        .map(|e| e.owner.clone());
    let stages = tier
        .stages
        .iter()
        .map(|st| ResolvedStage {
            id: st.id.clone(),
            approvers: match &st.approvers {
                Approvers::Manager => s.manager.clone().into_iter().collect(),
                Approvers::AppOwner => owner.clone().into_iter().collect(),
                Approvers::Named(names) => names.clone(),
            },
            decision: match st.decision {
                StageRule::First => "first",
                StageRule::All => "all",
            }
            .to_string(),
            escalate_to: st.escalate_to.clone(),
            approved_by: vec![],
        })
        .collect();
    Ok((tier, stages))
}

fn input<'a>(s: &'a Subject<'a>) -> IdentityInput<'a> {
    IdentityInput {
        id: s.id,
        doc: s.doc,
        groups: s.groups,
        archived: s.archived,
    }
}

/// The outbox rows of one decision: per target, the accepted items and the account state they lead to, in plan
/// order; plus, when the document changed, a refresh of every account no item touched.
fn outbox_rows(
    policy: &Policy,
    s: &Subject<'_>,
    items: &[RecordedItem],
    after: &Current,
    plan_id: Option<&str>,
    cause: &str,
) -> Result<Vec<OutboxNew>, EngineError> {
    let mut order: Vec<&str> = Vec::new();
    for it in items.iter().filter(|i| i.status == ItemStatus::Accepted) {
        if !order.contains(&it.item.target.as_str()) {
            order.push(&it.item.target);
        }
    }
    if s.changed {
        for (t, cur) in &after.targets {
            if cur.account != AccountState::Absent && !order.contains(&t.as_str()) {
                order.push(t);
            }
        }
    }
    let mut user = s.doc.clone();
    user.insert("id".into(), Value::String(s.id.to_string()));
    let mut rows = Vec::with_capacity(order.len());
    for (n, target) in order.into_iter().enumerate() {
        let mine: Vec<&PlanItem> = items
            .iter()
            .filter(|i| i.status == ItemStatus::Accepted && i.item.target == target)
            .map(|i| &i.item)
            .collect();
        let value = |id: &str| policy.entitlement(id).map(|e| e.value.clone());
        let cur = after.targets.get(target);
        let account = cur.map(|c| c.account).unwrap_or_default();
        let desired = DesiredAccount {
            identity_id: s.id.to_string(),
            user: user.clone(),
            entitlements: cur
                .map(|c| c.entitlements.iter().filter_map(|e| value(e)).collect())
                .unwrap_or_default(),
            managed: policy
                .entitlements()
                .filter(|e| e.target == target)
                .map(|e| e.value.clone())
                .collect(),
            enabled: account == AccountState::Enabled,
            password: None,
        };
        let payload = Payload {
            cause: cause.to_string(),
            items: mine
                .iter()
                .map(|i| PayloadItem {
                    action: i.action,
                    entitlement: i.entitlement.clone(),
                    value: i.entitlement.as_deref().and_then(value),
                })
                .collect(),
            desired,
        };
        rows.push(OutboxNew {
            id: uuid::Uuid::now_v7().to_string(),
            target: target.to_string(),
            item_no: n as i64,
            plan_id: plan_id.map(str::to_string),
            operation: if account == AccountState::Absent {
                "remove"
            } else {
                "apply"
            }
            .to_string(),
            priority: i64::from(mine.iter().any(|i| i.action == scimgate_policy::Action::DisableAccount)),
            payload: serde_json::to_string(&payload)?,
            secret: None,
        });
    }
    Ok(rows)
}

fn current_of(prior: Option<&IdentityState>) -> Result<Current, EngineError> {
    Ok(match prior {
        Some(p) => serde_json::from_str(&p.current)?,
        None => Current::default(),
    })
}

fn prior_of(prior: Option<&IdentityState>) -> Prior {
    Prior {
        leaver_since: prior.and_then(|p| p.leaver_since.as_deref()).and_then(parse_datetime),
    }
}

fn live_exceptions(id: &str, all: &[ExceptionRecord], now: DateTime<Utc>) -> Vec<SodException> {
    all.iter()
        .filter(|x| x.identity_id == id)
        .filter_map(|x| {
            parse_datetime(&x.expires_at).map(|e| SodException {
                rule: x.rule.clone(),
                expires: e,
            })
        })
        .filter(|x| x.expires > now)
        .collect()
}
