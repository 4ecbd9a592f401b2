//! Lifecycle states and the joiner / mover / leaver scenarios, approvals, SoD, group mappings, determinism.

use chrono::Duration;

use super::*;
use crate::{
    ApprovalNeed, ApprovalReason, LeaverPhase, LifecycleState, Rationale, RoleMatch, SodHit, SodMode, TargetDesired,
    Via,
};

use AccountState::{Absent, Disabled, Enabled};

fn s(x: &str) -> String {
    x.to_owned()
}

fn ents(eval: &Evaluation, target: &str) -> Vec<String> {
    eval.desired
        .get(target)
        .map(|t| t.entitlements.keys().cloned().collect())
        .unwrap_or_default()
}

fn account(eval: &Evaluation, target: &str) -> AccountState {
    eval.desired.get(target).map_or(Absent, |t| t.account)
}

/// Current after applying everything executable to an empty start, and the plan that did it.
fn provisioned(p: &Policy, eval: &Evaluation) -> Current {
    let mut c = Current::default();
    apply_approved(&mut c, &p.plan(eval, &Current::default()));
    c
}

// ---------------------------------------------------------------------------------------------------------------
// Lifecycle states

#[test]
fn active_employee() {
    let p = policy();
    let eval = Person::employee().dept("Sales").eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Active);
    assert_eq!(eval.leaver_phase, None);
    assert_eq!(account(&eval, "ldap"), Enabled);
    assert_eq!(ents(&eval, "ldap"), ["ldap:sales", "ldap:vpn"]);
    assert_eq!(ents(&eval, "erp"), ["erp:report"]);
    assert!(!eval.desired.contains_key("db"));
    assert_eq!(eval.next_wakeup, None);
    assert!(eval.warnings.is_empty(), "{:?}", eval.warnings);
    assert_eq!(eval.policy_hash, p.hash());
    let vpn = &eval.desired["ldap"].entitlements["ldap:vpn"];
    assert_eq!(
        vpn,
        &Rationale {
            rules: vec![s("employees")],
            roles: vec![s("employee")],
            groups: vec![],
            policy_hash: p.hash().to_owned(),
            birthright: true
        }
    );
}

#[test]
fn leaver_states() {
    let p = policy();
    let base = Person::employee().dept("Sales");
    let mut archived = base.clone();
    archived.archived = true;
    let mut inactive = base.clone();
    inactive.active = Some(false);
    let terminated = base.clone().status("terminated");
    let ended = base.clone().end(Some(t0() - Duration::hours(1)));
    let ends_now = base.clone().end(Some(t0()));
    for who in [archived, inactive, terminated, ended, ends_now] {
        let eval = who.eval(&p, t0());
        assert_eq!(eval.state, LifecycleState::Leaver { since: t0() }, "{who:?}");
        assert_eq!(eval.leaver_phase, Some(LeaverPhase::Locked));
        assert_eq!(account(&eval, "ldap"), Disabled);
        assert_eq!(eval.next_wakeup, Some(t0() + days(1)));
    }
    // prior.leaver_since is kept.
    let since = t0() - Duration::hours(3);
    let eval = base.clone().status("terminated").eval_full(
        &p,
        &Prior {
            leaver_since: Some(since),
        },
        &[],
        t0(),
    );
    assert_eq!(eval.state, LifecycleState::Leaver { since });
    assert_eq!(eval.next_wakeup, Some(since + days(1)));
    // A future endDate is not a leaver yet, but wakes the caller up.
    let eval = base.end(Some(t0() + days(30))).eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Active);
    assert_eq!(eval.next_wakeup, Some(t0() + days(30)));
}

