//! Property test: a filter lowered to SQL returns exactly what in-memory evaluation returns, on SQLite and on
//! PostgreSQL. Random users (mixed case, non-ASCII, LIKE metacharacters, missing attributes, several emails) and
//! random filters over the indexed attributes, combined with and/or/not and sorted several ways.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use scimgate_scim::eval::resolve;
use scimgate_scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use scimgate_scim::resource::{Mode, normalize};
use scimgate_scim::schema::{Registry, ResourceKind};
use scimgate_store::sql::StoreOptions;
use scimgate_store::{Query, SqlStore, Start, Store, Write};

const NAMES: &[&str] = &[
    "alice",
    "Alice2",
    "BOB",
    "bob_x",
    "b%b",
    "Čeněk",
    "straße",
    "zoë",
    "a\\b",
    "Ann-Marie",
    "o'hara",
    "x",
];
const DOMAINS: &[&str] = &["example.com", "EXAMPLE.org", "ex_ample.net", "ü.de"];

async fn seed(store: &SqlStore, reg: &Registry, tenant: &str) -> Vec<String> {
    let mut created = Vec::new();
    for i in 0..60usize {
        let name = format!("{}{}", NAMES[i % NAMES.len()], i);
        let mut body = json!({"userName": name});
        if i % 3 != 0 {
            body["externalId"] = json!(format!("{}-{}", if i % 2 == 0 { "EXT" } else { "ext" }, i % 7));
        }
        if i % 4 != 1 {
            body["displayName"] = json!(format!("{} {}", NAMES[(i * 5) % NAMES.len()], i % 5));
        }
        let emails: Vec<Value> = (0..(i % 3))
            .map(|k| json!({"value": format!("{}.{k}@{}", NAMES[(i + k) % NAMES.len()], DOMAINS[(i + k) % DOMAINS.len()]), "type": if k == 0 { "work" } else { "home" }}))
            .collect();
        if !emails.is_empty() {
            body["emails"] = json!(emails);
        }
        let doc = normalize(reg, ResourceKind::User, body, Mode::Create).expect("valid user");
        let s = store
            .create(
                tenant,
                ResourceKind::User,
                &format!("01900000-0000-7000-8000-{i:012}"),
                Write {
                    doc,
                    password_hash: None,
                    doc_changed: true,
                    emails_unchanged: false,
                    effects: vec![],
                    audit: vec![],
                },
                &[],
            )
            .await
            .expect("create");
        created.push(s.created);
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    created
}

fn path(attr: &str, sub: Option<&str>) -> AttrPath {
    AttrPath {
        urn: None,
        attr: attr.into(),
        sub: sub.map(Into::into),
    }
}

/// A leaf over an indexed attribute; datetime values pick one of the seeded timestamps by index.
fn leaf() -> impl Strategy<Value = (Filter, Option<usize>)> {
    let text = prop_oneof![
        proptest::sample::select(NAMES).prop_map(str::to_string),
        "[a-zA-Z_%\\\\.@0-9 -]{0,4}",
        proptest::sample::select(DOMAINS).prop_map(str::to_string),
        Just("EXT-3".to_string()),
    ];
    let string_attr = proptest::sample::select(vec![
        ("userName", None),
        ("externalId", None),
        ("displayName", None),
        ("emails", Some("value")),
        ("emails", None),
        ("id", None),
    ]);
    let op = proptest::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Co,
        CompareOp::Sw,
        CompareOp::Ew,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ]);
    let time_op = proptest::sample::select(vec![
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Gt,
        CompareOp::Ge,
        CompareOp::Lt,
        CompareOp::Le,
    ]);
    prop_oneof![
        4 => (string_attr, op, text).prop_map(|((a, s), op, v)| (Filter::Compare { path: path(a, s), op, value: CompValue::Str(v) }, None)),
        1 => proptest::sample::select(vec![("userName", None), ("externalId", None), ("displayName", None), ("emails", Some("value"))])
            .prop_map(|(a, s)| (Filter::Present(path(a, s)), None)),
        1 => (proptest::sample::select(vec!["created", "lastModified"]), time_op, 0usize..60)
            .prop_map(|(sub, op, i)| (Filter::Compare { path: path("meta", Some(sub)), op, value: CompValue::Str(String::new()) }, Some(i))),
    ]
}

