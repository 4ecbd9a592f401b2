//! The policy file as written: TOML, read with serde, every key documented here. Unknown keys are errors.
//!
//! [`Policy::parse`](crate::Policy::parse) reads these structures and then checks and compiles them into a
//! [`Policy`](crate::Policy). Values that an error may have to point at are kept with their place in the file
//! (`Spanned`). Tables are never `Spanned`: a table the file only implies (`[[tiers.high.stages]]` without
//! `[tiers.high]`, or dotted keys) has no place, and toml cannot read it as `Spanned`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::{Decision, PolicyMode, SodMode};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    /// Format version of the file. Required; must be `1`.
    pub version: Spanned<i64>,
    /// `"enforce"` (default): plans are executed. `"shadow"`: plans are computed and recorded but never executed
    /// (the caller honours it).
    #[serde(default)]
    pub mode: PolicyMode,
    /// The tier whose approval chain approves the grants held by an SoD rule in `approve` mode (default `"high"`).
    #[serde(default)]
    pub sod_approval_tier: Option<Spanned<String>>,
    /// The tier whose approval chain every grant of a `privileged` entitlement goes through, birthright or not
    /// (default `"high"`).
    #[serde(default)]
    pub privileged_tier: Option<Spanned<String>>,
    /// Joiner, leaver, leave-of-absence and contractor settings. Every key has a default.
    #[serde(default)]
    pub lifecycle: Option<RawLifecycle>,
    /// The downstream systems (`[[targets]]`).
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// What can be granted on the targets (`[[entitlements]]`).
    #[serde(default)]
    pub entitlements: Vec<RawEntitlement>,
    /// Named bundles of entitlements (`[[roles]]`).
    #[serde(default)]
    pub roles: Vec<RawRole>,
    /// Conditions on the identity that assign roles (`[[rules]]`).
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// IdP groups (pushed over SCIM, matched by displayName) that assign roles (`[[group_mappings]]`).
    #[serde(default)]
    pub group_mappings: Vec<RawGroupMapping>,
    /// Approval chains by risk tier (`[tiers.NAME]`), e.g. `low`, `medium`, `high`.
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    /// Separation-of-duties rules (`[[sod]]`).
    #[serde(default)]
    pub sod: Vec<RawSod>,
}

/// `[lifecycle]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLifecycle {
    /// Days before `startDate` at which a joiner's accounts are created, disabled, with their grants (default 7).
    #[serde(default)]
    pub prestart_lead_days: Option<Spanned<i64>>,
    /// CEL condition for a leave of absence: accounts disabled, entitlements kept (default
    /// `has(workforce.employmentStatus) && workforce.employmentStatus == "leave"`).
    #[serde(default)]
    pub leave_condition: Option<Spanned<String>>,
    /// CEL condition that makes an identity a contractor (default
    /// `has(workforce.workerType) && workforce.workerType == "contractor"`).
    #[serde(default)]
    pub contractor_condition: Option<Spanned<String>>,
    /// A contractor without `endDate` is Invalid and gets no access (default true).
    #[serde(default)]
    pub contractor_requires_end_date: Option<bool>,
    /// Minutes after the leaver event at which a leaver's accounts are disabled (default 0: at once).
    #[serde(default)]
    pub lock_delay_minutes: Option<Spanned<i64>>,
    /// Hours after the leaver event at which a leaver's entitlements are revoked and accounts deleted (default 24).
    /// Must not come before the lock.
    #[serde(default)]
    pub revoke_delay_hours: Option<Spanned<i64>>,
    /// The same in minutes, for short grace periods (and tests); give one of the two.
    #[serde(default)]
    pub revoke_delay_minutes: Option<Spanned<i64>>,
    /// Attributes by which the caller matches a new hire record to an existing identity (a rehire). Data for the
    /// caller; the engine does not use it (default `["externalId", "employeeNumber"]`).
    #[serde(default)]
    pub rehire_match: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[targets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    /// Unique id, referenced by `entitlements.target` and used as the key of plans and `Current`.
    pub id: Spanned<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// `[[entitlements]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntitlement {
    /// Unique id; by convention `target:name`.
    pub id: Spanned<String>,
    /// The target it is granted on (a `targets.id`).
    pub target: Spanned<String>,
    /// The target-side name (group DN, database role, ...). Opaque to the engine.
    pub value: Spanned<String>,
    /// The tier whose chain approves a requested (non-birthright) grant: a key of `[tiers]`.
    pub risk: Spanned<String>,
    /// The application owner: the approver principal of `app_owner` stages.
    pub owner: Spanned<String>,
    /// Privileged: every grant goes through `privileged_tier`, even by a birthright role; revoked first on exit
    /// (default false).
    #[serde(default)]
    pub privileged: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// `[[roles]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRole {
    /// Unique id, referenced by `rules.roles` and `group_mappings.roles`.
    pub id: Spanned<String>,
    /// Entitlement ids the role grants.
    pub grants: Vec<Spanned<String>>,
    /// Birthright: its grants need no approval, unless privileged (default false).
    #[serde(default)]
    pub birthright: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// `[[rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    /// Unique id, recorded in the rationale of every grant the rule causes.
    pub id: Spanned<String>,
    /// CEL condition over `user`, `enterprise`, `workforce`, `groups` and `now`; must evaluate to a bool.
    pub when: Spanned<String>,
    /// Role ids assigned while the condition holds.
    pub roles: Vec<Spanned<String>>,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// `[[group_mappings]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroupMapping {
    /// The displayName of an IdP group (exact match).
    pub group: Spanned<String>,
    /// Role ids assigned to the group's members.
    pub roles: Vec<Spanned<String>>,
}

