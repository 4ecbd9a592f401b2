//! The outbound HTTP client both the REST and the SCIM adapters use: every URL checked against an allow-list of
//! hosts, redirects never followed, timeouts and a response size bound on every call, authentication attached
//! (an OAuth2 token refreshed once on a 401), and non-success statuses mapped to [`AdapterError`]s.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use scimgate_adapter_sdk::AdapterError;
use serde_json::Value;
use url::Url;

use crate::auth::{Auth, AuthConfig};
use crate::error;

/// How to build a [`Client`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    /// `host` or `host:port` entries; empty: only `base_url`'s host.
    pub allowed_hosts: Vec<String>,
    pub allow_http: bool,
    pub auth: AuthConfig,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    /// Sent as Content-Type and Accept, e.g. `application/json` or `application/scim+json`.
    pub media_type: String,
}

/// The hosts outbound URLs may name.
#[derive(Debug, Clone)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
    allow_http: bool,
}

impl AllowList {
    pub fn new(hosts: &[String], allow_http: bool) -> Result<AllowList, AdapterError> {
        let mut entries = Vec::new();
        for h in hosts {
            let h = h.trim().to_ascii_lowercase();
            // Parse through the URL parser so `host`, `host:port` and `[::1]:port` read as a URL's host would.
            let u = Url::parse(&format!("http://{h}/"))
                .map_err(|e| AdapterError::config(format!("allowed host {h:?} is not a host[:port]: {e}")))?;
            let Some(host) = u.host_str().filter(|_| u.username().is_empty() && u.path() == "/") else {
                return Err(AdapterError::config(format!("allowed host {h:?} is not a host[:port]")));
            };
            entries.push((host.to_string(), u.port()));
        }
        Ok(AllowList { entries, allow_http })
    }

    /// Refuse a URL that does not name an allowed host, carries credentials, or uses another scheme.
    pub fn check(&self, url: &Url) -> Result<(), AdapterError> {
        let refuse = |why: &str| AdapterError::config(format!("outbound URL refused: {why}"));
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(refuse("plain http is off (set allow_http = true)")),
            s => return Err(refuse(&format!("scheme {s:?} is not http(s)"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("a URL may not carry user info"));
        }
        let Some(host) = url.host_str() else {
            return Err(refuse("no host"));
        };
        let port = url.port_or_known_default();
        let ok = self
            .entries
            .iter()
            .any(|(h, p)| h.eq_ignore_ascii_case(host) && p.is_none_or(|p| Some(p) == port));
        if ok {
            Ok(())
        } else {
            Err(refuse(&format!("host {host} is not in allowed_hosts")))
        }
    }
}

/// A response whose status is a success, 404 or another 4xx the caller decides about.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    /// The body as JSON; `None` when empty.
    pub body: Option<Value>,
    pub location: Option<String>,
}

impl Response {
    /// The error for a status that is not a success (404 included), or `Ok(self)`.
    pub fn success(self, what: &str) -> Result<Response, AdapterError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(error::for_status(self.status, None, what).with_detail(self.body.as_ref()))
        }
    }
}

trait WithDetail {
    fn with_detail(self, body: Option<&Value>) -> Self;
}

impl WithDetail for AdapterError {
    /// Append the target's own error text (bounded) so an operator sees why it refused.
    fn with_detail(mut self, body: Option<&Value>) -> Self {
        if let Some(b) = body {
            let mut s = b.to_string();
            if s.len() > 300 {
                let cut = (0..=300).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
                s.truncate(cut);
                s.push('…');
            }
            self.message = format!("{}: {s}", self.message);
        }
        self
    }
}

/// An HTTP client bound to one target.
pub struct Client {
    http: reqwest::Client,
    allow: AllowList,
    base: Url,
    auth: Auth,
    max_response_bytes: usize,
    media_type: String,
}

