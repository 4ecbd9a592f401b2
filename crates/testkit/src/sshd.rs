//! A private OpenSSH sshd with internal-sftp on a loopback port, for the flat-file adapter's SFTP tests.
//!
//! [`Sshd::start`] makes a temporary ed25519 host key, a client ed25519 key pair, an `sshd_config` on a free
//! 127.0.0.1 port (`UsePAM no`, `StrictModes no`, `ForceCommand internal-sftp`, no forwarding, only the test user
//! allowed) and runs `/usr/sbin/sshd -D -e -f CONFIG` in the foreground; dropping the guard kills that process.
//!
//! The SFTP user is a dedicated local account, [`USER`], created with `useradd` on first use (no home, shell
//! `/usr/sbin/nologin`) and reused afterwards. It accepts the per-instance client key and a password. The
//! password is random, made once per machine and kept root-only in [`PASSWORD_FILE`]: every instance sets the
//! same value with `chpasswd`, so tests running in parallel never change it under each other. The account can
//! only be used through an instance of this module (the system sshd is never started, and ours forces
//! internal-sftp and allows no forwarding).
//!
//! Needs the Debian packages `openssh-server` (sshd, ssh-keygen) and `openssh-client` (the `sftp` CLI that
//! [`Sshd::sftp_batch`] runs), plus `passwd` (useradd, usermod, chpasswd), which every Debian has.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The local account SFTP clients log in as.
pub const USER: &str = "scimgate-sftp";

/// Where the machine's test password for [`USER`] is kept (root-only, 0600).
pub const PASSWORD_FILE: &str = "/var/lib/scimgate-testkit/sftp-password";

/// Serialises the account edits (useradd, usermod, chpasswd) of the tests in one process; other processes are
/// handled by retrying when /etc/passwd or /etc/shadow is locked.
static ACCOUNT: Mutex<()> = Mutex::new(());

