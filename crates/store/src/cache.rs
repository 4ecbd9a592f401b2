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
//!
//! The table is this module's own rather than a general-purpose cache crate's, because a hit is most of a cached
//! GET's work and at 100k users its cost is memory traffic (BENCHMARKS.md): a key is the tenant's small number and
//! the id's 128 bits, compared in the table without following a pointer and built without allocating; the
//! shards are `RwLock`ed hash maps whose readers only set an entry's reference bit; and eviction is CLOCK (second
//! chance) over a ring of keys per shard, bounded by the answers' bytes. Ids that are not canonical UUIDs (every id
//! scimgate assigns is one) are never cached.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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

/// Shards of each table: writers of different users rarely meet on one lock.
const SHARDS: usize = 64;

/// Bytes an entry is charged beyond its answer, base URL and name: its bucket in the shard's map (64 bytes, at the
/// map's load factor and growth), its ring entry (48, with the stale ones compaction allows), the `Arc`'d record
/// (104) and the body's shared header, with the allocator's rounding.
const ENTRY_OVERHEAD: usize = 320;

/// Bytes a userName hint is charged: its bucket (48 bytes) and ring entry (24), at the same slack.
const HINT_WEIGHT: usize = 128;

/// More ids than this in one change and the whole cache is dropped instead (the rename of a group with more
/// members than this). Below it, ids are dropped one by one: an IdP pushing a thousand members into a group does
/// not empty the cache.
pub const MAX_IDS_PER_CHANGE: usize = 10_000;

/// Ids per PostgreSQL notification: a payload has to stay under 8000 bytes (a UUID id is 36 of them).
pub const IDS_PER_NOTIFICATION: usize = 100;

/// A cached user: the tenant's number in [`Tenants`] and the id as a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UserKey {
    tenant: u32,
    id: u128,
}

/// A userName hint: the tenant's number and a keyed hash of the lower-cased name. A hash collision can only
/// point at the wrong user, and a hint is used only if that user's cached answer has the name asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NameKey {
    tenant: u32,
    name: u64,
}

trait ShardKey: Copy + Eq + Hash {
    /// Which shard holds the key: from bits that are already random (a UUID's, a hash's).
    fn shard(&self) -> usize;
}

impl ShardKey for UserKey {
    fn shard(&self) -> usize {
        // UUIDv7's low 62 bits are random; multiply to spread them into the top bits.
        let mix = (self.id as u64 ^ u64::from(self.tenant)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mix >> 58) as usize % SHARDS
    }
}

impl ShardKey for NameKey {
    fn shard(&self) -> usize {
        (self.name >> 58) as usize % SHARDS
    }
}

struct Slot<V> {
    value: V,
    weight: usize,
    /// Which ring entry is this slot's: a replaced or removed slot leaves a stale one behind, skipped later.
    generation: u64,
    /// Read since the clock hand last passed: survives one more pass.
    referenced: AtomicBool,
}

struct Shard<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Insertion order, for the clock hand.
    ring: VecDeque<(K, u64)>,
    bytes: usize,
    generation: u64,
}

impl<K: ShardKey, V: Clone> Shard<K, V> {
    fn new() -> Self {
        Shard {
            map: HashMap::new(),
            ring: VecDeque::new(),
            bytes: 0,
            generation: 0,
        }
    }

    fn insert(&mut self, key: K, value: V, weight: usize, budget: usize) {
        self.generation += 1;
        let generation = self.generation;
        let slot = Slot {
            value,
            weight,
            generation,
            referenced: AtomicBool::new(false),
        };
        if let Some(old) = self.map.insert(key, slot) {
            self.bytes -= old.weight;
        }
        self.bytes += weight;
        self.ring.push_back((key, generation));
        while self.bytes > budget && self.evict_one() {}
        if self.ring.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.ring
                .retain(|(k, g)| map.get(k).is_some_and(|s| s.generation == *g));
        }
    }

    /// CLOCK: the oldest entry not read since the hand last passed goes. False when nothing is left to evict.
    fn evict_one(&mut self) -> bool {
        while let Some((key, generation)) = self.ring.pop_front() {
            let Some(slot) = self.map.get(&key).filter(|s| s.generation == generation) else {
                continue;
            };
            if slot.referenced.swap(false, Ordering::Relaxed) {
                self.ring.push_back((key, generation));
                continue;
            }
            if let Some(old) = self.map.remove(&key) {
                self.bytes -= old.weight;
            }
            return true;
        }
        false
    }

    fn remove(&mut self, key: &K) {
        if let Some(old) = self.map.remove(key) {
            self.bytes -= old.weight;
        }
    }

    fn clear(&mut self) {
        self.map = HashMap::new();
        self.ring = VecDeque::new();
        self.bytes = 0;
    }
}

/// A bounded map in shards, each under its own lock; reads take the read lock.
struct Table<K, V> {
    shards: Box<[RwLock<Shard<K, V>>]>,
    budget_per_shard: usize,
}

