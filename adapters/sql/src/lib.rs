//! scimgate adapter for an existing application's SQL tables (PostgreSQL, MySQL/MariaDB): the legacy-app case.
//!
//! The configuration ([`Config`]) maps SCIM attributes onto the application's own user table, a column that locks
//! an account, its role table and its user↔role link table. Layout:
//! - [`config`]: the `[targets.sql]` section;
//! - `sql`: validated identifiers and a query builder whose values are always bound parameters;
//! - `schema`: the checked mapping, with column types learnt from the database on first use;
//! - `error`: sqlx errors → [`AdapterError`];
//! - this file: the [`Adapter`] implementation.
//!
//! An apply is one transaction: the user row is upserted by its key column (PostgreSQL `INSERT … ON CONFLICT`;
//! MySQL a locking read, then `UPDATE` or `INSERT`), then its managed memberships are brought in line.

pub mod config;
mod error;
mod schema;
mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, ErrorKind, SearchPage, SearchQuery,
};
use sqlx::AnyConnection;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tokio::sync::OnceCell;

pub use config::Config;
use config::{GroupRef, UserRef};
use schema::Spec;
use sql::{Col, Dialect, Ident, Sql};

/// The [`AccountId`] secondary holding the key column's value (when the id column is the primary).
pub const KEY: &str = "key";

/// Largest page [`Adapter::search`] returns.
pub const MAX_PAGE: usize = 1000;

/// The SQL adapter.
pub struct SqlAdapter {
    pool: AnyPool,
    /// The mapping as configured, checked.
    spec: Spec,
    /// The mapping with column types, learnt from the database on first use.
    resolved: OnceCell<Spec>,
    op_timeout: Duration,
}

impl std::fmt::Debug for SqlAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlAdapter")
            .field("dialect", &self.spec.dialect)
            .field("users", &self.spec.users.table)
            .finish_non_exhaustive()
    }
}

/// A user row as read back.
struct Row {
    key: String,
    id: Option<String>,
    account: Account,
}

impl Row {
    fn account_id(&self) -> AccountId {
        account_id(self.id.as_deref(), &self.key)
    }
}

/// The app's id when it has one (with the key we wrote as a secondary, which guards renames), else the key.
fn account_id(id: Option<&str>, key: &str) -> AccountId {
    match id {
        Some(id) => AccountId::new(id).with(KEY, key),
        None => AccountId::new(key),
    }
}

impl SqlAdapter {
    /// Check the configuration and set up a bounded, lazily connecting pool. Nothing is sent to the database until
    /// the first call; [`Adapter::health`] checks the connection and the mapping against the real tables.
    pub fn new(config: Config) -> Result<Self, AdapterError> {
        let url = config.resolve_url()?;
        let dialect = Dialect::from_url(&url)?;
        let spec = Spec::from_config(&config, dialect)?;
        if config.max_connections == 0 || config.max_connections > config::MAX_CONNECTIONS {
            return Err(AdapterError::config(format!(
                "sql: max_connections must be 1..={}",
                config::MAX_CONNECTIONS
            )));
        }
        if config.connect_timeout_secs == 0 || config.operation_timeout_secs == 0 {
            return Err(AdapterError::config("sql: timeouts must be at least one second"));
        }
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(config.connect_timeout_secs))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy(&url)
            .map_err(|e| {
                AdapterError::config(format!(
                    "sql: bad url {}: {}",
                    config::redact_url(&url),
                    // sqlx's message may quote the URL; keep only its kind.
                    match e {
                        sqlx::Error::Configuration(_) => "cannot parse it",
                        _ => "cannot use it",
                    }
                ))
            })?;
        tracing::debug!(url = %config::redact_url(&url), ?dialect, "sql adapter ready");
        Ok(SqlAdapter {
            pool,
            spec,
            resolved: OnceCell::new(),
            op_timeout: Duration::from_secs(config.operation_timeout_secs),
        })
    }

    /// Run `f` with a connection and the resolved mapping, within the operation timeout.
    async fn with_conn<T>(
        &self,
        op: &'static str,
        f: impl AsyncFnOnce(&mut AnyConnection, &Spec) -> Result<T, AdapterError>,
    ) -> Result<T, AdapterError> {
        let work = async {
            let mut conn = self.pool.acquire().await.map_err(|e| error::map(op, e))?;
            let spec = self.resolved.get_or_try_init(|| self.spec.resolve(&mut conn)).await?;
            f(&mut conn, spec).await
        };
        match tokio::time::timeout(self.op_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(AdapterError::unavailable(format!(
                "sql {op}: no answer within {:?}",
                self.op_timeout
            ))),
        }
    }
}

