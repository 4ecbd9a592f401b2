//! One identity → lifecycle state, roles, desired state per target, SoD conflicts and the next wake-up.

use std::collections::{BTreeMap, BTreeSet};

use cel::common::value::Val;
use cel::{Context, Program, Value};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::expr::{json_to_cel, object_to_cel, parse_datetime, timestamp};
use crate::{ENTERPRISE_URN, Policy, SodMode, WORKFORCE_URN};

/// The identity to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct IdentityInput<'a> {
    /// The SCIM resource id (for the caller's records; the engine does not use it).
    pub id: &'a str,
    /// The canonical SCIM document: core attributes top level (userName, active, title, displayName, emails, ...),
    /// extensions under their URN: "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User" and
    /// "urn:scimgate:params:scim:schemas:extension:workforce:2.0:User" (workerType, employmentStatus, startDate,
    /// endDate (xsd:dateTime strings), jobCode, location).
    pub doc: &'a serde_json::Map<String, serde_json::Value>,
    /// displayNames of the IdP groups the user is a member of.
    pub groups: &'a [String],
    /// The SCIM resource was DELETEd (kept archived).
    pub archived: bool,
}

/// What the caller remembers between evaluations of one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prior {
    /// When the identity became a leaver: the `since` of the last evaluation whose state was `Leaver`. The caller
    /// stores it while the state stays `Leaver` and clears it when it leaves that state (a rehire).
    #[serde(default)]
    pub leaver_since: Option<DateTime<Utc>>,
}

/// An approved SoD exception held by the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SodException {
    /// The SoD rule id.
    pub rule: String,
    /// The exception no longer applies from this instant on.
    pub expires: DateTime<Utc>,
}

/// Where the identity is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleState {
    /// Hired, `startDate` still ahead. Accounts are created disabled from `provision_at` on.
    PreHire {
        start: DateTime<Utc>,
        provision_at: DateTime<Utc>,
    },
    /// Working: accounts enabled.
    Active,
    /// On leave of absence: accounts disabled, entitlements kept.
    Leave,
    /// Gone (archived, `active` false, `employmentStatus` "terminated", or `endDate` reached) since `since`.
    Leaver { since: DateTime<Utc> },
    /// The record cannot be acted on (a contractor without `endDate`): no access.
    Invalid { reason: String },
}

/// Where a leaver is in the leaver timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaverPhase {
    /// Before `since + lock_delay`: nothing changes yet.
    BeforeLock,
    /// From the lock on: every account disabled, entitlements frozen (nothing granted, nothing revoked).
    Locked,
    /// From `since + revoke_delay` on: every entitlement revoked (privileged first), every account deleted.
    Removed,
}

/// How a role came to apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A rule's condition held.
    Rule(String),
    /// The identity is in a mapped IdP group (its displayName).
    Group(String),
}

/// A role that applies to the identity, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleMatch {
    pub role: String,
    pub via: Via,
}

/// The state of an account on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// No account.
    #[default]
    Absent,
    Disabled,
    Enabled,
}

/// Why an entitlement is desired: everything that grants it, and the policy version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rationale {
    /// Rule ids (sorted).
    pub rules: Vec<String>,
    /// Role ids (sorted).
    pub roles: Vec<String>,
    /// IdP group displayNames (sorted).
    pub groups: Vec<String>,
    pub policy_hash: String,
    /// A birthright role grants it (no approval needed unless privileged).
    pub birthright: bool,
}

impl Rationale {
    fn merge(&mut self, other: &Rationale) {
        for (mine, theirs) in [(&mut self.rules, &other.rules), (&mut self.roles, &other.roles)] {
            mine.extend(theirs.iter().cloned());
            mine.sort();
            mine.dedup();
        }
        self.groups.extend(other.groups.iter().cloned());
        self.groups.sort();
        self.groups.dedup();
        self.birthright |= other.birthright;
    }

    /// The union of several rationales.
    pub(crate) fn union<'a>(policy_hash: &str, all: impl Iterator<Item = &'a Rationale>) -> Rationale {
        let mut out = Rationale {
            policy_hash: policy_hash.to_owned(),
            ..Rationale::default()
        };
        for r in all {
            out.merge(r);
        }
        out.birthright = false;
        out
    }
}

/// The desired state of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDesired {
    pub account: AccountState,
    /// Entitlement id → why.
    pub entitlements: BTreeMap<String, Rationale>,
}

/// An SoD rule the desired state breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SodHit {
    pub rule: String,
    pub mode: SodMode,
    /// The desired entitlements that are in the rule's sets (sorted).
    pub entitlements: Vec<String>,
    /// A non-expired exception for the rule exists.
    pub excepted: bool,
}

/// The result of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    pub state: LifecycleState,
    /// For a `Leaver`, where in the leaver timeline; `None` otherwise.
    #[serde(default)]
    pub leaver_phase: Option<LeaverPhase>,
    /// Rule matches in rule order, then group matches in mapping order.
    pub roles: Vec<RoleMatch>,
    /// Target id → desired account and entitlements. A target absent from the map is desired absent.
    pub desired: BTreeMap<String, TargetDesired>,
    /// SoD rules the desired entitlements break, in rule order.
    pub sod: Vec<SodHit>,
    /// The next instant at which evaluating again can give another answer (conditions that read `now` aside).
    pub next_wakeup: Option<DateTime<Utc>>,
    /// Problems that did not stop the evaluation (a rule that failed at run time, an unreadable date, ...).
    pub warnings: Vec<String>,
    pub policy_hash: String,
}