#[test]
fn prehire_leave_and_invalid_states() {
    let p = policy();
    let eval = Person::employee().start(t0() + days(10)).eval(&p, t0());
    assert_eq!(
        eval.state,
        LifecycleState::PreHire {
            start: t0() + days(10),
            provision_at: t0() + days(3)
        }
    );
    let eval = Person::employee().status("leave").eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Leave);
    let eval = Person::employee().worker("contractor").eval(&p, t0());
    assert_eq!(
        eval.state,
        LifecycleState::Invalid {
            reason: s("contractor without endDate")
        }
    );
    assert!(eval.desired.is_empty());
    assert!(
        eval.warnings.iter().any(|w| w.contains("contractor without endDate")),
        "{:?}",
        eval.warnings
    );
    // Leaver wins over everything else; Invalid over PreHire; PreHire over Leave.
    let eval = Person::employee()
        .worker("contractor")
        .status("terminated")
        .eval(&p, t0());
    assert!(matches!(eval.state, LifecycleState::Leaver { .. }));
    let eval = Person::employee()
        .worker("contractor")
        .start(t0() + days(3))
        .eval(&p, t0());
    assert!(matches!(eval.state, LifecycleState::Invalid { .. }));
    let eval = Person::employee().status("leave").start(t0() + days(3)).eval(&p, t0());
    assert!(matches!(eval.state, LifecycleState::PreHire { .. }));
}

#[test]
fn dates_may_be_plain_dates_and_bad_dates_warn() {
    let p = policy();
    let mut doc = Person::employee().doc();
    let wf = doc.get_mut(crate::WORKFORCE_URN).unwrap().as_object_mut().unwrap();
    wf.insert("startDate".into(), json!("2025-03-20"));
    wf.insert("endDate".into(), json!("next tuesday"));
    let input = IdentityInput {
        id: "u",
        doc: &doc,
        groups: &[],
        archived: false,
    };
    let eval = p.evaluate(&input, &Prior::default(), &[], t0());
    let start = Utc.with_ymd_and_hms(2025, 3, 20, 0, 0, 0).unwrap();
    assert_eq!(
        eval.state,
        LifecycleState::PreHire {
            start,
            provision_at: start - days(7)
        }
    );
    assert!(
        eval.warnings.iter().any(|w| w.contains("workforce.endDate")),
        "{:?}",
        eval.warnings
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Joiner

#[test]
fn joiner_with_future_start_date() {
    let p = policy();
    let start = t0() + days(10);
    let joiner = Person::employee().dept("Engineering").start(start);

    // Before the lead time: nothing, and a wake-up at the provisioning instant.
    let eval = joiner.eval(&p, t0());
    assert!(eval.desired.is_empty());
    assert_eq!(eval.next_wakeup, Some(start - days(7)));
    let mut cur = Current::default();
    assert!(p.plan(&eval, &cur).is_empty());

    // Inside the lead time: accounts created disabled, grants made ahead; wake-up at the start.
    let now = start - days(7);
    let eval = joiner.eval(&p, now);
    assert_eq!(
        eval.state,
        LifecycleState::PreHire {
            start,
            provision_at: start - days(7)
        }
    );
    assert_eq!(account(&eval, "ldap"), Disabled);
    assert_eq!(eval.next_wakeup, Some(start));
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::CreateAccount { enabled: false }, s("db"), None),
            (Action::CreateAccount { enabled: false }, s("ldap"), None),
            (Action::Grant, s("db"), Some(s("db:read"))),
            (Action::Grant, s("ldap"), Some(s("ldap:eng"))),
            (Action::Grant, s("ldap"), Some(s("ldap:vpn"))),
        ]
    );
    assert!(plan.items.iter().all(|i| i.approval.is_none() && i.refused.is_none()));
    assert_eq!(plan.items[1].rationale.rules, ["employees", "engineering"]);
    apply_executable(&mut cur, &plan);
    assert!(p.plan(&joiner.eval(&p, now + days(1)), &cur).is_empty());

    // On the start date: enable, nothing else.
    let eval = joiner.eval(&p, start);
    assert_eq!(eval.state, LifecycleState::Active);
    assert_eq!(eval.next_wakeup, None);
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::EnableAccount, s("db"), None),
            (Action::EnableAccount, s("ldap"), None)
        ]
    );
    apply_executable(&mut cur, &plan);
    assert!(p.plan(&joiner.eval(&p, start), &cur).is_empty());
}

// ---------------------------------------------------------------------------------------------------------------
// Mover

