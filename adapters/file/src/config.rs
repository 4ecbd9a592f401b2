//! The adapter's configuration, as it sits under `[targets.file]` in the gateway config.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// The flat-file adapter's settings. See the crate README for the full reference with an example.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `delta`: one file per change beside the population file; `snapshot`: only the population file changes,
    /// and [`crate::FileAdapter::write_snapshot`] (called by the gateway every `schedule_seconds`) exports it.
    #[serde(default)]
    pub mode: Mode,
    /// The columns, in file order.
    pub columns: Vec<Column>,
    /// The column whose value identifies a row (usually the one with `source = "id"`, the SCIM id, which never
    /// changes). It is always required.
    pub key_column: String,
    /// The file holding the current population, one row per account: the adapter's own state, read back by
    /// `get` and `search`. A plain file name inside the destination directory.
    #[serde(default = "default_state_file")]
    pub state_file: String,
    /// The name of each delivered file (delta mode: one per change; snapshot mode: one per snapshot).
    /// Placeholders: `{timestamp}` (UTC, `20240131T235959123Z`), `{date}` (`20240131`), `{seq}` (a per-process
    /// counter, six digits), `{uuid}`. The result must be a plain file name.
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// Snapshot mode: how often the gateway calls `write_snapshot`, in seconds.
    #[serde(default = "default_schedule")]
    pub schedule_seconds: u64,
    /// The field delimiter, one ASCII character.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// The quote character, one ASCII character.
    #[serde(default = "default_quote")]
    pub quote: char,
    #[serde(default)]
    pub quote_style: QuoteStyle,
    #[serde(default)]
    pub encoding: Encoding,
    /// What to do with a character the encoding cannot represent: `reject` the change (non-retriable
    /// `Rejected`) or `replace` it with `?`.
    #[serde(default)]
    pub unmappable: Unmappable,
    /// Write a header row with the column names.
    #[serde(default = "yes")]
    pub header: bool,
    #[serde(default)]
    pub line_ending: LineEnding,
    /// The `$enabled` column's value for an enabled account.
    #[serde(default = "default_enabled")]
    pub enabled_value: String,
    /// The `$enabled` column's value for a disabled account.
    #[serde(default = "default_disabled")]
    pub disabled_value: String,
    /// Joins the values of the `$entitlements` column.
    #[serde(default = "default_separator")]
    pub entitlement_separator: String,
    /// The largest population file the adapter reads, in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_file_bytes: u64,
    pub destination: Destination,
}

/// One CSV column.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The header name, and the attribute name `get` and `search` report.
    pub name: String,
    /// A SCIM attribute path (`userName`, `emails[type eq "work"].value`, …), or one of `$enabled`,
    /// `$entitlements`, `$action` (`upsert`, `disable` or `delete`) and `$identity_id`.
    pub source: String,
    /// A user without a value here is refused (non-retriable `Rejected`).
    #[serde(default)]
    pub required: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Delta,
    Snapshot,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStyle {
    /// Quote a field only when it holds the delimiter, the quote, CR or LF.
    #[default]
    Necessary,
    /// Quote every field.
    Always,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[default]
    #[serde(rename = "utf-8", alias = "utf8")]
    Utf8,
    /// UTF-8 with a byte-order mark (what Excel wants).
    #[serde(rename = "utf-8-bom", alias = "utf8-bom")]
    Utf8Bom,
    /// Windows-1252, the superset of ISO-8859-1 that the WHATWG encoding standard means by `latin1`.
    #[serde(rename = "windows-1252", alias = "latin1", alias = "iso-8859-1", alias = "cp1252")]
    Windows1252,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmappable {
    #[default]
    Reject,
    Replace,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineEnding {
    #[default]
    Lf,
    Crlf,
}

/// Where the files go.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    /// A directory on this machine (it must exist).
    Local {
        dir: PathBuf,
    },
    Sftp(SftpConfig),
}

/// An SFTP server, reached with a pinned host key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// The password, inline (prefer `password_file`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// An OpenSSH private key file (ed25519, ECDSA or RSA); used before the password when both are set.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// A file holding the private key's passphrase.
    #[serde(default)]
    pub private_key_passphrase_file: Option<PathBuf>,
    /// The server's host key: an OpenSSH public key line (`ssh-ed25519 AAAA…`, as in `known_hosts` or
    /// `/etc/ssh/ssh_host_ed25519_key.pub`) or its fingerprint (`SHA256:…`, as `ssh-keygen -lf` prints it).
    /// Any other key is refused.
    pub host_key: String,
    /// The absolute remote directory the files go to.
    pub dir: String,
    /// Connect, key exchange, authentication and subsystem start, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Each SFTP request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
}

impl fmt::Debug for SftpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "**redacted**"))
            .field("password_file", &self.password_file)
            .field("private_key_file", &self.private_key_file)
            .field("private_key_passphrase_file", &self.private_key_passphrase_file)
            .field("host_key", &self.host_key)
            .field("dir", &self.dir)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("request_timeout_seconds", &self.request_timeout_seconds)
            .finish()
    }
}

fn default_state_file() -> String {
    "users.csv".into()
}
fn default_file_name() -> String {
    "users-{timestamp}-{seq}.csv".into()
}
fn default_schedule() -> u64 {
    3600
}
fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn yes() -> bool {
    true
}
fn default_enabled() -> String {
    "true".into()
}
fn default_disabled() -> String {
    "false".into()
}
fn default_separator() -> String {
    ";".into()
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_port() -> u16 {
    22
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_password() {
        let c: SftpConfig = serde_json::from_value(serde_json::json!({
            "host": "h", "user": "u", "password": "hunter2", "host_key": "SHA256:x", "dir": "/d"
        }))
        .expect("config");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
