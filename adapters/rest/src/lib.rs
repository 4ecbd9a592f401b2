//! The REST adapter: provisions accounts on a JSON REST API described entirely by configuration.
//!
//! Layout:
//! - [`config`]: the TOML under `[targets.rest]`: base URL, allowed hosts, auth, and one entry per operation
//!   (method, URL template, body template, where ids and lists sit in responses);
//! - [`template`]: minijinja templates escaped by context (URL components percent-encoded, body values as JSON
//!   literals), so a value never changes a request's shape;
//! - [`http`]: the outbound client (allow-listed hosts, no redirects, timeouts, bounded bodies, auth, status →
//!   error), public so the SCIM adapter shares it;
//! - [`auth`]: bearer, basic, OAuth2 client credentials with a cached, refreshed token;
//! - [`error`]: HTTP outcomes → [`AdapterError`] (429 + Retry-After → throttled, 5xx/timeouts → unavailable).
//!
//! An account is located by its key (a SCIM path, `userName` by default) through the `find` call before anything
//! is created, so a retry after a crash never makes a second one; a known id is only trusted when the resource it
//! names still holds the same key.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod config;
pub mod error;
pub mod http;
pub mod template;

use scimgate_adapter_sdk::mapping::scalar as text;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use scimgate_adapter_sdk::mapping::Path;
use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, ErrorKind, SearchPage, SearchQuery,
};
use serde_json::{Value, json};

pub use config::Config;
use config::{Operation, Paging};
use template::Templates;

struct Op {
    name: &'static str,
    method: Method,
    body: bool,
    items_pointer: Option<String>,
}

struct Ops {
    find: Op,
    get: Op,
    create: Op,
    update: Op,
    delete: Op,
    disable: Option<Op>,
    enable: Option<Op>,
    list: Op,
}

/// A REST target.
pub struct RestAdapter {
    client: http::Client,
    templates: Templates,
    key: Path,
    key_name: String,
    key_pointer: String,
    id_pointer: String,
    enabled_pointer: Option<String>,
    enabled_inverted: bool,
    entitlements_pointer: Option<String>,
    ops: Ops,
    paging: Paging,
    max_page_size: usize,
    filters: bool,
}

fn method(text: Option<&str>, default: Method, op: &str) -> Result<Method, AdapterError> {
    match text.map(str::to_ascii_uppercase).as_deref() {
        None => Ok(default),
        Some("GET") => Ok(Method::GET),
        Some("POST") => Ok(Method::POST),
        Some("PUT") => Ok(Method::PUT),
        Some("PATCH") => Ok(Method::PATCH),
        Some("DELETE") => Ok(Method::DELETE),
        Some(m) => Err(AdapterError::config(format!(
            "operation {op}: method {m:?} is not GET/POST/PUT/PATCH/DELETE"
        ))),
    }
}

fn pointer_ok(p: &str, what: &str) -> Result<(), AdapterError> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(AdapterError::config(format!(
            "{what} {p:?} is not a JSON pointer (it starts with '/')"
        )))
    }
}