#[test]
fn mover_role_reset() {
    let p = policy();
    let before = Person::employee().dept("Sales");
    let mut cur = provisioned(&p, &before.eval(&p, t0()));
    assert_eq!(cur.targets["ldap"].entitlements.len(), 2);

    let after = Person::employee().dept("Engineering");
    let eval = after.eval(&p, t0());
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::Revoke, s("erp"), Some(s("erp:report"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:sales"))),
            (Action::DeleteAccount, s("erp"), None),
            (Action::CreateAccount { enabled: true }, s("db"), None),
            (Action::Grant, s("db"), Some(s("db:read"))),
            (Action::Grant, s("ldap"), Some(s("ldap:eng"))),
        ]
    );
    apply_executable(&mut cur, &plan);
    // Nothing survives that the new attributes do not justify.
    let held: Vec<&String> = cur.targets.values().flat_map(|t| &t.entitlements).collect();
    assert_eq!(held, ["db:read", "ldap:eng", "ldap:vpn"]);
    assert!(p.plan(&eval, &cur).is_empty());
}

#[test]
fn mover_into_a_conflict_is_flagged_before_the_grant() {
    let p = policy_with("approve");
    let mut cur = provisioned(&p, &Person::employee().job("AP").eval(&p, t0()));
    let eval = Person::employee().job("AP").group("Payment Approvers").eval(&p, t0());
    let plan = p.plan(&eval, &cur);
    let grant = grant_of(&plan, "erp:payment-approve");
    assert_eq!(
        grant.approval,
        Some(ApprovalNeed {
            tier: s("high"),
            reason: ApprovalReason::Sod { rule: s("ap-pay") }
        })
    );
    apply_executable(&mut cur, &plan);
    assert!(!cur.targets["erp"].entitlements.contains("erp:payment-approve"));
}

// ---------------------------------------------------------------------------------------------------------------
// Leaver

