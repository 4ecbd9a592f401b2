//! The tamper-evident audit trail against the store directly, on a temp SQLite file and on a fresh PostgreSQL
//! database (SCIMGATE_TEST_PG, default `postgres://postgres@127.0.0.1:5432`; never skipped). Records are
//! appended (partly from concurrent tasks), then tampered with by plain SQL (psql; python3's sqlite3 for
//! SQLite), and verification must name the place and the kind of each tampering. Also pruning with its anchor,
//! exports by time range and identity, the CLI functions, and the PostgreSQL privileges that keep the gateway's
//! role from changing records.

use scimgate::audit_cli;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use scimgate_scim::resource::format_datetime;
use scimgate_store::audit::{AuditEntry, AuditFilter, AuditRecord, AuditStore, GENESIS_HASH, HashInput, Problem};
use scimgate_store::sql::StoreOptions;
use scimgate_store::{SqlStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

fn pg_admin_url() -> String {
    std::env::var("SCIMGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Run `sql` with psql; stdout, or stderr as the error.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("psql is required for PostgreSQL tests: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A fresh database with a connected, migrated store. PostgreSQL databases (and roles) are dropped afterwards.
struct Db {
    kind: Kind,
    store: SqlStore,
    sqlite_path: Option<PathBuf>,
    pg_name: Option<String>,
    roles: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn connect(url: &str) -> Result<SqlStore, StoreError> {
    SqlStore::connect(&StoreOptions {
        url: url.to_string(),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(30),
    })
    .await
}

impl Db {
    async fn new(kind: Kind) -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, sqlite_path, pg_name) = match kind {
            Kind::Sqlite => {
                let p = dir.path().join("audit.db");
                (format!("sqlite://{}", p.display()), Some(p), None)
            }
            Kind::Postgres => {
                let name = format!("scimgate_audit_{}", uuid::Uuid::new_v4().simple());
                psql(
                    &format!("{}/postgres", pg_admin_url()),
                    &format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"),
                )
                .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", pg_admin_url()));
                (format!("{}/{name}", pg_admin_url()), None, Some(name))
            }
        };
        let store = connect(&url).await.expect("connect and migrate");
        Db {
            kind,
            store,
            sqlite_path,
            pg_name,
            roles: Vec::new(),
            _dir: dir,
        }
    }

    /// Tamper: run SQL directly against the database, around the store.
    fn sql(&self, sql: &str) {
        match self.kind {
            Kind::Postgres => {
                let name = self.pg_name.as_deref().expect("pg database");
                psql(&format!("{}/{name}", pg_admin_url()), sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Kind::Sqlite => {
                let path = self.sqlite_path.as_ref().expect("sqlite path");
                let out = Command::new("python3")
                    .args([
                        "-c",
                        "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\n\
                         c.executescript(sys.argv[2])\nc.commit()\nc.close()",
                    ])
                    .arg(path)
                    .arg(sql)
                    .output()
                    .expect("python3 is required to tamper with SQLite");
                assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let admin = format!("{}/postgres", pg_admin_url());
            let _ = psql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            for r in &self.roles {
                let _ = psql(&admin, &format!("DROP ROLE IF EXISTS {r}"));
            }
        }
    }
}

/// Run an async scenario on both databases.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Kind::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::Kind::Postgres).await;
            }
        }
    };
}

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).single().expect("base time")
}

/// The stored time `h` hours after the base.
fn hours(h: i64) -> String {
    format_datetime(base() + TimeDelta::hours(h))
}

fn entry(kind: &str, actor: &str, identity: Option<String>, request: Option<String>, data: Value) -> AuditEntry {
    AuditEntry {
        kind: kind.into(),
        actor: actor.into(),
        identity_id: identity,
        request_id: request,
        data,
    }
}

