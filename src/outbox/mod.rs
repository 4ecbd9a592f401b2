//! Provisioning: the outbox workers that carry plans to the targets.
//!
//! The engine writes one outbox row per (decision, target) in the same transaction as the identity change
//! (`Effects.outbox`, see `src/engine`), so a 2xx to the IdP means the work is durable. Here, one dispatcher per
//! process:
//! - claims ready rows per target with a lease (`OutboxStore::claim`: order per identity and target is kept, and
//!   leavers' locks are claimed first), never more than the target's free concurrency permits;
//! - runs each through the target's adapter with a timeout, and records the outcome, the account id and an audit
//!   record in one transaction (`OutboxStore::finish`);
//! - retries retriable errors with capped exponential backoff and full jitter, and moves a row to the dead-letter
//!   state after the configured attempts or on an error retrying cannot fix;
//! - keeps a circuit breaker per target: while it is open nothing is claimed for the target (no attempt is
//!   spent), and a health check after the cooldown closes it;
//! - fires the alert webhook when a target goes down or comes back and when dead letters appear, and keeps the
//!   outbox gauges current.
//!
//! Every adapter call is idempotent (the SDK's contract), so a retry after a crash, a lost lease, or an operator's
//! replay never creates a second account.

pub mod alert;
pub mod breaker;
pub mod ops;
pub mod seal;
pub mod targets;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use scimgate_adapter_sdk::{AccountId, Adapter, AdapterError, DesiredAccount, ErrorKind, Secret};
use scimgate_policy::Action;
use scimgate_scim::resource::format_datetime;
use scimgate_store::{AuditEntry, Backend, OutboxEntry, Outcome};

use crate::config::OutboxConfig;
use crate::metrics::METRICS;
use alert::{Alert, Alerter};
use breaker::{Breaker, Transition, backoff};
use seal::Sealer;

/// What an outbox row carries (its `payload` column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// What caused the decision (create, update, delete, membership, timer, approval, …).
    pub cause: String,
    /// The accepted plan items for this target, in plan order. Empty: an attribute refresh.
    pub items: Vec<PayloadItem>,
    /// The account state the items lead to.
    pub desired: DesiredAccount,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadItem {
    pub action: Action,
    /// The policy's entitlement id, for a grant or revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlement: Option<String>,
    /// Its target-side value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A configured target: its adapter and the worker state around it.
pub struct Target {
    pub id: String,
    pub adapter: Arc<dyn Adapter>,
    permits: Arc<Semaphore>,
    max_attempts: u32,
    breaker: Mutex<Breaker>,
    probing: AtomicBool,
}

impl Target {
    pub fn is_up(&self) -> bool {
        !self.breaker.lock().map(|b| b.is_open()).unwrap_or(false)
    }
}

/// The adapters of a process, by target id, with their concurrency and attempt limits.
pub struct TargetSpec {
    pub id: String,
    pub adapter: Arc<dyn Adapter>,
    pub concurrency: usize,
    pub max_attempts: Option<u32>,
    /// A flat-file target in snapshot mode: written whole on its schedule.
    pub snapshots: Option<Arc<scimgate_adapter_file::FileAdapter>>,
}

pub struct Outbox {
    store: Arc<dyn Backend>,
    targets: BTreeMap<String, Arc<Target>>,
    cfg: OutboxConfig,
    /// This process's lease owner name.
    owner: String,
    wake: Arc<Notify>,
    sealer: Option<Sealer>,
    alerter: Alerter,
    snapshots: Vec<(String, Arc<scimgate_adapter_file::FileAdapter>)>,
    /// When expired leases were last reclaimed (ms since the epoch).
    last_reclaim: std::sync::atomic::AtomicI64,
}

fn now_ts() -> String {
    format_datetime(Utc::now())
}

fn later(d: Duration) -> String {
    format_datetime(Utc::now() + chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::seconds(1)))
}

