//! The read cache: users as rendered for their default answer, kept correct by the store's own writes.
//!
//! The store owns the cache because only the store knows every write that changes what a user's answer shows:
//! the user's document, its deletion or rehire, and the group memberships and group names listed in its
//! `groups`. [`SqlStore`](crate::SqlStore) invalidates the users a transaction touched as soon as it commits. On
//! PostgreSQL the same transaction also sends their ids with `pg_notify`, so that every other gateway node drops
//! them when the commit lands (see [`crate::sql::SqlStore::listen_for_invalidations`]); while that listener is not
//! connected the cache is bypassed.
//!
//! What is cached is opaque bytes (the service's pre-serialised JSON answer) with the version they show and the
//! lower-cased userName, so a `userName eq` lookup can be answered from the cache too. A miss fills the cache
//! through a [`Ticket`] taken *before* the database read: if the key is invalidated between the ticket and the
//! fill, the fill is dropped, so a reader that raced a write can never leave the old answer behind.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

/// A user's pre-serialised default answer.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub version: i64,
    /// The SCIM base URL the answer's `meta.location` and `$ref`s were built with.
    pub base_url: String,
    pub user_name_lower: String,
    pub body: Bytes,
}

/// Proof of when a miss started; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    stripe: usize,
    seen: u64,
}

/// Invalidation counters: one per stripe of keys, bumped before a key is dropped.
const STRIPES: usize = 4096;

/// More ids than this in one change and the whole cache is dropped instead (the rename of a group with more
/// members than this). Below it, ids are dropped one by one: an IdP pushing a thousand members into a group does
/// not empty the cache.
pub const MAX_IDS_PER_CHANGE: usize = 10_000;

/// Ids per PostgreSQL notification: a payload has to stay under 8000 bytes (a UUID id is 36 of them).
pub const IDS_PER_NOTIFICATION: usize = 100;

pub struct ReadCache {
    users: moka::sync::Cache<String, Arc<Rendered>>,
    /// (tenant, lower-cased userName) → id. Only a hint: a hit is used only if the cached user still has that name.
    names: moka::sync::Cache<String, String>,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Whether the cache may answer. Off while a multi-node deployment's invalidation feed is disconnected.
    live: AtomicBool,
    suspensions: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("entries", &self.users.entry_count())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

fn key(tenant: &str, id: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + 1 + id.len());
    k.push_str(tenant);
    k.push('\u{0}');
    k.push_str(id);
    k
}

impl ReadCache {
    /// A cache holding at most about `max_bytes` of answers (the body, the keys and a fixed overhead per entry).
    pub fn new(max_bytes: u64, live: bool) -> Self {
        let users = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, v: &Arc<Rendered>| {
                let w = k.len() + v.body.len() + v.base_url.len() + v.user_name_lower.len() + 160;
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .build();
        let names = moka::sync::Cache::builder()
            .max_capacity(max_bytes / 8)
            .weigher(|k: &String, v: &String| u32::try_from(k.len() + v.len() + 96).unwrap_or(u32::MAX))
            .build();
        ReadCache {
            users,
            names,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            live: AtomicBool::new(live),
            suspensions: AtomicU64::new(0),
        }
    }

    fn stripe(&self, tenant: &str, id: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        tenant.hash(&mut h);
        id.hash(&mut h);
        usize::try_from(h.finish() % STRIPES as u64).unwrap_or(0)
    }

    /// Whether the cache may answer now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Rendered>> {
        if !self.is_live() {
            return None;
        }
        self.users.get(&key(tenant, id))
    }

    /// The cached user whose userName is `user_name_lower`, if the cache knows it.
    pub fn find_by_name(&self, tenant: &str, user_name_lower: &str) -> Option<(String, Arc<Rendered>)> {
        if !self.is_live() {
            return None;
        }
        let id = self.names.get(&key(tenant, user_name_lower))?;
        let r = self.users.get(&key(tenant, &id))?;
        (r.user_name_lower == user_name_lower).then_some((id, r))
    }

    /// Take before reading the database for a fill.
    pub fn ticket(&self, tenant: &str, id: &str) -> Ticket {
        let stripe = self.stripe(tenant, id);
        Ticket {
            stripe,
            seen: self.stripes[stripe].load(Ordering::SeqCst),
        }
    }

    /// Fill after a miss. Inserts, then checks that no invalidation of the key's stripe happened since the
    /// ticket: if one did, the entry may be older than the write that caused it and is removed again. (An
    /// invalidation after the check removes the entry itself.)
    /// Returns the answer, cached or not.
    pub fn put(&self, ticket: Ticket, tenant: &str, id: &str, r: Rendered) -> Arc<Rendered> {
        let r = Arc::new(r);
        if !self.is_live() {
            return r;
        }
        let k = key(tenant, id);
        self.users.insert(k.clone(), r.clone());
        if self.stripes[ticket.stripe].load(Ordering::SeqCst) != ticket.seen || !self.is_live() {
            self.users.invalidate(&k);
            return r;
        }
        self.names.insert(key(tenant, &r.user_name_lower), id.to_string());
        r
    }

    /// Drop these users of `tenant` (after the write that changed them committed).
    pub fn invalidate(&self, tenant: &str, ids: &[String]) {
        for id in ids {
            self.stripes[self.stripe(tenant, id)].fetch_add(1, Ordering::SeqCst);
            self.users.invalidate(&key(tenant, id));
        }
    }

