//! Property: applying a plan converges. After the executable items of `plan(evaluate(x), current)` are applied, the
//! plan for the same evaluation has nothing executable left.

use proptest::prelude::*;

use super::*;

const DEPARTMENTS: [Option<&str>; 4] = [None, Some("Sales"), Some("Engineering"), Some("Finance")];
const JOBS: [Option<&str>; 8] = [
    None,
    Some("AP"),
    Some("APPROVER"),
    Some("GL"),
    Some("CTRL"),
    Some("DBA"),
    Some("ANALYST"),
    Some("X"),
];
const WORKERS: [Option<&str>; 3] = [None, Some("employee"), Some("contractor")];
const STATUSES: [Option<&str>; 4] = [None, Some("active"), Some("leave"), Some("terminated")];
const GROUPS: [&str; 3] = ["Admins", "Payment Approvers", "Other"];
const TARGETS: [&str; 4] = ["ldap", "erp", "db", "legacy"];
const ENTITLEMENTS: [&str; 12] = [
    "ldap:vpn",
    "ldap:sales",
    "ldap:eng",
    "ldap:admin",
    "erp:report",
    "erp:vendor-create",
    "erp:payment-approve",
    "erp:gl-post",
    "erp:gl-approve",
    "db:read",
    "db:owner",
    "legacy:x",
];

fn person() -> impl Strategy<Value = (Person, Option<i64>)> {
    (
        (0..DEPARTMENTS.len(), 0..JOBS.len(), 0..WORKERS.len(), 0..STATUSES.len()),
        (
            proptest::option::of(-40i64..40),
            proptest::option::of(-40i64..40),
            proptest::option::of(any::<bool>()),
        ),
        (
            proptest::collection::vec(0..GROUPS.len(), 0..3),
            any::<bool>(),
            proptest::option::of(0i64..72),
        ),
    )
        .prop_map(
            |((d, j, w, s), (start, end, active), (groups, archived, leaver_hours))| {
                let mut p = Person::employee();
                p.department = DEPARTMENTS[d];
                p.job = JOBS[j];
                p.worker_type = WORKERS[w];
                p.status = STATUSES[s];
                p.start = start.map(|n| t0() + days(n));
                p.end = end.map(|n| t0() + days(n));
                p.active = active;
                p.groups = groups.into_iter().map(|g| GROUPS[g].to_owned()).collect();
                p.archived = archived;
                (p, leaver_hours)
            },
        )
}

fn current_state() -> impl Strategy<Value = Current> {
    proptest::collection::vec(
        (
            0..TARGETS.len(),
            0..3u8,
            proptest::collection::vec(0..ENTITLEMENTS.len(), 0..4),
        ),
        0..4,
    )
    .prop_map(|targets| {
        let mut c = Current::default();
        for (t, account, ents) in targets {
            let target = TARGETS[t];
            let entry = c.targets.entry(target.to_owned()).or_default();
            entry.account = [AccountState::Absent, AccountState::Disabled, AccountState::Enabled][account as usize];
            for e in ents {
                if ENTITLEMENTS[e].starts_with(target) {
                    entry.entitlements.insert(ENTITLEMENTS[e].to_owned());
                }
            }
        }
        c
    })
}

fn mode() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("record"), Just("approve"), Just("enforce")]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn applying_a_plan_converges(
        (who, leaver_hours) in person(),
        cur in current_state(),
        mode in mode(),
        excepted in any::<bool>(),
        approve in any::<bool>(),
    ) {
        let p = policy_with(mode);
        let prior = Prior { leaver_since: leaver_hours.map(|h| t0() - Duration::hours(h)) };
        let exceptions = if excepted { vec![SodException { rule: "ap-pay".into(), expires: t0() + days(1) }] } else { vec![] };
        let eval = who.eval_full(&p, &prior, &exceptions, t0());
        let plan = p.plan(&eval, &cur);

        // Order: disables, privileged revokes, revokes, deletes, creates, grants, enables.
        let rank = |i: &PlanItem| match i.action {
            Action::DisableAccount => 0,
            Action::Revoke if p.entitlement(i.entitlement.as_deref().unwrap_or("")).is_some_and(|e| e.privileged) => 1,
            Action::Revoke => 2,
            Action::DeleteAccount => 3,
            Action::CreateAccount { .. } => 4,
            Action::Grant => 5,
            Action::EnableAccount => 6,
        };
        let ranks: Vec<u8> = plan.items.iter().map(rank).collect();
        prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{:?}", steps(&plan));
        // A leaver is never granted, created or enabled; refusals carry no approval.
        if matches!(eval.state, crate::LifecycleState::Leaver { .. } | crate::LifecycleState::Invalid { .. }) {
            prop_assert!(plan.items.iter().all(|i| matches!(i.action, Action::DisableAccount | Action::Revoke | Action::DeleteAccount)));
        }
        prop_assert!(plan.items.iter().all(|i| i.refused.is_none() || i.approval.is_none()));
        prop_assert!(plan.items.iter().all(|i| i.action == Action::Grant || (i.refused.is_none() && i.approval.is_none())));

        let mut after = cur.clone();
        if approve { apply_approved(&mut after, &plan) } else { apply_executable(&mut after, &plan) }
        let again = p.plan(&eval, &after);
        prop_assert!(again.items.iter().all(|i| !i.is_executable()), "left: {:?}", steps(&again));
        if approve {
            prop_assert!(again.items.iter().all(|i| i.refused.is_some()), "left: {:?}", steps(&again));
        }
        // Deterministic.
        prop_assert_eq!(p.plan(&who.eval_full(&p, &prior, &exceptions, t0()), &cur), plan);
    }
}
