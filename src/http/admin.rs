//! The admin API (`/admin/v1`): approvals, plans, identity state, SoD exceptions, and policy operations.
//!
//! Its own bearer tokens, one per admin user, each with roles:
//! - **approver**: lists the requests addressed to them, approves or denies with a reason, reads history;
//! - **operator**: reloads and previews policy, runs due timers; cannot decide approvals;
//! - **auditor**: reads everything, changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use scimgate_store::{ApprovalRecord, PlanRecord};

use super::error::ApiError;
use super::extract::{ScimPath, ScimQuery, bearer};
use super::{AppState, json_response, read_json};
use crate::config::{AdminRole, AdminUser, sha256};
use crate::engine::{ApprovalRequest, Engine, Subject};
use crate::lifecycle::engine_err;

/// Every admin route (and `/metrics`). The router is built from this table and the security tests walk it.
pub fn admin_routes() -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    vec![
        ("/metrics", get(metrics)),
        ("/admin/v1/policy", get(policy_info)),
        ("/admin/v1/policy/reload", post(policy_reload)),
        ("/admin/v1/tick", post(tick)),
        ("/admin/v1/tenants/{tenant}/policy/preview", post(policy_preview)),
        ("/admin/v1/tenants/{tenant}/approvals", get(list_approvals)),
        ("/admin/v1/tenants/{tenant}/approvals/{id}", get(get_approval)),
        ("/admin/v1/tenants/{tenant}/approvals/{id}/decision", post(decide)),
        ("/admin/v1/tenants/{tenant}/identities/{id}", get(identity)),
        ("/admin/v1/tenants/{tenant}/plans", get(plans)),
        ("/admin/v1/tenants/{tenant}/sod/exceptions", get(exceptions)),
        ("/admin/v1/tenants/{tenant}/outbox", get(outbox_list)),
        ("/admin/v1/tenants/{tenant}/outbox/{id}", get(outbox_get)),
        ("/admin/v1/tenants/{tenant}/outbox/{id}/replay", post(outbox_replay)),
        ("/admin/v1/targets", get(targets)),
    ]
}

pub fn routes(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for (path, methods) in admin_routes() {
        router = router.route(
            path,
            methods.fallback(|| async { ApiError::MethodNotAllowed("method not allowed on this endpoint".into()) }),
        );
    }
    router.with_state(state)
}

/// The authenticated admin user.
pub struct Admin(pub AdminUser);

impl Admin {
    fn require(&self, any_of: &[AdminRole]) -> Result<(), ApiError> {
        if self.0.roles.iter().any(|r| any_of.contains(r)) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "{} may not do this (needs one of {any_of:?})",
                self.0.name
            )))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let token =
            bearer(&parts.headers).ok_or_else(|| ApiError::Unauthorized("an admin bearer token is required".into()))?;
        let hash = sha256(token.trim().as_bytes());
        let mut found = None;
        for u in &state.admins {
            if bool::from(u.token_hash.ct_eq(&hash)) {
                found = Some(u.clone());
            }
        }
        found
            .map(Admin)
            .ok_or_else(|| ApiError::Unauthorized("the admin token is not valid".into()))
    }
}

const READERS: &[AdminRole] = &[AdminRole::Operator, AdminRole::Approver, AdminRole::Auditor];
/// Who may read identities, plans and exceptions: not approvers, who see only the requests addressed to them.
const OVERSEERS: &[AdminRole] = &[AdminRole::Operator, AdminRole::Auditor];

fn sees_all(admin: &Admin) -> bool {
    admin.0.roles.iter().any(|r| OVERSEERS.contains(r))
}

fn engine(state: &AppState) -> Result<&Arc<Engine>, ApiError> {
    state
        .service
        .engine
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("no policy is configured".into()))
}

fn tenant(state: &AppState, id: &str) -> Result<(), ApiError> {
    if state.tenants.iter().any(|t| t.id == id) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("tenant {id} not found")))
    }
}

/// Prometheus text format, behind admin authentication (any role).
async fn metrics(State(st): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(READERS)?;
    Ok(render_metrics(&st).await)
}

