//! From text to a checked, compiled [`Policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use chrono::Duration;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::error::{Kind, PolicyError, Reporter};
use crate::expr::{self, Source};
use crate::file::{ApproverKind, RawPolicy, RawTier};
use crate::{
    Approvers, Entitlement, GroupMapping, Lifecycle, Policy, Role, Rule, SodMode, SodRule, Stage, Target, Tier,
};

/// The default leave-of-absence condition.
pub(crate) const DEFAULT_LEAVE: &str = r#"has(workforce.employmentStatus) && workforce.employmentStatus == "leave""#;
/// The default contractor condition.
pub(crate) const DEFAULT_CONTRACTOR: &str = r#"has(workforce.workerType) && workforce.workerType == "contractor""#;
const DEFAULT_TIER: &str = "high";

/// The largest number of hours any delay may be (ten years).
const MAX_HOURS: i64 = 87_600;

pub(crate) fn parse(text: &str, source: &str) -> Result<Policy, Vec<PolicyError>> {
    let mut rep = Reporter::new(text, source);

    // Syntax first, so that a schema error is never mistaken for one.
    if let Err(e) = text.parse::<toml::Table>() {
        let offset = e.span().map_or(0, |s| s.start);
        return Err(vec![rep.syntax(offset, one_line(e.message()))]);
    }
    let raw: RawPolicy = match serde_path_to_error::deserialize(toml::Deserializer::new(text)) {
        Ok(raw) => raw,
        Err(e) => {
            let path = path_string(e.path());
            let inner = e.into_inner();
            let offset = inner.span().map_or(0, |s| s.start);
            let path = if path.is_empty() {
                "(top level)".to_owned()
            } else {
                path
            };
            return Err(vec![rep.make(Kind::Schema, offset, path, one_line(inner.message()))]);
        }
    };

    let built = build(raw, &mut rep);
    let errors = rep.into_sorted();
    match built {
        Some(mut policy) if errors.is_empty() => {
            policy.source = source.to_owned();
            policy.hash = hex(&Sha256::digest(text.as_bytes()));
            Ok(policy)
        }
        _ if errors.is_empty() => Err(vec![PolicyError::Invalid {
            file: source.to_owned(),
            line: 1,
            column: 1,
            path: "(top level)".to_owned(),
            message: "invalid policy".to_owned(),
        }]),
        _ => Err(errors),
    }
}

/// Where a tier is defined: its `[tiers.NAME]` header, else its first `[[tiers.NAME.stages]]`, else its first
/// mention (a tier table the file only implies has no span of its own).
fn tier_offset(text: &str, name: &str) -> usize {
    [
        format!("[tiers.{name}]"),
        format!("[[tiers.{name}.stages]]"),
        format!("tiers.{name}"),
    ]
    .iter()
    .find_map(|needle| text.find(needle.as_str()))
    .unwrap_or(0)
}

/// A multi-line message from the toml crate on one line.
fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `rules[3].when` from serde's path, without the segments of span bookkeeping.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// A named element of an array of tables: `roles[id=sales]`, or `roles[2]` when the id is empty.
fn elem(array: &str, index: usize, id: &str) -> String {
    if id.is_empty() {
        format!("{array}[{index}]")
    } else {
        format!("{array}[id={id}]")
    }
}

fn start<T>(s: &Spanned<T>) -> usize {
    s.span().start
}

/// An integer setting within bounds, or its default.
fn bounded(rep: &mut Reporter<'_>, value: Option<&Spanned<i64>>, path: &str, range: Range<i64>, default: i64) -> i64 {
    match value {
        None => default,
        Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            rep.report(
                Kind::Invalid,
                start(v),
                path,
                format!(
                    "must be between {} and {}, not {}",
                    range.start,
                    range.end - 1,
                    v.get_ref()
                ),
            );
            default
        }
    }
}

/// Ids must be non-empty and unique; returns the first place of each.
fn unique_ids<'a>(
    rep: &mut Reporter<'_>,
    array: &str,
    what: &str,
    ids: impl Iterator<Item = &'a Spanned<String>>,
) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.enumerate() {
        let name = id.get_ref();
        if name.trim().is_empty() {
            rep.report(
                Kind::Invalid,
                start(id),
                format!("{array}[{i}].id"),
                format!("{what} id must not be empty"),
            );
        } else if let Some(&first) = seen.get(name.as_str()) {
            let at = rep.at(first);
            rep.report(
                Kind::Duplicate,
                start(id),
                format!("{array}[{i}].id"),
                format!("duplicate {what} id '{name}' (first defined at {at})"),
            );
        } else {
            seen.insert(name.clone(), start(id));
        }
    }
    seen
}

