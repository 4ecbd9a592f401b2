//! SQL text without values in it: validated, quoted identifiers, and a builder whose every value is a bound
//! parameter rendered in the dialect's placeholder syntax (`$n` on PostgreSQL, `?` on MySQL/MariaDB).

use scimgate_adapter_sdk::AdapterError;
use sqlx::AnyConnection;
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

/// The database behind the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Dialect, AdapterError> {
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            _ => Err(AdapterError::config(
                "sql: the url must start with postgres://, mysql:// or mariadb://",
            )),
        }
    }

    /// The type a value is read back as, so every column reads as text whatever its type.
    fn text_type(self) -> &'static str {
        match self {
            Dialect::Postgres => "text",
            Dialect::MySql => "CHAR",
        }
    }

    fn quote(self, name: &str) -> String {
        // Names are validated ([`valid_name`]) so they hold no quote character; doubling is belt and braces.
        match self {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        }
    }
}

/// Longest identifier accepted (PostgreSQL's limit is 63 bytes, MySQL's 64).
const MAX_NAME: usize = 63;

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A table (`name` or `schema.name`) or column name from the configuration, checked against [`valid_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    schema: Option<String>,
    name: String,
}

impl Ident {
    pub fn table(s: &str, what: &str) -> Result<Ident, AdapterError> {
        let (schema, name) = match s.split_once('.') {
            Some((sc, n)) => (Some(sc), n),
            None => (None, s),
        };
        if !valid_name(name) || schema.is_some_and(|sc| !valid_name(sc)) {
            return Err(bad_ident(s, what, "a table is `name` or `schema.name`"));
        }
        Ok(Ident {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        })
    }

    pub fn column(s: &str, what: &str) -> Result<Ident, AdapterError> {
        if !valid_name(s) {
            return Err(bad_ident(s, what, "a column is a bare name"));
        }
        Ok(Ident {
            schema: None,
            name: s.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The quoted name as the dialect writes it.
    pub fn render(&self, d: Dialect) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", d.quote(s), d.quote(&self.name)),
            None => d.quote(&self.name),
        }
    }

    /// Whether this names the same column as `other` (MySQL column names ignore case).
    pub fn same(&self, other: &Ident, d: Dialect) -> bool {
        match d {
            Dialect::Postgres => self == other,
            Dialect::MySql => {
                self.name.eq_ignore_ascii_case(&other.name)
                    && self.schema.as_deref().map(str::to_ascii_lowercase)
                        == other.schema.as_deref().map(str::to_ascii_lowercase)
            }
        }
    }
}

fn bad_ident(s: &str, what: &str, rule: &str) -> AdapterError {
    AdapterError::config(format!(
        "sql: {what} {s:?} is not a plain SQL name ({rule}; letters, digits and _, not starting with a digit, at \
         most {MAX_NAME} characters)"
    ))
}

/// A column with what the database told us of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Col {
    pub ident: Ident,
    /// PostgreSQL: the column's type without modifiers, to cast a text parameter to (`integer`, `character`).
    /// PostgreSQL will not assign text to an integer column, nor compare the two, without the cast.
    pub cast: Option<String>,
    /// The column holds numbers: a non-numeric id or filter value cannot match it.
    pub numeric: bool,
}

impl Col {
    pub fn new(ident: Ident) -> Col {
        Col {
            ident,
            cast: None,
            numeric: false,
        }
    }

    /// Whether `value` could be stored in this column as a number, when it holds numbers.
    pub fn admits(&self, value: &str) -> bool {
        !self.numeric || value.trim().parse::<f64>().is_ok_and(f64::is_finite)
    }
}

/// A type name from PostgreSQL's catalog is safe to put after `AS` when it is made of these.
pub fn valid_type_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 200
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '"' | '.' | '[' | ']'))
        && t.matches('"').count().is_multiple_of(2)
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(Option<String>),
    Int(i64),
}

/// SQL text plus its bound values, in order.
#[derive(Debug, Clone)]
pub struct Sql {
    dialect: Dialect,
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Sql {
        Sql {
            dialect,
            text: String::new(),
            args: Vec::new(),
        }
    }

    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    #[cfg(test)]
    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    /// Literal SQL (keywords, punctuation): never a value.
    pub fn push(&mut self, s: &str) -> &mut Sql {
        self.text.push_str(s);
        self
    }

    pub fn ident(&mut self, i: &Ident) -> &mut Sql {
        let r = i.render(self.dialect);
        self.text.push_str(&r);
        self
    }

    /// `alias.column`.
    pub fn qualified(&mut self, alias: &str, c: &Col) -> &mut Sql {
        self.text.push_str(alias);
        self.text.push('.');
        self.ident(&c.ident)
    }

    /// The column read as text.
    pub fn read(&mut self, alias: Option<&str>, c: &Col) -> &mut Sql {
        self.text.push_str("CAST(");
        match alias {
            Some(a) => self.qualified(a, c),
            None => self.ident(&c.ident),
        };
        let t = self.dialect.text_type();
        self.text.push_str(" AS ");
        self.text.push_str(t);
        self.text.push(')');
        self
    }

    fn placeholder(&mut self) {
        match self.dialect {
            Dialect::Postgres => {
                let n = self.args.len();
                self.text.push('$');
                self.text.push_str(&n.to_string());
            }
            Dialect::MySql => self.text.push('?'),
        }
    }

    /// A text value bound for `col`: cast to the column's type on PostgreSQL.
    pub fn value(&mut self, v: Option<&str>, col: Option<&Col>) -> &mut Sql {
        self.args.push(Arg::Text(v.map(str::to_string)));
        let cast = match (self.dialect, col.and_then(|c| c.cast.as_deref())) {
            (Dialect::Postgres, Some(t)) => Some(t.to_string()),
            _ => None,
        };
        match cast {
            Some(t) => {
                self.text.push_str("CAST(");
                self.placeholder();
                self.text.push_str(" AS ");
                self.text.push_str(&t);
                self.text.push(')');
            }
            None => self.placeholder(),
        }
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Sql {
        self.args.push(Arg::Int(v));
        self.placeholder();
        self
    }

    /// `column = value` for `col`.
    pub fn eq(&mut self, alias: Option<&str>, col: &Col, v: &str) -> &mut Sql {
        match alias {
            Some(a) => self.qualified(a, col),
            None => self.ident(&col.ident),
        };
        self.text.push_str(" = ");
        self.value(Some(v), Some(col))
    }

    fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.text);
        for a in &self.args {
            q = match a {
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Int(i) => q.bind(*i),
            };
        }
        q
    }

    pub async fn execute(&self, conn: &mut AnyConnection) -> Result<AnyQueryResult, sqlx::Error> {
        tracing::trace!(sql = %self.text, params = self.args.len(), "sql execute");
        self.query().execute(conn).await
    }

    pub async fn fetch_all(&self, conn: &mut AnyConnection) -> Result<Vec<AnyRow>, sqlx::Error> {
        tracing::trace!(sql = %self.text, params = self.args.len(), "sql fetch");
        self.query().fetch_all(conn).await
    }

    /// Every row's columns, read as optional text.
    pub async fn texts(&self, conn: &mut AnyConnection) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
        let rows = self.fetch_all(conn).await?;
        rows.iter()
            .map(|r| (0..r.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn col(name: &str, cast: Option<&str>) -> Col {
        Col {
            ident: Ident::column(name, "test").expect("valid"),
            cast: cast.map(str::to_string),
            numeric: false,
        }
    }

    #[test]
    fn identifiers() {
        assert!(Ident::table("app_users", "t").is_ok());
        assert!(Ident::table("legacy.app_users", "t").is_ok());
        assert!(Ident::table("a.b.c", "t").is_err());
        assert!(Ident::column("legacy.login", "c").is_err());
        for bad in [
            "",
            "1abc",
            "a b",
            "a;b",
            "a\"b",
            "a`b",
            "a-b",
            "users--",
            "é",
            &"x".repeat(64),
        ] {
            assert!(Ident::column(bad, "c").is_err(), "{bad:?}");
            assert!(Ident::table(bad, "t").is_err(), "{bad:?}");
        }
        let t = Ident::table("legacy.App_Users", "t").expect("valid");
        assert_eq!(t.render(Dialect::Postgres), "\"legacy\".\"App_Users\"");
        assert_eq!(t.render(Dialect::MySql), "`legacy`.`App_Users`");
    }

    #[test]
    fn dialect_from_url() {
        assert_eq!(Dialect::from_url("postgres://h/db").ok(), Some(Dialect::Postgres));
        assert_eq!(Dialect::from_url("postgresql://h/db").ok(), Some(Dialect::Postgres));
        assert_eq!(Dialect::from_url("mysql://h/db").ok(), Some(Dialect::MySql));
        assert_eq!(Dialect::from_url("mariadb://h/db").ok(), Some(Dialect::MySql));
        assert!(Dialect::from_url("sqlite://x").is_err());
        assert!(Dialect::from_url("nothing").is_err());
    }

    #[test]
    fn placeholders_per_dialect() {
        let login = col("login", Some("character varying"));
        let id = col("user_id", Some("integer"));
        let mut pg = Sql::new(Dialect::Postgres);
        pg.push("SELECT 1 FROM t WHERE ")
            .eq(None, &login, "ada")
            .push(" AND ")
            .eq(Some("u"), &id, "7");
        pg.push(" LIMIT ").int(3);
        assert_eq!(
            pg.text(),
            "SELECT 1 FROM t WHERE \"login\" = CAST($1 AS character varying) AND u.\"user_id\" = CAST($2 AS integer) \
             LIMIT $3"
        );
        let mut my = Sql::new(Dialect::MySql);
        my.push("SELECT 1 FROM t WHERE ")
            .eq(None, &login, "ada")
            .push(" AND ")
            .eq(Some("u"), &id, "7");
        assert_eq!(my.text(), "SELECT 1 FROM t WHERE `login` = ? AND u.`user_id` = ?");
        assert_eq!(my.args().len(), 2);
        let mut r = Sql::new(Dialect::MySql);
        r.read(Some("g"), &login);
        assert_eq!(r.text(), "CAST(g.`login` AS CHAR)");
    }

    #[test]
    fn catalog_type_names() {
        for ok in [
            "integer",
            "character varying",
            "double precision",
            "timestamp with time zone",
            "public.\"Mood\"",
        ] {
            assert!(valid_type_name(ok), "{ok}");
        }
        for bad in ["", "integer); DROP TABLE x; --", "text'", "a\"b"] {
            assert!(!valid_type_name(bad), "{bad}");
        }
    }

    #[test]
    fn numeric_columns_admit_numbers_only() {
        let mut c = col("user_id", Some("integer"));
        c.numeric = true;
        assert!(c.admits("12"));
        assert!(!c.admits("ada"));
        assert!(!c.admits("NaN"));
        assert!(col("login", None).admits("ada"));
    }

    proptest! {
        #[test]
        fn values_never_reach_the_sql_text(v in "\\PC*", pg in any::<bool>()) {
            let d = if pg { Dialect::Postgres } else { Dialect::MySql };
            let login = col("login", Some("text"));
            let mut q = Sql::new(d);
            q.push("SELECT 1 FROM t WHERE ").eq(None, &login, &v);
            let expected = if pg { "SELECT 1 FROM t WHERE \"login\" = CAST($1 AS text)" }
                else { "SELECT 1 FROM t WHERE `login` = ?" };
            prop_assert_eq!(q.text(), expected);
            prop_assert_eq!(q.args(), &[Arg::Text(Some(v.clone()))]);
        }

        #[test]
        fn accepted_names_need_no_escaping(s in "\\PC{0,80}") {
            if let Ok(i) = Ident::table(&s, "t") {
                for d in [Dialect::Postgres, Dialect::MySql] {
                    let r = i.render(d);
                    let inner: String = r.chars().filter(|c| *c != '"' && *c != '`' && *c != '.').collect();
                    prop_assert!(inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    prop_assert_eq!(inner.len() + r.matches(['"', '`']).count() + r.matches('.').count(), r.len());
                }
            }
        }

        #[test]
        fn names_from_the_pattern_are_accepted(s in "[A-Za-z_][A-Za-z0-9_]{0,62}") {
            prop_assert!(Ident::column(&s, "c").is_ok());
            let q = format!("{s}.{s}");
            prop_assert!(Ident::table(&q, "t").is_ok());
        }
    }
}