/// Runs a condition: `Some(bool)`, or `None` after a warning.
fn run(program: &Program, ctx: &Context<'_, '_>, what: &str, warnings: &mut Vec<String>) -> Option<bool> {
    match program.execute(ctx) {
        Ok(Value::Bool(b)) => Some(b),
        Ok(other) => {
            warnings.push(format!(
                "{what}: evaluated to {}, not a bool; taken as false",
                other.type_of()
            ));
            None
        }
        Err(e) => {
            warnings.push(format!("{what}: {e}; taken as false"));
            None
        }
    }
}

fn bind(ctx: &mut Context<'_, '_>, name: &str, value: Value, warnings: &mut Vec<String>) {
    match <Box<dyn Val>>::try_from(value) {
        Ok(v) => ctx.add_variable_as_val(name, v),
        Err(e) => warnings.push(format!("variable {name}: {e}")),
    }
}

/// Reads a date attribute of the workforce extension.
fn date_attr(
    workforce: Option<&serde_json::Map<String, serde_json::Value>>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Option<DateTime<Utc>> {
    match workforce?.get(key)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => {
            let parsed = parse_datetime(s);
            if parsed.is_none() {
                warnings.push(format!("workforce.{key} {s:?} is not an xsd:dateTime; ignored"));
            }
            parsed
        }
        other => {
            warnings.push(format!("workforce.{key} is not a string ({other}); ignored"));
            None
        }
    }
}