fn db(op: &'static str) -> impl Fn(sqlx::Error) -> AdapterError {
    move |e| error::map(op, e)
}

fn key_of(spec: &Spec, d: &DesiredAccount) -> Result<String, AdapterError> {
    spec.users
        .key_path
        .text(&d.user)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            AdapterError::rejected(format!(
                "the user has no {}, which the key column {} needs",
                spec.users.key_source,
                spec.users.key.ident.name()
            ))
        })
}

/// `SELECT <every mapped column as text> FROM users u`.
fn select_users(spec: &Spec) -> Sql {
    let u = &spec.users;
    let mut q = Sql::new(spec.dialect);
    q.push("SELECT ").read(Some("u"), &u.key);
    if let Some(id) = &u.id {
        q.push(", ").read(Some("u"), id);
    }
    for (c, _) in &u.columns {
        q.push(", ").read(Some("u"), c);
    }
    if let Some(dis) = &u.disable {
        q.push(", ").read(Some("u"), &dis.col);
        q.push(", CASE WHEN ")
            .eq(Some("u"), &dis.col, &dis.enabled)
            .push(" THEN '1' ELSE '0' END");
    }
    q.push(" FROM ").ident(&u.table).push(" u");
    q
}

fn parse_row(spec: &Spec, r: &[Option<String>]) -> Result<Row, AdapterError> {
    let u = &spec.users;
    let mut it = r.iter().cloned();
    let mut next = || it.next().flatten();
    let key = next().ok_or_else(|| AdapterError::new(ErrorKind::Other, "sql: a user row without a key"))?;
    let mut attributes = BTreeMap::new();
    attributes.insert(u.key.ident.name().to_string(), vec![key.clone()]);
    let id = match &u.id {
        Some(c) => {
            let v = next();
            if let Some(v) = &v {
                attributes.insert(c.ident.name().to_string(), vec![v.clone()]);
            }
            v
        }
        None => None,
    };
    for (c, _) in &u.columns {
        if let Some(v) = next() {
            attributes.insert(c.ident.name().to_string(), vec![v]);
        }
    }
    let enabled = match &u.disable {
        Some(dis) => {
            if let Some(v) = next() {
                attributes.insert(dis.col.ident.name().to_string(), vec![v]);
            }
            Some(next().as_deref() == Some("1"))
        }
        None => None,
    };
    Ok(Row {
        account: Account {
            id: account_id(id.as_deref(), &key),
            attributes,
            entitlements: BTreeSet::new(),
            enabled,
        },
        key,
        id,
    })
}

/// The user row whose `col` is `value`.
async fn row_by(
    conn: &mut AnyConnection,
    spec: &Spec,
    col: &Col,
    value: &str,
    lock: bool,
) -> Result<Option<Row>, AdapterError> {
    if !col.admits(value) {
        return Ok(None);
    }
    let mut q = select_users(spec);
    q.push(" WHERE ").eq(Some("u"), col, value);
    if lock {
        q.push(" FOR UPDATE");
    }
    let rows = q.texts(conn).await.map_err(db("read"))?;
    rows.first().map(|r| parse_row(spec, r)).transpose()
}

/// The row `known` names (by id column, else by key).
async fn row_by_known(
    conn: &mut AnyConnection,
    spec: &Spec,
    known: &AccountId,
    lock: bool,
) -> Result<Option<Row>, AdapterError> {
    let col = spec.users.id.as_ref().unwrap_or(&spec.users.key);
    row_by(conn, spec, col, &known.primary, lock).await
}

/// Whether the row found by `known` is the account: the id column may name a row the app has since given to
/// another user (ids reused after a delete), so the row must still hold the key we recorded with the id, or the key
/// the user has now.
fn trusted(spec: &Spec, known: &AccountId, row: &Row, key: Option<&str>) -> bool {
    spec.users.id.is_none() || known.secondary.get(KEY) == Some(&row.key) || key == Some(row.key.as_str())
}

/// Find the account by `known`, then by its key.
async fn locate(
    conn: &mut AnyConnection,
    spec: &Spec,
    known: Option<&AccountId>,
    key: Option<&str>,
    lock: bool,
) -> Result<Option<Row>, AdapterError> {
    if let Some(k) = known
        && let Some(row) = row_by_known(conn, spec, k, lock).await?
        && trusted(spec, k, &row, key)
    {
        return Ok(Some(row));
    }
    match key {
        Some(key) => row_by(conn, spec, &spec.users.key, key, lock).await,
        None => Ok(None),
    }
}

