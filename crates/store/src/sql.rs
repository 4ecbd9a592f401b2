//! [`SqlStore`]: the [`Store`] on sqlx's `Any` driver, SQLite or PostgreSQL chosen by the URL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use scimgate_scim::eval::{SortKey, matches, sort_key};
use scimgate_scim::filter::Filter;
use scimgate_scim::patch::{Member, MemberOp};
use scimgate_scim::resource::format_datetime;
use scimgate_scim::schema::ResourceKind;

use crate::cache::{ReadCache, Touched};
use crate::lifecycle::{
    self, ApprovalRecord, DecisionInputs, Effects, ExceptionRecord, IdentityState, PlanRecord, UserForChange,
};
use crate::lower::{Binds, Dialect, lower, sort_column, split};
use crate::{IdentityRow, LifecycleStore};
use crate::{Page, Query, Replacement, Start, Store, StoreError, Stored, Write, str_at};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// The read cache, if enabled ([`SqlStore::with_cache`]); every write below invalidates what it touched.
    cache: Option<Arc<ReadCache>>,
    /// Where write transactions run ([`SqlStore::writer`]).
    writer: Writer,
    /// SQLite: when the planner's statistics were last refreshed (unix seconds; 0: never in this process).
    analyzed_at: Arc<std::sync::atomic::AtomicI64>,
}

/// Where a store's write transactions run.
///
/// SQLite has one writer: without a queue, concurrent write transactions collide on its lock and the losers sleep
/// in its busy handler in growing steps (tens to hundreds of milliseconds of tail latency). So a SQLite file is
/// written through one connection of its own, outside the pool, taken in turn, first come first served. Being the
/// only connection that writes, its page cache stays valid from one transaction to the next (a pooled
/// connection's cache is dropped whenever another connection has written since its last use), and a write never
/// waits in the pool's queue behind the reads. An in-memory database (one per connection) takes turns on a pooled
/// connection instead. PostgreSQL writes on pooled connections, concurrently.
#[derive(Debug, Clone)]
enum Writer {
    Own(Arc<tokio::sync::Mutex<sqlx::AnyConnection>>),
    Turn(Arc<tokio::sync::Mutex<()>>),
    Pool,
}

/// A connection to run one write transaction on, held until the transaction has committed or rolled back.
pub(crate) enum WriteConn {
    Own(tokio::sync::OwnedMutexGuard<sqlx::AnyConnection>),
    Pooled {
        conn: sqlx::pool::PoolConnection<sqlx::Any>,
        /// An in-memory SQLite database's turn, held with the connection.
        _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    },
}

impl std::ops::Deref for WriteConn {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            WriteConn::Own(c) => c,
            WriteConn::Pooled { conn, .. } => conn,
        }
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            WriteConn::Own(c) => c,
            WriteConn::Pooled { conn, .. } => conn,
        }
    }
}

