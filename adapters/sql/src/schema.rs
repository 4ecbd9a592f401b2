//! The checked mapping ([`Spec`]) and what the database says about it: every configured table and column must
//! exist, the key column must carry a single-column unique index, and on PostgreSQL each column's type is learnt so
//! text parameters can be cast to it.

use std::collections::{BTreeMap, HashMap, HashSet};

use scimgate_adapter_sdk::AdapterError;
use scimgate_adapter_sdk::mapping::Path;
use sqlx::AnyConnection;

use crate::config::{Config, GroupRef, UserRef};
use crate::error;
use crate::sql::{Col, Dialect, Ident, Sql, valid_type_name};

#[derive(Debug, Clone)]
pub struct Spec {
    pub dialect: Dialect,
    pub users: UsersSpec,
    pub groups: Option<GroupsSpec>,
    pub memberships: Option<MembershipsSpec>,
}

#[derive(Debug, Clone)]
pub struct UsersSpec {
    pub table: Ident,
    pub key: Col,
    pub key_path: Path,
    pub key_source: String,
    pub id: Option<Col>,
    pub columns: Vec<(Col, Path)>,
    pub disable: Option<DisableSpec>,
}

#[derive(Debug, Clone)]
pub struct DisableSpec {
    pub col: Col,
    pub enabled: String,
    pub disabled: String,
}

#[derive(Debug, Clone)]
pub struct GroupsSpec {
    pub table: Ident,
    pub key: Col,
    pub name: Col,
    pub create_missing: bool,
}

#[derive(Debug, Clone)]
pub struct MembershipsSpec {
    pub table: Ident,
    pub user: Col,
    pub group: Col,
    pub user_ref: UserRef,
    pub group_ref: GroupRef,
}

fn column(s: &str, what: &str) -> Result<Col, AdapterError> {
    Ok(Col::new(Ident::column(s, what)?))
}

fn path(p: &str, what: &str) -> Result<Path, AdapterError> {
    Path::parse(p).map_err(|e| AdapterError::config(format!("sql: {what}: {e}")))
}

impl Spec {
    /// Check the configuration without touching the database.
    pub fn from_config(c: &Config, dialect: Dialect) -> Result<Spec, AdapterError> {
        let u = &c.users;
        let mut columns = Vec::new();
        for (name, p) in &u.columns {
            columns.push((
                column(name, "users.columns")?,
                path(p, &format!("users.columns.{name}"))?,
            ));
        }
        let users = UsersSpec {
            table: Ident::table(&u.table, "users.table")?,
            key: column(&u.key_column, "users.key_column")?,
            key_path: path(&u.key, "users.key")?,
            key_source: u.key.clone(),
            id: u
                .id_column
                .as_deref()
                .map(|s| column(s, "users.id_column"))
                .transpose()?,
            columns,
            disable: u
                .disable
                .as_ref()
                .map(|d| {
                    Ok::<_, AdapterError>(DisableSpec {
                        col: column(&d.column, "users.disable.column")?,
                        enabled: d.enabled_value.clone(),
                        disabled: d.disabled_value.clone(),
                    })
                })
                .transpose()?,
        };
        if users.disable.as_ref().is_some_and(|d| d.enabled == d.disabled) {
            return Err(AdapterError::config(
                "sql: users.disable: enabled_value and disabled_value are the same",
            ));
        }
        // Each column is written from one place only.
        let mut seen: Vec<&Ident> = Vec::new();
        let written = std::iter::once(&users.key.ident)
            .chain(users.id.iter().map(|c| &c.ident))
            .chain(users.columns.iter().map(|(c, _)| &c.ident))
            .chain(users.disable.iter().map(|d| &d.col.ident));
        for i in written {
            if seen.iter().any(|s| s.same(i, dialect)) {
                return Err(AdapterError::config(format!(
                    "sql: users column {} is mapped twice (key_column, id_column, columns and disable.column must \
                     differ)",
                    i.name()
                )));
            }
            seen.push(i);
        }
        let groups = c
            .groups
            .as_ref()
            .map(|g| {
                Ok::<_, AdapterError>(GroupsSpec {
                    table: Ident::table(&g.table, "groups.table")?,
                    key: column(&g.key_column, "groups.key_column")?,
                    name: column(&g.name_column, "groups.name_column")?,
                    create_missing: g.create_missing,
                })
            })
            .transpose()?;
        let memberships = c
            .memberships
            .as_ref()
            .map(|m| {
                Ok::<_, AdapterError>(MembershipsSpec {
                    table: Ident::table(&m.table, "memberships.table")?,
                    user: column(&m.user_column, "memberships.user_column")?,
                    group: column(&m.group_column, "memberships.group_column")?,
                    user_ref: m.user_ref,
                    group_ref: m.group_ref,
                })
            })
            .transpose()?;
        if let Some(m) = &memberships {
            if m.user_ref == UserRef::Id && users.id.is_none() {
                return Err(AdapterError::config(
                    "sql: memberships.user_ref = \"id\" needs users.id_column (or set user_ref = \"key\")",
                ));
            }
            if m.group_ref == GroupRef::Id && groups.is_none() {
                return Err(AdapterError::config(
                    "sql: memberships.group_ref = \"id\" needs a [groups] table (or set group_ref = \"name\")",
                ));
            }
        } else if groups.is_some() {
            return Err(AdapterError::config(
                "sql: [groups] without [memberships] manages nothing",
            ));
        }
        Ok(Spec {
            dialect,
            users,
            groups,
            memberships,
        })
    }