/// The column values an apply writes, key excluded.
fn desired_values(spec: &Spec, d: &DesiredAccount) -> Vec<(Col, Option<String>)> {
    let u = &spec.users;
    let mut out: Vec<(Col, Option<String>)> = u.columns.iter().map(|(c, p)| (c.clone(), p.text(&d.user))).collect();
    if let Some(dis) = &u.disable {
        let v = if d.enabled { &dis.enabled } else { &dis.disabled };
        out.push((dis.col.clone(), Some(v.clone())));
    }
    out
}

/// `UPDATE users SET c = v, … WHERE <col> = <value>` (nothing when there is nothing to set).
async fn update_row(
    conn: &mut AnyConnection,
    spec: &Spec,
    set: &[(Col, Option<String>)],
    col: &Col,
    value: &str,
) -> Result<(), AdapterError> {
    if set.is_empty() {
        return Ok(());
    }
    let mut q = Sql::new(spec.dialect);
    q.push("UPDATE ").ident(&spec.users.table).push(" SET ");
    for (i, (c, v)) in set.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.ident(&c.ident).push(" = ").value(v.as_deref(), Some(c));
    }
    q.push(" WHERE ").eq(None, col, value);
    q.execute(conn).await.map_err(db("update"))?;
    Ok(())
}

fn insert_row(spec: &Spec, key: &str, values: &[(Col, Option<String>)]) -> Sql {
    let u = &spec.users;
    let mut q = Sql::new(spec.dialect);
    q.push("INSERT INTO ").ident(&u.table).push(" (").ident(&u.key.ident);
    for (c, _) in values {
        q.push(", ").ident(&c.ident);
    }
    q.push(") VALUES (").value(Some(key), Some(&u.key));
    for (c, v) in values {
        q.push(", ").value(v.as_deref(), Some(c));
    }
    q.push(")");
    q
}

/// Insert or update the row with this key, atomically with respect to a concurrent retry.
async fn upsert(
    conn: &mut AnyConnection,
    spec: &Spec,
    key: &str,
    values: &[(Col, Option<String>)],
) -> Result<(), AdapterError> {
    let u = &spec.users;
    match spec.dialect {
        Dialect::Postgres => {
            // ON CONFLICT names the key column only: a clash on any other unique column is a Conflict error.
            let mut q = insert_row(spec, key, values);
            q.push(" ON CONFLICT (").ident(&u.key.ident).push(") DO UPDATE SET ");
            let set: Vec<&Ident> = if values.is_empty() {
                vec![&u.key.ident]
            } else {
                values.iter().map(|(c, _)| &c.ident).collect()
            };
            for (i, c) in set.into_iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.ident(c).push(" = EXCLUDED.").ident(c);
            }
            q.execute(conn).await.map_err(db("upsert"))?;
        }
        Dialect::MySql => {
            // Not ON DUPLICATE KEY UPDATE: that fires on *any* unique index, and would overwrite another user's row
            // whose email (say) clashes. Lock the key, then update or insert; a concurrent insert of the same key
            // makes ours fail with a duplicate, after which the row is there to update.
            if row_by(conn, spec, &u.key, key, true).await?.is_some() {
                return update_row(conn, spec, values, &u.key, key).await;
            }
            match insert_row(spec, key, values).execute(conn).await {
                Ok(_) => {}
                Err(e) if matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()) => {
                    if row_by(conn, spec, &u.key, key, true).await?.is_some() {
                        update_row(conn, spec, values, &u.key, key).await?;
                    } else {
                        return Err(error::map("insert", e));
                    }
                }
                Err(e) => return Err(error::map("insert", e)),
            }
        }
    }
    Ok(())
}