/// The settings of every SQLite connection: durable WAL commits, the busy timeout, a larger page cache.
async fn sqlite_settings(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    for pragma in [
        "PRAGMA busy_timeout = 10000",
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        // 8 MiB of page cache per connection (the default is 2 MiB): index pages stay in memory.
        "PRAGMA cache_size = -8192",
        "PRAGMA case_sensitive_like = ON",
        // Statement journals (a savepoint's, a multi-row statement's) in memory, not in a temporary file.
        "PRAGMA temp_store = MEMORY",
    ] {
        sqlx::query(pragma).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The PostgreSQL channel on which each committed write names the users it changed, for other nodes' caches.
pub const INVALIDATION_CHANNEL: &str = "scimgate_cache";

fn table(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "scim_users",
        ResourceKind::Group => "scim_groups",
    }
}

fn now() -> String {
    format_datetime(chrono::Utc::now())
}

fn employee_number(doc: &Map<String, Value>) -> Option<&str> {
    doc.get(scimgate_scim::schema::ENTERPRISE_URN)
        .and_then(|e| e.get("employeeNumber"))
        .and_then(Value::as_str)
}

/// `SELECT * FROM table WHERE tenant = $1 [AND col = $n ...]` with only the filters given, so each query can use
/// its index (an `($n = '' OR col = $n)` filter cannot).
fn filtered<'a>(table: &str, tenant: &'a str, filters: &[(&str, Option<&'a str>)]) -> (String, Vec<&'a str>) {
    let mut sql = format!("SELECT * FROM {table} WHERE tenant = $1");
    let mut binds = vec![tenant];
    for (col, value) in filters {
        if let Some(v) = value {
            binds.push(v);
            sql.push_str(&format!(" AND {col} = ${}", binds.len()));
        }
    }
    (sql, binds)
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: &[&'q str],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = q.bind(*b);
    }
    q
}

/// A value bound into a multi-row insert.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(i64),
}

/// Most values one statement binds. SQLite allows 32,766 and PostgreSQL 65,535; a few hundred values per statement
/// is already the bulk of the saving in round trips. (On SQLite the rows use anonymous `?` placeholders: sqlx
/// looks a named `$n` up by name, a linear scan per value, so named placeholders cost the square of the count.)
const MAX_BINDS: usize = 256;

/// `{head} VALUES (…), (…) {tail}` for `rows` of `width` values each, in as few statements as the bind limit
/// allows (one round trip to the database each, instead of one per row). Returns the rows affected.
pub(crate) async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    head: &str,
    tail: &str,
    width: usize,
    rows: &[Vec<Arg<'_>>],
) -> Result<u64, sqlx::Error> {
    let mut affected = 0;
    let positional = tx.backend_name() == "SQLite";
    for chunk in rows.chunks((MAX_BINDS / width.max(1)).clamp(1, 500)) {
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * width * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for (r, row) in chunk.iter().enumerate() {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for c in 0..row.len() {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                if positional {
                    sql.push('?');
                } else {
                    sql.push('$');
                    sql.push_str(&n.to_string());
                }
            }
            sql.push(')');
        }
        sql.push_str(tail);
        let mut q = sqlx::query(&sql);
        for a in chunk.iter().flatten() {
            q = match *a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        affected += q.execute(&mut **tx).await?.rows_affected();
    }
    Ok(affected)
}

fn taken(kind: ResourceKind) -> StoreError {
    StoreError::Uniqueness(match kind {
        ResourceKind::User => "userName is already taken".into(),
        ResourceKind::Group => "a group with this displayName already exists".into(),
    })
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl SqlStore {
    /// Connect and run the migrations. SQLite files are created if missing and run in WAL mode with
    /// `synchronous=FULL`: an acknowledged write survives power loss.
    pub async fn connect(opts: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if opts.url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if opts.url.starts_with("postgres:") || opts.url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "database url must start with sqlite: or postgres:".into(),
            )));
        };
        // sqlx pings every connection it hands out unless told otherwise: a round trip to PostgreSQL, or to
        // SQLite's worker thread, before every statement run outside a transaction (half the hand-offs of a
        // one-statement read). Instead a PostgreSQL connection that sat idle for longer than `IDLE_CHECK` is
        // pinged before use, so a database restart is still noticed before a request fails on a dead connection;
        // SQLite's connections are to a file in this process and are never pinged.
        let mut pool = AnyPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(opts.acquire_timeout)
            .test_before_acquire(false);
        if dialect == Dialect::Postgres {
            pool = pool.before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < IDLE_CHECK {
                        return Ok(true);
                    }
                    Ok(sqlx::Connection::ping(conn).await.is_ok())
                })
            });
        }
        if dialect == Dialect::Sqlite {
            pool = pool.after_connect(|conn, _meta| Box::pin(sqlite_settings(conn)));
        }
        let url = if dialect == Dialect::Sqlite && !opts.url.contains("mode=") && !opts.url.contains(":memory:") {
            let sep = if opts.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}mode=rwc", opts.url)
        } else {
            opts.url.clone()
        };
        let pool = pool.connect(&url).await?;
        MIGRATOR.run(&pool).await?;
        if dialect == Dialect::Postgres {
            // Keyset paging orders ids by byte order (`COLLATE "C"`, as Rust compares them), which the primary key
            // in the database's collation cannot serve: without these a cursor page sorts the whole tenant.
            // PostgreSQL only (SQLite's order is already byte order), so here rather than in the shared migrations;
            // CONCURRENTLY, so an upgrade does not block writes while a large table is indexed.
            for (name, table) in [
                ("scim_users_keyset", "scim_users"),
                ("scim_groups_keyset", "scim_groups"),
            ] {
                let ddl = format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} (tenant, id COLLATE \"C\") \
                     WHERE archived_at IS NULL"
                );
                if let Err(e) = sqlx::query(&ddl).execute(&pool).await {
                    // Another node creating it at the same moment; paging works without it, only slower.
                    tracing::warn!(index = name, error = %e, "could not create the keyset index");
                }
            }
        }
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let writer = match dialect {
            Dialect::Sqlite if in_memory => Writer::Turn(Arc::new(tokio::sync::Mutex::new(()))),
            Dialect::Sqlite => {
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
                sqlite_settings(&mut conn).await?;
                // The writer's cache outlives its transactions (nothing else writes): 32 MiB keeps the indexes a
                // write descends in memory.
                sqlx::query("PRAGMA cache_size = -32768").execute(&mut conn).await?;
                Writer::Own(Arc::new(tokio::sync::Mutex::new(conn)))
            }
            Dialect::Postgres => Writer::Pool,
        };
        Ok(SqlStore {
            pool,
            dialect,
            cache: None,
            writer,
            analyzed_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        })
    }

    /// The connection to run a write transaction on ([`Writer`]): on SQLite, once it is this caller's turn.
    pub(crate) async fn writer(&self) -> Result<WriteConn, StoreError> {
        Ok(match &self.writer {
            Writer::Own(m) => WriteConn::Own(m.clone().lock_owned().await),
            Writer::Turn(m) => {
                let turn = m.clone().lock_owned().await;
                WriteConn::Pooled {
                    conn: self.pool.acquire().await?,
                    _turn: Some(turn),
                }
            }
            Writer::Pool => WriteConn::Pooled {
                conn: self.pool.acquire().await?,
                _turn: None,
            },
        })
    }

    /// Refresh the query planner's statistics in the background, at most once every 30 seconds, after a bulk
    /// write (a Bulk load, a group given hundreds of members). Without them SQLite does not know that userName is
    /// selective (an `or` of userName lookups scans the tenant), and PostgreSQL, until autovacuum gets to it,
    /// plans for the tables as they were before the load (it walks a 100k-member group to find one user's groups).
    fn refresh_statistics(&self) {
        use std::sync::atomic::Ordering;
        let now = chrono::Utc::now().timestamp();
        let last = self.analyzed_at.load(Ordering::Relaxed);
        if now - last < 30
            || self
                .analyzed_at
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let run = async {
                let mut conn = me.writer().await?;
                if me.dialect == Dialect::Sqlite {
                    sqlx::query("PRAGMA analysis_limit = 1000").execute(&mut *conn).await?;
                    sqlx::query("ANALYZE").execute(&mut *conn).await?;
                } else {
                    sqlx::query("ANALYZE scim_users, scim_groups, scim_group_members, scim_user_emails")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok::<_, StoreError>(())
            };
            if let Err(e) = run.await {
                tracing::warn!(error = %e, "refreshing the planner statistics failed");
            }
        });
    }

    /// Keep a read cache of at most about `max_bytes`. On SQLite it answers at once (one process owns the file);
    /// on PostgreSQL it answers only while [`SqlStore::listen_for_invalidations`] is connected.
    pub fn with_cache(mut self, max_bytes: u64) -> Self {
        self.cache = Some(Arc::new(ReadCache::new(max_bytes, self.dialect == Dialect::Sqlite)));
        self
    }

    /// PostgreSQL: follow the other nodes' writes on [`INVALIDATION_CHANNEL`] and drop what they changed. While the
    /// listening connection is down the cache is suspended (nothing cached answers), and it resumes empty, so a
    /// notification missed in between cannot leave a stale answer. Runs until the task is aborted; a no-op
    /// without a cache or on SQLite.
    pub async fn listen_for_invalidations(&self, url: String) {
        let Some(cache) = self.cache.clone() else { return };
        if self.dialect != Dialect::Postgres {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                l.listen(INVALIDATION_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            match listener {
                Ok(mut l) => {
                    cache.resume();
                    backoff = Duration::from_millis(100);
                    tracing::info!(
                        channel = INVALIDATION_CHANNEL,
                        "read cache: following other nodes' writes"
                    );
                    loop {
                        match l.try_recv().await {
                            Ok(Some(n)) => match serde_json::from_str::<Touched>(n.payload()) {
                                Ok(t) => t.apply(&cache),
                                Err(e) => {
                                    tracing::warn!(error = %e, "read cache: unreadable invalidation; dropping everything");
                                    cache.invalidate_all();
                                }
                            },
                            Ok(None) => {
                                tracing::warn!("read cache: invalidation feed lost; cache suspended until it is back");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "read cache: invalidation feed failed; cache suspended");
                                break;
                            }
                        }
                    }
                    cache.suspend();
                }
                Err(e) => {
                    cache.suspend();
                    tracing::warn!(error = %e, "read cache: cannot listen for invalidations; cache suspended");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Announce, inside the write's transaction, the users it changed (PostgreSQL: delivered to every node's
    /// listener when the transaction commits, and not at all if it rolls back).
    async fn announce(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        dialect: Dialect,
        touched: &Touched,
    ) -> Result<(), StoreError> {
        if dialect != Dialect::Postgres || touched.is_empty() {
            return Ok(());
        }
        for part in touched.notifications() {
            let payload = serde_json::to_string(&part).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(INVALIDATION_CHANNEL)
                .bind(payload)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// After the commit: drop what the write changed from this node's cache.
    fn invalidate(&self, touched: &Touched) {
        if let Some(c) = &self.cache {
            touched.apply(c);
        }
    }

    /// Ids of a group's members, inside a transaction (a rename or delete changes every member's `groups`).
    async fn member_ids(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        group_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT member_id FROM scim_group_members WHERE tenant = $1 AND group_id = $2")
                .bind(tenant)
                .bind(group_id)
                .fetch_all(&mut **tx)
                .await?,
        )
    }

    fn row(r: &AnyRow) -> Result<Stored, StoreError> {
        let doc = parse_doc(&r.try_get::<String, _>("doc")?)?;
        Ok(Stored {
            id: r.try_get("id")?,
            version: r.try_get("version")?,
            created: r.try_get("created")?,
            last_modified: r.try_get("last_modified")?,
            doc,
        })
    }

    fn doc_text(doc: &Map<String, Value>) -> Result<String, StoreError> {
        serde_json::to_string(doc).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn write_emails(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        id: &str,
        doc: &Map<String, Value>,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM scim_user_emails WHERE tenant = $1 AND user_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        for v in email_values(doc) {
            sqlx::query("INSERT INTO scim_user_emails (tenant, user_id, value_lower) VALUES ($1, $2, $3)")
                .bind(tenant)
                .bind(id)
                .bind(&v)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Insert a new resource row (users: with its email rows; groups: with their members), inside `tx`.
    #[allow(clippy::too_many_arguments)]
    async fn insert_new(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        dialect: Dialect,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        w: &Write,
        members: &[Member],
        ts: &str,
    ) -> Result<Vec<String>, StoreError> {
        let doc_text = Self::doc_text(&w.doc)?;
        let res = match kind {
            ResourceKind::User => {
                let user_name = str_at(&w.doc, "userName").unwrap_or_default();
                sqlx::query(
                    "INSERT INTO scim_users (tenant, id, user_name, user_name_lower, external_id, display_name_lower, \
                     version, created, last_modified, password_hash, doc, employee_number) \
                     VALUES ($1,$2,$3,$4,$5,$6,1,$7,$7,$8,$9,$10)",
                )
                .bind(tenant)
                .bind(id)
                .bind(user_name)
                .bind(user_name.to_lowercase())
                .bind(str_at(&w.doc, "externalId"))
                .bind(str_at(&w.doc, "displayName").map(str::to_lowercase))
                .bind(ts)
                .bind(w.password_hash.as_deref())
                .bind(&doc_text)
                .bind(employee_number(&w.doc))
                .execute(&mut **tx)
                .await
            }
            ResourceKind::Group => {
                sqlx::query(
                    "INSERT INTO scim_groups (tenant, id, display_name_lower, external_id, version, created, \
                     last_modified, doc) VALUES ($1,$2,$3,$4,1,$5,$5,$6)",
                )
                .bind(tenant)
                .bind(id)
                .bind(str_at(&w.doc, "displayName").unwrap_or_default().to_lowercase())
                .bind(str_at(&w.doc, "externalId"))
                .bind(ts)
                .bind(&doc_text)
                .execute(&mut **tx)
                .await
            }
        };
        match res {
            Err(e) if unique_violation(&e) => return Err(taken(kind)),
            r => r?,
        };
        let mut touched = Vec::new();
        match kind {
            ResourceKind::User => Self::write_emails(tx, tenant, id, &w.doc).await?,
            ResourceKind::Group => {
                Self::add_members(tx, dialect, tenant, id, members, &mut touched).await?;
            }
        }
        Ok(touched)
    }

    /// Add members to a group, checking each exists in the tenant. Already-present members are left alone.
    async fn add_members(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        dialect: Dialect,
        tenant: &str,
        group_id: &str,
        members: &[Member],
        touched: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let mut added = 0;
        for m in members {
            // PostgreSQL: share-lock the member's row, so a concurrent DELETE (archive) of that user or group
            // either commits first (and the row no longer qualifies) or waits for this insert (and removes it).
            let lock = if dialect == Dialect::Postgres { " FOR SHARE" } else { "" };
            let mut found = None;
            for (kind, table) in [("User", "scim_users"), ("Group", "scim_groups")] {
                let hit: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT id FROM {table} WHERE tenant = $1 AND id = $2 AND archived_at IS NULL{lock}"
                ))
                .bind(tenant)
                .bind(&m.value)
                .fetch_optional(&mut **tx)
                .await?;
                if hit.is_some() {
                    found = Some(kind.to_string());
                    break;
                }
            }
            let Some(kind) = found else {
                return Err(StoreError::InvalidMember(format!("member {} does not exist", m.value)));
            };
            if let Some(want) = &m.kind
                && !want.eq_ignore_ascii_case(&kind)
            {
                return Err(StoreError::InvalidMember(format!(
                    "member {} is a {kind}, not a {want}",
                    m.value
                )));
            }
            if m.value == group_id {
                return Err(StoreError::InvalidMember("a group cannot be a member of itself".into()));
            }
            let done = sqlx::query(
                "INSERT INTO scim_group_members (tenant, group_id, member_id, member_type) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(group_id)
            .bind(&m.value)
            .bind(&kind)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() > 0 {
                touched.push(m.value.clone());
            }
            added += done.rows_affected();
        }
        Ok(added)
    }

    /// Apply membership changes; returns how many rows changed. `Replace` deletes and inserts only the
    /// difference, so re-sending the same list changes nothing.
    async fn apply_member_ops(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        dialect: Dialect,
        tenant: &str,
        group_id: &str,
        ops: &[MemberOp],
        touched: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let mut changed = 0;
        for op in ops {
            match op {
                MemberOp::Add(list) => {
                    changed += Self::add_members(tx, dialect, tenant, group_id, list, touched).await?
                }
                MemberOp::Replace(list) => {
                    let current: Vec<String> = sqlx::query_scalar(
                        "SELECT member_id FROM scim_group_members WHERE tenant = $1 AND group_id = $2",
                    )
                    .bind(tenant)
                    .bind(group_id)
                    .fetch_all(&mut **tx)
                    .await?;
                    let wanted: std::collections::HashSet<&str> = list.iter().map(|m| m.value.as_str()).collect();
                    let gone: Vec<String> = current
                        .iter()
                        .filter(|c| !wanted.contains(c.as_str()))
                        .cloned()
                        .collect();
                    changed += Self::remove_members(tx, tenant, group_id, &gone, touched).await?;
                    let have: std::collections::HashSet<&str> = current.iter().map(String::as_str).collect();
                    let new: Vec<Member> = list
                        .iter()
                        .filter(|m| !have.contains(m.value.as_str()))
                        .cloned()
                        .collect();
                    changed += Self::add_members(tx, dialect, tenant, group_id, &new, touched).await?;
                }
                MemberOp::Remove(ids) => changed += Self::remove_members(tx, tenant, group_id, ids, touched).await?,
                MemberOp::RemoveWhere(_) => {
                    return Err(StoreError::InvalidMember(
                        "member filters must be resolved to ids before they reach the store".into(),
                    ));
                }
            }
        }
        Ok(changed)
    }

    async fn remove_members(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        group_id: &str,
        ids: &[String],
        touched: &mut Vec<String>,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for id in ids {
            let done =
                sqlx::query("DELETE FROM scim_group_members WHERE tenant = $1 AND group_id = $2 AND member_id = $3")
                    .bind(tenant)
                    .bind(group_id)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            if done.rows_affected() > 0 {
                touched.push(id.clone());
            }
            removed += done.rows_affected();
        }
        Ok(removed)
    }

    /// Rows in id order after `after`, in chunks, with the SQL prefilter applied.
    async fn scan(
        &self,
        kind: ResourceKind,
        prefilter: &[String],
        binds: &[String],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut binds: Vec<String> = binds.to_vec();
        let mut sql = format!(
            "SELECT r.id, r.version, r.created, r.last_modified, r.doc FROM {} r WHERE r.tenant = $1 \
             AND r.archived_at IS NULL",
            table(kind)
        );
        for p in prefilter {
            sql.push_str(" AND ");
            sql.push_str(p);
        }
        if let Some(after) = after {
            binds.push(after.to_string());
            sql.push_str(&format!(" AND {} > ${}", self.ordered_id(), binds.len()));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", self.ordered_id()));
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(Self::row).collect()
    }

    /// The memberships table for a lookup by member. SQLite is told to use the member index: with statistics
    /// from before the memberships were loaded (the first ANALYZE of a Bulk load runs on a nearly empty
    /// database, and the other pooled connections keep the statistics they loaded until the schema changes) its
    /// planner prefers the primary key's `tenant` prefix, a walk through every membership of the tenant; a PATCH to
    /// a 10-member group then took 12 ms beside a 100k-member one.
    fn memberships_by_member(&self) -> &'static str {
        memberships_by_member(self.dialect)
    }

    /// PostgreSQL: `OFFSET 0` keeps a subquery from being flattened into the query around it (SQLite rejects
    /// OFFSET without LIMIT, and is kept on the member index by [`SqlStore::memberships_by_member`]).
    fn fence(&self) -> &'static str {
        fence(self.dialect)
    }

    fn ordered_id(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "r.id",
            Dialect::Postgres => "r.id COLLATE \"C\"",
        }
    }

    /// The document with `id`, `meta` and, where a filter needs them, members or groups, for evaluation.
    async fn eval_doc(
        &self,
        tenant: &str,
        kind: ResourceKind,
        s: &Stored,
        needs_rel: bool,
    ) -> Result<Map<String, Value>, StoreError> {
        let mut doc = s.doc.clone();
        doc.insert("id".into(), Value::String(s.id.clone()));
        let mut meta = Map::new();
        meta.insert("resourceType".into(), Value::String(kind.as_str().into()));
        meta.insert("created".into(), Value::String(s.created.clone()));
        meta.insert("lastModified".into(), Value::String(s.last_modified.clone()));
        doc.insert("meta".into(), Value::Object(meta));
        if needs_rel {
            match kind {
                ResourceKind::Group => {
                    let m = self.members(tenant, &s.id).await?;
                    doc.insert(
                        "members".into(),
                        Value::Array(
                            m.iter()
                                .map(|m| Value::Object(member_json(&m.value, m.kind.as_deref().unwrap_or("User"))))
                                .collect(),
                        ),
                    );
                }
                ResourceKind::User => {
                    let g = self.groups_of(tenant, &s.id).await?;
                    doc.insert(
                        "groups".into(),
                        Value::Array(
                            g.into_iter()
                                .map(|(id, name)| {
                                    let mut o = Map::new();
                                    o.insert("value".into(), Value::String(id));
                                    o.insert("display".into(), Value::String(name));
                                    Value::Object(o)
                                })
                                .collect(),
                        ),
                    );
                }
            }
        }
        Ok(doc)
    }
}

/// The distinct lower-cased email values of a user document, as indexed in `scim_user_emails`.
pub(crate) fn email_values(doc: &Map<String, Value>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for e in doc.get("emails").and_then(Value::as_array).into_iter().flatten() {
        if let Some(v) = e.get("value").and_then(Value::as_str).filter(|v| !v.is_empty()) {
            let v = v.to_lowercase();
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
    }
    seen
}

/// Effects that only start a new identity: a first state, maybe a plan and outbox rows.
fn fresh_only(e: &Effects) -> bool {
    matches!(&e.state, Some(s) if s.expect_version.is_none())
        && e.new_approvals.is_empty()
        && e.cancel_approvals.is_empty()
        && e.update_approvals.is_empty()
        && e.new_exceptions.is_empty()
        && !e.clear_exceptions
}

/// What [`SqlStore::replace_in`] wrote.
struct Replaced {
    /// Users whose cached answers the replacement changed.
    touched: Vec<String>,
    member_changes: u64,
    version: i64,
    created: String,
    last_modified: String,
    /// The stored document, read back only when the write kept it (a membership-only change).
    stored_doc: Option<String>,
}

impl Replaced {
    /// The replaced resource; `written` gives the document the write sent, taken only if that is what is stored.
    fn stored(
        self,
        id: &str,
        doc_changed: bool,
        written: impl FnOnce() -> Map<String, Value>,
    ) -> Result<Stored, StoreError> {
        let doc = match (doc_changed, self.stored_doc) {
            (false, Some(text)) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            _ => written(),
        };
        Ok(Stored {
            id: id.to_string(),
            version: self.version,
            created: self.created,
            last_modified: self.last_modified,
            doc,
        })
    }
}

fn stored_all(items: &[(String, Write)], ts: &str) -> Vec<Stored> {
    items
        .iter()
        .map(|(id, w)| Stored {
            id: id.clone(),
            version: 1,
            created: ts.to_string(),
            last_modified: ts.to_string(),
            doc: w.doc.clone(),
        })
        .collect()
}

fn member_json(id: &str, kind: &str) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("value".into(), Value::String(id.to_string()));
    o.insert("type".into(), Value::String(kind.to_string()));
    o
}

fn mentions_relations(f: &Filter) -> bool {
    match f {
        Filter::And(a, b) | Filter::Or(a, b) => mentions_relations(a) || mentions_relations(b),
        Filter::Not(a) => mentions_relations(a),
        Filter::Present(p) | Filter::Compare { path: p, .. } | Filter::ValuePath { path: p, .. } => {
            p.urn.is_none() && (p.attr == "members" || p.attr == "groups")
        }
    }
}

fn cmp_keys(a: &Option<SortKey>, b: &Option<SortKey>, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (None, None) => Equal,
        (None, Some(_)) => Greater,
        (Some(_), None) => Less,
        (Some(x), Some(y)) => {
            let o = x.partial_cmp(y).unwrap_or(Equal);
            if desc { o.reverse() } else { o }
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn create(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        w: Write,
        members: &[Member],
    ) -> Result<Stored, StoreError> {
        let ts = now();
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let touched = Touched::users(
            tenant,
            Self::insert_new(&mut tx, self.dialect, tenant, kind, id, &w, members, &ts).await?,
        );
        lifecycle::apply(&mut tx, tenant, &ts, &w.effects).await?;
        crate::audit::append_tx(&mut tx, tenant, &ts, &lifecycle::audit_entries(&w.audit, &w.effects)).await?;
        Self::announce(&mut tx, self.dialect, &touched).await?;
        tx.commit().await?;
        self.invalidate(&touched);
        Ok(Stored {
            id: id.to_string(),
            version: 1,
            created: ts.clone(),
            last_modified: ts,
            doc: w.doc,
        })
    }

    async fn create_many(
        &self,
        tenant: &str,
        kind: ResourceKind,
        items: &[(String, Write)],
    ) -> Result<Vec<Stored>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if kind == ResourceKind::Group {
            // Groups are not batched by the service; one transaction still, a row at a time.
            let ts = now();
            let mut conn = self.writer().await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let mut audit = Vec::new();
            for (id, w) in items {
                // No members: nothing cached changes.
                Self::insert_new(&mut tx, self.dialect, tenant, kind, id, w, &[], &ts).await?;
                lifecycle::apply(&mut tx, tenant, &ts, &w.effects).await?;
                audit.extend(lifecycle::audit_entries(&w.audit, &w.effects));
            }
            crate::audit::append_tx(&mut tx, tenant, &ts, &audit).await?;
            tx.commit().await?;
            return Ok(stored_all(items, &ts));
        }
        let ts = now();
        let docs = items
            .iter()
            .map(|(_, w)| Self::doc_text(&w.doc))
            .collect::<Result<Vec<_>, _>>()?;
        let lower: Vec<(String, Option<String>)> = items
            .iter()
            .map(|(_, w)| {
                (
                    str_at(&w.doc, "userName").unwrap_or_default().to_lowercase(),
                    str_at(&w.doc, "displayName").map(str::to_lowercase),
                )
            })
            .collect();
        let users: Vec<Vec<Arg>> = items
            .iter()
            .zip(&docs)
            .zip(&lower)
            .map(|(((id, w), doc), (name_lower, display_lower))| {
                vec![
                    Arg::Text(Some(tenant)),
                    Arg::Text(Some(id)),
                    Arg::Text(Some(str_at(&w.doc, "userName").unwrap_or_default())),
                    Arg::Text(Some(name_lower)),
                    Arg::Text(str_at(&w.doc, "externalId")),
                    Arg::Text(display_lower.as_deref()),
                    Arg::Int(1),
                    Arg::Text(Some(&ts)),
                    Arg::Text(Some(&ts)),
                    Arg::Text(w.password_hash.as_deref()),
                    Arg::Text(Some(doc)),
                    Arg::Text(employee_number(&w.doc)),
                ]
            })
            .collect();
        let emails: Vec<(usize, String)> = items
            .iter()
            .enumerate()
            .flat_map(|(i, (_, w))| email_values(&w.doc).into_iter().map(move |v| (i, v)))
            .collect();
        let email_rows: Vec<Vec<Arg>> = emails
            .iter()
            .map(|(i, v)| {
                vec![
                    Arg::Text(Some(tenant)),
                    Arg::Text(Some(&items[*i].0)),
                    Arg::Text(Some(v)),
                ]
            })
            .collect();
        // Effects of a new identity (a first state, its plan and outbox rows) go in as multi-row inserts; any
        // other effect is written as `create` writes it.
        let (fresh, other): (Vec<&Effects>, Vec<&Effects>) = items
            .iter()
            .flat_map(|(_, w)| w.effects.iter())
            .partition(|e| fresh_only(e));
        let states: Vec<Vec<Arg>> = fresh
            .iter()
            .filter_map(|e| e.state.as_ref().map(|s| (e, s)))
            .map(|(e, s)| {
                vec![
                    Arg::Text(Some(tenant)),
                    Arg::Text(Some(&e.identity_id)),
                    Arg::Int(1),
                    Arg::Text(s.leaver_since.as_deref()),
                    Arg::Text(Some(&s.current)),
                    Arg::Text(Some(&s.evaluation)),
                    Arg::Text(Some(&s.policy_hash)),
                    Arg::Text(s.wakeup_at.as_deref()),
                    Arg::Text(Some(&ts)),
                ]
            })
            .collect();
        let plans: Vec<&PlanRecord> = fresh.iter().filter_map(|e| e.plan.as_ref()).collect();
        let outbox: Vec<Vec<Arg>> = fresh
            .iter()
            .flat_map(|e| e.outbox.iter().map(move |o| (e, o)))
            .map(|(e, o)| crate::outbox::insert_args(tenant, &e.identity_id, 1, &ts, o))
            .collect();

        let mut conn = self.writer().await?;

        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let head = "INSERT INTO scim_users (tenant, id, user_name, user_name_lower, external_id, display_name_lower, \
                    version, created, last_modified, password_hash, doc, employee_number)";
        match insert_rows(&mut tx, head, "", 12, &users).await {
            Err(e) if unique_violation(&e) => return Err(taken(kind)),
            r => r?,
        };
        let head = "INSERT INTO scim_user_emails (tenant, user_id, value_lower)";
        insert_rows(&mut tx, head, "", 3, &email_rows).await?;
        let head = "INSERT INTO identity_state (tenant, identity_id, version, leaver_since, current, evaluation, \
                    policy_hash, wakeup_at, updated)";
        if insert_rows(&mut tx, head, " ON CONFLICT DO NOTHING", 9, &states).await? != states.len() as u64 {
            return Err(StoreError::StateConflict);
        }
        lifecycle::insert_plans(&mut tx, tenant, &plans).await?;
        insert_rows(
            &mut tx,
            crate::outbox::INSERT_HEAD,
            "",
            crate::outbox::INSERT_WIDTH,
            &outbox,
        )
        .await?;
        for e in other {
            lifecycle::apply(&mut tx, tenant, &ts, std::slice::from_ref(e)).await?;
        }
        // One append, last: the chain holds the records in the order of the items, as consecutive creates would.
        let audit: Vec<_> = items
            .iter()
            .flat_map(|(_, w)| lifecycle::audit_entries(&w.audit, &w.effects))
            .collect();
        crate::audit::append_tx(&mut tx, tenant, &ts, &audit).await?;
        tx.commit().await?;
        drop(conn);
        if items.len() >= 100 {
            self.refresh_statistics();
        }
        Ok(stored_all(items, &ts))
    }

    async fn get(&self, tenant: &str, kind: ResourceKind, id: &str) -> Result<Option<Stored>, StoreError> {
        let sql = format!(
            "SELECT r.id, r.version, r.created, r.last_modified, r.doc FROM {} r WHERE r.tenant = $1 AND r.id = $2 \
             AND r.archived_at IS NULL",
            table(kind)
        );
        let row = sqlx::query(&sql)
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::row).transpose()
    }

    async fn replace(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        expect: i64,
        w: Write,
        members: &[MemberOp],
    ) -> Result<Stored, StoreError> {
        let ts = now();
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut plans = Vec::new();
        let mut done = Self::replace_in(
            &mut tx,
            self.dialect,
            &ts,
            tenant,
            kind,
            id,
            expect,
            &w,
            members,
            &mut plans,
        )
        .await?;
        lifecycle::insert_plans(&mut tx, tenant, &plans).await?;
        crate::audit::append_tx(&mut tx, tenant, &ts, &lifecycle::audit_entries(&w.audit, &w.effects)).await?;
        let touched = Touched::users(tenant, std::mem::take(&mut done.touched));
        Self::announce(&mut tx, self.dialect, &touched).await?;
        tx.commit().await?;
        drop(conn);
        self.invalidate(&touched);
        if done.member_changes >= 100 {
            self.refresh_statistics();
        }
        done.stored(id, w.doc_changed, || w.doc)
    }

    async fn replace_many(
        &self,
        tenant: &str,
        items: &[Replacement],
    ) -> Result<Vec<Result<Stored, StoreError>>, StoreError> {
        let ts = now();
        let mut conn = self.writer().await?;
        // First without savepoints (two statements fewer per item): almost every group succeeds whole. If any
        // replacement fails, that attempt is rolled back and the group runs again with a savepoint around each
        // replacement, so that one that fails (a version moved, a taken userName) leaves nothing behind and the
        // others still commit.
        let mut savepoints = false;
        let (mut tx, outcomes, audit, touched, member_changes) = loop {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let mut outcomes = Vec::with_capacity(items.len());
            let mut audit = Vec::new();
            let mut touched = Vec::new();
            let mut member_changes = 0;
            // The group's plans, inserted together after the last replacement.
            let mut plans = Vec::new();
            let mut failed = false;
            for item in items {
                let planned = plans.len();
                if savepoints {
                    sqlx::query("SAVEPOINT scimgate_item").execute(&mut *tx).await?;
                }
                let r = Self::replace_in(
                    &mut tx,
                    self.dialect,
                    &ts,
                    tenant,
                    item.kind,
                    &item.id,
                    item.expect,
                    &item.write,
                    &item.members,
                    &mut plans,
                )
                .await;
                match r {
                    Ok(mut done) => {
                        if savepoints {
                            sqlx::query("RELEASE SAVEPOINT scimgate_item").execute(&mut *tx).await?;
                        }
                        audit.extend(lifecycle::audit_entries(&item.write.audit, &item.write.effects));
                        touched.append(&mut done.touched);
                        member_changes += done.member_changes;
                        outcomes.push(Ok(done));
                    }
                    Err(_) if !savepoints => {
                        failed = true;
                        break;
                    }
                    Err(e) => {
                        plans.truncate(planned);
                        sqlx::query("ROLLBACK TO SAVEPOINT scimgate_item")
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("RELEASE SAVEPOINT scimgate_item").execute(&mut *tx).await?;
                        outcomes.push(Err(e));
                    }
                }
            }
            if failed {
                tx.rollback().await?;
                savepoints = true;
                continue;
            }
            lifecycle::insert_plans(&mut tx, tenant, &plans).await?;
            break (tx, outcomes, audit, touched, member_changes);
        };
        // One append for the batch, in item order: the chain reads as if the replacements had come one by one.
        crate::audit::append_tx(&mut tx, tenant, &ts, &audit).await?;
        let touched = Touched::users(tenant, touched);
        Self::announce(&mut tx, self.dialect, &touched).await?;
        tx.commit().await?;
        drop(conn);
        self.invalidate(&touched);
        if member_changes >= 100 {
            self.refresh_statistics();
        }
        Ok(items
            .iter()
            .zip(outcomes)
            .map(|(item, r)| {
                r.and_then(|done| done.stored(&item.id, item.write.doc_changed, || item.write.doc.clone()))
            })
            .collect())
    }

    async fn delete(
        &self,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        expect: Option<i64>,
        effects: &[Effects],
        audit: &[crate::audit::AuditEntry],
    ) -> Result<(), StoreError> {
        let ts = now();
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        // Users are archived, not erased: the identity stays for leaver processing, audit and rehire.
        let sql = match kind {
            ResourceKind::User => "UPDATE scim_users SET archived_at = $4, version = version + 1, last_modified = $4 \
                 WHERE tenant = $1 AND id = $2 AND ($3 < 0 OR version = $3) AND archived_at IS NULL"
                .to_string(),
            ResourceKind::Group => {
                "DELETE FROM scim_groups WHERE tenant = $1 AND id = $2 AND ($3 < 0 OR version = $3) AND $4 <> ''"
                    .to_string()
            }
        };
        let done = sqlx::query(&sql)
            .bind(tenant)
            .bind(id)
            .bind(expect.unwrap_or(-1))
            .bind(&ts)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Self::missing_or_moved(&mut tx, tenant, kind, id).await?);
        }
        let touched = Touched::users(
            tenant,
            match kind {
                ResourceKind::User => vec![id.to_string()],
                ResourceKind::Group => Self::member_ids(&mut tx, tenant, id).await?,
            },
        );
        Self::announce(&mut tx, self.dialect, &touched).await?;
        sqlx::query("DELETE FROM scim_group_members WHERE tenant = $1 AND (member_id = $2 OR group_id = $2)")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        lifecycle::apply(&mut tx, tenant, &ts, effects).await?;
        crate::audit::append_tx(&mut tx, tenant, &ts, &lifecycle::audit_entries(audit, effects)).await?;
        tx.commit().await?;
        self.invalidate(&touched);
        Ok(())
    }

    async fn query(&self, tenant: &str, kind: ResourceKind, q: &Query<'_>) -> Result<Page, StoreError> {
        let mut binds = Binds(vec![tenant.to_string()]);
        let (prefilter, residual) = match (q.filter, q.lowering) {
            (None, _) => (vec![], None),
            (Some(f), true) => split(kind, self.dialect, f, &mut binds),
            (Some(f), false) => (vec![], Some(f.clone())),
        };
        let sort_col = match &q.sort {
            Some((p, _)) if q.lowering => sort_column(kind, p, self.dialect),
            _ => None,
        };
        let sorted_in_sql = q.sort.is_none() || sort_col.is_some();
        if residual.is_none() && sorted_in_sql {
            return self.query_sql(kind, q, &prefilter, binds.0, sort_col).await;
        }
        // In memory: scan the prefiltered rows in id order, keep matches, sort, page.
        let needs_rel = residual.as_ref().is_some_and(mentions_relations);
        let mut matched: Vec<(Option<SortKey>, Stored)> = Vec::new();
        let mut after: Option<String> = None;
        const CHUNK: usize = 2000;
        loop {
            let chunk = self.scan(kind, &prefilter, &binds.0, after.as_deref(), CHUNK).await?;
            let n = chunk.len();
            after = chunk.last().map(|s| s.id.clone());
            for s in chunk {
                let doc = self.eval_doc(tenant, kind, &s, needs_rel).await?;
                if residual.as_ref().is_none_or(|f| matches(q.reg, kind, f, &doc)) {
                    let key = q.sort.as_ref().and_then(|(p, _)| sort_key(q.reg, kind, p, &doc));
                    matched.push((key, s));
                }
            }
            if n < CHUNK {
                break;
            }
        }
        if let Some((_, desc)) = &q.sort {
            matched.sort_by(|(ka, a), (kb, b)| cmp_keys(ka, kb, *desc).then_with(|| a.id.cmp(&b.id)));
        }
        let total = matched.len();
        let skip = match &q.start {
            Start::Offset(o) => *o,
            Start::After(id) => matched.iter().take_while(|(_, s)| s.id.as_str() <= id.as_str()).count(),
        };
        let rows: Vec<Stored> = matched.into_iter().skip(skip).take(q.count).map(|(_, s)| s).collect();
        let more = skip + rows.len() < total;
        Ok(Page { total, rows, more })
    }

    async fn members(&self, tenant: &str, group_id: &str) -> Result<Vec<Member>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT member_id, member_type FROM scim_group_members WHERE tenant = $1 AND group_id = $2 ORDER BY member_id",
        )
        .bind(tenant)
        .bind(group_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(value, kind)| Member {
                value,
                kind: Some(kind),
            })
            .collect())
    }

    async fn groups_of(&self, tenant: &str, member_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT g.id, g.doc FROM (SELECT tenant, group_id FROM {} WHERE tenant = $1 \
             AND member_id = $2{}) m JOIN scim_groups g ON g.tenant = m.tenant AND g.id = m.group_id ORDER BY g.id",
            self.memberships_by_member(),
            self.fence()
        ))
        .bind(tenant)
        .bind(member_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, doc)| {
                let doc: Map<String, Value> =
                    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((id, str_at(&doc, "displayName").unwrap_or_default().to_string()))
            })
            .collect()
    }

    async fn groups_of_many(
        &self,
        tenant: &str,
        member_ids: &[&str],
    ) -> Result<std::collections::HashMap<String, Vec<(String, String)>>, StoreError> {
        let mut out: std::collections::HashMap<String, Vec<(String, String)>> = std::collections::HashMap::new();
        for chunk in member_ids.chunks(MAX_BINDS - 1) {
            let mut sql = String::from(
                // The memberships are looked up by member first (`OFFSET 0` keeps PostgreSQL from flattening the
                // subquery, `INDEXED BY` holds SQLite to the member index): with statistics from before a large
                // group was loaded, either planner otherwise walks every member of every group.
                "SELECT m.member_id, g.id, g.doc FROM (SELECT tenant, group_id, member_id FROM ",
            );
            sql.push_str(self.memberships_by_member());
            sql.push_str(" WHERE tenant = $1 AND member_id IN (");
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "$" } else { ", $" });
                sql.push_str(&(i + 2).to_string());
            }
            sql.push(')');
            sql.push_str(self.fence());
            sql.push_str(
                ") m JOIN scim_groups g ON g.tenant = m.tenant AND g.id = m.group_id \
                 ORDER BY m.member_id, g.id",
            );
            let mut q = sqlx::query_as::<_, (String, String, String)>(&sql).bind(tenant);
            for id in chunk {
                q = q.bind(*id);
            }
            for (member, id, doc) in q.fetch_all(&self.pool).await? {
                let doc: Map<String, Value> =
                    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let name = str_at(&doc, "displayName").unwrap_or_default().to_string();
                out.entry(member).or_default().push((id, name));
            }
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn read_cache(&self) -> Option<&ReadCache> {
        self.cache.as_deref()
    }
}