fn check_role_refs(rep: &mut Reporter<'_>, roles: &BTreeMap<String, usize>, refs: &[Spanned<String>], path: &str) {
    for (j, r) in refs.iter().enumerate() {
        if !roles.contains_key(r.get_ref().as_str()) {
            rep.report(
                Kind::UnknownReference,
                start(r),
                format!("{path}.roles[{j}]"),
                format!("unknown role '{}'", r.get_ref()),
            );
        }
    }
}

fn build(raw: RawPolicy, rep: &mut Reporter<'_>) -> Option<Policy> {
    let env = expr::env();

    if *raw.version.get_ref() != 1 {
        rep.report(
            Kind::Invalid,
            start(&raw.version),
            "version",
            format!(
                "unsupported policy version {}; this engine reads version 1",
                raw.version.get_ref()
            ),
        );
    }

    // Targets.
    let target_ids = unique_ids(rep, "targets", "target", raw.targets.iter().map(|t| &t.id));
    let targets: Vec<Target> = raw
        .targets
        .iter()
        .map(|t| Target {
            id: t.id.get_ref().clone(),
            description: t.description.clone(),
        })
        .collect();

    // Tiers.
    let mut tiers = BTreeMap::new();
    for (name, tier) in &raw.tiers {
        tiers.insert(name.clone(), build_tier(rep, name, tier));
    }
    let tier_names: BTreeSet<&str> = raw.tiers.keys().map(String::as_str).collect();

    // Entitlements.
    let ent_ids = unique_ids(
        rep,
        "entitlements",
        "entitlement",
        raw.entitlements.iter().map(|e| &e.id),
    );
    let mut entitlements = BTreeMap::new();
    for (i, e) in raw.entitlements.iter().enumerate() {
        let path = elem("entitlements", i, e.id.get_ref());
        if !target_ids.contains_key(e.target.get_ref().as_str()) {
            rep.report(
                Kind::UnknownReference,
                start(&e.target),
                format!("{path}.target"),
                format!("unknown target '{}'", e.target.get_ref()),
            );
        }
        if !tier_names.contains(e.risk.get_ref().as_str()) {
            rep.report(
                Kind::UnknownReference,
                start(&e.risk),
                format!("{path}.risk"),
                format!("unknown tier '{}' (tiers: {})", e.risk.get_ref(), list(&tier_names)),
            );
        }
        if e.value.get_ref().is_empty() {
            rep.report(
                Kind::Invalid,
                start(&e.value),
                format!("{path}.value"),
                "must not be empty",
            );
        }
        if e.owner.get_ref().trim().is_empty() {
            rep.report(
                Kind::Invalid,
                start(&e.owner),
                format!("{path}.owner"),
                "must not be empty",
            );
        }
        entitlements
            .entry(e.id.get_ref().clone())
            .or_insert_with(|| Entitlement {
                id: e.id.get_ref().clone(),
                target: e.target.get_ref().clone(),
                value: e.value.get_ref().clone(),
                risk: e.risk.get_ref().clone(),
                owner: e.owner.get_ref().clone(),
                privileged: e.privileged,
                description: e.description.clone(),
            });
    }

    // The special tiers.
    let tier_setting =
        |rep: &mut Reporter<'_>, setting: &Option<Spanned<String>>, key: &str, needed: bool| match setting {
            Some(name) => {
                if !tier_names.contains(name.get_ref().as_str()) {
                    rep.report(
                        Kind::UnknownReference,
                        start(name),
                        key,
                        format!("unknown tier '{}' (tiers: {})", name.get_ref(), list(&tier_names)),
                    );
                }
                name.get_ref().clone()
            }
            None => {
                if needed && !tier_names.contains(DEFAULT_TIER) {
                    rep.report(
                        Kind::UnknownReference,
                        0,
                        key,
                        format!("the default tier '{DEFAULT_TIER}' is needed here but not defined in [tiers]"),
                    );
                }
                DEFAULT_TIER.to_owned()
            }
        };
    let privileged_needed = raw.entitlements.iter().any(|e| e.privileged);
    let privileged_tier = tier_setting(rep, &raw.privileged_tier, "privileged_tier", privileged_needed);
    let sod_needed = raw.sod.iter().any(|s| s.mode == SodMode::Approve);
    let sod_approval_tier = tier_setting(rep, &raw.sod_approval_tier, "sod_approval_tier", sod_needed);

    // Roles.
    let role_ids = unique_ids(rep, "roles", "role", raw.roles.iter().map(|r| &r.id));
    let mut roles = Vec::new();
    let mut role_index = BTreeMap::new();
    for (i, r) in raw.roles.iter().enumerate() {
        let path = elem("roles", i, r.id.get_ref());
        let mut seen = BTreeSet::new();
        for (j, g) in r.grants.iter().enumerate() {
            if !ent_ids.contains_key(g.get_ref().as_str()) {
                rep.report(
                    Kind::UnknownReference,
                    start(g),
                    format!("{path}.grants[{j}]"),
                    format!("unknown entitlement '{}'", g.get_ref()),
                );
            } else if !seen.insert(g.get_ref().as_str()) {
                rep.report(
                    Kind::Duplicate,
                    start(g),
                    format!("{path}.grants[{j}]"),
                    format!("entitlement '{}' listed twice", g.get_ref()),
                );
            }
        }
        if !role_index.contains_key(r.id.get_ref()) {
            role_index.insert(r.id.get_ref().clone(), roles.len());
            roles.push(Role {
                id: r.id.get_ref().clone(),
                grants: r.grants.iter().map(|g| g.get_ref().clone()).collect(),
                birthright: r.birthright,
                description: r.description.clone(),
            });
        }
    }

    // Rules.
    unique_ids(rep, "rules", "rule", raw.rules.iter().map(|r| &r.id));
    let mut rules = Vec::new();
    let mut rule_programs = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let path = elem("rules", i, r.id.get_ref());
        let when = Source {
            value: r.when.get_ref(),
            span: Some(r.when.span()),
            path: format!("{path}.when"),
        };
        let program = expr::compile(&env, &when, rep);
        if r.roles.is_empty() {
            rep.report(
                Kind::Invalid,
                start(&r.id),
                format!("{path}.roles"),
                "must name at least one role",
            );
        }
        check_role_refs(rep, &role_ids, &r.roles, &path);
        if let Some(program) = program {
            rules.push(Rule {
                id: r.id.get_ref().clone(),
                when: r.when.get_ref().clone(),
                roles: r.roles.iter().map(|x| x.get_ref().clone()).collect(),
                description: r.description.clone(),
            });
            rule_programs.push(program);
        }
    }

    // Group mappings.
    let mut groups_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut group_mappings = Vec::new();
    for (i, m) in raw.group_mappings.iter().enumerate() {
        let path = format!("group_mappings[{i}]");
        if m.group.get_ref().trim().is_empty() {
            rep.report(
                Kind::Invalid,
                start(&m.group),
                format!("{path}.group"),
                "must not be empty",
            );
        } else if let Some(&first) = groups_seen.get(m.group.get_ref()) {
            let at = rep.at(first);
            rep.report(
                Kind::Duplicate,
                start(&m.group),
                format!("{path}.group"),
                format!("group '{}' is already mapped (at {at})", m.group.get_ref()),
            );
        } else {
            groups_seen.insert(m.group.get_ref().clone(), start(&m.group));
        }
        if m.roles.is_empty() {
            rep.report(
                Kind::Invalid,
                start(&m.group),
                format!("{path}.roles"),
                "must name at least one role",
            );
        }
        check_role_refs(rep, &role_ids, &m.roles, &path);
        group_mappings.push(GroupMapping {
            group: m.group.get_ref().clone(),
            roles: m.roles.iter().map(|x| x.get_ref().clone()).collect(),
        });
    }

    // SoD.
    unique_ids(rep, "sod", "SoD rule", raw.sod.iter().map(|s| &s.id));
    let mut sod = Vec::new();
    for (i, s) in raw.sod.iter().enumerate() {
        let path = elem("sod", i, s.id.get_ref());
        let sets = s.conflicts.get_ref();
        if sets.len() < 2 {
            rep.report(
                Kind::Invalid,
                start(&s.conflicts),
                format!("{path}.conflicts"),
                format!("needs at least 2 entitlement sets, has {}", sets.len()),
            );
        }
        let mut in_set: BTreeMap<&str, usize> = BTreeMap::new();
        for (j, set) in sets.iter().enumerate() {
            if set.get_ref().is_empty() {
                rep.report(
                    Kind::Invalid,
                    start(set),
                    format!("{path}.conflicts[{j}]"),
                    "an empty set",
                );
            }
            for (k, e) in set.get_ref().iter().enumerate() {
                let key = format!("{path}.conflicts[{j}][{k}]");
                if !ent_ids.contains_key(e.get_ref().as_str()) {
                    rep.report(
                        Kind::UnknownReference,
                        start(e),
                        key,
                        format!("unknown entitlement '{}'", e.get_ref()),
                    );
                } else if let Some(&other) = in_set.get(e.get_ref().as_str()) {
                    let message = if other == j {
                        format!("entitlement '{}' listed twice in this set", e.get_ref())
                    } else {
                        format!(
                            "entitlement '{}' is already in set {other}: the sets must be disjoint",
                            e.get_ref()
                        )
                    };
                    rep.report(Kind::Duplicate, start(e), key, message);
                } else {
                    in_set.insert(e.get_ref().as_str(), j);
                }
            }
        }
        let max_days = bounded(
            rep,
            s.max_exception_days.as_ref(),
            &format!("{path}.max_exception_days"),
            1..3651,
            90,
        );
        sod.push(SodRule {
            id: s.id.get_ref().clone(),
            description: s.description.clone(),
            mode: s.mode,
            max_exception_days: u32::try_from(max_days).unwrap_or(90),
            conflicts: sets
                .iter()
                .map(|set| set.get_ref().iter().map(|e| e.get_ref().clone()).collect())
                .collect(),
        });
    }

    // Lifecycle.
    let lc = raw.lifecycle.as_ref();
    let lead_days = bounded(
        rep,
        lc.and_then(|l| l.prestart_lead_days.as_ref()),
        "lifecycle.prestart_lead_days",
        0..3651,
        7,
    );
    let lock_minutes = bounded(
        rep,
        lc.and_then(|l| l.lock_delay_minutes.as_ref()),
        "lifecycle.lock_delay_minutes",
        0..MAX_HOURS * 60 + 1,
        0,
    );
    let revoke_minutes = match lc.and_then(|l| l.revoke_delay_minutes.as_ref()) {
        Some(m) => {
            if let Some(h) = lc.and_then(|l| l.revoke_delay_hours.as_ref()) {
                rep.report(
                    Kind::Invalid,
                    start(h),
                    "lifecycle.revoke_delay_hours",
                    "give revoke_delay_hours or revoke_delay_minutes, not both".to_string(),
                );
            }
            bounded(
                rep,
                Some(m),
                "lifecycle.revoke_delay_minutes",
                0..MAX_HOURS * 60 + 1,
                24 * 60,
            )
        }
        None => {
            bounded(
                rep,
                lc.and_then(|l| l.revoke_delay_hours.as_ref()),
                "lifecycle.revoke_delay_hours",
                0..MAX_HOURS + 1,
                24,
            ) * 60
        }
    };
    if lock_minutes > revoke_minutes {
        let offset = lc.and_then(|l| l.lock_delay_minutes.as_ref()).map_or(0, start);
        rep.report(
            Kind::Invalid,
            offset,
            "lifecycle.lock_delay_minutes",
            format!("the lock ({lock_minutes} min) must not come after the revoke ({revoke_minutes} min)"),
        );
    }
    let condition = |rep: &mut Reporter<'_>, value: Option<&Spanned<String>>, key: &str, default: &'static str| {
        let (text, span) = match value {
            Some(v) => (v.get_ref().clone(), Some(v.span())),
            None => (default.to_owned(), None),
        };
        let program = expr::compile(
            &env,
            &Source {
                value: &text,
                span,
                path: format!("lifecycle.{key}"),
            },
            rep,
        );
        (text, program)
    };
    let (leave_condition, leave_program) = condition(
        rep,
        lc.and_then(|l| l.leave_condition.as_ref()),
        "leave_condition",
        DEFAULT_LEAVE,
    );
    let (contractor_condition, contractor_program) = condition(
        rep,
        lc.and_then(|l| l.contractor_condition.as_ref()),
        "contractor_condition",
        DEFAULT_CONTRACTOR,
    );
    let rehire_match = match lc.and_then(|l| l.rehire_match.as_ref()) {
        None => vec!["externalId".to_owned(), "employeeNumber".to_owned()],
        Some(list) => {
            for (i, a) in list.get_ref().iter().enumerate() {
                if a.get_ref().trim().is_empty() {
                    rep.report(
                        Kind::Invalid,
                        start(a),
                        format!("lifecycle.rehire_match[{i}]"),
                        "must not be empty",
                    );
                }
            }
            list.get_ref().iter().map(|a| a.get_ref().clone()).collect()
        }
    };
    let lifecycle = Lifecycle {
        prestart_lead: Duration::days(lead_days),
        leave_condition,
        contractor_condition,
        contractor_requires_end_date: lc.and_then(|l| l.contractor_requires_end_date).unwrap_or(true),
        lock_delay: Duration::minutes(lock_minutes),
        revoke_delay: Duration::minutes(revoke_minutes),
        rehire_match,
    };

    Some(Policy {
        source: String::new(),
        hash: String::new(),
        mode: raw.mode,
        sod_approval_tier,
        privileged_tier,
        lifecycle,
        targets,
        entitlements,
        roles,
        role_index,
        rules,
        rule_programs,
        group_mappings,
        tiers,
        sod,
        leave_program: leave_program?,
        contractor_program: contractor_program?,
        env,
    })
}

