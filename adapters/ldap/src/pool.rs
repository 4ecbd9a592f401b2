//! A small bounded pool of bound ldap3 connections.
//!
//! At most `pool_size` connections exist, and each serves one operation at a time (a semaphore permit goes with
//! it). An idle connection is reused until ldap3 reports it closed or an operation on it fails at the transport
//! level; then it is dropped and the next lease opens (and binds) a fresh one. Every operation carries the
//! configured operation timeout; opening a connection carries the connect timeout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::adapters::{EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};
use scimgate_adapter_sdk::AdapterError;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::Fail;

/// An attribute and its values, for an add.
pub type Attrs = Vec<(Vec<u8>, HashSet<Vec<u8>>)>;

pub struct Settings {
    pub url: String,
    pub starttls: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub insecure: bool,
    pub bind_dn: String,
    pub bind_password: String,
    pub connect_timeout: Duration,
    pub op_timeout: Duration,
}

pub struct Pool {
    settings: Settings,
    idle: Mutex<Vec<Ldap>>,
    permits: Semaphore,
}

impl Pool {
    pub fn new(settings: Settings, size: usize) -> Pool {
        Pool {
            settings,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
        }
    }

    /// A connection for one or more operations; it goes back to the pool on drop unless it broke.
    pub async fn lease(&self) -> Result<Conn<'_>, AdapterError> {
        let permit = tokio::time::timeout(self.settings.op_timeout, self.permits.acquire())
            .await
            .map_err(|_| AdapterError::unavailable("every LDAP connection stayed busy for the operation timeout"))?
            .map_err(|_| AdapterError::unavailable("the LDAP pool is closed"))?;
        let reuse = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(mut l) = idle.pop() {
                if !l.is_closed() {
                    found = Some(l);
                    break;
                }
            }
            found
        };
        let ldap = match reuse {
            Some(l) => l,
            None => self.connect().await.map_err(AdapterError::from)?,
        };
        Ok(Conn {
            pool: self,
            ldap: Some(ldap),
            broken: false,
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Ldap, Fail> {
        let s = &self.settings;
        let mut cs = LdapConnSettings::new()
            .set_conn_timeout(s.connect_timeout)
            .set_starttls(s.starttls)
            .set_no_tls_verify(s.insecure);
        if let Some(cfg) = &s.tls {
            cs = cs.set_config(cfg.clone());
        }
        let opened = tokio::time::timeout(s.connect_timeout, LdapConnAsync::with_settings(cs, &s.url)).await;
        let (conn, mut ldap) = match opened {
            Ok(r) => r.map_err(|e| Fail::from_ldap("connect", e))?,
            Err(_) => {
                return Err(Fail::Transport {
                    op: "connect",
                    detail: format!("no connection to {} within {:?}", s.url, s.connect_timeout),
                });
            }
        };
        let url = s.url.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = %url, error = %e, "LDAP connection ended");
            }
        });
        ldap.with_timeout(s.connect_timeout);
        ldap.simple_bind(&s.bind_dn, &s.bind_password)
            .await
            .and_then(|r| r.success())
            .map_err(|e| Fail::from_ldap("bind", e))?;
        tracing::debug!(url = %s.url, bind_dn = %s.bind_dn, "LDAP connection bound");
        Ok(ldap)
    }
}

/// One leased connection.
pub struct Conn<'p> {
    pool: &'p Pool,
    ldap: Option<Ldap>,
    broken: bool,
    _permit: SemaphorePermit<'p>,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.ldap.take()
            && !self.broken
        {
            self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
    }
}

