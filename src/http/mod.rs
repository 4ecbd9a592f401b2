//! HTTP: the router, tenant authentication, and the SCIM handlers.
//!
//! `app(state)` builds the whole [`Router`] without opening a socket, so tests drive it with `oneshot`.
//! Each tenant's routes are nested at its base path behind its own bearer-token check; every error leaves
//! through [`error::ApiError`] as a SCIM error body.

pub mod admin;
pub mod auth;
pub mod discovery;
pub mod error;
pub mod extract;
mod resources;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

use crate::config::Tenant;
use crate::service::ScimService;
use error::ApiError;

pub const SCIM_JSON: &str = "application/scim+json";

/// Shared state: the service and the HTTP limits.
pub struct AppState {
    pub service: ScimService,
    /// The outbox workers and the configured targets (workers run only under `scimgate serve`).
    pub outbox: Arc<crate::outbox::Outbox>,
    pub tenants: Vec<Arc<Tenant>>,
    pub admins: Vec<crate::config::AdminUser>,
    /// Authentication and rate limits, per tenant id.
    pub guards: std::collections::HashMap<String, Arc<auth::TenantGuard>>,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// `https` when serving TLS; used for meta.location when a tenant has no public_url.
    pub scheme: &'static str,
    /// PostgreSQL: the task following other nodes' writes for the read cache; stopped with the state.
    pub cache_listener: Option<AbortOnDrop>,
    /// Open a tracing span for every request, reads included (OpenTelemetry export is on).
    pub span_reads: bool,
}

/// A background task that ends when its owner is dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a tenant's handlers see.
#[derive(Clone)]
pub struct TenantState {
    pub app: Arc<AppState>,
    pub tenant: Arc<Tenant>,
}

/// The whole router: health endpoints, every tenant's SCIM API, and SCIM 404s elsewhere.
pub fn app(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        .route("/readyz", get(readyz).with_state(state.clone()))
        .merge(admin::routes(state.clone()));
    for tenant in &state.tenants {
        let ts = TenantState {
            app: state.clone(),
            tenant: tenant.clone(),
        };
        router = router.nest(&tenant.base_path, tenant_router(ts));
    }
    let context = RequestContext {
        ids: RequestIds::default(),
        span_reads: state.span_reads,
        tenants: state.tenants.clone().into(),
        outbox: Some(state.outbox.clone()),
    };
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(context, request_context))
}

/// Every route of a tenant's SCIM API, relative to its base path. The router is built from this table, and the
/// security tests walk the same table, so a new route cannot be left out of them.
pub fn tenant_routes() -> Vec<(&'static str, MethodRouter<TenantState>)> {
    use resources::*;
    let not_allowed = |m: MethodRouter<TenantState>| {
        m.fallback(|| async { ApiError::MethodNotAllowed("method not allowed on this endpoint".into()) })
    };
    let me = || any(|| async { ApiError::NotImplemented("/Me is not supported".into()) });
    vec![
        ("/Users", not_allowed(get(list_users).post(create_user))),
        ("/Users/.search", not_allowed(post(search_users))),
        (
            "/Users/{id}",
            not_allowed(get(get_user).put(replace_user).patch(patch_user).delete(delete_user)),
        ),
        ("/Groups", not_allowed(get(list_groups).post(create_group))),
        ("/Groups/.search", not_allowed(post(search_groups))),
        (
            "/Groups/{id}",
            not_allowed(
                get(get_group)
                    .put(replace_group)
                    .patch(patch_group)
                    .delete(delete_group),
            ),
        ),
        ("/.search", not_allowed(post(search_root))),
        ("/Bulk", not_allowed(post(bulk))),
        (
            "/ServiceProviderConfig",
            not_allowed(get(discovery::service_provider_config)),
        ),
        ("/ResourceTypes", not_allowed(get(discovery::resource_types))),
        ("/ResourceTypes/{id}", not_allowed(get(discovery::resource_type))),
        ("/Schemas", not_allowed(get(discovery::schemas))),
        ("/Schemas/{id}", not_allowed(get(discovery::schema))),
        ("/Me", me()),
        ("/Me/{*rest}", me()),
    ]
}

fn tenant_router(ts: TenantState) -> Router {
    let mut router = Router::new();
    for (path, methods) in tenant_routes() {
        router = router.route(path, methods);
    }
    router
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(AuthLayer(ts.app.guards.get(&ts.tenant.id).cloned()))
        .with_state(ts)
}

