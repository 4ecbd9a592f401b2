//! The SCIM service: one resource operation end to end, shared by the HTTP handlers and Bulk.
//!
//! request body → `resource::normalize` (schemas) → PATCH / PUT semantics → store (compare-and-swap on the
//! version) → `project::render` (returned, attributes). Policy and the outbox hook in between the schema check
//! and the store write; see ARCHITECTURE.md.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use scimgate_adapter_sdk::Secret;
use scimgate_scim::bulk::{self, BULK_RESPONSE_URN, Method};
use scimgate_scim::eval;
use scimgate_scim::filter::{FilterLimits, parse_filter, parse_patch_path};
use scimgate_scim::patch::{self, MemberOp};
use scimgate_scim::project::{Projection, render};
use scimgate_scim::resource::{Mode, check_immutable, normalize};
use scimgate_scim::schema::{Registry, ResourceKind, Target};
use scimgate_scim::{ProtocolError, urn};
use scimgate_store::cache::Rendered;
use scimgate_store::{AuditEntry, Backend, Effects, Query, Start, StoreError, Stored, Write};

use crate::config::{ScimConfig, Tenant};
use crate::cursor::{CursorKey, Position};
use crate::engine::Engine;
use crate::http::error::ApiError;
use crate::lifecycle::Change;

/// Limits the protocol layer enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub filter: FilterLimits,
    pub default_page: usize,
    pub max_page: usize,
    pub max_patch_ops: usize,
    pub bulk_max_ops: usize,
    pub bulk_max_payload: usize,
    pub cursor_timeout_secs: i64,
}

impl From<&ScimConfig> for Limits {
    fn from(c: &ScimConfig) -> Self {
        Limits {
            filter: FilterLimits {
                max_len: c.max_filter_length,
                max_depth: c.max_filter_depth,
            },
            default_page: c.default_page_size,
            max_page: c.max_page_size,
            max_patch_ops: c.max_patch_operations,
            bulk_max_ops: c.bulk_max_operations,
            bulk_max_payload: c.bulk_max_payload_bytes,
            cursor_timeout_secs: i64::try_from(c.cursor_timeout_secs).unwrap_or(i64::MAX),
        }
    }
}

pub struct ScimService {
    pub reg: Arc<Registry>,
    pub store: Arc<dyn Backend>,
    /// The lifecycle engine; `None` when no policy is configured (identity state only).
    pub engine: Option<Arc<Engine>>,
    pub limits: Limits,
    pub cursor_key: CursorKey,
    /// Seals passwords into outbox rows; `None`: passwords are not forwarded downstream.
    pub sealer: Option<crate::outbox::seal::Sealer>,
    /// Wakes the outbox workers after a change commits.
    pub wake: Arc<tokio::sync::Notify>,
    /// Commits concurrent user creates, and concurrent replacements, together.
    pub commits: crate::group_commit::GroupCommit,
}

/// Who is asking, and the absolute URL of their SCIM base for meta.location.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub tenant: Arc<Tenant>,
    pub base_url: String,
    /// The authenticated caller (`token:N`, `jwt:SUBJECT`), for the audit trail.
    pub actor: String,
    pub request_id: Option<String>,
}

/// A response: status, body (none for 204), ETag and Location.
#[derive(Debug)]
pub struct Output {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// A pre-serialised body (from the read cache), sent instead of `body`.
    pub raw: Option<Bytes>,
    pub etag: Option<String>,
    pub location: Option<String>,
}

impl Output {
    /// A user's pre-serialised answer from the read cache.
    fn cached(status: StatusCode, r: &Rendered, location: Option<String>) -> Self {
        Output {
            status,
            body: None,
            raw: Some(r.body.clone()),
            etag: Some(etag(r.version)),
            location,
        }
    }
}

/// List parameters, from a query string or a SearchRequest body.
#[derive(Debug, Default, Clone)]
pub struct ListParams {
    pub filter: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub start_index: Option<String>,
    pub count: Option<String>,
    pub cursor: Option<String>,
    pub attributes: Option<String>,
    pub excluded: Option<String>,
}

/// Preconditions from If-Match / If-None-Match.
#[derive(Debug, Default, Clone)]
pub struct Preconditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
}

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// Whether an If-Match / If-None-Match header value names this version (`*` names any).
fn etag_matches(header: &str, version: i64) -> bool {
    let want = etag(version);
    let strong = format!("\"{version}\"");
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == want || t == strong)
}

const MAX_CAS_RETRIES: usize = 8;

/// A user's group names and decision inputs, read with it ([`ScimService::load_for_change`]).
type UserReads = (Vec<String>, scimgate_store::DecisionInputs);

impl ScimService {
    fn location(&self, cx: &Ctx, kind: ResourceKind, id: &str) -> String {
        format!("{}/{}/{}", cx.base_url, kind.endpoint(), id)
    }

    /// The full document for output: stored attributes plus id, meta, and members or groups. `groups_known`: the
    /// caller supplies a user's groups, so none are looked up here (a user just created or rehired is in none:
    /// archiving removes memberships; a page of a list looks them up for all its users at once).
    async fn full_doc(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        s: &Stored,
        proj: &Projection,
        groups_known: bool,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut doc = s.doc.clone();
        doc.insert("id".into(), Value::String(s.id.clone()));
        doc.insert(
            "meta".into(),
            json!({
                "resourceType": kind.as_str(),
                "created": s.created,
                "lastModified": s.last_modified,
                "location": self.location(cx, kind, &s.id),
                "version": etag(s.version),
            }),
        );
        let tenant = &cx.tenant.id;
        match kind {
            ResourceKind::Group if proj.may_return("members") => {
                let members = self.store.members(tenant, &s.id).await?;
                if !members.is_empty() {
                    let list: Vec<Value> = members
                        .into_iter()
                        .map(|m| {
                            let k = m.kind.unwrap_or_else(|| "User".into());
                            let ep = if k == "Group" { "Groups" } else { "Users" };
                            json!({"value": m.value, "$ref": format!("{}/{ep}/{}", cx.base_url, m.value), "type": k})
                        })
                        .collect();
                    doc.insert("members".into(), Value::Array(list));
                }
            }
            ResourceKind::User if proj.may_return("groups") && !groups_known => {
                let groups = self.store.groups_of(tenant, &s.id).await?;
                attach_groups(cx, &mut doc, groups);
            }
            _ => {}
        }
        Ok(doc)
    }

