//! Tests: parse errors, lifecycle states and JML scenarios, SoD, determinism, a property test of plan convergence.

#![allow(clippy::unwrap_used)]

mod errors;
mod prop;
mod scenarios;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Map, Value, json};

use crate::{
    AccountState, Action, Current, Evaluation, IdentityInput, Plan, PlanItem, Policy, Prior, SodException,
    TargetCurrent,
};

pub(crate) const EXAMPLE: &str = include_str!("../../../../examples/policy.toml");

/// The policy the scenarios run against. `{SOD_MODE}` is the mode of the `ap-pay` rule.
const TEST_POLICY: &str = r#"
version = 1

[lifecycle]
prestart_lead_days = 7
lock_delay_minutes = 0
revoke_delay_hours = 24

[[targets]]
id = "ldap"
[[targets]]
id = "erp"
[[targets]]
id = "db"

[[entitlements]]
id = "ldap:vpn"
target = "ldap"
value = "cn=vpn"
risk = "low"
owner = "net"
[[entitlements]]
id = "ldap:sales"
target = "ldap"
value = "cn=sales"
risk = "low"
owner = "sales-ops"
[[entitlements]]
id = "ldap:eng"
target = "ldap"
value = "cn=eng"
risk = "low"
owner = "eng"
[[entitlements]]
id = "ldap:admin"
target = "ldap"
value = "cn=admins"
risk = "high"
owner = "sec"
privileged = true
[[entitlements]]
id = "erp:report"
target = "erp"
value = "REPORT"
risk = "low"
owner = "fin"
[[entitlements]]
id = "erp:vendor-create"
target = "erp"
value = "VENDOR"
risk = "medium"
owner = "fin"
[[entitlements]]
id = "erp:payment-approve"
target = "erp"
value = "PAY"
risk = "high"
owner = "fin"
[[entitlements]]
id = "erp:gl-post"
target = "erp"
value = "GLPOST"
risk = "medium"
owner = "fin"
[[entitlements]]
id = "erp:gl-approve"
target = "erp"
value = "GLAPPROVE"
risk = "high"
owner = "ctrl"
[[entitlements]]
id = "db:read"
target = "db"
value = "reader"
risk = "low"
owner = "dba-team"
[[entitlements]]
id = "db:owner"
target = "db"
value = "owner"
risk = "high"
owner = "dba-team"
privileged = true

[[roles]]
id = "employee"
grants = ["ldap:vpn"]
birthright = true
[[roles]]
id = "sales"
grants = ["ldap:sales", "erp:report"]
birthright = true
[[roles]]
id = "engineering"
grants = ["ldap:eng", "db:read"]
birthright = true
[[roles]]
id = "ap"
grants = ["erp:vendor-create"]
birthright = true
[[roles]]
id = "approver"
grants = ["erp:payment-approve"]
birthright = true
[[roles]]
id = "gl"
grants = ["erp:gl-post"]
birthright = true
[[roles]]
id = "controller"
grants = ["erp:gl-approve"]
birthright = true
[[roles]]
id = "dba"
grants = ["db:owner"]
birthright = true
[[roles]]
id = "admin"
grants = ["ldap:admin"]
[[roles]]
id = "analyst"
grants = ["erp:vendor-create", "erp:report"]

[[rules]]
id = "employees"
when = 'has(workforce.workerType) && workforce.workerType in ["employee", "contractor"]'
roles = ["employee"]
[[rules]]
id = "sales"
when = 'has(enterprise.department) && enterprise.department == "Sales"'
roles = ["sales"]
[[rules]]
id = "engineering"
when = 'has(enterprise.department) && enterprise.department == "Engineering"'
roles = ["engineering"]
[[rules]]
id = "ap"
when = 'has(workforce.jobCode) && workforce.jobCode == "AP"'
roles = ["ap"]
[[rules]]
id = "approver"
when = 'has(workforce.jobCode) && workforce.jobCode == "APPROVER"'
roles = ["approver"]
[[rules]]
id = "gl"
when = 'has(workforce.jobCode) && workforce.jobCode == "GL"'
roles = ["gl"]
[[rules]]
id = "controller"
when = 'has(workforce.jobCode) && workforce.jobCode == "CTRL"'
roles = ["controller"]
[[rules]]
id = "dba"
when = 'has(workforce.jobCode) && workforce.jobCode == "DBA"'
roles = ["dba", "engineering"]
[[rules]]
id = "analysts"
when = 'has(workforce.jobCode) && workforce.jobCode == "ANALYST"'
roles = ["analyst"]

