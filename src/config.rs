//! Configuration: TOML, then `SCIMGATE_SECTION__KEY` environment overrides; unknown keys are errors.
//!
//! Secrets never sit in the file itself unless an operator puts them there: a tenant token comes from an
//! environment variable, a file, or is given only as its SHA-256 hash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub scim: ScimConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The lifecycle policy. Without it scimgate keeps identity state but decides no entitlements.
    pub policy: Option<PolicyConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// A separate, unauthenticated listener for Prometheus. Without it, `/metrics` is served on the main
    /// listener behind admin authentication (any admin role).
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    /// How downstream work is queued, retried and alerted on.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Downstream systems, each with its adapter. The ids are the policy's target ids.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    pub tenants: Vec<TenantConfig>,
}

/// The durable outbox and its workers (`src/outbox`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Run workers in this process. Several processes may share a PostgreSQL queue; with SQLite, one.
    pub workers: bool,
    /// How often idle workers look for ready rows (a commit in this process wakes them at once).
    pub poll_ms: u64,
    /// How long a claimed row stays leased to its worker; a worker that dies loses it after this.
    pub lease_secs: u64,
    /// Attempts before a row becomes a dead letter (targets may override).
    pub max_attempts: u32,
    /// Retry backoff: `min(max, base * 2^(attempt-1))`, with full jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failures that open a target's circuit; while open nothing is sent and nothing is spent.
    pub breaker_failures: u32,
    /// How long an open circuit waits before a health check may close it again.
    pub breaker_cooldown_ms: u64,
    /// How long one adapter call may take.
    pub operation_timeout_secs: u64,
    /// Key sealing passwords in the outbox: 32 bytes, base64. Without a key, passwords are not forwarded.
    pub secret_key: Option<String>,
    pub secret_key_file: Option<PathBuf>,
    /// POSTed a JSON alert when a target goes down or comes back, and when dead letters appear.
    pub alert_webhook: Option<String>,
    /// Delivered rows are kept this long for inspection, then deleted. Dead letters are never deleted.
    pub retain_done_days: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            workers: true,
            poll_ms: 500,
            lease_secs: 60,
            max_attempts: 8,
            backoff_base_ms: 500,
            backoff_max_ms: 300_000,
            breaker_failures: 5,
            breaker_cooldown_ms: 5_000,
            operation_timeout_secs: 30,
            secret_key: None,
            secret_key_file: None,
            alert_webhook: None,
            retain_done_days: 7,
        }
    }
}

/// One downstream system. Exactly one adapter table (`ldap`, `sql`, `file`, `rest`, `scim`) configures it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The policy's target id.
    pub id: String,
    /// Deliveries in flight at once to this target.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Overrides `outbox.max_attempts`.
    pub max_attempts: Option<u32>,
    pub ldap: Option<scimgate_adapter_ldap::Config>,
    pub sql: Option<scimgate_adapter_sql::Config>,
    pub file: Option<scimgate_adapter_file::Config>,
    pub rest: Option<scimgate_adapter_rest::Config>,
    pub scim: Option<scimgate_adapter_scim::Config>,
}

fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Delete audit records older than this many days (the chain is anchored where it is cut). Keep forever when
    /// absent.
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. `127.0.0.1:9464`: bind it to an interface only Prometheus reaches.
    pub listen: SocketAddr,
}

/// Requests per second with a burst, per tenant and per credential (token or JWT subject).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub per_second: u32,
    pub burst: u32,
    pub per_token_per_second: Option<u32>,
    pub per_token_burst: Option<u32>,
}

/// OAuth2 JWT bearer tokens from an IdP: signature (keys from a JWKS file or URL), issuer, audience, expiry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    /// How long fetched keys are cached, in seconds.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_cache_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file (TOML); relative paths are relative to the config file.
    pub file: PathBuf,
    /// How often due timers and approval deadlines are checked, in seconds.
    #[serde(default = "default_tick")]
    pub tick_secs: u64,
}

/// The admin API (`/admin/v1`): its users and their roles.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default)]
    pub users: Vec<AdminUserConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUserConfig {
    /// The principal name: what approval stages name (a manager's userName, an entitlement owner, a named
    /// approver).
    pub name: String,
    pub roles: Vec<AdminRole>,
    pub token: TokenSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Changes and reloads policy, previews plans, replays the queue; cannot decide approvals or alter audit.
    Operator,
    /// Decides the approval requests addressed to them.
    Approver,
    /// Reads everything, changes nothing.
    Auditor,
}