impl SqlStore {
    async fn query_sql(
        &self,
        kind: ResourceKind,
        q: &Query<'_>,
        prefilter: &[String],
        mut binds: Vec<String>,
        sort_col: Option<String>,
    ) -> Result<Page, StoreError> {
        let mut where_ = String::from("r.tenant = $1 AND r.archived_at IS NULL");
        for p in prefilter {
            where_.push_str(" AND ");
            where_.push_str(p);
        }
        let total = match q.total {
            Some(t) => t,
            None => {
                let count_sql = format!("SELECT COUNT(*) FROM {} r WHERE {where_}", table(kind));
                let mut cq = sqlx::query_scalar::<_, i64>(&count_sql);
                for b in &binds {
                    cq = cq.bind(b);
                }
                usize::try_from(cq.fetch_one(&self.pool).await?).unwrap_or(0)
            }
        };
        let order = match (&sort_col, &q.sort) {
            (Some(c), Some((_, desc))) => {
                format!(
                    "({c} IS NULL), {c} {}, {}",
                    if *desc { "DESC" } else { "ASC" },
                    self.ordered_id()
                )
            }
            _ => self.ordered_id().to_string(),
        };
        let skip_clause = match &q.start {
            Start::Offset(o) => format!(" OFFSET {o}"),
            Start::After(id) => {
                binds.push(id.clone());
                where_.push_str(&format!(" AND {} > ${}", self.ordered_id(), binds.len()));
                String::new()
            }
        };
        let sql = format!(
            "SELECT r.id, r.version, r.created, r.last_modified, r.doc FROM {} r WHERE {where_} ORDER BY {order} LIMIT {}{skip_clause}",
            table(kind),
            q.count + 1
        );
        let mut sq = sqlx::query(&sql);
        for b in &binds {
            sq = sq.bind(b);
        }
        let fetched = sq.fetch_all(&self.pool).await?;
        let more = fetched.len() > q.count;
        let rows = fetched
            .iter()
            .take(q.count)
            .map(Self::row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { total, rows, more })
    }