    /// A page of documents for output, with the users' groups looked up in one query for the whole page.
    async fn full_docs(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        rows: &[Stored],
        proj: &Projection,
    ) -> Result<Vec<Map<String, Value>>, ApiError> {
        if kind != ResourceKind::User || !proj.may_return("groups") {
            let mut out = Vec::with_capacity(rows.len());
            for s in rows {
                out.push(self.full_doc(cx, kind, s, proj, false).await?);
            }
            return Ok(out);
        }
        let ids: Vec<&str> = rows.iter().map(|s| s.id.as_str()).collect();
        let mut groups = self.store.groups_of_many(&cx.tenant.id, &ids).await?;
        let mut out = Vec::with_capacity(rows.len());
        for s in rows {
            let mut doc = self.full_doc(cx, kind, s, proj, true).await?;
            attach_groups(cx, &mut doc, groups.remove(&s.id).unwrap_or_default());
            out.push(doc);
        }
        Ok(out)
    }

    async fn output(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        s: &Stored,
        proj: &Projection,
        status: StatusCode,
    ) -> Result<Output, ApiError> {
        let doc = self.full_doc(cx, kind, s, proj, status == StatusCode::CREATED).await?;
        Ok(Output {
            status,
            body: Some(render(&self.reg, kind, &doc, proj)),
            etag: Some(etag(s.version)),
            location: (status == StatusCode::CREATED).then(|| self.location(cx, kind, &s.id)),
            raw: None,
        })
    }

    /// A ticket for writing a new user's answer through to the read cache: taken before the create, so that an
    /// invalidation between the commit and the fill (a group push adding the user at once) drops the fill (see
    /// `scimgate_store::cache`). Only creates are written through: an update's own invalidation after its commit
    /// would drop the fill, and a fill after that could be older than a concurrent later update.
    fn write_ticket(&self, tenant: &str, kind: ResourceKind, id: &str) -> Option<scimgate_store::cache::Ticket> {
        (kind == ResourceKind::User)
            .then(|| self.store.read_cache().map(|c| c.ticket(tenant, id)))
            .flatten()
    }

    /// The answer to a create. A new user's default answer is also written through to the read cache (the IdP's
    /// next GET or `userName eq` lookup is a hit), serialised once for both.
    async fn output_created(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        s: &Stored,
        proj: &Projection,
        ticket: Option<scimgate_store::cache::Ticket>,
    ) -> Result<Output, ApiError> {
        let (Some(ticket), Some(cache), true) = (ticket, self.store.read_cache(), *proj == Projection::Default) else {
            return self.output(cx, kind, s, proj, StatusCode::CREATED).await;
        };
        let r = self.render_user(cx, s, true).await?;
        let r = cache.put(ticket, &cx.tenant.id, &s.id, r);
        Ok(Output::cached(
            StatusCode::CREATED,
            &r,
            Some(self.location(cx, kind, &s.id)),
        ))
    }

    pub fn projection(
        &self,
        kind: ResourceKind,
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Projection, ApiError> {
        Ok(Projection::parse(&self.reg, kind, attributes, excluded)?)
    }

    async fn load(&self, cx: &Ctx, kind: ResourceKind, id: &str) -> Result<Stored, ApiError> {
        self.store
            .get(&cx.tenant.id, kind, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("{} {id} not found", kind.as_str())))
    }

    /// The resource a PUT or PATCH changes; for a user also what its policy decision reads (its groups' names,
    /// its lifecycle state, exceptions and pending approvals), all in one statement.
    async fn load_for_change(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
    ) -> Result<(Stored, Option<UserReads>), ApiError> {
        if kind == ResourceKind::Group || self.engine.is_none() {
            return Ok((self.load(cx, kind, id).await?, None));
        }
        let found = self.store.user_for_change(&cx.tenant.id, id).await?;
        let f = found.ok_or_else(|| ApiError::NotFound(format!("{} {id} not found", kind.as_str())))?;
        let names = f.groups.into_iter().map(|(_, name)| name).collect();
        Ok((f.user, Some((names, f.inputs))))
    }

    /// Seal a password into the outbox rows of these effects (each row bound to its own id), so it reaches the
    /// targets that take passwords. Without an outbox key the password is kept only as the local hash.
    fn seal_secrets(&self, tenant: &str, mut effects: Vec<Effects>, password: Option<&Secret>) -> Vec<Effects> {
        let (Some(pw), Some(sealer)) = (password, &self.sealer) else {
            return effects;
        };
        for row in effects.iter_mut().flat_map(|e| e.outbox.iter_mut()) {
            if row.operation == "apply" {
                row.secret = Some(sealer.seal(tenant, &row.id, pw.expose()));
            }
        }
        effects
    }