/// Refresh the gauges that mirror stored state, then render every metric.
pub async fn render_metrics(st: &AppState) -> Response {
    let m = &crate::metrics::METRICS;
    m.approvals_pending.reset();
    for t in &st.tenants {
        let Ok(pending) = st.service.store.approvals(&t.id, Some("pending"), None).await else {
            continue;
        };
        for a in pending {
            if let Ok(req) = serde_json::from_str::<ApprovalRequest>(&a.request) {
                let stage = req.stages.get(req.stage).map_or("-", |s| s.id.as_str()).to_string();
                m.approvals_pending.with_label_values(&[&t.id, &req.tier, &stage]).inc();
            }
        }
    }
    let mut r = (StatusCode::OK, m.render()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn policy_info(State(st): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(READERS)?;
    let e = engine(&st)?;
    let p = e.policy();
    Ok(json_response(
        StatusCode::OK,
        &json!({"hash": p.hash(), "mode": p.mode(), "last_reload_error": e.last_error()}),
    ))
}

/// Re-read the policy file; a bad file keeps the running policy and answers 400 with the error's place.
async fn policy_reload(State(st): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(&[AdminRole::Operator])?;
    let e = engine(&st)?;
    let before = e.policy().hash().to_string();
    let result = e.reload();
    if result.is_ok() {
        // Every identity is recomputed under the new policy version, in the background, whatever follows.
        let state = st.clone();
        tokio::spawn(async move { reevaluate_all(&state, "policy").await });
    }
    let at = scimgate_scim::resource::format_datetime(e.now());
    for t in &st.tenants {
        let entry = scimgate_store::AuditEntry {
            kind: "policy".into(),
            actor: admin.0.name.clone(),
            identity_id: None,
            request_id: None,
            data: match &result {
                Ok(hash) => json!({"op": "reload", "from": before, "to": hash}),
                Err(err) => json!({"op": "reload", "kept": before, "error": err}),
            },
        };
        st.service.store.append(&t.id, &at, &[entry]).await?;
    }
    match result {
        Ok(hash) => Ok(json_response(StatusCode::OK, &json!({"hash": hash}))),
        Err(msg) => Ok(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": msg, "running_policy_hash": e.policy().hash()}),
        )),
    }
}

pub async fn reevaluate_all(state: &AppState, cause: &str) {
    for t in &state.tenants {
        let mut after: Option<String> = None;
        loop {
            let ids = match state.service.store.identity_ids(&t.id, after.as_deref(), 500).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(error = %e, "re-evaluation stopped");
                    return;
                }
            };
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                if let Err(e) = state.service.reevaluate(&t.id, id, cause).await {
                    e.log();
                }
            }
            after = ids.last().cloned();
        }
    }
}

async fn tick(State(st): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(&[AdminRole::Operator])?;
    let done = st.service.tick().await?;
    Ok(json_response(StatusCode::OK, &json!({"done": done})))
}

/// What a candidate policy (the request body, TOML) would grant and revoke for every identity of the tenant.
async fn policy_preview(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath(t): ScimPath<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin.require(&[AdminRole::Operator, AdminRole::Auditor])?;
    let bytes = super::read_limited(&headers, body, st.max_body_bytes).await?;
    let body = String::from_utf8(bytes)
        .map_err(|_| scimgate_scim::ProtocolError::InvalidSyntax("the policy must be UTF-8 TOML".into()))?;
    tenant(&st, &t)?;
    let e = engine(&st)?;
    let candidate = match scimgate_policy::Policy::parse(&body, "candidate policy") {
        Ok(p) => p,
        Err(err) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": err.to_string()}),
            ));
        }
    };
    let report = preview(&st, &t, &candidate, e.now()).await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// Plans under `policy` for every identity of a tenant: only identities with changes are listed.
pub async fn preview(
    st: &AppState,
    t: &str,
    policy: &scimgate_policy::Policy,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value, ApiError> {
    let svc = &st.service;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let (mut grants, mut revokes, mut seen) = (0usize, 0usize, 0usize);
    let exceptions = svc.store.exceptions(t, None).await?;
    loop {
        let page = svc.store.identity_page(t, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user.id.clone());
        for row in &page {
            seen += 1;
            let id = row.user.id.as_str();
            let groups = if row.archived { &[][..] } else { &row.groups[..] };
            let subject = Subject {
                tenant: t,
                id,
                doc: &row.user.doc,
                groups,
                archived: row.archived,
                manager: None,
                changed: false,
            };
            let plan = Engine::preview(policy, &subject, row.state.as_ref(), &exceptions, now).map_err(engine_err)?;
            if plan.items.is_empty() {
                continue;
            }
            grants += plan
                .items
                .iter()
                .filter(|i| matches!(i.action, scimgate_policy::Action::Grant))
                .count();
            revokes += plan
                .items
                .iter()
                .filter(|i| matches!(i.action, scimgate_policy::Action::Revoke))
                .count();
            out.push(json!({
                "identity": id,
                "userName": row.user.doc.get("userName"),
                "items": plan.items,
            }));
        }
    }
    Ok(json!({
        "policy_hash": policy.hash(),
        "identities": seen,
        "changed": out.len(),
        "grants": grants,
        "revokes": revokes,
        "plans": out,
    }))
}

#[derive(Deserialize)]
struct ApprovalQuery {
    status: Option<String>,
    identity: Option<String>,
}

fn approval_json(a: &ApprovalRecord) -> Result<Value, ApiError> {
    let req: Value = serde_json::from_str(&a.request).map_err(ApiError::internal)?;
    Ok(json!({
        "id": a.id,
        "identity": a.identity_id,
        "status": a.status,
        "created": a.created,
        "escalate_at": a.escalate_at,
        "expires_at": a.expires_at,
        "decided_at": a.decided_at,
        "request": req,
    }))
}

/// Approvers see the requests whose current stage names them (and, with `status`, their history); auditors and
/// operators see all.
async fn list_approvals(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath(t): ScimPath<String>,
    ScimQuery(q): ScimQuery<ApprovalQuery>,
) -> Result<Response, ApiError> {
    admin.require(READERS)?;
    tenant(&st, &t)?;
    let all = st
        .service
        .store
        .approvals(&t, q.status.as_deref(), q.identity.as_deref())
        .await?;
    let sees_all = sees_all(&admin);
    let mut out = Vec::new();
    for a in &all {
        let req: ApprovalRequest = serde_json::from_str(&a.request).map_err(ApiError::internal)?;
        let mine = req.stages.iter().any(|s| s.approvers.contains(&admin.0.name));
        let pending_for_me = a.status == "pending" && req.may_decide(&admin.0.name);
        let visible = sees_all || if a.status == "pending" { pending_for_me } else { mine };
        if visible {
            out.push(approval_json(a)?);
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"approvals": out})))
}