/// 50 records: 20 appended one by one (seq 1..=20, at base+0h..19h, identities u0..u3), then 30 from six
/// concurrent tasks (three single appends and one append of two entries each, at base+20h.. in no seq order).
async fn seed(store: &SqlStore, tenant: &str) {
    for i in 0..20i64 {
        store
            .append(
                tenant,
                &hours(i),
                &[entry(
                    "request",
                    "okta",
                    Some(format!("u{}", i % 4)),
                    Some(format!("req-{i}")),
                    json!({"op": "create", "i": i}),
                )],
            )
            .await
            .expect("append");
    }
    let mut tasks = Vec::new();
    for t in 0..6i64 {
        let store = store.clone();
        let tenant = tenant.to_string();
        tasks.push(tokio::spawn(async move {
            for k in 0..3 {
                store
                    .append(
                        &tenant,
                        &hours(20 + t * 5 + k),
                        &[entry(
                            "operation",
                            &format!("task{t}"),
                            Some(format!("u{}", (t + k) % 4)),
                            None,
                            json!({"task": t, "k": k}),
                        )],
                    )
                    .await
                    .expect("concurrent append");
            }
            let pair = [
                entry(
                    "decision",
                    "system",
                    Some(format!("u{}", t % 4)),
                    Some(format!("req-t{t}")),
                    json!({"task": t, "k": 3, "text": "tab\t \"quoted\" ünï"}),
                ),
                entry("policy", "system", None, None, json!({"task": t, "k": 4})),
            ];
            store
                .append(&tenant, &hours(20 + t * 5 + 3), &pair)
                .await
                .expect("concurrent append of two");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
}

async fn all(store: &SqlStore, tenant: &str) -> Vec<AuditRecord> {
    store.audit_page(tenant, 0, 10_000).await.expect("page")
}

async fn problem(store: &SqlStore, tenant: &str) -> Option<Problem> {
    let r = store.verify(tenant).await.expect("verify");
    assert_eq!(r.ok, r.problem.is_none(), "{r}");
    r.problem
}

/// The forger knows the algorithm: a correctly hashed record.
fn forged_hash(tenant: &str, seq: i64, at: &str, data: &str, prev: &str) -> String {
    HashInput {
        tenant,
        seq,
        at,
        kind: "request",
        actor: "mallory",
        identity_id: Some("u1"),
        request_id: None,
        data,
        prev_hash: prev,
    }
    .hash()
}

fn forged_insert(tenant: &str, seq: i64, at: &str, data: &str, prev: &str, hash: &str) -> String {
    format!(
        "INSERT INTO audit_log (tenant, seq, at, kind, actor, identity_id, request_id, data, prev_hash, hash) \
         VALUES ('{tenant}', {seq}, '{at}', 'request', 'mallory', 'u1', NULL, '{data}', '{prev}', '{hash}')"
    )
}

async fn chain_is_linear_under_concurrency(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    let (a, b) = (s.clone(), s.clone());
    tokio::join!(seed(&a, "acme"), seed(&b, "globex"));
    for tenant in ["acme", "globex"] {
        let report = s.verify(tenant).await.expect("verify");
        assert!(report.ok, "{report}");
        assert_eq!(report.checked, 50, "{report}");
        assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(50)));
        let recs = all(s, tenant).await;
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=50).collect::<Vec<_>>()
        );
        let mut prev = GENESIS_HASH.to_string();
        for r in &recs {
            assert_eq!(r.tenant, tenant);
            assert_eq!(r.prev_hash, prev, "seq {}", r.seq);
            let data = serde_json::to_string(&r.data).expect("data");
            let h = HashInput {
                tenant: &r.tenant,
                seq: r.seq,
                at: &r.at,
                kind: &r.kind,
                actor: &r.actor,
                identity_id: r.identity_id.as_deref(),
                request_id: r.request_id.as_deref(),
                data: &data,
                prev_hash: &r.prev_hash,
            }
            .hash();
            assert_eq!(h, r.hash, "seq {}", r.seq);
            prev.clone_from(&r.hash);
        }
        assert_eq!(report.last_hash, prev);
        // Every concurrent append landed exactly once, and each pair stayed adjacent.
        for t in 0..6 {
            for k in 0..5 {
                let hits: Vec<&AuditRecord> = recs
                    .iter()
                    .filter(|r| r.data.get("task") == Some(&json!(t)) && r.data["k"] == json!(k))
                    .collect();
                assert_eq!(hits.len(), 1, "task {t} k {k}");
            }
            let first = recs
                .iter()
                .find(|r| r.data.get("task") == Some(&json!(t)) && r.data["k"] == json!(3));
            let second = recs
                .iter()
                .find(|r| r.data.get("task") == Some(&json!(t)) && r.data["k"] == json!(4));
            assert_eq!(first.map(|r| r.seq + 1), second.map(|r| r.seq));
        }
    }
    // First appends racing on a fresh tenant: the head row is created once and the chain stays linear.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let racers: Vec<_> = (0..8i64)
        .map(|t| {
            let (store, start) = (s.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                for k in 0..5 {
                    let e = entry("request", "okta", None, None, json!({"t": t, "k": k}));
                    store.append("fresh", &hours(t), &[e]).await.expect("first appends");
                }
            })
        })
        .collect();
    for r in racers {
        r.await.expect("racer");
    }
    let report = s.verify("fresh").await.expect("verify");
    assert!(
        report.ok && report.checked == 40 && report.last_seq == Some(40),
        "{report}"
    );
    assert_eq!(
        s.tenants_with_audit().await.expect("tenants"),
        vec!["acme", "fresh", "globex"]
    );
    // An empty or unknown tenant verifies as an empty chain.
    let empty = s.verify("nobody").await.expect("verify");
    assert!(
        empty.ok && empty.checked == 0 && empty.last_hash == GENESIS_HASH,
        "{empty}"
    );
    // Appending nothing changes nothing.
    s.append("acme", &hours(99), &[]).await.expect("empty append");
    assert_eq!(all(s, "acme").await.len(), 50);
}
both!(chain_is_linear_under_concurrency);