impl Outbox {
    pub fn new(
        store: Arc<dyn Backend>,
        specs: Vec<TargetSpec>,
        cfg: &OutboxConfig,
        wake: Arc<Notify>,
        sealer: Option<Sealer>,
        alerter: Alerter,
    ) -> Arc<Outbox> {
        let snapshots = specs
            .iter()
            .filter_map(|s| s.snapshots.clone().map(|f| (s.id.clone(), f)))
            .collect();
        let targets = specs
            .into_iter()
            .map(|s| {
                METRICS.target_up.with_label_values(&[&s.id]).set(1);
                (
                    s.id.clone(),
                    Arc::new(Target {
                        id: s.id,
                        adapter: s.adapter,
                        permits: Arc::new(Semaphore::new(s.concurrency.max(1))),
                        max_attempts: s.max_attempts.unwrap_or(cfg.max_attempts).max(1),
                        breaker: Mutex::new(Breaker::new(
                            cfg.breaker_failures,
                            Duration::from_millis(cfg.breaker_cooldown_ms),
                        )),
                        probing: AtomicBool::new(false),
                    }),
                )
            })
            .collect();
        Arc::new(Outbox {
            store,
            targets,
            cfg: cfg.clone(),
            owner: format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()),
            wake,
            sealer,
            alerter,
            snapshots,
            last_reclaim: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Write each snapshot-mode file target's full file on its schedule, for as long as the process runs.
    fn spawn_snapshots(&self) {
        for (id, f) in &self.snapshots {
            let Some(every) = f.schedule() else { continue };
            let (id, f) = (id.clone(), f.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match f.write_snapshot().await {
                        Ok(name) => tracing::info!(target_id = %id, file = %name, "snapshot delivered"),
                        Err(e) => {
                            tracing::error!(target_id = %id, error = %e, "snapshot failed; next one at the next tick")
                        }
                    }
                }
            });
        }
    }

    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Run the dispatcher until the process ends.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_snapshots();
        tokio::spawn(async move {
            let poll = Duration::from_millis(self.cfg.poll_ms.max(10));
            let mut last_gauges = Instant::now() - Duration::from_secs(60);
            loop {
                self.round().await;
                if last_gauges.elapsed() >= Duration::from_secs(5) {
                    self.gauges().await;
                    self.sweep_unknown_targets().await;
                    last_gauges = Instant::now();
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        })
    }

    /// One pass over the targets: claim what each has room for and start it. At most once a second, rows whose
    /// lease ran out (a worker that died, here or on another node) go back to pending first.
    pub async fn round(self: &Arc<Self>) {
        let now_ms = Utc::now().timestamp_millis();
        let last = self.last_reclaim.load(Ordering::Relaxed);
        if now_ms - last >= 1000
            && self
                .last_reclaim
                .compare_exchange(last, now_ms, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            match self.store.reclaim_expired(&now_ts()).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(rows = n, "outbox leases ran out; the rows are queued again"),
                Err(e) => tracing::warn!(error = %e, "reclaiming expired outbox leases failed"),
            }
        }
        for t in self.targets.values() {
            let open = t
                .breaker
                .lock()
                .ok()
                .map(|b| (b.is_open(), b.probe_due(Instant::now())));
            match open {
                Some((true, due)) => {
                    if due && !t.probing.swap(true, Ordering::SeqCst) {
                        tokio::spawn(self.clone().probe(t.clone()));
                    }
                    continue;
                }
                Some((false, _)) => {}
                None => continue,
            }
            let free = t.permits.available_permits();
            if free == 0 {
                continue;
            }
            let lease_until = later(Duration::from_secs(self.cfg.lease_secs));
            // One claim: leavers' locks come first in its order.
            let claimed = match self
                .store
                .claim(&t.id, &self.owner, &now_ts(), &lease_until, free)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target_id = %t.id, error = %e, "outbox claim failed");
                    continue;
                }
            };
            for e in claimed {
                let Ok(permit) = t.permits.clone().try_acquire_owned() else {
                    // Cannot happen (we claimed no more than the free permits); the lease expires and the row
                    // is claimed again.
                    tracing::warn!(target_id = %t.id, id = %e.id, "no permit for a claimed row");
                    continue;
                };
                tokio::spawn(self.clone().deliver(t.clone(), e, permit));
            }
        }
    }

    async fn probe(self: Arc<Self>, t: Arc<Target>) {
        let timeout = Duration::from_secs(self.cfg.operation_timeout_secs);
        let r = match tokio::time::timeout(timeout, t.adapter.health()).await {
            Ok(r) => r,
            Err(_) => Err(AdapterError::unavailable("health check timed out")),
        };
        let transition = match t.breaker.lock() {
            Ok(mut b) => match &r {
                Ok(()) => b.success(),
                Err(_) => b.failure(Instant::now()),
            },
            Err(_) => None,
        };
        if let Err(e) = &r {
            tracing::info!(target_id = %t.id, error = %e, "target still down");
        }
        self.transition(&t, transition, r.err().map(|e| e.to_string()));
        t.probing.store(false, Ordering::SeqCst);
        self.wake();
    }

    fn transition(&self, t: &Target, tr: Option<Transition>, error: Option<String>) {
        match tr {
            Some(Transition::Opened) => {
                METRICS.target_up.with_label_values(&[&t.id]).set(0);
                self.alerter.fire(Alert::TargetDown {
                    target: t.id.clone(),
                    error: error.unwrap_or_default(),
                });
            }
            Some(Transition::Closed) => {
                METRICS.target_up.with_label_values(&[&t.id]).set(1);
                self.alerter.fire(Alert::TargetUp { target: t.id.clone() });
            }
            None => {}
        }
    }

    /// Carry one row to its target and record the outcome.
    #[tracing::instrument(name = "outbox.deliver", skip_all, fields(target_id = %t.id, id = %e.id, attempt = e.attempts))]
    async fn deliver(self: Arc<Self>, t: Arc<Target>, e: OutboxEntry, _permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let (outcome, error_kind) = self.attempt(&t, &e).await;
        let label = match &outcome {
            Outcome::Done { .. } => "done",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead { .. } => "dead",
            Outcome::Superseded => "superseded",
        };
        METRICS.deliveries.with_label_values(&[&t.id, label]).inc();
        METRICS
            .delivery_duration
            .with_label_values(&[&t.id, label])
            .observe(started.elapsed().as_secs_f64());
        let audit = delivery_audit(&e, &outcome, error_kind);
        match self.store.finish(&e, &self.owner, &now_ts(), &outcome, &[audit]).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("lease lost before the outcome was recorded; another worker owns the row now")
            }
            Err(err) => tracing::error!(error = %err, "cannot record a delivery outcome; the row will be retried"),
        }
        match &outcome {
            Outcome::Dead { error } => {
                // Adapter messages can quote DNs or keys (personal data): the message at debug, the kind above it.
                tracing::error!(identity = %e.identity_id, error_kind = error_kind.map_or("none", ErrorKind::as_str), "outbox row is a dead letter");
                tracing::debug!(identity = %e.identity_id, error = %error, "dead letter detail");
                self.alerter.fire(Alert::dead_letter(&e, error));
            }
            Outcome::Retry { error, next_at } => {
                tracing::warn!(error_kind = error_kind.map_or("none", ErrorKind::as_str), next_at = %next_at, "delivery failed; will retry");
                tracing::debug!(error = %error, "delivery failure detail");
            }
            Outcome::Done { .. } => tracing::debug!(identity = %e.identity_id, "delivered"),
            Outcome::Superseded => tracing::debug!("superseded by a newer delivery"),
        }
        self.wake();
    }

    async fn attempt(&self, t: &Target, e: &OutboxEntry) -> (Outcome, Option<ErrorKind>) {
        match self.store.superseded(e).await {
            Ok(true) => return (Outcome::Superseded, None),
            Ok(false) => {}
            Err(err) => return (self.retry(e, format!("store: {err}"), None, t), None),
        }
        let mut payload: Payload = match serde_json::from_str(&e.payload) {
            Ok(p) => p,
            Err(err) => {
                return (
                    Outcome::Dead {
                        error: format!("unreadable payload: {err}"),
                    },
                    None,
                );
            }
        };
        if let Some(sealed) = &e.secret {
            match self.sealer.as_ref().map(|s| s.open(&e.tenant, &e.id, sealed)) {
                Some(Ok(pw)) => payload.desired.password = Some(Secret::new(pw)),
                Some(Err(err)) => return (Outcome::Dead { error: err.to_string() }, None),
                None => {
                    return (
                        Outcome::Dead {
                            error: "the row holds a sealed password but no outbox key is configured".into(),
                        },
                        None,
                    );
                }
            }
        }
        let known: Option<AccountId> = match self.store.target_account(&e.tenant, &e.identity_id, &e.target).await {
            Ok(a) => a.and_then(|a| serde_json::from_str(&a).ok()),
            Err(err) => return (self.retry(e, format!("store: {err}"), None, t), None),
        };
        let timeout = Duration::from_secs(self.cfg.operation_timeout_secs);
        let call = async {
            if e.operation == "remove" {
                t.adapter.remove(known.as_ref(), &payload.desired).await.map(|()| None)
            } else {
                t.adapter.apply(known.as_ref(), &payload.desired).await.map(Some)
            }
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(AdapterError::unavailable(format!("no answer within {timeout:?}"))),
        };
        match result {
            Ok(account) => {
                let tr = t.breaker.lock().ok().and_then(|mut b| b.success());
                self.transition(t, tr, None);
                let account = account.and_then(|a| serde_json::to_string(&a).ok());
                (Outcome::Done { account }, None)
            }
            Err(err) => {
                if matches!(err.kind, ErrorKind::Unavailable | ErrorKind::Throttled) {
                    let tr = t.breaker.lock().ok().and_then(|mut b| b.failure(Instant::now()));
                    self.transition(t, tr, Some(err.to_string()));
                }
                let kind = Some(err.kind);
                if err.retriable && (e.attempts as u64) < u64::from(t.max_attempts) {
                    (self.retry(e, err.to_string(), err.retry_after, t), kind)
                } else {
                    let why = if err.retriable {
                        format!("{err} (after {} attempts)", e.attempts)
                    } else {
                        err.to_string()
                    };
                    (Outcome::Dead { error: why }, kind)
                }
            }
        }
    }

    fn retry(&self, e: &OutboxEntry, error: String, after: Option<Duration>, t: &Target) -> Outcome {
        if (e.attempts as u64) >= u64::from(t.max_attempts) {
            return Outcome::Dead {
                error: format!("{error} (after {} attempts)", e.attempts),
            };
        }
        let wait = backoff(
            e.attempts.max(1) as u32,
            Duration::from_millis(self.cfg.backoff_base_ms),
            Duration::from_millis(self.cfg.backoff_max_ms),
            rand::random::<f64>(),
        )
        .max(after.unwrap_or_default());
        Outcome::Retry {
            next_at: later(wait),
            error,
        }
    }

    /// Rows for targets this process has no adapter for become dead letters, so an operator sees them.
    async fn sweep_unknown_targets(&self) {
        let Ok(counts) = self.store.outbox_counts().await else {
            return;
        };
        for (target, status, _) in counts {
            if status != "pending" || self.targets.contains_key(&target) {
                continue;
            }
            let now = now_ts();
            let lease = later(Duration::from_secs(self.cfg.lease_secs));
            let Ok(rows) = self.store.claim(&target, &self.owner, &now, &lease, 100).await else {
                continue;
            };
            for e in rows {
                let outcome = Outcome::Dead {
                    error: format!("no adapter is configured for target {target}"),
                };
                let audit = delivery_audit(&e, &outcome, Some(ErrorKind::Config));
                if let Err(err) = self.store.finish(&e, &self.owner, &now, &outcome, &[audit]).await {
                    tracing::warn!(error = %err, "cannot record a dead letter");
                }
                METRICS.deliveries.with_label_values(&["unconfigured", "dead"]).inc();
                self.alerter.fire(Alert::dead_letter(
                    &e,
                    &format!("no adapter is configured for target {target}"),
                ));
            }
        }
    }

    /// Refresh the outbox gauges from the database (they count every process's rows).
    pub async fn gauges(&self) {
        if let Ok(counts) = self.store.outbox_counts().await {
            METRICS.outbox_entries.reset();
            for t in self.targets.keys() {
                for s in ["pending", "running", "dead"] {
                    METRICS.outbox_entries.with_label_values(&[t, s]).set(0);
                }
            }
            for (target, status, n) in counts {
                let target = if self.targets.contains_key(&target) {
                    target.as_str()
                } else {
                    "unconfigured"
                };
                METRICS.outbox_entries.with_label_values(&[target, &status]).add(n);
            }
        }
        if let Ok(oldest) = self.store.outbox_oldest().await {
            for t in self.targets.keys() {
                let age = oldest
                    .iter()
                    .find(|(x, _)| x == t)
                    .and_then(|(_, ts)| scimgate_scim::resource::parse_datetime(ts))
                    .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                METRICS.outbox_oldest.with_label_values(&[t]).set(age);
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "scimgate".into())
}

/// The audit record of one delivery attempt.
fn delivery_audit(e: &OutboxEntry, outcome: &Outcome, error_kind: Option<ErrorKind>) -> AuditEntry {
    let items = serde_json::from_str::<Payload>(&e.payload)
        .map(|p| json!({"cause": p.cause, "items": p.items, "enabled": p.desired.enabled}))
        .unwrap_or(serde_json::Value::Null);
    let (kind, result) = match outcome {
        Outcome::Done { account } => (
            "delivery",
            json!({"outcome": "done", "account": account.as_deref().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())}),
        ),
        Outcome::Retry { next_at, error } => (
            "delivery_failed",
            json!({"outcome": "retry", "next_at": next_at, "error": error, "error_kind": error_kind.map(ErrorKind::as_str)}),
        ),
        Outcome::Dead { error } => (
            "dead_letter",
            json!({"outcome": "dead", "error": error, "error_kind": error_kind.map(ErrorKind::as_str)}),
        ),
        Outcome::Superseded => ("delivery", json!({"outcome": "superseded"})),
    };
    AuditEntry {
        kind: kind.into(),
        actor: "outbox".into(),
        identity_id: Some(e.identity_id.clone()),
        request_id: None,
        data: json!({
            "outbox_id": e.id,
            "target": e.target,
            "operation": e.operation,
            "attempt": e.attempts,
            "plan": e.plan_id,
            "work": items,
            "result": result,
        }),
    }
}

#[cfg(test)]
mod tests;
