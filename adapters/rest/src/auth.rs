//! Outbound authentication: none, a static bearer token, HTTP basic, or OAuth2 client credentials with a cached
//! token that is refreshed shortly before it expires, and once more when the target answers 401.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderValue;
use scimgate_adapter_sdk::{AdapterError, ErrorKind};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{ConfigSecret, secret_from};
use crate::error;

/// `auth = { kind = "…", … }`. Secrets may be given inline or, better, as `*_file` paths.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    Bearer {
        #[serde(default)]
        token: Option<ConfigSecret>,
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
    Basic {
        username: String,
        #[serde(default)]
        password: Option<ConfigSecret>,
        #[serde(default)]
        password_file: Option<PathBuf>,
    },
    /// OAuth2 client credentials (RFC 6749 §4.4). The token URL must be in `allowed_hosts` too.
    Oauth2 {
        token_url: String,
        client_id: String,
        #[serde(default)]
        client_secret: Option<ConfigSecret>,
        #[serde(default)]
        client_secret_file: Option<PathBuf>,
        #[serde(default)]
        scope: Option<String>,
        /// `basic` (client_secret_basic, the default) or `post` (client_secret_post).
        #[serde(default)]
        client_auth: ClientAuth,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Basic,
    Post,
}

/// A token is refreshed this long before the expiry it was issued with (or a fifth of its life, if shorter).
const EXPIRY_SKEW: Duration = Duration::from_secs(60);
/// Without `expires_in`, a token is kept this long (or until a 401).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(300);

pub(crate) struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
}

pub(crate) struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    client_auth: ClientAuth,
    cache: Mutex<Option<Cached>>,
}

pub(crate) enum Auth {
    None,
    Static(HeaderValue),
    OAuth2(Box<OAuth2>),
}

fn sensitive(value: String) -> Result<HeaderValue, AdapterError> {
    let mut h = HeaderValue::from_str(&value)
        .map_err(|_| AdapterError::config("a credential holds characters an HTTP header cannot carry"))?;
    h.set_sensitive(true);
    Ok(h)
}

fn basic(user: &str, password: &str) -> Result<HeaderValue, AdapterError> {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    sensitive(format!("Basic {b}"))
}