/// Writers racing, a verifier and a pruner (of 300 older records) running alongside: the chain stays linear,
/// and no verification reports a problem that is not there.
async fn writers_verifier_and_pruner_race(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    const WRITERS: i64 = 8;
    const EACH: i64 = 25;
    // Old records for the pruner: 300, ten per hour, all before anything the writers write.
    for i in 0..30 {
        let batch: Vec<AuditEntry> = (0..10)
            .map(|k| entry("request", "hr", None, None, json!({"old": i, "k": k})))
            .collect();
        s.append("race", &hours(-1000 + i), &batch).await.expect("append old");
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(usize::try_from(WRITERS).expect("n") + 2));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, start) = (s.clone(), start.clone());
        writers.push(tokio::spawn(async move {
            start.wait().await;
            for k in 0..EACH {
                let e = entry("request", &format!("w{w}"), None, None, json!({"w": w, "k": k}));
                store.append("race", &hours(w * 100 + k), &[e]).await.expect("append");
            }
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifier = {
        let (store, start, done) = (s.clone(), start.clone(), done.clone());
        tokio::spawn(async move {
            start.wait().await;
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || runs == 0 {
                let r = store.verify("race").await.expect("verify");
                assert!(r.ok, "{r}");
                runs += 1;
            }
            runs
        })
    };
    let pruner = {
        let (store, start) = (s.clone(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            let mut pruned = 0;
            for cutoff in [-990, -980, -970, -960] {
                tokio::time::sleep(Duration::from_millis(20)).await;
                pruned += store.prune("race", &hours(cutoff)).await.expect("prune");
            }
            pruned
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    let pruned = pruner.await.expect("pruner");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = verifier.await.expect("verifier");
    assert!(runs > 0);
    let r = s.verify("race").await.expect("verify");
    assert!(r.ok, "{r}");
    let left = all(s, "race").await;
    let retention = left.iter().filter(|r| r.kind == "retention").count();
    // Every record written is either still there or was pruned (retention records are newer than every cutoff).
    assert_eq!(pruned, 300);
    assert_eq!(
        usize::try_from(300 + WRITERS * EACH).expect("n"),
        left.len() - retention + pruned
    );
    assert_eq!(r.last_seq, left.last().map(|r| r.seq));
}
both!(writers_verifier_and_pruner_race);

async fn edits_are_detected(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    for t in ["data", "at", "actor", "identity", "clean"] {
        seed(s, t).await;
    }
    db.sql("UPDATE audit_log SET data = '{\"op\":\"delete\",\"i\":16}' WHERE tenant = 'data' AND seq = 17");
    db.sql("UPDATE audit_log SET at = '2025-03-01T02:30:00.000Z' WHERE tenant = 'at' AND seq = 3");
    db.sql("UPDATE audit_log SET actor = 'entra' WHERE tenant = 'actor' AND seq = 40");
    db.sql("UPDATE audit_log SET identity_id = NULL WHERE tenant = 'identity' AND seq = 8");
    assert_eq!(problem(s, "data").await, Some(Problem::Edited { seq: 17 }));
    assert_eq!(problem(s, "at").await, Some(Problem::Edited { seq: 3 }));
    assert_eq!(problem(s, "actor").await, Some(Problem::Edited { seq: 40 }));
    assert_eq!(problem(s, "identity").await, Some(Problem::Edited { seq: 8 }));
    assert_eq!(problem(s, "clean").await, None);
    let r = s.verify("data").await.expect("verify");
    assert_eq!((r.checked, r.last_seq), (16, Some(16)));
    let text = r.to_string();
    assert!(text.contains("BROKEN at seq 17") && text.contains("edited"), "{text}");
    // Editing a hash to match the edit breaks the link of the next record instead.
    let recs = all(s, "clean").await;
    let r9 = &recs[8];
    let data = r#"{"op":"create","i":999}"#;
    let h = HashInput {
        tenant: "clean",
        seq: 9,
        at: &r9.at,
        kind: &r9.kind,
        actor: &r9.actor,
        identity_id: r9.identity_id.as_deref(),
        request_id: r9.request_id.as_deref(),
        data,
        prev_hash: &r9.prev_hash,
    }
    .hash();
    db.sql(&format!(
        "UPDATE audit_log SET data = '{data}', hash = '{h}' WHERE tenant = 'clean' AND seq = 9"
    ));
    assert_eq!(problem(s, "clean").await, Some(Problem::BrokenLink { seq: 10 }));
}
both!(edits_are_detected);

async fn deletions_are_detected(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    for t in ["mid", "first", "tail", "renumber"] {
        seed(s, t).await;
    }
    db.sql("DELETE FROM audit_log WHERE tenant = 'mid' AND seq = 25");
    db.sql("DELETE FROM audit_log WHERE tenant = 'first' AND seq = 1");
    db.sql("DELETE FROM audit_log WHERE tenant = 'tail' AND seq >= 49");
    // Delete and close the gap: later records move down one place.
    db.sql(
        "DELETE FROM audit_log WHERE tenant = 'renumber' AND seq = 25; \
         UPDATE audit_log SET seq = seq + 1000 WHERE tenant = 'renumber' AND seq > 25; \
         UPDATE audit_log SET seq = seq - 1001 WHERE tenant = 'renumber' AND seq > 1000; \
         UPDATE audit_head SET seq = 49 WHERE tenant = 'renumber'",
    );
    assert_eq!(problem(s, "mid").await, Some(Problem::Missing { from: 25, to: 25 }));
    assert_eq!(problem(s, "first").await, Some(Problem::Missing { from: 1, to: 1 }));
    assert_eq!(problem(s, "tail").await, Some(Problem::Missing { from: 49, to: 50 }));
    assert_eq!(
        problem(s, "renumber").await,
        Some(Problem::Reordered {
            seq: 25,
            original_seq: 26
        })
    );
    let r = s.verify("mid").await.expect("verify");
    assert_eq!(r.checked, 24);
    assert!(r.to_string().contains("record 25 is missing"), "{r}");
}
both!(deletions_are_detected);

async fn reordering_is_detected(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    for t in ["far", "adjacent"] {
        seed(s, t).await;
    }
    let swap = |t: &str, a: i64, b: i64| {
        format!(
            "UPDATE audit_log SET seq = -1 WHERE tenant = '{t}' AND seq = {a}; \
             UPDATE audit_log SET seq = {a} WHERE tenant = '{t}' AND seq = {b}; \
             UPDATE audit_log SET seq = {b} WHERE tenant = '{t}' AND seq = -1"
        )
    };
    db.sql(&swap("far", 10, 20));
    db.sql(&swap("adjacent", 30, 31));
    assert_eq!(
        problem(s, "far").await,
        Some(Problem::Reordered {
            seq: 10,
            original_seq: 20
        })
    );
    assert_eq!(
        problem(s, "adjacent").await,
        Some(Problem::Reordered {
            seq: 30,
            original_seq: 31
        })
    );
    let r = s.verify("far").await.expect("verify");
    assert!(r.to_string().contains("record 10 was moved"), "{r}");
}
both!(reordering_is_detected);

async fn forged_records_are_detected(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    for t in ["end", "garbage", "replace", "head"] {
        seed(s, t).await;
    }
    let data = r#"{"op":"grant","entitlement":"admin"}"#;
    let at = hours(60);
    // A correctly hashed and linked record after the last one, without moving the head.
    let last = all(s, "end").await.pop().expect("last");
    let h = forged_hash("end", 51, &at, data, &last.hash);
    db.sql(&forged_insert("end", 51, &at, data, &last.hash, &h));
    assert_eq!(problem(s, "end").await, Some(Problem::Appended { seq: 51 }));
    // A record with a made-up hash, head moved along.
    let fake = "ab".repeat(32);
    let last = all(s, "garbage").await.pop().expect("last");
    db.sql(&format!(
        "{}; UPDATE audit_head SET seq = 51, hash = '{fake}' WHERE tenant = 'garbage'",
        forged_insert("garbage", 51, &at, data, &last.hash, &fake)
    ));
    assert_eq!(problem(s, "garbage").await, Some(Problem::Edited { seq: 51 }));
    // A record replaced by a correctly hashed and linked forgery: the next record no longer links.
    let recs = all(s, "replace").await;
    let h = forged_hash("replace", 25, &recs[24].at, data, &recs[23].hash);
    db.sql(&format!(
        "DELETE FROM audit_log WHERE tenant = 'replace' AND seq = 25; {}",
        forged_insert("replace", 25, &recs[24].at, data, &recs[23].hash, &h)
    ));
    assert_eq!(problem(s, "replace").await, Some(Problem::BrokenLink { seq: 26 }));
    // The head edited.
    db.sql(&format!(
        "UPDATE audit_head SET hash = '{}' WHERE tenant = 'head'",
        "cd".repeat(32)
    ));
    assert!(
        matches!(
            problem(s, "head").await,
            Some(Problem::HeadMismatch {
                head_seq: Some(50),
                chain_seq: 50,
                ..
            })
        ),
        "head"
    );
    db.sql("DELETE FROM audit_head WHERE tenant = 'head'");
    assert!(
        matches!(
            problem(s, "head").await,
            Some(Problem::HeadMismatch {
                head_seq: None,
                chain_seq: 50,
                ..
            })
        ),
        "no head"
    );
}
both!(forged_records_are_detected);

async fn pruning_keeps_the_chain_verifiable(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    for t in ["keep", "moved", "forward", "unanchored", "dirty"] {
        seed(s, t).await;
    }
    let before = all(s, "keep").await;
    // The first 20 records are older than base+20h; the 30 concurrent ones are not.
    assert_eq!(s.prune("keep", &hours(20)).await.expect("prune"), 20);
    let r = s.verify("keep").await.expect("verify");
    assert!(r.ok, "{r}");
    assert_eq!((r.checked, r.first_seq, r.last_seq), (31, Some(21), Some(51)));
    let anchor = r.anchor.clone().expect("anchor");
    assert_eq!((anchor.seq, anchor.hash.as_str()), (20, before[19].hash.as_str()));
    let after = all(s, "keep").await;
    assert_eq!(after.first().map(|r| r.seq), Some(21));
    assert_eq!(&after[..30], &before[20..]);
    let retention = after.last().expect("retention record");
    assert_eq!(retention.kind, "retention");
    assert_eq!(retention.data["through_seq"], json!(20));
    assert_eq!(retention.data["anchor_hash"], json!(before[19].hash));
    assert_eq!(retention.data["records"], json!(20));
    // Nothing more is that old.
    assert_eq!(s.prune("keep", &hours(20)).await.expect("prune again"), 0);
    assert!(s.verify("keep").await.expect("verify").ok);
    // Appends continue the chain after a prune.
    s.append(
        "keep",
        &hours(70),
        &[entry("admin", "alice", None, None, json!({"x": 1}))],
    )
    .await
    .expect("append");
    let r = s.verify("keep").await.expect("verify");
    assert!(r.ok && r.last_seq == Some(52), "{r}");
    // Prune everything: only the new retention record remains, and it confirms the anchor.
    assert_eq!(
        s.prune("keep", "9999-01-01T00:00:00.000Z").await.expect("prune all"),
        32
    );
    let r = s.verify("keep").await.expect("verify");
    assert!(r.ok, "{r}");
    assert_eq!(
        (r.checked, r.first_seq, r.anchor.map(|a| a.seq)),
        (1, Some(53), Some(52))
    );

    // The anchor moved forward over deleted records: no retention record confirms it.
    s.prune("moved", &hours(20)).await.expect("prune");
    let recs = all(s, "moved").await;
    let h25 = recs.iter().find(|r| r.seq == 25).expect("25").hash.clone();
    db.sql(&format!(
        "DELETE FROM audit_log WHERE tenant = 'moved' AND seq <= 25; \
         UPDATE audit_anchor SET seq = 25, hash = '{h25}' WHERE tenant = 'moved'"
    ));
    assert_eq!(
        problem(s, "moved").await,
        Some(Problem::AnchorUnconfirmed { anchor_seq: 25 })
    );
    // The anchor moved forward alone: records lie before it.
    s.prune("forward", &hours(20)).await.expect("prune");
    db.sql("UPDATE audit_anchor SET seq = 25 WHERE tenant = 'forward'");
    assert_eq!(
        problem(s, "forward").await,
        Some(Problem::BeforeAnchor {
            seq: 21,
            anchor_seq: 25
        })
    );
    // The anchor deleted: the chain no longer starts at 1.
    s.prune("unanchored", &hours(20)).await.expect("prune");
    db.sql("DELETE FROM audit_anchor WHERE tenant = 'unanchored'");
    assert_eq!(
        problem(s, "unanchored").await,
        Some(Problem::Missing { from: 1, to: 20 })
    );
    // Pruning refuses to delete a tampered stretch: that would launder it.
    db.sql("UPDATE audit_log SET actor = 'nobody' WHERE tenant = 'dirty' AND seq = 5");
    let err = s.prune("dirty", &hours(20)).await.expect_err("prune must refuse");
    assert!(err.to_string().contains("seq 5"), "{err}");
    assert_eq!(all(s, "dirty").await.len(), 50);
    assert_eq!(problem(s, "dirty").await, Some(Problem::Edited { seq: 5 }));
}
both!(pruning_keeps_the_chain_verifiable);

fn lines(buf: &[u8]) -> Vec<AuditRecord> {
    std::str::from_utf8(buf)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per record"))
        .collect()
}

async fn export_filters(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    seed(s, "acme").await;
    seed(s, "globex").await;
    let acme = all(s, "acme").await;
    let globex = all(s, "globex").await;
    let export = |tenant: Option<&'static str>,
                  from: Option<&'static str>,
                  to: Option<&'static str>,
                  identity: Option<&'static str>| {
        let store = s.clone();
        async move {
            let mut out = Vec::new();
            let n = audit_cli::export(&store, tenant, from, to, identity, &mut out)
                .await
                .expect("export");
            let recs = lines(&out);
            assert_eq!(usize::try_from(n).ok(), Some(recs.len()));
            recs
        }
    };
    // Time range: from inclusive, to exclusive; seq i+1 is at base+i h.
    let got = export(
        Some("acme"),
        Some("2025-03-01T05:00:00Z"),
        Some("2025-03-01T12:00:00Z"),
        None,
    )
    .await;
    assert_eq!(got, acme[5..12].to_vec());
    // The same instants with an offset.
    let got = export(
        Some("acme"),
        Some("2025-03-01T07:00:00+02:00"),
        Some("2025-03-01T14:00:00+02:00"),
        None,
    )
    .await;
    assert_eq!(got, acme[5..12].to_vec());
    // By identity.
    let want: Vec<AuditRecord> = acme
        .iter()
        .filter(|r| r.identity_id.as_deref() == Some("u1"))
        .cloned()
        .collect();
    assert!(want.len() > 5);
    assert_eq!(export(Some("acme"), None, None, Some("u1")).await, want);
    // Both, over the concurrently written records (time order is not seq order there).
    let (from, to) = (hours(22), hours(41));
    let want: Vec<AuditRecord> = acme
        .iter()
        .filter(|r| r.identity_id.as_deref() == Some("u2") && r.at >= from && r.at < to)
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        export(
            Some("acme"),
            Some("2025-03-01T22:00:00Z"),
            Some("2025-03-02T17:00:00Z"),
            Some("u2")
        )
        .await,
        want
    );
    // Every tenant, one after the other.
    let want: Vec<AuditRecord> = acme
        .iter()
        .chain(&globex)
        .filter(|r| r.identity_id.as_deref() == Some("u3"))
        .cloned()
        .collect();
    assert_eq!(export(None, None, None, Some("u3")).await, want);
    assert_eq!(export(None, None, None, None).await.len(), 100);
    assert!(export(Some("acme"), None, None, Some("nobody")).await.is_empty());
    // Paging at the store: the same records in pages.
    let filter = AuditFilter {
        from: Some(hours(10)),
        to: None,
        identity: None,
    };
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.audit_export("acme", &filter, after, 7).await.expect("page");
        paged.extend(page.iter().cloned());
        match page.last() {
            Some(r) if page.len() == 7 => after = r.seq,
            _ => break,
        }
    }
    let want: Vec<AuditRecord> = acme.iter().filter(|r| r.at >= hours(10)).cloned().collect();
    assert_eq!(paged, want);
    // Bad input.
    let mut out = Vec::new();
    let err = audit_cli::export(s, None, Some("yesterday"), None, None, &mut out).await;
    assert!(
        matches!(err, Err(audit_cli::AuditCliError::BadTime { flag: "from", .. })),
        "{err:?}"
    );
    let err = audit_cli::export(
        s,
        None,
        Some("2025-03-02T00:00:00Z"),
        Some("2025-03-01T00:00:00Z"),
        None,
        &mut out,
    )
    .await;
    assert!(
        matches!(err, Err(audit_cli::AuditCliError::EmptyRange { .. })),
        "{err:?}"
    );
    assert!(out.is_empty());
}
both!(export_filters);

async fn cli_verify_and_prune(kind: Kind) {
    let db = Db::new(kind).await;
    let s = &db.store;
    seed(s, "acme").await;
    seed(s, "globex").await;
    let outcome = audit_cli::verify(s, None).await.expect("verify");
    assert!(outcome.ok, "{outcome}");
    assert_eq!(outcome.tenants.len(), 2);
    assert!(
        outcome.to_string().ends_with("audit trail intact (2 tenants)"),
        "{outcome}"
    );
    db.sql("UPDATE audit_log SET data = '{}' WHERE tenant = 'globex' AND seq = 3");
    let outcome = audit_cli::verify(s, None).await.expect("verify");
    assert!(!outcome.ok);
    let text = outcome.to_string();
    assert!(text.contains("tenant acme: ok, 50 records (seq 1..50)"), "{text}");
    assert!(
        text.contains("tenant globex: BROKEN at seq 3: record 3 was edited"),
        "{text}"
    );
    assert!(text.ends_with("audit trail BROKEN for tenant(s): globex"), "{text}");
    let v = serde_json::to_value(&outcome).expect("json");
    assert_eq!(v["ok"], json!(false));
    assert_eq!(v["tenants"][1]["problem"], json!({"problem": "edited", "seq": 3}));
    let only = audit_cli::verify(s, Some("acme")).await.expect("verify acme");
    assert!(only.ok && only.tenants.len() == 1);
    // Retention as of base+20h+3d with 3 days: everything before base+20h goes.
    let now = base() + TimeDelta::hours(20) + TimeDelta::days(3);
    let pruned = audit_cli::prune_before(s, Some("acme"), now, 3).await.expect("prune");
    assert_eq!(pruned.cutoff, hours(20));
    assert_eq!(pruned.tenants, vec![("acme".to_string(), 20)]);
    assert!(
        pruned.to_string().contains("tenant acme: pruned 20 records"),
        "{pruned}"
    );
    assert!(audit_cli::verify(s, Some("acme")).await.expect("verify").ok);
    // The broken tenant is not pruned: the whole run fails and names it.
    let err = audit_cli::prune_before(s, None, now, 3).await.expect_err("refuse");
    assert!(err.to_string().contains("globex"), "{err}");
    assert!(matches!(
        audit_cli::prune(s, None, 0).await,
        Err(audit_cli::AuditCliError::BadRetention(0))
    ));
}
both!(cli_verify_and_prune);

/// The grants documented in `scimgate_store::audit`: the serving role appends and verifies but cannot change or
/// delete a record; the retention role prunes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn privileges_keep_records_append_only() {
    let mut db = Db::new(Kind::Postgres).await;
    seed(&db.store, "acme").await;
    let name = db.pg_name.clone().expect("pg");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let gateway = format!("scimgate_gw_{}", &suffix[..12]);
    let retention = format!("scimgate_ret_{}", &suffix[..12]);
    db.roles = vec![gateway.clone(), retention.clone()];
    let admin = format!("{}/postgres", pg_admin_url());
    for r in [&gateway, &retention] {
        psql(&admin, &format!("CREATE ROLE {r} LOGIN PASSWORD 'pw-{suffix}'")).expect("create role");
    }
    db.sql(&format!(
        "GRANT USAGE, CREATE ON SCHEMA public TO {gateway}; \
         GRANT SELECT ON _sqlx_migrations TO {gateway}; \
         REVOKE ALL ON audit_log, audit_head, audit_anchor FROM {gateway}; \
         GRANT SELECT, INSERT ON audit_log TO {gateway}; \
         GRANT SELECT, INSERT, UPDATE ON audit_head TO {gateway}; \
         GRANT SELECT ON audit_anchor TO {gateway}; \
         GRANT USAGE, CREATE ON SCHEMA public TO {retention}; \
         GRANT SELECT ON _sqlx_migrations TO {retention}; \
         GRANT SELECT, INSERT, DELETE ON audit_log TO {retention}; \
         GRANT SELECT, INSERT, UPDATE ON audit_head, audit_anchor TO {retention}"
    ));
    let host = pg_admin_url()
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or_else(|| pg_admin_url().trim_start_matches("postgres://").to_string());
    let url = |role: &str| format!("postgres://{role}:pw-{suffix}@{host}/{name}");

    let gw = connect(&url(&gateway))
        .await
        .expect("the gateway role connects (migrations already applied)");
    gw.append(
        "acme",
        &hours(80),
        &[entry("admin", "alice", None, None, json!({"n": 1}))],
    )
    .await
    .expect("the gateway role appends");
    let r = gw.verify("acme").await.expect("the gateway role verifies");
    assert!(r.ok && r.last_seq == Some(51), "{r}");
    let err = gw
        .prune("acme", &hours(20))
        .await
        .expect_err("the gateway role cannot prune");
    assert!(format!("{err:?}").contains("permission denied"), "{err:?}");
    for tamper in [
        "UPDATE audit_log SET data = '{}' WHERE tenant = 'acme' AND seq = 3",
        "DELETE FROM audit_log WHERE tenant = 'acme' AND seq = 3",
        "UPDATE audit_anchor SET seq = 0",
        "TRUNCATE audit_log",
    ] {
        let err = psql(&url(&gateway), tamper).expect_err(tamper);
        assert!(err.contains("permission denied"), "{tamper}: {err}");
    }

    let ret = connect(&url(&retention)).await.expect("the retention role connects");
    assert_eq!(
        ret.prune("acme", &hours(20)).await.expect("the retention role prunes"),
        20
    );
    let err = psql(
        &url(&retention),
        "UPDATE audit_log SET data = '{}' WHERE tenant = 'acme' AND seq = 30",
    )
    .expect_err("retention cannot edit");
    assert!(err.contains("permission denied"), "{err}");
    let r = gw.verify("acme").await.expect("verify");
    assert!(r.ok && r.anchor.as_ref().map(|a| a.seq) == Some(20), "{r}");
}