[[group_mappings]]
group = "Admins"
roles = ["admin"]
[[group_mappings]]
group = "Payment Approvers"
roles = ["approver"]

[tiers.low]
[[tiers.low.stages]]
id = "manager"
approvers = { kind = "manager" }
[tiers.medium]
[[tiers.medium.stages]]
id = "manager"
approvers = { kind = "manager" }
[[tiers.medium.stages]]
id = "owner"
approvers = { kind = "app_owner" }
[tiers.high]
escalate_after_hours = 24
expire_after_hours = 72
[[tiers.high.stages]]
id = "manager"
approvers = { kind = "manager" }
[[tiers.high.stages]]
id = "security"
approvers = { kind = "named", names = ["sec-1", "sec-2"] }
decision = "all"
escalate_to = ["ciso-delegate"]

[[sod]]
id = "ap-pay"
description = "Create vendors and approve payments"
conflicts = [["erp:vendor-create"], ["erp:payment-approve"]]
mode = "{SOD_MODE}"
max_exception_days = 30

[[sod]]
id = "gl"
conflicts = [["erp:gl-post"], ["erp:gl-approve"]]
mode = "record"
"#;

fn policy_text(sod_mode: &str) -> String {
    TEST_POLICY.replace("{SOD_MODE}", sod_mode)
}

pub(crate) fn policy_with(sod_mode: &str) -> Policy {
    Policy::parse(&policy_text(sod_mode), "test.toml").unwrap()
}

pub(crate) fn policy() -> Policy {
    policy_with("enforce")
}

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap()
}

pub(crate) fn days(n: i64) -> Duration {
    Duration::days(n)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// An identity under construction.
#[derive(Clone, Debug)]
pub(crate) struct Person {
    pub worker_type: Option<&'static str>,
    pub department: Option<&'static str>,
    pub job: Option<&'static str>,
    pub status: Option<&'static str>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub active: Option<bool>,
    pub groups: Vec<String>,
    pub archived: bool,
}

impl Person {
    pub fn employee() -> Person {
        Person {
            worker_type: Some("employee"),
            department: None,
            job: None,
            status: Some("active"),
            start: Some(t0() - days(400)),
            end: None,
            active: None,
            groups: Vec::new(),
            archived: false,
        }
    }
    pub fn dept(mut self, d: &'static str) -> Self {
        self.department = Some(d);
        self
    }
    pub fn job(mut self, j: &'static str) -> Self {
        self.job = Some(j);
        self
    }
    pub fn status(mut self, s: &'static str) -> Self {
        self.status = Some(s);
        self
    }
    pub fn worker(mut self, w: &'static str) -> Self {
        self.worker_type = Some(w);
        self
    }
    pub fn start(mut self, t: DateTime<Utc>) -> Self {
        self.start = Some(t);
        self
    }
    pub fn end(mut self, t: Option<DateTime<Utc>>) -> Self {
        self.end = t;
        self
    }
    pub fn group(mut self, g: &str) -> Self {
        self.groups.push(g.to_owned());
        self
    }

    pub fn doc(&self) -> Map<String, Value> {
        let mut doc = Map::new();
        doc.insert("userName".into(), json!("jdoe"));
        doc.insert("displayName".into(), json!("J. Doe"));
        if let Some(a) = self.active {
            doc.insert("active".into(), json!(a));
        }
        let mut ent = Map::new();
        if let Some(d) = self.department {
            ent.insert("department".into(), json!(d));
        }
        ent.insert("employeeNumber".into(), json!("1001"));
        doc.insert(crate::ENTERPRISE_URN.into(), Value::Object(ent));
        let mut wf = Map::new();
        if let Some(w) = self.worker_type {
            wf.insert("workerType".into(), json!(w));
        }
        if let Some(j) = self.job {
            wf.insert("jobCode".into(), json!(j));
        }
        if let Some(s) = self.status {
            wf.insert("employmentStatus".into(), json!(s));
        }
        if let Some(s) = self.start {
            wf.insert("startDate".into(), json!(rfc3339(s)));
        }
        if let Some(e) = self.end {
            wf.insert("endDate".into(), json!(rfc3339(e)));
        }
        doc.insert(crate::WORKFORCE_URN.into(), Value::Object(wf));
        doc
    }

    pub fn eval_full(&self, p: &Policy, prior: &Prior, ex: &[SodException], now: DateTime<Utc>) -> Evaluation {
        let doc = self.doc();
        let input = IdentityInput {
            id: "u1",
            doc: &doc,
            groups: &self.groups,
            archived: self.archived,
        };
        p.evaluate(&input, prior, ex, now)
    }

    pub fn eval(&self, p: &Policy, now: DateTime<Utc>) -> Evaluation {
        self.eval_full(p, &Prior::default(), &[], now)
    }
}

/// Applies every item that is neither refused nor awaiting approval.
pub(crate) fn apply_executable(current: &mut Current, plan: &Plan) {
    for item in plan.items.iter().filter(|i| i.is_executable()) {
        current.apply(item);
    }
}

/// Applies every item that is not refused (approvals granted).
pub(crate) fn apply_approved(current: &mut Current, plan: &Plan) {
    for item in plan.items.iter().filter(|i| i.refused.is_none()) {
        current.apply(item);
    }
}

/// `(action, target, entitlement)` of each item, for compact assertions.
pub(crate) fn steps(plan: &Plan) -> Vec<(Action, String, Option<String>)> {
    plan.items
        .iter()
        .map(|i| (i.action, i.target.clone(), i.entitlement.clone()))
        .collect()
}

pub(crate) fn grant_of<'a>(plan: &'a Plan, ent: &str) -> &'a PlanItem {
    plan.items
        .iter()
        .find(|i| i.action == Action::Grant && i.entitlement.as_deref() == Some(ent))
        .unwrap_or_else(|| panic!("no grant of {ent} in {:#?}", steps(plan)))
}