    /// This spec with every column's type filled in from the database, after checking that the tables and
    /// columns exist and that the user key column is unique.
    pub async fn resolve(&self, conn: &mut AnyConnection) -> Result<Spec, AdapterError> {
        let d = self.dialect;
        let mut out = self.clone();

        let users = Table::load(conn, d, &self.users.table).await?;
        users.fill(&mut out.users.key, &self.users.table)?;
        if let Some(c) = out.users.id.as_mut() {
            users.fill(c, &self.users.table)?;
        }
        for (c, _) in out.users.columns.iter_mut() {
            users.fill(c, &self.users.table)?;
        }
        if let Some(dis) = out.users.disable.as_mut() {
            users.fill(&mut dis.col, &self.users.table)?;
        }
        if !users.is_unique(&self.users.key.ident) {
            return Err(AdapterError::config(format!(
                "sql: users.key_column {} of {} has no single-column unique index or primary key; the adapter \
                 needs one so that a retried apply can never insert a second row",
                self.users.key.ident.name(),
                self.users.table.name()
            )));
        }
        if let Some(g) = out.groups.as_mut() {
            let t = Table::load(conn, d, &g.table).await?;
            t.fill(&mut g.key, &g.table)?;
            t.fill(&mut g.name, &g.table)?;
            if !t.is_unique(&g.name.ident) {
                tracing::warn!(
                    table = g.table.name(),
                    column = g.name.ident.name(),
                    "sql: role names are not unique"
                );
            }
        }
        if let Some(m) = out.memberships.as_mut() {
            let t = Table::load(conn, d, &m.table).await?;
            t.fill(&mut m.user, &m.table)?;
            t.fill(&mut m.group, &m.table)?;
        }
        Ok(out)
    }

    /// The users column an attribute name from a search filter means, if any.
    pub fn user_column(&self, name: &str) -> Option<&Col> {
        let u = &self.users;
        std::iter::once(&u.key)
            .chain(u.id.iter())
            .chain(u.columns.iter().map(|(c, _)| c))
            .chain(u.disable.iter().map(|d| &d.col))
            .find(|c| c.ident.name().eq_ignore_ascii_case(name))
    }
}

/// One table as the catalog describes it.
struct Table {
    dialect: Dialect,
    /// Column name (lowercased on MySQL) → (type for casts, numeric).
    columns: HashMap<String, (String, bool)>,
    /// Columns that are unique on their own.
    unique: HashSet<String>,
}

const PG_NUMERIC: &[&str] = &["smallint", "integer", "bigint", "numeric", "real", "double precision"];
const MY_NUMERIC: &[&str] = &[
    "tinyint",
    "smallint",
    "mediumint",
    "int",
    "integer",
    "bigint",
    "decimal",
    "float",
    "double",
];

