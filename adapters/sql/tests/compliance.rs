//! The SQL adapter against real PostgreSQL and MariaDB servers, on a legacy-style schema the test creates: the
//! SDK compliance kit, then direct SQL reads proving what the adapter promises (one row per login, membership rows,
//! the status column, injection-proof values, renames, refusals).
//!
//! The servers are the machine's (127.0.0.1:5432 trust auth, 127.0.0.1:3306 root without a password; see
//! `scimgate_testkit::db`); each test creates its own database and drops it. A missing server fails the test.

use std::collections::BTreeSet;

use scimgate_adapter_sdk::compliance::{self, Fixture, user_doc};
use scimgate_adapter_sdk::{AccountId, Adapter, DesiredAccount, ErrorKind, SearchQuery};
use scimgate_adapter_sql::{Config, SqlAdapter};
use scimgate_testkit::db::TempDb;
use serde_json::{Value, json};
use sqlx::{AnyPool, Row};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

#[derive(Clone, Copy, PartialEq)]
enum Db {
    Pg,
    Maria,
}

fn legacy_schema(db: Db) -> &'static str {
    match db {
        Db::Pg => {
            "CREATE TABLE app_users (
                user_id serial PRIMARY KEY,
                login varchar(200) NOT NULL UNIQUE,
                first_name varchar(100),
                last_name varchar(100),
                email varchar(200) UNIQUE,
                dept varchar(100),
                status char(1) NOT NULL DEFAULT 'A',
                created_at timestamp NOT NULL DEFAULT now());
             CREATE TABLE app_roles (role_id serial PRIMARY KEY, role_name varchar(100) NOT NULL UNIQUE);
             CREATE TABLE app_user_roles (
                user_id integer NOT NULL REFERENCES app_users (user_id) ON DELETE CASCADE,
                role_id integer NOT NULL REFERENCES app_roles (role_id),
                PRIMARY KEY (user_id, role_id));
             INSERT INTO app_roles (role_name) VALUES ('APP_READ'), ('APP_WRITE'), ('APP_ADMIN');
             CREATE TABLE no_unique (login varchar(200), last_name varchar(100));"
        }
        Db::Maria => {
            "CREATE TABLE app_users (
                user_id INT AUTO_INCREMENT PRIMARY KEY,
                login VARCHAR(200) NOT NULL UNIQUE,
                first_name VARCHAR(100),
                last_name VARCHAR(100),
                email VARCHAR(200) UNIQUE,
                dept VARCHAR(100),
                status CHAR(1) NOT NULL DEFAULT 'A',
                created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB;
             CREATE TABLE app_roles (role_id INT AUTO_INCREMENT PRIMARY KEY, role_name VARCHAR(100) NOT NULL UNIQUE)
                ENGINE=InnoDB;
             CREATE TABLE app_user_roles (
                user_id INT NOT NULL,
                role_id INT NOT NULL,
                PRIMARY KEY (user_id, role_id),
                FOREIGN KEY (user_id) REFERENCES app_users (user_id) ON DELETE CASCADE,
                FOREIGN KEY (role_id) REFERENCES app_roles (role_id)) ENGINE=InnoDB;
             INSERT INTO app_roles (role_name) VALUES ('APP_READ'), ('APP_WRITE'), ('APP_ADMIN');
             CREATE TABLE no_unique (login VARCHAR(200), last_name VARCHAR(100)) ENGINE=InnoDB;"
        }
    }
}

fn config(url: &str, extra: &str) -> Config {
    let text = format!(
        r#"
        url = "{url}"
        max_connections = 4
        connect_timeout_secs = 2
        operation_timeout_secs = 20

        [users]
        table = "app_users"
        key_column = "login"
        key = "userName"
        id_column = "user_id"
        disable = {{ column = "status", enabled_value = "A", disabled_value = "L" }}
        [users.columns]
        first_name = "name.givenName"
        last_name = "name.familyName"
        email = 'emails[type eq "work"].value'
        dept = "{ENTERPRISE}:department"

        [groups]
        table = "app_roles"
        key_column = "role_id"
        name_column = "role_name"
        {extra}

        [memberships]
        table = "app_user_roles"
        user_column = "user_id"
        group_column = "role_id"
        user_ref = "id"
        group_ref = "id"
        "#
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}"))
}

fn desired(id: &str, user_name: &str, family: &str, ents: &[&str], enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: id.into(),
        user: user_doc(id, user_name, "Ada", family),
        entitlements: ents.iter().map(|s| s.to_string()).collect(),
        managed: ["APP_READ", "APP_WRITE"].iter().map(|s| s.to_string()).collect(),
        enabled,
        password: None,
    }
}