#[test]
fn leaver_disables_first_then_revokes_privileged_first_then_deletes() {
    let p = policy();
    let dba = Person::employee().dept("Sales").job("DBA").group("Admins");
    let mut cur = provisioned(&p, &dba.eval(&p, t0() - days(30)));
    assert!(cur.targets["db"].entitlements.contains("db:owner"));
    assert!(cur.targets["ldap"].entitlements.contains("ldap:admin"));

    // The leaver event: lock every account, and nothing else.
    let gone = dba.clone().status("terminated");
    let eval = gone.eval(&p, t0());
    let since = t0();
    assert_eq!(eval.state, LifecycleState::Leaver { since });
    assert_eq!(eval.next_wakeup, Some(since + days(1)));
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::DisableAccount, s("db"), None),
            (Action::DisableAccount, s("erp"), None),
            (Action::DisableAccount, s("ldap"), None),
        ]
    );
    apply_executable(&mut cur, &plan);
    let prior = Prior {
        leaver_since: Some(since),
    };
    assert!(
        p.plan(&gone.eval_full(&p, &prior, &[], t0() + Duration::hours(23)), &cur)
            .is_empty()
    );

    // At the revoke time: privileged revokes, then the others, then deletes. Never a grant.
    let eval = gone.eval_full(&p, &prior, &[], since + days(1));
    assert_eq!(eval.leaver_phase, Some(LeaverPhase::Removed));
    assert!(eval.desired.is_empty());
    assert_eq!(eval.next_wakeup, None);
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::Revoke, s("db"), Some(s("db:owner"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:admin"))),
            (Action::Revoke, s("db"), Some(s("db:read"))),
            (Action::Revoke, s("erp"), Some(s("erp:report"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:eng"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:sales"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:vpn"))),
            (Action::DeleteAccount, s("db"), None),
            (Action::DeleteAccount, s("erp"), None),
            (Action::DeleteAccount, s("ldap"), None),
        ]
    );
    apply_executable(&mut cur, &plan);
    assert_eq!(cur, Current::default());
    assert!(p.plan(&eval, &cur).is_empty());
}

#[test]
fn leaver_processed_late_locks_and_removes_in_one_plan() {
    let p = policy();
    let who = Person::employee().dept("Engineering").group("Admins");
    let cur = provisioned(&p, &who.eval(&p, t0()));
    let mut gone = who.clone();
    gone.archived = true;
    let prior = Prior {
        leaver_since: Some(t0() - days(2)),
    };
    let plan = p.plan(&gone.eval_full(&p, &prior, &[], t0()), &cur);
    let actions: Vec<Action> = plan.items.iter().map(|i| i.action).collect();
    let first_revoke = actions.iter().position(|a| *a == Action::Revoke).unwrap();
    assert!(actions[..first_revoke].iter().all(|a| *a == Action::DisableAccount));
    assert_eq!(plan.items[first_revoke].entitlement.as_deref(), Some("ldap:admin"));
    assert!(!actions.contains(&Action::Grant));
    assert_eq!(actions.last(), Some(&Action::DeleteAccount));
}

#[test]
fn leaver_never_grants_even_when_roles_would() {
    let p = policy();
    // Held only part of what the rules grant, and a grant still awaiting: the leaver gets no grant, no create.
    let cur = current(&[("ldap", Enabled, &["ldap:vpn"])]);
    let gone = Person::employee().dept("Engineering").status("terminated");
    for now in [t0(), t0() + days(2)] {
        let prior = Prior {
            leaver_since: Some(t0()),
        };
        let plan = p.plan(&gone.eval_full(&p, &prior, &[], now), &cur);
        assert!(
            plan.items.iter().all(|i| matches!(
                i.action,
                Action::DisableAccount | Action::Revoke | Action::DeleteAccount
            )),
            "{:#?}",
            steps(&plan)
        );
        assert_eq!(plan.items[0].action, Action::DisableAccount);
    }
}

#[test]
fn lock_delay_holds_everything_until_the_lock() {
    let text = policy_text("enforce").replace("lock_delay_minutes = 0", "lock_delay_minutes = 30");
    let p = Policy::parse(&text, "t").unwrap();
    let who = Person::employee().dept("Sales");
    let cur = provisioned(&p, &who.eval(&p, t0()));
    let gone = who.status("terminated");
    let eval = gone.eval(&p, t0());
    assert_eq!(eval.leaver_phase, Some(LeaverPhase::BeforeLock));
    assert_eq!(eval.next_wakeup, Some(t0() + Duration::minutes(30)));
    assert!(p.plan(&eval, &cur).is_empty());
    let prior = Prior {
        leaver_since: Some(t0()),
    };
    let eval = gone.eval_full(&p, &prior, &[], t0() + Duration::minutes(30));
    assert_eq!(eval.leaver_phase, Some(LeaverPhase::Locked));
    assert!(
        p.plan(&eval, &cur)
            .items
            .iter()
            .all(|i| i.action == Action::DisableAccount)
    );
}

#[test]
fn rehire_never_reactivates_stale_entitlements() {
    let p = policy();
    // A salesperson leaves and is rehired into engineering while still locked (before the revoke time).
    let before = Person::employee().dept("Sales").job("AP");
    let mut cur = provisioned(&p, &before.eval(&p, t0()));
    let gone = before.clone().status("terminated");
    let plan = p.plan(&gone.eval(&p, t0()), &cur);
    apply_executable(&mut cur, &plan);
    assert!(cur.targets.values().all(|t| t.account == Disabled));

    let back = Person::employee().dept("Engineering").start(t0() + Duration::hours(2));
    let eval = back.eval(&p, t0() + Duration::hours(3));
    assert_eq!(eval.state, LifecycleState::Active);
    let plan = p.plan(&eval, &cur);
    let enable_at = plan
        .items
        .iter()
        .position(|i| i.action == Action::EnableAccount)
        .unwrap();
    for stale in ["ldap:sales", "erp:report", "erp:vendor-create"] {
        let at = plan
            .items
            .iter()
            .position(|i| i.action == Action::Revoke && i.entitlement.as_deref() == Some(stale));
        assert!(
            at.unwrap() < enable_at,
            "{stale} must be revoked before the account is enabled"
        );
    }
    apply_executable(&mut cur, &plan);
    let held: Vec<&String> = cur.targets.values().flat_map(|t| &t.entitlements).collect();
    assert_eq!(held, ["db:read", "ldap:eng", "ldap:vpn"]);
}

// ---------------------------------------------------------------------------------------------------------------
// Leave of absence

#[test]
fn leave_of_absence_disables_and_keeps_entitlements() {
    let p = policy();
    let who = Person::employee().dept("Sales");
    let mut cur = provisioned(&p, &who.eval(&p, t0()));
    let held_before = cur.clone();

    let eval = who.clone().status("leave").eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Leave);
    assert_eq!(account(&eval, "ldap"), Disabled);
    assert_eq!(ents(&eval, "ldap"), ["ldap:sales", "ldap:vpn"]);
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::DisableAccount, s("erp"), None),
            (Action::DisableAccount, s("ldap"), None)
        ]
    );
    apply_executable(&mut cur, &plan);
    for (t, c) in &cur.targets {
        assert_eq!(c.entitlements, held_before.targets[t].entitlements);
    }

    // Return: enable, nothing else.
    let eval = who.status("active").eval(&p, t0() + days(60));
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::EnableAccount, s("erp"), None),
            (Action::EnableAccount, s("ldap"), None)
        ]
    );
    apply_executable(&mut cur, &plan);
    assert_eq!(cur, held_before);
}

