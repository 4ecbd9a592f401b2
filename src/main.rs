//! The `scimgate` command: `serve` and `check`.

/// mimalloc: the request path allocates many short-lived strings and maps; glibc's malloc spent about 12 % of a
/// GET's CPU in malloc/free (bench/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::{EnvFilter, Layer};

use std::sync::Arc;

use scimgate::config::{Config, LogFormat};
use scimgate::engine::clock::SystemClock;
use scimgate::http::AppState;
use scimgate::server::{self, ServeOptions};

#[derive(Parser)]
#[command(name = "scimgate", version, about = "SCIM 2.0 gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the SCIM API.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address, overriding server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate the config, its tokens, the schema directory and the policy, then exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The tamper-evident audit trail: verify the hash chains, export records, apply retention.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The outbox's dead letters and other rows: list, show one, replay.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Show what a policy file would grant and revoke for every identity, before it is applied.
    Plan {
        #[arg(long, short)]
        config: PathBuf,
        /// The candidate policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Only this tenant (default: all).
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record of the chain (edited, deleted, inserted or reordered records fail); exit 1 if broken.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Write records as JSON lines to stdout, filtered by time range (RFC 3339) and identity.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        identity: Option<String>,
    },
    /// Delete records older than N days, anchoring the chain where it was cut.
    Prune {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        older_than_days: u32,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Rows as JSON lines (default: dead letters), oldest first.
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// pending, running, done, dead, superseded
        #[arg(long, default_value = "dead")]
        status: String,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One row, with its payload and last error.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Put dead letters back in the queue (a running gateway picks them up within its poll interval).
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// Row ids; with --all, every dead letter of the tenant (and --target).
        ids: Vec<String>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        target: Option<String>,
    },
}

