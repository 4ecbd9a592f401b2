//! The adapter's configuration, as it sits under `[targets.ldap]`. See the README for the reference.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Which kind of directory the adapter talks to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// OpenLDAP (or any RFC directory): `entryUUID` is the stable id, passwords go to `userPassword`.
    #[default]
    Openldap,
    /// Active Directory (and Samba AD): `objectGUID` is the stable id, passwords go to `unicodePwd`,
    /// `userAccountControl` carries the enabled state, `sAMAccountName` and `userPrincipalName` are required.
    Ad,
}

/// How an account is disabled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Disable {
    /// Accounts cannot be disabled (the capability is off; `enabled = false` is refused).
    None,
    /// OpenLDAP ppolicy: `pwdAccountLockedTime: 000001010000Z` locks the account, deleting it unlocks.
    Ppolicy,
    /// An attribute holds `disabled_value` while the account is disabled; when enabled it holds `enabled_value`,
    /// or is deleted when that is not set.
    Attribute {
        attribute: String,
        disabled_value: String,
        #[serde(default)]
        enabled_value: Option<String>,
    },
    /// Active Directory: bit 2 (ACCOUNTDISABLE) of `userAccountControl` (512 enabled, 514 disabled for a normal
    /// account); the other bits are kept.
    Ad,
}

/// How the account's group memberships are read back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipRead {
    /// The account's `memberOf` (OpenLDAP memberof overlay, Active Directory).
    #[default]
    MemberOf,
    /// A search under `groups_base_dn` for entries whose membership attribute holds the account's DN.
    Search,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    #[serde(default)]
    pub mode: Mode,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    #[serde(default)]
    pub tls: Tls,
    pub bind_dn: String,
    #[serde(default)]
    pub bind_password: Option<String>,
    /// Read the bind password from this file (trailing newline trimmed). Exactly one of the two is required.
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Where accounts live: searches (by key, by stable id, paging) run under it with subtree scope.
    pub base_dn: String,
    /// The DN of an account, e.g. `uid={userName},ou=people,dc=example,dc=com`. Each value is RFC 4514-escaped.
    pub dn: String,
    /// The attribute that identifies an account under `base_dn` and the template that fills it, e.g.
    /// `uid` / `{userName}`.
    pub key: Key,
    /// Object classes of a new account.
    pub object_classes: Vec<String>,
    /// LDAP attribute → SCIM path (`name.familyName`, all values of `emails.value`) or `{path}` template
    /// (`{userName}@example.com`). An attribute whose value is missing is deleted from the entry.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Restricts which entries under `base_dn` are accounts, e.g. `(objectClass=inetOrgPerson)`. Default:
    /// `(objectClass=<last object class>)`, or `(&(objectCategory=person)(objectClass=user))` in AD mode.
    #[serde(default)]
    pub account_filter: Option<String>,
    #[serde(default)]
    pub groups: Groups,
    #[serde(default = "default_disable")]
    pub disable: Disable,
    /// Allow passwords over a connection without TLS (tests only; never in AD mode).
    #[serde(default)]
    pub allow_plaintext_passwords: bool,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// At most this many connections (and so operations in flight) at once.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Page size of the paged-results control for searches.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub attribute: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file with the CA certificates to trust (instead of the system's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate. Only for tests.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    /// The group attribute that lists members' DNs (`member` for groupOfNames and AD groups).
    #[serde(default = "default_member_attribute")]
    pub member_attribute: String,
    #[serde(default)]
    pub read: MembershipRead,
    /// Where groups live, for `read = "search"`.
    #[serde(default)]
    pub base_dn: Option<String>,
    /// When removing the last member of a group is refused (groupOfNames needs one), put this DN in as a
    /// placeholder member in the same modify. Without it, the refusal is a `Rejected` error.
    #[serde(default)]
    pub placeholder_member: Option<String>,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            member_attribute: default_member_attribute(),
            read: MembershipRead::default(),
            base_dn: None,
            placeholder_member: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Seconds to open a connection (TCP, TLS and bind).
    #[serde(default = "default_connect")]
    pub connect_secs: u64,
    /// Seconds for one LDAP operation (a whole search page included).
    #[serde(default = "default_operation")]
    pub operation_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_secs: default_connect(),
            operation_secs: default_operation(),
        }
    }
}

fn default_member_attribute() -> String {
    "member".into()
}
fn default_disable() -> Disable {
    Disable::None
}
fn default_pool_size() -> usize {
    4
}
fn default_page_size() -> u32 {
    500
}
fn default_connect() -> u64 {
    5
}
fn default_operation() -> u64 {
    15
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("mode", &self.mode)
            .field("starttls", &self.starttls)
            .field("tls", &self.tls)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &self.bind_password.as_ref().map(|_| "**redacted**"))
            .field("bind_password_file", &self.bind_password_file)
            .field("base_dn", &self.base_dn)
            .field("dn", &self.dn)
            .field("key", &self.key)
            .field("object_classes", &self.object_classes)
            .field("attributes", &self.attributes)
            .field("account_filter", &self.account_filter)
            .field("groups", &self.groups)
            .field("disable", &self.disable)
            .field("allow_plaintext_passwords", &self.allow_plaintext_passwords)
            .field("timeouts", &self.timeouts)
            .field("pool_size", &self.pool_size)
            .field("page_size", &self.page_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        url = "ldaps://ldap.example.com"
        bind_dn = "cn=admin,dc=example,dc=com"
        bind_password = "s3cret"
        base_dn = "ou=people,dc=example,dc=com"
        dn = "uid={userName},ou=people,dc=example,dc=com"
        key = { attribute = "uid", value = "{userName}" }
        object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
        disable = { mode = "attribute", attribute = "employeeType", disabled_value = "disabled" }
        attributes = { cn = "{name.givenName} {name.familyName}", sn = "name.familyName", mail = "emails.value" }
    "#;

    #[test]
    fn parses_and_never_prints_the_password() {
        let c: Config = toml::from_str(EXAMPLE).expect("parse");
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.groups.member_attribute, "member");
        assert!(matches!(c.disable, Disable::Attribute { .. }));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>(&format!("{EXAMPLE}\nsurprise = 1")).is_err());
        let bad = EXAMPLE.replace("disabled_value = \"disabled\"", "disabled_value = \"d\", x = 1");
        assert!(toml::from_str::<Config>(&bad).is_err());
        let ppolicy = EXAMPLE.replace(
            "disable = { mode = \"attribute\", attribute = \"employeeType\", disabled_value = \"disabled\" }",
            "disable = { mode = \"ppolicy\" }",
        );
        let c: Config = toml::from_str(&ppolicy).expect("ppolicy");
        assert_eq!(c.disable, Disable::Ppolicy);
    }
}
