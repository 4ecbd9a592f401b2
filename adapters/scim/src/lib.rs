//! The SCIM outbound adapter: pushes users and their group memberships to a downstream SCIM 2.0 service.
//!
//! Layout:
//! - [`config`]: the TOML under `[targets.scim]`;
//! - [`filter`]: SCIM filter literals, escaped;
//! - [`error`]: SCIM error responses → [`AdapterError`];
//! - the HTTP client (allow-listed hosts, no redirects, timeouts, bounded bodies, bearer/basic/OAuth2) is the REST
//!   adapter's [`scimgate_adapter_rest::http`].
//!
//! `apply` finds the downstream user by `externalId`, then `userName` (so a retry never creates a second one),
//! creates it with POST when absent, else PATCHes only the attributes that differ (PUT where the service has no
//! PATCH), sets `active=false` to disable, and keeps the user's membership of managed groups (by displayName) in
//! step with PATCH `add members` / `remove members[value eq "…"]`. `remove` drops managed memberships first
//! (some services leave dangling members behind a deleted user), then DELETEs the user.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod filter;

use scimgate_adapter_sdk::mapping::scalar as text;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use scimgate_adapter_rest::http::{self, Client};
use scimgate_adapter_rest::template::encode_component;
use scimgate_adapter_sdk::mapping::Path;
use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, ErrorKind, SearchPage, SearchQuery,
};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;
use url::Url;

pub use config::Config;
use config::{CORE_USER, MatchBy, UpdateMethod};

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Pages read when listing a user's groups (at most this many × `max_page_size` groups).
const MAX_GROUP_PAGES: usize = 50;

/// A downstream SCIM service.
pub struct ScimAdapter {
    client: Client,
    external_id: Path,
    match_by: Vec<MatchBy>,
    attributes: Vec<String>,
    passwords: bool,
    groups: bool,
    create_groups: bool,
    update_method: UpdateMethod,
    max_page_size: usize,
    patch: OnceCell<bool>,
}

/// A downstream group: id and displayName.
#[derive(Debug, Clone)]
struct Group {
    id: String,
    name: String,
}

fn get_ci<'m>(m: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    m.get(key)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn is_urn(attr: &str) -> bool {
    attr.len() > 4 && attr[..4].eq_ignore_ascii_case("urn:")
}

/// `want` is already what `have` holds: objects by their keys (a null in `want` matches an absent key), arrays
/// element by element, strings exactly.
fn contains(have: Option<&Value>, want: &Value) -> bool {
    match (have, want) {
        (None | Some(Value::Null), Value::Null) => true,
        (None, _) => false,
        (Some(Value::Object(h)), Value::Object(w)) => w.iter().all(|(k, v)| contains(get_ci(h, k), v)),
        (Some(Value::Array(h)), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(h, w)| contains(Some(h), w))
        }
        (Some(h), w) => h == w,
    }
}

fn id_of(resource: &Value) -> Option<String> {
    resource
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn str_at<'v>(resource: &'v Value, key: &str) -> Option<&'v str> {
    resource
        .as_object()
        .and_then(|o| get_ci(o, key))
        .and_then(Value::as_str)
}

/// Attributes of a SCIM resource: `userName`, `name.familyName`, `emails` (their values), `urn:…:User:department`.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Vec<String>>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if prefix.is_empty() && (k == "schemas" || k == "meta") {
                    continue;
                }
                let name = match prefix {
                    "" => k.clone(),
                    p if is_urn(p) => format!("{p}:{k}"),
                    p => format!("{p}.{k}"),
                };
                flatten(&name, v, out);
            }
        }
        Value::Array(a) if !prefix.is_empty() => {
            let vals = a
                .iter()
                .filter_map(|i| match i {
                    Value::Object(o) => o.get("value").and_then(text),
                    i => text(i),
                })
                .collect();
            out.insert(prefix.to_string(), vals);
        }
        v if !prefix.is_empty() => {
            if let Some(t) = text(v) {
                out.insert(prefix.to_string(), vec![t]);
            }
        }
        _ => {}
    }
}