// ---------------------------------------------------------------------------------------------------------------
// Dual role, privileged, contractor

#[test]
fn dual_role_gets_the_union_and_sod_across_it() {
    let p = policy_with("record");
    // Sales department (rule) and AP job code (rule) and payment approver (group): three roles.
    let who = Person::employee().dept("Sales").job("AP").group("Payment Approvers");
    let eval = who.eval(&p, t0());
    assert_eq!(
        eval.roles,
        [
            RoleMatch {
                role: s("employee"),
                via: Via::Rule(s("employees"))
            },
            RoleMatch {
                role: s("sales"),
                via: Via::Rule(s("sales"))
            },
            RoleMatch {
                role: s("ap"),
                via: Via::Rule(s("ap"))
            },
            RoleMatch {
                role: s("approver"),
                via: Via::Group(s("Payment Approvers"))
            },
        ]
    );
    assert_eq!(
        ents(&eval, "erp"),
        ["erp:payment-approve", "erp:report", "erp:vendor-create"]
    );
    assert_eq!(
        eval.sod,
        [SodHit {
            rule: s("ap-pay"),
            mode: SodMode::Record,
            entitlements: vec![s("erp:payment-approve"), s("erp:vendor-create")],
            excepted: false
        }]
    );
    // An entitlement granted by two roles carries both in its rationale.
    let p2 = policy();
    let analyst = Person::employee().dept("Sales").job("ANALYST");
    let eval = analyst.eval(&p2, t0());
    let report = &eval.desired["erp"].entitlements["erp:report"];
    assert_eq!(report.roles, ["analyst", "sales"]);
    assert_eq!(report.rules, ["analysts", "sales"]);
    assert!(report.birthright, "sales is a birthright role");
    let plan = p2.plan(&eval, &Current::default());
    assert_eq!(grant_of(&plan, "erp:report").approval, None);
    assert_eq!(
        grant_of(&plan, "erp:vendor-create").approval,
        Some(ApprovalNeed {
            tier: s("medium"),
            reason: ApprovalReason::Requested
        })
    );
}

#[test]
fn privileged_grants_always_go_through_the_high_tier() {
    let p = policy();
    // db:owner via a birthright role, ldap:admin via a non-birthright group role.
    let who = Person::employee().job("DBA").group("Admins");
    let plan = p.plan(&who.eval(&p, t0()), &Current::default());
    let high = Some(ApprovalNeed {
        tier: s("high"),
        reason: ApprovalReason::Privileged,
    });
    assert_eq!(grant_of(&plan, "db:owner").approval, high);
    assert!(grant_of(&plan, "db:owner").rationale.birthright);
    assert_eq!(grant_of(&plan, "ldap:admin").approval, high);
    assert_eq!(grant_of(&plan, "db:read").approval, None);
    let tier = p.tier("high").unwrap();
    assert_eq!(tier.stages[1].decision, crate::Decision::All);
    assert_eq!(tier.stages[1].escalate_to, ["ciso-delegate"]);
    assert_eq!(tier.expire_after, Duration::hours(72));
    assert_eq!(p.tier("low").unwrap().escalate_after, Duration::hours(48));
    assert_eq!(p.tier("low").unwrap().expire_after, Duration::hours(168));
}