fn filter() -> impl Strategy<Value = Vec<(Filter, Option<usize>)>> {
    // A list of leaves plus a shape code builds and/or/not trees deterministically.
    proptest::collection::vec(leaf(), 1..5)
}

fn build(leaves: &[(Filter, Option<usize>)], shape: u8, times: &[String]) -> Filter {
    let mut it = leaves.iter().map(|(f, t)| match (f, t) {
        (Filter::Compare { path, op, .. }, Some(i)) => Filter::Compare {
            path: path.clone(),
            op: *op,
            value: CompValue::Str(times[*i].clone()),
        },
        (f, _) => f.clone(),
    });
    let Some(mut acc) = it.next() else {
        unreachable!("at least one leaf")
    };
    for (k, f) in it.enumerate() {
        let bits = shape >> (k % 4);
        let f = if bits & 4 != 0 { Filter::Not(Box::new(f)) } else { f };
        acc = if bits & 1 == 0 {
            Filter::And(Box::new(acc), Box::new(f))
        } else {
            Filter::Or(Box::new(acc), Box::new(f))
        };
    }
    acc
}

async fn open(url: &str) -> SqlStore {
    SqlStore::connect(&StoreOptions {
        url: url.into(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect")
}

fn check_backend(store: SqlStore, rt: tokio::runtime::Runtime) {
    let reg = Arc::new(scimgate_testkit::schemas::registry());
    let tenant = "prop";
    let times = rt.block_on(seed(&store, &reg, tenant));
    let sorts = [
        None,
        Some(("userName", None, false)),
        Some(("displayName", None, true)),
        Some(("emails", Some("value"), false)),
        Some(("meta", Some("created"), true)),
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(filter(), any::<u8>(), 0usize..sorts.len(), 0usize..5),
            |(leaves, shape, sort, offset)| {
                let f = build(&leaves, shape, &times);
                let f = resolve(&reg, ResourceKind::User, f.clone())
                    .map_err(|e| TestCaseError::fail(format!("{f}: {e}")))?;
                let sort = sorts[sort].map(|(a, s, d)| (path(a, s), d));
                let run = |lowering: bool| {
                    let q = Query {
                        reg: &reg,
                        filter: Some(&f),
                        sort: sort.clone(),
                        start: Start::Offset(offset),
                        count: 1000,
                        lowering,
                        total: None,
                    };
                    rt.block_on(store.query(tenant, ResourceKind::User, &q))
                        .map_err(|e| TestCaseError::fail(e.to_string()))
                };
                let sql = run(true)?;
                let mem = run(false)?;
                let ids = |p: &scimgate_store::Page| p.rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
                prop_assert_eq!(sql.total, mem.total, "total differs for {}", f);
                prop_assert_eq!(ids(&sql), ids(&mem), "rows differ for {} sorted {:?}", f, sort);
                Ok(())
            },
        )
        .expect("SQL lowering and in-memory evaluation agree");
    // The property must have exercised real lowering, not only fallbacks.
    let probe = resolve(
        &reg,
        ResourceKind::User,
        Filter::Compare {
            path: path("userName", None),
            op: CompareOp::Sw,
            value: CompValue::Str("a".into()),
        },
    )
    .expect("resolves");
    assert!(store.lowers_completely(ResourceKind::User, &probe));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn lowering_agrees_with_memory_on_sqlite() {
    let rt = runtime();
    let dir = tempfile_dir();
    let store = rt.block_on(open(&format!("sqlite://{}/prop.db", dir.display())));
    check_backend(store, rt);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lowering_agrees_with_memory_on_postgres() {
    let rt = runtime();
    let admin = std::env::var("SCIMGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!("scimgate_prop_{}", std::process::id());
    let psql = |sql: &str| {
        let out = std::process::Command::new("psql")
            .arg(format!("{admin}/postgres"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    };
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    psql(&format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
    ));
    let store = rt.block_on(open(&format!("{admin}/{name}")));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_backend(store, rt)));
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scimgate-prop-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
