//! The SCIM outbound adapter's configuration, as it sits under `[targets.scim]` in the gateway config.

use serde::Deserialize;

pub use scimgate_adapter_rest::auth::AuthConfig;

/// The SCIM core User schema and the enterprise extension.
pub const CORE_USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SCIM service root, e.g. `https://app.example.com/scim/v2` (`/Users`, `/Groups` are appended).
    pub base_url: String,
    /// Extra hosts (`host[:port]`) outbound URLs may name, e.g. an OAuth2 token endpoint; `base_url`'s host is
    /// always allowed.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Allow plain `http` (tests, loopback). Off: only `https`.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// How an existing downstream user is found, in order: `externalId`, `userName`.
    #[serde(default = "default_match_by")]
    pub match_by: Vec<MatchBy>,
    /// The SCIM path (of the gateway's user) whose value becomes the downstream `externalId`. The default, `id`,
    /// is the gateway's own stable id; `externalId` passes the IdP's through.
    #[serde(default = "default_external_id")]
    pub external_id: String,
    /// Top-level attributes (or extension URNs) copied from the gateway's user to the downstream one. `active`
    /// and `externalId` are always managed.
    #[serde(default = "default_attributes")]
    pub attributes: Vec<String>,
    /// Push passwords the IdP sends (as the `password` attribute).
    #[serde(default = "yes")]
    pub passwords: bool,
    /// Entitlement values are downstream Group displayNames; membership is kept in sync.
    #[serde(default = "yes")]
    pub groups: bool,
    /// Create a missing group (by displayName) instead of refusing the entitlement.
    #[serde(default)]
    pub create_groups: bool,
    /// `auto` asks ServiceProviderConfig whether PATCH is supported and falls back to PUT; `patch` or `put`
    /// skip the question.
    #[serde(default)]
    pub update_method: UpdateMethod,
    /// Largest page asked for in searches.
    #[serde(default = "default_max_page")]
    pub max_page_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MatchBy {
    #[serde(rename = "externalId")]
    ExternalId,
    #[serde(rename = "userName")]
    UserName,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMethod {
    #[default]
    Auto,
    Patch,
    Put,
}

fn default_timeout() -> u64 {
    30
}
fn default_connect_timeout() -> u64 {
    5
}
fn default_max_response() -> usize {
    4 * 1024 * 1024
}
fn default_match_by() -> Vec<MatchBy> {
    vec![MatchBy::ExternalId, MatchBy::UserName]
}
fn default_external_id() -> String {
    "id".into()
}
fn default_attributes() -> Vec<String> {
    ["userName", "name", "displayName", "emails", "title", ENTERPRISE_USER]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn yes() -> bool {
    true
}
fn default_max_page() -> usize {
    200
}