async fn get_approval(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath((t, id)): ScimPath<(String, String)>,
) -> Result<Response, ApiError> {
    admin.require(READERS)?;
    tenant(&st, &t)?;
    let a = st
        .service
        .store
        .approval(&t, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("approval not found".into()))?;
    if !sees_all(&admin) {
        let req: ApprovalRequest = serde_json::from_str(&a.request).map_err(ApiError::internal)?;
        if !req.stages.iter().any(|s| s.approvers.contains(&admin.0.name)) {
            return Err(ApiError::NotFound("approval not found".into()));
        }
    }
    Ok(json_response(StatusCode::OK, &approval_json(&a)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    reason: String,
}

async fn decide(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath((t, id)): ScimPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admin.require(&[AdminRole::Approver])?;
    tenant(&st, &t)?;
    let e = engine(&st)?;
    let json = read_json(&headers, body, 64 * 1024).await?;
    let d: DecisionBody = serde_json::from_value(json)
        .map_err(|err| scimgate_scim::ProtocolError::InvalidSyntax(format!("decision body: {err}")))?;
    let approve = match d.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(scimgate_scim::ProtocolError::InvalidValue("decision is approve or deny".into()).into()),
    };
    if d.reason.trim().is_empty() {
        return Err(scimgate_scim::ProtocolError::InvalidValue("a reason is required".into()).into());
    }
    let svc = &st.service;
    for _ in 0..8 {
        let a = svc
            .store
            .approval(&t, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound("approval not found".into()))?;
        // Nobody approves their own access, whatever the stage names.
        let subject = svc.store.get_with_archived(&t, &a.identity_id).await?;
        let subject_name = subject
            .as_ref()
            .and_then(|(u, _)| u.doc.get("userName"))
            .and_then(Value::as_str);
        if subject_name == Some(admin.0.name.as_str()) {
            return Err(ApiError::Forbidden(
                "an approver cannot decide a request for their own access".into(),
            ));
        }
        let state = svc.store.identity_state(&t, &a.identity_id).await?;
        let (effects, status) = e
            .decide_approval(&a, state.as_ref(), &admin.0.name, approve, &d.reason)
            .map_err(engine_err)?;
        match svc.store.apply_effects(&t, &[effects]).await {
            Ok(()) => {
                tracing::info!(tenant = %t, approval = %id, approver = %admin.0.name, status = %status, "approval decided");
                let a = svc
                    .store
                    .approval(&t, &id)
                    .await?
                    .ok_or_else(|| ApiError::NotFound("approval not found".into()))?;
                return Ok(json_response(StatusCode::OK, &approval_json(&a)?));
            }
            Err(scimgate_store::StoreError::StateConflict) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(scimgate_store::StoreError::StateConflict.into())
}

async fn identity(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath((t, id)): ScimPath<(String, String)>,
) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    tenant(&st, &t)?;
    let svc = &st.service;
    let (user, archived) = svc
        .store
        .get_with_archived(&t, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("identity not found".into()))?;
    let state = svc.store.identity_state(&t, &id).await?;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let approvals = svc.store.approvals(&t, None, Some(&id)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id,
            "userName": user.doc.get("userName"),
            "archived": archived,
            "state": state.as_ref().map(|s| json!({
                "version": s.version,
                "leaver_since": s.leaver_since,
                "current": parse(&s.current),
                "evaluation": parse(&s.evaluation),
                "policy_hash": s.policy_hash,
                "wakeup_at": s.wakeup_at,
            })),
            "approvals": approvals.iter().map(approval_json).collect::<Result<Vec<_>, _>>()?,
            "exceptions": svc.store.exceptions(&t, Some(&id)).await?.iter().map(|x| json!({
                "rule": x.rule, "approver": x.approver, "created": x.created, "expires_at": x.expires_at,
            })).collect::<Vec<_>>(),
        }),
    ))
}

