//! The scimgate policy engine. Pure: it parses a string and computes; it does no I/O.
//!
//! - [`Policy::parse`] reads a TOML policy file (README.md in this crate documents every key), checks it and compiles
//!   its CEL conditions. Every error points at a line, a column and a key path.
//! - [`Policy::evaluate`] turns one identity (its canonical SCIM document and IdP groups) into a lifecycle state,
//!   the roles that apply, the desired accounts and entitlements per target (each with its rationale), the
//!   separation-of-duties conflicts in that desired state, and the next instant at which the answer can change.
//! - [`Policy::plan`] diffs an [`Evaluation`] against what is currently provisioned ([`Current`]) and gives the
//!   ordered operations, with the approvals they need and the grants SoD refuses.
//!
//! The desired state is a pure function of the identity, the policy text and `now`: the same input always gives the
//! same evaluation and plan, and every grant names the rules, roles, groups and policy hash that caused it.

mod error;
mod evaluate;
mod expr;
mod file;
mod parse;
mod plan;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use serde::{Deserialize, Serialize};

pub use error::PolicyError;
pub use evaluate::{
    AccountState, Evaluation, IdentityInput, LeaverPhase, LifecycleState, Prior, Rationale, RoleMatch, SodException,
    SodHit, TargetDesired, Via,
};
pub use plan::{Action, ApprovalNeed, ApprovalReason, Current, Plan, PlanItem, TargetCurrent};

/// The SCIM extension URN whose attributes CEL sees as `enterprise`.
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// The SCIM extension URN whose attributes CEL sees as `workforce` (workerType, employmentStatus, startDate, endDate,
/// jobCode, location).
pub const WORKFORCE_URN: &str = "urn:scimgate:params:scim:schemas:extension:workforce:2.0:User";
/// The variables a CEL condition may use.
pub const CEL_VARIABLES: [&str; 5] = ["user", "enterprise", "workforce", "groups", "now"];

/// Whether plans are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Plans are executed (the default).
    #[default]
    Enforce,
    /// Plans are computed and recorded but never executed. The engine computes the same plans either way: the
    /// caller honours the mode.
    Shadow,
}

/// Who decides an approval stage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approvers {
    /// The identity's manager (`enterprise.manager`, resolved by the caller).
    Manager,
    /// The entitlement's `owner`.
    AppOwner,
    /// These principals.
    Named(Vec<String>),
}

/// How many of a stage's approvers must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The first approver to decide decides for the stage (the default).
    #[default]
    First,
    /// Every approver must approve; one rejection rejects.
    All,
}

/// What an SoD rule does to a new conflicting grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SodMode {
    /// Grant it, and report the conflict.
    Record,
    /// Hold it for the `sod_approval_tier` chain.
    Approve,
    /// Refuse it.
    Enforce,
}

/// A downstream system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub id: String,
    pub description: String,
}

/// Something that can be granted on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    /// Unique id, by convention `target:name`.
    pub id: String,
    /// The target id.
    pub target: String,
    /// The target-side name, opaque to the engine.
    pub value: String,
    /// The tier that approves a requested (non-birthright) grant.
    pub risk: String,
    /// The application owner (approver of `app_owner` stages).
    pub owner: String,
    /// Every grant goes through the privileged tier; revoked first on exit.
    pub privileged: bool,
    pub description: String,
}

/// A named bundle of entitlements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    /// Entitlement ids.
    pub grants: Vec<String>,
    /// Its grants need no approval (unless privileged).
    pub birthright: bool,
    pub description: String,
}

/// A condition on the identity that assigns roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    /// The CEL source.
    pub when: String,
    /// Role ids.
    pub roles: Vec<String>,
    pub description: String,
}

/// An IdP group whose members get roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMapping {
    /// The group's displayName.
    pub group: String,
    /// Role ids.
    pub roles: Vec<String>,
}

/// One ordered approval stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub id: String,
    pub approvers: Approvers,
    pub decision: Decision,
    /// Principals the stage escalates to after the tier's `escalate_after` (may be empty).
    pub escalate_to: Vec<String>,
}

/// An approval chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    /// In order; at least one.
    pub stages: Vec<Stage>,
    /// How long a stage may stay undecided before it escalates.
    pub escalate_after: Duration,
    /// How long a request may stay undecided before it expires.
    pub expire_after: Duration,
}

