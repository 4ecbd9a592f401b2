//! The worker machinery against the real SQLite store, with an in-process adapter that records what it is asked
//! and fails on demand (the real adapters run against their real servers in their own crates and in tests/).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde_json::json;
use tokio::sync::Notify;

use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, ErrorKind, SearchPage, SearchQuery,
};
use scimgate_store::sql::StoreOptions;
use scimgate_store::{Backend, Effects, OutboxNew, SqlStore, StateWrite};

use super::alert::Alerter;
use super::seal::Sealer;
use super::{Outbox, Payload, TargetSpec};
use crate::config::OutboxConfig;

/// (identity, operation, enabled, password) of one call.
type Call = (String, String, bool, Option<String>);
/// (global order, identity, enabled, node) of one delivery.
type Seen = Arc<Mutex<Vec<(u64, String, bool, &'static str)>>>;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    fail: Mutex<VecDeque<AdapterError>>,
    down: AtomicBool,
}

#[async_trait]
impl Adapter for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn health(&self) -> Result<(), AdapterError> {
        if self.down.load(Ordering::SeqCst) {
            Err(AdapterError::unavailable("down"))
        } else {
            Ok(())
        }
    }
    async fn apply(&self, _: Option<&AccountId>, d: &DesiredAccount) -> Result<AccountId, AdapterError> {
        self.call("apply", d)?;
        Ok(AccountId::new(format!("acct-{}", d.identity_id)))
    }
    async fn remove(&self, _: Option<&AccountId>, d: &DesiredAccount) -> Result<(), AdapterError> {
        self.call("remove", d)
    }
    async fn get(&self, _: Option<&AccountId>, _: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        Ok(None)
    }
    async fn search(&self, _: &SearchQuery) -> Result<SearchPage, AdapterError> {
        Ok(SearchPage::default())
    }
}

impl Recorder {
    fn call(&self, op: &str, d: &DesiredAccount) -> Result<(), AdapterError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AdapterError::unavailable("connection refused"));
        }
        if let Some(e) = self.fail.lock().expect("lock").pop_front() {
            return Err(e);
        }
        self.calls.lock().expect("lock").push((
            d.identity_id.clone(),
            op.to_string(),
            d.enabled,
            d.password.as_ref().map(|p| p.expose().to_string()),
        ));
        Ok(())
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }
}

struct Rig {
    store: Arc<dyn Backend>,
    outbox: Arc<Outbox>,
    rec: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode([9u8; 32])
}

