//! Test support shared by the adapter crates and the gateway's integration tests: private, throwaway instances of
//! the real servers on loopback ports, and throwaway databases.
//!
//! A test that needs a server it cannot start panics with a message saying what is missing and how to get it
//! (`scripts/test.sh` installs every package). Nothing here ever skips.
//!
//! - [`slapd`]: OpenLDAP with memberof and ppolicy, a suffix, a root DN;
//! - [`samba`]: a Samba Active Directory domain controller on its own loopback address, LDAPS;
//! - [`sshd`]: OpenSSH with internal-sftp, a temporary host key and user key;
//! - [`db`]: uniquely named PostgreSQL and MariaDB databases, dropped on drop;
//! - [`json_server`]: npm json-server 0.17.4 serving a temporary db.json;
//! - [`scim2_server`]: the PyPI scim2-server from the conformance venv, with a bearer token.

pub mod db;
pub mod json_server;
pub mod samba;
pub mod schemas;
pub mod scim2_server;
pub mod slapd;
pub mod sshd;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Wait until `addr` accepts TCP connections, or panic after `timeout`.
pub fn wait_port(addr: &str, timeout: Duration, what: &str) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start listening on {addr} within {timeout:?}");
}

/// Wait until `child` accepts TCP connections on 127.0.0.1:`port`; panic at once when it exits, or after
/// `timeout`.
pub fn wait_child(child: &mut std::process::Child, port: u16, timeout: Duration, what: &str) {
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start ({status})");
        }
        assert!(
            start.elapsed() < timeout,
            "{what} did not start listening on {addr} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of a program the test needs, or a loud panic naming the Debian package that provides it.
pub fn require(program: &str, package: &str) -> String {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!(
        "{program} is not installed: this test runs a real {package}. Run scripts/test.sh (it installs the Debian \
         package {package}), or `apt-get install -y {package}`"
    );
}

/// A unique, short, lowercase name for a throwaway resource.
pub fn unique(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &u[..12])
}