impl RestAdapter {
    pub fn new(cfg: Config) -> Result<RestAdapter, AdapterError> {
        let client = http::Client::new(&http::Settings {
            base_url: cfg.base_url.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            allow_http: cfg.allow_http,
            auth: cfg.auth.clone(),
            timeout: Duration::from_secs(cfg.timeout_secs.clamp(1, 600)),
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs.clamp(1, 120)),
            max_response_bytes: cfg.max_response_bytes.clamp(1024, 256 * 1024 * 1024),
            media_type: "application/json".into(),
        })?;
        if cfg.allowed_hosts.is_empty() {
            return Err(AdapterError::config(
                "allowed_hosts is empty: list the hosts this target may call",
            ));
        }
        let key = Path::parse(&cfg.key).map_err(|e| AdapterError::config(e.to_string()))?;
        for (p, what) in [(&cfg.key_pointer, "key_pointer"), (&cfg.id_pointer, "id_pointer")] {
            pointer_ok(p, what)?;
        }
        for (p, what) in [
            (&cfg.enabled_pointer, "enabled_pointer"),
            (&cfg.entitlements_pointer, "entitlements_pointer"),
            (&cfg.operations.list.items_pointer, "list.items_pointer"),
        ] {
            if let Some(p) = p {
                pointer_ok(p, what)?;
            }
        }
        let mut templates = Templates::new();
        let o = &cfg.operations;
        let mut op = |name: &'static str, c: &Operation, default: Method| -> Result<Op, AdapterError> {
            templates.add_url(name, &c.url)?;
            if let Some(b) = &c.body {
                templates.add_body(name, b)?;
            }
            if let Some(p) = &c.items_pointer {
                pointer_ok(p, "items_pointer")?;
            }
            Ok(Op {
                name,
                method: method(c.method.as_deref(), default, name)?,
                body: c.body.is_some(),
                items_pointer: c.items_pointer.clone(),
            })
        };
        let find = op("find", &o.find, Method::GET)?;
        let get = op("get", &o.get, Method::GET)?;
        let create = op("create", &o.create, Method::POST)?;
        let update = op("update", &o.update, Method::PATCH)?;
        let delete = op("delete", &o.delete, Method::DELETE)?;
        let disable = o.disable.as_ref().map(|c| op("disable", c, Method::POST)).transpose()?;
        let enable = o.enable.as_ref().map(|c| op("enable", c, Method::POST)).transpose()?;
        if !create.body {
            return Err(AdapterError::config("operation create needs a body template"));
        }
        templates.add_url("list", &o.list.url)?;
        let list = Op {
            name: "list",
            method: method(o.list.method.as_deref(), Method::GET, "list")?,
            body: false,
            items_pointer: o.list.items_pointer.clone(),
        };
        Ok(RestAdapter {
            client,
            templates,
            key_name: cfg.key.clone(),
            key,
            key_pointer: cfg.key_pointer,
            id_pointer: cfg.id_pointer,
            enabled_pointer: cfg.enabled_pointer,
            enabled_inverted: cfg.enabled_inverted,
            entitlements_pointer: cfg.entitlements_pointer,
            ops: Ops {
                find,
                get,
                create,
                update,
                delete,
                disable,
                enable,
                list,
            },
            paging: o.list.paging,
            max_page_size: o.list.max_page_size.clamp(1, 10_000),
            filters: o.list.filters,
        })
    }

    fn key_of(&self, d: &DesiredAccount) -> Result<String, AdapterError> {
        self.key
            .text(&d.user)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AdapterError::rejected(format!("the user has no {}, the key of this target", self.key_name)))
    }

    fn context(
        &self,
        d: Option<&DesiredAccount>,
        key: Option<&str>,
        id: Option<&Value>,
        ents: &[String],
    ) -> minijinja::Value {
        let mut c = json!({
            "key": key,
            "id": id,
            "entitlements": ents,
        });
        if let (Some(d), Some(o)) = (d, c.as_object_mut()) {
            o.insert("user".into(), Value::Object(d.user.clone()));
            o.insert("identity_id".into(), Value::String(d.identity_id.clone()));
            o.insert("enabled".into(), Value::Bool(d.enabled));
        }
        minijinja::Value::from_serialize(&c)
    }

    async fn call(&self, op: &Op, ctx: &minijinja::Value) -> Result<http::Response, AdapterError> {
        let url = self.client.resolve(&self.templates.render_url(op.name, ctx)?)?;
        let body = if op.body {
            Some(self.templates.render_body(op.name, ctx)?)
        } else {
            None
        };
        self.client.send(op.method.clone(), &url, body.as_ref()).await
    }

    fn id_of(&self, resource: &Value) -> Option<Value> {
        resource
            .pointer(&self.id_pointer)
            .filter(|v| matches!(v, Value::String(s) if !s.is_empty()) || v.is_number())
            .cloned()
    }

    fn holds_key(&self, resource: &Value, key: &str) -> bool {
        resource
            .pointer(&self.key_pointer)
            .and_then(text)
            .is_some_and(|k| k.eq_ignore_ascii_case(key))
    }

    fn items<'v>(&self, op: &Op, body: &'v Value) -> Result<Vec<&'v Value>, AdapterError> {
        let at = match op.items_pointer.as_deref() {
            None | Some("") => Some(body),
            Some(p) => body.pointer(p),
        };
        match at {
            Some(Value::Array(a)) => Ok(a.iter().collect()),
            Some(o @ Value::Object(_)) if op.items_pointer.as_deref().is_none_or(str::is_empty) => Ok(vec![o]),
            None | Some(Value::Null) => Ok(vec![]),
            Some(_) => Err(AdapterError::rejected(format!(
                "{}: the response holds no list of resources",
                op.name
            ))),
        }
    }

    /// The account's id and resource: by the known id when it still holds the key, else by the key.
    async fn locate(
        &self,
        known: Option<&AccountId>,
        d: &DesiredAccount,
        key: &str,
    ) -> Result<Option<(Value, Value)>, AdapterError> {
        if let Some(k) = known.filter(|k| !k.primary.is_empty()) {
            let id = Value::String(k.primary.clone());
            let r = self
                .call(&self.ops.get, &self.context(Some(d), Some(key), Some(&id), &[]))
                .await?;
            match r.status {
                StatusCode::NOT_FOUND | StatusCode::GONE => {}
                _ => {
                    let body = r.success("get")?.body.unwrap_or(Value::Null);
                    if self.holds_key(&body, key) {
                        let id = self.id_of(&body).unwrap_or(id);
                        return Ok(Some((id, body)));
                    }
                    tracing::info!(id = %k.primary, "the known id now names another resource; finding by key");
                }
            }
        }
        let r = self
            .call(&self.ops.find, &self.context(Some(d), Some(key), None, &[]))
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = r.success("find")?.body.unwrap_or(Value::Null);
        let hits: Vec<&Value> = self
            .items(&self.ops.find, &body)?
            .into_iter()
            .filter(|i| self.holds_key(i, key))
            .collect();
        match hits.as_slice() {
            [] => Ok(None),
            [one] => {
                let id = self.id_of(one).ok_or_else(|| {
                    AdapterError::rejected(format!("find: a result has no id at {}", self.id_pointer))
                })?;
                Ok(Some((id, (*one).clone())))
            }
            more => Err(AdapterError::new(
                ErrorKind::Conflict,
                format!("{} resources hold the key {key:?}", more.len()),
            )),
        }
    }

    fn account(&self, resource: &Value) -> Result<Account, AdapterError> {
        let id = self
            .id_of(resource)
            .as_ref()
            .and_then(text)
            .ok_or_else(|| AdapterError::rejected(format!("a resource has no id at {}", self.id_pointer)))?;
        let mut attributes = BTreeMap::new();
        flatten("", resource, &mut attributes);
        let entitlements = self.held(resource).into_iter().collect();
        let enabled = self.enabled_pointer.as_ref().map(|p| {
            let v = resource.pointer(p).and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                Value::String(s) => s.parse::<bool>().ok(),
                _ => None,
            });
            // A resource without the flag counts as enabled (unless the flag is inverted: then absent = enabled too).
            v.map(|b| b != self.enabled_inverted).unwrap_or(true)
        });
        Ok(Account {
            id: AccountId::new(id),
            attributes,
            entitlements,
            enabled,
        })
    }

    fn held(&self, resource: &Value) -> Vec<String> {
        let Some(p) = &self.entitlements_pointer else {
            return vec![];
        };
        match resource.pointer(p) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| match v {
                    Value::Object(o) => o.get("value").and_then(text),
                    v => text(v),
                })
                .collect(),
            _ => vec![],
        }
    }

    /// Values to hold: those held outside `managed`, plus the desired ones.
    fn merged(&self, held: &[String], d: &DesiredAccount) -> Vec<String> {
        let managed: BTreeSet<String> = d.managed.iter().map(|m| m.to_lowercase()).collect();
        let mut out: Vec<String> = held
            .iter()
            .filter(|h| !managed.contains(&h.to_lowercase()))
            .cloned()
            .collect();
        for e in &d.entitlements {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(e)) {
                out.push(e.clone());
            }
        }
        out
    }

    async fn toggle(&self, d: &DesiredAccount, ctx: &minijinja::Value) -> Result<(), AdapterError> {
        let op = if d.enabled { &self.ops.enable } else { &self.ops.disable };
        if let Some(op) = op {
            self.call(op, ctx).await?.success(op.name)?;
        }
        Ok(())
    }
}