async fn outbox(cmd: OutboxCommand) -> anyhow::Result<()> {
    let config = match &cmd {
        OutboxCommand::List { config, .. }
        | OutboxCommand::Show { config, .. }
        | OutboxCommand::Replay { config, .. } => config,
    };
    let cfg = Config::load(config).with_context(|| format!("config {}", config.display()))?;
    let store = scimgate_store::SqlStore::connect(&scimgate_store::sql::StoreOptions {
        url: cfg.store.url.clone(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    })
    .await?;
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    match cmd {
        OutboxCommand::List {
            tenant,
            status,
            target,
            identity,
            limit,
            ..
        } => {
            let rows = scimgate::outbox::ops::list(&store, &tenant, Some(status), target, identity, limit).await?;
            for r in &rows {
                println!("{}", scimgate::outbox::ops::to_json(r, false));
            }
            eprintln!("{} rows", rows.len());
        }
        OutboxCommand::Show { tenant, id, .. } => match store_get(&store, &tenant, &id).await? {
            Some(r) => println!(
                "{}",
                serde_json::to_string_pretty(&scimgate::outbox::ops::to_json(&r, true))?
            ),
            None => anyhow::bail!("no outbox row {id} in tenant {tenant}"),
        },
        OutboxCommand::Replay {
            tenant,
            ids,
            all,
            target,
            ..
        } => {
            let ids = if all {
                scimgate::outbox::ops::list(&store, &tenant, Some("dead".into()), target, None, 100_000)
                    .await?
                    .into_iter()
                    .map(|r| r.id)
                    .collect()
            } else {
                ids
            };
            let mut n = 0;
            for id in &ids {
                if scimgate::outbox::ops::replay(&store, &tenant, id, &actor).await? {
                    n += 1;
                } else {
                    eprintln!("{id}: not a dead letter (skipped)");
                }
            }
            println!("{n} dead letter(s) put back in the queue");
        }
    }
    Ok(())
}

async fn store_get(
    store: &scimgate_store::SqlStore,
    tenant: &str,
    id: &str,
) -> anyhow::Result<Option<scimgate_store::OutboxEntry>> {
    use scimgate_store::OutboxStore;
    Ok(store.outbox_get(tenant, id).await?)
}

async fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    let config = match &cmd {
        AuditCommand::Verify { config, .. }
        | AuditCommand::Export { config, .. }
        | AuditCommand::Prune { config, .. } => config,
    };
    let cfg = Config::load(config).with_context(|| format!("config {}", config.display()))?;
    let store = scimgate_store::SqlStore::connect(&scimgate_store::sql::StoreOptions {
        url: cfg.store.url.clone(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(10),
    })
    .await?;
    match cmd {
        AuditCommand::Verify { tenant, .. } => {
            let outcome = scimgate::audit_cli::verify(&store, tenant.as_deref()).await?;
            println!("{outcome}");
            if !outcome.ok {
                std::process::exit(1);
            }
        }
        AuditCommand::Export {
            tenant,
            from,
            to,
            identity,
            ..
        } => {
            let mut out = std::io::stdout().lock();
            let n = scimgate::audit_cli::export(
                &store,
                tenant.as_deref(),
                from.as_deref(),
                to.as_deref(),
                identity.as_deref(),
                &mut out,
            )
            .await?;
            eprintln!("{n} records");
        }
        AuditCommand::Prune {
            tenant,
            older_than_days,
            ..
        } => {
            let outcome = scimgate::audit_cli::prune(&store, tenant.as_deref(), older_than_days).await?;
            println!("{outcome}");
        }
    }
    Ok(())
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cfg.log.filter.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match cfg.log.format {
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).boxed(),
        LogFormat::Pretty => fmt.boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    match &cfg.log.otlp_endpoint {
        None => registry.init(),
        #[cfg(feature = "otlp")]
        Some(endpoint) => registry.with(otlp_layer(endpoint)?).init(),
        #[cfg(not(feature = "otlp"))]
        Some(_) => anyhow::bail!("log.otlp_endpoint is set but this build has no `otlp` feature"),
    }
    Ok(())
}

#[cfg(feature = "otlp")]
fn otlp_layer<S>(endpoint: &str) -> anyhow::Result<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("scimgate")
                .build(),
        )
        .build();
    let tracer = provider.tracer("scimgate");
    opentelemetry::global::set_tracer_provider(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Check { config } => check(config).await,
            Command::Serve { config, listen } => serve(config, listen).await,
            Command::Plan { config, policy, tenant } => plan(config, policy, tenant).await,
            Command::Audit { command } => audit(command).await,
            Command::Outbox { command } => outbox(command).await,
        }
    })
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    let tenants = cfg.tenants()?;
    let reg = scimgate::schemas::load(&cfg.scim.schemas_dir)?;
    if let Some(tls) = &cfg.server.tls {
        server::tls_config(&tls.cert, &tls.key, tls.client_ca.as_deref())?;
    }
    cfg.admin_users()?;
    let targets = scimgate::outbox::targets::build(&cfg.targets).await?;
    for t in &targets {
        println!("target ok: {} ({})", t.id, t.adapter.kind());
    }
    if let Some(p) = &cfg.policy {
        let policy = scimgate::engine::Engine::load(&p.file)?;
        println!("policy ok: {} (sha256 {})", p.file.display(), policy.hash());
        for id in policy.targets() {
            if !targets.iter().any(|t| t.id == id) {
                println!(
                    "warning: policy target {id} has no [[targets]] entry: in enforce mode its work becomes dead \
                     letters until one is configured"
                );
            }
        }
        for t in &targets {
            if policy.target(&t.id).is_none() {
                println!(
                    "warning: target {} is not a target of the policy: nothing will be sent to it",
                    t.id
                );
            }
        }
    }
    if cfg.outbox.secret_key.is_none() && cfg.outbox.secret_key_file.is_none() {
        println!("note: no outbox.secret_key: passwords from the IdP are hashed locally and not forwarded to targets");
    }
    println!(
        "config ok: {} tenant(s), {} schema(s), resource types {}",
        tenants.len(),
        reg.schemas().len(),
        reg.types()
            .iter()
            .map(|t| t.def.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

async fn serve(path: PathBuf, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let cfg = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    init_logging(&cfg)?;
    let state = scimgate::build_state(&cfg, Arc::new(SystemClock)).await?;
    if let (Some(engine), Some(p)) = (&state.service.engine, &cfg.policy) {
        tracing::info!(policy_hash = %engine.policy().hash(), "lifecycle engine running");
        spawn_timers(state.clone(), Duration::from_secs(p.tick_secs.max(1)));
        spawn_reload_on_sighup(state.clone());
    }
    let tls = match &cfg.server.tls {
        Some(t) => Some(server::tls_config(&t.cert, &t.key, t.client_ca.as_deref())?),
        None => None,
    };
    if let Some(m) = &cfg.metrics {
        spawn_metrics_listener(state.clone(), m.listen).await?;
    }
    spawn_housekeeping(state.clone(), cfg.audit.retention_days, cfg.outbox.retain_done_days);
    if cfg.outbox.workers {
        if cfg.store.url.starts_with("sqlite:") {
            // One process owns a SQLite queue: leases held by a previous run died with it.
            let n = state
                .service
                .store
                .release_leases(&scimgate_scim::resource::format_datetime(chrono::Utc::now()))
                .await?;
            if n > 0 {
                tracing::warn!(released = n, "outbox rows leased by a previous run are queued again");
            }
        }
        for t in state.outbox.targets() {
            tracing::info!(target_id = %t.id, kind = t.adapter.kind(), "outbox target");
        }
        state.outbox.clone().spawn();
    }
    let addr = listen.unwrap_or(cfg.server.listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr()?;
    for t in &state.tenants {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(tenant = %t.id, url = %format!("{scheme}://{local}{}", t.base_path), "serving SCIM");
    }
    let opts = ServeOptions {
        max_connections: cfg.server.max_connections,
        header_read_timeout: Duration::from_secs(cfg.server.header_read_timeout_secs),
        shutdown_grace: Duration::from_secs(cfg.server.shutdown_grace_secs),
    };
    server::run(
        listener,
        tls,
        scimgate::http::app(state),
        opts,
        server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Due timers (start dates, end dates, leaver revocations) and approval deadlines, checked every `every`.
fn spawn_timers(state: Arc<AppState>, every: Duration) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match state.service.tick().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(done = n, "lifecycle timers ran");
                    state.outbox.wake();
                }
                Err(e) => e.log(),
            }
        }
    });
}