/// Authentication (static token or JWT) and rate limits for a tenant's routes: every route and fallback of the
/// tenant's router is wrapped in [`Authenticate`].
/// `None`: a tenant without a guard (none is built without one); every request is refused.
#[derive(Clone)]
struct AuthLayer(Option<Arc<auth::TenantGuard>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Authenticate<S> {
        Authenticate {
            guard: self.0.clone(),
            inner,
        }
    }
}

/// The tenant's guard in front of a route. A static token is checked, and the request handed on, in `call`
/// itself, without the clone of the route and the boxed future that a `from_fn` middleware costs every request
/// (a few per cent of a cached GET); only a JWT, whose JWKS may have to be fetched, waits in a future of its own.
#[derive(Clone)]
struct Authenticate<S> {
    guard: Option<Arc<auth::TenantGuard>>,
    inner: S,
}

type Answer = std::future::Ready<Result<Response, std::convert::Infallible>>;

impl<S> tower::Service<Request> for Authenticate<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        futures::future::Either<Answer, S::Future>,
        futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        use futures::future::Either::{Left, Right};
        let answer = |r: Response| Left(Left(std::future::ready(Ok(r))));
        let Some(guard) = self.guard.clone() else {
            return answer(ApiError::Unauthorized("unknown tenant".into()).into_response());
        };
        let presented = extract::bearer(req.headers());
        match guard.authenticate_now(presented) {
            Some(Ok(credential)) => match admit(&guard, credential, &mut req) {
                Ok(()) => Left(Right(self.inner.call(req))),
                Err(limited) => answer(limited.into_response()),
            },
            Some(Err(e)) => answer(refuse(&guard, e)),
            None => {
                let token = presented.unwrap_or_default().to_string();
                // The service that was polled ready goes into the future; a clone stays for the next request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Right(Box::pin(async move {
                    let credential = match guard.authenticate_jwt(&token).await {
                        Ok(c) => c,
                        Err(e) => return Ok(refuse(&guard, e)),
                    };
                    match admit(&guard, credential, &mut req) {
                        Ok(()) => inner.call(req).await,
                        Err(limited) => Ok(limited.into_response()),
                    }
                }))
            }
        }
    }
}

/// A failed authentication: its 401, or 429 once failures exceed the tenant's limit (guessing is throttled too).
fn refuse(guard: &auth::TenantGuard, e: ApiError) -> Response {
    match guard.charge_failure() {
        Err(limited) => limited.into_response(),
        Ok(()) => e.into_response(),
    }
}

/// An authenticated request: within the rate limits, it goes on with its actor for the audit trail.
fn admit(guard: &auth::TenantGuard, credential: String, req: &mut Request) -> Result<(), ApiError> {
    guard.check_rate(&credential)?;
    req.extensions_mut().insert(extract::Actor(credential));
    Ok(())
}

/// Request ids for requests that arrive without one: a random per-process prefix and a counter, unique without a
/// random draw (a syscall) per request.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: uuid::Uuid::new_v4().simple().to_string()[..12].into(),
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl RequestIds {
    fn make(&self) -> Option<HeaderValue> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix)).ok()
    }
}

#[derive(Clone)]
struct RequestContext {
    ids: RequestIds,
    /// Open an `http` span for reads too (OpenTelemetry export, debug logging).
    span_reads: bool,
    /// The tenants, for the metrics' tenant label.
    tenants: Arc<[Arc<Tenant>]>,
    /// Woken after a successful write: a committed change may have queued downstream work.
    outbox: Option<Arc<crate::outbox::Outbox>>,
}

