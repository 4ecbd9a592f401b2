//! Test harness: start the real `scimgate` binary on a fresh store and talk to it over HTTP.
//!
//! `Gateway::start(Backend::Sqlite)` uses a temp SQLite file; `Backend::Postgres` creates a uniquely named
//! database on the local PostgreSQL (SCIMGATE_TEST_PG, default `postgres://postgres@127.0.0.1:5432`) and drops
//! it afterwards. If PostgreSQL cannot be reached the test fails: it never skips.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn pg_admin_url() -> String {
    std::env::var("SCIMGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .arg(pg_admin_url() + "/postgres")
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("psql is required for PostgreSQL tests: {e}"));
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Gateway {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub db: Option<String>,
    pub log: PathBuf,
    pub config: PathBuf,
    pub rust_log: String,
}

pub struct Options {
    pub backend: Backend,
    /// Extra schema files copied next to the default ones.
    pub extra_schemas: Vec<PathBuf>,
    /// Extra TOML appended to the config.
    pub extra_config: String,
    /// RUST_LOG for the gateway (default `info,scimgate=debug`).
    pub rust_log: Option<String>,
    /// Replace the default tenant block (for tenants with JWT, rate limits, several tokens).
    pub tenant_block: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: Backend::Sqlite,
            extra_schemas: vec![],
            extra_config: String::new(),
            rust_log: None,
            tenant_block: None,
        }
    }
}

impl Gateway {
    pub async fn start(backend: Backend) -> Gateway {
        Self::start_with(Options {
            backend,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let schemas = dir.path().join("schemas");
        std::fs::create_dir(&schemas).expect("schemas dir");
        for e in std::fs::read_dir(repo_root().join("schemas"))
            .expect("repo schemas")
            .flatten()
        {
            std::fs::copy(e.path(), schemas.join(e.file_name())).expect("copy schema");
        }
        for p in &opts.extra_schemas {
            std::fs::copy(p, schemas.join(p.file_name().expect("file name"))).expect("copy extra schema");
        }
        let (url, db) = match opts.backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.path().join("scimgate.db").display()), None),
            Backend::Postgres => {
                let name = format!("scimgate_test_{}", uuid::Uuid::new_v4().simple());
                psql(&format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"));
                (format!("{}/{name}", pg_admin_url()), Some(name))
            }
        };
        let port = free_port();
        let config = dir.path().join("scimgate.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 5\n\n[store]\nurl = \"{url}\"\n\n\
                 [scim]\nschemas_dir = \"schemas\"\n\n{}\n\n{}\n",
                opts.extra_config,
                opts.tenant_block.clone().unwrap_or_else(|| {
                    "[[tenants]]\nid = \"default\"\nbase_path = \"/scim/v2\"\n\
                     tokens = [{ env = \"SCIMGATE_TEST_TOKEN\" }]\n"
                        .to_string()
                })
            ),
        )
        .expect("write config");
        let log = dir.path().join("gateway.log");
        let rust_log = opts.rust_log.clone().unwrap_or_else(|| "info,scimgate=debug".into());
        let child = spawn(&config, &log, &rust_log);
        let base = format!("http://127.0.0.1:{port}/scim/v2");
        let client = reqwest::Client::new();
        let mut gw = Gateway {
            rust_log,
            child,
            base,
            client,
            dir,
            db,
            log,
            config,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = self.base.replace("/scim/v2", "/readyz");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("scimgate exited with {status}:\n{}", self.logs());
            }
            if let Ok(r) = self.client.get(&health).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "scimgate did not become ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(TOKEN)
    }

    /// Send a JSON request and return (status, body or Null).
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.req(m, path);
        if let Some(b) = body {
            rb = rb.header("content-type", "application/scim+json").body(b.to_string());
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// Stop with SIGTERM (graceful) and wait.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// SIGKILL: no shutdown at all, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the gateway again on the same config and database (after `kill` or `stop`), and wait until ready.
    pub async fn restart(&mut self) {
        let _ = self.child.try_wait();
        self.child = spawn(&self.config, &self.log, &self.rust_log);
        self.wait_ready().await;
    }
}

fn spawn(config: &Path, log: &Path, rust_log: &str) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_scimgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("SCIMGATE_TEST_TOKEN", TOKEN)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start scimgate")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(db) = &self.db {
            psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// Lowercase hex SHA-256, as config files name a token by its hash (`token = { sha256 = "…" }`).
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A set of owned strings, for comparing with what a target holds.
pub fn set(xs: &[&str]) -> std::collections::BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}