/// A direct client, to read the tables without the adapter.
struct Direct {
    pool: AnyPool,
    db: Db,
}

impl Direct {
    async fn connect(url: &str, db: Db) -> Direct {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .unwrap_or_else(|e| panic!("direct connection: {e}"));
        Direct { pool, db }
    }

    /// Rows of text; `{T}` in `sql` is the dialect's text type, `?` placeholders become `$n` on PostgreSQL.
    async fn rows(&self, sql: &str, args: &[&str]) -> Vec<Vec<Option<String>>> {
        let t = if self.db == Db::Pg { "text" } else { "CHAR" };
        let mut text = sql.replace("{T}", t);
        if self.db == Db::Pg {
            let mut n = 0;
            text = text
                .split('?')
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part.to_string()
                    } else {
                        n += 1;
                        format!("${n}{part}")
                    }
                })
                .collect();
        }
        let mut q = sqlx::query(&text);
        for a in args {
            q = q.bind(a.to_string());
        }
        let rows = q.fetch_all(&self.pool).await.unwrap_or_else(|e| panic!("{text}: {e}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| {
                        r.try_get::<Option<String>, _>(i)
                            .unwrap_or_else(|e| panic!("{text}: {e}"))
                    })
                    .collect()
            })
            .collect()
    }

    async fn one(&self, sql: &str, args: &[&str]) -> Option<String> {
        self.rows(sql, args)
            .await
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }

    async fn count_login(&self, login: &str) -> usize {
        self.one("SELECT CAST(COUNT(*) AS {T}) FROM app_users WHERE login = ?", &[login])
            .await
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX)
    }

    async fn roles_of(&self, user_id: &str) -> BTreeSet<String> {
        self.rows(
            "SELECT CAST(r.role_name AS {T}) FROM app_user_roles ur JOIN app_roles r ON r.role_id = ur.role_id \
             WHERE ur.user_id = CAST(? AS INTEGER)",
            &[user_id],
        )
        .await
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
    }

    async fn column(&self, column: &str, user_id: &str) -> Option<String> {
        // `column` is a literal from this test, never input.
        let sql = format!("SELECT CAST({column} AS {{T}}) FROM app_users WHERE user_id = CAST(? AS INTEGER)");
        self.one(&sql, &[user_id]).await
    }
}

fn set_family(d: &mut DesiredAccount, family: &str) {
    if let Some(Value::Object(name)) = d.user.get_mut("name") {
        name.insert("familyName".into(), json!(family));
    }
}