async fn rig(concurrency: usize, cfg: OutboxConfig) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let store: Arc<dyn Backend> = Arc::new(
        SqlStore::connect(&StoreOptions {
            url,
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .expect("store"),
    );
    let rec = Arc::new(Recorder::default());
    let outbox = Outbox::new(
        store.clone(),
        vec![TargetSpec {
            id: "t1".into(),
            adapter: rec.clone(),
            concurrency,
            max_attempts: None,
            snapshots: None,
        }],
        &cfg,
        Arc::new(Notify::new()),
        Some(Sealer::from_base64(&key()).expect("key")),
        Alerter::none(),
    );
    Rig {
        store,
        outbox,
        rec,
        _dir: dir,
    }
}

fn fast() -> OutboxConfig {
    OutboxConfig {
        backoff_base_ms: 20,
        backoff_max_ms: 40,
        breaker_failures: 3,
        breaker_cooldown_ms: 100,
        max_attempts: 3,
        ..OutboxConfig::default()
    }
}

/// Queue one decision for `identity` (state version `version`) with one row per (operation, priority, enabled).
async fn enqueue(
    r: &Rig,
    identity: &str,
    version: i64,
    rows: &[(&str, i64, bool)],
    secret: Option<&str>,
) -> Vec<String> {
    let sealer = Sealer::from_base64(&key()).expect("key");
    let mut ids = vec![];
    let outbox = rows
        .iter()
        .enumerate()
        .map(|(n, (op, prio, enabled))| {
            let id = uuid::Uuid::now_v7().to_string();
            ids.push(id.clone());
            let payload = Payload {
                cause: "test".into(),
                items: vec![],
                desired: DesiredAccount {
                    identity_id: identity.into(),
                    user: json!({"userName": identity}).as_object().cloned().unwrap_or_default(),
                    enabled: *enabled,
                    ..Default::default()
                },
            };
            OutboxNew {
                secret: secret.map(|s| sealer.seal("t", &id, s)),
                id,
                target: "t1".into(),
                item_no: n as i64,
                plan_id: None,
                operation: op.to_string(),
                priority: *prio,
                payload: serde_json::to_string(&payload).expect("json"),
            }
        })
        .collect();
    let e = Effects {
        identity_id: identity.into(),
        state: Some(StateWrite {
            expect_version: (version > 1).then_some(version - 1),
            leaver_since: None,
            current: "{}".into(),
            evaluation: "{}".into(),
            policy_hash: "h".into(),
            wakeup_at: None,
        }),
        outbox,
        ..Default::default()
    };
    r.store.apply_effects("t", &[e]).await.expect("effects");
    ids
}

async fn status(r: &Rig, id: &str) -> (String, i64, bool) {
    let row = r.store.outbox_get("t", id).await.expect("get").expect("row");
    (row.status, row.attempts, row.secret.is_some())
}

/// Run rounds until `done` holds or 5 s pass.
async fn drive(r: &Rig, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..250 {
        r.outbox.round().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if done().await {
            return;
        }
    }
    panic!("the outbox did not settle");
}

#[tokio::test]
async fn order_per_identity_and_leavers_first() {
    let r = rig(1, fast()).await;
    enqueue(&r, "a", 1, &[("apply", 0, true)], None).await;
    enqueue(&r, "a", 2, &[("apply", 0, false), ("remove", 0, false)], None).await;
    enqueue(&r, "b", 1, &[("apply", 0, true)], None).await;
    // A leaver's lock queued last is delivered first.
    let lock = enqueue(&r, "c", 1, &[("apply", 1, false)], None).await;
    drive(&r, async || r.rec.calls().len() == 5).await;
    let calls = r.rec.calls();
    assert_eq!(calls[0].0, "c", "the lock goes first: {calls:?}");
    let a: Vec<_> = calls
        .iter()
        .filter(|c| c.0 == "a")
        .map(|c| (c.1.as_str(), c.2))
        .collect();
    assert_eq!(
        a,
        vec![("apply", true), ("apply", false), ("remove", false)],
        "per-identity order"
    );
    assert_eq!(status(&r, &lock[0]).await.0, "done");
    let acct = r.store.target_account("t", "b", "t1").await.expect("account");
    assert_eq!(acct.as_deref(), Some(r#"{"primary":"acct-b"}"#));
    assert_eq!(
        r.store.target_account("t", "a", "t1").await.expect("account"),
        None,
        "removed"
    );
    // Every delivery is in the audit chain.
    let audit = r.store.audit_page("t", 0, 100).await.expect("audit");
    assert_eq!(audit.iter().filter(|a| a.kind == "delivery").count(), 5);
}

#[tokio::test]
async fn retries_then_dead_letters_then_replay() {
    let r = rig(2, fast()).await;
    r.rec
        .fail
        .lock()
        .expect("lock")
        .push_back(AdapterError::new(ErrorKind::Other, "blip"));
    let ok = enqueue(&r, "a", 1, &[("apply", 0, true)], None).await;
    drive(&r, async || status(&r, &ok[0]).await.0 == "done").await;
    assert_eq!(status(&r, &ok[0]).await.1, 2, "one failure, one success");

    r.rec
        .fail
        .lock()
        .expect("lock")
        .push_back(AdapterError::rejected("schema violation"));
    let bad = enqueue(&r, "b", 1, &[("apply", 0, true)], Some("S3cret!")).await;
    drive(&r, async || status(&r, &bad[0]).await.0 == "dead").await;
    let (_, attempts, has_secret) = status(&r, &bad[0]).await;
    assert_eq!(attempts, 1, "not retriable: dead at once");
    assert!(has_secret, "a dead letter keeps its sealed secret for the replay");
    let row = r.store.outbox_get("t", &bad[0]).await.expect("get").expect("row");
    assert!(row.last_error.as_deref().unwrap_or("").contains("schema violation"));

    assert!(
        super::ops::replay(r.store.as_ref(), "t", &bad[0], "admin:ops")
            .await
            .expect("replay")
    );
    assert!(
        !super::ops::replay(r.store.as_ref(), "t", &bad[0], "admin:ops")
            .await
            .expect("replay"),
        "not dead now"
    );
    drive(&r, async || status(&r, &bad[0]).await.0 == "done").await;
    assert!(!status(&r, &bad[0]).await.2, "the secret is gone once delivered");
    let b: Vec<_> = r.rec.calls().into_iter().filter(|c| c.0 == "b").collect();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].3.as_deref(), Some("S3cret!"), "the password reached the adapter");
    let audit = r.store.audit_page("t", 0, 100).await.expect("audit");
    assert!(audit.iter().any(|a| a.kind == "dead_letter"));
    assert!(
        audit
            .iter()
            .any(|a| a.kind == "dead_letter_replayed" && a.actor == "admin:ops")
    );

    // Retriable errors run out of attempts.
    for _ in 0..3 {
        r.rec
            .fail
            .lock()
            .expect("lock")
            .push_back(AdapterError::new(ErrorKind::Other, "again"));
    }
    let tired = enqueue(&r, "c", 1, &[("apply", 0, true)], None).await;
    drive(&r, async || status(&r, &tired[0]).await.0 == "dead").await;
    assert_eq!(status(&r, &tired[0]).await.1, 3);
}

#[tokio::test]
async fn an_open_circuit_spends_no_attempts_and_the_backlog_drains() {
    // Enough attempts that no row dies: on a slow machine the oldest row can be due again before the next claim
    // and take every failure itself.
    let r = rig(
        1,
        OutboxConfig {
            max_attempts: 10,
            ..fast()
        },
    )
    .await;
    r.rec.down.store(true, Ordering::SeqCst);
    let mut ids = vec![];
    for i in 0..6 {
        ids.extend(enqueue(&r, &format!("u{i}"), 1, &[("apply", 0, true)], None).await);
    }
    // Three failures open the circuit.
    let t = r.outbox.targets().next().expect("target").clone();
    for _ in 0..500 {
        r.outbox.round().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if !t.is_up() {
            break;
        }
    }
    assert!(!t.is_up(), "the circuit opened");
    let spent = async || {
        let mut n = 0;
        for id in &ids {
            n += status(&r, id).await.1;
        }
        n
    };
    // The claim of the third failure may still be in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let at_open = spent().await;
    assert!(at_open <= 4, "attempts spent before the circuit opened: {at_open}");
    // While it stays open (health checks keep failing), rounds claim nothing.
    for _ in 0..30 {
        r.outbox.round().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!t.is_up());
    assert_eq!(spent().await, at_open, "an open circuit spends no attempts");
    r.rec.down.store(false, Ordering::SeqCst);
    drive(&r, async || {
        let mut all = true;
        for id in &ids {
            all &= status(&r, id).await.0 == "done";
        }
        all
    })
    .await;
    assert!(t.is_up());
    assert_eq!(r.rec.calls().len(), 6, "each delivered once");
}

#[tokio::test]
async fn a_replayed_old_row_does_not_go_back_in_time() {
    let r = rig(1, fast()).await;
    r.rec
        .fail
        .lock()
        .expect("lock")
        .push_back(AdapterError::rejected("nope"));
    let old = enqueue(&r, "a", 1, &[("apply", 0, true)], None).await;
    drive(&r, async || status(&r, &old[0]).await.0 == "dead").await;
    let new = enqueue(&r, "a", 2, &[("apply", 0, false)], None).await;
    drive(&r, async || status(&r, &new[0]).await.0 == "done").await;
    assert!(
        super::ops::replay(r.store.as_ref(), "t", &old[0], "cli:ops")
            .await
            .expect("replay")
    );
    drive(&r, async || status(&r, &old[0]).await.0 == "superseded").await;
    assert_eq!(r.rec.calls().len(), 1, "only the newer state was applied");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let r = rig(1, fast()).await;
    let ids = enqueue(&r, "a", 1, &[("apply", 0, true)], None).await;
    // A worker that died holding the row: its lease ran out a second ago.
    let past = scimgate_scim::resource::format_datetime(chrono::Utc::now() - chrono::Duration::seconds(1));
    let now = scimgate_scim::resource::format_datetime(chrono::Utc::now());
    let claimed = r.store.claim("t1", "dead-node", &now, &past, 1).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    drive(&r, async || status(&r, &ids[0]).await.0 == "done").await;
    assert_eq!(
        status(&r, &ids[0]).await.1,
        2,
        "the takeover counts as a second attempt"
    );
}

/// Two gateway processes on one PostgreSQL queue: `FOR UPDATE SKIP LOCKED` hands each row to one of them, and
/// per-identity order holds across both.
#[tokio::test]
async fn two_nodes_share_a_postgres_queue() {
    let db = scimgate_testkit::db::TempDb::postgres("scimgate_outbox");
    let store = |url: String| async move {
        let s: Arc<dyn Backend> = Arc::new(
            SqlStore::connect(&StoreOptions {
                url,
                max_connections: 6,
                acquire_timeout: Duration::from_secs(5),
            })
            .await
            .expect("store"),
        );
        s
    };
    let s1 = store(db.url.clone()).await;
    let s2 = store(db.url.clone()).await;
    let order = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    struct Node {
        name: &'static str,
        order: Arc<std::sync::atomic::AtomicU64>,
        seen: Seen,
    }
    #[async_trait]
    impl Adapter for Node {
        fn kind(&self) -> &'static str {
            "node"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn health(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn apply(&self, _: Option<&AccountId>, d: &DesiredAccount) -> Result<AccountId, AdapterError> {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let n = self.order.fetch_add(1, Ordering::SeqCst);
            self.seen
                .lock()
                .expect("lock")
                .push((n, d.identity_id.clone(), d.enabled, self.name));
            Ok(AccountId::new(d.identity_id.clone()))
        }
        async fn remove(&self, _: Option<&AccountId>, _: &DesiredAccount) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn get(&self, _: Option<&AccountId>, _: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
            Ok(None)
        }
        async fn search(&self, _: &SearchQuery) -> Result<SearchPage, AdapterError> {
            Ok(SearchPage::default())
        }
    }
    let node = |store: Arc<dyn Backend>, name: &'static str| {
        Outbox::new(
            store,
            vec![TargetSpec {
                id: "t1".into(),
                adapter: Arc::new(Node {
                    name,
                    order: order.clone(),
                    seen: seen.clone(),
                }),
                concurrency: 4,
                max_attempts: None,
                snapshots: None,
            }],
            &fast(),
            Arc::new(Notify::new()),
            None,
            Alerter::none(),
        )
    };
    let (n1, n2) = (node(s1.clone(), "n1"), node(s2.clone(), "n2"));
    let r = Rig {
        store: s1.clone(),
        outbox: n1.clone(),
        rec: Arc::new(Recorder::default()),
        _dir: tempfile::tempdir().expect("tempdir"),
    };
    // 40 identities, each enabled then disabled then enabled again: 120 rows.
    for i in 0..40 {
        let id = format!("u{i:02}");
        for (v, enabled) in [(1, true), (2, false), (3, true)] {
            enqueue(&r, &id, v, &[("apply", 0, enabled)], None).await;
        }
    }
    for _ in 0..500 {
        tokio::join!(n1.round(), n2.round());
        tokio::time::sleep(Duration::from_millis(10)).await;
        if seen.lock().expect("lock").len() >= 120 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 120, "every row delivered exactly once");
    for n in ["n1", "n2"] {
        assert!(seen.iter().any(|s| s.3 == n), "node {n} took part");
    }
    for i in 0..40 {
        let id = format!("u{i:02}");
        let mine: Vec<bool> = seen.iter().filter(|s| s.1 == id).map(|s| s.2).collect();
        assert_eq!(mine, vec![true, false, true], "order for {id}");
    }
    let owners: std::collections::BTreeSet<String> = {
        let rows = s1
            .outbox_list(
                "t",
                &scimgate_store::OutboxFilter {
                    status: Some("done".into()),
                    limit: 1000,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(rows.len(), 120);
        rows.iter().map(|r| r.attempts.to_string()).collect()
    };
    assert_eq!(
        owners,
        ["1".to_string()].into_iter().collect(),
        "no row needed a second attempt"
    );
}