    /// A whole-filter SQL count, used by tests to check a filter lowers completely.
    pub fn lowers_completely(&self, kind: ResourceKind, f: &Filter) -> bool {
        let mut b = Binds(vec![String::new()]);
        lower(kind, self.dialect, f, &mut b).is_some()
    }
}

impl SqlStore {
    /// Write a user row's columns from its document, if still at version `expect`. One statement for a replace and
    /// for a rehire (`revive`: the archived row comes back, without its old password hash).
    #[allow(clippy::too_many_arguments)]
    async fn update_user(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        id: &str,
        expect: i64,
        w: &Write,
        doc_text: &str,
        ts: &str,
        revive: bool,
    ) -> Result<Option<(i64, String, String)>, sqlx::Error> {
        let (password, unarchive, archived) = if revive {
            ("$6", ", archived_at = NULL", "IS NOT NULL")
        } else {
            ("COALESCE($6, password_hash)", "", "IS NULL")
        };
        let user_name = str_at(&w.doc, "userName").unwrap_or_default();
        sqlx::query_as(&format!(
            "UPDATE scim_users SET user_name = $1, user_name_lower = $2, external_id = $3, display_name_lower = $4, \
             version = version + 1, last_modified = $5, password_hash = {password}, doc = $7, employee_number = $8\
             {unarchive} WHERE tenant = $9 AND id = $10 AND version = $11 AND archived_at {archived} \
             RETURNING version, created, last_modified"
        ))
        .bind(user_name)
        .bind(user_name.to_lowercase())
        .bind(str_at(&w.doc, "externalId"))
        .bind(str_at(&w.doc, "displayName").map(str::to_lowercase))
        .bind(ts)
        .bind(w.password_hash.as_deref())
        .bind(doc_text)
        .bind(employee_number(&w.doc))
        .bind(tenant)
        .bind(id)
        .bind(expect)
        .fetch_optional(&mut **tx)
        .await
    }

