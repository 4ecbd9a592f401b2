//! A private scim2-server (PyPI `scim2-server`, from the conformance venv) on a loopback port, for the SCIM
//! adapter's tests and the gateway's end-to-end target tests.
//!
//! The server keeps everything in memory and requires a bearer token ([`TOKEN`]); the token is also written to
//! a file ([`Scim2Server::token_file`]) for configs that take a `token_file`.
//!
//! Needs `conformance/.venv`, which scripts/test.sh builds (`python3 -m venv conformance/.venv &&
//! conformance/.venv/bin/pip install -r conformance/requirements.txt`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The bearer token every instance requires.
pub const TOKEN: &str = "downstream-test-token";

/// The scim2-server executable in the conformance venv.
pub fn bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/.venv/bin/scim2-server")
}

/// A running scim2-server. Killed on drop, its temporary directory removed.
pub struct Scim2Server {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The bearer token it requires ([`TOKEN`]).
    pub token: String,
    /// A file holding the token and a newline.
    pub token_file: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Scim2Server {
    /// Start scim2-server on a free loopback port. Panics, saying how to build the venv, when it is missing.
    pub fn start() -> Scim2Server {
        let bin = bin();
        assert!(
            bin.exists(),
            "{} is missing: these tests run the real scim2-server from PyPI. Run scripts/test.sh (it builds the venv), \
             or `python3 -m venv conformance/.venv && conformance/.venv/bin/pip install -r conformance/requirements.txt`",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("scimgate-scim2-server-")
            .tempdir()
            .unwrap_or_else(|e| panic!("scim2-server: temp dir: {e}"));
        let token_file = dir.path().join("token");
        fs::write(&token_file, format!("{TOKEN}\n")).unwrap_or_else(|e| panic!("scim2-server: token file: {e}"));
        let port = crate::free_port();
        let child = Command::new(&bin)
            .args([
                "--hostname",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--bearer-token",
                TOKEN,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("scim2-server could not start: {e}"));
        let mut me = Scim2Server {
            port,
            token: TOKEN.to_string(),
            token_file,
            child,
            _dir: dir,
        };
        crate::wait_child(&mut me.child, port, Duration::from_secs(30), "scim2-server");
        me
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Scim2Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