/// The group reference (`group_column` value) for a role name; creates the role when allowed.
async fn group_ref(
    conn: &mut AnyConnection,
    spec: &Spec,
    name: &str,
    create: bool,
) -> Result<Option<String>, AdapterError> {
    let (Some(m), Some(g)) = (&spec.memberships, &spec.groups) else {
        // Memberships hold role names directly.
        return Ok(Some(name.to_string()));
    };
    let find = || {
        let mut q = Sql::new(spec.dialect);
        q.push("SELECT ").read(None, &g.key).push(", ").read(None, &g.name);
        q.push(" FROM ").ident(&g.table).push(" WHERE ").eq(None, &g.name, name);
        q
    };
    let pick = |rows: Vec<Vec<Option<String>>>| {
        rows.into_iter().next().and_then(|r| match m.group_ref {
            GroupRef::Id => r.into_iter().next().flatten(),
            GroupRef::Name => r.into_iter().nth(1).flatten(),
        })
    };
    if let Some(r) = pick(find().texts(conn).await.map_err(db("roles"))?) {
        return Ok(Some(r));
    }
    if !create {
        return Ok(None);
    }
    let mut q = Sql::new(spec.dialect);
    q.push("INSERT INTO ")
        .ident(&g.table)
        .push(" (")
        .ident(&g.name.ident)
        .push(") VALUES (");
    q.value(Some(name), Some(&g.name)).push(")");
    match spec.dialect {
        Dialect::Postgres => q.push(" ON CONFLICT DO NOTHING"),
        Dialect::MySql => q
            .push(" ON DUPLICATE KEY UPDATE ")
            .ident(&g.name.ident)
            .push(" = ")
            .ident(&g.name.ident),
    };
    q.execute(conn).await.map_err(db("create role"))?;
    tracing::info!(role = name, "sql: created a role");
    Ok(pick(find().texts(conn).await.map_err(db("roles"))?))
}

/// The user's `user_column` value.
fn user_ref(spec: &Spec, row: &Row) -> Option<String> {
    match spec.memberships.as_ref()?.user_ref {
        UserRef::Id => row.id.clone(),
        UserRef::Key => Some(row.key.clone()),
    }
}

/// The group references the user holds.
async fn held_refs(conn: &mut AnyConnection, spec: &Spec, uref: &str) -> Result<BTreeSet<String>, AdapterError> {
    let Some(m) = &spec.memberships else {
        return Ok(BTreeSet::new());
    };
    let mut q = Sql::new(spec.dialect);
    q.push("SELECT ").read(None, &m.group).push(" FROM ").ident(&m.table);
    q.push(" WHERE ").eq(None, &m.user, uref);
    let rows = q.texts(conn).await.map_err(db("memberships"))?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn delete_membership(conn: &mut AnyConnection, spec: &Spec, uref: &str, gref: &str) -> Result<(), AdapterError> {
    let Some(m) = &spec.memberships else {
        return Ok(());
    };
    let mut q = Sql::new(spec.dialect);
    q.push("DELETE FROM ")
        .ident(&m.table)
        .push(" WHERE ")
        .eq(None, &m.user, uref);
    q.push(" AND ").eq(None, &m.group, gref);
    q.execute(conn).await.map_err(db("revoke"))?;
    Ok(())
}

/// Bring the user's managed memberships in line with `d.entitlements`.
async fn sync_memberships(
    conn: &mut AnyConnection,
    spec: &Spec,
    uref: &str,
    d: &DesiredAccount,
) -> Result<(), AdapterError> {
    let Some(m) = &spec.memberships else {
        return Ok(());
    };
    let create = spec.groups.as_ref().is_some_and(|g| g.create_missing);
    let mut want = BTreeSet::new();
    for e in &d.entitlements {
        match group_ref(conn, spec, e, create).await? {
            Some(r) => {
                want.insert(r);
            }
            None => return Err(AdapterError::rejected(format!("sql: there is no role named {e:?}"))),
        }
    }
    let mut managed = BTreeSet::new();
    for e in d.managed.difference(&d.entitlements) {
        if let Some(r) = group_ref(conn, spec, e, false).await? {
            managed.insert(r);
        }
    }
    let held = held_refs(conn, spec, uref).await?;
    for r in held.intersection(&managed).filter(|r| !want.contains(*r)) {
        delete_membership(conn, spec, uref, r).await?;
    }
    for r in want.difference(&held) {
        let mut q = Sql::new(spec.dialect);
        q.push("INSERT INTO ")
            .ident(&m.table)
            .push(" (")
            .ident(&m.user.ident)
            .push(", ");
        q.ident(&m.group.ident)
            .push(") VALUES (")
            .value(Some(uref), Some(&m.user))
            .push(", ");
        q.value(Some(r), Some(&m.group)).push(")");
        match spec.dialect {
            Dialect::Postgres => q.push(" ON CONFLICT DO NOTHING"),
            Dialect::MySql => q
                .push(" ON DUPLICATE KEY UPDATE ")
                .ident(&m.user.ident)
                .push(" = ")
                .ident(&m.user.ident),
        };
        q.execute(conn).await.map_err(db("grant"))?;
    }
    Ok(())
}

/// Role names held, per user reference, for these users.
async fn entitlements_of(
    conn: &mut AnyConnection,
    spec: &Spec,
    urefs: &[String],
) -> Result<BTreeMap<String, BTreeSet<String>>, AdapterError> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Some(m) = &spec.memberships else {
        return Ok(out);
    };
    if urefs.is_empty() {
        return Ok(out);
    }
    let mut q = Sql::new(spec.dialect);
    q.push("SELECT ").read(Some("m"), &m.user).push(", ");
    match (&spec.groups, m.group_ref) {
        (Some(g), GroupRef::Id) => {
            q.read(Some("g"), &g.name)
                .push(" FROM ")
                .ident(&m.table)
                .push(" m JOIN ")
                .ident(&g.table);
            q.push(" g ON g.")
                .ident(&g.key.ident)
                .push(" = m.")
                .ident(&m.group.ident);
        }
        _ => {
            q.read(Some("m"), &m.group).push(" FROM ").ident(&m.table).push(" m");
        }
    }
    q.push(" WHERE m.").ident(&m.user.ident).push(" IN (");
    for (i, u) in urefs.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.value(Some(u), Some(&m.user));
    }
    q.push(")");
    for r in q.texts(conn).await.map_err(db("memberships"))? {
        if let [Some(u), Some(name)] = r.as_slice() {
            out.entry(u.clone()).or_default().insert(name.clone());
        }
    }
    Ok(out)
}