impl Auth {
    /// Resolve secrets (reading `*_file`s) and check the token URL against the allow-list.
    pub(crate) fn build(
        cfg: &AuthConfig,
        check: impl Fn(&Url) -> Result<(), AdapterError>,
    ) -> Result<Auth, AdapterError> {
        Ok(match cfg {
            AuthConfig::None => Auth::None,
            AuthConfig::Bearer { token, token_file } => {
                let t = secret_from(token, token_file, "token")?
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| AdapterError::config("auth kind bearer needs token or token_file"))?;
                Auth::Static(sensitive(format!("Bearer {t}"))?)
            }
            AuthConfig::Basic {
                username,
                password,
                password_file,
            } => {
                let p = secret_from(password, password_file, "password")?
                    .ok_or_else(|| AdapterError::config("auth kind basic needs password or password_file"))?;
                if username.contains(':') {
                    return Err(AdapterError::config("a basic auth username cannot hold ':'"));
                }
                Auth::Static(basic(username, &p)?)
            }
            AuthConfig::Oauth2 {
                token_url,
                client_id,
                client_secret,
                client_secret_file,
                scope,
                client_auth,
            } => {
                let secret = secret_from(client_secret, client_secret_file, "client_secret")?.ok_or_else(|| {
                    AdapterError::config("auth kind oauth2 needs client_secret or client_secret_file")
                })?;
                let url = Url::parse(token_url)
                    .map_err(|e| AdapterError::config(format!("token_url {token_url:?} is not a URL: {e}")))?;
                check(&url)?;
                Auth::OAuth2(Box::new(OAuth2 {
                    token_url: url,
                    client_id: client_id.clone(),
                    client_secret: secret,
                    scope: scope.clone(),
                    client_auth: *client_auth,
                    cache: Mutex::new(None),
                }))
            }
        })
    }

    pub(crate) fn is_oauth2(&self) -> bool {
        matches!(self, Auth::OAuth2(_))
    }

    /// The Authorization header to send, fetching a token when the cached one is missing or near its expiry.
    pub(crate) async fn header(
        &self,
        http: &reqwest::Client,
        max_bytes: usize,
    ) -> Result<Option<HeaderValue>, AdapterError> {
        match self {
            Auth::None => Ok(None),
            Auth::Static(h) => Ok(Some(h.clone())),
            Auth::OAuth2(o) => {
                let mut guard = o.cache.lock().await;
                if let Some(c) = guard.as_ref()
                    && Instant::now() < c.refresh_at
                {
                    return Ok(Some(c.header.clone()));
                }
                let fresh = fetch_token(http, o, max_bytes).await?;
                let header = fresh.header.clone();
                *guard = Some(fresh);
                Ok(Some(header))
            }
        }
    }

    /// Forget the cached token (the target answered 401 to it).
    pub(crate) async fn invalidate(&self) {
        if let Auth::OAuth2(o) = self {
            *o.cache.lock().await = None;
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// When to refresh a token that lives `life`: `EXPIRY_SKEW` before, or a fifth of its life before if shorter.
pub(crate) fn refresh_after(life: Duration) -> Duration {
    let skew = EXPIRY_SKEW.min(life / 5);
    life.saturating_sub(skew)
}

async fn fetch_token(http: &reqwest::Client, o: &OAuth2, max_bytes: usize) -> Result<Cached, AdapterError> {
    let (url, client_id, client_secret) = (&o.token_url, o.client_id.as_str(), o.client_secret.as_str());
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    if let Some(s) = o.scope.as_deref() {
        form.push(("scope", s));
    }
    let mut req = http
        .post(url.clone())
        .header(reqwest::header::ACCEPT, "application/json");
    match o.client_auth {
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: the id and secret are form-urlencoded before they are joined.
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.header(
                reqwest::header::AUTHORIZATION,
                basic(&enc(client_id), &enc(client_secret))?,
            );
        }
        ClientAuth::Post => {
            form.push(("client_id", client_id));
            form.push(("client_secret", client_secret));
        }
    }
    let started = Instant::now();
    let resp = req.form(&form).send().await.map_err(|e| error::from_reqwest(&e))?;
    let status = resp.status();
    let retry_after = error::retry_after(resp.headers());
    let body = error::read_limited(resp, max_bytes).await?;
    if !status.is_success() {
        let e = match status.as_u16() {
            400 | 401 | 403 => AdapterError::new(
                ErrorKind::Unauthorized,
                format!("the token endpoint refused the client credentials ({status})"),
            ),
            _ => error::for_status(status, retry_after, "token request"),
        };
        return Err(e);
    }
    let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
        AdapterError::new(
            ErrorKind::Unauthorized,
            "the token endpoint answered without an access_token",
        )
    })?;
    if let Some(tt) = &t.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(AdapterError::config(format!(
            "token type {tt:?} is not supported (only bearer)"
        )));
    }
    let life = t.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFE);
    tracing::debug!(token_url = %url, expires_in = ?t.expires_in, "fetched an OAuth2 access token");
    Ok(Cached {
        header: sensitive(format!("Bearer {}", t.access_token))?,
        refresh_at: started + refresh_after(life),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(8));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn credentials_never_print() {
        let cfg: AuthConfig = toml::from_str("kind = \"bearer\"\ntoken = \"s3cret\"").expect("toml");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        let cfg: AuthConfig = toml::from_str(
            "kind = \"oauth2\"\ntoken_url = \"https://a/t\"\nclient_id = \"c\"\nclient_secret = \"s3cret\"",
        )
        .expect("toml");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(toml::from_str::<AuthConfig>("kind = \"bearer\"\ntokn = \"x\"").is_err());
    }
}