impl Client {
    pub fn new(s: &Settings) -> Result<Client, AdapterError> {
        let base = Url::parse(s.base_url.trim())
            .map_err(|e| AdapterError::config(format!("base_url {:?} is not a URL: {e}", s.base_url)))?;
        let hosts = if s.allowed_hosts.is_empty() {
            vec![match base.port() {
                Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
                None => base.host_str().unwrap_or_default().to_string(),
            }]
        } else {
            s.allowed_hosts.clone()
        };
        let allow = AllowList::new(&hosts, s.allow_http)?;
        allow
            .check(&base)
            .map_err(|e| AdapterError::config(format!("base_url: {}", e.message)))?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(AdapterError::config("base_url may not hold a query or a fragment"));
        }
        let auth = Auth::build(&s.auth, |u| allow.check(u))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.timeout)
            .connect_timeout(s.connect_timeout)
            .pool_max_idle_per_host(8)
            .user_agent(concat!("scimgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AdapterError::config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            allow,
            base,
            auth,
            max_response_bytes: s.max_response_bytes,
            media_type: s.media_type.clone(),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }

    /// Turn a rendered URL (relative to `base_url`, or absolute) into a checked URL. Dot segments are refused
    /// outright rather than resolved: a path must mean what it says.
    pub fn resolve(&self, rendered: &str) -> Result<Url, AdapterError> {
        let r = rendered.trim();
        let is_abs = ["http://", "https://"]
            .iter()
            .any(|p| r.len() >= p.len() && r[..p.len()].eq_ignore_ascii_case(p));
        let text = if is_abs {
            r.to_string()
        } else if r.starts_with('/') || r.starts_with('?') || r.is_empty() {
            format!("{}{r}", self.base.as_str().trim_end_matches('/'))
        } else {
            return Err(AdapterError::config(format!(
                "URL {r:?} must start with '/' (relative to base_url) or be absolute"
            )));
        };
        if has_dot_segment(&text) {
            return Err(AdapterError::config(format!(
                "URL {r:?} holds a '.' or '..' path segment"
            )));
        }
        let url = Url::parse(&text).map_err(|e| AdapterError::config(format!("URL {r:?} does not parse: {e}")))?;
        self.allow.check(&url)?;
        Ok(url)
    }

    /// Send one request. 429, 5xx, 401/403 and 3xx come back as errors; other statuses as a [`Response`] for the
    /// caller to judge (404 means different things to different calls). An OAuth2 token the target refuses with
    /// 401 is fetched anew once.
    pub async fn send(&self, method: Method, url: &Url, body: Option<&Value>) -> Result<Response, AdapterError> {
        self.allow.check(url)?;
        let mut refreshed = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, &self.media_type);
            if let Some(h) = self.auth.header(&self.http, self.max_response_bytes).await? {
                req = req.header(AUTHORIZATION, h);
            }
            if let Some(b) = body {
                let bytes = serde_json::to_vec(b).map_err(|e| AdapterError::rejected(format!("body: {e}")))?;
                req = req.header(CONTENT_TYPE, &self.media_type).body(bytes);
            }
            let resp = req.send().await.map_err(|e| error::from_reqwest(&e))?;
            let status = resp.status();
            tracing::debug!(%method, url = %url.path(), status = status.as_u16(), "target answered");
            if status == StatusCode::UNAUTHORIZED && self.auth.is_oauth2() && !refreshed {
                refreshed = true;
                self.auth.invalidate().await;
                continue;
            }
            let retry_after = error::retry_after(resp.headers());
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = error::read_limited(resp, self.max_response_bytes).await?;
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => Some(v),
                    Err(_) if !status.is_success() => None,
                    Err(e) => {
                        return Err(AdapterError::rejected(format!(
                            "{method} {}: the response is not JSON: {e}",
                            url.path()
                        )));
                    }
                }
            };
            let what = format!("{method} {}", url.path());
            if status.as_u16() == 429
                || status.is_server_error()
                || status.is_redirection()
                || matches!(status.as_u16(), 401 | 403 | 408)
            {
                return Err(error::for_status(status, retry_after, &what).with_detail(body.as_ref()));
            }
            return Ok(Response { status, body, location });
        }
    }
}

/// Whether a URL's path (before `?`/`#`) holds a `.` or `..` segment, plain or percent-encoded.
fn has_dot_segment(text: &str) -> bool {
    let after_scheme = text.find("://").map(|i| &text[i + 3..]).unwrap_or(text);
    let path_start = after_scheme.find('/').unwrap_or(after_scheme.len());
    let rest = &after_scheme[path_start..];
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    path.split(['/', '\\']).any(|seg| {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str, hosts: &[&str], http: bool) -> Result<Client, AdapterError> {
        Client::new(&Settings {
            base_url: base.into(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allow_http: http,
            auth: AuthConfig::None,
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_response_bytes: 1024,
            media_type: "application/json".into(),
        })
    }

    #[test]
    fn the_allow_list_holds() {
        let c = client("https://api.example.com/v1", &["api.example.com"], false).expect("client");
        assert_eq!(
            c.resolve("/users/1").expect("ok").as_str(),
            "https://api.example.com/v1/users/1"
        );
        assert!(c.resolve("https://API.example.com:443/x").is_ok());
        for bad in [
            "https://evil.example/x",
            "https://api.example.com@evil.example/x",
            "https://api.example.com.evil.example/",
            "http://api.example.com/x",
            "ftp://api.example.com/x",
            "/users/../admin",
            "/users/%2e%2E/admin",
            "/users/./x",
            "users",
        ] {
            assert!(c.resolve(bad).is_err(), "{bad}");
        }
        let c = client("http://127.0.0.1:8080", &["127.0.0.1:8080"], true).expect("client");
        assert!(c.resolve("http://127.0.0.1:8081/").is_err());
        assert!(client("http://allowed@evil/", &["allowed", "evil"], true).is_err());
        assert!(client("https://evil/", &["allowed"], false).is_err());
        assert!(client("http://allowed/", &["allowed"], false).is_err());
        assert!(AllowList::new(&["a/b".into()], false).is_err());
    }

    #[test]
    fn dot_segments_are_seen() {
        assert!(has_dot_segment("http://h/a/../b"));
        assert!(has_dot_segment("http://h/a/.%2e/b"));
        assert!(has_dot_segment("/a/."));
        assert!(!has_dot_segment("http://h/a/..b/c?x=../.."));
        assert!(!has_dot_segment("http://h/a/%2e%2e%2fb"));
    }
}
