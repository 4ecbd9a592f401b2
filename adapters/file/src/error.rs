//! Local I/O, SFTP and SSH failures as [`AdapterError`]s.
//!
//! - unreachable host, refused connection, timeouts, a dropped session, local I/O faults (a full disk may
//!   recover): `Unavailable`, retried;
//! - authentication refused, permission denied on a file or directory: `Unauthorized`, not retried;
//! - a host key that is not the pinned one: `Config`, not retried (an operator must check and re-pin);
//! - data the file cannot hold (a missing required value, an unmappable character): `Rejected`.

use russh_sftp::protocol::StatusCode;
use scimgate_adapter_sdk::{AdapterError, ErrorKind};

pub(crate) fn io(what: &str, e: &std::io::Error) -> AdapterError {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            AdapterError::new(ErrorKind::Unauthorized, format!("{what}: permission denied"))
        }
        _ => AdapterError::unavailable(format!("{what}: {e}")),
    }
}

pub(crate) fn ssh(what: &str, e: &russh::Error) -> AdapterError {
    match e {
        russh::Error::UnknownKey => AdapterError::config(format!(
            "{what}: the server's host key is not the pinned host_key; refusing to connect"
        )),
        russh::Error::NotAuthenticated => {
            AdapterError::new(ErrorKind::Unauthorized, format!("{what}: authentication refused"))
        }
        other => AdapterError::unavailable(format!("{what}: {other}")),
    }
}

pub(crate) fn sftp(what: &str, e: &russh_sftp::client::error::Error) -> AdapterError {
    use russh_sftp::client::error::Error;
    match e {
        Error::Status(s) if s.status_code == StatusCode::PermissionDenied => {
            AdapterError::new(ErrorKind::Unauthorized, format!("{what}: permission denied"))
        }
        Error::Status(s) => AdapterError::unavailable(format!("{what}: {}: {}", s.status_code, s.error_message)),
        other => AdapterError::unavailable(format!("{what}: {other}")),
    }
}
