//! Micro-benchmarks of the protocol core: the filter parser, filter resolution and evaluation against a
//! canonical enterprise user, and PATCH (request parsing, then application; Group membership split out).
//!
//! Run: `cargo bench -p scimgate-scim --bench protocol` (add `-- filter_parse` etc. to pick a group).
//! All inputs are built, parsed and checked before measuring; only the named call is in the timed closure,
//! and documents a PATCH mutates are cloned per iteration outside the timing (`iter_batched`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use scimgate_scim::eval;
use scimgate_scim::filter::{Filter, FilterError, FilterLimits, parse_filter};
use scimgate_scim::patch::{self, MemberOp, PATCH_OP_URN, PatchOp};
use scimgate_scim::resource::{Mode, normalize};
use scimgate_scim::schema::{ENTERPRISE_URN, Registry, ResourceKind, SchemaDoc};
use serde_json::{Map, Value, json};

const USER_ID: &str = "2819c223-7f76-453a-919d-413861904646";
const GROUP_ID: &str = "e9e30dba-f08f-4109-8486-d5c6a331660a";
const MEMBER_ID: &str = "0f2a6c1e-5d34-4b7e-9c0a-8e1f3b2d4a6c";

/// The registry from the repository's `schemas/` directory, as the gateway loads it.
fn registry() -> Registry {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut docs = Vec::new();
    let mut types = None;
    for e in std::fs::read_dir(&dir).expect("schemas dir").flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read schema");
        let doc = SchemaDoc {
            source: p.display().to_string(),
            json: serde_json::from_str(&text).expect("schema json"),
        };
        if p.ends_with("resource-types.json") {
            types = Some(doc);
        } else {
            docs.push(doc);
        }
    }
    Registry::build(docs, &types.expect("resource-types.json")).expect("registry")
}

/// RFC 7643 §8.2's Babs Jensen, trimmed to what an HR-driven IdP sends (about 600 bytes): name, emails and the
/// enterprise extension. Canonical (normalised) and without `id`/`meta`, as the store holds it.
fn user_doc(reg: &Registry) -> Map<String, Value> {
    let body = json!({
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            ENTERPRISE_URN
        ],
        "externalId": "701984",
        "userName": "bjensen",
        "name": {
            "formatted": "Ms. Barbara J Jensen, III",
            "familyName": "Jensen",
            "givenName": "Barbara"
        },
        "displayName": "Babs Jensen",
        "title": "Tour Guide",
        "userType": "Employee",
        "active": true,
        "emails": [
            {"value": "bjensen@example.com", "type": "work", "primary": true},
            {"value": "babs@jensen.org", "type": "home"}
        ],
        ENTERPRISE_URN: {
            "employeeNumber": "701984",
            "costCenter": "4130",
            "organization": "Universal Studios",
            "division": "Theme Park",
            "department": "Tour Operations",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}
        }
    });
    normalize(reg, ResourceKind::User, body, Mode::Create).expect("the bench user is valid")
}

/// The user as filters see it: with `id` and `meta`.
fn with_id_meta(mut doc: Map<String, Value>) -> Map<String, Value> {
    doc.insert("id".into(), json!(USER_ID));
    doc.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": "2024-01-23T04:56:22Z",
            "lastModified": "2025-03-01T09:00:00Z",
            "version": "W/\"3\"",
            "location": format!("https://scim.example.com/scim/v2/Users/{USER_ID}")
        }),
    );
    doc
}

/// A filter nesting `levels` deep (each `(...)` and the final `[...]` is one level), alternating
/// `(true and X)` and `(false or X)` so evaluation has to walk all the way down.
fn deep_filter(levels: usize) -> String {
    const TRUE: [&str; 5] = [
        "active eq true",
        "name.familyName eq \"jensen\"",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department sw \"Tour\"",
        "meta.lastModified gt \"2024-06-01T00:00:00Z\"",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value pr",
    ];
    const FALSE: [&str; 5] = [
        "userType eq \"Contractor\"",
        "title co \"Manager\"",
        "not (displayName pr)",
        "externalId eq \"999999\"",
        "phoneNumbers.type eq \"mobile\"",
    ];
    let mut f = String::from("emails[type eq \"work\" and value ew \"@example.com\"]");
    for i in (0..levels - 1).rev() {
        f = if i % 2 == 0 {
            format!("({} and {f})", TRUE[(i / 2) % TRUE.len()])
        } else {
            format!("({} or {f})", FALSE[(i / 2) % FALSE.len()])
        };
    }
    f
}

fn patch_body(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP_URN], "Operations": ops})
}

struct Case {
    name: &'static str,
    text: String,
    expect: bool,
}

fn filter_cases(limits: &FilterLimits) -> Vec<Case> {
    let deep = deep_filter(limits.max_depth);
    // At the limit: one level fewer allowed and it is refused.
    let tighter = FilterLimits {
        max_depth: limits.max_depth - 1,
        ..*limits
    };
    assert!(matches!(
        parse_filter(&deep, &tighter),
        Err(FilterError::TooDeep { .. })
    ));
    vec![
        Case {
            name: "simple",
            text: r#"userName eq "bjensen""#.into(),
            expect: true,
        },
        Case {
            name: "compound",
            text: r#"(userName sw "a" and active eq true) or emails[type eq "work" and value co "@example.com"]"#
                .into(),
            expect: true,
        },
        Case {
            name: "deep",
            text: deep,
            expect: true,
        },
    ]
}

