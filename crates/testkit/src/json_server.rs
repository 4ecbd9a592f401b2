//! A private json-server (npm `json-server` 0.17.4) on a loopback port, for the REST adapter's tests and the
//! gateway's end-to-end target tests.
//!
//! The package is pinned by `adapters/rest/tests/node/package-lock.json`; the first [`JsonServer::start`] on a
//! machine runs `npm ci` there when `node_modules` is missing (serialised across test processes by a lock file),
//! and panics loudly when it cannot. Each instance serves its own temporary `db.json` holding
//! `{"users": []}`; json-server persists every write to that file, so tests may read it as well as the HTTP API.
//!
//! Needs the Debian packages `nodejs` and `npm`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The npm project (package.json, package-lock.json) that pins json-server.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters/rest/tests/node")
}

/// The json-server script, installed with `npm ci` on first use. Panics when npm fails.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = node_dir();
        let bin = dir.join("node_modules/.bin/json-server");
        if !bin.exists() {
            // Several test binaries may get here at once: one runs npm ci, the others wait for it.
            let lock_path = std::env::temp_dir().join("scimgate-testkit-json-server-npm-ci.lock");
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .unwrap_or_else(|e| panic!("json-server: cannot open {}: {e}", lock_path.display()));
            lock.lock()
                .unwrap_or_else(|e| panic!("json-server: cannot lock {}: {e}", lock_path.display()));
            if !bin.exists() {
                let npm = crate::require("npm", "npm");
                let st = Command::new(npm)
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .unwrap_or_else(|e| panic!("npm ci in {} could not run: {e}", dir.display()));
                assert!(
                    st.success(),
                    "npm ci in {} failed ({st}): json-server is needed for these tests",
                    dir.display()
                );
            }
            let _ = lock.unlock();
        }
        assert!(bin.exists(), "{} is missing after npm ci", bin.display());
        bin
    })
    .clone()
}

/// A running json-server. Killed on drop, its temporary directory removed.
pub struct JsonServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The database file json-server serves and persists every write to.
    pub db: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl JsonServer {
    /// Start json-server on a free loopback port with an empty `users` collection.
    pub fn start() -> JsonServer {
        Self::start_with(r#"{"users": []}"#)
    }

    /// Start json-server serving `db_json` (a JSON object of collections).
    pub fn start_with(db_json: &str) -> JsonServer {
        let bin = bin();
        let node = crate::require("node", "nodejs");
        let dir = tempfile::Builder::new()
            .prefix("scimgate-json-server-")
            .tempdir()
            .unwrap_or_else(|e| panic!("json-server: temp dir: {e}"));
        let db = dir.path().join("db.json");
        fs::write(&db, db_json).unwrap_or_else(|e| panic!("json-server: write db.json: {e}"));
        let port = crate::free_port();
        let child = Command::new(node)
            .arg(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--quiet"])
            .arg(&db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("json-server could not start: {e}"));
        let mut me = JsonServer {
            port,
            db,
            child,
            _dir: dir,
        };
        crate::wait_child(&mut me.child, port, Duration::from_secs(20), "json-server");
        me
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`, as a REST target's `allowed_hosts` names it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The database file as json-server last wrote it.
    pub fn read_db(&self) -> String {
        fs::read_to_string(&self.db).unwrap_or_else(|e| panic!("json-server: read {}: {e}", self.db.display()))
    }

    /// The persisted `db.json` once `done` holds for it. json-server may answer a write before it has rewritten
    /// the file (and rewrites it in place, so a read can catch it half written): a test that reads the file right
    /// after a write polls it here. Panics with the last contents after 10 s.
    pub fn db_when(&self, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.read_db();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && done(&v)
            {
                return v;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "json-server: {} never reached the expected state; last contents: {text}",
                    self.db.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for JsonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