async fn suite(db: Db) {
    let tmp = match db {
        Db::Pg => TempDb::postgres("scimgate_sql"),
        Db::Maria => TempDb::mariadb("scimgate_sql"),
    };
    tmp.exec(legacy_schema(db));
    let adapter = SqlAdapter::new(config(&tmp.url, "")).unwrap_or_else(|e| panic!("adapter: {e}"));
    let direct = Direct::connect(&tmp.url, db).await;

    // The shared floor.
    let fx = Fixture {
        prefix: scimgate_testkit::unique("kit"),
        entitlements: ["APP_READ".into(), "APP_WRITE".into()],
        family_name_attr: "last_name".into(),
        user_name_attr: "login".into(),
        password: false,
    };
    let report = compliance::run(&adapter, &fx)
        .await
        .unwrap_or_else(|f| panic!("compliance: {f}"));
    assert!(report.steps.len() >= 9, "{:?}", report.steps);
    assert_eq!(
        direct
            .one("SELECT CAST(COUNT(*) AS {T}) FROM app_users", &[])
            .await
            .as_deref(),
        Some("0"),
        "the kit removed what it made"
    );

    // Repeated applies, with and without the id: one row, the app's own id returned.
    let mut d = desired("u1", "direct.ada", "Lovelace", &["APP_READ"], true);
    let id = adapter.apply(None, &d).await.unwrap_or_else(|e| panic!("apply: {e}"));
    for known in [None, Some(&id), None] {
        let again = adapter
            .apply(known, &d)
            .await
            .unwrap_or_else(|e| panic!("apply again: {e}"));
        assert_eq!(again, id);
    }
    assert_eq!(direct.count_login("direct.ada").await, 1);
    assert_eq!(
        direct
            .one(
                "SELECT CAST(user_id AS {T}) FROM app_users WHERE login = ?",
                &["direct.ada"]
            )
            .await,
        Some(id.primary.clone()),
        "the AccountId is the app's primary key"
    );
    assert_eq!(direct.column("first_name", &id.primary).await.as_deref(), Some("Ada"));
    assert_eq!(
        direct.column("last_name", &id.primary).await.as_deref(),
        Some("Lovelace")
    );
    assert_eq!(
        direct.column("email", &id.primary).await.as_deref(),
        Some("u1@example.test")
    );
    assert_eq!(direct.column("dept", &id.primary).await.as_deref(), Some("R&D"));
    assert_eq!(direct.column("status", &id.primary).await.as_deref(), Some("A"));
    assert!(
        direct.column("created_at", &id.primary).await.is_some(),
        "the app's defaults still apply"
    );
    assert_eq!(
        direct.roles_of(&id.primary).await,
        BTreeSet::from(["APP_READ".to_string()])
    );

    // Memberships: a role granted outside the gateway is left alone; managed ones follow the entitlements.
    direct
        .rows(
            "INSERT INTO app_user_roles (user_id, role_id) SELECT CAST(? AS INTEGER), role_id FROM app_roles \
             WHERE role_name = 'APP_ADMIN'",
            &[&id.primary],
        )
        .await;
    d.entitlements = ["APP_WRITE".to_string()].into();
    adapter
        .apply(Some(&id), &d)
        .await
        .unwrap_or_else(|e| panic!("grant: {e}"));
    assert_eq!(
        direct.roles_of(&id.primary).await,
        BTreeSet::from(["APP_ADMIN".to_string(), "APP_WRITE".to_string()])
    );
    let acc = adapter
        .get(Some(&id), &d)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("get"));
    assert_eq!(
        acc.entitlements,
        BTreeSet::from(["APP_ADMIN".to_string(), "APP_WRITE".to_string()])
    );
    assert_eq!(acc.attr("dept"), Some("R&D"));

    // The status column flips, and reads back through the adapter.
    d.enabled = false;
    adapter
        .apply(Some(&id), &d)
        .await
        .unwrap_or_else(|e| panic!("disable: {e}"));
    assert_eq!(direct.column("status", &id.primary).await.as_deref(), Some("L"));
    let acc = adapter
        .get(Some(&id), &d)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("get"));
    assert_eq!(acc.enabled, Some(false));
    d.enabled = true;
    adapter
        .apply(Some(&id), &d)
        .await
        .unwrap_or_else(|e| panic!("enable: {e}"));
    assert_eq!(direct.column("status", &id.primary).await.as_deref(), Some("A"));

    // A rename at the source renames the row; the id stays.
    let mut renamed = d.clone();
    renamed.user.insert("userName".into(), json!("direct.ada.renamed"));
    let rid = adapter
        .apply(Some(&id), &renamed)
        .await
        .unwrap_or_else(|e| panic!("rename: {e}"));
    assert_eq!(rid.primary, id.primary);
    assert_eq!(rid.secondary.get("key").map(String::as_str), Some("direct.ada.renamed"));
    assert_eq!(direct.count_login("direct.ada").await, 0);
    assert_eq!(direct.count_login("direct.ada.renamed").await, 1);
    assert_eq!(direct.roles_of(&id.primary).await.len(), 2, "memberships follow the id");

    // An id the app may have handed to someone else (the row no longer holds the key recorded with it) is not
    // trusted: no rename of that row, no removal of it.
    let other = desired("u6", "direct.other", "Other", &[], true);
    let stale = AccountId::new(id.primary.clone()).with("key", "someone.else");
    let oid = adapter
        .apply(Some(&stale), &other)
        .await
        .unwrap_or_else(|e| panic!("apply with an untrusted id: {e}"));
    assert_ne!(oid.primary, id.primary);
    assert_eq!(direct.count_login("direct.ada.renamed").await, 1);
    adapter
        .remove(Some(&stale), &other)
        .await
        .unwrap_or_else(|e| panic!("remove with an untrusted id: {e}"));
    assert_eq!(direct.count_login("direct.other").await, 0);
    assert_eq!(direct.count_login("direct.ada.renamed").await, 1);
    assert!(
        adapter
            .get(Some(&stale), &other)
            .await
            .unwrap_or_else(|e| panic!("get: {e}"))
            .is_none()
    );

    // SQL in values is stored verbatim; the tables survive.
    let evil = "x'); DROP TABLE app_users;--";
    let mut e = desired("u2", evil, "Robert'); DROP TABLE app_roles;--", &["APP_READ"], true);
    e.user.insert(
        "emails".into(),
        json!([{"value": "\\'; DELETE FROM app_users; --", "type": "work"}]),
    );
    let eid = adapter
        .apply(None, &e)
        .await
        .unwrap_or_else(|e| panic!("evil apply: {e}"));
    adapter
        .apply(None, &e)
        .await
        .unwrap_or_else(|e| panic!("evil apply again: {e}"));
    assert_eq!(direct.count_login(evil).await, 1);
    assert_eq!(direct.column("login", &eid.primary).await.as_deref(), Some(evil));
    assert_eq!(
        direct.column("last_name", &eid.primary).await.as_deref(),
        Some("Robert'); DROP TABLE app_roles;--")
    );
    assert_eq!(
        direct.column("email", &eid.primary).await.as_deref(),
        Some("\\'; DELETE FROM app_users; --")
    );
    assert_eq!(
        direct
            .one("SELECT CAST(COUNT(*) AS {T}) FROM app_roles", &[])
            .await
            .as_deref(),
        Some("3")
    );
    assert_eq!(direct.count_login("direct.ada.renamed").await, 1, "app_users intact");
    let page = adapter
        .search(&SearchQuery {
            filter: Some(("login".into(), "' OR '1'='1".into())),
            cursor: None,
            limit: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    assert!(
        page.accounts.is_empty(),
        "a quote in a filter matches nothing: {page:?}"
    );
    let page = adapter
        .search(&SearchQuery {
            filter: Some(("login".into(), evil.into())),
            cursor: None,
            limit: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("search: {e}"));
    assert_eq!(page.accounts.len(), 1);
    assert_eq!(page.accounts[0].id, eid);
    assert_eq!(page.accounts[0].entitlements, BTreeSet::from(["APP_READ".to_string()]));

    // Search filters name mapped columns only.
    let err = adapter
        .search(&SearchQuery {
            filter: Some(("password_hash".into(), "x".into())),
            cursor: None,
            limit: 10,
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a filter on an unmapped column was accepted"));
    assert_eq!(err.kind, ErrorKind::Config);
    // A filter on the numeric id column with a non-number matches nothing (and is no error).
    let page = adapter
        .search(&SearchQuery {
            filter: Some(("user_id".into(), "1 OR 1=1".into())),
            cursor: None,
            limit: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("search by id: {e}"));
    assert!(page.accounts.is_empty());

    // Refusals: an unknown role, another user's unique email, an over-long value. None retried; nothing written.
    let mut bad = desired("u3", "direct.bad", "Bad", &["NO_SUCH_ROLE"], true);
    let err = adapter
        .apply(None, &bad)
        .await
        .err()
        .unwrap_or_else(|| panic!("unknown role accepted"));
    assert_eq!((err.kind, err.retriable), (ErrorKind::Rejected, false), "{err}");
    assert_eq!(direct.count_login("direct.bad").await, 0, "the transaction rolled back");
    bad.entitlements.clear();
    bad.user
        .insert("emails".into(), json!([{"value": "u1@example.test", "type": "work"}]));
    let err = adapter
        .apply(None, &bad)
        .await
        .err()
        .unwrap_or_else(|| panic!("duplicate email accepted"));
    assert_eq!((err.kind, err.retriable), (ErrorKind::Conflict, false), "{err}");
    assert_eq!(
        direct.column("login", &id.primary).await.as_deref(),
        Some("direct.ada.renamed"),
        "the other user's row is untouched"
    );
    bad.user
        .insert("emails".into(), json!([{"value": "x@example.test", "type": "work"}]));
    set_family(&mut bad, &"x".repeat(500));
    let err = adapter
        .apply(None, &bad)
        .await
        .err()
        .unwrap_or_else(|| panic!("an over-long value was accepted"));
    assert_eq!((err.kind, err.retriable), (ErrorKind::Rejected, false), "{err}");

    // Concurrent first applies of one user (retries racing each other): one row.
    let c = desired("u4", "direct.race", "Race", &["APP_READ"], true);
    let tasks = (0..6).map(|_| {
        let (a, c) = (&adapter, &c);
        async move {
            for _ in 0..10 {
                match a.apply(None, c).await {
                    Ok(id) => return id,
                    Err(e) if e.retriable => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    Err(e) => panic!("racing apply: {e}"),
                }
            }
            panic!("racing apply never succeeded")
        }
    });
    let ids: BTreeSet<AccountId> = futures::future::join_all(tasks).await.into_iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(direct.count_login("direct.race").await, 1);

    // Remove: managed memberships and the row go (the unmanaged one by the schema's cascade); twice is fine.
    adapter
        .remove(Some(&id), &renamed)
        .await
        .unwrap_or_else(|e| panic!("remove: {e}"));
    assert_eq!(direct.count_login("direct.ada.renamed").await, 0);
    assert!(direct.roles_of(&id.primary).await.is_empty());
    adapter
        .remove(Some(&id), &renamed)
        .await
        .unwrap_or_else(|e| panic!("remove twice: {e}"));
    adapter
        .remove(None, &e)
        .await
        .unwrap_or_else(|e| panic!("remove by key: {e}"));
    assert_eq!(direct.count_login(evil).await, 0);

    // Roles created on demand when configured.
    let creating =
        SqlAdapter::new(config(&tmp.url, "create_missing = true")).unwrap_or_else(|e| panic!("adapter: {e}"));
    let n = desired("u5", "direct.new", "New", &["APP_NEW'; --"], true);
    let nid = creating
        .apply(None, &n)
        .await
        .unwrap_or_else(|e| panic!("apply with a new role: {e}"));
    creating
        .apply(None, &n)
        .await
        .unwrap_or_else(|e| panic!("apply with a new role again: {e}"));
    assert_eq!(
        direct.roles_of(&nid.primary).await,
        BTreeSet::from(["APP_NEW'; --".to_string()])
    );
    assert_eq!(
        direct
            .one(
                "SELECT CAST(COUNT(*) AS {T}) FROM app_roles WHERE role_name = ?",
                &["APP_NEW'; --"]
            )
            .await
            .as_deref(),
        Some("1")
    );

    // Mapping errors surface as Config, from the health check.
    let mut nu = config(&tmp.url, "");
    nu.users.table = "no_unique".into();
    nu.users.id_column = None;
    nu.users.columns.retain(|k, _| k == "last_name");
    nu.users.disable = None;
    nu.groups = None;
    nu.memberships = None;
    let err = SqlAdapter::new(nu)
        .unwrap_or_else(|e| panic!("adapter: {e}"))
        .health()
        .await
        .err()
        .unwrap_or_else(|| panic!("a key column without a unique index was accepted"));
    assert_eq!(err.kind, ErrorKind::Config, "{err}");
    let mut missing = config(&tmp.url, "");
    missing.users.columns.insert("no_such_column".into(), "title".into());
    let err = SqlAdapter::new(missing)
        .unwrap_or_else(|e| panic!("adapter: {e}"))
        .health()
        .await
        .err()
        .unwrap_or_else(|| panic!("a missing column was accepted"));
    assert_eq!(err.kind, ErrorKind::Config, "{err}");

    // Wrong credentials: Unauthorized, not retried.
    let bad_url = match db {
        // Trust auth takes any password, but not a role that does not exist.
        Db::Pg => tmp.url.replacen("postgres@", "no_such_role_x@", 1),
        Db::Maria => tmp.url.replacen("root@", "root:wrong-password@", 1),
    };
    assert_ne!(bad_url, tmp.url);
    let err = SqlAdapter::new(config(&bad_url, ""))
        .unwrap_or_else(|e| panic!("adapter: {e}"))
        .health()
        .await
        .err()
        .unwrap_or_else(|| panic!("bad credentials were accepted"));
    assert_eq!((err.kind, err.retriable), (ErrorKind::Unauthorized, false), "{err}");
    assert!(!format!("{err}").contains("wrong-password"));
}

async fn dead_endpoint(db: Db) {
    let port = scimgate_testkit::free_port();
    let url = match db {
        Db::Pg => format!("postgres://postgres@127.0.0.1:{port}/nothing"),
        Db::Maria => format!("mysql://root@127.0.0.1:{port}/nothing"),
    };
    let mut c = config(&url, "");
    c.connect_timeout_secs = 1;
    let adapter = SqlAdapter::new(c).unwrap_or_else(|e| panic!("adapter: {e}"));
    let start = std::time::Instant::now();
    compliance::unreachable(&adapter)
        .await
        .unwrap_or_else(|f| panic!("unreachable: {f}"));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_legacy_schema() {
    suite(Db::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_legacy_schema() {
    suite(Db::Maria).await;
}

#[tokio::test]
async fn postgres_unreachable() {
    dead_endpoint(Db::Pg).await;
}

#[tokio::test]
async fn mariadb_unreachable() {
    dead_endpoint(Db::Maria).await;
}
