//! scimgate: a SCIM 2.0 gateway.
//!
//! The pipeline, front to back (ARCHITECTURE.md has the whole picture):
//! - [`server`]: the accept loop: hyper, optional rustls, connection limit, graceful drain.
//! - [`http`]: the axum router: tenants and their bearer tokens, SCIM handlers, discovery, the SCIM error edge.
//! - [`service`]: one SCIM operation end to end: schema checks, PATCH/PUT semantics, versions, Bulk, paging.
//! - `scimgate_scim` (crates/scim): the protocol itself, pure: schemas, filters, PATCH, projection, Bulk order.
//! - `scimgate_store` (crates/store): identity state on SQLite or PostgreSQL.
//! - [`config`], [`schemas`], [`cursor`]: configuration, the schema directory, signed paging cursors.

pub mod audit_cli;
pub mod config;
pub mod cursor;
pub mod engine;
pub mod group_commit;
pub mod http;
mod lifecycle;
pub mod metrics;
pub mod outbox;
pub mod schemas;
pub mod server;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use scimgate_store::sql::StoreOptions;
use scimgate_store::{SqlStore, StoreError};

use crate::config::Config;
use crate::cursor::CursorKey;
use crate::http::AppState;
use crate::http::auth::TenantGuard;
use crate::service::{Limits, ScimService};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Schemas(#[from] schemas::LoadError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("policy: {0}")]
    Policy(#[from] engine::EngineError),
    #[error("cursor key file {path}: {source}")]
    CursorKey { path: String, source: std::io::Error },
    #[error("outbox: {0}")]
    Seal(#[from] outbox::seal::SealError),
    #[error("target {target}: {error}")]
    Target { target: String, error: String },
}

/// Build everything the router needs from a validated config: registry, store (migrated), tenants, and the
/// lifecycle engine when a policy is configured.
pub async fn build_state(cfg: &Config, clock: Arc<dyn engine::clock::Clock>) -> Result<Arc<AppState>, StartError> {
    let reg = Arc::new(schemas::load(&cfg.scim.schemas_dir)?);
    let tenants: Vec<Arc<config::Tenant>> = cfg.tenants()?.into_iter().map(Arc::new).collect();
    let store = SqlStore::connect(&StoreOptions {
        url: cfg.store.url.clone(),
        max_connections: cfg.store.max_connections,
        acquire_timeout: Duration::from_secs(10),
    })
    .await?;
    let cursor_key = match &cfg.scim.cursor_key_file {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|source| StartError::CursorKey {
                path: p.display().to_string(),
                source,
            })?;
            CursorKey::new(config::sha256(&bytes))
        }
        None => CursorKey::new(rand::random()),
    };
    let engine = match &cfg.policy {
        Some(p) => {
            let policy = engine::Engine::load(&p.file)?;
            tracing::info!(policy_hash = %policy.hash(), file = %p.file.display(), "policy loaded");
            Some(Arc::new(engine::Engine::new(policy, Some(p.file.clone()), clock)))
        }
        None => None,
    };
    let sealer = match (&cfg.outbox.secret_key, &cfg.outbox.secret_key_file) {
        (Some(k), _) => Some(outbox::seal::Sealer::from_base64(k)?),
        (None, Some(p)) => Some(outbox::seal::Sealer::from_file(p)?),
        (None, None) => None,
    };
    let (store, cache_listener) = if cfg.store.read_cache_mib > 0 {
        let store = store.with_cache(cfg.store.read_cache_mib.saturating_mul(1 << 20));
        let follower = store.clone();
        let url = cfg.store.url.clone();
        let listener = url.starts_with("postgres").then(|| {
            http::AbortOnDrop(tokio::spawn(
                async move { follower.listen_for_invalidations(url).await },
            ))
        });
        (store, listener)
    } else {
        (store, None)
    };
    let store: Arc<dyn scimgate_store::Backend> = Arc::new(store);
    let wake = Arc::new(tokio::sync::Notify::new());
    let specs = outbox::targets::build(&cfg.targets).await?;
    let alerter = match &cfg.outbox.alert_webhook {
        Some(url) => outbox::alert::Alerter::webhook(url.clone()),
        None => outbox::alert::Alerter::none(),
    };
    let outbox = outbox::Outbox::new(store.clone(), specs, &cfg.outbox, wake.clone(), sealer.clone(), alerter);
    // SQLite has one writer: one committer lane, on its own thread. PostgreSQL commits several groups at once.
    let sqlite = cfg.store.url.starts_with("sqlite");
    let lanes = if sqlite {
        1
    } else {
        usize::try_from(cfg.store.max_connections / 2).unwrap_or(1).max(1)
    };
    let commits = group_commit::GroupCommit::start(store.clone(), lanes, sqlite);
    let service = ScimService {
        commits,
        reg,
        store,
        engine,
        limits: Limits::from(&cfg.scim),
        cursor_key,
        sealer,
        wake,
    };
    let guards = tenants
        .iter()
        .map(|t: &Arc<config::Tenant>| (t.id.clone(), Arc::new(TenantGuard::new(t.clone()))))
        .collect();
    Ok(Arc::new(AppState {
        service,
        outbox,
        admins: cfg.admin_users()?,
        guards,
        tenants,
        max_body_bytes: cfg.server.max_body_bytes,
        request_timeout: Duration::from_secs(cfg.server.request_timeout_secs),
        scheme: if cfg.server.tls.is_some() { "https" } else { "http" },
        span_reads: cfg.log.otlp_endpoint.is_some(),
        cache_listener,
    }))
}
