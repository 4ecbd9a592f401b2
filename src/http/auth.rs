//! Tenant authentication and rate limiting.
//!
//! A request authenticates with one of its tenant's static bearer tokens (kept as SHA-256, compared in constant
//! time) or, where the tenant has a `jwt` section, with an OAuth2 JWT: asymmetric signature checked against the
//! JWKS (file or URL, cached with moka and refreshed on an unknown `kid`), plus issuer, audience and expiry.
//! Then the tenant's and the credential's rate limits (governor) apply: over them, 429 with Retry-After.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{JwtConfig, Tenant, sha256};
use crate::metrics::METRICS;

/// Per-tenant guards, built once at start.
pub struct TenantGuard {
    tenant: Arc<Tenant>,
    limiter: Option<DefaultDirectRateLimiter>,
    per_credential: Option<DefaultKeyedRateLimiter<String>>,
    jwt: Option<JwtValidator>,
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    Some(Quota::per_second(NonZeroU32::new(per_second)?).allow_burst(NonZeroU32::new(burst)?))
}

impl TenantGuard {
    pub fn new(tenant: Arc<Tenant>) -> Self {
        let limiter = tenant
            .rate_limit
            .as_ref()
            .and_then(|r| quota(r.per_second, r.burst))
            .map(governor::RateLimiter::direct);
        let per_credential = tenant
            .rate_limit
            .as_ref()
            .and_then(|r| quota(r.per_token_per_second?, r.per_token_burst.or(r.per_token_per_second)?))
            .map(governor::RateLimiter::keyed);
        let jwt = tenant.jwt.clone().map(JwtValidator::new);
        TenantGuard {
            tenant,
            limiter,
            per_credential,
            jwt,
        }
    }

    /// Authenticate a bearer token as far as can be decided without waiting; returns the credential key used for
    /// per-credential limits. Decided here: a missing token, one of the static tokens, or (no JWT validation
    /// configured, or not JWT-shaped) a wrong one. `None`: the token is to be validated as a JWT
    /// ([`TenantGuard::authenticate_jwt`]).
    pub fn authenticate_now(&self, bearer: Option<&str>) -> Option<Result<String, ApiError>> {
        let id = &self.tenant.id;
        let Some(token) = bearer else {
            METRICS.auth_failures.with_label_values(&[id, "missing"]).inc();
            return Some(Err(ApiError::Unauthorized("a bearer token is required".into())));
        };
        let hash = sha256(token.as_bytes());
        let mut matched = None;
        for (i, h) in self.tenant.token_hashes.iter().enumerate() {
            if bool::from(h.ct_eq(&hash)) {
                matched = Some(i);
            }
        }
        if let Some(i) = matched {
            return Some(Ok(format!("token:{i}")));
        }
        if self.jwt.is_some() && token.split('.').count() == 3 {
            return None;
        }
        METRICS.auth_failures.with_label_values(&[id, "invalid"]).inc();
        Some(Err(ApiError::Unauthorized(
            "the bearer token is not valid for this tenant".into(),
        )))
    }

    /// Validate a JWT-shaped bearer token against the tenant's JWKS.
    pub async fn authenticate_jwt(&self, token: &str) -> Result<String, ApiError> {
        let id = &self.tenant.id;
        let refused = || {
            METRICS.auth_failures.with_label_values(&[id, "jwt"]).inc();
            ApiError::Unauthorized("the bearer token is not valid for this tenant".into())
        };
        let Some(jwt) = &self.jwt else {
            return Err(refused());
        };
        match jwt.validate(token).await {
            Ok(sub) => Ok(format!("jwt:{sub}")),
            Err(reason) => {
                tracing::debug!(tenant = %id, %reason, "JWT refused");
                Err(refused())
            }
        }
    }

    /// A failed authentication still counts against the tenant's limit, so guessing is throttled too.
    pub fn charge_failure(&self) -> Result<(), ApiError> {
        self.check_rate("unauthenticated")
    }

