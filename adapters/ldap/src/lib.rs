//! The LDAP adapter: provisions scimgate accounts into OpenLDAP or Active Directory (Samba AD included) over
//! ldap3 with rustls.
//!
//! Layout:
//! - [`config`]: the `[targets.ldap]` configuration (DN template, key, object classes, the declarative attribute
//!   mapping, groups, disable mode, TLS, timeouts, pool and page sizes);
//! - [`escape`]: RFC 4514 DN and RFC 4515 filter escaping, and the DN parser used to compare DNs;
//! - `pool`: a bounded pool of bound connections, one operation per connection at a time;
//! - [`error`]: LDAP result codes and transport failures mapped onto [`AdapterError`];
//! - this file: the [`Adapter`] implementation.
//!
//! An account is addressed by its DN ([`AccountId::primary`]) and by `entryUUID` (OpenLDAP) or `objectGUID`
//! (Active Directory, in the usual `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` text form) as the secondary id. It is
//! located by the known DN, else by the secondary id, else by `(key=value)` under `base_dn`, so a retry never
//! creates a second entry. A changed DN (a renamed userName) is a modify-DN.

pub mod config;
pub mod error;
pub mod escape;
mod pool;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ldap3::{Mod, Scope, SearchEntry};
use scimgate_adapter_sdk::mapping::{Path, Template};
use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, ErrorKind, SearchPage, SearchQuery,
};
use serde_json::{Map, Value};

pub use config::Config;
use config::{Disable, MembershipRead, Mode};
use error::{Fail, rc};
use pool::{Attrs, Conn, Pool, Settings};

/// What ppolicy reads as "locked by an administrator, for good".
const PPOLICY_LOCKED: &str = "000001010000Z";
const PPOLICY_ATTR: &str = "pwdAccountLockedTime";
const UAC: &str = "userAccountControl";
/// userAccountControl ACCOUNTDISABLE.
const UAC_DISABLED: u32 = 2;
/// userAccountControl NORMAL_ACCOUNT.
const UAC_NORMAL: u32 = 512;
/// The most accounts one search page returns, whatever the caller asks.
const MAX_LIMIT: usize = 1000;

/// Where an attribute's values come from.
#[derive(Debug, Clone)]
enum Source {
    /// A SCIM path; a multi-valued attribute gives every value.
    Path(Path),
    /// A `{path}` template, one value.
    Template(Template),
}

/// The LDAP adapter.
pub struct LdapAdapter {
    cfg: Config,
    pool: Pool,
    dn: Template,
    key: Template,
    attrs: Vec<(String, Source)>,
    account_filter: String,
    /// The connection is encrypted (ldaps:// or StartTLS).
    tls: bool,
}

fn cfg_err(e: impl std::fmt::Display) -> AdapterError {
    AdapterError::config(e.to_string())
}

fn is_attr_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ';')
}