pub(crate) fn current(targets: &[(&str, AccountState, &[&str])]) -> Current {
    let mut c = Current::default();
    for (t, account, ents) in targets {
        c.targets.insert(
            (*t).to_owned(),
            TargetCurrent {
                account: *account,
                entitlements: ents.iter().map(|e| (*e).to_owned()).collect(),
            },
        );
    }
    c
}

#[test]
fn example_policy_parses() {
    let p = Policy::parse(EXAMPLE, "examples/policy.toml").unwrap();
    assert_eq!(p.mode(), crate::PolicyMode::Shadow);
    assert_eq!(p.targets().collect::<Vec<_>>(), ["ldap", "sql-app", "erp"]);
    assert_eq!(p.entitlements().count(), 17);
    assert!(p.entitlement("ldap:domain-admins").unwrap().privileged);
    assert_eq!(p.rehire_match(), ["externalId", "employeeNumber"]);
    let high = p.tier("high").unwrap();
    assert_eq!(high.stages.len(), 3);
    assert_eq!(
        high.stages[1].approvers,
        crate::Approvers::Named(vec!["sec-1".into(), "sec-2".into()])
    );
    assert_eq!(high.stages[2].decision, crate::Decision::All);
    assert_eq!(high.escalate_after, Duration::hours(24));
    assert_eq!(
        p.tier("medium").unwrap().stages[1].approvers,
        crate::Approvers::AppOwner
    );
    assert_eq!(p.sod_rule("vendor-payments").unwrap().mode, crate::SodMode::Enforce);
    assert_eq!(
        p.sod_rule("journal-post-approve").unwrap().mode,
        crate::SodMode::Approve
    );
    assert_eq!(p.sod_approval_tier(), "high");

    // An AP clerk in Finance who is also in the approvers' group: enforce-mode SoD refuses the new payment grants.
    let clerk = Person::employee()
        .dept("Finance")
        .job("AP-CLERK")
        .group("Finance Approvers");
    let eval = clerk.eval(&p, t0());
    assert!(eval.warnings.is_empty(), "{:?}", eval.warnings);
    let plan = p.plan(&eval, &Current::default());
    assert_eq!(
        grant_of(&plan, "erp:payment-approve").refused.as_deref(),
        Some("vendor-payments")
    );
    assert_eq!(
        grant_of(&plan, "erp:vendor-create").refused.as_deref(),
        Some("vendor-payments")
    );
    assert_eq!(grant_of(&plan, "ldap:vpn").approval, None);
}

#[test]
fn hash_is_sha256_of_the_bytes() {
    use sha2::Digest;
    let text = policy_text("enforce");
    let p = Policy::parse(&text, "x").unwrap();
    let expected: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(p.hash(), expected);
    assert_eq!(p.hash().len(), 64);
    let other = policy_with("record");
    assert_ne!(p.hash(), other.hash());
}

#[test]
fn policy_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Policy>();
    check::<Evaluation>();
    check::<Plan>();
}
