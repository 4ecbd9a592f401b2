//! An evaluation diffed against what is provisioned: the ordered operations, their approvals and SoD refusals.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::evaluate::{AccountState, Evaluation, LeaverPhase, LifecycleState, Rationale, TargetDesired};
use crate::{Policy, SodMode};

/// What is provisioned now, per target (as the caller records it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    /// Target id → its account and entitlements. A missing target means no account and no entitlement.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetCurrent>,
}

/// What is provisioned on one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCurrent {
    #[serde(default)]
    pub account: AccountState,
    /// Entitlement ids held.
    #[serde(default)]
    pub entitlements: BTreeSet<String>,
}

impl Current {
    /// Records that `item` was carried out: the state a plan item leads to. (A refused item, or one still awaiting
    /// approval, should not be applied.)
    pub fn apply(&mut self, item: &PlanItem) {
        let t = self.targets.entry(item.target.clone()).or_default();
        match (&item.action, &item.entitlement) {
            (Action::CreateAccount { enabled: true }, _) | (Action::EnableAccount, _) => {
                t.account = AccountState::Enabled
            }
            (Action::CreateAccount { enabled: false }, _) | (Action::DisableAccount, _) => {
                t.account = AccountState::Disabled
            }
            (Action::DeleteAccount, _) => {
                t.account = AccountState::Absent;
                t.entitlements.clear();
            }
            (Action::Grant, Some(e)) => {
                t.entitlements.insert(e.clone());
            }
            (Action::Revoke, Some(e)) => {
                t.entitlements.remove(e);
            }
            (Action::Grant | Action::Revoke, None) => {}
        }
        if t.account == AccountState::Absent && t.entitlements.is_empty() {
            self.targets.remove(&item.target);
        }
    }
}

/// One operation on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    CreateAccount { enabled: bool },
    EnableAccount,
    DisableAccount,
    DeleteAccount,
    Grant,
    Revoke,
}

/// Why a grant needs approval.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalReason {
    /// Not granted by a birthright role: the entitlement's risk tier approves.
    Requested,
    /// A privileged entitlement: the privileged tier approves, birthright or not.
    Privileged,
    /// The grant creates a conflict with an SoD rule in `approve` mode.
    Sod { rule: String },
}

/// The approval chain a grant must pass before it is carried out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApprovalNeed {
    /// The tier name ([`Policy::tier`]).
    pub tier: String,
    pub reason: ApprovalReason,
}

/// One ordered step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub target: String,
    pub action: Action,
    /// The entitlement of a Grant or Revoke.
    pub entitlement: Option<String>,
    /// Why: for a Grant, what grants it; for a CreateAccount or EnableAccount, the union over the target's desired
    /// entitlements; for the rest, empty lists (nothing in the policy wants it any more) and the policy hash.
    pub rationale: Rationale,
    /// The approval a Grant needs first (None: none, or refused).
    pub approval: Option<ApprovalNeed>,
    /// `Some(rule id)` when an enforce-mode SoD rule refuses this grant.
    pub refused: Option<String>,
    /// SoD rules this grant creates a conflict with that neither refuse nor hold it: `record`-mode rules, and rules
    /// the identity holds an exception for.
    pub sod_reported: Vec<String>,
}

impl PlanItem {
    /// Neither refused nor awaiting approval: can be carried out now.
    pub fn is_executable(&self) -> bool {
        self.refused.is_none() && self.approval.is_none()
    }
}

/// The result of [`Policy::plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// In execution order: every DisableAccount, the Revokes of privileged entitlements, the other Revokes,
    /// DeleteAccount, CreateAccount, Grants, EnableAccount; within each, by target then entitlement.
    pub items: Vec<PlanItem>,
    pub policy_hash: String,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// How the plan treats the identity as a whole.
enum Mode {
    /// Diff desired against current.
    Converge,
    /// Nothing changes yet (a leaver before the lock).
    Hold,
    /// Disable every enabled account; grant, revoke and delete nothing.
    Lock,
    /// Disable, revoke everything (privileged first), delete every account.
    Remove,
}

#[derive(Default)]
struct Buckets {
    disables: Vec<PlanItem>,
    privileged_revokes: Vec<PlanItem>,
    revokes: Vec<PlanItem>,
    deletes: Vec<PlanItem>,
    creates: Vec<PlanItem>,
    grants: Vec<PlanItem>,
    enables: Vec<PlanItem>,
}