#[test]
fn contractor_needs_an_end_date() {
    let p = policy();
    let c = Person::employee().worker("contractor").dept("Engineering");
    // No endDate: Invalid, no access; a new contractor gets nothing.
    let eval = c.eval(&p, t0());
    assert!(matches!(eval.state, LifecycleState::Invalid { .. }));
    assert!(p.plan(&eval, &Current::default()).is_empty());
    // One who had access is locked out (disabled, nothing deleted).
    let cur = current(&[
        ("ldap", Enabled, &["ldap:vpn", "ldap:eng"]),
        ("db", Disabled, &["db:read"]),
    ]);
    let plan = p.plan(&eval, &cur);
    assert_eq!(steps(&plan), [(Action::DisableAccount, s("ldap"), None)]);

    // endDate ahead: active, woken at the end date.
    let eval = c.clone().end(Some(t0() + days(90))).eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Active);
    assert_eq!(eval.next_wakeup, Some(t0() + days(90)));
    let mut cur = provisioned(&p, &eval);
    // endDate reached: leaver, deprovisioned automatically.
    let eval = c.clone().end(Some(t0() + days(90))).eval(&p, t0() + days(90));
    assert_eq!(eval.state, LifecycleState::Leaver { since: t0() + days(90) });
    let plan = p.plan(&eval, &cur);
    apply_executable(&mut cur, &plan);
    assert!(cur.targets.values().all(|t| t.account == Disabled));
    // endDate in the past: leaver.
    let eval = c.end(Some(t0() - days(1))).eval(&p, t0());
    assert!(matches!(eval.state, LifecycleState::Leaver { .. }));

    // With contractor_requires_end_date = false, a contractor without endDate is active.
    let text = policy_text("enforce").replace("[lifecycle]\n", "[lifecycle]\ncontractor_requires_end_date = false\n");
    let p = Policy::parse(&text, "t").unwrap();
    let eval = Person::employee().worker("contractor").eval(&p, t0());
    assert_eq!(eval.state, LifecycleState::Active);
}

// ---------------------------------------------------------------------------------------------------------------
// SoD

fn conflicted() -> Person {
    Person::employee().job("AP").group("Payment Approvers")
}

#[test]
fn sod_enforce_refuses_new_conflicting_grants() {
    let p = policy_with("enforce");
    // A joiner who would get both: both refused.
    let eval = conflicted().eval(&p, t0());
    assert_eq!(eval.sod.len(), 1);
    let plan = p.plan(&eval, &Current::default());
    for e in ["erp:vendor-create", "erp:payment-approve"] {
        let g = grant_of(&plan, e);
        assert_eq!(g.refused.as_deref(), Some("ap-pay"));
        assert_eq!(g.approval, None);
    }
    assert!(grant_of(&plan, "ldap:vpn").is_executable());
    // Holding vendor-create already: only the new one is refused.
    let cur = current(&[
        ("erp", Enabled, &["erp:vendor-create"]),
        ("ldap", Enabled, &["ldap:vpn"]),
    ]);
    let plan = p.plan(&eval, &cur);
    assert_eq!(plan.items.len(), 1);
    assert_eq!(
        grant_of(&plan, "erp:payment-approve").refused.as_deref(),
        Some("ap-pay")
    );
}

#[test]
fn sod_approve_holds_new_conflicting_grants_for_the_security_chain() {
    let text = policy_text("approve").replace("version = 1\n", "version = 1\nsod_approval_tier = \"medium\"\n");
    let p = Policy::parse(&text, "t").unwrap();
    assert_eq!(p.sod_approval_tier(), "medium");
    let cur = current(&[
        ("erp", Enabled, &["erp:vendor-create"]),
        ("ldap", Enabled, &["ldap:vpn"]),
    ]);
    let plan = p.plan(&conflicted().eval(&p, t0()), &cur);
    assert_eq!(plan.items.len(), 1);
    let g = grant_of(&plan, "erp:payment-approve");
    assert_eq!(
        g.approval,
        Some(ApprovalNeed {
            tier: s("medium"),
            reason: ApprovalReason::Sod { rule: s("ap-pay") }
        })
    );
    assert_eq!(g.refused, None);
}

#[test]
fn sod_record_grants_and_reports() {
    let p = policy_with("record");
    let plan = p.plan(&conflicted().eval(&p, t0()), &Current::default());
    for e in ["erp:vendor-create", "erp:payment-approve"] {
        let g = grant_of(&plan, e);
        assert!(g.is_executable(), "{g:?}");
        assert_eq!(g.sod_reported, ["ap-pay"]);
    }
    assert!(grant_of(&plan, "ldap:vpn").sod_reported.is_empty());
    // The conflict is in the evaluation, in record mode.
    let eval = conflicted().eval(&p, t0());
    assert_eq!(eval.sod[0].mode, SodMode::Record);
    assert!(!eval.sod[0].excepted);
}