fn tls_config(ca_file: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, AdapterError> {
    let pem = std::fs::read(ca_file).map_err(|e| cfg_err(format!("tls.ca_file {}: {e}", ca_file.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| cfg_err(format!("tls.ca_file {}: {e}", ca_file.display())))?;
        roots
            .add(cert)
            .map_err(|e| cfg_err(format!("tls.ca_file {}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(cfg_err(format!(
            "tls.ca_file {} holds no certificate",
            ca_file.display()
        )));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(cfg_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl LdapAdapter {
    /// Check the configuration and build the adapter. No connection is opened until the first operation.
    pub fn new(cfg: Config) -> Result<Self, AdapterError> {
        let scheme = cfg.url.split("://").next().unwrap_or_default().to_ascii_lowercase();
        let tls = match (scheme.as_str(), cfg.starttls) {
            ("ldaps", false) => true,
            ("ldaps", true) => return Err(cfg_err("starttls makes no sense with ldaps://")),
            ("ldap", st) => st,
            _ => return Err(cfg_err(format!("url {:?} is neither ldap:// nor ldaps://", cfg.url))),
        };
        let password = match (&cfg.bind_password, &cfg.bind_password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| cfg_err(format!("bind_password_file {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            _ => {
                return Err(cfg_err(
                    "exactly one of bind_password and bind_password_file is required",
                ));
            }
        };
        let dn = Template::parse(&cfg.dn).map_err(cfg_err)?;
        if dn.paths().next().is_none() {
            return Err(cfg_err("the dn template names no attribute"));
        }
        let key = Template::parse(&cfg.key.value).map_err(cfg_err)?;
        if !is_attr_name(&cfg.key.attribute) {
            return Err(cfg_err(format!(
                "key.attribute {:?} is not an attribute name",
                cfg.key.attribute
            )));
        }
        if cfg.object_classes.is_empty() {
            return Err(cfg_err("object_classes is empty"));
        }
        let mut attrs = Vec::new();
        for (name, src) in &cfg.attributes {
            if !is_attr_name(name) {
                return Err(cfg_err(format!("attribute {name:?} is not an attribute name")));
            }
            let src = if src.contains('{') {
                Source::Template(Template::parse(src).map_err(cfg_err)?)
            } else {
                Source::Path(Path::parse(src).map_err(cfg_err)?)
            };
            attrs.push((name.clone(), src));
        }
        if cfg.mode == Mode::Ad {
            for need in ["sAMAccountName", "userPrincipalName"] {
                if !cfg.attributes.keys().any(|k| k.eq_ignore_ascii_case(need)) {
                    return Err(cfg_err(format!("AD mode needs {need} in attributes")));
                }
            }
        }
        if !(1..=64).contains(&cfg.pool_size) {
            return Err(cfg_err("pool_size must be between 1 and 64"));
        }
        if !(1..=10_000).contains(&cfg.page_size) {
            return Err(cfg_err("page_size must be between 1 and 10000"));
        }
        if cfg.groups.read == MembershipRead::Search && cfg.groups.base_dn.is_none() {
            return Err(cfg_err("groups.read = \"search\" needs groups.base_dn"));
        }
        if let Disable::Attribute { attribute, .. } = &cfg.disable
            && !is_attr_name(attribute)
        {
            return Err(cfg_err(format!(
                "disable.attribute {attribute:?} is not an attribute name"
            )));
        }
        let account_filter = match (&cfg.account_filter, cfg.mode) {
            (Some(f), _) => {
                ldap3::parse_filter(f).map_err(|_| cfg_err(format!("account_filter {f:?} is not a filter")))?;
                f.clone()
            }
            (None, Mode::Ad) => "(&(objectCategory=person)(objectClass=user))".to_string(),
            (None, Mode::Openldap) => {
                let oc = cfg.object_classes.last().map(String::as_str).unwrap_or("top");
                format!("(objectClass={})", escape::filter_value(oc))
            }
        };
        let tls_cfg = match &cfg.tls.ca_file {
            Some(f) if tls => Some(tls_config(f)?),
            _ => None,
        };
        if tls && tls_cfg.is_none() {
            // ldap3 builds its own rustls config (system roots, or no verification) from the process default
            // provider; make sure there is one.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let settings = Settings {
            url: cfg.url.clone(),
            starttls: cfg.starttls,
            tls: tls_cfg,
            insecure: cfg.tls.insecure_skip_verify,
            bind_dn: cfg.bind_dn.clone(),
            bind_password: password,
            connect_timeout: Duration::from_secs(cfg.timeouts.connect_secs.max(1)),
            op_timeout: Duration::from_secs(cfg.timeouts.operation_secs.max(1)),
        };
        let pool = Pool::new(settings, cfg.pool_size);
        Ok(LdapAdapter {
            cfg,
            pool,
            dn,
            key,
            attrs,
            account_filter,
            tls,
        })
    }

    fn secondary_name(&self) -> &'static str {
        match self.cfg.mode {
            Mode::Openldap => "entryUUID",
            Mode::Ad => "objectGUID",
        }
    }

    /// Every attribute a read asks for.
    fn read_attrs(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![self.cfg.key.attribute.clone(), self.secondary_name().to_string()];
        // The naming attribute of the DN template (`uid` in `uid={userName},…`).
        if let Some((rdn, _)) = self.cfg.dn.split_once('=')
            && is_attr_name(rdn.trim())
        {
            v.push(rdn.trim().to_string());
        }
        v.extend(self.attrs.iter().map(|(n, _)| n.clone()));
        if self.cfg.groups.read == MembershipRead::MemberOf {
            v.push("memberOf".into());
        }
        match &self.cfg.disable {
            Disable::None => {}
            Disable::Ppolicy => v.push(PPOLICY_ATTR.into()),
            Disable::Attribute { attribute, .. } => v.push(attribute.clone()),
            Disable::Ad => v.push(UAC.into()),
        }
        if self.cfg.mode == Mode::Ad && !v.iter().any(|a| a.eq_ignore_ascii_case(UAC)) {
            v.push(UAC.into());
        }
        let mut seen = HashSet::new();
        v.retain(|a| seen.insert(a.to_ascii_lowercase()));
        v
    }

    fn values(&self, src: &Source, user: &Map<String, Value>) -> Vec<String> {
        let v = match src {
            Source::Path(p) => p.texts(user),
            Source::Template(t) => t.render(user, str::to_string).into_iter().collect(),
        };
        v.into_iter().filter(|s| !s.is_empty()).collect()
    }

    fn key_value(&self, user: &Map<String, Value>) -> Result<String, AdapterError> {
        self.key.render(user, str::to_string)
    }

    fn with_filter(&self, extra: &str) -> String {
        format!("(&{}{extra})", self.account_filter)
    }

    /// The stable id of an entry, as text.
    fn secondary_of(&self, e: &SearchEntry) -> Option<String> {
        match self.cfg.mode {
            Mode::Openldap => first(e, "entryUUID").map(str::to_string),
            Mode::Ad => bytes_of(e, "objectGUID").and_then(|b| guid_text(&b)),
        }
    }

    fn secondary_filter(&self, value: &str) -> Option<String> {
        match self.cfg.mode {
            Mode::Openldap => Some(format!("(entryUUID={})", escape::filter_value(value))),
            Mode::Ad => guid_bytes(value).map(|b| format!("(objectGUID={})", escape::filter_bytes(&b))),
        }
    }

    async fn read_dn(&self, c: &mut Conn<'_>, dn: &str) -> Result<Option<SearchEntry>, Fail> {
        let filter = self.account_filter.clone();
        Ok(c.search(dn, Scope::Base, &filter, &self.read_attrs())
            .await?
            .into_iter()
            .next())
    }

    async fn find_one(&self, c: &mut Conn<'_>, filter: &str, what: &str) -> Result<Option<SearchEntry>, Fail> {
        let mut found = c
            .search(&self.cfg.base_dn, Scope::Subtree, filter, &self.read_attrs())
            .await?;
        if found.len() > 1 {
            return Err(AdapterError::new(
                ErrorKind::Conflict,
                format!("{} entries under {} match {what}", found.len(), self.cfg.base_dn),
            )
            .into());
        }
        Ok(found.pop())
    }

    /// Find the account: by the known DN, else the known stable id, else the mapped key.
    async fn locate(
        &self,
        c: &mut Conn<'_>,
        known: Option<&AccountId>,
        user: &Map<String, Value>,
    ) -> Result<Option<SearchEntry>, Fail> {
        let sec_name = self.secondary_name();
        if let Some(k) = known {
            let want_sec = k.secondary.get(sec_name);
            if !k.primary.is_empty()
                && escape::Dn::parse(&k.primary).is_ok()
                && let Some(e) = self.read_dn(c, &k.primary).await?
            {
                // The same entry, unless another account took over the DN.
                match (want_sec, self.secondary_of(&e)) {
                    (Some(w), Some(h)) if !w.eq_ignore_ascii_case(&h) => {}
                    _ => return Ok(Some(e)),
                }
            }
            if let Some(f) = want_sec.and_then(|s| self.secondary_filter(s))
                && let Some(e) = self.find_one(c, &self.with_filter(&f), sec_name).await?
            {
                return Ok(Some(e));
            }
        }
        let key = self.key_value(user)?;
        let f = format!("({}={})", self.cfg.key.attribute, escape::filter_value(&key));
        self.find_one(c, &self.with_filter(&f), &self.cfg.key.attribute).await
    }

    /// The groups an entry belongs to (all of them, managed or not).
    async fn groups_of(&self, c: &mut Conn<'_>, e: &SearchEntry) -> Result<BTreeSet<String>, Fail> {
        match (&self.cfg.groups.read, &self.cfg.groups.base_dn) {
            (MembershipRead::Search, Some(base)) => {
                let f = format!("({}={})", self.cfg.groups.member_attribute, escape::filter_value(&e.dn));
                let found = c.search(base, Scope::Subtree, &f, &["1.1".to_string()]).await?;
                Ok(found.into_iter().map(|g| g.dn).collect())
            }
            _ => Ok(all(e, "memberOf").iter().cloned().collect()),
        }
    }

    fn enabled_of(&self, e: &SearchEntry) -> Option<bool> {
        match &self.cfg.disable {
            Disable::None => None,
            Disable::Ppolicy => Some(all(e, PPOLICY_ATTR).is_empty()),
            Disable::Attribute {
                attribute,
                disabled_value,
                ..
            } => Some(!all(e, attribute).iter().any(|v| v.eq_ignore_ascii_case(disabled_value))),
            Disable::Ad => Some(uac_of(e) & UAC_DISABLED == 0),
        }
    }

    fn account_id(&self, e: &SearchEntry) -> AccountId {
        let id = AccountId::new(e.dn.clone());
        match self.secondary_of(e) {
            Some(s) => id.with(self.secondary_name(), s),
            None => id,
        }
    }

    async fn to_account(&self, c: &mut Conn<'_>, e: &SearchEntry) -> Result<Account, Fail> {
        let mut attributes = BTreeMap::new();
        for (k, v) in &e.attrs {
            if k.eq_ignore_ascii_case("memberOf") {
                continue;
            }
            attributes.insert(k.clone(), v.clone());
        }
        if let Some(s) = self.secondary_of(e) {
            attributes.insert(self.secondary_name().to_string(), vec![s]);
        }
        Ok(Account {
            id: self.account_id(e),
            attributes,
            entitlements: self.groups_of(c, e).await?,
            enabled: self.enabled_of(e),
        })
    }

    fn password_value(&self, d: &DesiredAccount) -> Result<Option<(String, Vec<u8>)>, AdapterError> {
        let Some(pw) = &d.password else { return Ok(None) };
        if !self.tls && (self.cfg.mode == Mode::Ad || !self.cfg.allow_plaintext_passwords) {
            return Err(AdapterError::config(
                "refusing to send a password over a connection without TLS (use ldaps:// or starttls)",
            ));
        }
        Ok(Some(match self.cfg.mode {
            Mode::Ad => ("unicodePwd".to_string(), unicode_pwd(pw.expose())),
            Mode::Openldap => ("userPassword".to_string(), pw.expose().as_bytes().to_vec()),
        }))
    }

    /// Desired values of every mapped attribute (the key attribute included), in configuration order.
    fn desired_attrs(&self, d: &DesiredAccount, key: &str) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .attrs
            .iter()
            .map(|(n, s)| (n.clone(), self.values(s, &d.user)))
            .collect();
        if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&self.cfg.key.attribute)) {
            out.push((self.cfg.key.attribute.clone(), vec![key.to_string()]));
        }
        out
    }

    async fn create(
        &self,
        c: &mut Conn<'_>,
        dn: &str,
        d: &DesiredAccount,
        key: &str,
        password: Option<(String, Vec<u8>)>,
    ) -> Result<(), Fail> {
        let mut attrs: Attrs = Vec::new();
        let set = |vals: Vec<String>| vals.into_iter().map(String::into_bytes).collect::<HashSet<_>>();
        attrs.push((b"objectClass".to_vec(), set(self.cfg.object_classes.clone())));
        let mut named: Vec<(String, Vec<String>)> = self.desired_attrs(d, key);
        // The naming attribute must hold the RDN's value.
        if let Some((rdn_attr, rdn_val)) = escape::Dn::parse(dn).ok().and_then(|p| p.leaf().cloned()) {
            match named.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&rdn_attr)) {
                Some((_, vals)) if !vals.iter().any(|v| v.eq_ignore_ascii_case(&rdn_val)) => vals.push(rdn_val),
                Some(_) => {}
                None => named.push((rdn_attr, vec![rdn_val])),
            }
        }
        for (name, vals) in named {
            if !vals.is_empty() {
                attrs.push((name.into_bytes(), set(vals)));
            }
        }
        match (&self.cfg.disable, d.enabled) {
            (
                Disable::Attribute {
                    attribute,
                    disabled_value,
                    ..
                },
                false,
            ) => {
                attrs.push((attribute.clone().into_bytes(), set(vec![disabled_value.clone()])));
            }
            (
                Disable::Attribute {
                    attribute,
                    enabled_value: Some(v),
                    ..
                },
                true,
            ) => {
                attrs.push((attribute.clone().into_bytes(), set(vec![v.clone()])));
            }
            _ => {}
        }
        if self.cfg.mode == Mode::Ad {
            let uac = if d.enabled {
                UAC_NORMAL
            } else {
                UAC_NORMAL | UAC_DISABLED
            };
            attrs.push((UAC.as_bytes().to_vec(), set(vec![uac.to_string()])));
        }
        if let Some((name, value)) = password {
            attrs.push((name.into_bytes(), HashSet::from([value])));
        }
        c.add(dn, attrs).await?;
        if matches!(self.cfg.disable, Disable::Ppolicy) && !d.enabled {
            c.modify(dn, vec![replace(PPOLICY_ATTR, vec![PPOLICY_LOCKED.to_string()])])
                .await?;
        }
        tracing::info!(dn = %dn, "LDAP account created");
        Ok(())
    }

    /// Bring an existing entry's attributes, enabled state and password in line.
    async fn update(
        &self,
        c: &mut Conn<'_>,
        e: &SearchEntry,
        d: &DesiredAccount,
        key: &str,
        password: Option<(String, Vec<u8>)>,
    ) -> Result<(), Fail> {
        let rdn_attr = escape::Dn::parse(&e.dn)
            .ok()
            .and_then(|p| p.leaf().map(|(a, _)| a.clone()));
        let mut mods = Vec::new();
        for (name, want) in self.desired_attrs(d, key) {
            // The naming attribute follows the DN (modify-DN keeps it right).
            if rdn_attr.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(&name)) {
                continue;
            }
            let held = all(e, &name);
            let same = want.len() == held.len() && want.iter().all(|w| held.contains(w));
            if !same {
                mods.push(replace(&name, want));
            }
        }
        match &self.cfg.disable {
            Disable::None => {}
            Disable::Ppolicy => match (d.enabled, all(e, PPOLICY_ATTR).is_empty()) {
                (false, true) => mods.push(replace(PPOLICY_ATTR, vec![PPOLICY_LOCKED.into()])),
                (true, false) => mods.push(replace(PPOLICY_ATTR, vec![])),
                _ => {}
            },
            Disable::Attribute {
                attribute,
                disabled_value,
                enabled_value,
            } => {
                let want: Vec<String> = if d.enabled {
                    enabled_value.iter().cloned().collect()
                } else {
                    vec![disabled_value.clone()]
                };
                let held = all(e, attribute);
                if !(want.len() == held.len() && want.iter().all(|w| held.iter().any(|h| h.eq_ignore_ascii_case(w)))) {
                    mods.push(replace(attribute, want));
                }
            }
            Disable::Ad => {
                let held = uac_of(e);
                let want = if d.enabled {
                    held & !UAC_DISABLED
                } else {
                    held | UAC_DISABLED
                };
                if want != held {
                    mods.push(replace(UAC, vec![want.to_string()]));
                }
            }
        }
        if let Some((name, value)) = password {
            mods.push(Mod::Replace(name.into_bytes(), HashSet::from([value])));
        }
        if !mods.is_empty() {
            let n = mods.len();
            c.modify(&e.dn, mods).await?;
            tracing::info!(dn = %e.dn, changes = n, "LDAP account updated");
        }
        Ok(())
    }

    /// Rename (and move) the entry when its DN is not the desired one.
    async fn rename(&self, c: &mut Conn<'_>, from: &str, to: &str) -> Result<(), Fail> {
        let (rdn, parent) = escape::split_leaf(to);
        let (_, old_parent) = escape::split_leaf(from);
        let new_parent = (!escape::same_dn(parent, old_parent)).then_some(parent);
        match c.modify_dn(from, rdn, new_parent).await {
            Err(f) if f.rc() == Some(rc::ENTRY_ALREADY_EXISTS) => Err(AdapterError::new(
                ErrorKind::Conflict,
                format!("cannot rename {from} to {to}: another entry holds that DN"),
            )
            .into()),
            r => {
                if r.is_ok() {
                    tracing::info!(from = %from, to = %to, "LDAP account renamed");
                }
                r
            }
        }
    }

    async fn add_member(&self, c: &mut Conn<'_>, group: &str, member: &str) -> Result<(), Fail> {
        let attr = &self.cfg.groups.member_attribute;
        match c.modify(group, vec![add(attr, vec![member.to_string()])]).await {
            Err(f) if f.rc() == Some(rc::ATTRIBUTE_OR_VALUE_EXISTS) => Ok(()),
            Err(f) if f.rc() == Some(rc::NO_SUCH_OBJECT) => {
                Err(AdapterError::rejected(format!("the group {group} does not exist")).into())
            }
            r => r,
        }
    }

    async fn remove_member(&self, c: &mut Conn<'_>, group: &str, member: &str) -> Result<(), Fail> {
        let attr = &self.cfg.groups.member_attribute;
        let del = || Mod::Delete(attr.clone().into_bytes(), HashSet::from([member.as_bytes().to_vec()]));
        match c.modify(group, vec![del()]).await {
            Err(f) if matches!(f.rc(), Some(rc::NO_SUCH_ATTRIBUTE | rc::NO_SUCH_OBJECT)) => Ok(()),
            Err(f) if matches!(f.rc(), Some(rc::OBJECT_CLASS_VIOLATION | rc::CONSTRAINT_VIOLATION)) => {
                // The group would be left without members, which its object class forbids.
                let Some(p) = &self.cfg.groups.placeholder_member else {
                    return Err(AdapterError::rejected(format!(
                        "cannot remove the last member of {group} (set groups.placeholder_member): {f}"
                    ))
                    .into());
                };
                match c.modify(group, vec![add(attr, vec![p.clone()]), del()]).await {
                    Err(f) if f.rc() == Some(rc::NO_SUCH_ATTRIBUTE) => Ok(()),
                    r => r,
                }
            }
            r => r,
        }
    }

    /// Add the wanted entitlements, remove the managed ones not wanted.
    async fn sync_groups(
        &self,
        c: &mut Conn<'_>,
        dn: &str,
        held: &BTreeSet<String>,
        d: &DesiredAccount,
        unsure: bool,
    ) -> Result<(), Fail> {
        let held: BTreeSet<String> = held.iter().map(|g| escape::canonical(g)).collect();
        let want: BTreeSet<String> = d.entitlements.iter().map(|g| escape::canonical(g)).collect();
        // `unsure`: the read of `held` may be stale (after a rename), so add and remove regardless; both are
        // idempotent.
        for g in &d.entitlements {
            if unsure || !held.contains(&escape::canonical(g)) {
                self.add_member(c, g, dn).await?;
                tracing::info!(dn = %dn, group = %g, "LDAP membership added");
            }
        }
        for g in &d.managed {
            let cg = escape::canonical(g);
            if (unsure || held.contains(&cg)) && !want.contains(&cg) {
                self.remove_member(c, g, dn).await?;
                tracing::info!(dn = %dn, group = %g, "LDAP membership removed");
            }
        }
        Ok(())
    }

    async fn apply_in(
        &self,
        c: &mut Conn<'_>,
        known: Option<&AccountId>,
        d: &DesiredAccount,
    ) -> Result<AccountId, Fail> {
        let dn = self.dn.render(&d.user, escape::dn_value)?;
        let key = self.key_value(&d.user)?;
        let password = self.password_value(d)?;
        let (entry, held, renamed_from) = match self.locate(c, known, &d.user).await? {
            None => match self.create(c, &dn, d, &key, password.clone()).await {
                Ok(()) => (None, BTreeSet::new(), None),
                // Someone (an earlier try, a concurrent worker) made it between our search and our add.
                Err(f) if f.rc() == Some(rc::ENTRY_ALREADY_EXISTS) => match self.read_dn(c, &dn).await? {
                    Some(e) => {
                        let held = self.groups_of(c, &e).await?;
                        (Some(e), held, None)
                    }
                    None => return Err(f),
                },
                Err(f) => return Err(f),
            },
            Some(e) => {
                let held = self.groups_of(c, &e).await?;
                if escape::same_dn(&e.dn, &dn) {
                    (Some(e), held, None)
                } else {
                    self.rename(c, &e.dn, &dn).await?;
                    (None, held, Some(e))
                }
            }
        };
        let current = match entry {
            Some(e) => e,
            None => self.read_dn(c, &dn).await?.ok_or_else(|| {
                AdapterError::new(
                    ErrorKind::Other,
                    format!("{dn} is not readable right after it was written"),
                )
            })?,
        };
        self.update(c, &current, d, &key, password).await?;
        let renamed = renamed_from.is_some();
        if let Some(old) = renamed_from {
            // Memberships hold DNs: take the old DN out of every managed group (without a refint overlay it stays
            // behind), then set the new DN's memberships without trusting the (possibly stale) read.
            for g in &d.managed {
                self.remove_member(c, g, &old.dn).await?;
            }
        }
        self.sync_groups(c, &current.dn, &held, d, renamed).await?;
        Ok(self.account_id(&current))
    }
}

