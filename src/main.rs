//! The `scimgate` command: `serve` and `check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use scimgate::config::{Config, LogFormat};
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
    /// Validate the config, its tokens and the schema directory, then exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cfg.log.filter.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Check { config } => check(config),
            Command::Serve { config, listen } => serve(config, listen).await,
        }
    })
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    let tenants = cfg.tenants()?;
    let reg = scimgate::schemas::load(&cfg.scim.schemas_dir)?;
    if let Some(tls) = &cfg.server.tls {
        server::tls_config(&tls.cert, &tls.key)?;
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
    init_logging(&cfg);
    let state = scimgate::build_state(&cfg).await?;
    let tls = match &cfg.server.tls {
        Some(t) => Some(server::tls_config(&t.cert, &t.key)?),
        None => None,
    };
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
