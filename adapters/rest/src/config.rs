//! The REST adapter's configuration, as it sits under `[targets.rest]` in the gateway config.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::AuthConfig;

/// Every knob of a REST target. See the crate README for a worked example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The API root, e.g. `https://api.example.com/v1`. Relative URL templates are appended to it.
    pub base_url: String,
    /// Hosts (`host` or `host:port`) every outbound URL must name; `base_url`'s host must be one of them.
    pub allowed_hosts: Vec<String>,
    /// Allow plain `http` URLs (tests, a sidecar on loopback). Off: only `https`.
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Whole-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Larger responses are refused (the body is read up to this many bytes, never more).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// The SCIM attribute path that identifies the account on the target (its unique key), e.g. `userName`.
    #[serde(default = "default_key")]
    pub key: String,
    /// JSON pointer into a target resource to the key's value (`/userName`): a resource found by id whose key
    /// differs is someone else's (ids get reused), and `find` results are checked against it.
    pub key_pointer: String,
    /// JSON pointer into a target resource (the create response, a find result) to its id, e.g. `/id`.
    #[serde(default = "default_id_pointer")]
    pub id_pointer: String,
    /// JSON pointer to a boolean "enabled" flag in a resource; set it to manage disabling.
    #[serde(default)]
    pub enabled_pointer: Option<String>,
    /// Store the flag inverted (the target holds `locked`/`disabled` rather than `enabled`).
    #[serde(default)]
    pub enabled_inverted: bool,
    /// JSON pointer to the array of entitlement values in a resource (strings, or objects with a `value`); set it
    /// to manage entitlements.
    #[serde(default)]
    pub entitlements_pointer: Option<String>,
    pub operations: Operations,
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
fn default_key() -> String {
    "userName".into()
}
fn default_id_pointer() -> String {
    "/id".into()
}

/// The HTTP calls the adapter makes. URL templates and body templates are minijinja; see the README for the
/// context each one sees and how values are escaped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    /// Locate an account by its key (`{{ key }}`). The response is a list (or an object holding one, see
    /// `items_pointer`), or a single resource.
    pub find: Operation,
    /// Read an account by id (`{{ id }}`). 404 means gone.
    pub get: Operation,
    pub create: Operation,
    pub update: Operation,
    pub delete: Operation,
    /// A separate call that disables an account, made after `update` when `enabled` is false (for APIs with a
    /// `POST /users/{id}/deactivate` style endpoint). Without it, `update`'s body carries `{{ enabled }}`.
    #[serde(default)]
    pub disable: Option<Operation>,
    /// The counterpart of `disable`, made when `enabled` is true.
    #[serde(default)]
    pub enable: Option<Operation>,
    /// Page through every account: the URL sees `{{ page }}` (from 1), `{{ offset }}` (from 0) and `{{ limit }}`.
    pub list: ListOperation,
}

/// One HTTP call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// GET, POST, PUT, PATCH or DELETE. Defaults per operation (find/get/list GET, create POST, update PATCH,
    /// delete DELETE, disable/enable POST).
    #[serde(default)]
    pub method: Option<String>,
    /// A minijinja template for the URL: relative to `base_url` (starting with `/` or `?`) or absolute. Every
    /// `{{ value }}` is percent-encoded as one URL component.
    pub url: String,
    /// A minijinja template for the JSON body. Every `{{ value }}` renders as a JSON literal.
    #[serde(default)]
    pub body: Option<String>,
    /// JSON pointer to the array of resources in a list response ("" or absent: the body itself).
    #[serde(default)]
    pub items_pointer: Option<String>,
}

/// The list call: an [`Operation`] plus how it pages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOperation {
    #[serde(default)]
    pub method: Option<String>,
    pub url: String,
    #[serde(default)]
    pub items_pointer: Option<String>,
    /// `page` (the URL uses `{{ page }}`/`{{ offset }}` and `{{ limit }}`; another page follows while a page is
    /// full) or `none` (one response holds everything).
    #[serde(default)]
    pub paging: Paging,
    /// Largest page asked for.
    #[serde(default = "default_max_page")]
    pub max_page_size: usize,
    /// The URL template filters on the server with `{{ filter_attr }}`/`{{ filter_value }}` (the adapter still
    /// checks every result itself).
    #[serde(default)]
    pub filters: bool,
}

fn default_max_page() -> usize {
    200
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Paging {
    #[default]
    Page,
    None,
}

/// A secret from the config file. Its `Debug` never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConfigSecret(pub String);

impl fmt::Debug for ConfigSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"**redacted**\"")
    }
}

/// A secret given inline or as a path to a file holding it; reading the file trims one trailing newline.
pub(crate) fn secret_from(
    inline: &Option<ConfigSecret>,
    file: &Option<PathBuf>,
    what: &str,
) -> Result<Option<String>, scimgate_adapter_sdk::AdapterError> {
    use scimgate_adapter_sdk::AdapterError;
    match (inline, file) {
        (Some(_), Some(_)) => Err(AdapterError::config(format!("give {what} or {what}_file, not both"))),
        (Some(s), None) => Ok(Some(s.0.clone())),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| AdapterError::config(format!("cannot read {what}_file {}: {e}", p.display())))?;
            Ok(Some(
                text.strip_suffix('\n')
                    .unwrap_or(&text)
                    .trim_end_matches('\r')
                    .to_string(),
            ))
        }
        (None, None) => Ok(None),
    }
}