fn replace(name: &str, vals: Vec<String>) -> Mod<Vec<u8>> {
    Mod::Replace(
        name.as_bytes().to_vec(),
        vals.into_iter().map(String::into_bytes).collect(),
    )
}

fn add(name: &str, vals: Vec<String>) -> Mod<Vec<u8>> {
    Mod::Add(
        name.as_bytes().to_vec(),
        vals.into_iter().map(String::into_bytes).collect(),
    )
}

/// Every value of an attribute (names compare case-insensitively).
fn all<'e>(e: &'e SearchEntry, name: &str) -> &'e [String] {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default()
}

fn first<'e>(e: &'e SearchEntry, name: &str) -> Option<&'e str> {
    all(e, name).first().map(String::as_str)
}

fn bytes_of(e: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    e.bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first().cloned())
        .or_else(|| first(e, name).map(|s| s.as_bytes().to_vec()))
}

fn uac_of(e: &SearchEntry) -> u32 {
    first(e, UAC)
        .and_then(|v| v.parse::<i64>().ok())
        .map(|v| v as u32)
        .unwrap_or(UAC_NORMAL)
}

/// `unicodePwd`: the password in double quotes, UTF-16LE.
fn unicode_pwd(pw: &str) -> Vec<u8> {
    format!("\"{pw}\"").encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// An AD objectGUID (16 bytes, the first three fields little-endian) in its text form.
fn guid_text(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    Some(format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    ))
}