/// An admin user ready to authenticate.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub name: String,
    pub roles: Vec<AdminRole>,
    pub token_hash: [u8; 32],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; `--listen` overrides it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate chain and key (PEM files). Plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Largest request body, except Bulk (see `scim.bulk_max_payload_bytes`).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Open connections at most; further connections wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request (headers and body) must arrive and be answered within this many seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Request headers must arrive within this many seconds (slowloris guard).
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout_secs: u64,
    /// On shutdown, in-flight requests get this long to finish.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls: None,
            max_body_bytes: default_max_body(),
            max_connections: default_max_connections(),
            request_timeout_secs: default_request_timeout(),
            header_read_timeout_secs: default_header_timeout(),
            shutdown_grace_secs: default_grace(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (mTLS); connections without one are refused.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path/to/file.db` (created if missing) or `postgres://user@host/db`.
    pub url: String,
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// The read cache of users' answers, in MiB (0: off). Kept correct by the store's writes; on PostgreSQL by
    /// every node's writes (LISTEN/NOTIFY), and bypassed while that feed is down.
    #[serde(default = "default_read_cache_mib")]
    pub read_cache_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScimConfig {
    /// Directory of schema JSON files; relative paths are relative to the config file.
    #[serde(default = "default_schemas_dir")]
    pub schemas_dir: PathBuf,
    #[serde(default = "default_page")]
    pub default_page_size: usize,
    #[serde(default = "default_max_page")]
    pub max_page_size: usize,
    #[serde(default = "default_filter_len")]
    pub max_filter_length: usize,
    #[serde(default = "default_filter_depth")]
    pub max_filter_depth: usize,
    #[serde(default = "default_bulk_ops")]
    pub bulk_max_operations: usize,
    #[serde(default = "default_bulk_payload")]
    pub bulk_max_payload_bytes: usize,
    #[serde(default = "default_patch_ops")]
    pub max_patch_operations: usize,
    /// Seconds a pagination cursor stays valid.
    #[serde(default = "default_cursor_timeout")]
    pub cursor_timeout_secs: u64,
    /// File holding the key that signs cursors. Several nodes sharing one database need the same key; a single
    /// node may leave it out and gets a random key per start.
    pub cursor_key_file: Option<PathBuf>,
}

impl Default for ScimConfig {
    fn default() -> Self {
        ScimConfig {
            schemas_dir: default_schemas_dir(),
            default_page_size: default_page(),
            max_page_size: default_max_page(),
            max_filter_length: default_filter_len(),
            max_filter_depth: default_filter_depth(),
            bulk_max_operations: default_bulk_ops(),
            bulk_max_payload_bytes: default_bulk_payload(),
            max_patch_operations: default_patch_ops(),
            cursor_timeout_secs: default_cursor_timeout(),
            cursor_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (production) or `pretty` (development).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info,scimgate=debug`; `RUST_LOG` wins when set.
    pub filter: Option<String>,
    /// Export spans over OTLP/HTTP to this endpoint (e.g. `http://127.0.0.1:4318/v1/traces`). Needs a build with
    /// the `otlp` feature.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    #[default]
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Where this tenant's SCIM API is served, e.g. `/scim/v2` or `/t/acme/scim/v2`.
    pub base_path: String,
    /// Absolute URL of `base_path` for meta.location; derived from the Host header when absent.
    pub public_url: Option<String>,
    #[serde(default)]
    pub tokens: Vec<TokenSource>,
    /// Accept JWT bearer tokens too (OAuth2 client credentials from the IdP).
    pub jwt: Option<JwtConfig>,
    pub rate_limit: Option<RateLimitConfig>,
}

/// Where a bearer token comes from. Only its SHA-256 is kept in memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// Read the token from this environment variable.
    pub env: Option<String>,
    /// Read the token from this file (trailing newline ignored).
    pub file: Option<PathBuf>,
    /// The hex SHA-256 of the token.
    pub sha256: Option<String>,
}

fn default_jwks_ttl() -> u64 {
    300
}
fn default_tick() -> u64 {
    5
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_connections() -> usize {
    1024
}
fn default_request_timeout() -> u64 {
    60
}
fn default_header_timeout() -> u64 {
    10
}
fn default_grace() -> u64 {
    30
}
fn default_pool() -> u32 {
    8
}
fn default_read_cache_mib() -> u64 {
    128
}
fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
}
fn default_page() -> usize {
    100
}
fn default_max_page() -> usize {
    1000
}
fn default_filter_len() -> usize {
    4096
}
fn default_filter_depth() -> usize {
    16
}
fn default_bulk_ops() -> usize {
    1000
}
fn default_bulk_payload() -> usize {
    4 * 1024 * 1024
}
fn default_patch_ops() -> usize {
    1000
}
fn default_cursor_timeout() -> u64 {
    3600
}

/// A tenant ready to serve: its token hashes resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub base_path: String,
    pub public_url: Option<String>,
    pub token_hashes: Vec<[u8; 32]>,
    pub jwt: Option<JwtConfig>,
    pub rate_limit: Option<RateLimitConfig>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

impl Config {
    /// Read the file and the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(
                Env::prefixed("SCIMGATE_")
                    .filter(|k| k.as_str().contains("__"))
                    .split("__"),
            )
            .extract()
            .map_err(Box::new)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.scim.schemas_dir.is_relative() {
            cfg.scim.schemas_dir = base.join(&cfg.scim.schemas_dir);
        }
        if let Some(p) = &mut cfg.policy
            && p.file.is_relative()
        {
            p.file = base.join(&p.file);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.tenants.is_empty() {
            return Err(invalid("at least one [[tenants]] entry is required"));
        }
        let mut paths: Vec<&str> = Vec::new();
        for t in &self.tenants {
            if t.id.is_empty() {
                return Err(invalid("tenants: id must not be empty"));
            }
            if !t.base_path.starts_with('/') || t.base_path.ends_with('/') || t.base_path.contains("//") {
                return Err(invalid(format!(
                    "tenant {}: base_path {:?} must start with / and not end with /",
                    t.id, t.base_path
                )));
            }
            if paths
                .iter()
                .any(|p| p.starts_with(&t.base_path) || t.base_path.starts_with(p))
            {
                return Err(invalid(format!(
                    "tenant {}: base_path {} overlaps another tenant's",
                    t.id, t.base_path
                )));
            }
            paths.push(&t.base_path);
            if t.tokens.is_empty() && t.jwt.is_none() {
                return Err(invalid(format!(
                    "tenant {}: at least one token or a jwt section is required",
                    t.id
                )));
            }
            if let Some(j) = &t.jwt
                && j.jwks_file.is_some() == j.jwks_url.is_some()
            {
                return Err(invalid(format!(
                    "tenant {}: jwt needs exactly one of jwks_file and jwks_url",
                    t.id
                )));
            }
            if let Some(r) = &t.rate_limit
                && (r.per_second == 0
                    || r.burst == 0
                    || r.per_token_per_second == Some(0)
                    || r.per_token_burst == Some(0))
            {
                return Err(invalid(format!("tenant {}: rate limits must be positive", t.id)));
            }
        }
        if self.scim.max_page_size == 0 || self.scim.default_page_size > self.scim.max_page_size {
            return Err(invalid("scim: default_page_size must be between 1 and max_page_size"));
        }
        if self.scim.bulk_max_operations == 0 {
            return Err(invalid("scim: bulk_max_operations must be at least 1"));
        }
        let o = &self.outbox;
        if o.max_attempts == 0 || o.lease_secs == 0 || o.breaker_failures == 0 || o.operation_timeout_secs == 0 {
            return Err(invalid(
                "outbox: max_attempts, lease_secs, breaker_failures and operation_timeout_secs must be positive",
            ));
        }
        if o.operation_timeout_secs >= o.lease_secs {
            return Err(invalid(
                "outbox: operation_timeout_secs must be shorter than lease_secs",
            ));
        }
        if o.secret_key.is_some() && o.secret_key_file.is_some() {
            return Err(invalid("outbox: give secret_key or secret_key_file, not both"));
        }
        let mut ids = std::collections::BTreeSet::new();
        for t in &self.targets {
            if !ids.insert(t.id.as_str()) {
                return Err(invalid(format!("targets: id {} appears twice", t.id)));
            }
            if t.concurrency == 0 || t.concurrency > 256 {
                return Err(invalid(format!(
                    "target {}: concurrency must be between 1 and 256",
                    t.id
                )));
            }
            if t.max_attempts == Some(0) {
                return Err(invalid(format!("target {}: max_attempts must be positive", t.id)));
            }
            let kinds = [
                t.ldap.is_some(),
                t.sql.is_some(),
                t.file.is_some(),
                t.rest.is_some(),
                t.scim.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return Err(invalid(format!(
                    "target {}: exactly one of [targets.ldap], [targets.sql], [targets.file], [targets.rest], \
                     [targets.scim] is required",
                    t.id
                )));
            }
        }
        Ok(())
    }

    /// Resolve the admin users' tokens.
    pub fn admin_users(&self) -> Result<Vec<AdminUser>, ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        self.admin
            .users
            .iter()
            .map(|u| {
                if !names.insert(u.name.as_str()) {
                    return Err(invalid(format!("admin user {} is defined twice", u.name)));
                }
                if u.roles.is_empty() {
                    return Err(invalid(format!("admin user {} has no roles", u.name)));
                }
                Ok(AdminUser {
                    name: u.name.clone(),
                    roles: u.roles.clone(),
                    token_hash: resolve_token(&u.name, &u.token)?,
                })
            })
            .collect()
    }

    /// Resolve every tenant's tokens to hashes. Fails if a named variable or file is missing or empty.
    pub fn tenants(&self) -> Result<Vec<Tenant>, ConfigError> {
        self.tenants
            .iter()
            .map(|t| {
                let hashes = t
                    .tokens
                    .iter()
                    .map(|s| resolve_token(&t.id, s))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Tenant {
                    id: t.id.clone(),
                    base_path: t.base_path.clone(),
                    public_url: t.public_url.as_ref().map(|u| u.trim_end_matches('/').to_string()),
                    token_hashes: hashes,
                    jwt: t.jwt.clone(),
                    rate_limit: t.rate_limit.clone(),
                })
            })
            .collect()
    }
}