impl Policy {
    /// Diffs an evaluation against what is provisioned. Pure and deterministic.
    ///
    /// - Account: Absent→Enabled is `CreateAccount{enabled:true}`, Absent→Disabled `CreateAccount{enabled:false}`,
    ///   Enabled→Disabled `DisableAccount`, Disabled→Enabled `EnableAccount`, anything→Absent revokes every held
    ///   entitlement then `DeleteAccount`. Entitlements: Grant what is desired and not held, Revoke what is held and
    ///   not desired.
    /// - A leaver is never granted anything, nor created or enabled: before the lock nothing happens; from the lock
    ///   on every enabled account is disabled and entitlements are frozen; from the revoke time on everything is
    ///   revoked (privileged first) and every account deleted. An `Invalid` identity is locked the same way.
    /// - Approval: a privileged grant goes through the privileged tier (reason `Privileged`), even if birthright; any
    ///   other non-birthright grant through its entitlement's risk tier (reason `Requested`).
    /// - SoD, for every conflict without a valid exception, on the grants of its entitlements not held yet:
    ///   `enforce` refuses them (`refused`, no approval), `approve` routes them to `sod_approval_tier` (reason `Sod`,
    ///   replacing the other approval), `record` lets them through and lists the rule in `sod_reported` (as do
    ///   excepted conflicts). A conflict made only of held entitlements marks no item.
    pub fn plan(&self, eval: &Evaluation, current: &Current) -> Plan {
        let hash = eval.policy_hash.as_str();
        let mode = match (&eval.state, eval.leaver_phase) {
            (LifecycleState::Leaver { .. }, Some(LeaverPhase::BeforeLock)) => Mode::Hold,
            (LifecycleState::Leaver { .. }, Some(LeaverPhase::Removed)) => Mode::Remove,
            (LifecycleState::Leaver { .. }, _) | (LifecycleState::Invalid { .. }, _) => Mode::Lock,
            _ => Mode::Converge,
        };
        let empty_target = TargetCurrent::default();
        let no_desire = TargetDesired {
            account: AccountState::Absent,
            entitlements: BTreeMap::new(),
        };
        let targets: BTreeSet<&String> = eval.desired.keys().chain(current.targets.keys()).collect();
        let bare = || Rationale {
            policy_hash: hash.to_owned(),
            ..Rationale::default()
        };
        let item = |target: &str, action: Action, entitlement: Option<&str>, rationale: Rationale| PlanItem {
            target: target.to_owned(),
            action,
            entitlement: entitlement.map(str::to_owned),
            rationale,
            approval: None,
            refused: None,
            sod_reported: Vec::new(),
        };
        let privileged = |e: &str| self.entitlements.get(e).is_some_and(|x| x.privileged);

        let mut b = Buckets::default();
        let revoke_all = |b: &mut Buckets, target: &str, cur: &TargetCurrent| {
            for e in &cur.entitlements {
                let it = item(target, Action::Revoke, Some(e), bare());
                if privileged(e) {
                    b.privileged_revokes.push(it)
                } else {
                    b.revokes.push(it)
                }
            }
        };

        let sod = self.sod_effects(eval, current);
        for &target in &targets {
            let cur = current.targets.get(target).unwrap_or(&empty_target);
            let des = eval.desired.get(target).unwrap_or(&no_desire);
            match mode {
                Mode::Hold => {}
                Mode::Lock => {
                    if cur.account == AccountState::Enabled {
                        b.disables.push(item(target, Action::DisableAccount, None, bare()));
                    }
                }
                Mode::Remove => {
                    if cur.account == AccountState::Enabled {
                        b.disables.push(item(target, Action::DisableAccount, None, bare()));
                    }
                    revoke_all(&mut b, target, cur);
                    if cur.account != AccountState::Absent {
                        b.deletes.push(item(target, Action::DeleteAccount, None, bare()));
                    }
                }
                Mode::Converge => {
                    let union = || Rationale::union(hash, des.entitlements.values());
                    match (cur.account, des.account) {
                        (AccountState::Absent, AccountState::Enabled) => {
                            b.creates
                                .push(item(target, Action::CreateAccount { enabled: true }, None, union()))
                        }
                        (AccountState::Absent, AccountState::Disabled) => {
                            b.creates
                                .push(item(target, Action::CreateAccount { enabled: false }, None, union()))
                        }
                        (AccountState::Enabled, AccountState::Disabled) => {
                            b.disables.push(item(target, Action::DisableAccount, None, bare()))
                        }
                        (AccountState::Disabled, AccountState::Enabled) => {
                            b.enables.push(item(target, Action::EnableAccount, None, union()))
                        }
                        (AccountState::Enabled | AccountState::Disabled, AccountState::Absent) => {
                            b.deletes.push(item(target, Action::DeleteAccount, None, bare()))
                        }
                        _ => {}
                    }
                    if des.account == AccountState::Absent {
                        revoke_all(&mut b, target, cur);
                        continue;
                    }
                    for e in cur.entitlements.iter().filter(|e| !des.entitlements.contains_key(*e)) {
                        let it = item(target, Action::Revoke, Some(e), bare());
                        if privileged(e) {
                            b.privileged_revokes.push(it)
                        } else {
                            b.revokes.push(it)
                        }
                    }
                    for (e, rationale) in des.entitlements.iter().filter(|(e, _)| !cur.entitlements.contains(*e)) {
                        let mut it = item(target, Action::Grant, Some(e), rationale.clone());
                        it.approval = self.grant_approval(e, rationale);
                        if let Some(effect) = sod.get(e.as_str()) {
                            if let Some(rule) = &effect.approve {
                                it.approval = Some(ApprovalNeed {
                                    tier: self.sod_approval_tier.clone(),
                                    reason: ApprovalReason::Sod { rule: rule.clone() },
                                });
                            }
                            if let Some(rule) = &effect.refuse {
                                it.refused = Some(rule.clone());
                                it.approval = None;
                            }
                            it.sod_reported = effect.reported.clone();
                        }
                        b.grants.push(it);
                    }
                }
            }
        }

        let Buckets {
            disables,
            privileged_revokes,
            revokes,
            deletes,
            creates,
            grants,
            enables,
        } = b;
        let items = [disables, privileged_revokes, revokes, deletes, creates, grants, enables]
            .into_iter()
            .flatten();
        Plan {
            items: items.collect(),
            policy_hash: hash.to_owned(),
        }
    }