    /// Apply the tenant's and the credential's rate limits.
    pub fn check_rate(&self, credential: &str) -> Result<(), ApiError> {
        let wait = |nu: governor::NotUntil<governor::clock::QuantaInstant>| {
            nu.wait_time_from(DefaultClock::default().now())
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64
        };
        if let Some(l) = &self.limiter
            && let Err(nu) = l.check()
        {
            METRICS
                .rate_limited
                .with_label_values(&[&self.tenant.id, "tenant"])
                .inc();
            return Err(ApiError::TooManyRequests(wait(nu)));
        }
        if let Some(l) = &self.per_credential
            && let Err(nu) = l.check_key(&credential.to_string())
        {
            METRICS
                .rate_limited
                .with_label_values(&[&self.tenant.id, "credential"])
                .inc();
            return Err(ApiError::TooManyRequests(wait(nu)));
        }
        Ok(())
    }

    /// Forget idle per-credential buckets (JWT subjects come and go).
    pub fn shrink(&self) {
        if let Some(l) = &self.per_credential {
            l.retain_recent();
        }
    }
}

/// Validates JWTs against a JWKS, cached.
pub struct JwtValidator {
    cfg: JwtConfig,
    cache: moka::future::Cache<(), Arc<JwkSet>>,
    client: reqwest::Client,
    /// When an unknown `kid` last forced a refetch: at most one per [`REFRESH_EVERY`], so tokens with random
    /// `kid`s cannot make the gateway hammer the IdP.
    last_refresh: std::sync::Mutex<Option<std::time::Instant>>,
}

const REFRESH_EVERY: Duration = Duration::from_secs(30);

const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl JwtValidator {
    pub fn new(cfg: JwtConfig) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(1)
            .time_to_live(Duration::from_secs(cfg.jwks_cache_secs))
            .build();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        JwtValidator {
            cfg,
            cache,
            client,
            last_refresh: std::sync::Mutex::new(None),
        }
    }

    async fn load(&self) -> Result<Arc<JwkSet>, String> {
        let text = match (&self.cfg.jwks_file, &self.cfg.jwks_url) {
            (Some(f), _) => tokio::fs::read_to_string(f)
                .await
                .map_err(|e| format!("JWKS file {}: {e}", f.display()))?,
            (_, Some(u)) => {
                let r = self.client.get(u).send().await.map_err(|e| format!("JWKS {u}: {e}"))?;
                r.error_for_status()
                    .map_err(|e| format!("JWKS {u}: {e}"))?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?
            }
            _ => return Err("no JWKS source".into()),
        };
        serde_json::from_str::<JwkSet>(&text)
            .map(Arc::new)
            .map_err(|e| format!("JWKS: {e}"))
    }

    async fn keys(&self, refresh: bool) -> Result<Arc<JwkSet>, String> {
        if refresh {
            self.cache.invalidate(&()).await;
        }
        self.cache
            .try_get_with((), self.load())
            .await
            .map_err(|e| e.to_string())
    }

    /// The token's subject, if it is valid.
    pub async fn validate(&self, token: &str) -> Result<String, String> {
        let header = decode_header(token).map_err(|e| e.to_string())?;
        if !ALLOWED.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let mut keys = self.keys(false).await?;
        let find = |set: &JwkSet| match &header.kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let jwk = match find(&keys) {
            Some(k) => k,
            None => {
                // Key rotation: refetch, but not more than once per REFRESH_EVERY.
                let may_refresh = match self.last_refresh.lock() {
                    Ok(mut last) if last.is_none_or(|t| t.elapsed() >= REFRESH_EVERY) => {
                        *last = Some(std::time::Instant::now());
                        true
                    }
                    _ => false,
                };
                if !may_refresh {
                    return Err("no key matches the token's kid".into());
                }
                keys = self.keys(true).await?;
                find(&keys).ok_or("no key matches the token's kid")?
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = 30;
        let data = decode::<serde_json::Value>(token, &key, &v).map_err(|e| e.to_string())?;
        Ok(data
            .claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or("-")
            .to_string())
    }
}