fn guid_bytes(text: &str) -> Option<Vec<u8>> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let raw: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    Some(order.iter().map(|&i| raw[i]).collect())
}

/// A search cursor: the last (lowercased key, canonical DN) returned.
fn encode_cursor(key: &str, dn: &str) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::json!([key, dn]).to_string())
}

fn decode_cursor(c: &str) -> Result<(String, String), AdapterError> {
    let bad = || AdapterError::rejected("not a cursor this adapter issued");
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let (k, d): (String, String) = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((k, d))
}

#[async_trait]
impl Adapter for LdapAdapter {
    fn kind(&self) -> &'static str {
        "ldap"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            disable: !matches!(self.cfg.disable, Disable::None),
            groups: true,
            passwords: self.tls || (self.cfg.mode == Mode::Openldap && self.cfg.allow_plaintext_passwords),
            search_filters: true,
            max_batch: 1,
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        let mut c = self.pool.lease().await?;
        c.search("", Scope::Base, "(objectClass=*)", &["1.1".to_string()])
            .await?;
        Ok(())
    }

    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError> {
        // Refuse bad data and unsafe passwords before touching the network.
        self.dn.render(&desired.user, escape::dn_value)?;
        self.key_value(&desired.user)?;
        self.password_value(desired)?;
        let mut c = self.pool.lease().await?;
        let r = self.apply_in(&mut c, known, desired).await;
        if let Err(f) = &r {
            tracing::warn!(identity = %desired.identity_id, error = %f, "LDAP apply failed");
        }
        Ok(r?)
    }

    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError> {
        let mut c = self.pool.lease().await?;
        let Some(e) = self.locate(&mut c, known, &desired.user).await? else {
            return Ok(());
        };
        let held = self.groups_of(&mut c, &e).await?;
        for g in &desired.managed {
            if held.iter().any(|h| escape::same_dn(h, g)) {
                self.remove_member(&mut c, g, &e.dn).await?;
            }
        }
        match c.delete(&e.dn).await {
            Err(f) if f.rc() == Some(rc::NO_SUCH_OBJECT) => Ok(()),
            Err(f) => Err(f.into()),
            Ok(()) => {
                tracing::info!(dn = %e.dn, "LDAP account removed");
                Ok(())
            }
        }
    }

    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        let mut c = self.pool.lease().await?;
        let Some(e) = self.locate(&mut c, known, &desired.user).await? else {
            return Ok(None);
        };
        Ok(Some(self.to_account(&mut c, &e).await?))
    }

    /// Accounts ordered by (lowercased key, DN). Each page streams the accounts under `base_dn` with the
    /// paged-results control and keeps the `limit` smallest after the cursor, so a cursor is stateless (it is the
    /// last key and DN returned) and survives reconnects, at the cost of one pass over the accounts per page.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let key_attr = self.cfg.key.attribute.clone();
        let mut extra = format!("({key_attr}=*)");
        if let Some((attr, value)) = &query.filter {
            if !is_attr_name(attr) {
                return Err(AdapterError::rejected(format!("{attr:?} is not an attribute name")));
            }
            extra.push_str(&format!("({attr}={})", escape::filter_value(value)));
        }
        let filter = self.with_filter(&extra);
        let mut c = self.pool.lease().await?;
        let mut best: BTreeMap<(String, String), SearchEntry> = BTreeMap::new();
        let mut more = false;
        c.search_paged(
            &self.cfg.base_dn,
            &filter,
            &self.read_attrs(),
            self.cfg.page_size,
            |e| {
                let k = (
                    first(&e, &key_attr).unwrap_or_default().to_lowercase(),
                    escape::canonical(&e.dn),
                );
                if after.as_ref().is_some_and(|a| &k <= a) {
                    return;
                }
                best.insert(k, e);
                if best.len() > limit {
                    best.pop_last();
                    more = true;
                }
            },
        )
        .await?;
        let next = if more {
            best.keys().next_back().map(|(k, d)| encode_cursor(k, d))
        } else {
            None
        };
        let mut accounts = Vec::with_capacity(best.len());
        for e in best.values() {
            accounts.push(self.to_account(&mut c, e).await?);
        }
        Ok(SearchPage { accounts, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_pwd_is_quoted_utf16le() {
        assert_eq!(unicode_pwd("ab"), vec![b'"', 0, b'a', 0, b'b', 0, b'"', 0]);
    }

    #[test]
    fn guids_round_trip() {
        let raw: Vec<u8> = (0u8..16).collect();
        let t = guid_text(&raw).expect("16 bytes");
        assert_eq!(t, "03020100-0504-0706-0809-0a0b0c0d0e0f");
        assert_eq!(guid_bytes(&t), Some(raw));
        assert_eq!(guid_bytes("nope"), None);
    }

    #[test]
    fn cursors_round_trip() {
        let c = encode_cursor("a,b=c*(\\)", "uid=x,dc=y");
        assert_eq!(
            decode_cursor(&c).expect("cursor"),
            ("a,b=c*(\\)".into(), "uid=x,dc=y".into())
        );
        assert!(decode_cursor("!!").is_err());
    }

    fn base() -> Config {
        toml::from_str(
            r#"
            url = "ldap://127.0.0.1:1"
            bind_dn = "cn=admin,dc=x"
            bind_password = "pw"
            base_dn = "dc=x"
            dn = "uid={userName},dc=x"
            key = { attribute = "uid", value = "{userName}" }
            object_classes = ["inetOrgPerson"]
            attributes = { sn = "name.familyName", cn = "{name.givenName} {name.familyName}" }
            "#,
        )
        .expect("config")
    }

    #[test]
    fn configuration_is_checked() {
        assert!(LdapAdapter::new(base()).is_ok());
        let mut c = base();
        c.url = "http://x".into();
        assert_eq!(LdapAdapter::new(c).err().map(|e| e.kind), Some(ErrorKind::Config));
        let mut c = base();
        c.mode = Mode::Ad;
        assert!(LdapAdapter::new(c).is_err(), "AD mode without sAMAccountName");
        let mut c = base();
        c.bind_password_file = Some("/nonexistent".into());
        assert!(LdapAdapter::new(c).is_err(), "two passwords");
    }

    #[tokio::test]
    async fn passwords_never_go_in_clear() {
        let a = LdapAdapter::new(base()).expect("adapter");
        let d = DesiredAccount {
            user: scimgate_adapter_sdk::compliance::user_doc("1", "ada", "Ada", "L"),
            password: Some(scimgate_adapter_sdk::Secret::new("pw-secret")),
            enabled: true,
            ..Default::default()
        };
        let e = a.apply(None, &d).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(!e.message.contains("pw-secret"));
        assert!(!a.capabilities().passwords);
    }
}