    /// The approval a grant needs before SoD is considered.
    fn grant_approval(&self, entitlement: &str, rationale: &Rationale) -> Option<ApprovalNeed> {
        let ent = self.entitlements.get(entitlement)?;
        if ent.privileged {
            Some(ApprovalNeed {
                tier: self.privileged_tier.clone(),
                reason: ApprovalReason::Privileged,
            })
        } else if !rationale.birthright {
            Some(ApprovalNeed {
                tier: ent.risk.clone(),
                reason: ApprovalReason::Requested,
            })
        } else {
            None
        }
    }

    /// What SoD does to the grant of each new conflicting entitlement.
    fn sod_effects<'e>(&self, eval: &'e Evaluation, current: &Current) -> BTreeMap<&'e str, SodEffect> {
        let mut effects: BTreeMap<&str, SodEffect> = BTreeMap::new();
        let is_held = |e: &str| {
            let target = self.entitlements.get(e).map(|x| x.target.as_str());
            target
                .and_then(|t| current.targets.get(t))
                .is_some_and(|t| t.entitlements.contains(e))
        };
        for hit in &eval.sod {
            for e in hit.entitlements.iter().filter(|e| !is_held(e)) {
                let effect = effects.entry(e.as_str()).or_default();
                match (hit.excepted, hit.mode) {
                    (true, _) | (false, SodMode::Record) => {
                        if !effect.reported.contains(&hit.rule) {
                            effect.reported.push(hit.rule.clone());
                        }
                    }
                    (false, SodMode::Approve) => {
                        effect.approve.get_or_insert_with(|| hit.rule.clone());
                    }
                    (false, SodMode::Enforce) => {
                        effect.refuse.get_or_insert_with(|| hit.rule.clone());
                    }
                }
            }
        }
        effects
    }
}

#[derive(Default)]
struct SodEffect {
    refuse: Option<String>,
    approve: Option<String>,
    reported: Vec<String>,
}
