//! Throwaway PostgreSQL and MariaDB databases on the machine's servers (127.0.0.1:5432 trust auth,
//! 127.0.0.1:3306 root without a password; `SCIMGATE_TEST_PG` / `SCIMGATE_TEST_MYSQL` override the server URL).
//! Each is created with the client CLI and dropped when the guard drops.

use std::process::Command;

/// A database that exists until this is dropped.
pub struct TempDb {
    /// A URL for sqlx.
    pub url: String,
    pub name: String,
    drop_cmd: Option<(String, Vec<String>)>,
}

fn run(program: &str, args: &[String], what: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{what}: {program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_server() -> String {
    std::env::var("SCIMGATE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn mysql_server() -> (String, String) {
    let url = std::env::var("SCIMGATE_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let port = url
        .rsplit(':')
        .next()
        .unwrap_or("3306")
        .trim_end_matches('/')
        .to_string();
    (url, port)
}

impl TempDb {
    /// A fresh PostgreSQL database. Panics (loudly) when the server is not there.
    pub fn postgres(prefix: &str) -> TempDb {
        let name = crate::unique(prefix);
        let server = pg_server();
        let admin = format!("{server}/postgres");
        run(
            "psql",
            &[admin.clone(), "-qc".into(), format!("CREATE DATABASE {name}")],
            "PostgreSQL",
        );
        TempDb {
            url: format!("{server}/{name}"),
            name: name.clone(),
            drop_cmd: Some((
                "psql".into(),
                vec![
                    admin,
                    "-qc".into(),
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ],
            )),
        }
    }

    /// A fresh MariaDB database. Panics (loudly) when the server is not there.
    pub fn mariadb(prefix: &str) -> TempDb {
        let name = crate::unique(prefix);
        let (server, port) = mysql_server();
        let args = |sql: String| {
            vec![
                "-h".to_string(),
                "127.0.0.1".into(),
                "-P".into(),
                port.clone(),
                "-u".into(),
                "root".into(),
                "-e".into(),
                sql,
            ]
        };
        run("mariadb", &args(format!("CREATE DATABASE {name}")), "MariaDB");
        TempDb {
            url: format!("{server}/{name}"),
            name: name.clone(),
            drop_cmd: Some(("mariadb".into(), args(format!("DROP DATABASE IF EXISTS {name}")))),
        }
    }

    /// Run a query through the database's CLI and return its rows, each a list of column values as text (NULL as
    /// `NULL`).
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let out = if self.url.starts_with("postgres") {
            Command::new("psql")
                .args([
                    self.url.as_str(),
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-AtF",
                    "\t",
                    "-P",
                    "null=NULL",
                    "-c",
                    sql,
                ])
                .output()
        } else {
            let (_, port) = mysql_server();
            Command::new("mariadb")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-P",
                    &port,
                    "-u",
                    "root",
                    "-N",
                    "-B",
                    &self.name,
                    "-e",
                    sql,
                ])
                .output()
        }
        .unwrap_or_else(|e| panic!("cannot run the database CLI: {e}"));
        assert!(
            out.status.success(),
            "query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Run SQL through the database's CLI (schema setup in tests).
    pub fn exec(&self, sql: &str) {
        if self.url.starts_with("postgres") {
            run(
                "psql",
                &[
                    self.url.clone(),
                    "-v".into(),
                    "ON_ERROR_STOP=1".into(),
                    "-qc".into(),
                    sql.into(),
                ],
                "psql",
            );
        } else {
            let (_, port) = mysql_server();
            run(
                "mariadb",
                &[
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-P".into(),
                    port,
                    "-u".into(),
                    "root".into(),
                    self.name.clone(),
                    "-e".into(),
                    sql.into(),
                ],
                "mariadb",
            );
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some((p, args)) = self.drop_cmd.take() {
            let _ = Command::new(p).args(args).output();
        }
    }
}