    /// The body of [`Store::replace`] inside a transaction: lock the row at the expected version, apply the
    /// membership changes, write the document and the lifecycle effects, read the row back. The caller appends
    /// the audit records, announces what was touched and commits.
    #[allow(clippy::too_many_arguments)]
    async fn replace_in<'e>(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        dialect: Dialect,
        ts: &str,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
        expect: i64,
        w: &'e Write,
        members: &[MemberOp],
        plans: &mut Vec<&'e PlanRecord>,
    ) -> Result<Replaced, StoreError> {
        if kind == ResourceKind::User && w.doc_changed {
            let doc_text = Self::doc_text(&w.doc)?;
            // A user has no membership to lock for: the update is its own version check, and RETURNING saves
            // reading the row back.
            let row = match Self::update_user(tx, tenant, id, expect, w, &doc_text, ts, false).await {
                Err(e) if unique_violation(&e) => return Err(taken(kind)),
                r => r?,
            };
            let Some((version, created, last_modified)) = row else {
                return Err(Self::missing_or_moved(tx, tenant, kind, id).await?);
            };
            if !w.emails_unchanged {
                Self::write_emails(tx, tenant, id, &w.doc).await?;
            }
            lifecycle::apply_deferring_plans(tx, tenant, ts, &w.effects, plans).await?;
            return Ok(Replaced {
                touched: vec![id.to_string()],
                member_changes: 0,
                version,
                created,
                last_modified,
                stored_doc: None,
            });
        }
        // Lock the row at the expected version first (PostgreSQL: concurrent member changes to one group queue
        // here instead of deadlocking on member rows), then membership, counting real changes.
        let locked = sqlx::query(&format!(
            "UPDATE {} SET version = version WHERE tenant = $1 AND id = $2 AND ($3 < 0 OR version = $3) \
             AND archived_at IS NULL",
            table(kind)
        ))
        .bind(tenant)
        .bind(id)
        .bind(expect)
        .execute(&mut **tx)
        .await?;
        if locked.rows_affected() == 0 {
            return Err(Self::missing_or_moved(tx, tenant, kind, id).await?);
        }
        let mut touched = Vec::new();
        let member_changes = match kind {
            ResourceKind::Group => Self::apply_member_ops(tx, dialect, tenant, id, members, &mut touched).await?,
            ResourceKind::User => 0,
        };
        // From here on a user's document is unchanged (see above): only a group writes.
        let res = if !w.doc_changed && member_changes == 0 {
            // Nothing changes: the row lock above confirmed the version; keep it (an IdP re-push must not move
            // ETags).
            None
        } else {
            Some(match kind {
                // Only the membership changed: bump the version, keep the stored document (with a negative
                // `expect` the caller's copy may predate a concurrent rename).
                _ if !w.doc_changed => {
                    sqlx::query(
                        "UPDATE scim_groups SET version = version + 1, last_modified = $1 \
                         WHERE tenant = $2 AND id = $3 AND ($4 < 0 OR version = $4) AND archived_at IS NULL",
                    )
                    .bind(ts)
                    .bind(tenant)
                    .bind(id)
                    .bind(expect)
                    .execute(&mut **tx)
                    .await
                }
                _ => {
                    // Serialised only here: a membership-only change does not write the document.
                    let doc_text = Self::doc_text(&w.doc)?;
                    sqlx::query(
                        "UPDATE scim_groups SET display_name_lower = $1, external_id = $2, version = version + 1, \
                         last_modified = $3, doc = $4 WHERE tenant = $5 AND id = $6 AND ($7 < 0 OR version = $7) \
                         AND archived_at IS NULL",
                    )
                    .bind(str_at(&w.doc, "displayName").unwrap_or_default().to_lowercase())
                    .bind(str_at(&w.doc, "externalId"))
                    .bind(ts)
                    .bind(&doc_text)
                    .bind(tenant)
                    .bind(id)
                    .bind(expect)
                    .execute(&mut **tx)
                    .await
                }
            })
        };
        if let Some(res) = res {
            let done = match res {
                Err(e) if unique_violation(&e) => return Err(taken(kind)),
                r => r?,
            };
            if done.rows_affected() == 0 {
                return Err(Self::missing_or_moved(tx, tenant, kind, id).await?);
            }
        }
        if kind == ResourceKind::Group && w.doc_changed {
            // The displayName shows in every member's `groups`.
            touched.extend(Self::member_ids(tx, tenant, id).await?);
        }
        lifecycle::apply_deferring_plans(tx, tenant, ts, &w.effects, plans).await?;
        let (version, created, last_modified, stored_doc): (i64, String, String, Option<String>) =
            sqlx::query_as(&format!(
                "SELECT version, created, last_modified, CASE WHEN $3 THEN NULL ELSE doc END FROM {} \
                 WHERE tenant = $1 AND id = $2",
                table(kind)
            ))
            .bind(tenant)
            .bind(id)
            .bind(w.doc_changed)
            .fetch_one(&mut **tx)
            .await?;
        Ok(Replaced {
            touched,
            member_changes,
            version,
            created,
            last_modified,
            stored_doc,
        })
    }

    /// After a conditional write matched no row: NotFound, or VersionMismatch if the row exists.
    async fn missing_or_moved(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        tenant: &str,
        kind: ResourceKind,
        id: &str,
    ) -> Result<StoreError, StoreError> {
        let exists: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT version FROM {} WHERE tenant = $1 AND id = $2 AND archived_at IS NULL",
            table(kind)
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(if exists.is_some() {
            StoreError::VersionMismatch
        } else {
            StoreError::NotFound
        })
    }
}