/// Attributes of a resource: `a`, `a.b` for nested objects; arrays of scalars (or of `{value}`) as lists.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Vec<String>>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        Value::Array(a) if !prefix.is_empty() => {
            let vals: Vec<String> = a
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

#[async_trait]
impl Adapter for RestAdapter {
    fn kind(&self) -> &'static str {
        "rest"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            disable: self.enabled_pointer.is_some(),
            groups: self.entitlements_pointer.is_some(),
            passwords: false,
            search_filters: self.filters,
            max_batch: 1,
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        let ctx = minijinja::Value::from_serialize(json!({"page": 1, "offset": 0, "limit": 1}));
        self.call(&self.ops.list, &ctx).await?.success("health")?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(target = "rest", identity = %desired.identity_id))]
    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError> {
        let key = self.key_of(desired)?;
        match self.locate(known, desired, &key).await? {
            Some((id, resource)) => {
                let ents = self.merged(&self.held(&resource), desired);
                let ctx = self.context(Some(desired), Some(&key), Some(&id), &ents);
                let r = self.call(&self.ops.update, &ctx).await?;
                if r.status == StatusCode::NOT_FOUND {
                    // Deleted between find and update: the next attempt creates it.
                    return Err(
                        AdapterError::new(ErrorKind::NotFound, "the account vanished during the update")
                            .retriable(true),
                    );
                }
                r.success("update")?;
                self.toggle(desired, &ctx).await?;
                tracing::info!(id = %text(&id).unwrap_or_default(), "updated");
                Ok(AccountId::new(text(&id).unwrap_or_default()))
            }
            None => {
                let ents: Vec<String> = desired.entitlements.iter().cloned().collect();
                let ctx = self.context(Some(desired), Some(&key), None, &ents);
                let body = self
                    .call(&self.ops.create, &ctx)
                    .await?
                    .success("create")?
                    .body
                    .unwrap_or(Value::Null);
                let id = self.id_of(&body).ok_or_else(|| {
                    AdapterError::rejected(format!("create: the response has no id at {}", self.id_pointer))
                })?;
                if !desired.enabled {
                    self.toggle(desired, &self.context(Some(desired), Some(&key), Some(&id), &ents))
                        .await?;
                }
                tracing::info!(id = %text(&id).unwrap_or_default(), "created");
                Ok(AccountId::new(text(&id).unwrap_or_default()))
            }
        }
    }

    #[tracing::instrument(skip_all, fields(target = "rest", identity = %desired.identity_id))]
    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError> {
        let key = self.key_of(desired)?;
        let Some((id, _)) = self.locate(known, desired, &key).await? else {
            return Ok(());
        };
        let r = self
            .call(
                &self.ops.delete,
                &self.context(Some(desired), Some(&key), Some(&id), &[]),
            )
            .await?;
        if matches!(r.status, StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Ok(());
        }
        r.success("delete")?;
        tracing::info!(id = %text(&id).unwrap_or_default(), "deleted");
        Ok(())
    }

    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        let key = self.key_of(desired)?;
        match self.locate(known, desired, &key).await? {
            Some((_, resource)) => Ok(Some(self.account(&resource)?)),
            None => Ok(None),
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError> {
        let limit = query.limit.clamp(1, self.max_page_size);
        let bad_cursor = || AdapterError::rejected("a search cursor this adapter did not give");
        let (page, offset) = match (self.paging, &query.cursor) {
            (Paging::Page, Some(c)) => {
                let p: usize = c.parse().map_err(|_| bad_cursor())?;
                (p.max(1), (p.max(1) - 1) * limit)
            }
            (Paging::None, Some(c)) => (1, c.parse().map_err(|_| bad_cursor())?),
            (_, None) => (1, 0),
        };
        let (fa, fv) = match &query.filter {
            Some((a, v)) => (Some(a.as_str()), Some(v.as_str())),
            None => (None, None),
        };
        let ctx = minijinja::Value::from_serialize(json!({
            "page": page, "offset": offset, "limit": limit, "filter_attr": fa, "filter_value": fv,
        }));
        let body = self
            .call(&self.ops.list, &ctx)
            .await?
            .success("list")?
            .body
            .unwrap_or(Value::Null);
        let items = self.items(&self.ops.list, &body)?;
        let (window, next) = match self.paging {
            Paging::Page => {
                let next = (items.len() >= limit).then(|| (page + 1).to_string());
                (items.into_iter().take(limit).collect::<Vec<_>>(), next)
            }
            Paging::None => {
                let more = items.len() > offset + limit;
                let w: Vec<&Value> = items.into_iter().skip(offset).take(limit).collect();
                (w, more.then(|| (offset + limit).to_string()))
            }
        };
        let mut accounts = Vec::with_capacity(window.len());
        for r in window {
            let a = self.account(r)?;
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
        Ok(SearchPage { accounts, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_flatten_to_attributes() {
        let mut out = BTreeMap::new();
        flatten(
            "",
            &json!({"id": 3, "name": {"familyName": "L"}, "groups": ["a", {"value": "b"}], "active": true, "x": null}),
            &mut out,
        );
        assert_eq!(out.get("id"), Some(&vec!["3".to_string()]));
        assert_eq!(out.get("name.familyName"), Some(&vec!["L".to_string()]));
        assert_eq!(out.get("groups"), Some(&vec!["a".to_string(), "b".to_string()]));
        assert_eq!(out.get("active"), Some(&vec!["true".to_string()]));
        assert!(!out.contains_key("x"));
    }
}