/// The header carrying a request's id, in and out.
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The outermost layer, one for everything every request needs, so that a request passes one middleware instead
/// of several: the request id (the client's `X-Request-Id` if it sent a usable one, else a new one), returned as
/// `X-Request-Id`; the `http` span; request count and latency by route template, method, status and tenant (all
/// bounded; timed-out requests included, as this layer is outside the timeout); waking the outbox after a
/// successful write; and the log line of a 500, with its cause chain, request id, method and path.
///
/// Writes run in an `http` span (method, path, request id), so every line they log carries the request id.
/// Reads (GET, HEAD) do not unless `span_reads` or debug logging is on: a span costs about a quarter of the CPU
/// of a cached GET, and a read logs nothing at info or above but its failure, which is logged here with the
/// request id.
async fn request_context(State(cx): State<RequestContext>, mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= MAX_REQUEST_ID => Some(v.clone()),
        _ => {
            let id = cx.ids.make();
            if let Some(v) = &id {
                req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
            }
            id
        }
    };
    let rid = || id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
    let method = req.method().clone();
    let uri = req.uri().clone();
    // MatchedPath is an Arc: cloning it does not copy the template.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let tenant = cx
        .tenants
        .iter()
        .find(|t| {
            uri.path()
                .strip_prefix(t.base_path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .cloned();
    let started = std::time::Instant::now();
    let writes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let span = cx.span_reads || writes || tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG;
    let mut resp = if span {
        let span = tracing::info_span!("http", method = %method, path = %uri.path(), request_id = %rid());
        next.run(req).instrument(span).await
    } else {
        next.run(req).await
    };
    let status = resp.status();
    if writes
        && status.is_success()
        && let Some(outbox) = &cx.outbox
    {
        outbox.wake();
    }
    let labels = [
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        method_label(&method),
        status.as_str(),
        tenant.as_ref().map_or("-", |t| t.id.as_str()),
    ];
    crate::metrics::METRICS.http_requests.with_label_values(&labels).inc();
    crate::metrics::METRICS
        .http_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    if let Some(error::InternalFailure(chain)) = resp.extensions_mut().remove::<error::InternalFailure>() {
        tracing::error!(method = %method, path = %uri.path(), request_id = %rid(), error = %chain, "request failed");
    }
    if let Some(v) = id {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// The method as a metric label: the standard ones, else `other`.
fn method_label(m: &Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The OpenAPI document of the SCIM and admin APIs (tests check it against the route tables).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    let mut r = (StatusCode::OK, OPENAPI).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Readiness: the store answers and, when a policy is configured, it is loaded (a failed reload keeps the last
/// good policy, so the gateway stays ready and reports the error). Target health joins with the adapters.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.service.store.ping().await;
    let policy = state.service.engine.as_ref().map(|e| {
        let p = e.policy();
        serde_json::json!({"hash": p.hash(), "last_reload_error": e.last_error()})
    });
    // A target that is down does not make the gateway unready: its work waits, durable, in the outbox.
    let targets: serde_json::Map<String, serde_json::Value> = state
        .outbox
        .targets()
        .map(|t| (t.id.clone(), serde_json::json!(if t.is_up() { "up" } else { "down" })))
        .collect();
    let body = serde_json::json!({
        "store": if store.is_ok() { "ok" } else { "unreachable" },
        "policy": policy,
        "targets": targets,
    });
    let status = match store {
        Ok(()) => StatusCode::OK,
        Err(e) => {
            tracing::warn!(error = %e, "store is not reachable");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Most bytes of an oversized body read and thrown away before its 413 is sent, and for how long.
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Read and discard the rest of a body that will be refused (within [`DRAIN_MAX_BYTES`] and [`DRAIN_TIME`]).
/// Closing the connection on a client still sending resets it, and the client then sees a broken pipe instead of
/// the 413 (the lingering close of nginx and Apache, for the same reason).
async fn drain(mut stream: axum::body::BodyDataStream) {
    use futures::StreamExt;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Read a JSON body within `limit` bytes. `application/scim+json` and `application/json` are accepted.
pub async fn read_json(headers: &HeaderMap, body: Body, limit: usize) -> Result<serde_json::Value, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(mime == SCIM_JSON || mime == "application/json" || mime.is_empty()) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type {mime} is not JSON"
            )));
        }
    }
    let bytes = read_limited(headers, body, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| scimgate_scim::ProtocolError::InvalidSyntax(format!("the body is not valid JSON: {e}")).into())
}

/// Read a body of at most `limit` bytes; a longer one is a 413 (read to its end first, see [`drain`]).
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let too_large = || ApiError::PayloadTooLarge(format!("the body is larger than {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|len| len > limit) {
        drain(stream).await;
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "request body could not be read");
            scimgate_scim::ProtocolError::InvalidSyntax("the body could not be read".into())
        })?;
        if bytes.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Turn a service output into a response with the SCIM content type, ETag and Location.
pub fn respond(out: crate::service::Output) -> Response {
    let mut r = match (out.raw, out.body) {
        (Some(raw), _) => raw_json_response(out.status, raw),
        (None, Some(b)) => json_response(out.status, &b),
        (None, None) => out.status.into_response(),
    };
    let h = r.headers_mut();
    if let Some(e) = out.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::ETAG, e);
    }
    if let Some(l) = out.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, l);
    }
    r
}

/// A JSON body response with the SCIM content type.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    raw_json_response(status, bytes::Bytes::from(body.to_string()))
}

/// A pre-serialised JSON body with the SCIM content type.
pub fn raw_json_response(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    r
}