/// `[tiers.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    /// Hours a stage may stay undecided before it escalates to its `escalate_to` (default 48).
    #[serde(default)]
    pub escalate_after_hours: Option<Spanned<i64>>,
    /// Hours after which an undecided request expires (default 168). Not less than `escalate_after_hours`.
    #[serde(default)]
    pub expire_after_hours: Option<Spanned<i64>>,
    /// The ordered approval stages (`[[tiers.NAME.stages]]`), at least one.
    #[serde(default)]
    pub stages: Vec<RawStage>,
}

/// `[[tiers.NAME.stages]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    /// Id, unique within the tier.
    pub id: Spanned<String>,
    /// Who decides: `{ kind = "manager" }`, `{ kind = "app_owner" }` (the entitlement's `owner`) or
    /// `{ kind = "named", names = ["sec-1", "sec-2"] }`.
    pub approvers: RawApprovers,
    /// `"first"` (default): the first approver to decide decides for the stage. `"all"`: every approver must approve.
    #[serde(default)]
    pub decision: Decision,
    /// Principals the stage escalates to after `escalate_after_hours` (default none).
    #[serde(default)]
    pub escalate_to: Vec<Spanned<String>>,
}

/// `approvers = { kind = ..., names = [...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApprovers {
    /// `manager`, `app_owner` or `named`.
    pub kind: Spanned<ApproverKind>,
    /// The principals, for `kind = "named"` only (required there, non-empty).
    #[serde(default)]
    pub names: Option<Vec<Spanned<String>>>,
}

/// `approvers.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApproverKind {
    Manager,
    AppOwner,
    Named,
}

/// `[[sod]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSod {
    /// Unique id, named by SoD exceptions.
    pub id: Spanned<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// At least two sets of entitlement ids: a person holding at least one entitlement of each of two (or more)
    /// sets is in conflict. An entitlement appears in at most one set.
    pub conflicts: Spanned<Vec<Spanned<Vec<Spanned<String>>>>>,
    /// `record`: grant and report; `approve`: the new conflicting grants go through `sod_approval_tier`;
    /// `enforce`: the new conflicting grants are refused.
    pub mode: SodMode,
    /// The longest exception a person may be given for this rule, in days (default 90).
    #[serde(default)]
    pub max_exception_days: Option<Spanned<i64>>,
}