#[derive(Deserialize)]
struct PlanQuery {
    identity: Option<String>,
    limit: Option<usize>,
}

fn plan_json(p: &PlanRecord) -> Value {
    json!({
        "id": p.id,
        "identity": p.identity_id,
        "created": p.created,
        "cause": p.cause,
        "mode": p.mode,
        "policy_hash": p.policy_hash,
        "items": serde_json::from_str::<Value>(&p.items).unwrap_or(Value::Null),
    })
}

async fn plans(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath(t): ScimPath<String>,
    ScimQuery(q): ScimQuery<PlanQuery>,
) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    tenant(&st, &t)?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let plans = st.service.store.plans(&t, q.identity.as_deref(), limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"plans": plans.iter().map(plan_json).collect::<Vec<_>>()}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxQuery {
    /// pending, running, done, dead, superseded (default: every status).
    status: Option<String>,
    target: Option<String>,
    identity: Option<String>,
    limit: Option<usize>,
}

/// Outbox rows (dead letters with `?status=dead`), oldest first.
async fn outbox_list(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath(t): ScimPath<String>,
    ScimQuery(q): ScimQuery<OutboxQuery>,
) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    tenant(&st, &t)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = crate::outbox::ops::list(st.service.store.as_ref(), &t, q.status, q.target, q.identity, limit).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"entries": rows.iter().map(|r| crate::outbox::ops::to_json(r, false)).collect::<Vec<_>>()}),
    ))
}

async fn outbox_get(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath((t, id)): ScimPath<(String, String)>,
) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    tenant(&st, &t)?;
    let row = st
        .service
        .store
        .outbox_get(&t, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("outbox row {id} not found")))?;
    Ok(json_response(StatusCode::OK, &crate::outbox::ops::to_json(&row, true)))
}

/// Put a dead letter back in the queue. Operators only; audited with the operator's name.
async fn outbox_replay(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath((t, id)): ScimPath<(String, String)>,
) -> Result<Response, ApiError> {
    admin.require(&[AdminRole::Operator])?;
    tenant(&st, &t)?;
    let actor = format!("admin:{}", admin.0.name);
    if !crate::outbox::ops::replay(st.service.store.as_ref(), &t, &id, &actor).await? {
        return Err(match st.service.store.outbox_get(&t, &id).await? {
            Some(r) => ApiError::Protocol(scimgate_scim::ProtocolError::Conflict(format!(
                "outbox row {id} is {}, not a dead letter",
                r.status
            ))),
            None => ApiError::NotFound(format!("outbox row {id} not found")),
        });
    }
    st.outbox.wake();
    tracing::info!(tenant = %t, id = %id, actor = %actor, "dead letter replayed");
    let row = st.service.store.outbox_get(&t, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &row.map(|r| crate::outbox::ops::to_json(&r, false))
            .unwrap_or(Value::Null),
    ))
}

/// The configured targets, their kinds and whether their circuit is closed.
async fn targets(State(st): State<Arc<AppState>>, admin: Admin) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    let list: Vec<Value> = st
        .outbox
        .targets()
        .map(|t| json!({"id": t.id, "kind": t.adapter.kind(), "up": t.is_up(), "capabilities": t.adapter.capabilities()}))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({"targets": list})))
}

async fn exceptions(
    State(st): State<Arc<AppState>>,
    admin: Admin,
    ScimPath(t): ScimPath<String>,
) -> Result<Response, ApiError> {
    admin.require(OVERSEERS)?;
    tenant(&st, &t)?;
    let now = st
        .service
        .engine
        .as_ref()
        .map(|e| e.now())
        .unwrap_or_else(chrono::Utc::now);
    let list = st.service.store.exceptions(&t, None).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"exceptions": list.iter().map(|x| json!({
            "identity": x.identity_id, "rule": x.rule, "approver": x.approver, "approval": x.approval_id,
            "created": x.created, "expires_at": x.expires_at,
            "active": scimgate_scim::resource::parse_datetime(&x.expires_at).is_some_and(|e| e > now),
        })).collect::<Vec<_>>()}),
    ))
}