#[test]
fn sod_exception_and_its_expiry() {
    let p = policy_with("enforce");
    let expires = t0() + days(20);
    let ex = [
        SodException {
            rule: s("ap-pay"),
            expires,
        },
        SodException {
            rule: s("ap-pay"),
            expires: t0() - days(1),
        },
    ];
    let eval = conflicted().eval_full(&p, &Prior::default(), &ex, t0());
    assert!(eval.sod[0].excepted);
    assert_eq!(eval.next_wakeup, Some(expires));
    let plan = p.plan(&eval, &Current::default());
    let g = grant_of(&plan, "erp:payment-approve");
    assert_eq!(g.refused, None);
    assert_eq!(g.sod_reported, ["ap-pay"]);
    // Once expired, the exception no longer applies.
    let eval = conflicted().eval_full(&p, &Prior::default(), &ex, expires);
    assert!(!eval.sod[0].excepted);
    assert_eq!(eval.next_wakeup, None);
    // An exception for another rule does nothing.
    let other = [SodException { rule: s("gl"), expires }];
    let eval = conflicted().eval_full(&p, &Prior::default(), &other, t0());
    assert!(!eval.sod[0].excepted);
    assert_eq!(eval.next_wakeup, None);
}

#[test]
fn sod_conflict_of_held_entitlements_marks_no_item_but_stays_in_the_evaluation() {
    let p = policy_with("enforce");
    let eval = conflicted().eval(&p, t0());
    let cur = current(&[
        ("erp", Enabled, &["erp:vendor-create", "erp:payment-approve"]),
        ("ldap", Enabled, &["ldap:vpn"]),
    ]);
    assert!(p.plan(&eval, &cur).is_empty());
    assert_eq!(eval.sod.len(), 1);
    assert_eq!(eval.sod[0].mode, SodMode::Enforce);
    // A further grant that is not part of the conflict is not marked.
    let cur = current(&[("erp", Enabled, &["erp:vendor-create", "erp:payment-approve"])]);
    let plan = p.plan(&eval, &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::CreateAccount { enabled: true }, s("ldap"), None),
            (Action::Grant, s("ldap"), Some(s("ldap:vpn")))
        ]
    );
    assert!(
        plan.items
            .iter()
            .all(|i| i.sod_reported.is_empty() && i.refused.is_none())
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Group mappings, CEL, determinism, serde

#[test]
fn group_mappings_assign_roles() {
    let p = policy();
    let who = Person::employee().group("Admins").group("Some Other Group");
    let eval = who.eval(&p, t0());
    assert!(eval.roles.contains(&RoleMatch {
        role: s("admin"),
        via: Via::Group(s("Admins"))
    }));
    let admin = &eval.desired["ldap"].entitlements["ldap:admin"];
    assert_eq!(admin.groups, ["Admins"]);
    assert!(admin.rules.is_empty());
    assert!(!admin.birthright);
    // Exact match on the displayName.
    let eval = Person::employee().group("admins").eval(&p, t0());
    assert!(!eval.desired["ldap"].entitlements.contains_key("ldap:admin"));
}

#[test]
fn cel_sees_user_enterprise_workforce_groups_and_now() {
    let text = policy_text("enforce").replace(
        "when = 'has(workforce.jobCode) && workforce.jobCode == \"ANALYST\"'",
        "when = '''user.active && user.userName == \"jdoe\" && enterprise.employeeNumber == \"1001\"
            && workforce.startDate < now - duration(\"24h\") && \"Analysts\" in groups'''",
    );
    let p = Policy::parse(&text, "t").unwrap();
    let eval = Person::employee().group("Analysts").eval(&p, t0());
    assert!(eval.warnings.is_empty(), "{:?}", eval.warnings);
    assert!(eval.roles.iter().any(|r| r.role == "analyst"), "{:?}", eval.roles);
    let eval = Person::employee()
        .start(t0() - Duration::hours(2))
        .group("Analysts")
        .eval(&p, t0());
    assert!(!eval.roles.iter().any(|r| r.role == "analyst"));
}

#[test]
fn cel_runtime_error_is_a_warning_and_no_match() {
    let text = policy_text("enforce").replace(
        "when = 'has(workforce.jobCode) && workforce.jobCode == \"ANALYST\"'",
        "when = 'workforce.costCenter == \"42\"'",
    );
    let p = Policy::parse(&text, "t").unwrap();
    let eval = Person::employee().eval(&p, t0());
    assert!(!eval.roles.iter().any(|r| r.role == "analyst"));
    assert_eq!(eval.warnings.len(), 1, "{:?}", eval.warnings);
    assert!(eval.warnings[0].starts_with("rule 'analysts': "), "{:?}", eval.warnings);
    // A condition that is not a bool: also a warning.
    let text = policy_text("enforce").replace(
        "when = 'has(workforce.jobCode) && workforce.jobCode == \"ANALYST\"'",
        "when = 'user.userName'",
    );
    let p = Policy::parse(&text, "t").unwrap();
    let eval = Person::employee().eval(&p, t0());
    assert!(eval.warnings[0].contains("not a bool"), "{:?}", eval.warnings);
}

#[test]
fn evaluation_and_plan_are_deterministic() {
    let p = policy_with("record");
    let who = Person::employee()
        .dept("Sales")
        .job("DBA")
        .group("Payment Approvers")
        .group("Admins");
    let cur = current(&[
        ("ldap", Enabled, &["ldap:vpn", "ldap:old"]),
        ("crm", Disabled, &["crm:x"]),
    ]);
    let first = who.eval(&p, t0());
    let plan = p.plan(&first, &cur);
    let json = serde_json::to_string(&plan).unwrap();
    for _ in 0..20 {
        // Same input, and the same input with the groups in another order: the same answer.
        let mut again = who.clone();
        again.groups.reverse();
        let eval = again.eval(&p, t0());
        assert_eq!(eval, first);
        assert_eq!(serde_json::to_string(&p.plan(&eval, &cur)).unwrap(), json);
        // A policy parsed again is the same policy.
        let p2 = policy_with("record");
        assert_eq!(p2.hash(), p.hash());
        assert_eq!(p2.plan(&who.eval(&p2, t0()), &cur), plan);
    }
}

#[test]
fn evaluation_and_plan_round_trip_through_json() {
    let p = policy_with("approve");
    let who = Person::employee()
        .dept("Engineering")
        .job("DBA")
        .group("Admins")
        .group("Payment Approvers");
    let eval = who.eval(&p, t0());
    let back: Evaluation = serde_json::from_str(&serde_json::to_string(&eval).unwrap()).unwrap();
    assert_eq!(back, eval);
    let plan = p.plan(&eval, &current(&[("erp", Disabled, &["erp:vendor-create"])]));
    let json = serde_json::to_value(&plan).unwrap();
    let back: Plan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, plan);
    // snake_case on the wire.
    let text = json.to_string();
    assert!(
        text.contains("\"create_account\":{\"enabled\":true}") || text.contains("\"enable_account\""),
        "{text}"
    );
    assert!(text.contains("\"privileged\""), "{text}");
    let state = serde_json::to_value(LifecycleState::PreHire {
        start: t0(),
        provision_at: t0(),
    })
    .unwrap();
    assert!(state.get("pre_hire").is_some(), "{state}");
    let current_json =
        serde_json::json!({"targets": {"ldap": {"account": "enabled", "entitlements": ["ldap:vpn"]}, "db": {}}});
    let cur: Current = serde_json::from_value(current_json).unwrap();
    assert_eq!(cur.targets["db"], TargetCurrent::default());
    assert_eq!(cur.targets["ldap"].account, Enabled);
    let _ = TargetDesired {
        account: Absent,
        entitlements: Default::default(),
    };
}

#[test]
fn unknown_held_entitlements_and_targets_are_revoked() {
    let p = policy();
    let cur = current(&[
        ("ldap", Enabled, &["ldap:vpn", "ldap:legacy"]),
        ("crm", Enabled, &["crm:x"]),
    ]);
    let plan = p.plan(&Person::employee().eval(&p, t0()), &cur);
    assert_eq!(
        steps(&plan),
        [
            (Action::Revoke, s("crm"), Some(s("crm:x"))),
            (Action::Revoke, s("ldap"), Some(s("ldap:legacy"))),
            (Action::DeleteAccount, s("crm"), None),
        ]
    );
}