impl<K: ShardKey, V: Clone> Table<K, V> {
    fn new(max_bytes: u64) -> Self {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::new())).collect(),
            budget_per_shard: usize::try_from(max_bytes / SHARDS as u64).unwrap_or(usize::MAX),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<Shard<K, V>> {
        &self.shards[key.shard()]
    }

    fn get(&self, key: &K) -> Option<V> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = shard.map.get(key)?;
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.value.clone())
    }

    fn insert(&self, key: K, value: V, weight: usize) {
        if weight > self.budget_per_shard {
            return;
        }
        self.write(&key).insert(key, value, weight, self.budget_per_shard);
    }

    fn remove(&self, key: &K) {
        self.write(key).remove(key);
    }

    fn write(&self, key: &K) -> std::sync::RwLockWriteGuard<'_, Shard<K, V>> {
        self.shard(key)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn clear(&self) {
        for s in self.shards.iter() {
            s.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(std::sync::PoisonError::into_inner).map.len())
            .sum()
    }
}

/// Tenant ids by number, so keys hold a number instead of a string. Only tenants that cached something are here:
/// the configured ones.
#[derive(Default)]
struct Tenants(RwLock<HashMap<Box<str>, u32>>);

impl Tenants {
    fn find(&self, tenant: &str) -> Option<u32> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
    }

    fn intern(&self, tenant: &str) -> Option<u32> {
        if let Some(n) = self.find(tenant) {
            return Some(n);
        }
        let mut map = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let next = u32::try_from(map.len()).ok()?;
        Some(*map.entry(tenant.into()).or_insert(next))
    }
}

/// The id as a UUID if it is one in canonical form (lower-case, hyphenated): the only spelling the store finds it
/// by, so no other spelling may hit the cache.
fn canonical_uuid(id: &str) -> Option<u128> {
    if id.len() != 36 {
        return None;
    }
    let u = uuid::Uuid::try_parse(id).ok()?;
    let mut buf = [0u8; 36];
    (u.hyphenated().encode_lower(&mut buf) == id).then(|| u.as_u128())
}

pub struct ReadCache {
    users: Table<UserKey, Arc<Rendered>>,
    /// (tenant, lower-cased userName) → the user's key. Only a hint: a hit is used only if the cached user still
    /// has that name.
    names: Table<NameKey, UserKey>,
    tenants: Tenants,
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Whether the cache may answer. Off while a multi-node deployment's invalidation feed is disconnected.
    live: AtomicBool,
    suspensions: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("entries", &self.users.len())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl ReadCache {
    /// A cache holding at most about `max_bytes` of answers (the body, the keys and a fixed overhead per entry),
    /// plus an eighth of that in userName hints.
    pub fn new(max_bytes: u64, live: bool) -> Self {
        ReadCache {
            users: Table::new(max_bytes),
            names: Table::new(max_bytes / 8),
            tenants: Tenants::default(),
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

    fn user_key(&self, tenant: &str, id: &str) -> Option<UserKey> {
        Some(UserKey {
            id: canonical_uuid(id)?,
            tenant: self.tenants.find(tenant)?,
        })
    }

    fn name_key(&self, tenant: u32, user_name_lower: &str) -> NameKey {
        NameKey {
            tenant,
            name: self.hasher.hash_one(user_name_lower),
        }
    }

    /// Whether the cache may answer now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Rendered>> {
        if !self.is_live() {
            return None;
        }
        self.users.get(&self.user_key(tenant, id)?)
    }

    /// The cached user whose userName is `user_name_lower`, if the cache knows it.
    pub fn find_by_name(&self, tenant: &str, user_name_lower: &str) -> Option<Arc<Rendered>> {
        if !self.is_live() {
            return None;
        }
        let t = self.tenants.find(tenant)?;
        let key = self.names.get(&self.name_key(t, user_name_lower))?;
        let r = self.users.get(&key)?;
        (r.user_name_lower == user_name_lower).then_some(r)
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
        let (Some(id), Some(t)) = (canonical_uuid(id), self.tenants.intern(tenant)) else {
            return r;
        };
        let key = UserKey { tenant: t, id };
        let weight = r.body.len() + r.base_url.len() + r.user_name_lower.len() + ENTRY_OVERHEAD;
        self.users.insert(key, r.clone(), weight);
        if self.stripes[ticket.stripe].load(Ordering::SeqCst) != ticket.seen || !self.is_live() {
            self.users.remove(&key);
            return r;
        }
        self.names
            .insert(self.name_key(t, &r.user_name_lower), key, HINT_WEIGHT);
        r
    }

    /// Drop these users of `tenant` (after the write that changed them committed).
    pub fn invalidate(&self, tenant: &str, ids: &[String]) {
        for id in ids {
            self.stripes[self.stripe(tenant, id)].fetch_add(1, Ordering::SeqCst);
            if let Some(key) = self.user_key(tenant, id) {
                self.users.remove(&key);
            }
        }
    }

    /// Drop everything: too many ids in one change, or invalidations may have been missed.
    pub fn invalidate_all(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::SeqCst);
        }
        self.users.clear();
        self.names.clear();
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

    const U1: &str = "01a21475-0462-71f5-b655-000000000001";
    const U2: &str = "01a21475-0462-71f5-b655-000000000002";

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
        let t = c.ticket("t", U1);
        // A write commits and invalidates between the reader's ticket and its fill.
        c.invalidate("t", &[U1.to_string()]);
        c.put(t, "t", U1, r(1, "alice"));
        assert!(c.get("t", U1).is_none());
        // A fill with a fresh ticket stays.
        let t = c.ticket("t", U1);
        c.put(t, "t", U1, r(2, "alice"));
        assert_eq!(c.get("t", U1).map(|r| r.version), Some(2));
    }

