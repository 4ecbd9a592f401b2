//! sqlx errors → [`AdapterError`]: what the outbox retries and what it dead-letters.
//!
//! PostgreSQL errors are read by SQLSTATE, MySQL/MariaDB errors by their server error number (their SQLSTATEs are
//! too coarse: `HY000` covers a lock wait timeout and much else).

use scimgate_adapter_sdk::{AdapterError, ErrorKind};
use sqlx::error::{DatabaseError, ErrorKind as DbKind};
use sqlx::mysql::MySqlDatabaseError;

/// Map an error from operation `op` (`apply`, `search`, …).
pub fn map(op: &str, e: sqlx::Error) -> AdapterError {
    let (kind, detail) = match &e {
        sqlx::Error::Database(db) => (db_kind(db.as_ref()), db.message().to_string()),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => (ErrorKind::Unavailable, e.to_string()),
        sqlx::Error::Configuration(_) => (ErrorKind::Config, e.to_string()),
        sqlx::Error::RowNotFound => (ErrorKind::NotFound, e.to_string()),
        _ => (ErrorKind::Other, e.to_string()),
    };
    AdapterError::new(kind, format!("sql {op}: {detail}"))
}

fn db_kind(db: &dyn DatabaseError) -> ErrorKind {
    if let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() {
        return mysql_kind(my.number()).unwrap_or_else(|| by_generic_kind(db));
    }
    match db.code() {
        Some(code) => pg_kind(&code).unwrap_or_else(|| by_generic_kind(db)),
        None => by_generic_kind(db),
    }
}

fn by_generic_kind(db: &dyn DatabaseError) -> ErrorKind {
    match db.kind() {
        DbKind::UniqueViolation => ErrorKind::Conflict,
        DbKind::ForeignKeyViolation | DbKind::NotNullViolation | DbKind::CheckViolation => ErrorKind::Rejected,
        _ => ErrorKind::Other,
    }
}

/// By PostgreSQL SQLSTATE (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
pub fn pg_kind(code: &str) -> Option<ErrorKind> {
    Some(match code {
        // serialization_failure, deadlock_detected, lock_not_available, query_canceled (statement_timeout)
        "40001" | "40P01" | "55P03" | "57014" => ErrorKind::Unavailable,
        // admin_shutdown, crash_shutdown, cannot_connect_now
        "57P01" | "57P02" | "57P03" => ErrorKind::Unavailable,
        // invalid_authorization_specification, invalid_password, insufficient_privilege
        "28000" | "28P01" | "42501" => ErrorKind::Unauthorized,
        "23505" => ErrorKind::Conflict,
        // invalid_catalog_name (no such database), undefined table/column/function, no unique index for ON CONFLICT
        "3D000" | "42P01" | "42703" | "42883" | "42P10" | "3F000" => ErrorKind::Config,
        c if c.starts_with("08") => ErrorKind::Unavailable, // connection exceptions
        c if c.starts_with("53") => ErrorKind::Unavailable, // insufficient resources (too many connections)
        c if c.starts_with("23") => ErrorKind::Rejected,    // integrity constraints
        c if c.starts_with("22") => ErrorKind::Rejected,    // data exceptions (too long, bad number)
        c if c.starts_with("42") => ErrorKind::Config,      // syntax or access rule: the mapping is wrong
        _ => return None,
    })
}

/// By MySQL/MariaDB server error number.
pub fn mysql_kind(number: u16) -> Option<ErrorKind> {
    Some(match number {
        // lock wait timeout, deadlock, too many connections, server shutdown, query interrupted/timeout
        1205 | 1213 | 1040 | 1053 | 1317 | 3024 | 1969 => ErrorKind::Unavailable,
        // access denied (user, database, table, column)
        1044 | 1045 | 1142 | 1143 | 1227 | 1698 => ErrorKind::Unauthorized,
        // duplicate entry
        1062 | 1022 | 1586 => ErrorKind::Conflict,
        // unknown database / table / column
        1049 | 1146 | 1054 => ErrorKind::Config,
        // null, no default, too long, bad value, out of range, truncated, foreign keys, check constraint
        1048 | 1364 | 1406 | 1366 | 1264 | 1265 | 1292 | 1451 | 1452 | 1216 | 1217 | 3819 | 4025 => ErrorKind::Rejected,
        // client-side: server gone away, lost connection
        2002 | 2003 | 2006 | 2013 => ErrorKind::Unavailable,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_server_states() {
        for c in ["40001", "40P01", "08006", "53300", "57P01"] {
            assert_eq!(pg_kind(c), Some(ErrorKind::Unavailable), "{c}");
        }
        for n in [1213, 1205, 1040] {
            assert_eq!(mysql_kind(n), Some(ErrorKind::Unavailable), "{n}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(pg_kind("23505"), Some(ErrorKind::Conflict));
        assert_eq!(pg_kind("23502"), Some(ErrorKind::Rejected));
        assert_eq!(pg_kind("22001"), Some(ErrorKind::Rejected));
        assert_eq!(pg_kind("28P01"), Some(ErrorKind::Unauthorized));
        assert_eq!(pg_kind("42P01"), Some(ErrorKind::Config));
        assert_eq!(mysql_kind(1062), Some(ErrorKind::Conflict));
        assert_eq!(mysql_kind(1406), Some(ErrorKind::Rejected));
        assert_eq!(mysql_kind(1045), Some(ErrorKind::Unauthorized));
        assert_eq!(mysql_kind(1146), Some(ErrorKind::Config));
        assert_eq!(pg_kind("XX000"), None);
    }

    #[test]
    fn transport_errors_are_retriable() {
        let e = map("health", sqlx::Error::PoolTimedOut);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.retriable);
        let e = map(
            "apply",
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(e.kind, ErrorKind::Unavailable);
        let e = map("apply", sqlx::Error::Configuration("bad".into()));
        assert!(!e.retriable);
    }
}