/// SIGHUP re-reads the policy file; a bad file keeps the running policy.
fn spawn_reload_on_sighup(state: Arc<AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Some(engine) = &state.service.engine
                && engine.reload().is_ok()
            {
                scimgate::http::admin::reevaluate_all(&state, "policy").await;
            }
        }
    });
}

async fn plan(config: PathBuf, candidate: PathBuf, only: Option<String>) -> anyhow::Result<()> {
    let cfg = Config::load(&config).with_context(|| format!("config {}", config.display()))?;
    let policy = scimgate::engine::Engine::load(&candidate)?;
    let state = scimgate::build_state(&cfg, Arc::new(SystemClock)).await?;
    let started = std::time::Instant::now();
    for t in &state.tenants {
        if only.as_ref().is_some_and(|o| o != &t.id) {
            continue;
        }
        let report = scimgate::http::admin::preview(&state, &t.id, &policy, chrono::Utc::now()).await?;
        println!("{}", serde_json::json!({"tenant": t.id, "report": report}));
    }
    eprintln!("plan computed in {:.2?}", started.elapsed());
    Ok(())
}

/// Prometheus on its own listener, no authentication: bind it where only the scraper reaches.
async fn spawn_metrics_listener(state: Arc<AppState>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics {addr}"))?;
    tracing::info!(%addr, "serving /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move { scimgate::http::admin::render_metrics(&state).await }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });
    Ok(())
}

/// Periodic upkeep: forget idle per-credential rate-limit buckets; apply audit retention hourly.
fn spawn_housekeeping(state: Arc<AppState>, retention_days: Option<u32>, retain_done_days: u32) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        let mut minutes = 0u64;
        loop {
            every.tick().await;
            for g in state.guards.values() {
                g.shrink();
            }
            if let Some(days) = retention_days
                && minutes % 60 == 0
            {
                let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
                let cutoff = scimgate_scim::resource::format_datetime(cutoff);
                for t in &state.tenants {
                    match state.service.store.prune(&t.id, &cutoff).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tenant = %t.id, pruned = n, "audit retention applied"),
                        Err(e) => tracing::error!(tenant = %t.id, error = %e, "audit retention failed"),
                    }
                }
            }
            if minutes % 60 == 30 {
                let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retain_done_days));
                let cutoff = scimgate_scim::resource::format_datetime(cutoff);
                match state.service.store.prune_done(&cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "delivered outbox rows pruned"),
                    Err(e) => tracing::error!(error = %e, "outbox pruning failed"),
                }
            }
            minutes += 1;
        }
    });
}