    #[test]
    fn invalidation_after_the_fill_removes_it() {
        let c = ReadCache::new(1 << 20, true);
        let t = c.ticket("t", U1);
        c.put(t, "t", U1, r(1, "alice"));
        c.invalidate("t", &[U1.to_string()]);
        assert!(c.get("t", U1).is_none());
        assert!(c.find_by_name("t", "alice").is_none());
    }

    #[test]
    fn a_name_hint_is_used_only_while_the_user_still_has_the_name() {
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", U1), "t", U1, r(1, "alice"));
        assert_eq!(c.find_by_name("t", "alice").map(|r| r.version), Some(1));
        // u1 renamed to bob: the alice hint still points at u1, but u1 is no longer alice.
        c.invalidate("t", &[U1.to_string()]);
        c.put(c.ticket("t", U1), "t", U1, r(2, "bob"));
        assert!(c.find_by_name("t", "alice").is_none());
        assert!(c.find_by_name("other", "bob").is_none(), "tenants are separate");
    }

    #[test]
    fn a_suspended_cache_neither_answers_nor_fills() {
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", U1), "t", U1, r(1, "alice"));
        c.suspend();
        assert!(c.get("t", U1).is_none());
        c.put(c.ticket("t", U2), "t", U2, r(1, "bob"));
        c.resume();
        assert!(c.get("t", U1).is_none() && c.get("t", U2).is_none());
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
        c.put(c.ticket("t", U1), "t", U1, r(1, "alice"));
        many.apply(&c);
        assert!(c.get("t", U1).is_none());
    }

    #[test]
    fn only_the_canonical_spelling_of_an_id_is_cached() {
        let c = ReadCache::new(1 << 20, true);
        c.put(c.ticket("t", U1), "t", U1, r(1, "alice"));
        assert!(c.get("t", U1).is_some());
        assert!(
            c.get("t", &U1.to_uppercase()).is_none(),
            "the store would not find this spelling"
        );
        assert!(c.get("t", &U1.replace('-', "")).is_none());
        c.put(c.ticket("t", "not-a-uuid"), "t", "not-a-uuid", r(1, "bob"));
        assert!(c.get("t", "not-a-uuid").is_none());
        assert!(c.find_by_name("t", "bob").is_none());
        assert!(c.get("other", U1).is_none(), "tenants are separate");
    }

    #[test]
    fn the_byte_budget_holds_and_read_entries_survive_eviction() {
        // 64 shards of 4 KiB: each entry weighs its 1000-byte body plus overhead, so a shard holds 3.
        let c = ReadCache::new(64 * 4096, true);
        let id = |i: u32| format!("01a21475-0462-71f5-b655-{i:012x}");
        let big = |v: i64, name: String| Rendered {
            body: Bytes::from(vec![b'x'; 1000]),
            ..r(v, &name)
        };
        let hot = id(0);
        c.put(c.ticket("t", &hot), "t", &hot, big(1, "hot".into()));
        for i in 1..2000 {
            let u = id(i);
            c.put(c.ticket("t", &u), "t", &u, big(1, format!("user{i}")));
            // Read the hot entry as often as a real hot user is read.
            assert!(
                c.get("t", &hot).is_some(),
                "a user read between every insert stays cached ({i})"
            );
        }
        let held = c.users.len();
        assert!(held <= 64 * 3, "{held} entries are more than the budget holds");
        assert!(
            held >= 64,
            "{held} entries: the budget should hold at least one per shard"
        );
        let bytes: usize = c.users.shards.iter().map(|s| s.read().expect("lock").bytes).sum();
        assert!(bytes <= 64 * 4096, "{bytes} bytes charged");
        // Rings are compacted: stale entries do not pile up.
        for i in 0..20_000 {
            let u = id(i % 3);
            c.invalidate("t", std::slice::from_ref(&u));
            c.put(c.ticket("t", &u), "t", &u, big(i64::from(i), "churn".into()));
        }
        let ring: usize = c.users.shards.iter().map(|s| s.read().expect("lock").ring.len()).sum();
        assert!(ring <= 2 * c.users.len() + 64 * 65, "ring of {ring} entries");
    }
}