async fn with_entitlements(
    conn: &mut AnyConnection,
    spec: &Spec,
    rows: Vec<Row>,
) -> Result<Vec<Account>, AdapterError> {
    let refs: Vec<String> = rows.iter().filter_map(|r| user_ref(spec, r)).collect();
    let mut held = entitlements_of(conn, spec, &refs).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut a = r.account.clone();
            if let Some(u) = user_ref(spec, &r) {
                a.entitlements = held.remove(&u).unwrap_or_default();
            }
            a
        })
        .collect())
}

async fn apply_tx(
    conn: &mut AnyConnection,
    spec: &Spec,
    known: Option<&AccountId>,
    d: &DesiredAccount,
) -> Result<AccountId, AdapterError> {
    let key = key_of(spec, d)?;
    let values = desired_values(spec, d);
    let u = &spec.users;
    let mut tx = sqlx::Connection::begin(conn).await.map_err(db("begin"))?;
    let existing = match known {
        Some(k) => row_by_known(&mut tx, spec, k, true)
            .await?
            .filter(|row| trusted(spec, k, row, Some(&key))),
        None => None,
    };
    match existing {
        Some(row) if row.key != key => {
            // The account we created was renamed at the source: rename the row, keep its id.
            let mut set = vec![(u.key.clone(), Some(key.clone()))];
            set.extend(values.iter().cloned());
            match (&u.id, &row.id) {
                (Some(c), Some(id)) => update_row(&mut tx, spec, &set, c, id).await?,
                _ => update_row(&mut tx, spec, &set, &u.key, &row.key).await?,
            }
            if let Some(m) = spec.memberships.as_ref().filter(|m| m.user_ref == UserRef::Key) {
                let mut q = Sql::new(spec.dialect);
                q.push("UPDATE ")
                    .ident(&m.table)
                    .push(" SET ")
                    .ident(&m.user.ident)
                    .push(" = ");
                q.value(Some(&key), Some(&m.user))
                    .push(" WHERE ")
                    .eq(None, &m.user, &row.key);
                q.execute(&mut tx).await.map_err(db("rename"))?;
            }
            tracing::info!(from = %row.key, to = %key, "sql: renamed a user row");
        }
        _ => upsert(&mut tx, spec, &key, &values).await?,
    }
    let row = row_by(&mut tx, spec, &u.key, &key, false)
        .await?
        .ok_or_else(|| AdapterError::new(ErrorKind::Other, "sql apply: the row is not there after the write"))?;
    if let Some(uref) = user_ref(spec, &row) {
        sync_memberships(&mut tx, spec, &uref, d).await?;
    }
    tx.commit().await.map_err(db("commit"))?;
    Ok(row.account_id())
}

