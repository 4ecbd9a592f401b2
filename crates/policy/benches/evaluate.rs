//! `evaluate` + `plan` for one identity against a generated policy: 5 targets, 200 entitlements, 50 roles,
//! 500 rules, 20 SoD rules.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Write;
use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use scimgate_policy::{Current, IdentityInput, Policy, Prior, TargetCurrent};
use serde_json::json;

const TARGETS: usize = 5;
const ENTITLEMENTS: usize = 200;
const ROLES: usize = 50;
const RULES: usize = 500;
const SOD: usize = 20;
const DEPARTMENTS: [&str; 8] = [
    "Sales",
    "Finance",
    "Engineering",
    "Support",
    "Legal",
    "HR",
    "Marketing",
    "Ops",
];

fn policy_text() -> String {
    let mut t = String::from("version = 1\n\n");
    for i in 0..TARGETS {
        writeln!(t, "[[targets]]\nid = \"t{i}\"\n").unwrap();
    }
    for i in 0..ENTITLEMENTS {
        let risk = ["low", "medium", "high"][i % 3];
        writeln!(
            t,
            "[[entitlements]]\nid = \"t{}:e{i}\"\ntarget = \"t{}\"\nvalue = \"cn=e{i}\"\nrisk = \"{risk}\"\nowner = \"o{}\"\nprivileged = {}\n",
            i % TARGETS,
            i % TARGETS,
            i % 7,
            i % 25 == 0
        )
        .unwrap();
    }
    for r in 0..ROLES {
        let grants: Vec<String> = (0..6)
            .map(|k| format!("\"t{}:e{}\"", (r * 4 + k) % TARGETS, (r * 4 + k) % ENTITLEMENTS))
            .collect();
        writeln!(
            t,
            "[[roles]]\nid = \"r{r}\"\ngrants = [{}]\nbirthright = {}\n",
            grants.join(", "),
            r % 3 != 0
        )
        .unwrap();
    }
    for i in 0..RULES {
        let dept = DEPARTMENTS[i % DEPARTMENTS.len()];
        let when = match i % 5 {
            0 => format!(
                "has(enterprise.department) && enterprise.department == \"{dept}\" && workforce.jobCode == \"J{}\"",
                i % 40
            ),
            1 => format!(
                "has(workforce.jobCode) && workforce.jobCode in [\"J{}\", \"J{}\", \"J{}\"]",
                i % 40,
                (i + 1) % 40,
                (i + 2) % 40
            ),
            2 => format!(
                "has(workforce.location) && workforce.location.startsWith(\"L{}\")",
                i % 12
            ),
            3 => format!("groups.exists(g, g == \"G{}\")", i % 30),
            _ => format!(
                "user.active && has(workforce.workerType) && workforce.workerType == \"employee\" && enterprise.costCenter == \"C{}\"",
                i % 50
            ),
        };
        writeln!(
            t,
            "[[rules]]\nid = \"rule{i}\"\nwhen = '{when}'\nroles = [\"r{}\"]\n",
            i % ROLES
        )
        .unwrap();
    }
    for s in 0..SOD {
        let a = (s * 9) % ENTITLEMENTS;
        let b = (s * 9 + 4) % ENTITLEMENTS;
        let c = (s * 9 + 8) % ENTITLEMENTS;
        let mode = ["record", "approve", "enforce"][s % 3];
        writeln!(
            t,
            "[[sod]]\nid = \"sod{s}\"\nconflicts = [[\"t{}:e{a}\"], [\"t{}:e{b}\", \"t{}:e{c}\"]]\nmode = \"{mode}\"\n",
            a % TARGETS,
            b % TARGETS,
            c % TARGETS
        )
        .unwrap();
    }
    for tier in ["low", "medium", "high"] {
        writeln!(
            t,
            "[[tiers.{tier}.stages]]\nid = \"manager\"\napprovers = {{ kind = \"manager\" }}\n"
        )
        .unwrap();
    }
    t
}

fn bench(c: &mut Criterion) {
    let policy = Policy::parse(&policy_text(), "bench.toml").expect("the generated policy parses");
    let doc = json!({
        "userName": "jdoe",
        "active": true,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales", "costCenter": "C10"},
        "urn:scimgate:params:scim:schemas:extension:workforce:2.0:User": {
            "workerType": "employee", "employmentStatus": "active", "jobCode": "J8", "location": "L3-Paris",
            "startDate": "2020-01-01T00:00:00Z"
        }
    });
    let doc = doc.as_object().expect("an object").clone();
    let groups: Vec<String> = ["G3", "G7", "Everyone"].iter().map(|g| (*g).to_owned()).collect();
    let input = IdentityInput {
        id: "u1",
        doc: &doc,
        groups: &groups,
        archived: false,
    };
    let now = Utc.with_ymd_and_hms(2025, 3, 1, 9, 0, 0).unwrap();
    let eval = policy.evaluate(&input, &Prior::default(), &[], now);
    assert!(eval.warnings.is_empty(), "{:?}", eval.warnings);
    // Half of what is desired is held, plus something stale.
    let mut current = Current::default();
    for (target, desired) in &eval.desired {
        let held = desired
            .entitlements
            .keys()
            .step_by(2)
            .cloned()
            .chain([format!("{target}:stale")])
            .collect();
        current.targets.insert(
            target.clone(),
            TargetCurrent {
                account: desired.account,
                entitlements: held,
            },
        );
    }
    let plan = policy.plan(&eval, &current);
    eprintln!(
        "bench identity: {} roles, {} desired entitlements, {} SoD hits, {} plan items",
        eval.roles.len(),
        eval.desired.values().map(|t| t.entitlements.len()).sum::<usize>(),
        eval.sod.len(),
        plan.items.len()
    );

    c.bench_function("evaluate (500 rules)", |b| {
        b.iter(|| policy.evaluate(black_box(&input), &Prior::default(), &[], now))
    });
    c.bench_function("plan", |b| {
        b.iter(|| policy.plan(black_box(&eval), black_box(&current)))
    });
    c.bench_function("evaluate + plan", |b| {
        b.iter(|| {
            let eval = policy.evaluate(black_box(&input), &Prior::default(), &[], now);
            policy.plan(&eval, black_box(&current))
        })
    });
    c.bench_function("parse (500 rules)", |b| {
        let text = policy_text();
        b.iter(|| Policy::parse(black_box(&text), "bench.toml").expect("parses"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