/// A running sshd. Killed on drop, its temporary directory removed.
pub struct Sshd {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The login name ([`USER`]).
    pub user: String,
    /// The password of [`USER`].
    pub password: String,
    /// The host's public key as an OpenSSH line: `ssh-ed25519 AAAA… comment`.
    pub host_public_key: String,
    /// The host key's fingerprint, `SHA256:…`.
    pub host_key_fingerprint: String,
    /// The client's private key (OpenSSH format, no passphrase), authorised for [`USER`].
    pub client_key: PathBuf,
    /// A directory the user may write to; the same absolute path over SFTP, as the server is this machine.
    pub upload_dir: PathBuf,
    /// A known_hosts file pinning this instance's host key, for the `sftp` CLI.
    pub known_hosts: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str], what: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e} (scripts/test.sh installs it)"));
    assert!(
        out.status.success(),
        "{what}: {program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run an account tool, retrying while another process holds the passwd/shadow lock.
fn run_locked(program: &str, args: &[&str], stdin: Option<&str>, what: &str) {
    let mut last = String::new();
    for _ in 0..50 {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e} (it is in the Debian package passwd)"));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("{what}: cannot write to {program}: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{what}: {program} did not finish: {e}"));
        if out.status.success() {
            return;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !last.contains("lock") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: {program} {args:?} failed: {last}");
}

fn user_exists(user: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(user)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The machine's test password for [`USER`], made on first use.
fn machine_password() -> String {
    let path = Path::new(PASSWORD_FILE);
    if let Ok(p) = fs::read_to_string(path) {
        let p = p.trim().to_string();
        if !p.is_empty() {
            return p;
        }
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("sshd: cannot create {}: {e}", dir.display()));
    let fresh = format!("Sftp-{}", uuid::Uuid::new_v4().simple());
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(fresh.as_bytes())
                .unwrap_or_else(|e| panic!("sshd: cannot write {PASSWORD_FILE}: {e}"));
            fresh
        }
        // Another process made it first: wait for its content.
        Err(_) => {
            for _ in 0..50 {
                if let Ok(p) = fs::read_to_string(path)
                    && !p.trim().is_empty()
                {
                    return p.trim().to_string();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("sshd: {PASSWORD_FILE} exists but stays empty")
        }
    }
}

/// Create (or reuse) [`USER`], make sure key login works under `UsePAM no`, and set its password.
fn ensure_user() -> String {
    let _guard = ACCOUNT.lock().unwrap_or_else(|p| p.into_inner());
    let password = machine_password();
    if !user_exists(USER) {
        run_locked(
            "/usr/sbin/useradd",
            &["--system", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", USER],
            None,
            "sshd test user",
        );
    }
    // chpasswd both unlocks the account for sshd and sets the password; the value is the same on every call.
    run_locked(
        "/usr/sbin/chpasswd",
        &[],
        Some(&format!("{USER}:{password}\n")),
        "sshd test user password",
    );
    password
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("sshd: chmod {}: {e}", path.display()));
}

fn keygen(path: &Path, comment: &str) {
    let ssh_keygen = crate::require("ssh-keygen", "openssh-client");
    let p = path.display().to_string();
    run(
        &ssh_keygen,
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &p],
        "ssh-keygen",
    );
}

/// A freshly generated ed25519 public key line that belongs to no server (to test host key pinning).
pub fn foreign_host_key() -> String {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("sshd: temp dir: {e}"));
    let key = dir.path().join("other");
    keygen(&key, "other-host");
    fs::read_to_string(key.with_extension("pub"))
        .unwrap_or_else(|e| panic!("sshd: read public key: {e}"))
        .trim()
        .to_string()
}

impl Sshd {
    /// Start a private sshd. Panics, naming the package to install, when it cannot.
    pub fn start() -> Sshd {
        let sshd = crate::require("sshd", "openssh-server");
        let password = ensure_user();
        fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("sshd: mkdir /run/sshd: {e}"));
        chmod(Path::new("/run/sshd"), 0o755);

        let dir = tempfile::Builder::new()
            .prefix("scimgate-sshd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("sshd: temp dir: {e}"));
        // sshd reads authorized_keys as the user, who must be able to traverse the directory.
        chmod(dir.path(), 0o755);
        let host_key = dir.path().join("host_ed25519");
        keygen(&host_key, "scimgate-test-host");
        let client_key = dir.path().join("client_ed25519");
        keygen(&client_key, "scimgate-test-client");
        let read = |p: &Path| {
            fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("sshd: read {}: {e}", p.display()))
                .trim()
                .to_string()
        };
        let host_public_key = read(&host_key.with_extension("pub"));
        let client_public_key = read(&client_key.with_extension("pub"));
        let ssh_keygen = crate::require("ssh-keygen", "openssh-client");
        let fp = run(
            &ssh_keygen,
            &[
                "-l",
                "-E",
                "sha256",
                "-f",
                &host_key.with_extension("pub").display().to_string(),
            ],
            "ssh-keygen -l",
        );
        let host_key_fingerprint = fp
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("sshd: unexpected ssh-keygen -l output {fp:?}"))
            .to_string();

        let auth_dir = dir.path().join("authorized_keys");
        fs::create_dir(&auth_dir).unwrap_or_else(|e| panic!("sshd: mkdir: {e}"));
        chmod(&auth_dir, 0o755);
        let auth_file = auth_dir.join(USER);
        fs::write(&auth_file, format!("{client_public_key}\n")).unwrap_or_else(|e| panic!("sshd: write: {e}"));
        chmod(&auth_file, 0o644);

        let upload_dir = dir.path().join("upload");
        fs::create_dir(&upload_dir).unwrap_or_else(|e| panic!("sshd: mkdir: {e}"));
        chmod(&upload_dir, 0o755);
        run(
            "chown",
            &[&format!("{USER}:"), &upload_dir.display().to_string()],
            "chown upload dir",
        );

        let known_hosts = dir.path().join("known_hosts");
        let port = crate::free_port();
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_public_key}\n"))
            .unwrap_or_else(|e| panic!("sshd: write: {e}"));

        let config = dir.path().join("sshd_config");
        let d = dir.path().display();
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys/%u\nStrictModes no\nUsePAM no\n\
                 PubkeyAuthentication yes\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin no\nAllowUsers {USER}\nDisableForwarding yes\nPermitTTY no\n\
                 Subsystem sftp internal-sftp\nForceCommand internal-sftp\nLogLevel ERROR\n",
                hk = host_key.display(),
            ),
        )
        .unwrap_or_else(|e| panic!("sshd: write config: {e}"));
        let cfg = config.display().to_string();
        run(&sshd, &["-t", "-f", &cfg], "sshd -t");
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f", &cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("sshd: cannot start {sshd}: {e}"));
        let mut me = Sshd {
            port,
            user: USER.to_string(),
            password,
            host_public_key,
            host_key_fingerprint,
            client_key,
            upload_dir,
            known_hosts,
            child,
            dir,
        };
        let addr = format!("127.0.0.1:{port}");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!("sshd exited at start ({status}); its stderr is above");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not listen on {addr} in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// The temporary directory holding this instance's keys and config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Run `sftp -b -` with the client key against this server, host key pinned, and return its stdout.
    /// Panics when a command fails (sftp's batch mode stops at the first failing command).
    pub fn sftp_batch(&self, commands: &str) -> String {
        let sftp = crate::require("sftp", "openssh-client");
        let mut child = Command::new(sftp)
            .args([
                "-q",
                "-b",
                "-",
                "-P",
                &self.port.to_string(),
                "-i",
                &self.client_key.display().to_string(),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &format!("UserKnownHostsFile={}", self.known_hosts.display()),
                &format!("{}@127.0.0.1", self.user),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("sftp: cannot start: {e}"));
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(commands.as_bytes())
                .unwrap_or_else(|e| panic!("sftp: write batch: {e}"));
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("sftp: {e}"));
        assert!(
            out.status.success(),
            "sftp batch {commands:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Download `remote` (an absolute path) over SFTP with the `sftp` CLI and return its bytes.
    pub fn sftp_get(&self, remote: &str) -> Vec<u8> {
        let local = self.dir.path().join(format!("get-{}", uuid::Uuid::new_v4().simple()));
        self.sftp_batch(&format!("get \"{remote}\" \"{}\"\n", local.display()));
        let bytes = fs::read(&local).unwrap_or_else(|e| panic!("sftp get {remote}: {e}"));
        let _ = fs::remove_file(&local);
        bytes
    }

    /// The names in `remote_dir` (an absolute path), listed over SFTP with the `sftp` CLI, hidden files included.
    pub fn sftp_ls(&self, remote_dir: &str) -> Vec<String> {
        let out = self.sftp_batch(&format!("ls -1a \"{remote_dir}\"\n"));
        let mut names: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("sftp>"))
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        names
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