fn resolve_token(tenant: &str, s: &TokenSource) -> Result<[u8; 32], ConfigError> {
    let given = [s.env.is_some(), s.file.is_some(), s.sha256.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        return Err(invalid(format!(
            "tenant {tenant}: each token needs exactly one of env, file, sha256"
        )));
    }
    if let Some(var) = &s.env {
        let v = std::env::var(var)
            .map_err(|_| invalid(format!("tenant {tenant}: environment variable {var} is not set")))?;
        return token_hash(tenant, v.trim());
    }
    if let Some(file) = &s.file {
        let v = std::fs::read_to_string(file).map_err(|e| {
            invalid(format!(
                "tenant {tenant}: cannot read token file {}: {e}",
                file.display()
            ))
        })?;
        return token_hash(tenant, v.trim());
    }
    let hex = s.sha256.as_deref().unwrap_or_default();
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return Err(invalid(format!("tenant {tenant}: sha256 must be 64 hex digits")));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| invalid(format!("tenant {tenant}: sha256 must be hex")))?;
    }
    Ok(out)
}

fn token_hash(tenant: &str, token: &str) -> Result<[u8; 32], ConfigError> {
    if token.len() < 16 {
        return Err(invalid(format!(
            "tenant {tenant}: a token must be at least 16 characters"
        )));
    }
    Ok(sha256(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn unknown_keys_are_refused() {
        let f = write(
            "[store]\nurl = \"sqlite::memory:\"\nbogus = 1\n[[tenants]]\nid=\"a\"\nbase_path=\"/scim/v2\"\ntokens=[{sha256=\"00\"}]\n",
        );
        let err = Config::load(f.path()).expect_err("unknown key");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn overlapping_tenants_are_refused() {
        let f = write(
            "[store]\nurl = \"sqlite::memory:\"\n[[tenants]]\nid=\"a\"\nbase_path=\"/scim\"\ntokens=[{env=\"X\"}]\n\
             [[tenants]]\nid=\"b\"\nbase_path=\"/scim/v2\"\ntokens=[{env=\"X\"}]\n",
        );
        let err = Config::load(f.path()).expect_err("overlap");
        assert!(err.to_string().contains("overlaps"), "{err}");
    }

    #[test]
    fn token_sources() {
        let hash = "a".repeat(64);
        let f = write(&format!(
            "[store]\nurl = \"sqlite::memory:\"\n[[tenants]]\nid=\"a\"\nbase_path=\"/scim/v2\"\ntokens=[{{sha256=\"{hash}\"}}]\n"
        ));
        let cfg = Config::load(f.path()).expect("valid");
        assert_eq!(cfg.tenants().expect("tokens")[0].token_hashes[0], [0xaa; 32]);
        let f = write(
            "[store]\nurl = \"sqlite::memory:\"\n[[tenants]]\nid=\"a\"\nbase_path=\"/scim/v2\"\ntokens=[{env=\"SCIMGATE_TEST_UNSET_VAR\"}]\n",
        );
        let cfg = Config::load(f.path()).expect("valid");
        assert!(cfg.tenants().is_err());
    }
}