async fn remove_tx(
    conn: &mut AnyConnection,
    spec: &Spec,
    known: Option<&AccountId>,
    d: &DesiredAccount,
) -> Result<(), AdapterError> {
    // Without a key in the document, the known id alone must do.
    let key = match (key_of(spec, d), known) {
        (Ok(k), _) => Some(k),
        (Err(_), Some(_)) => None,
        (Err(e), None) => return Err(e),
    };
    let mut tx = sqlx::Connection::begin(conn).await.map_err(db("begin"))?;
    let Some(row) = locate(&mut tx, spec, known, key.as_deref(), true).await? else {
        return Ok(());
    };
    if let Some(uref) = user_ref(spec, &row) {
        let mut managed = BTreeSet::new();
        for e in &d.managed {
            if let Some(r) = group_ref(&mut tx, spec, e, false).await? {
                managed.insert(r);
            }
        }
        let held = held_refs(&mut tx, spec, &uref).await?;
        for r in held.intersection(&managed) {
            delete_membership(&mut tx, spec, &uref, r).await?;
        }
    }
    let u = &spec.users;
    let mut q = Sql::new(spec.dialect);
    q.push("DELETE FROM ").ident(&u.table).push(" WHERE ");
    match (&u.id, &row.id) {
        (Some(c), Some(id)) => q.eq(None, c, id),
        _ => q.eq(None, &u.key, &row.key),
    };
    q.execute(&mut tx).await.map_err(db("delete"))?;
    tx.commit().await.map_err(db("commit"))?;
    tracing::info!(key = %row.key, "sql: removed a user row");
    Ok(())
}

#[async_trait]
impl Adapter for SqlAdapter {
    fn kind(&self) -> &'static str {
        "sql"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            disable: self.spec.users.disable.is_some(),
            groups: self.spec.memberships.is_some(),
            passwords: false,
            search_filters: true,
            max_batch: 1,
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        self.with_conn("health", async |conn, _| {
            sqlx::query("SELECT 1").execute(conn).await.map_err(db("health"))?;
            Ok(())
        })
        .await
    }

    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError> {
        if desired.password.is_some() {
            tracing::debug!("sql: this adapter does not set passwords; ignoring the one given");
        }
        let id = self
            .with_conn("apply", async |conn, spec| apply_tx(conn, spec, known, desired).await)
            .await?;
        tracing::debug!(identity = %desired.identity_id, account = %id.primary, "sql: applied");
        Ok(id)
    }

    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError> {
        self.with_conn("remove", async |conn, spec| remove_tx(conn, spec, known, desired).await)
            .await
    }

    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        self.with_conn("get", async |conn, spec| {
            let row = match (key_of(spec, desired), known) {
                (Ok(key), k) => locate(conn, spec, k, Some(&key), false).await?,
                (Err(_), Some(k)) => row_by_known(conn, spec, k, false).await?,
                (Err(e), None) => return Err(e),
            };
            match row {
                Some(r) => Ok(with_entitlements(conn, spec, vec![r]).await?.into_iter().next()),
                None => Ok(None),
            }
        })
        .await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError> {
        let limit = query.limit.clamp(1, MAX_PAGE);
        self.with_conn("search", async |conn, spec| {
            let u = &spec.users;
            let mut q = select_users(spec);
            let mut conds = 0;
            if let Some((attr, value)) = &query.filter {
                let col = spec.user_column(attr).ok_or_else(|| {
                    AdapterError::config(format!(
                        "sql search: {attr:?} is not a mapped column of the users table"
                    ))
                })?;
                if !col.admits(value) {
                    return Ok(SearchPage::default());
                }
                q.push(" WHERE ").eq(Some("u"), col, value);
                conds += 1;
            }
            if let Some(c) = &query.cursor {
                q.push(if conds > 0 { " AND " } else { " WHERE " });
                q.qualified("u", &u.key).push(" > ").value(Some(c), Some(&u.key));
            }
            q.push(" ORDER BY ").qualified("u", &u.key).push(" LIMIT ");
            q.int(i64::try_from(limit + 1).unwrap_or(i64::MAX));
            let mut rows = q
                .texts(conn)
                .await
                .map_err(db("search"))?
                .iter()
                .map(|r| parse_row(spec, r))
                .collect::<Result<Vec<_>, _>>()?;
            let next = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|r| r.key.clone())
            } else {
                None
            };
            Ok(SearchPage {
                accounts: with_entitlements(conn, spec, rows).await?,
                next,
            })
        })
        .await
    }
}
