//! The batched writes of the group committer.
//!
//! `Store::create_many`: many creates in one transaction, all or nothing, each written as `Store::create` writes
//! it (user row, email rows, first identity state, plan, outbox rows, audit records in item order).
//!
//! `Store::replace_many`: many replacements in one transaction, each with its own outcome; one that fails leaves
//! nothing behind (on PostgreSQL too, where a failed statement aborts the transaction until its savepoint is
//! rolled back).

use std::time::Duration;

use serde_json::{Map, Value, json};

use scimgate_scim::schema::ResourceKind;
use scimgate_store::lifecycle::StateWrite;
use scimgate_store::outbox::OutboxFilter;
use scimgate_store::sql::StoreOptions;
use scimgate_store::{
    AuditEntry, AuditFilter, AuditStore, Effects, LifecycleStore, OutboxNew, OutboxStore, PlanRecord, Replacement,
    SqlStore, Store, StoreError, Write,
};

async fn connect(url: String) -> SqlStore {
    SqlStore::connect(&StoreOptions {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    })
    .await
    .expect("connect")
}

async fn open() -> (SqlStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "scimgate-create-many-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    (connect(format!("sqlite://{}/s.db", dir.display())).await, dir)
}

fn write(id: &str, name: &str) -> Write {
    let doc: Map<String, Value> = serde_json::from_value(json!({
        "userName": name,
        "emails": [{"value": format!("{name}@Example.com")}, {"value": format!("{name}@example.COM")}],
    }))
    .expect("doc");
    let plan = format!("plan-{id}");
    Write {
        doc,
        password_hash: None,
        doc_changed: true,
        emails_unchanged: false,
        effects: vec![Effects {
            identity_id: id.into(),
            state: Some(StateWrite {
                expect_version: None,
                leaver_since: None,
                current: "{}".into(),
                evaluation: "{}".into(),
                policy_hash: "h".into(),
                wakeup_at: None,
            }),
            plan: Some(PlanRecord {
                id: plan.clone(),
                identity_id: id.into(),
                created: "2030-01-01T00:00:00Z".into(),
                cause: "create".into(),
                mode: "enforce".into(),
                policy_hash: "h".into(),
                items: "[]".into(),
            }),
            audit: vec![AuditEntry {
                kind: "decision".into(),
                actor: "system".into(),
                identity_id: Some(id.into()),
                request_id: None,
                data: json!({"plan": plan}),
            }],
            outbox: vec![OutboxNew {
                id: format!("ob-{id}"),
                target: "ldap".into(),
                item_no: 0,
                plan_id: Some(plan),
                operation: "apply".into(),
                priority: 0,
                payload: "{}".into(),
                secret: None,
            }],
            ..Default::default()
        }],
        audit: vec![AuditEntry {
            kind: "request".into(),
            actor: "token:0".into(),
            identity_id: Some(id.into()),
            request_id: Some("r".into()),
            data: json!({"op": "create", "id": id}),
        }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_many_is_all_or_nothing_and_writes_what_create_writes() {
    let (store, dir) = open().await;
    let t = "t";
    // More items than one statement takes, so the multi-row inserts run in several chunks.
    let items: Vec<(String, Write)> = (0..120)
        .map(|i| (format!("id{i:03}"), write(&format!("id{i:03}"), &format!("user{i:03}"))))
        .collect();
    let stored = store.create_many(t, ResourceKind::User, &items).await.expect("batch");
    assert_eq!(stored.len(), 120);
    assert!(stored.iter().all(|s| s.version == 1));
    assert_eq!(stored[7].id, "id007");
    let got = store
        .get(t, ResourceKind::User, "id007")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(got.doc["userName"], "user007");
    assert_eq!(got.version, 1);
    assert!(store.identity_state(t, "id119").await.expect("state").is_some());
    assert_eq!(store.plans(t, Some("id042"), 10).await.expect("plans").len(), 1);
    let rows = store
        .outbox_list(
            t,
            &OutboxFilter {
                identity: Some("id042".into()),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("pending", 0));
    // Email rows: lower-cased, deduplicated, findable by filter.
    let f = scimgate_scim::filter::parse_filter("emails.value eq \"user003@example.com\"", &Default::default())
        .expect("filter");
    let reg = scimgate_testkit::schemas::registry();
    let f = scimgate_scim::eval::resolve(&reg, ResourceKind::User, f).expect("resolve");
    let page = store
        .query(
            t,
            ResourceKind::User,
            &scimgate_store::Query {
                reg: &reg,
                filter: Some(&f),
                sort: None,
                start: scimgate_store::Start::Offset(0),
                count: 10,
                lowering: true,
                total: None,
            },
        )
        .await
        .expect("query");
    assert_eq!(page.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["id003"]);
    // The audit chain: request then decision, item by item, and it verifies.
    let records = store
        .audit_export(t, &AuditFilter::default(), 0, 1000)
        .await
        .expect("export");
    let order: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.identity_id.clone().unwrap_or_default(), r.kind.clone()))
        .collect();
    let want: Vec<(String, String)> = items
        .iter()
        .flat_map(|(id, _)| {
            [
                (id.clone(), "request".to_string()),
                (id.clone(), "decision".to_string()),
            ]
        })
        .collect();
    assert_eq!(order, want);
    assert!(store.verify(t).await.expect("verify").ok);

    // A taken userName (case aside) anywhere in a batch: nothing of the batch is written.
    let batch = vec![
        ("n1".to_string(), write("n1", "fresh1")),
        ("n2".to_string(), write("n2", "USER050")),
        ("n3".to_string(), write("n3", "fresh3")),
    ];
    let err = store
        .create_many(t, ResourceKind::User, &batch)
        .await
        .expect_err("taken");
    assert!(matches!(err, StoreError::Uniqueness(_)), "{err:?}");
    // A duplicate inside the batch, too.
    let batch = vec![
        ("d1".to_string(), write("d1", "dup")),
        ("d2".to_string(), write("d2", "Dup")),
    ];
    let err = store.create_many(t, ResourceKind::User, &batch).await.expect_err("dup");
    assert!(matches!(err, StoreError::Uniqueness(_)), "{err:?}");
    for id in ["n1", "n3", "d1"] {
        assert!(
            store.get(t, ResourceKind::User, id).await.expect("get").is_none(),
            "{id}"
        );
        assert!(store.identity_state(t, id).await.expect("state").is_none(), "{id}");
        assert!(store.plans(t, Some(id), 10).await.expect("plans").is_empty(), "{id}");
    }
    let after = store
        .audit_export(t, &AuditFilter::default(), 0, 1000)
        .await
        .expect("export");
    assert_eq!(after.len(), records.len(), "no audit record of a failed batch");
    // An identity state that already exists is a StateConflict, and nothing is written either.
    let mut w = write("id000", "other");
    w.effects[0].plan = None;
    let err = store
        .create_many(
            t,
            ResourceKind::User,
            &[
                ("x1".into(), write("x1", "x1")),
                ("x2".into(), {
                    let mut w2 = w.clone();
                    w2.effects[0].identity_id = "id000".into();
                    w2
                }),
            ],
        )
        .await
        .expect_err("conflict");
    assert!(matches!(err, StoreError::StateConflict), "{err:?}");
    assert!(store.get(t, ResourceKind::User, "x1").await.expect("get").is_none());
    let _ = std::fs::remove_dir_all(dir);
}

/// A replacement of user `id` by a document named `name`, with a plan and a request audit record.
fn replacement(id: &str, expect: i64, name: &str) -> Replacement {
    let mut w = write(id, name);
    let plan = format!("replan-{id}-{name}");
    w.effects = vec![Effects {
        identity_id: id.into(),
        plan: Some(PlanRecord {
            id: plan.clone(),
            identity_id: id.into(),
            created: "2030-01-01T00:00:00Z".into(),
            cause: "replace".into(),
            mode: "enforce".into(),
            policy_hash: "h".into(),
            items: "[]".into(),
        }),
        ..Default::default()
    }];
    w.audit[0].data = json!({"op": "replace", "id": id, "name": name});
    Replacement {
        kind: ResourceKind::User,
        id: id.into(),
        expect,
        write: w,
        members: vec![],
    }
}

async fn replace_many_gives_each_replacement_its_own_outcome(store: SqlStore) {
    let t = "t";
    let ids = ["ra", "rb", "rc", "rd"];
    let items: Vec<(String, Write)> = ids.iter().map(|id| (id.to_string(), write(id, id))).collect();
    store.create_many(t, ResourceKind::User, &items).await.expect("seed");
    let before = store
        .audit_export(t, &AuditFilter::default(), 0, 1000)
        .await
        .expect("export")
        .len();
    let outcomes = store
        .replace_many(
            t,
            &[
                replacement("ra", 1, "ra-renamed"),
                // A stale version.
                replacement("rb", 7, "rb-renamed"),
                // A userName the first replacement just took: a unique violation inside the transaction.
                replacement("rc", 1, "RA-RENAMED"),
                replacement("rd", 1, "rd-renamed"),
                // The first replacement moved ra to version 2.
                replacement("ra", 1, "ra-again"),
                replacement("nobody", 1, "nobody"),
            ],
        )
        .await
        .expect("batch");
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(s) => format!("{} v{} {}", s.id, s.version, s.doc["userName"]),
            Err(StoreError::VersionMismatch) => "moved".into(),
            Err(StoreError::Uniqueness(_)) => "taken".into(),
            Err(StoreError::NotFound) => "missing".into(),
            Err(e) => format!("{e:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "ra v2 \"ra-renamed\"",
            "moved",
            "taken",
            "rd v2 \"rd-renamed\"",
            "moved",
            "missing"
        ]
    );
    let name = |id: &'static str| {
        let store = store.clone();
        async move {
            let s = store.get(t, ResourceKind::User, id).await.expect("get").expect("row");
            (s.version, s.doc["userName"].as_str().unwrap_or_default().to_string())
        }
    };
    assert_eq!(name("ra").await, (2, "ra-renamed".into()));
    assert_eq!(name("rb").await, (1, "rb".into()));
    assert_eq!(name("rc").await, (1, "rc".into()));
    assert_eq!(name("rd").await, (2, "rd-renamed".into()));
    // Effects only of the replacements that applied.
    for (id, plans) in [("ra", 2), ("rb", 1), ("rc", 1), ("rd", 2)] {
        assert_eq!(store.plans(t, Some(id), 10).await.expect("plans").len(), plans, "{id}");
    }
    // Audit records of the two that applied, in item order, and the chain verifies.
    let records = store
        .audit_export(t, &AuditFilter::default(), 0, 1000)
        .await
        .expect("export");
    let new: Vec<String> = records[before..]
        .iter()
        .map(|r| r.data["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(new, ["ra-renamed", "rd-renamed"]);
    assert!(store.verify(t).await.expect("verify").ok);
    // A replacement that changes nothing keeps the version.
    let mut same = replacement("rb", 1, "rb");
    same.write.doc_changed = false;
    same.write.effects.clear();
    let kept = store.replace_many(t, &[same]).await.expect("batch");
    assert!(
        matches!(&kept[..], [Ok(s)] if s.version == 1 && s.doc["userName"] == "rb"),
        "{kept:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_many_on_sqlite() {
    let (store, dir) = open().await;
    replace_many_gives_each_replacement_its_own_outcome(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_many_on_postgres() {
    let db = scimgate_testkit::db::TempDb::postgres("scimgate_replace_many");
    replace_many_gives_each_replacement_its_own_outcome(connect(db.url.clone()).await).await;
}

/// `user_for_change` and `decision_inputs` read in one statement exactly what `get`, `groups_of`,
/// `identity_state`, `exceptions` and the pending `approvals` read one by one: the same records, in the same order.
async fn combined_reads_match_the_single_reads(store: SqlStore) {
    use scimgate_scim::patch::Member;
    use scimgate_store::{ApprovalRecord, ExceptionRecord};
    let t = "t";
    store
        .create_many(
            t,
            ResourceKind::User,
            &[("u1".into(), write("u1", "alice")), ("u2".into(), write("u2", "bob"))],
        )
        .await
        .expect("seed");
    for (gid, name) in [("g2", "Zeta"), ("g1", "Alpha")] {
        let doc: Map<String, Value> = serde_json::from_value(json!({"displayName": name})).expect("doc");
        let w = Write {
            doc,
            password_hash: None,
            doc_changed: true,
            emails_unchanged: false,
            effects: vec![],
            audit: vec![],
        };
        let members = [Member {
            value: "u1".into(),
            kind: Some("User".into()),
        }];
        store
            .create(t, ResourceKind::Group, gid, w, &members)
            .await
            .expect("group");
    }
    let approval = |id: &str, status: &str, created: &str| ApprovalRecord {
        id: id.into(),
        identity_id: "u1".into(),
        status: status.into(),
        created: created.into(),
        escalate_at: (id == "ap-b").then(|| "2030-01-02T00:00:00Z".into()),
        expires_at: "2030-02-01T00:00:00Z".into(),
        decided_at: None,
        version: 1,
        request: format!("{{\"id\":\"{id}\"}}"),
    };
    let exception = |rule: &str| ExceptionRecord {
        identity_id: "u1".into(),
        rule: rule.into(),
        approver: "carol".into(),
        approval_id: "ap-x".into(),
        created: "2030-01-01T00:00:00Z".into(),
        expires_at: "2031-01-01T00:00:00Z".into(),
    };
    store
        .apply_effects(
            t,
            &[Effects {
                identity_id: "u1".into(),
                new_approvals: vec![
                    approval("ap-c", "pending", "2030-01-03T00:00:00Z"),
                    approval("ap-a", "approved", "2030-01-01T00:00:00Z"),
                    approval("ap-b", "pending", "2030-01-01T00:00:00Z"),
                ],
                new_exceptions: vec![exception("sod-2"), exception("sod-1")],
                ..Effects::default()
            }],
        )
        .await
        .expect("effects");

    let got = store.user_for_change(t, "u1").await.expect("read").expect("found");
    assert_eq!(
        Some(got.user.clone()),
        store.get(t, ResourceKind::User, "u1").await.expect("get")
    );
    assert_eq!(got.groups, store.groups_of(t, "u1").await.expect("groups"));
    assert_eq!(
        got.groups,
        [
            ("g1".to_string(), "Alpha".to_string()),
            ("g2".to_string(), "Zeta".to_string())
        ]
    );
    let state = store.identity_state(t, "u1").await.expect("state");
    assert!(state.is_some());
    assert_eq!(got.inputs.state, state);
    assert_eq!(
        got.inputs.exceptions,
        store.exceptions(t, Some("u1")).await.expect("exceptions")
    );
    let rules: Vec<&str> = got.inputs.exceptions.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(rules, ["sod-1", "sod-2"]);
    let pending = store
        .approvals(t, Some("pending"), Some("u1"))
        .await
        .expect("approvals");
    assert_eq!(got.inputs.pending, pending);
    let ids: Vec<&str> = got.inputs.pending.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["ap-b", "ap-c"]);
    assert_eq!(store.decision_inputs(t, "u1").await.expect("inputs"), got.inputs);

    // A user with nothing but a state; an unknown one.
    let bob = store.user_for_change(t, "u2").await.expect("read").expect("found");
    assert!(bob.groups.is_empty() && bob.inputs.exceptions.is_empty() && bob.inputs.pending.is_empty());
    assert_eq!(bob.inputs.state.map(|s| s.version), Some(1));
    assert!(store.user_for_change(t, "nobody").await.expect("read").is_none());
    let none = store.decision_inputs(t, "nobody").await.expect("inputs");
    assert_eq!(none, scimgate_store::DecisionInputs::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_reads_on_sqlite() {
    let (store, dir) = open().await;
    combined_reads_match_the_single_reads(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_reads_on_postgres() {
    let db = scimgate_testkit::db::TempDb::postgres("scimgate_combined_reads");
    combined_reads_match_the_single_reads(connect(db.url.clone()).await).await;
}

/// A group in which every replacement applies (the attempt without savepoints) writes each one's plan, with the
/// plans inserted together at the end.
async fn a_whole_group_writes_every_plan(store: SqlStore) {
    let t = "t";
    let items: Vec<(String, Write)> = ["wa", "wb", "wc"]
        .iter()
        .map(|id| (id.to_string(), write(id, id)))
        .collect();
    store.create_many(t, ResourceKind::User, &items).await.expect("seed");
    let outcomes = store
        .replace_many(
            t,
            &[
                replacement("wa", 1, "wa-1"),
                replacement("wb", 1, "wb-1"),
                replacement("wa", 2, "wa-2"),
            ],
        )
        .await
        .expect("batch");
    let versions: Vec<i64> = outcomes.iter().map(|o| o.as_ref().expect("applied").version).collect();
    assert_eq!(versions, [2, 2, 3]);
    for (id, plans) in [("wa", 3), ("wb", 2), ("wc", 1)] {
        assert_eq!(store.plans(t, Some(id), 10).await.expect("plans").len(), plans, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_group_on_sqlite() {
    let (store, dir) = open().await;
    a_whole_group_writes_every_plan(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_group_on_postgres() {
    let db = scimgate_testkit::db::TempDb::postgres("scimgate_whole_group");
    a_whole_group_writes_every_plan(connect(db.url.clone()).await).await;
}