    /// Take `password` out of a user document and hash it (argon2id, off the async threads). The plain text is
    /// kept, in a [`Secret`], for the outbox.
    async fn take_password(
        &self,
        kind: ResourceKind,
        doc: &mut Map<String, Value>,
    ) -> Result<Option<(String, Secret)>, ApiError> {
        if kind != ResourceKind::User {
            return Ok(None);
        }
        let Some(Value::String(pw)) = doc.remove("password") else {
            return Ok(None);
        };
        let secret = Secret::new(pw.clone());
        let hash = tokio::task::spawn_blocking(move || {
            use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
            let salt = SaltString::generate(&mut OsRng);
            argon2::Argon2::default()
                .hash_password(pw.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
        Ok(Some((hash, secret)))
    }

    #[tracing::instrument(name = "scim.create", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn create(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        body: Value,
        proj: &Projection,
    ) -> Result<Output, ApiError> {
        let mut members = Vec::new();
        let mut body = body;
        if kind == ResourceKind::Group
            && let Value::Object(o) = &mut body
        {
            let key = o.keys().find(|k| k.eq_ignore_ascii_case("members")).cloned();
            if let Some(k) = key
                && let Some(v) = o.remove(&k)
                && let Some(MemberOp::Add(list) | MemberOp::Replace(list)) = self.member_ops(v)?.into_iter().next()
            {
                members = list;
            }
        }
        let mut doc = normalize(&self.reg, kind, body, Mode::Create)?;
        let password = self.take_password(kind, &mut doc).await?;
        let password_hash = password.as_ref().map(|(h, _)| h.clone());
        let tenant = &cx.tenant.id;
        let attrs = attribute_names(&doc);
        if kind == ResourceKind::User {
            // A rehire reuses the archived identity; a concurrent timer or a second POST can move it between the
            // read and the write, so it retries like any compare-and-swap.
            for _ in 0..MAX_CAS_RETRIES {
                let Some(old) = self.rehire_match(tenant, &doc).await? else {
                    break;
                };
                let effects = self
                    .decide_rehire(tenant, &old.id, &doc)
                    .await?
                    .map(|d| vec![d.effects])
                    .unwrap_or_default();
                let effects = self.seal_secrets(&cx.tenant.id, effects, password.as_ref().map(|(_, p)| p));
                let audit = vec![request_audit(cx, "rehire", kind, &old.id, attrs.clone())];
                let w = Write {
                    doc: doc.clone(),
                    password_hash: password_hash.clone(),
                    doc_changed: true,
                    emails_unchanged: false,
                    effects,
                    audit,
                };
                match self.store.revive(tenant, &old.id, old.version, w).await {
                    Ok(stored) => {
                        tracing::info!(tenant = %tenant, id = %stored.id, "rehire: archived identity reused");
                        return self.output(cx, kind, &stored, proj, StatusCode::CREATED).await;
                    }
                    Err(StoreError::VersionMismatch | StoreError::StateConflict) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let (id, w) = self.new_write(cx, kind, doc, password, &members).await?;
        let ticket = self.write_ticket(tenant, kind, &id);
        let stored = match kind {
            // Concurrent user creates share a transaction (group commit); see `group_commit`.
            ResourceKind::User => self.commits.create_user(tenant, id, w).await.map_err(|e| match e {
                crate::group_commit::CommitError::Store(e) => ApiError::from(e),
                stopped => ApiError::internal(stopped),
            })?,
            ResourceKind::Group => self.store.create(tenant, kind, &id, w, &members).await?,
        };
        tracing::debug!(tenant = %cx.tenant.id, kind = kind.as_str(), id = %stored.id, "created");
        self.output_created(cx, kind, &stored, proj, ticket).await
    }

    /// What creating a new resource writes: a fresh id, the lifecycle effects (users: the policy decision;
    /// groups: the membership effects), the password sealed into the outbox rows, the request's audit record.
    async fn new_write(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        doc: Map<String, Value>,
        password: Option<(String, Secret)>,
        members: &[scimgate_scim::patch::Member],
    ) -> Result<(String, Write), ApiError> {
        let tenant = &cx.tenant.id;
        let attrs = attribute_names(&doc);
        let id = uuid::Uuid::now_v7().to_string();
        let effects = match kind {
            ResourceKind::User => self
                .decide_user(
                    tenant,
                    Change {
                        id: &id,
                        doc: &doc,
                        groups: &[],
                        archived: false,
                        fresh: true,
                        changed: true,
                        inputs: None,
                    },
                    "create",
                )
                .await?
                .map(|d| vec![d.effects]),
            ResourceKind::Group => {
                let name = doc.get("displayName").and_then(Value::as_str);
                Some(
                    self.membership_effects(tenant, None, None, name, &[MemberOp::Add(members.to_vec())])
                        .await?,
                )
            }
        }
        .unwrap_or_default();
        let (password_hash, secret) = password.unzip();
        let effects = self.seal_secrets(tenant, effects, secret.as_ref());
        let audit = vec![request_audit(cx, "create", kind, &id, attrs)];
        let w = Write {
            doc,
            password_hash,
            doc_changed: true,
            emails_unchanged: false,
            effects,
            audit,
        };
        Ok((id, w))
    }

    fn member_ops(&self, members: Value) -> Result<Vec<MemberOp>, ApiError> {
        let op = patch::PatchOp {
            op: patch::OpKind::Replace,
            path: None,
            value: Some(json!({"members": members})),
        };
        Ok(patch::split_members(&self.reg, vec![op])?.0)
    }

    #[tracing::instrument(name = "scim.get", level = "debug", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn get(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        proj: &Projection,
        pre: &Preconditions,
    ) -> Result<Output, ApiError> {
        if kind == ResourceKind::User
            && *proj == Projection::Default
            && let Some(r) = self.cached_user(cx, id).await?
        {
            if let Some(inm) = &pre.if_none_match
                && etag_matches(inm, r.version)
            {
                return Err(ApiError::NotModified(etag(r.version)));
            }
            return Ok(Output::cached(StatusCode::OK, &r, None));
        }
        let s = self.load(cx, kind, id).await?;
        if let Some(inm) = &pre.if_none_match
            && etag_matches(inm, s.version)
        {
            return Err(ApiError::NotModified(etag(s.version)));
        }
        self.output(cx, kind, &s, proj, StatusCode::OK).await
    }

    /// A user's default answer through the read cache: `None` without a cache (or while it is suspended), the
    /// cached bytes on a hit, and on a miss the answer rendered from the store and cached.
    async fn cached_user(&self, cx: &Ctx, id: &str) -> Result<Option<Arc<Rendered>>, ApiError> {
        let Some(cache) = self.store.read_cache().filter(|c| c.is_live()) else {
            return Ok(None);
        };
        let tenant = &cx.tenant.id;
        if let Some(r) = cache.get(tenant, id)
            && r.base_url == cx.base_url
        {
            return Ok(Some(r));
        }
        let ticket = cache.ticket(tenant, id);
        let s = self.load(cx, ResourceKind::User, id).await?;
        let r = self.render_user(cx, &s, false).await?;
        Ok(Some(cache.put(ticket, tenant, id, r)))
    }

    async fn render_user(&self, cx: &Ctx, s: &Stored, created: bool) -> Result<Rendered, ApiError> {
        let kind = ResourceKind::User;
        let doc = self.full_doc(cx, kind, s, &Projection::Default, created).await?;
        let body =
            serde_json::to_vec(&render(&self.reg, kind, &doc, &Projection::Default)).map_err(ApiError::internal)?;
        Ok(Rendered {
            version: s.version,
            base_url: cx.base_url.clone(),
            user_name_lower: s
                .doc
                .get("userName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_lowercase(),
            body: Bytes::from(body),
        })
    }

    /// `GET /Users?filter=userName eq "…"` with nothing else (the lookup every IdP makes before it creates or
    /// links a user) answered through the read cache. `None`: not that query, or no cache; `list` answers.
    pub async fn list_by_user_name(
        &self,
        cx: &Ctx,
        kind: Option<ResourceKind>,
        p: &ListParams,
    ) -> Result<Option<Bytes>, ApiError> {
        if kind != Some(ResourceKind::User)
            || p.sort_by.is_some()
            || p.sort_order.is_some()
            || p.cursor.is_some()
            || p.attributes.is_some()
            || p.excluded.is_some()
            || !matches!(p.start_index.as_deref().map(str::trim), None | Some("1"))
            || matches!(p.count.as_deref().map(str::trim), Some(c) if c.parse::<u64>().map_or(true, |n| n == 0))
        {
            return Ok(None);
        }
        let Some(cache) = self.store.read_cache().filter(|c| c.is_live()) else {
            return Ok(None);
        };
        let Some(f) = p.filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) else {
            return Ok(None);
        };
        let Ok(parsed) = parse_filter(f, &self.limits.filter) else {
            return Ok(None);
        };
        let Ok(filter) = eval::resolve(&self.reg, ResourceKind::User, parsed) else {
            return Ok(None);
        };
        let Some(name) = eval::user_name_eq(&filter) else {
            return Ok(None);
        };
        let tenant = &cx.tenant.id;
        let lower = name.to_lowercase();
        let hit = match cache.find_by_name(tenant, &lower) {
            Some(r) if r.base_url == cx.base_url => Some(r),
            _ => {
                // Miss: the store answers the filter; a single match is rendered and cached.
                let q = Query {
                    reg: &self.reg,
                    filter: Some(&filter),
                    sort: None,
                    start: Start::Offset(0),
                    count: 2,
                    lowering: true,
                    total: None,
                };
                // The filter finds the id; the answer cached is from a read by id after the ticket for that id.
                let page = self.store.query(tenant, ResourceKind::User, &q).await?;
                match page.rows.as_slice() {
                    [] => None,
                    [one] => {
                        let ticket = cache.ticket(tenant, &one.id);
                        match self.store.get(tenant, ResourceKind::User, &one.id).await? {
                            Some(s)
                                if s.doc.get("userName").and_then(Value::as_str).map(str::to_lowercase)
                                    == Some(lower.clone()) =>
                            {
                                let r = self.render_user(cx, &s, false).await?;
                                Some(cache.put(ticket, tenant, &s.id, r))
                            }
                            // Changed in between: let the general path answer.
                            _ => return Ok(None),
                        }
                    }
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(list_response_bytes(hit.as_deref())))
    }

    /// Out of compare-and-swap retries: 412 if the client sent If-Match, otherwise a 409 asking for a retry.
    fn exhausted(pre: &Preconditions) -> ApiError {
        match pre.if_match {
            Some(_) => ApiError::PreconditionFailed,
            None => ProtocolError::Conflict("the resource keeps changing concurrently; retry".into()).into(),
        }
    }

    fn check_if_match(pre: &Preconditions, version: i64) -> Result<(), ApiError> {
        match &pre.if_match {
            Some(m) if !etag_matches(m, version) => Err(ApiError::PreconditionFailed),
            _ => Ok(()),
        }
    }

    #[tracing::instrument(name = "scim.replace", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn replace(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        body: Value,
        proj: &Projection,
        pre: &Preconditions,
    ) -> Result<Output, ApiError> {
        let mut body = body;
        let mut member_ops = Vec::new();
        if kind == ResourceKind::Group
            && let Value::Object(o) = &mut body
        {
            let key = o.keys().find(|k| k.eq_ignore_ascii_case("members")).cloned();
            member_ops = match key.and_then(|k| o.remove(&k)) {
                Some(v) => self.member_ops(v)?,
                None => vec![MemberOp::Replace(vec![])],
            };
        }
        let mut doc = normalize(&self.reg, kind, body, Mode::Replace)?;
        let password = self.take_password(kind, &mut doc).await?;
        let password_hash = password.as_ref().map(|(h, _)| h.clone());
        for _ in 0..MAX_CAS_RETRIES {
            let (current, reads) = self.load_for_change(cx, kind, id).await?;
            Self::check_if_match(pre, current.version)?;
            check_immutable(&self.reg, kind, &current.doc, &doc)?;
            let doc_changed = doc != current.doc || password_hash.is_some();
            if !doc_changed && kind == ResourceKind::User {
                return self.output(cx, kind, &current, proj, StatusCode::OK).await;
            }
            let effects = self
                .change_effects(cx, kind, id, &current, reads, &doc, doc_changed, &member_ops)
                .await?;
            let effects = self.seal_secrets(&cx.tenant.id, effects, password.as_ref().map(|(_, p)| p));
            let audit = vec![request_audit(
                cx,
                "replace",
                kind,
                id,
                changed_attributes(&current.doc, &doc),
            )];
            let w = Write {
                emails_unchanged: kind == ResourceKind::User && !scimgate_store::emails_differ(&current.doc, &doc),
                doc: doc.clone(),
                password_hash: password_hash.clone(),
                doc_changed,
                effects,
                audit,
            };
            match self
                .commit_replace(cx, kind, id, current.version, w, member_ops.clone())
                .await?
            {
                Ok(s) => return self.output(cx, kind, &s, proj, StatusCode::OK).await,
                Err(StoreError::VersionMismatch) if pre.if_match.is_none() => continue,
                Err(StoreError::StateConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Self::exhausted(pre))
    }

    #[tracing::instrument(name = "scim.patch", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn patch(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        body: Value,
        proj: &Projection,
        pre: &Preconditions,
    ) -> Result<Output, ApiError> {
        let ops = patch::parse_request(body, &self.limits.filter, self.limits.max_patch_ops)?;
        let (member_ops, ops) = match kind {
            ResourceKind::Group => patch::split_members(&self.reg, ops)?,
            ResourceKind::User => (vec![], ops),
        };
        for _ in 0..MAX_CAS_RETRIES {
            let (current, reads) = self.load_for_change(cx, kind, id).await?;
            Self::check_if_match(pre, current.version)?;
            let mut doc = current.doc.clone();
            patch::apply(&self.reg, kind, id, &mut doc, &ops)?;
            let mut doc = normalize(&self.reg, kind, Value::Object(doc), Mode::Replace)?;
            check_immutable(&self.reg, kind, &current.doc, &doc)?;
            let password = self.take_password(kind, &mut doc).await?;
            let password_hash = password.as_ref().map(|(h, _)| h.clone());
            let member_ops = self.resolve_member_filters(cx, id, &member_ops).await?;
            let doc_changed = doc != current.doc || password_hash.is_some();
            if !doc_changed && member_ops.is_empty() {
                return self.output(cx, kind, &current, proj, StatusCode::OK).await;
            }
            let effects = self
                .change_effects(cx, kind, id, &current, reads, &doc, doc_changed, &member_ops)
                .await?;
            let effects = self.seal_secrets(&cx.tenant.id, effects, password.as_ref().map(|(_, p)| p));
            let mut changed = changed_attributes(&current.doc, &doc);
            if !member_ops.is_empty() {
                changed.push("members".into());
            }
            if password_hash.is_some() {
                changed.push("password".into());
            }
            let audit = vec![request_audit(cx, "patch", kind, id, changed)];
            let w = Write {
                emails_unchanged: kind == ResourceKind::User && !scimgate_store::emails_differ(&current.doc, &doc),
                doc,
                password_hash,
                doc_changed,
                effects,
                audit,
            };
            // Adding and removing members without If-Match commutes with other such changes: no compare-and-swap
            // on the group's version (which 32 concurrent pushes to one group would keep losing); the store's row
            // lock orders them, and the members' identity states keep their own compare-and-swap.
            let members_only = kind == ResourceKind::Group
                && !doc_changed
                && pre.if_match.is_none()
                && member_ops
                    .iter()
                    .all(|op| matches!(op, MemberOp::Add(_) | MemberOp::Remove(_)));
            let expect = if members_only { -1 } else { current.version };
            match self.commit_replace(cx, kind, id, expect, w, member_ops).await? {
                Ok(s) => return self.output(cx, kind, &s, proj, StatusCode::OK).await,
                Err(StoreError::VersionMismatch) if pre.if_match.is_none() => continue,
                Err(StoreError::StateConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Self::exhausted(pre))
    }

    /// Commit a replacement through the group committer (concurrent replacements share a transaction). The
    /// outer error is the committer's; the inner one the store's answer, which the callers' retry loops read.
    async fn commit_replace(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        expect: i64,
        write: Write,
        members: Vec<MemberOp>,
    ) -> Result<Result<Stored, StoreError>, ApiError> {
        let r = scimgate_store::Replacement {
            kind,
            id: id.to_string(),
            expect,
            write,
            members,
        };
        match self.commits.replace(&cx.tenant.id, r).await {
            Ok(s) => Ok(Ok(s)),
            Err(crate::group_commit::CommitError::Store(e)) => Ok(Err(e)),
            Err(stopped) => Err(ApiError::internal(stopped)),
        }
    }

    /// `members[type eq "Group"]`-style removals become explicit ids, read under the same version check.
    async fn resolve_member_filters(
        &self,
        cx: &Ctx,
        group_id: &str,
        ops: &[MemberOp],
    ) -> Result<Vec<MemberOp>, ApiError> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                MemberOp::RemoveWhere(f) => {
                    let resolved = eval::resolve(
                        &self.reg,
                        ResourceKind::Group,
                        scimgate_scim::filter::Filter::ValuePath {
                            path: scimgate_scim::filter::AttrPath {
                                urn: None,
                                attr: "members".into(),
                                sub: None,
                            },
                            filter: Box::new(f.clone()),
                        },
                    )
                    .map_err(|e| ProtocolError::InvalidPath(e.to_string()))?;
                    let scimgate_scim::filter::Filter::ValuePath { filter, .. } = resolved else {
                        continue;
                    };
                    let Some(attr) = self.reg.rt(ResourceKind::Group).core.attr("members") else {
                        continue;
                    };
                    let ids = self
                        .store
                        .members(&cx.tenant.id, group_id)
                        .await?
                        .into_iter()
                        .filter(|m| {
                            let el = json!({"value": m.value, "type": m.kind});
                            el.as_object().is_some_and(|o| eval::matches_element(attr, &filter, o))
                        })
                        .map(|m| m.value)
                        .collect();
                    out.push(MemberOp::Remove(ids));
                }
                other => out.push(other.clone()),
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "scim.delete", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn delete(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        pre: &Preconditions,
    ) -> Result<Output, ApiError> {
        let tenant = &cx.tenant.id;
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.load(cx, kind, id).await?;
            Self::check_if_match(pre, current.version)?;
            // A DELETE is a leaver: the user is archived and the engine locks, then later revokes, its accounts.
            let effects = match kind {
                ResourceKind::User => self
                    .decide_user(
                        tenant,
                        Change {
                            id,
                            doc: &current.doc,
                            groups: &[],
                            archived: true,
                            fresh: false,
                            changed: false,
                            inputs: None,
                        },
                        "delete",
                    )
                    .await?
                    .map(|d| vec![d.effects]),
                ResourceKind::Group => {
                    let name = current.doc.get("displayName").and_then(Value::as_str);
                    Some(self.membership_effects(tenant, Some(id), name, None, &[]).await?)
                }
            }
            .unwrap_or_default();
            match self
                .store
                .delete(
                    tenant,
                    kind,
                    id,
                    Some(current.version),
                    &effects,
                    &[request_audit(cx, "delete", kind, id, vec![])],
                )
                .await
            {
                Ok(()) => {
                    tracing::info!(tenant = %tenant, kind = kind.as_str(), id, "deleted");
                    return Ok(Output {
                        status: StatusCode::NO_CONTENT,
                        body: None,
                        raw: None,
                        etag: None,
                        location: None,
                    });
                }
                Err(StoreError::NotFound) => {
                    return Err(ApiError::NotFound(format!("{} {id} not found", kind.as_str())));
                }
                Err(StoreError::VersionMismatch) if pre.if_match.is_none() => continue,
                Err(StoreError::StateConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Self::exhausted(pre))
    }

    /// The lifecycle effects of replacing `current` with `doc` (and changing membership, for groups).
    #[allow(clippy::too_many_arguments)]
    async fn change_effects(
        &self,
        cx: &Ctx,
        kind: ResourceKind,
        id: &str,
        current: &Stored,
        reads: Option<UserReads>,
        doc: &serde_json::Map<String, Value>,
        doc_changed: bool,
        member_ops: &[MemberOp],
    ) -> Result<Vec<Effects>, ApiError> {
        let tenant = &cx.tenant.id;
        Ok(match kind {
            ResourceKind::User if doc_changed => {
                let (groups, inputs) = match reads {
                    Some((groups, inputs)) => (groups, Some(inputs)),
                    None => (self.group_names(tenant, id).await?, None),
                };
                self.decide_user(
                    tenant,
                    Change {
                        id,
                        doc,
                        groups: &groups,
                        archived: false,
                        fresh: false,
                        changed: true,
                        inputs,
                    },
                    "update",
                )
                .await?
                .map(|d| vec![d.effects])
            }
            ResourceKind::User => None,
            ResourceKind::Group => {
                let old = current.doc.get("displayName").and_then(Value::as_str);
                let new = doc.get("displayName").and_then(Value::as_str);
                Some(self.membership_effects(tenant, Some(id), old, new, member_ops).await?)
            }
        }
        .unwrap_or_default())
    }

    /// An archived identity this new user is a rehire of, matched by the policy's rehire keys.
    async fn rehire_match(
        &self,
        tenant: &str,
        doc: &serde_json::Map<String, Value>,
    ) -> Result<Option<Stored>, ApiError> {
        let Some(engine) = &self.engine else { return Ok(None) };
        let policy = engine.policy();
        let keys = policy.rehire_match();
        let ext = keys
            .iter()
            .any(|k| k == "externalId")
            .then(|| doc.get("externalId").and_then(Value::as_str))
            .flatten();
        let emp = keys
            .iter()
            .any(|k| k == "employeeNumber")
            .then(|| {
                doc.get(scimgate_scim::schema::ENTERPRISE_URN)
                    .and_then(|e| e.get("employeeNumber"))
                    .and_then(Value::as_str)
            })
            .flatten();
        if ext.is_none() && emp.is_none() {
            return Ok(None);
        }
        Ok(self.store.find_archived(tenant, ext, emp).await?)
    }

    /// List or search one resource type, or both (root `.search`) when `kind` is `None`.
    #[tracing::instrument(name = "scim.list", level = "debug", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn list(&self, cx: &Ctx, kind: Option<ResourceKind>, p: &ListParams) -> Result<Value, ApiError> {
        let kinds: Vec<ResourceKind> = match kind {
            Some(k) => vec![k],
            None => vec![ResourceKind::User, ResourceKind::Group],
        };
        let cursor_mode = p.cursor.is_some();
        if cursor_mode && p.start_index.is_some() {
            return Err(ProtocolError::InvalidValue("use either cursor or startIndex, not both".into()).into());
        }
        let count = match p.count.as_deref().map(str::trim) {
            None | Some("") => self.limits.default_page,
            Some(c) => {
                let n: i64 = c.parse().map_err(|_| {
                    if cursor_mode {
                        ProtocolError::InvalidCount("count must be an integer".into())
                    } else {
                        ProtocolError::InvalidValue("count must be an integer".into())
                    }
                })?;
                usize::try_from(n.max(0)).unwrap_or(0).min(self.limits.max_page)
            }
        };
        let start_index = match p.start_index.as_deref().map(str::trim) {
            None | Some("") => 1,
            Some(s) => s
                .parse::<i64>()
                .map_err(|_| ProtocolError::InvalidValue("startIndex must be an integer".into()))?
                .max(1),
        };
        let desc = match p.sort_order.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("ascending") => false,
            Some("descending") => true,
            Some(_) => {
                return Err(ProtocolError::InvalidValue("sortOrder must be ascending or descending".into()).into());
            }
        };
        // Per kind: resolved filter, sort and projection. A filter that names attributes a kind lacks
        // excludes that kind from a root search; for a single kind it is invalidFilter.
        let parsed = match p.filter.as_deref().map(str::trim).filter(|f| !f.is_empty()) {
            Some(f) => Some(parse_filter(f, &self.limits.filter).map_err(ProtocolError::filter)?),
            None => None,
        };
        let mut plans = Vec::new();
        let mut last_err = None;
        for &k in &kinds {
            let filter = match &parsed {
                Some(f) => match eval::resolve(&self.reg, k, f.clone()) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                },
                None => None,
            };
            let sort = match p.sort_by.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                Some(s) => {
                    let path = parse_patch_path(s, &self.limits.filter)
                        .map_err(|e| ProtocolError::InvalidValue(format!("sortBy: {e}")))?;
                    match self.reg.resolve(k, &path.attr) {
                        Some(Target::Attr(r)) if path.filter.is_none() => Some((r.to_path(), desc)),
                        _ => {
                            return Err(ProtocolError::InvalidValue(format!("sortBy: unknown attribute {s}")).into());
                        }
                    }
                }
                None => None,
            };
            let proj = self.projection(k, p.attributes.as_deref(), p.excluded.as_deref())?;
            plans.push((k, filter, sort, proj));
        }
        if plans.is_empty() {
            return Err(last_err
                .map(ApiError::from)
                .unwrap_or_else(|| ProtocolError::InvalidFilter("no resource type matches".into()).into()));
        }
        let qhash = query_hash(kind, p);
        let now = chrono::Utc::now().timestamp();
        let position = match p.cursor.as_deref() {
            Some("") | None => None,
            Some(c) => Some(self.cursor_key.decode(c, &qhash, &cx.tenant.id, now)?),
        };
        let single_keyset = plans.len() == 1 && plans[0].2.is_none() && cursor_mode;
        let first = match &position {
            Some(Position::Offset(o)) => *o,
            Some(Position::After(_) | Position::Counted { .. }) => 0,
            None if cursor_mode => 0,
            None => usize::try_from(start_index - 1).unwrap_or(0),
        };
        let mut offset = first;
        let mut resources = Vec::new();
        let mut total = 0usize;
        let mut keyset_more = false;
        let mut last_id = None;
        let mut remaining = count;
        for (k, filter, sort, proj) in &plans {
            // A keyset cursor's later pages reuse the first page's count: totalResults is the number of matches
            // when the listing started, and no page counts a million rows again.
            let (start, known_total) = match (&position, single_keyset) {
                (Some(Position::After(id)), true) => (Start::After(id.clone()), None),
                (Some(Position::Counted { after, total }), true) => (Start::After(after.clone()), Some(*total)),
                _ => (Start::Offset(offset), None),
            };
            let q = Query {
                reg: &self.reg,
                filter: filter.as_ref(),
                sort: sort.clone(),
                start,
                count: remaining,
                lowering: true,
                total: known_total,
            };
            let page = self.store.query(&cx.tenant.id, *k, &q).await?;
            total += page.total;
            offset = offset.saturating_sub(page.total);
            keyset_more = page.more;
            remaining -= page.rows.len().min(remaining);
            for doc in self.full_docs(cx, *k, &page.rows, proj).await? {
                resources.push(render(&self.reg, *k, &doc, proj));
            }
            if let Some(s) = page.rows.last() {
                last_id = Some(s.id.clone());
            }
        }
        let more = if single_keyset {
            keyset_more
        } else {
            first + resources.len() < total
        };
        let mut body = json!({
            "schemas": [urn::LIST_RESPONSE],
            "totalResults": total,
            "itemsPerPage": resources.len(),
        });
        if cursor_mode {
            if more && !resources.is_empty() {
                let pos = match (single_keyset, last_id) {
                    (true, Some(id)) => Position::Counted { after: id, total },
                    _ => Position::Offset(first + resources.len()),
                };
                let exp = now + self.limits.cursor_timeout_secs;
                body["nextCursor"] = json!(self.cursor_key.encode(pos, &qhash, &cx.tenant.id, exp));
            }
        } else {
            body["startIndex"] = json!(start_index);
        }
        body["Resources"] = Value::Array(resources);
        Ok(body)
    }

    /// Run a Bulk request (RFC 7644 §3.7).
    #[tracing::instrument(name = "scim.bulk", skip_all, fields(tenant = %cx.tenant.id))]
    pub async fn bulk(&self, cx: &Ctx, body: Value) -> Result<Value, ApiError> {
        let n = bulk::count_ops(&body);
        if n > self.limits.bulk_max_ops {
            return Err(ApiError::PayloadTooLarge(format!(
                "the request has {n} operations; maxOperations is {}",
                self.limits.bulk_max_ops
            )));
        }
        let req = bulk::parse(body)?;
        let (order, cyclic) = bulk::order(&req.ops);
        let mut results: Vec<Option<Value>> = vec![None; req.ops.len()];
        for i in cyclic {
            let op = &req.ops[i];
            let err = ApiError::Protocol(ProtocolError::Conflict("circular bulkId references".into()));
            results[i] = Some(op_result(op, None, None, Err(err)));
        }
        let mut run = BulkRun {
            fail_on_errors: req.fail_on_errors,
            ids: HashMap::new(),
            errors: 0,
            results,
        };
        // Consecutive `POST /Users` without bulkId references are prepared one by one (schema, password, policy
        // decision, audit record: what `create` does before its store call) and committed together, up to
        // BULK_BATCH at a time, in one transaction. Every other operation, a rehire, and an operation that fails
        // before the store, runs alone, after the batch before it has committed: the order is the request's.
        let mut batch: Vec<(usize, String, Write)> = Vec::new();
        for i in order {
            if run.stopped() {
                break;
            }
            let op = &req.ops[i];
            let single = if batchable(op) {
                match self.prepare_create(cx, op).await {
                    Ok(Some((id, w))) => {
                        batch.push((i, id, w));
                        if batch.len() >= BULK_BATCH {
                            self.commit_batch(cx, &req.ops, std::mem::take(&mut batch), &mut run)
                                .await;
                        }
                        continue;
                    }
                    // A rehire: the single path takes it.
                    Ok(None) => None,
                    Err(e) => Some(e),
                }
            } else {
                None
            };
            self.commit_batch(cx, &req.ops, std::mem::take(&mut batch), &mut run)
                .await;
            if run.stopped() {
                break;
            }
            let outcome = match single {
                Some(e) => Err(e),
                None => self.bulk_one(cx, op, &run.ids).await,
            };
            run.record(cx, i, op, outcome);
        }
        self.commit_batch(cx, &req.ops, batch, &mut run).await;
        Ok(json!({
            "schemas": [BULK_RESPONSE_URN],
            "Operations": run.results.into_iter().flatten().collect::<Vec<_>>(),
        }))
    }

    /// A Bulk `POST /Users` up to its store call: `Ok(None)` if it is a rehire (the single path takes it).
    async fn prepare_create(&self, cx: &Ctx, op: &bulk::BulkOp) -> Result<Option<(String, Write)>, ApiError> {
        let kind = ResourceKind::User;
        let body = op.data.clone().unwrap_or(Value::Null);
        let mut doc = normalize(&self.reg, kind, body, Mode::Create)?;
        let password = self.take_password(kind, &mut doc).await?;
        if self.rehire_match(&cx.tenant.id, &doc).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(self.new_write(cx, kind, doc, password, &[]).await?))
    }

    /// Commit prepared creates in one transaction. If that fails (a taken userName, a concurrent change, …),
    /// nothing was written and each operation runs again alone, so each gets the answer it would have had.
    async fn commit_batch(
        &self,
        cx: &Ctx,
        ops: &[bulk::BulkOp],
        batch: Vec<(usize, String, Write)>,
        run: &mut BulkRun,
    ) {
        if batch.is_empty() {
            return;
        }
        let tenant = &cx.tenant.id;
        let kind = ResourceKind::User;
        let (idx, items): (Vec<usize>, Vec<(String, Write)>) = batch.into_iter().map(|(i, id, w)| (i, (id, w))).unzip();
        let n = items.len();
        let tickets: Vec<_> = items
            .iter()
            .map(|(id, _)| self.write_ticket(tenant, kind, id))
            .collect();
        match self.store.create_many(tenant, kind, &items).await {
            Ok(stored) => {
                // Written through to the read cache, as a single create is: a load is usually read back.
                if let Some(cache) = self.store.read_cache() {
                    for (s, t) in stored.iter().zip(&tickets) {
                        if let (Some(t), Ok(r)) = (t, self.render_user(cx, s, true).await) {
                            cache.put(*t, tenant, &s.id, r);
                        }
                    }
                }
                for (i, s) in idx.into_iter().zip(stored) {
                    tracing::debug!(tenant = %tenant, kind = kind.as_str(), id = %s.id, "created");
                    let out = Output {
                        status: StatusCode::CREATED,
                        body: None,
                        raw: None,
                        etag: Some(etag(s.version)),
                        location: Some(self.location(cx, kind, &s.id)),
                    };
                    run.record(cx, i, &ops[i], Ok((StatusCode::CREATED, Some(s.id), out)));
                }
            }
            Err(e) => {
                tracing::debug!(tenant = %tenant, operations = n, error = %e, "batched creates failed; running them one by one");
                for i in idx {
                    if run.stopped() {
                        break;
                    }
                    let outcome = self.bulk_one(cx, &ops[i], &run.ids).await;
                    run.record(cx, i, &ops[i], outcome);
                }
            }
        }
    }

    async fn bulk_one(
        &self,
        cx: &Ctx,
        op: &bulk::BulkOp,
        ids: &HashMap<String, String>,
    ) -> Result<(StatusCode, Option<String>, Output), ApiError> {
        let path = bulk::substitute_path(&op.path, ids)
            .map_err(|b| ProtocolError::InvalidValue(format!("bulkId:{b} was not created")))?;
        let mut data = op.data.clone().unwrap_or(Value::Null);
        bulk::substitute(&mut data, ids)
            .map_err(|b| ProtocolError::InvalidValue(format!("bulkId:{b} was not created")))?;
        let trimmed = path.trim_start_matches('/');
        let (endpoint, id) = match trimmed.split_once('/') {
            Some((e, id)) => (e, Some(id)),
            None => (trimmed, None),
        };
        let kind = match endpoint {
            "Users" => ResourceKind::User,
            "Groups" => ResourceKind::Group,
            _ => return Err(ApiError::NotFound(format!("no endpoint {path}"))),
        };
        let pre = Preconditions {
            if_match: op.version.clone(),
            if_none_match: None,
        };
        let proj = Projection::Default;
        let out = match (op.method, id) {
            (Method::Post, None) => self.create(cx, kind, data, &proj).await?,
            (Method::Put, Some(id)) => self.replace(cx, kind, id, data, &proj, &pre).await?,
            (Method::Patch, Some(id)) => self.patch(cx, kind, id, data, &proj, &pre).await?,
            (Method::Delete, Some(id)) => {
                let mut o = self.delete(cx, kind, id, &pre).await?;
                o.location = Some(self.location(cx, kind, id));
                o
            }
            _ => {
                return Err(ApiError::MethodNotAllowed(format!(
                    "{} is not allowed on {path}",
                    op.method.as_str()
                )));
            }
        };
        let new_id = match (&out.body, &out.location) {
            (Some(b), _) => b.get("id").and_then(Value::as_str).map(str::to_string),
            // A pre-serialised answer to a create: its id ends its Location.
            (None, Some(l)) if out.status == StatusCode::CREATED => l.rsplit('/').next().map(str::to_string),
            _ => None,
        };
        let location = out
            .location
            .clone()
            .or_else(|| new_id.as_ref().map(|i| self.location(cx, kind, i)));
        Ok((out.status, new_id, Output { location, ..out }))
    }
}

/// A user's `groups`, as answered: absent when the user is in none.
fn attach_groups(cx: &Ctx, doc: &mut Map<String, Value>, groups: Vec<(String, String)>) {
    if groups.is_empty() {
        return;
    }
    let list: Vec<Value> = groups
        .into_iter()
        .map(|(id, name)| {
            json!({"value": id, "$ref": format!("{}/Groups/{id}", cx.base_url), "display": name, "type": "direct"})
        })
        .collect();
    doc.insert("groups".into(), Value::Array(list));
}

/// A ListResponse of at most one pre-serialised user, as `list` would answer it.
fn list_response_bytes(user: Option<&Rendered>) -> Bytes {
    static HEADS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        [0, 1].map(|n| {
            format!(
                "{{\"schemas\":[\"{}\"],\"totalResults\":{n},\"itemsPerPage\":{n},\"startIndex\":1,\"Resources\":[",
                urn::LIST_RESPONSE
            )
        })
    });
    let head = &HEADS[usize::from(user.is_some())];
    let mut out = Vec::with_capacity(head.len() + 2 + user.map_or(0, |u| u.body.len()));
    out.extend_from_slice(head.as_bytes());
    if let Some(u) = user {
        out.extend_from_slice(&u.body);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

/// How many Bulk creates commit in one transaction.
const BULK_BATCH: usize = 250;

/// Whether a Bulk operation may join a batch of creates: a `POST /Users` that references no bulkId.
fn batchable(op: &bulk::BulkOp) -> bool {
    op.method == Method::Post && op.path.trim_start_matches('/') == "Users" && bulk::references(op).is_empty()
}

/// A Bulk request's progress: results by operation index, the bulkIds created, the errors counted.
struct BulkRun {
    fail_on_errors: Option<usize>,
    ids: HashMap<String, String>,
    errors: usize,
    results: Vec<Option<Value>>,
}

impl BulkRun {
    /// failOnErrors reached: no further operation runs.
    fn stopped(&self) -> bool {
        self.fail_on_errors.is_some_and(|max| self.errors >= max)
    }

    fn record(
        &mut self,
        cx: &Ctx,
        i: usize,
        op: &bulk::BulkOp,
        outcome: Result<(StatusCode, Option<String>, Output), ApiError>,
    ) {
        if let Ok((_, Some(id), _)) = &outcome
            && let Some(b) = &op.bulk_id
        {
            self.ids.insert(b.clone(), id.clone());
        }
        if outcome.is_err() {
            self.errors += 1;
        }
        let (location, version) = match &outcome {
            Ok((_, _, o)) => (o.location.clone(), o.etag.clone()),
            // RFC 7644 §3.7.3: every result but a failed POST carries the resource's location.
            Err(_) if op.method != Method::Post => {
                let path = bulk::substitute_path(&op.path, &self.ids).unwrap_or_else(|_| op.path.clone());
                (Some(format!("{}/{}", cx.base_url, path.trim_start_matches('/'))), None)
            }
            Err(_) => (None, None),
        };
        self.results[i] = Some(op_result(op, location, version, outcome.map(|(s, _, _)| s)));
    }
}

fn op_result(
    op: &bulk::BulkOp,
    location: Option<String>,
    version: Option<String>,
    outcome: Result<StatusCode, ApiError>,
) -> Value {
    let mut r = json!({"method": op.method.as_str()});
    if let Some(b) = &op.bulk_id {
        r["bulkId"] = json!(b);
    }
    if let Some(l) = location {
        r["location"] = json!(l);
    }
    if let Some(v) = version {
        r["version"] = json!(v);
    }
    match outcome {
        Ok(status) => r["status"] = json!(status.as_u16().to_string()),
        Err(e) => {
            e.log();
            r["status"] = json!(e.status().as_u16().to_string());
            r["response"] = e.body();
        }
    }
    r
}

/// The query a cursor belongs to: everything but the cursor and count.
fn query_hash(kind: Option<ResourceKind>, p: &ListParams) -> String {
    let mut h = Sha256::new();
    for part in [
        Some(kind.map_or("*", ResourceKind::as_str)),
        p.filter.as_deref(),
        p.sort_by.as_deref(),
        p.sort_order.as_deref(),
        p.attributes.as_deref(),
        p.excluded.as_deref(),
    ] {
        h.update(part.unwrap_or("").as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The audit record of a SCIM request, redacted: which attributes, never their values.
fn request_audit(cx: &Ctx, op: &str, kind: ResourceKind, id: &str, attributes: Vec<String>) -> AuditEntry {
    AuditEntry {
        kind: "request".into(),
        actor: cx.actor.clone(),
        identity_id: (kind == ResourceKind::User).then(|| id.to_string()),
        request_id: cx.request_id.clone(),
        data: json!({"op": op, "resource": kind.as_str(), "id": id, "attributes": attributes}),
    }
}

/// Attribute names of a document, extension attributes as `urn:…:name`.
fn attribute_names(doc: &serde_json::Map<String, Value>) -> Vec<String> {
    changed_attributes(&serde_json::Map::new(), doc)
}

/// Names of the attributes that differ between two documents.
fn changed_attributes(old: &serde_json::Map<String, Value>, new: &serde_json::Map<String, Value>) -> Vec<String> {
    let empty = serde_json::Map::new();
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for k in keys {
        match (old.get(k.as_str()), new.get(k.as_str())) {
            (a, b) if a == b => {}
            (a, b) if k.contains(':') => {
                let a = a.and_then(Value::as_object).unwrap_or(&empty);
                let b = b.and_then(Value::as_object).unwrap_or(&empty);
                out.extend(changed_attributes(a, b).into_iter().map(|n| format!("{k}:{n}")));
            }
            _ => out.push(k.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_weak_strong_and_star() {
        assert!(etag_matches("W/\"3\"", 3));
        assert!(etag_matches("\"3\"", 3));
        assert!(etag_matches("*", 3));
        assert!(etag_matches("W/\"1\", W/\"3\"", 3));
        assert!(!etag_matches("W/\"2\"", 3));
    }
}