fn list(names: &BTreeSet<&str>) -> String {
    if names.is_empty() {
        "none defined".to_owned()
    } else {
        names.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

fn build_tier(rep: &mut Reporter<'_>, name: &str, t: &RawTier) -> Tier {
    let here = tier_offset(rep.text(), name);
    let path = format!("tiers.{name}");
    let escalate = bounded(
        rep,
        t.escalate_after_hours.as_ref(),
        &format!("{path}.escalate_after_hours"),
        1..MAX_HOURS + 1,
        48,
    );
    let expire = bounded(
        rep,
        t.expire_after_hours.as_ref(),
        &format!("{path}.expire_after_hours"),
        1..MAX_HOURS + 1,
        168,
    );
    if expire < escalate {
        let offset = t.expire_after_hours.as_ref().map_or(here, start);
        rep.report(
            Kind::Invalid,
            offset,
            format!("{path}.expire_after_hours"),
            format!("a request would expire ({expire} h) before it escalates ({escalate} h)"),
        );
    }
    if t.stages.is_empty() {
        rep.report(
            Kind::Invalid,
            here,
            format!("{path}.stages"),
            "a tier needs at least one stage",
        );
    }
    unique_ids(rep, &format!("{path}.stages"), "stage", t.stages.iter().map(|s| &s.id));
    let mut stages = Vec::new();
    for (i, s) in t.stages.iter().enumerate() {
        let spath = elem(&format!("{path}.stages"), i, s.id.get_ref());
        let a = &s.approvers;
        let approvers = match (*a.kind.get_ref(), &a.names) {
            (ApproverKind::Manager, None) => Approvers::Manager,
            (ApproverKind::AppOwner, None) => Approvers::AppOwner,
            (ApproverKind::Named, Some(names)) if !names.is_empty() => {
                for (j, n) in names.iter().enumerate() {
                    if n.get_ref().trim().is_empty() {
                        rep.report(
                            Kind::Invalid,
                            start(n),
                            format!("{spath}.approvers.names[{j}]"),
                            "must not be empty",
                        );
                    }
                }
                Approvers::Named(names.iter().map(|n| n.get_ref().clone()).collect())
            }
            (ApproverKind::Named, _) => {
                rep.report(
                    Kind::Invalid,
                    start(&a.kind),
                    format!("{spath}.approvers"),
                    "kind = \"named\" needs a non-empty `names` list",
                );
                continue;
            }
            (_, Some(_)) => {
                rep.report(
                    Kind::Invalid,
                    start(&a.kind),
                    format!("{spath}.approvers.names"),
                    "`names` is only for kind = \"named\"",
                );
                continue;
            }
        };
        for (j, n) in s.escalate_to.iter().enumerate() {
            if n.get_ref().trim().is_empty() {
                rep.report(
                    Kind::Invalid,
                    start(n),
                    format!("{spath}.escalate_to[{j}]"),
                    "must not be empty",
                );
            }
        }
        stages.push(Stage {
            id: s.id.get_ref().clone(),
            approvers,
            decision: s.decision,
            escalate_to: s.escalate_to.iter().map(|n| n.get_ref().clone()).collect(),
        });
    }
    Tier {
        name: name.to_owned(),
        stages,
        escalate_after: Duration::hours(escalate),
        expire_after: Duration::hours(expire),
    }
}