#[async_trait]
impl LifecycleStore for SqlStore {
    async fn find_archived(
        &self,
        tenant: &str,
        external_id: Option<&str>,
        employee_number: Option<&str>,
    ) -> Result<Option<Stored>, StoreError> {
        // One indexed lookup per key (an OR across the two columns would scan the table on every create).
        for (column, key) in [("external_id", external_id), ("employee_number", employee_number)] {
            let Some(key) = key else { continue };
            let row = sqlx::query(&format!(
                "SELECT r.id, r.version, r.created, r.last_modified, r.doc FROM scim_users r WHERE r.tenant = $1 \
                 AND r.{column} = $2 AND r.archived_at IS NOT NULL ORDER BY r.archived_at DESC LIMIT 1"
            ))
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return Self::row(&r).map(Some);
            }
        }
        Ok(None)
    }

    async fn get_with_archived(&self, tenant: &str, id: &str) -> Result<Option<(Stored, bool)>, StoreError> {
        let row = sqlx::query(
            "SELECT r.id, r.version, r.created, r.last_modified, r.doc, r.archived_at FROM scim_users r \
             WHERE r.tenant = $1 AND r.id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let archived: Option<String> = r.try_get("archived_at")?;
                Ok(Some((Self::row(&r)?, archived.is_some())))
            }
        }
    }

    async fn revive(&self, tenant: &str, id: &str, expect: i64, w: Write) -> Result<Stored, StoreError> {
        let ts = now();
        let doc_text = Self::doc_text(&w.doc)?;
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let res = Self::update_user(&mut tx, tenant, id, expect, &w, &doc_text, &ts, true).await;
        let (version, created, last_modified) = match res {
            Err(e) if unique_violation(&e) => return Err(taken(ResourceKind::User)),
            r => r?.ok_or(StoreError::VersionMismatch)?,
        };
        Self::write_emails(&mut tx, tenant, id, &w.doc).await?;
        let touched = Touched::users(tenant, vec![id.to_string()]);
        Self::announce(&mut tx, self.dialect, &touched).await?;
        lifecycle::apply(&mut tx, tenant, &ts, &w.effects).await?;
        crate::audit::append_tx(&mut tx, tenant, &ts, &lifecycle::audit_entries(&w.audit, &w.effects)).await?;
        tx.commit().await?;
        self.invalidate(&touched);
        Ok(Stored {
            id: id.to_string(),
            version,
            created,
            last_modified,
            doc: w.doc,
        })
    }

    async fn apply_effects(&self, tenant: &str, effects: &[Effects]) -> Result<(), StoreError> {
        let ts = now();
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        lifecycle::apply(&mut tx, tenant, &ts, effects).await?;
        crate::audit::append_tx(&mut tx, tenant, &ts, &lifecycle::audit_entries(&[], effects)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn identity_state(&self, tenant: &str, id: &str) -> Result<Option<IdentityState>, StoreError> {
        let row = sqlx::query("SELECT * FROM identity_state WHERE tenant = $1 AND identity_id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(lifecycle::state_row).transpose()
    }

    async fn plans(&self, tenant: &str, identity: Option<&str>, limit: usize) -> Result<Vec<PlanRecord>, StoreError> {
        let (sql, binds) = filtered("plans", tenant, &[("identity_id", identity)]);
        let rows = bind_all(
            sqlx::query(&format!("{sql} ORDER BY created DESC, id DESC LIMIT {limit}")),
            &binds,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(lifecycle::plan_row).collect()
    }

    async fn approvals(
        &self,
        tenant: &str,
        status: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let (sql, binds) = filtered("approvals", tenant, &[("status", status), ("identity_id", identity)]);
        let rows = bind_all(sqlx::query(&format!("{sql} ORDER BY created, id")), &binds)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(lifecycle::approval_row).collect()
    }

    async fn approval(&self, tenant: &str, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM approvals WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(lifecycle::approval_row).transpose()
    }

    async fn decision_inputs(&self, tenant: &str, id: &str) -> Result<DecisionInputs, StoreError> {
        let rows = sqlx::query(self.change_reads(false))
            .bind(tenant)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(change_rows(&rows, id)?.2)
    }

    async fn user_for_change(&self, tenant: &str, id: &str) -> Result<Option<UserForChange>, StoreError> {
        let rows = sqlx::query(self.change_reads(true))
            .bind(tenant)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let (user, groups, inputs) = change_rows(&rows, id)?;
        Ok(user.map(|user| UserForChange { user, groups, inputs }))
    }

    async fn exceptions(&self, tenant: &str, identity: Option<&str>) -> Result<Vec<ExceptionRecord>, StoreError> {
        let (sql, binds) = filtered("sod_exceptions", tenant, &[("identity_id", identity)]);
        let rows = bind_all(sqlx::query(&format!("{sql} ORDER BY identity_id, rule")), &binds)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(lifecycle::exception_row).collect()
    }

    async fn due_identities(&self, now: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT tenant, identity_id FROM identity_state WHERE wakeup_at IS NOT NULL AND wakeup_at <= $1 \
             ORDER BY wakeup_at LIMIT {limit}"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn due_approvals(&self, now: &str, limit: usize) -> Result<Vec<(String, ApprovalRecord)>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM approvals WHERE status = 'pending' AND (expires_at <= $1 OR \
             (escalate_at IS NOT NULL AND escalate_at <= $1)) ORDER BY expires_at LIMIT {limit}"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>("tenant")?, lifecycle::approval_row(r)?)))
            .collect()
    }

    async fn identity_page(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentityRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT r.id, r.version, r.created, r.last_modified, r.doc, r.archived_at, s.identity_id, \
             s.version AS s_version, s.leaver_since, s.current, s.evaluation, s.policy_hash, s.wakeup_at, s.updated \
             FROM scim_users r LEFT JOIN identity_state s ON s.tenant = r.tenant AND s.identity_id = r.id \
             WHERE r.tenant = $1 AND {id} > $2 ORDER BY {id} LIMIT {limit}",
            id = self.ordered_id()
        ))
        .bind(tenant)
        .bind(after.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let archived: Option<String> = r.try_get("archived_at")?;
            let state_id: Option<String> = r.try_get("identity_id")?;
            let state = match state_id {
                Some(identity_id) => Some(IdentityState {
                    identity_id,
                    version: r.try_get("s_version")?,
                    leaver_since: r.try_get("leaver_since")?,
                    current: r.try_get("current")?,
                    evaluation: r.try_get("evaluation")?,
                    policy_hash: r.try_get("policy_hash")?,
                    wakeup_at: r.try_get("wakeup_at")?,
                    updated: r.try_get("updated")?,
                }),
                None => None,
            };
            out.push(IdentityRow {
                user: Self::row(r)?,
                archived: archived.is_some(),
                state,
                groups: vec![],
            });
        }
        if out.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (0..out.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT m.member_id, g.doc FROM (SELECT tenant, group_id, member_id FROM {} \
             WHERE tenant = $1 AND member_id IN ({}){}) m JOIN scim_groups g ON g.tenant = m.tenant \
             AND g.id = m.group_id",
            self.memberships_by_member(),
            marks.join(", "),
            self.fence()
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(tenant);
        for row in &out {
            q = q.bind(row.user.id.clone());
        }
        let index: std::collections::HashMap<String, usize> =
            out.iter().enumerate().map(|(i, r)| (r.user.id.clone(), i)).collect();
        for (member, doc) in q.fetch_all(&self.pool).await? {
            let doc: Map<String, Value> = serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if let (Some(&i), Some(name)) = (index.get(&member), str_at(&doc, "displayName")) {
                out[i].groups.push(name.to_string());
            }
        }
        Ok(out)
    }

    async fn identity_ids(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT r.id FROM scim_users r WHERE r.tenant = $1 AND {} > $2 ORDER BY {} LIMIT {limit}",
            self.ordered_id(),
            self.ordered_id()
        ))
        .bind(tenant)
        .bind(after.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

impl SqlStore {
    /// The pool, for the store's other modules (the audit trail).
    /// [`change_reads_sql`] for this store's dialect, built once.
    fn change_reads(&self, with_user: bool) -> &'static str {
        use std::sync::LazyLock;
        static SQL: LazyLock<[String; 4]> = LazyLock::new(|| {
            [
                change_reads_sql(Dialect::Sqlite, false),
                change_reads_sql(Dialect::Sqlite, true),
                change_reads_sql(Dialect::Postgres, false),
                change_reads_sql(Dialect::Postgres, true),
            ]
        });
        let i = match self.dialect {
            Dialect::Sqlite => 0,
            Dialect::Postgres => 2,
        } + usize::from(with_user);
        &SQL[i]
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// [`SqlStore::memberships_by_member`] for `dialect`.
fn memberships_by_member(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "scim_group_members INDEXED BY scim_group_members_member",
        Dialect::Postgres => "scim_group_members",
    }
}

/// [`SqlStore::fence`] for `dialect`.
fn fence(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "",
        Dialect::Postgres => " OFFSET 0",
    }
}

