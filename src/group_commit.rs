//! Group commit: concurrent user creates (`POST /Users`) and replacements (`PUT`, `PATCH` of users and groups)
//! share durable transactions.
//!
//! Each write is prepared by its own request (schema, policy decision, outbox rows, audit record) and handed to
//! a committer lane with a reply channel. A lane takes every write that queued while its previous commit was in
//! flight (up to [`MAX_GROUP`]) and commits them per tenant: the creates with
//! [`Store::create_many`](scimgate_store::Store::create_many), the replacements with
//! [`Store::replace_many`](scimgate_store::Store::replace_many); one transaction and one fsync each. Nothing is
//! acknowledged before its transaction commits, so an acknowledged write is as durable as one committed alone.
//! With a single request in flight a group is that one write: no write waits for company.
//!
//! `create_many` is all or nothing; `replace_many` gives each replacement its own outcome (a savepoint each, when
//! one fails). A create in a group that failed (a taken userName, two requests for the same userName, a concurrent
//! lifecycle change), and a replacement that failed inside its group, runs again alone, so each request gets
//! exactly the answer it would have had on its own.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use scimgate_scim::schema::ResourceKind;
use scimgate_store::{Backend, Replacement, StoreError, Stored, Write};

/// Most writes in one transaction.
pub const MAX_GROUP: usize = 256;

struct Job {
    tenant: String,
    op: Op,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

enum Op {
    /// A user create.
    Create {
        id: String,
        write: Write,
    },
    Replace(Replacement),
}

/// The handle requests commit user creates and replacements through.
#[derive(Clone)]
pub struct GroupCommit {
    /// Creates: one queue that every create lane takes from.
    creates: mpsc::Sender<Job>,
    /// Replacements: one queue per lane, chosen by the resource, so concurrent changes to one resource (32
    /// members pushed to one group) meet in one lane and share its transactions instead of queueing for the row
    /// lock from several.
    replaces: Vec<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("replace_lanes", &self.replaces.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The committer is gone (the process is shutting down); nothing was written.
    #[error("the committer stopped")]
    Stopped,
}

impl GroupCommit {
    /// Start `lanes` create lanes and `lanes` replace lanes (SQLite has one writer: one each; PostgreSQL commits
    /// several groups at once), on a thread of their own if `own_thread` ([`spawn_lanes`]; SQLite, whose
    /// connections answer through channels from their own threads; a PostgreSQL connection's socket is driven by
    /// the runtime it was opened on, so its lanes stay on that runtime). They stop when every handle is dropped.
    pub fn start(store: Arc<dyn Backend>, lanes: usize, own_thread: bool) -> Self {
        let lanes = lanes.max(1);
        let (creates, rx) = mpsc::channel::<Job>(MAX_GROUP * 16);
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks: Vec<LaneTask> = Vec::new();
        for _ in 0..lanes {
            tasks.push(Box::pin(lane(store.clone(), rx.clone())));
        }
        let replaces = (0..lanes)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>(MAX_GROUP * 4);
                tasks.push(Box::pin(lane(store.clone(), Arc::new(Mutex::new(rx)))));
                tx
            })
            .collect();
        if own_thread {
            spawn_lanes(tasks);
        } else {
            for t in tasks {
                tokio::spawn(t);
            }
        }
        GroupCommit { creates, replaces }
    }

    /// Create a user, committed with whatever other creates are waiting. Resolves once the transaction that
    /// holds it has committed (or failed).
    pub async fn create_user(&self, tenant: &str, id: String, write: Write) -> Result<Stored, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.submit(&self.creates, tenant, Op::Create { id, write }, reply, answer)
            .await
    }

    /// Replace a user or group ([`Store::replace`](scimgate_store::Store::replace)), committed with whatever
    /// other writes are waiting.
    pub async fn replace(&self, tenant: &str, r: Replacement) -> Result<Stored, CommitError> {
        let (reply, answer) = oneshot::channel();
        let lane = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (tenant, &r.id).hash(&mut h);
            (h.finish() % self.replaces.len() as u64) as usize
        };
        self.submit(&self.replaces[lane], tenant, Op::Replace(r), reply, answer)
            .await
    }

    async fn submit(
        &self,
        queue: &mpsc::Sender<Job>,
        tenant: &str,
        op: Op,
        reply: oneshot::Sender<Result<Stored, StoreError>>,
        answer: oneshot::Receiver<Result<Stored, StoreError>>,
    ) -> Result<Stored, CommitError> {
        let job = Job {
            tenant: tenant.to_string(),
            op,
            reply,
        };
        queue.send(job).await.map_err(|_| CommitError::Stopped)?;
        Ok(answer.await.map_err(|_| CommitError::Stopped)??)
    }
}