impl Table {
    async fn load(conn: &mut AnyConnection, d: Dialect, table: &Ident) -> Result<Table, AdapterError> {
        let map = |e| error::map("schema", e);
        let mut cols = Sql::new(d);
        let mut uniq = Sql::new(d);
        match d {
            Dialect::Postgres => {
                let reg = table.render(d);
                cols.push(
                    "SELECT CAST(a.attname AS text), format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
                     WHERE a.attrelid = to_regclass(",
                )
                .value(Some(&reg), None)
                .push(") AND a.attnum > 0 AND NOT a.attisdropped");
                uniq.push(
                    "SELECT CAST(a.attname AS text), CAST(i.indexrelid AS text) FROM pg_catalog.pg_index i \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                     WHERE i.indrelid = to_regclass(",
                )
                .value(Some(&reg), None)
                .push(") AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL");
            }
            Dialect::MySql => {
                cols.push(
                    "SELECT CAST(column_name AS CHAR), CAST(data_type AS CHAR) FROM information_schema.columns \
                     WHERE table_schema = COALESCE(",
                )
                .value(table.schema(), None)
                .push(", DATABASE()) AND table_name = ")
                .value(Some(table.name()), None);
                uniq.push(
                    "SELECT CAST(column_name AS CHAR), CAST(index_name AS CHAR) FROM information_schema.statistics \
                     WHERE non_unique = 0 AND table_schema = COALESCE(",
                )
                .value(table.schema(), None)
                .push(", DATABASE()) AND table_name = ")
                .value(Some(table.name()), None);
            }
        }
        let norm = |s: String| match d {
            Dialect::Postgres => s,
            Dialect::MySql => s.to_ascii_lowercase(),
        };
        let mut columns = HashMap::new();
        for r in cols.texts(conn).await.map_err(map)? {
            if let [Some(name), Some(ty)] = r.as_slice() {
                let numeric = match d {
                    Dialect::Postgres => PG_NUMERIC.contains(&ty.as_str()),
                    Dialect::MySql => MY_NUMERIC.contains(&ty.to_ascii_lowercase().as_str()),
                };
                columns.insert(norm(name.clone()), (ty.clone(), numeric));
            }
        }
        if columns.is_empty() {
            return Err(AdapterError::config(format!(
                "sql: table {} does not exist (or this database user cannot see it)",
                table.render(d)
            )));
        }
        // index → its columns; the single-column ones count.
        let mut indexes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in uniq.texts(conn).await.map_err(map)? {
            if let [Some(col), Some(index)] = r.as_slice() {
                indexes.entry(index.clone()).or_default().push(norm(col.clone()));
            }
        }
        let unique = indexes.into_values().filter(|cols| cols.len() == 1).flatten().collect();
        Ok(Table {
            dialect: d,
            columns,
            unique,
        })
    }

    fn key(&self, i: &Ident) -> String {
        match self.dialect {
            Dialect::Postgres => i.name().to_string(),
            Dialect::MySql => i.name().to_ascii_lowercase(),
        }
    }

    fn fill(&self, c: &mut Col, table: &Ident) -> Result<(), AdapterError> {
        let Some((ty, numeric)) = self.columns.get(&self.key(&c.ident)) else {
            return Err(AdapterError::config(format!(
                "sql: table {} has no column {}",
                table.render(self.dialect),
                c.ident.render(self.dialect)
            )));
        };
        if self.dialect == Dialect::Postgres {
            if !valid_type_name(ty) {
                return Err(AdapterError::config(format!(
                    "sql: column {} has a type this adapter cannot cast to: {ty}",
                    c.ident.name()
                )));
            }
            c.cast = Some(ty.clone());
        }
        c.numeric = *numeric;
        Ok(())
    }

    fn is_unique(&self, c: &Ident) -> bool {
        self.unique.contains(&self.key(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
            url = "postgres://h/db"
            [users]
            table = "app_users"
            key_column = "login"
            id_column = "user_id"
            columns = {{ last_name = "name.familyName" }}
            disable = {{ column = "status", enabled_value = "A", disabled_value = "L" }}
            {extra}
            "#
        );
        toml::from_str(&text).expect("config parses")
    }

    #[test]
    fn a_good_mapping_passes() {
        let c = config(
            "[groups]\ntable = \"r\"\nkey_column = \"id\"\nname_column = \"n\"\n[memberships]\ntable = \"m\"\n\
             user_column = \"u\"\ngroup_column = \"g\"",
        );
        let s = Spec::from_config(&c, Dialect::Postgres).expect("valid");
        assert!(s.user_column("LOGIN").is_some());
        assert!(s.user_column("status").is_some());
        assert!(s.user_column("password").is_none());
    }

    #[test]
    fn injection_in_names_is_refused() {
        let mut c = config("");
        c.users.table = "app_users; DROP TABLE x".into();
        assert!(Spec::from_config(&c, Dialect::Postgres).is_err());
        let mut c = config("");
        c.users.columns.insert("email\" = 1 --".into(), "emails.value".into());
        assert!(Spec::from_config(&c, Dialect::MySql).is_err());
    }

    #[test]
    fn inconsistent_mappings_are_refused() {
        let mut c = config("");
        c.users.columns.insert("LOGIN".into(), "emails.value".into());
        assert!(
            Spec::from_config(&c, Dialect::MySql).is_err(),
            "key column mapped twice"
        );
        let mut c = config("");
        c.users.key = "emails[bad".into();
        assert!(Spec::from_config(&c, Dialect::MySql).is_err(), "bad path");
        let c = config("[memberships]\ntable = \"m\"\nuser_column = \"u\"\ngroup_column = \"g\"");
        assert!(
            Spec::from_config(&c, Dialect::MySql).is_err(),
            "group_ref id without groups"
        );
        let mut c =
            config("[memberships]\ntable = \"m\"\nuser_column = \"u\"\ngroup_column = \"g\"\ngroup_ref = \"name\"");
        assert!(Spec::from_config(&c, Dialect::MySql).is_ok());
        c.users.id_column = None;
        assert!(
            Spec::from_config(&c, Dialect::MySql).is_err(),
            "user_ref id without id_column"
        );
        let mut c = config("");
        if let Some(d) = c.users.disable.as_mut() {
            d.disabled_value = "A".into();
        }
        assert!(
            Spec::from_config(&c, Dialect::MySql).is_err(),
            "same enabled and disabled value"
        );
    }
}