fn bench_filters(c: &mut Criterion) {
    let reg = registry();
    let limits = FilterLimits::default();
    let cases = filter_cases(&limits);
    let user = with_id_meta(user_doc(&reg));
    eprintln!(
        "bench user: {} bytes of JSON ({} with id and meta); deep filter: {} levels, {} bytes",
        serde_json::to_string(&user_doc(&reg)).expect("serialise").len(),
        serde_json::to_string(&user).expect("serialise").len(),
        limits.max_depth,
        cases[2].text.len()
    );

    let mut group = c.benchmark_group("filter_parse");
    for case in &cases {
        parse_filter(&case.text, &limits).expect("the bench filter parses");
        group.bench_function(case.name, |b| {
            b.iter(|| parse_filter(black_box(&case.text), black_box(&limits)))
        });
    }
    group.finish();

    let parsed: Vec<Filter> = cases
        .iter()
        .map(|case| parse_filter(&case.text, &limits).expect("parses"))
        .collect();
    let mut group = c.benchmark_group("filter_resolve");
    for (case, f) in cases.iter().zip(&parsed) {
        eval::resolve(&reg, ResourceKind::User, f.clone()).expect("the bench filter resolves");
        group.bench_function(case.name, |b| {
            b.iter_batched(
                || f.clone(),
                |f| eval::resolve(&reg, ResourceKind::User, black_box(f)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("filter_matches");
    for (case, f) in cases.iter().zip(&parsed) {
        let resolved = eval::resolve(&reg, ResourceKind::User, f.clone()).expect("resolves");
        assert_eq!(
            eval::matches(&reg, ResourceKind::User, &resolved, &user),
            case.expect,
            "{}",
            case.name
        );
        group.bench_function(case.name, |b| {
            b.iter(|| eval::matches(&reg, ResourceKind::User, black_box(&resolved), black_box(&user)))
        });
    }
    group.finish();
}

fn bench_patch(c: &mut Criterion) {
    let reg = registry();
    let limits = FilterLimits::default();
    let max_ops = 100;
    let user = user_doc(&reg);
    let group_doc = normalize(
        &reg,
        ResourceKind::Group,
        json!({"displayName": "Tour Guides"}),
        Mode::Create,
    )
    .expect("the bench group is valid");

    // Okta deactivation: a path-less replace.
    let okta = patch_body(json!([{"op": "replace", "value": {"active": false}}]));
    // Entra: capitalised ops, a sub-attribute, a value path that creates or updates, a URN-qualified remove.
    let entra = patch_body(json!([
        {"op": "Replace", "path": "name.givenName", "value": "Barb"},
        {"op": "Add", "path": "emails[type eq \"work\"].value", "value": "barbara.jensen@example.com"},
        {"op": "Remove", "path": format!("{ENTERPRISE_URN}:manager")}
    ]));
    // Add one member to a group.
    let add_member = patch_body(json!([
        {"op": "add", "path": "members", "value": [{"value": MEMBER_ID, "display": "bjensen"}]}
    ]));

    let mut group = c.benchmark_group("patch_parse");
    for (name, body) in [
        ("okta_replace_active", &okta),
        ("entra_ops", &entra),
        ("group_add_member", &add_member),
    ] {
        patch::parse_request(body.clone(), &limits, max_ops).expect("the bench PATCH parses");
        group.bench_function(name, |b| {
            b.iter_batched(
                || body.clone(),
                |body| patch::parse_request(black_box(body), &limits, max_ops),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    let parse = |body: &Value| -> Vec<PatchOp> {
        patch::parse_request(body.clone(), &limits, max_ops).expect("the bench PATCH parses")
    };
    let okta_ops = parse(&okta);
    let entra_ops = parse(&entra);
    let member_ops = parse(&add_member);

    // Check each PATCH does what it should before timing it.
    let mut d = user.clone();
    patch::apply(&reg, ResourceKind::User, USER_ID, &mut d, &okta_ops).expect("okta applies");
    assert_eq!(d["active"], json!(false));
    let mut d = user.clone();
    patch::apply(&reg, ResourceKind::User, USER_ID, &mut d, &entra_ops).expect("entra applies");
    assert_eq!(d["name"]["givenName"], json!("Barb"));
    assert_eq!(d["emails"][0]["value"], json!("barbara.jensen@example.com"));
    assert!(d[ENTERPRISE_URN].get("manager").is_none());
    let (members, rest) = patch::split_members(&reg, member_ops.clone()).expect("splits");
    assert!(rest.is_empty());
    assert!(matches!(&members[..], [MemberOp::Add(m)] if m.len() == 1 && m[0].value == MEMBER_ID));

    let mut group = c.benchmark_group("patch_apply");
    for (name, ops) in [("okta_replace_active", &okta_ops), ("entra_ops", &entra_ops)] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || user.clone(),
                |doc| patch::apply(&reg, ResourceKind::User, USER_ID, doc, black_box(ops)),
                BatchSize::SmallInput,
            )
        });
    }
    // As the service does it for a Group: membership split out for the store, the rest applied to the doc.
    group.bench_function("group_add_member", |b| {
        b.iter_batched(
            || (member_ops.clone(), group_doc.clone()),
            |(ops, mut doc)| {
                let (members, rest) = patch::split_members(&reg, black_box(ops))?;
                patch::apply(&reg, ResourceKind::Group, GROUP_ID, &mut doc, &rest)?;
                Ok::<_, scimgate_scim::ProtocolError>((members, doc))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_filters, bench_patch);
criterion_main!(benches);