    /// Drop everything: too many ids in one change, or invalidations may have been missed.
    pub fn invalidate_all(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::SeqCst);
        }
        self.users.invalidate_all();
        self.names.invalidate_all();
    }

    /// Stop answering (and drop everything) until [`ReadCache::resume`]: invalidations from other nodes are not
    /// arriving.
    pub fn suspend(&self) {
        if self.live.swap(false, Ordering::SeqCst) {
            self.suspensions.fetch_add(1, Ordering::SeqCst);
        }
        self.invalidate_all();
    }

    /// How many times the cache was suspended (a live cache stopped answering).
    pub fn suspensions(&self) -> u64 {
        self.suspensions.load(Ordering::SeqCst)
    }

    /// Answer again, from an empty cache.
    pub fn resume(&self) {
        self.invalidate_all();
        self.live.store(true, Ordering::SeqCst);
    }
}

/// What a committed write changed, for the cache: some users of a tenant, or (too many to list) everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Touched {
    #[serde(rename = "t")]
    pub tenant: String,
    /// `None`: drop everything.
    #[serde(rename = "i")]
    pub ids: Option<Vec<String>>,
}

impl Touched {
    pub fn users(tenant: &str, ids: Vec<String>) -> Self {
        Touched {
            tenant: tenant.to_string(),
            ids: (ids.len() <= MAX_IDS_PER_CHANGE).then_some(ids),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.as_ref().is_some_and(Vec::is_empty)
    }

    /// The notifications that carry this change to other nodes, each small enough for `pg_notify`.
    pub fn notifications(&self) -> Vec<Touched> {
        match &self.ids {
            Some(ids) => ids
                .chunks(IDS_PER_NOTIFICATION)
                .map(|c| Touched {
                    tenant: self.tenant.clone(),
                    ids: Some(c.to_vec()),
                })
                .collect(),
            None => vec![self.clone()],
        }
    }

    pub fn apply(&self, cache: &ReadCache) {
        match &self.ids {
            Some(ids) => cache.invalidate(&self.tenant, ids),
            None => cache.invalidate_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(version: i64, name: &str) -> Rendered {
        Rendered {
            version,
            base_url: "http://x/scim/v2".into(),
            user_name_lower: name.into(),
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = ReadCache::new(1 << 20, true);
        let t = c.ticket("t", "u1");
        // A write commits and invalidates between the reader's ticket and its fill.
        c.invalidate("t", &["u1".to_string()]);
        c.put(t, "t", "u1", r(1, "alice"));
        assert!(c.get("t", "u1").is_none());
        // A fill with a fresh ticket stays.
        let t = c.ticket("t", "u1");
        c.put(t, "t", "u1", r(2, "alice"));
        assert_eq!(c.get("t", "u1").map(|r| r.version), Some(2));
    }

    #[test]
    fn invalidation_after_the_fill_removes_it() {
        let c = ReadCache::new(1 << 20, true);
        let t = c.ticket("t", "u1");
        c.put(t, "t", "u1", r(1, "alice"));
        c.invalidate("t", &["u1".to_string()]);
        assert!(c.get("t", "u1").is_none());
        assert!(c.find_by_name("t", "alice").is_none());
    }

    #[test]
    fn a_name_hint_is_used_only_while_the_user_still_has_the_name() {
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", "u1"), "t", "u1", r(1, "alice"));
        assert_eq!(c.find_by_name("t", "alice").map(|(id, _)| id), Some("u1".to_string()));
        // u1 renamed to bob: the alice hint still points at u1, but u1 is no longer alice.
        c.invalidate("t", &["u1".to_string()]);
        c.put(c.ticket("t", "u1"), "t", "u1", r(2, "bob"));
        assert!(c.find_by_name("t", "alice").is_none());
        assert!(c.find_by_name("other", "bob").is_none(), "tenants are separate");
    }

    #[test]
    fn a_suspended_cache_neither_answers_nor_fills() {
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", "u1"), "t", "u1", r(1, "alice"));
        c.suspend();
        assert!(c.get("t", "u1").is_none());
        c.put(c.ticket("t", "u2"), "t", "u2", r(1, "bob"));
        c.resume();
        assert!(c.get("t", "u1").is_none() && c.get("t", "u2").is_none());
    }

    #[test]
    fn touched_lists_ids_up_to_the_limit_then_drops_everything() {
        let few = Touched::users("t", vec!["a".into()]);
        assert_eq!(few.ids.as_deref().map(<[String]>::len), Some(1));
        let thousand = Touched::users("t", (0..1000).map(|i| i.to_string()).collect());
        let parts = thousand.notifications();
        assert_eq!(parts.len(), 10, "a thousand ids go out in notifications of a hundred");
        for p in &parts {
            assert!(serde_json::to_string(p).expect("json").len() < 8000);
        }
        let many = Touched::users("t", (0..=MAX_IDS_PER_CHANGE).map(|i| i.to_string()).collect());
        assert!(many.ids.is_none());
        assert_eq!(many.notifications().len(), 1);
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", "u1"), "t", "u1", r(1, "alice"));
        many.apply(&c);
        assert!(c.get("t", "u1").is_none());
    }
}