impl ScimAdapter {
    pub fn new(cfg: Config) -> Result<ScimAdapter, AdapterError> {
        let base = Url::parse(cfg.base_url.trim())
            .map_err(|e| AdapterError::config(format!("base_url {:?} is not a URL: {e}", cfg.base_url)))?;
        let mut hosts = cfg.allowed_hosts.clone();
        hosts.push(match base.port() {
            Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_string(),
        });
        let client = Client::new(&http::Settings {
            base_url: cfg.base_url.clone(),
            allowed_hosts: hosts,
            allow_http: cfg.allow_http,
            auth: cfg.auth.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs.clamp(1, 600)),
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs.clamp(1, 120)),
            max_response_bytes: cfg.max_response_bytes.clamp(1024, 256 * 1024 * 1024),
            media_type: "application/scim+json".into(),
        })?;
        if !cfg.attributes.iter().any(|a| a.eq_ignore_ascii_case("userName")) {
            return Err(AdapterError::config("attributes must include userName"));
        }
        for a in &cfg.attributes {
            if !filter::is_attr_path(a) || (!is_urn(a) && a.contains(['.', ':'])) {
                return Err(AdapterError::config(format!(
                    "attribute {a:?} is not a top-level attribute name or an extension URN"
                )));
            }
            if ["id", "meta", "schemas", "groups", "password", "active", "externalId"]
                .iter()
                .any(|r| r.eq_ignore_ascii_case(a))
            {
                return Err(AdapterError::config(format!(
                    "attribute {a:?} is managed by the adapter itself"
                )));
            }
        }
        if cfg.match_by.is_empty() {
            return Err(AdapterError::config("match_by needs externalId, userName or both"));
        }
        Ok(ScimAdapter {
            client,
            external_id: Path::parse(&cfg.external_id).map_err(|e| AdapterError::config(e.to_string()))?,
            match_by: cfg.match_by,
            attributes: cfg.attributes,
            passwords: cfg.passwords,
            groups: cfg.groups,
            create_groups: cfg.create_groups,
            update_method: cfg.update_method,
            max_page_size: cfg.max_page_size.clamp(1, 1000),
            patch: OnceCell::new(),
        })
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, AdapterError> {
        let mut u = self.client.resolve(path)?;
        if !query.is_empty() {
            let mut q = u.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        Ok(u)
    }

    fn resource_url(&self, kind: &str, id: &str) -> Result<Url, AdapterError> {
        self.url(&format!("/{kind}/{}", encode_component(id)), &[])
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        what: &str,
    ) -> Result<http::Response, AdapterError> {
        self.client.send(method, url, body).await.map_err(|mut e| {
            e.message = format!("{what}: {}", e.message);
            e
        })
    }

    /// One page of a list: (totalResults, Resources).
    async fn list(
        &self,
        kind: &str,
        filter: Option<&str>,
        start: usize,
        count: usize,
    ) -> Result<(usize, Vec<Value>), AdapterError> {
        let (s, c) = (start.to_string(), count.to_string());
        let mut q = vec![("startIndex", s.as_str()), ("count", c.as_str())];
        if let Some(f) = filter {
            q.push(("filter", f));
        }
        let url = self.url(&format!("/{kind}"), &q)?;
        let body = error::check(self.send(Method::GET, &url, None, "list").await?, "list")?
            .body
            .unwrap_or(Value::Null);
        let resources = match body.get("Resources") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) => vec![],
            Some(_) => return Err(AdapterError::rejected(format!("/{kind}: Resources is not a list"))),
        };
        let total = body
            .get("totalResults")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(resources.len());
        Ok((total, resources))
    }

    async fn get_user(&self, id: &str) -> Result<Option<Value>, AdapterError> {
        let r = self
            .send(Method::GET, &self.resource_url("Users", id)?, None, "get user")
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(error::check(r, "get user")?.body)
    }

    fn keys(&self, d: &DesiredAccount) -> Result<(String, String), AdapterError> {
        let user_name = d.user_name().to_string();
        if user_name.is_empty() {
            return Err(AdapterError::rejected("the user has no userName"));
        }
        let ext = self
            .external_id
            .text(&d.user)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| AdapterError::rejected("the user has no value for the downstream externalId"))?;
        Ok((user_name, ext))
    }

    /// The downstream user: by the known id when it is still this user, else by externalId, then userName.
    async fn locate(
        &self,
        known: Option<&AccountId>,
        user_name: &str,
        ext: &str,
    ) -> Result<Option<Value>, AdapterError> {
        let ours = |r: &Value| {
            str_at(r, "externalId") == Some(ext)
                || str_at(r, "userName").is_some_and(|u| u.eq_ignore_ascii_case(user_name))
        };
        if let Some(k) = known.filter(|k| !k.primary.is_empty())
            && let Some(r) = self.get_user(&k.primary).await?
        {
            if ours(&r) {
                return Ok(Some(r));
            }
            tracing::info!(id = %k.primary, "the known id now names another user; finding by key");
        }
        for m in &self.match_by {
            let (attr, value) = match m {
                MatchBy::ExternalId => ("externalId", ext),
                MatchBy::UserName => ("userName", user_name),
            };
            let (_, found) = self.list("Users", Some(&filter::eq(attr, value)), 1, 10).await?;
            let hits: Vec<Value> = found
                .into_iter()
                .filter(|r| match m {
                    MatchBy::ExternalId => str_at(r, "externalId") == Some(ext),
                    MatchBy::UserName => str_at(r, "userName").is_some_and(|u| u.eq_ignore_ascii_case(user_name)),
                })
                .collect();
            match hits.len() {
                0 => continue,
                1 => return Ok(hits.into_iter().next()),
                n => {
                    return Err(AdapterError::new(
                        ErrorKind::Conflict,
                        format!("{n} downstream users match {attr} {value:?}"),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// The user as it should be downstream (no id, no password).
    fn desired_doc(&self, d: &DesiredAccount, ext: &str) -> Map<String, Value> {
        let mut doc = Map::new();
        let mut schemas = vec![Value::String(CORE_USER.into())];
        for a in &self.attributes {
            let Some(v) = get_ci(&d.user, a).filter(|v| !v.is_null()) else {
                continue;
            };
            if is_urn(a) {
                schemas.push(Value::String(a.clone()));
            }
            doc.insert(a.clone(), v.clone());
        }
        doc.insert("externalId".into(), Value::String(ext.into()));
        doc.insert("active".into(), Value::Bool(d.enabled));
        doc.insert("schemas".into(), Value::Array(schemas));
        doc
    }

    async fn supports_patch(&self) -> Result<bool, AdapterError> {
        match self.update_method {
            UpdateMethod::Patch => return Ok(true),
            UpdateMethod::Put => return Ok(false),
            UpdateMethod::Auto => {}
        }
        self.patch
            .get_or_try_init(|| async {
                let r = self
                    .send(
                        Method::GET,
                        &self.url("/ServiceProviderConfig", &[])?,
                        None,
                        "service provider config",
                    )
                    .await?;
                let body = error::check(r, "service provider config")?.body.unwrap_or(Value::Null);
                Ok(body
                    .pointer("/patch/supported")
                    .and_then(Value::as_bool)
                    .unwrap_or(false))
            })
            .await
            .copied()
    }

    /// PATCH the attributes that differ (or PUT the whole user when PATCH is not there).
    async fn update(&self, current: &Value, doc: &Map<String, Value>, d: &DesiredAccount) -> Result<(), AdapterError> {
        let id = id_of(current).ok_or_else(|| AdapterError::rejected("a downstream user has no id"))?;
        let url = self.resource_url("Users", &id)?;
        let cur = current.as_object().cloned().unwrap_or_default();
        let password = d.password.as_ref().filter(|_| self.passwords);
        if !self.supports_patch().await? {
            let mut full = doc.clone();
            full.insert("id".into(), Value::String(id));
            if let Some(p) = password {
                full.insert("password".into(), Value::String(p.expose().to_string()));
            }
            error::check(
                self.send(Method::PUT, &url, Some(&Value::Object(full)), "replace user")
                    .await?,
                "replace user",
            )?;
            return Ok(());
        }
        let mut ops = Vec::new();
        for (k, want) in doc {
            if k == "schemas" {
                continue;
            }
            let have = get_ci(&cur, k);
            if contains(have, want) {
                continue;
            }
            match (is_urn(k), want.as_object()) {
                (true, Some(w)) => {
                    for (sk, sv) in w {
                        if !contains(have.and_then(Value::as_object).and_then(|h| get_ci(h, sk)), sv) {
                            ops.push(json!({"op": "replace", "path": format!("{k}:{sk}"), "value": sv}));
                        }
                    }
                }
                _ => ops.push(json!({"op": "replace", "path": k, "value": want})),
            }
        }
        // Attributes we manage that the user no longer has.
        for a in &self.attributes {
            let have = get_ci(&cur, a);
            match (have, doc.get(a)) {
                (Some(h), None) if !h.is_null() => ops.push(json!({"op": "remove", "path": a})),
                (Some(Value::Object(h)), Some(Value::Object(w))) if is_urn(a) => {
                    for sk in h.keys().filter(|sk| get_ci(w, sk).is_none()) {
                        ops.push(json!({"op": "remove", "path": format!("{a}:{sk}")}));
                    }
                }
                _ => {}
            }
        }
        if let Some(p) = password {
            ops.push(json!({"op": "replace", "path": "password", "value": p.expose()}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        if doc.get("schemas") != cur.get("schemas") && doc.keys().any(|k| is_urn(k)) {
            ops.push(json!({"op": "replace", "path": "schemas", "value": doc.get("schemas")}));
        }
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        error::check(
            self.send(Method::PATCH, &url, Some(&body), "patch user").await?,
            "patch user",
        )?;
        Ok(())
    }

    async fn create(&self, doc: &Map<String, Value>, d: &DesiredAccount) -> Result<String, AdapterError> {
        let mut body = doc.clone();
        if let Some(p) = d.password.as_ref().filter(|_| self.passwords) {
            body.insert("password".into(), Value::String(p.expose().to_string()));
        }
        let r = self
            .send(
                Method::POST,
                &self.url("/Users", &[])?,
                Some(&Value::Object(body)),
                "create user",
            )
            .await?;
        let created = error::check(r, "create user")?.body.unwrap_or(Value::Null);
        id_of(&created).ok_or_else(|| AdapterError::rejected("create user: the response has no id"))
    }

    /// The groups the user is a member of: the resource's `groups` when the service fills it in, else the groups
    /// whose members hold the user's id.
    async fn held_groups(&self, user_id: &str, resource: Option<&Value>) -> Result<Vec<Group>, AdapterError> {
        if let Some(Value::Array(gs)) = resource.and_then(|r| r.as_object()).and_then(|o| get_ci(o, "groups")) {
            return Ok(gs
                .iter()
                .filter_map(|g| {
                    Some(Group {
                        id: g.get("value")?.as_str()?.to_string(),
                        name: g.get("display")?.as_str()?.to_string(),
                    })
                })
                .collect());
        }
        let f = filter::eq("members.value", user_id);
        let mut out = Vec::new();
        let mut start = 1;
        for _ in 0..MAX_GROUP_PAGES {
            let (total, page) = self.list("Groups", Some(&f), start, self.max_page_size).await?;
            let n = page.len();
            out.extend(page.iter().filter_map(|g| {
                Some(Group {
                    id: id_of(g)?,
                    name: str_at(g, "displayName")?.to_string(),
                })
            }));
            start += n;
            if n == 0 || start > total {
                break;
            }
        }
        Ok(out)
    }

    async fn find_group(&self, name: &str) -> Result<Option<Group>, AdapterError> {
        let (_, found) = self
            .list("Groups", Some(&filter::eq("displayName", name)), 1, 10)
            .await?;
        let mut hits = found
            .iter()
            .filter(|g| str_at(g, "displayName").is_some_and(|n| n.eq_ignore_ascii_case(name)));
        let first = hits.next().and_then(|g| {
            Some(Group {
                id: id_of(g)?,
                name: str_at(g, "displayName")?.to_string(),
            })
        });
        if hits.next().is_some() {
            return Err(AdapterError::new(
                ErrorKind::Conflict,
                format!("two downstream groups are named {name:?}"),
            ));
        }
        Ok(first)
    }

    async fn group_for(&self, name: &str) -> Result<Group, AdapterError> {
        if let Some(g) = self.find_group(name).await? {
            return Ok(g);
        }
        if !self.create_groups {
            return Err(AdapterError::rejected(format!(
                "no downstream group is named {name:?} (set create_groups = true to create it)"
            )));
        }
        let body = json!({"schemas": [GROUP], "displayName": name});
        let r = self
            .send(Method::POST, &self.url("/Groups", &[])?, Some(&body), "create group")
            .await?;
        if r.status == StatusCode::CONFLICT {
            // Created concurrently by another worker.
            return self
                .find_group(name)
                .await?
                .ok_or_else(|| AdapterError::new(ErrorKind::Conflict, "group create raced"));
        }
        let g = error::check(r, "create group")?.body.unwrap_or(Value::Null);
        tracing::info!(group = %name, "created a downstream group");
        Ok(Group {
            id: id_of(&g).ok_or_else(|| AdapterError::rejected("create group: the response has no id"))?,
            name: name.to_string(),
        })
    }

    async fn membership(&self, group: &Group, user_id: &str, add: bool) -> Result<(), AdapterError> {
        let op = if add {
            json!({"op": "add", "path": "members", "value": [{"value": user_id}]})
        } else {
            json!({"op": "remove", "path": format!("members[value eq {}]", filter::string_literal(user_id))})
        };
        let body = json!({"schemas": [PATCH_OP], "Operations": [op]});
        let r = self
            .send(
                Method::PATCH,
                &self.resource_url("Groups", &group.id)?,
                Some(&body),
                "patch group",
            )
            .await?;
        if !add && r.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        error::check(r, "patch group")?;
        tracing::info!(group = %group.name, add, "membership changed");
        Ok(())
    }

    async fn sync_groups(&self, user_id: &str, held: &[Group], d: &DesiredAccount) -> Result<(), AdapterError> {
        let managed: BTreeSet<String> = d.managed.iter().map(|m| m.to_lowercase()).collect();
        let wanted: BTreeSet<String> = d.entitlements.iter().map(|e| e.to_lowercase()).collect();
        for e in &d.entitlements {
            if !held.iter().any(|g| g.name.eq_ignore_ascii_case(e)) {
                let g = self.group_for(e).await?;
                self.membership(&g, user_id, true).await?;
            }
        }
        for g in held {
            let n = g.name.to_lowercase();
            if managed.contains(&n) && !wanted.contains(&n) {
                self.membership(g, user_id, false).await?;
            }
        }
        Ok(())
    }

    fn account(&self, resource: &Value, groups: &[Group]) -> Result<Account, AdapterError> {
        let id = id_of(resource).ok_or_else(|| AdapterError::rejected("a downstream user has no id"))?;
        let mut attributes = BTreeMap::new();
        flatten("", resource, &mut attributes);
        let mut aid = AccountId::new(id);
        if let Some(e) = str_at(resource, "externalId") {
            aid = aid.with("externalId", e);
        }
        Ok(Account {
            id: aid,
            attributes,
            entitlements: groups.iter().map(|g| g.name.clone()).collect(),
            enabled: Some(resource.get("active").and_then(Value::as_bool).unwrap_or(true)),
        })
    }
}

#[async_trait]
impl Adapter for ScimAdapter {
    fn kind(&self) -> &'static str {
        "scim"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            disable: true,
            groups: self.groups,
            passwords: self.passwords,
            search_filters: true,
            max_batch: 1,
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        // Not ServiceProviderConfig: RFC 7644 lets it answer without credentials, and health must check them.
        self.list("Users", None, 1, 1).await.map(|_| ())
    }

    #[tracing::instrument(skip_all, fields(target = "scim", identity = %desired.identity_id))]
    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError> {
        let (user_name, ext) = self.keys(desired)?;
        let doc = self.desired_doc(desired, &ext);
        let (id, held) = match self.locate(known, &user_name, &ext).await? {
            Some(current) => {
                self.update(&current, &doc, desired).await?;
                let id = id_of(&current).ok_or_else(|| AdapterError::rejected("a downstream user has no id"))?;
                let held = if self.groups {
                    self.held_groups(&id, Some(&current)).await?
                } else {
                    vec![]
                };
                tracing::info!(%id, "updated");
                (id, held)
            }
            None => {
                let id = self.create(&doc, desired).await?;
                tracing::info!(%id, "created");
                (id, vec![])
            }
        };
        if self.groups {
            self.sync_groups(&id, &held, desired).await?;
        }
        Ok(AccountId::new(id).with("externalId", ext))
    }

    #[tracing::instrument(skip_all, fields(target = "scim", identity = %desired.identity_id))]
    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError> {
        let (user_name, ext) = self.keys(desired)?;
        let Some(current) = self.locate(known, &user_name, &ext).await? else {
            return Ok(());
        };
        let id = id_of(&current).ok_or_else(|| AdapterError::rejected("a downstream user has no id"))?;
        if self.groups {
            let managed: BTreeSet<String> = desired.managed.iter().map(|m| m.to_lowercase()).collect();
            for g in self.held_groups(&id, Some(&current)).await? {
                if managed.contains(&g.name.to_lowercase()) {
                    self.membership(&g, &id, false).await?;
                }
            }
        }
        let r = self
            .send(Method::DELETE, &self.resource_url("Users", &id)?, None, "delete user")
            .await?;
        if r.status != StatusCode::NOT_FOUND {
            error::check(r, "delete user")?;
        }
        tracing::info!(%id, "deleted");
        Ok(())
    }

    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        let (user_name, ext) = self.keys(desired)?;
        let Some(r) = self.locate(known, &user_name, &ext).await? else {
            return Ok(None);
        };
        let id = id_of(&r).ok_or_else(|| AdapterError::rejected("a downstream user has no id"))?;
        let groups = if self.groups {
            self.held_groups(&id, Some(&r)).await?
        } else {
            vec![]
        };
        Ok(Some(self.account(&r, &groups)?))
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError> {
        let count = query.limit.clamp(1, self.max_page_size);
        let start: usize = match &query.cursor {
            Some(c) => c
                .parse()
                .map_err(|_| AdapterError::rejected("a search cursor this adapter did not give"))?,
            None => 1,
        };
        let server_filter = query
            .filter
            .as_ref()
            .filter(|(a, _)| filter::is_attr_path(a))
            .map(|(a, v)| filter::eq(a, v));
        let (total, page) = self
            .list("Users", server_filter.as_deref(), start.max(1), count)
            .await?;
        let n = page.len();
        let mut accounts = Vec::with_capacity(n);
        for r in page.iter().take(count) {
            let groups = match r.get("groups") {
                Some(_) => self.held_groups("", Some(r)).await?,
                None => vec![],
            };
            let a = self.account(r, &groups)?;
            if let Some((attr, v)) = &query.filter
                && !a
                    .attributes
                    .iter()
                    .any(|(k, vals)| k.eq_ignore_ascii_case(attr) && vals.iter().any(|x| x.eq_ignore_ascii_case(v)))
            {
                continue;
            }
            accounts.push(a);
        }
        let next_start = start.max(1) + n;
        let next = (n > 0 && next_start <= total).then(|| next_start.to_string());
        Ok(SearchPage { accounts, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_ignores_what_the_server_adds() {
        let have = json!({"givenName": "A", "familyName": "B", "formatted": "A B"});
        assert!(contains(Some(&have), &json!({"givenName": "A", "familyName": "B"})));
        assert!(!contains(Some(&have), &json!({"givenName": "A", "familyName": "C"})));
        assert!(contains(
            Some(&json!([{"value": "a", "primary": true, "x": 1}])),
            &json!([{"value": "a", "primary": true}])
        ));
        assert!(!contains(
            Some(&json!([{"value": "a"}])),
            &json!([{"value": "a"}, {"value": "b"}])
        ));
        assert!(contains(None, &Value::Null));
        assert!(!contains(None, &json!("x")));
    }

    #[test]
    fn urn_attributes_flatten_with_a_colon() {
        let mut out = BTreeMap::new();
        flatten(
            "",
            &json!({"schemas": ["x"], "userName": "a", "name": {"familyName": "F"}, config::ENTERPRISE_USER: {"department": "D"}}),
            &mut out,
        );
        assert_eq!(out.get("name.familyName"), Some(&vec!["F".to_string()]));
        assert_eq!(
            out.get(&format!("{}:department", config::ENTERPRISE_USER)),
            Some(&vec!["D".to_string()])
        );
        assert!(!out.contains_key("schemas"));
    }
}
