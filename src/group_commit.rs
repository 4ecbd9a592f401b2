//! Group commit for creates: concurrent `POST /Users` requests share one durable transaction.
//!
//! Each create is prepared by its own request (schema, policy decision, outbox rows, audit record) and handed to
//! a committer lane with a reply channel. A lane takes every create that queued while its previous commit was in
//! flight (up to [`MAX_GROUP`]) and commits them with [`Store::create_many`](scimgate_store::Store::create_many):
//! one transaction, one fsync. Nothing is acknowledged before its transaction commits, so an acknowledged create
//! is as durable as one committed alone. With a single request in flight a group is that one create: no create
//! waits for company.
//!
//! `create_many` is all or nothing. If a group fails (a taken userName, two requests for the same userName, a
//! concurrent lifecycle change), each create in it runs again alone with [`Store::create`], so each request gets
//! exactly the answer it would have had on its own.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use scimgate_scim::schema::ResourceKind;
use scimgate_store::{Backend, StoreError, Stored, Write};

/// Most creates in one transaction.
pub const MAX_GROUP: usize = 256;

struct Job {
    tenant: String,
    id: String,
    write: Write,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// The handle requests commit user creates through.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
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
    /// Start `lanes` committers (SQLite has one writer: one lane; PostgreSQL commits several groups at once).
    /// They stop when every handle is dropped.
    pub fn start(store: Arc<dyn Backend>, lanes: usize) -> Self {
        let (queue, rx) = mpsc::channel::<Job>(MAX_GROUP * 16);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(store.clone(), rx.clone()));
        }
        GroupCommit { queue }
    }

    /// Create a user, committed with whatever other creates are waiting. Resolves once the transaction that
    /// holds it has committed (or failed).
    pub async fn create_user(&self, tenant: &str, id: String, write: Write) -> Result<Stored, CommitError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tenant: tenant.to_string(),
            id,
            write,
            reply,
        };
        self.queue.send(job).await.map_err(|_| CommitError::Stopped)?;
        Ok(answer.await.map_err(|_| CommitError::Stopped)??)
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
    let kind = ResourceKind::User;
    if jobs.len() > 1 {
        let items: Vec<(String, Write)> = jobs.iter().map(|j| (j.id.clone(), j.write.clone())).collect();
        let n = items.len();
        let started = std::time::Instant::now();
        match store.create_many(tenant, kind, items).await {
            Ok(stored) => {
                tracing::debug!(
                    tenant,
                    creates = n,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "group committed"
                );
                crate::metrics::METRICS.group_commit.observe(n as f64);
                for (job, s) in jobs.into_iter().zip(stored) {
                    let _ = job.reply.send(Ok(s));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(tenant, creates = n, error = %e, "group commit failed; committing each create alone");
            }
        }
    }
    for job in jobs {
        crate::metrics::METRICS.group_commit.observe(1.0);
        let r = store.create(tenant, kind, &job.id, job.write, &[]).await;
        let _ = job.reply.send(r);
    }
}