/// A lane's future, before it is spawned.
type LaneTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Run the lanes on a thread of their own with its own single-threaded runtime. A lane's transaction is a chain of
/// statements, each a round trip to the database (to SQLite's connection thread), and the lane cannot start the
/// next one until it is polled again. Woken from outside the request runtime, a lane task there waits in that
/// runtime's shared queue behind the request tasks already queued, once per statement; on its own idle thread it
/// is polled as soon as the kernel wakes the thread. If no runtime can be built the lanes share the request
/// runtime; if no thread can be started, the lanes never run and every write answers that the committer stopped.
fn spawn_lanes(tasks: Vec<LaneTask>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime of its own for the group committer; sharing the request runtime");
            for t in tasks {
                tokio::spawn(t);
            }
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("scimgate-commit".into())
        .spawn(move || rt.block_on(futures::future::join_all(tasks)));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the group committer: writes will fail");
    }
}

async fn lane(store: Arc<dyn Backend>, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut jobs, MAX_GROUP).await == 0 {
                return;
            }
        }
        // One transaction per tenant, in arrival order.
        while !jobs.is_empty() {
            let tenant = jobs[0].tenant.clone();
            let (same, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.tenant == tenant);
            jobs = rest;
            commit(&*store, &tenant, same).await;
        }
    }
}

async fn commit(store: &dyn Backend, tenant: &str, jobs: Vec<Job>) {
    let mut creates = Vec::new();
    let mut replaces = Vec::new();
    for job in jobs {
        match job.op {
            Op::Create { id, write } => creates.push((id, write, job.reply)),
            Op::Replace(r) => replaces.push((r, job.reply)),
        }
    }
    if !creates.is_empty() {
        commit_creates(store, tenant, creates).await;
    }
    if !replaces.is_empty() {
        commit_replaces(store, tenant, replaces).await;
    }
}

type Reply = oneshot::Sender<Result<Stored, StoreError>>;

/// A group of `n` writes committed together: a debug line and the group-size metric.
fn committed(tenant: &str, writes: &'static str, n: usize, started: std::time::Instant) {
    tracing::debug!(
        tenant,
        writes,
        n,
        elapsed_us = started.elapsed().as_micros() as u64,
        "group committed"
    );
    crate::metrics::METRICS.group_commit.observe(n as f64);
}

async fn commit_creates(store: &dyn Backend, tenant: &str, jobs: Vec<(String, Write, Reply)>) {
    let kind = ResourceKind::User;
    let (items, replies): (Vec<(String, Write)>, Vec<Reply>) = jobs.into_iter().map(|(id, w, r)| ((id, w), r)).unzip();
    if items.len() > 1 {
        let n = items.len();
        let started = std::time::Instant::now();
        match store.create_many(tenant, kind, &items).await {
            Ok(stored) => {
                committed(tenant, "creates", n, started);
                for (reply, s) in replies.into_iter().zip(stored) {
                    let _ = reply.send(Ok(s));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(tenant, creates = n, error = %e, "group commit failed; committing each create alone");
            }
        }
    }
    for ((id, write), reply) in items.into_iter().zip(replies) {
        crate::metrics::METRICS.group_commit.observe(1.0);
        let r = store.create(tenant, kind, &id, write, &[]).await;
        let _ = reply.send(r);
    }
}

async fn commit_replaces(store: &dyn Backend, tenant: &str, jobs: Vec<(Replacement, Reply)>) {
    let (items, replies): (Vec<Replacement>, Vec<Reply>) = jobs.into_iter().unzip();
    let mut alone = Vec::new();
    if items.len() > 1 {
        let n = items.len();
        let started = std::time::Instant::now();
        match store.replace_many(tenant, &items).await {
            Ok(outcomes) => {
                committed(tenant, "replacements", n, started);
                for ((r, reply), outcome) in items.into_iter().zip(replies).zip(outcomes) {
                    match outcome {
                        Ok(s) => {
                            let _ = reply.send(Ok(s));
                        }
                        // Failed in company (perhaps because of an earlier replacement in the group, perhaps a
                        // lock conflict between lanes): the answer it gets is the one it gets alone.
                        Err(_) => alone.push((r, reply)),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(tenant, replaces = n, error = %e, "group commit failed; committing each replacement alone");
                alone = items.into_iter().zip(replies).collect();
            }
        }
    } else {
        alone = items.into_iter().zip(replies).collect();
    }
    for (r, reply) in alone {
        crate::metrics::METRICS.group_commit.observe(1.0);
        let res = store
            .replace(tenant, r.kind, &r.id, r.expect, r.write, &r.members)
            .await;
        let _ = reply.send(res);
    }
}