/// A stored document's JSON text, parsed.
fn parse_doc(text: &str) -> Result<Map<String, Value>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The statement behind [`LifecycleStore::decision_inputs`] (`with_user: false`) and
/// [`LifecycleStore::user_for_change`]: the identity's rows from up to five tables in one `UNION ALL` of one
/// shape, each row tagged with its table. One statement is one round trip to PostgreSQL and one hand-off to
/// SQLite's connection thread (each costs more than the lookups themselves), and one snapshot of all five.
/// Columns: tag, a number, seven texts, two sort keys; ordered as the single-table reads order (groups by id,
/// exceptions by rule, approvals by created and id).
fn change_reads_sql(dialect: Dialect, with_user: bool) -> String {
    let members = memberships_by_member(dialect);
    let fence = fence(dialect);
    let mut parts = vec![
        "SELECT 's' AS tag, CAST(version AS BIGINT) AS n, leaver_since AS t1, current AS t2, evaluation AS t3, \
         policy_hash AS t4, wakeup_at AS t5, updated AS t6, CAST(NULL AS TEXT) AS t7, CAST(NULL AS TEXT) AS o1, \
         CAST(NULL AS TEXT) AS o2 FROM identity_state WHERE tenant = $1 AND identity_id = $2"
            .to_string(),
        "SELECT 'e', NULL, rule, approver, approval_id, created, expires_at, NULL, NULL, rule, NULL \
         FROM sod_exceptions WHERE tenant = $1 AND identity_id = $2"
            .to_string(),
        "SELECT 'a', version, id, status, created, escalate_at, expires_at, decided_at, request, created, id \
         FROM approvals WHERE tenant = $1 AND identity_id = $2 AND status = 'pending'"
            .to_string(),
    ];
    if with_user {
        parts.push(
            "SELECT 'u', version, created, last_modified, doc, NULL, NULL, NULL, NULL, NULL, NULL FROM scim_users \
             WHERE tenant = $1 AND id = $2 AND archived_at IS NULL"
                .to_string(),
        );
        parts.push(format!(
            "SELECT 'g', NULL, g.id, g.doc, NULL, NULL, NULL, NULL, NULL, g.id, NULL FROM (SELECT tenant, group_id \
             FROM {members} WHERE tenant = $1 AND member_id = $2{fence}) m \
             JOIN scim_groups g ON g.tenant = m.tenant AND g.id = m.group_id"
        ));
    }
    format!("{} ORDER BY 1, 10, 11", parts.join(" UNION ALL "))
}