impl Policy {
    /// Evaluates one identity at `now`. Pure and deterministic: the same arguments always give the same result.
    ///
    /// `prior` carries the leaver timestamp of earlier evaluations; `exceptions` are the identity's approved SoD
    /// exceptions (expired ones are ignored).
    pub fn evaluate(
        &self,
        input: &IdentityInput<'_>,
        prior: &Prior,
        exceptions: &[SodException],
        now: DateTime<Utc>,
    ) -> Evaluation {
        let mut warnings = Vec::new();
        let hash = self.hash.as_str();

        // The CEL variables.
        let workforce_doc = input.doc.get(WORKFORCE_URN).and_then(serde_json::Value::as_object);
        let start = date_attr(workforce_doc, "startDate", &mut warnings);
        let end = date_attr(workforce_doc, "endDate", &mut warnings);
        let mut ctx = Context::with_env(std::sync::Arc::clone(&self.env));
        let mut user: Vec<(String, Value)> = input
            .doc
            .iter()
            .filter(|(k, _)| !k.starts_with("urn:"))
            .map(|(k, v)| (k.clone(), json_to_cel(v)))
            .collect();
        if !input.doc.contains_key("active") {
            user.push(("active".to_owned(), Value::Bool(true)));
        }
        bind(&mut ctx, "user", object_to_cel(user.into_iter()), &mut warnings);
        let enterprise = input.doc.get(ENTERPRISE_URN).and_then(serde_json::Value::as_object);
        let enterprise = enterprise
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), json_to_cel(v)));
        bind(&mut ctx, "enterprise", object_to_cel(enterprise), &mut warnings);
        let workforce = workforce_doc.into_iter().flatten().map(|(k, v)| {
            let value = match (k.as_str(), start, end) {
                ("startDate", Some(t), _) | ("endDate", _, Some(t)) => timestamp(t),
                _ => json_to_cel(v),
            };
            (k.clone(), value)
        });
        bind(&mut ctx, "workforce", object_to_cel(workforce), &mut warnings);
        let groups = Value::List(std::sync::Arc::new(
            input.groups.iter().map(|g| Value::from(g.as_str())).collect(),
        ));
        bind(&mut ctx, "groups", groups, &mut warnings);
        bind(&mut ctx, "now", timestamp(now), &mut warnings);

        // Roles.
        let mut roles = Vec::new();
        for (rule, program) in self.rules.iter().zip(&self.rule_programs) {
            let what = format!("rule '{}'", rule.id);
            if run(program, &ctx, &what, &mut warnings) == Some(true) {
                roles.extend(rule.roles.iter().map(|r| RoleMatch {
                    role: r.clone(),
                    via: Via::Rule(rule.id.clone()),
                }));
            }
        }
        for mapping in &self.group_mappings {
            if input.groups.contains(&mapping.group) {
                roles.extend(mapping.roles.iter().map(|r| RoleMatch {
                    role: r.clone(),
                    via: Via::Group(mapping.group.clone()),
                }));
            }
        }

        // Lifecycle state.
        let active = !matches!(input.doc.get("active"), Some(serde_json::Value::Bool(false)));
        let status = workforce_doc
            .and_then(|w| w.get("employmentStatus"))
            .and_then(serde_json::Value::as_str);
        let terminated = status.is_some_and(|s| s.eq_ignore_ascii_case("terminated"));
        let ended = end.is_some_and(|e| e <= now);
        let lc = &self.lifecycle;
        let mut leaver_phase = None;
        let state = if input.archived || !active || terminated || ended {
            let since = prior.leaver_since.unwrap_or(now);
            leaver_phase = Some(if now < since + lc.lock_delay {
                LeaverPhase::BeforeLock
            } else if now < since + lc.revoke_delay {
                LeaverPhase::Locked
            } else {
                LeaverPhase::Removed
            });
            LifecycleState::Leaver { since }
        } else if lc.contractor_requires_end_date
            && end.is_none()
            && run(
                &self.contractor_program,
                &ctx,
                "lifecycle.contractor_condition",
                &mut warnings,
            ) == Some(true)
        {
            warnings.push("contractor without endDate: no access until an endDate is set".to_owned());
            LifecycleState::Invalid {
                reason: "contractor without endDate".to_owned(),
            }
        } else if let Some(start) = start.filter(|s| *s > now) {
            LifecycleState::PreHire {
                start,
                provision_at: start - lc.prestart_lead,
            }
        } else if run(&self.leave_program, &ctx, "lifecycle.leave_condition", &mut warnings) == Some(true) {
            LifecycleState::Leave
        } else {
            LifecycleState::Active
        };

        // Entitlements granted by the roles, with their rationale.
        let mut granted: BTreeMap<&str, Rationale> = BTreeMap::new();
        for m in &roles {
            let Some(role) = self.role(&m.role) else { continue };
            for g in &role.grants {
                let r = granted.entry(g.as_str()).or_insert_with(|| Rationale {
                    policy_hash: hash.to_owned(),
                    ..Rationale::default()
                });
                match &m.via {
                    Via::Rule(id) => r.rules.push(id.clone()),
                    Via::Group(name) => r.groups.push(name.clone()),
                }
                r.roles.push(role.id.clone());
                r.birthright |= role.birthright;
            }
        }
        for r in granted.values_mut() {
            for v in [&mut r.rules, &mut r.roles, &mut r.groups] {
                v.sort();
                v.dedup();
            }
        }

        // Desired state.
        let account = match (&state, leaver_phase) {
            (LifecycleState::Active, _) => Some(AccountState::Enabled),
            (LifecycleState::Leave, _) => Some(AccountState::Disabled),
            (LifecycleState::PreHire { provision_at, .. }, _) => {
                (now >= *provision_at).then_some(AccountState::Disabled)
            }
            (LifecycleState::Leaver { .. }, Some(LeaverPhase::BeforeLock)) => Some(AccountState::Enabled),
            (LifecycleState::Leaver { .. }, Some(LeaverPhase::Locked)) => Some(AccountState::Disabled),
            (LifecycleState::Leaver { .. }, _) | (LifecycleState::Invalid { .. }, _) => None,
        };
        let mut desired: BTreeMap<String, TargetDesired> = BTreeMap::new();
        if let Some(account) = account {
            for (id, rationale) in granted {
                let Some(ent) = self.entitlements.get(id) else { continue };
                desired
                    .entry(ent.target.clone())
                    .or_insert_with(|| TargetDesired {
                        account,
                        entitlements: BTreeMap::new(),
                    })
                    .entitlements
                    .insert(id.to_owned(), rationale);
            }
        }

        // Separation of duties, over the union of every target's desired entitlements.
        let held: BTreeSet<&str> = desired
            .values()
            .flat_map(|t| t.entitlements.keys())
            .map(String::as_str)
            .collect();
        let mut sod = Vec::new();
        let mut wakeups: Vec<DateTime<Utc>> = Vec::new();
        for rule in &self.sod {
            let sets_hit = rule
                .conflicts
                .iter()
                .filter(|set| set.iter().any(|e| held.contains(e.as_str())))
                .count();
            if sets_hit < 2 {
                continue;
            }
            let mut entitlements: Vec<String> = rule
                .conflicts
                .iter()
                .flatten()
                .filter(|e| held.contains(e.as_str()))
                .cloned()
                .collect();
            entitlements.sort();
            let valid = exceptions
                .iter()
                .filter(|x| x.rule == rule.id && x.expires > now)
                .map(|x| x.expires)
                .max();
            if let Some(expires) = valid {
                wakeups.push(expires);
            }
            sod.push(SodHit {
                rule: rule.id.clone(),
                mode: rule.mode,
                entitlements,
                excepted: valid.is_some(),
            });
        }

        // When the answer changes next.
        match &state {
            LifecycleState::PreHire { start, provision_at } => wakeups.extend([*provision_at, *start]),
            LifecycleState::Leaver { since } => wakeups.extend([*since + lc.lock_delay, *since + lc.revoke_delay]),
            _ => {}
        }
        if leaver_phase.is_none() {
            wakeups.extend(end);
        }
        let next_wakeup = wakeups.into_iter().filter(|t| *t > now).min();

        Evaluation {
            state,
            leaver_phase,
            roles,
            desired,
            sod,
            next_wakeup,
            warnings,
            policy_hash: hash.to_owned(),
        }
    }
}