impl Conn<'_> {
    fn ldap(&mut self) -> Result<&mut Ldap, Fail> {
        let t = self.pool.settings.op_timeout;
        match self.ldap.as_mut() {
            Some(l) => {
                l.with_timeout(t);
                Ok(l)
            }
            None => Err(Fail::Transport {
                op: "lease",
                detail: "the connection was released".into(),
            }),
        }
    }

    fn check<T>(&mut self, r: Result<T, Fail>) -> Result<T, Fail> {
        if let Err(f) = &r
            && f.broken()
        {
            self.broken = true;
        }
        r
    }

    /// A search without paging (for small answers: one entry, or an account's groups). `noSuchObject` for the
    /// base gives no entries.
    pub async fn search(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
    ) -> Result<Vec<SearchEntry>, Fail> {
        let r = async {
            let l = self.ldap()?;
            let mut stream = l
                .streaming_search_with(EntriesOnly::new(), base, scope, filter, attrs.to_vec())
                .await
                .map_err(|e| Fail::from_ldap("search", e))?;
            let mut out = Vec::new();
            while let Some(e) = stream.next().await.map_err(|e| Fail::from_ldap("search", e))? {
                out.push(SearchEntry::construct(e));
            }
            match stream.finish().await.success() {
                Ok(_) => Ok(out),
                Err(e) => match Fail::from_ldap("search", e) {
                    f if f.rc() == Some(crate::error::rc::NO_SUCH_OBJECT) => Ok(vec![]),
                    f => Err(f),
                },
            }
        }
        .await;
        self.check(r)
    }

    /// A subtree search with the paged-results control (`page_size` entries per server round trip); `each`
    /// sees every entry.
    pub async fn search_paged(
        &mut self,
        base: &str,
        filter: &str,
        attrs: &[String],
        page_size: u32,
        mut each: impl FnMut(SearchEntry),
    ) -> Result<(), Fail> {
        let size = i32::try_from(page_size.max(1)).unwrap_or(i32::MAX);
        let r = async {
            let l = self.ldap()?;
            let adapters: Vec<Box<dyn ldap3::adapters::Adapter<_, _>>> =
                vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(size))];
            let mut stream = l
                .streaming_search_with(adapters, base, Scope::Subtree, filter, attrs.to_vec())
                .await
                .map_err(|e| Fail::from_ldap("search", e))?;
            while let Some(e) = stream.next().await.map_err(|e| Fail::from_ldap("search", e))? {
                each(SearchEntry::construct(e));
            }
            match stream.finish().await.success() {
                Ok(_) => Ok(()),
                Err(e) => match Fail::from_ldap("search", e) {
                    f if f.rc() == Some(crate::error::rc::NO_SUCH_OBJECT) => Ok(()),
                    f => Err(f),
                },
            }
        }
        .await;
        self.check(r)
    }

    pub async fn add(&mut self, dn: &str, attrs: Attrs) -> Result<(), Fail> {
        let r = async {
            self.ldap()?
                .add(dn, attrs)
                .await
                .and_then(|r| r.success())
                .map(|_| ())
                .map_err(|e| Fail::from_ldap("add", e))
        }
        .await;
        self.check(r)
    }

    pub async fn modify(&mut self, dn: &str, mods: Vec<Mod<Vec<u8>>>) -> Result<(), Fail> {
        if mods.is_empty() {
            return Ok(());
        }
        let r = async {
            self.ldap()?
                .modify(dn, mods)
                .await
                .and_then(|r| r.success())
                .map(|_| ())
                .map_err(|e| Fail::from_ldap("modify", e))
        }
        .await;
        self.check(r)
    }

    pub async fn modify_dn(&mut self, dn: &str, rdn: &str, new_parent: Option<&str>) -> Result<(), Fail> {
        let r = async {
            self.ldap()?
                .modifydn(dn, rdn, true, new_parent)
                .await
                .and_then(|r| r.success())
                .map(|_| ())
                .map_err(|e| Fail::from_ldap("modify DN", e))
        }
        .await;
        self.check(r)
    }

    pub async fn delete(&mut self, dn: &str) -> Result<(), Fail> {
        let r = async {
            self.ldap()?
                .delete(dn)
                .await
                .and_then(|r| r.success())
                .map(|_| ())
                .map_err(|e| Fail::from_ldap("delete", e))
        }
        .await;
        self.check(r)
    }
}