/// What [`change_rows`] reads: the user (if read and found), its groups (id, displayName), its decision inputs.
type ChangeRows = (Option<Stored>, Vec<(String, String)>, DecisionInputs);

/// The rows of [`change_reads_sql`] for identity `id`.
fn change_rows(rows: &[AnyRow], id: &str) -> Result<ChangeRows, StoreError> {
    let mut user = None;
    let mut groups = Vec::new();
    let mut inputs = DecisionInputs::default();
    for r in rows {
        let tag: String = r.try_get(0)?;
        let t = |i: usize| r.try_get::<Option<String>, _>(i + 1);
        let text = |i: usize| -> Result<String, StoreError> {
            t(i)?.ok_or_else(|| StoreError::Corrupt(format!("a NULL where text was expected ({tag}, column {i})")))
        };
        match tag.as_str() {
            "s" => {
                inputs.state = Some(IdentityState {
                    identity_id: id.to_string(),
                    version: r.try_get(1)?,
                    leaver_since: t(1)?,
                    current: text(2)?,
                    evaluation: text(3)?,
                    policy_hash: text(4)?,
                    wakeup_at: t(5)?,
                    updated: text(6)?,
                })
            }
            "e" => inputs.exceptions.push(ExceptionRecord {
                identity_id: id.to_string(),
                rule: text(1)?,
                approver: text(2)?,
                approval_id: text(3)?,
                created: text(4)?,
                expires_at: text(5)?,
            }),
            "a" => inputs.pending.push(ApprovalRecord {
                id: text(1)?,
                identity_id: id.to_string(),
                status: text(2)?,
                created: text(3)?,
                escalate_at: t(4)?,
                expires_at: text(5)?,
                decided_at: t(6)?,
                version: r.try_get(1)?,
                request: text(7)?,
            }),
            "u" => {
                user = Some(Stored {
                    id: id.to_string(),
                    version: r.try_get(1)?,
                    created: text(1)?,
                    last_modified: text(2)?,
                    doc: parse_doc(&text(3)?)?,
                });
            }
            "g" => {
                let doc = parse_doc(&text(2)?)?;
                groups.push((text(1)?, str_at(&doc, "displayName").unwrap_or_default().to_string()));
            }
            other => return Err(StoreError::Corrupt(format!("unexpected row tag {other}"))),
        }
    }
    Ok((user, groups, inputs))
}