/// A separation-of-duties rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SodRule {
    pub id: String,
    pub description: String,
    pub mode: SodMode,
    /// The longest exception that may be granted for it.
    pub max_exception_days: u32,
    /// At least two disjoint sets of entitlement ids.
    pub conflicts: Vec<Vec<String>>,
}

/// The `[lifecycle]` settings, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Accounts are created (disabled) this long before `startDate`.
    pub prestart_lead: Duration,
    /// CEL source of the leave-of-absence condition.
    pub leave_condition: String,
    /// CEL source of the contractor condition.
    pub contractor_condition: String,
    /// A contractor without `endDate` is Invalid.
    pub contractor_requires_end_date: bool,
    /// A leaver's accounts are disabled this long after the leaver event.
    pub lock_delay: Duration,
    /// A leaver's entitlements are revoked and accounts deleted this long after the leaver event.
    pub revoke_delay: Duration,
    /// Attributes for the caller's rehire matching.
    pub rehire_match: Vec<String>,
}

/// A checked, compiled policy. Cheap to share (`Send + Sync`); every method is pure.
pub struct Policy {
    pub(crate) source: String,
    pub(crate) hash: String,
    pub(crate) mode: PolicyMode,
    pub(crate) sod_approval_tier: String,
    pub(crate) privileged_tier: String,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) targets: Vec<Target>,
    pub(crate) entitlements: BTreeMap<String, Entitlement>,
    pub(crate) roles: Vec<Role>,
    pub(crate) role_index: BTreeMap<String, usize>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) rule_programs: Vec<cel::Program>,
    pub(crate) group_mappings: Vec<GroupMapping>,
    pub(crate) tiers: BTreeMap<String, Tier>,
    pub(crate) sod: Vec<SodRule>,
    pub(crate) leave_program: cel::Program,
    pub(crate) contractor_program: cel::Program,
    pub(crate) env: Arc<cel::Env>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("hash", &self.hash)
            .field("mode", &self.mode)
            .field("targets", &self.targets.len())
            .field("entitlements", &self.entitlements.len())
            .field("roles", &self.roles.len())
            .field("rules", &self.rules.len())
            .field("sod", &self.sod.len())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Parses, checks and compiles a policy file. `source` names the file in error messages.
    ///
    /// On several errors, returns the first in the file; [`Policy::check`] returns them all.
    pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
        Policy::check(text, source).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Policy::parse`], but returns every error found (in file order; never an empty list). A TOML syntax or
    /// schema error stops the check before the semantic checks, so it comes alone.
    pub fn check(text: &str, source: &str) -> Result<Policy, Vec<PolicyError>> {
        parse::parse(text, source)
    }

    /// Lowercase hex SHA-256 of the file's bytes: recorded in every rationale, evaluation and plan.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The file name given to `parse`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Enforce or shadow.
    pub fn mode(&self) -> PolicyMode {
        self.mode
    }

    /// The attributes the caller matches rehires by (`lifecycle.rehire_match`).
    pub fn rehire_match(&self) -> &[String] {
        &self.lifecycle.rehire_match
    }

    /// The lifecycle settings.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// An entitlement by id.
    pub fn entitlement(&self, id: &str) -> Option<&Entitlement> {
        self.entitlements.get(id)
    }

    /// Every entitlement, by id.
    pub fn entitlements(&self) -> impl Iterator<Item = &Entitlement> {
        self.entitlements.values()
    }

    /// A role by id.
    pub fn role(&self, id: &str) -> Option<&Role> {
        self.role_index.get(id).and_then(|&i| self.roles.get(i))
    }

    /// Every role, in file order.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Every rule, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every group mapping, in file order.
    pub fn group_mappings(&self) -> &[GroupMapping] {
        &self.group_mappings
    }

    /// An approval tier by name.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// The tier names, sorted.
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }

    /// The tier that approves grants held by an SoD rule in `approve` mode.
    pub fn sod_approval_tier(&self) -> &str {
        &self.sod_approval_tier
    }

    /// The tier that approves every grant of a privileged entitlement.
    pub fn privileged_tier(&self) -> &str {
        &self.privileged_tier
    }

    /// An SoD rule by id.
    pub fn sod_rule(&self, id: &str) -> Option<&SodRule> {
        self.sod.iter().find(|r| r.id == id)
    }

    /// Every SoD rule, in file order.
    pub fn sod_rules(&self) -> &[SodRule] {
        &self.sod
    }

    /// The target ids, in file order.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|t| t.id.as_str())
    }

    /// A target by id.
    pub fn target(&self, id: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.id == id)
    }
}
