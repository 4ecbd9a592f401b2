//! SFTP over SSH with russh (pure Rust, ring crypto): a pinned host key, key or password authentication, one
//! cached session re-opened after a failure.

use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use scimgate_adapter_sdk::{AdapterError, ErrorKind, Secret};
use tokio::sync::Mutex;

use crate::config::SftpConfig;
use crate::error;
use crate::names;

/// Bytes per SFTP read or write request (every server takes 32 KiB).
const CHUNK: usize = 32 * 1024;
const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// The host key the server must present.
#[derive(Clone, Debug)]
enum Pin {
    Key(Box<PublicKey>),
    Fingerprint(String),
}

impl Pin {
    fn parse(text: &str) -> Result<Pin, AdapterError> {
        let t = text.trim();
        if t.starts_with("SHA256:") {
            return Ok(Pin::Fingerprint(t.trim_end_matches('=').to_string()));
        }
        // Accept a known_hosts line too: skip a leading host pattern.
        let mut words: Vec<&str> = t.split_whitespace().collect();
        if words.len() >= 3 && !words[0].contains("ssh-") && !words[0].contains("ecdsa-") {
            words.remove(0);
        }
        let line = words.join(" ");
        PublicKey::from_openssh(&line)
            .map(|k| Pin::Key(Box::new(k)))
            .map_err(|e| {
                AdapterError::config(format!(
                    "host_key is neither an OpenSSH public key line nor a SHA256: fingerprint: {e}"
                ))
            })
    }

    fn matches(&self, key: &PublicKey) -> bool {
        match self {
            Pin::Key(k) => k.key_data() == key.key_data(),
            Pin::Fingerprint(f) => key.fingerprint(HashAlg::Sha256).to_string().trim_end_matches('=') == f.as_str(),
        }
    }
}

struct Client {
    pin: Pin,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let ok = match server {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.pin.matches(key),
            // A host certificate is not the pinned key.
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            tracing::warn!(target: "scimgate::adapter::file", "SFTP server presented a host key that is not pinned");
        }
        Ok(ok)
    }
}

struct Conn {
    // Kept alive: dropping the handle ends the SSH session.
    handle: client::Handle<Client>,
    raw: RawSftpSession,
    posix_rename: bool,
}

pub(crate) struct Sftp {
    cfg: SftpConfig,
    pin: Pin,
    key: Option<Arc<PrivateKey>>,
    password: Option<Secret>,
    conn: Mutex<Option<Conn>>,
}

fn read_secret_file(path: &std::path::Path, what: &str) -> Result<String, AdapterError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| AdapterError::config(format!("cannot read {what} {}: {}", path.display(), e.kind())))
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

/// An SSH string: a big-endian u32 length, then the bytes.
fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Sftp {
    pub(crate) fn new(cfg: SftpConfig) -> Result<Sftp, AdapterError> {
        let pin = Pin::parse(&cfg.host_key)?;
        if !cfg.dir.starts_with('/') {
            return Err(AdapterError::config("sftp dir must be an absolute path"));
        }
        if cfg.dir.split('/').any(|c| c == "..") {
            return Err(AdapterError::config("sftp dir must not hold .."));
        }
        let passphrase = match &cfg.private_key_passphrase_file {
            Some(p) => Some(read_secret_file(p, "private_key_passphrase_file")?),
            None => None,
        };
        let key = match &cfg.private_key_file {
            Some(p) => {
                let text = read_secret_file(p, "private_key_file")?;
                let k = russh::keys::decode_secret_key(&text, passphrase.as_deref())
                    .map_err(|e| AdapterError::config(format!("private_key_file {}: {e}", p.display())))?;
                Some(Arc::new(k))
            }
            None => None,
        };
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(_), Some(_)) => return Err(AdapterError::config("set password or password_file, not both")),
            (Some(p), None) => Some(Secret::new(p.clone())),
            (None, Some(f)) => Some(Secret::new(read_secret_file(f, "password_file")?)),
            (None, None) => None,
        };
        if key.is_none() && password.is_none() {
            return Err(AdapterError::config(
                "sftp needs private_key_file, password or password_file",
            ));
        }
        if cfg.connect_timeout_seconds == 0 || cfg.request_timeout_seconds == 0 {
            return Err(AdapterError::config("sftp timeouts must be at least one second"));
        }
        Ok(Sftp {
            cfg,
            pin,
            key,
            password,
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Conn, AdapterError> {
        let c = &self.cfg;
        let what = format!("sftp {}:{}", c.host, c.port);
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            ..Default::default()
        });
        let handler = Client { pin: self.pin.clone() };
        let attempt = async {
            let mut h = client::connect(config, (c.host.as_str(), c.port), handler)
                .await
                .map_err(|e| error::ssh(&what, &e))?;
            let mut ok = false;
            if let Some(key) = &self.key {
                let hash = h
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| error::ssh(&what, &e))?
                    .flatten();
                ok = h
                    .authenticate_publickey(&c.user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                    .await
                    .map_err(|e| error::ssh(&what, &e))?
                    .success();
            }
            if !ok && let Some(pw) = &self.password {
                ok = h
                    .authenticate_password(&c.user, pw.expose())
                    .await
                    .map_err(|e| error::ssh(&what, &e))?
                    .success();
            }
            if !ok {
                return Err(AdapterError::new(
                    ErrorKind::Unauthorized,
                    format!("{what}: authentication as {} refused", c.user),
                ));
            }
            let ch = h.channel_open_session().await.map_err(|e| error::ssh(&what, &e))?;
            ch.request_subsystem(true, "sftp")
                .await
                .map_err(|e| error::ssh(&what, &e))?;
            let raw = RawSftpSession::new(ch.into_stream());
            raw.set_timeout(c.request_timeout_seconds);
            let version = raw.init().await.map_err(|e| error::sftp(&what, &e))?;
            let posix_rename = version.extensions.get(POSIX_RENAME).is_some_and(|v| v == "1");
            tracing::debug!(target: "scimgate::adapter::file", host = %c.host, port = c.port, posix_rename, "sftp session opened");
            Ok(Conn {
                handle: h,
                raw,
                posix_rename,
            })
        };
        match tokio::time::timeout(Duration::from_secs(c.connect_timeout_seconds), attempt).await {
            Ok(r) => r,
            Err(_) => Err(AdapterError::unavailable(format!(
                "{what}: no session within {} s",
                c.connect_timeout_seconds
            ))),
        }
    }

    /// Run `op` on the cached session (connecting first if needed). A failure that may be the session's drops
    /// it, so the next call connects afresh.
    async fn with<T>(&self, op: impl AsyncFnOnce(&Conn) -> Result<T, AdapterError>) -> Result<T, AdapterError> {
        let mut guard = self.conn.lock().await;
        // A session closed by either side (idle timeout, server restart) is replaced before use.
        if guard.as_ref().is_some_and(|c| c.handle.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let Some(conn) = guard.as_ref() else {
            return Err(AdapterError::unavailable("sftp session lost"));
        };
        let r = op(conn).await;
        if matches!(&r, Err(e) if e.kind == ErrorKind::Unavailable) {
            *guard = None;
        }
        r
    }

    pub(crate) async fn health(&self) -> Result<(), AdapterError> {
        let dir = self.cfg.dir.clone();
        self.with(async |c: &Conn| {
            c.raw
                .stat(dir.clone())
                .await
                .map(|_| ())
                .map_err(|e| error::sftp(&format!("sftp stat {dir}"), &e))
        })
        .await
    }

    pub(crate) async fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, AdapterError> {
        let path = names::remote(&self.cfg.dir, name)?;
        self.with(async |c: &Conn| {
            let what = format!("sftp read {path}");
            let handle = match c.raw.open(path.clone(), OpenFlags::READ, FileAttributes::empty()).await {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(error::sftp(&what, &e)),
            };
            let mut out = Vec::new();
            let result = loop {
                match c.raw.read(handle.clone(), out.len() as u64, CHUNK as u32).await {
                    Ok(d) if d.data.is_empty() => break Ok(()),
                    Ok(d) => {
                        out.extend_from_slice(&d.data);
                        if out.len() as u64 > max {
                            break Err(AdapterError::config(format!(
                                "{path} is larger than max_file_bytes ({max})"
                            )));
                        }
                    }
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                    Err(e) => break Err(error::sftp(&what, &e)),
                }
            };
            let closed = c.raw.close(handle).await;
            result?;
            closed.map_err(|e| error::sftp(&what, &e))?;
            Ok(Some(out))
        })
        .await
    }

    pub(crate) async fn write_atomic(&self, name: &str, tmp: &str, bytes: &[u8]) -> Result<(), AdapterError> {
        let path = names::remote(&self.cfg.dir, name)?;
        let tmp_path = format!("{}/{tmp}", self.cfg.dir.trim_end_matches('/'));
        self.with(async |c: &Conn| {
            let what = format!("sftp write {path}");
            let r = Self::put(c, &tmp_path, &path, bytes)
                .await
                .map_err(|e| error::sftp(&what, &e));
            if r.is_err() {
                let _ = c.raw.remove(tmp_path.clone()).await;
            }
            r
        })
        .await
    }

    async fn put(c: &Conn, tmp_path: &str, path: &str, bytes: &[u8]) -> Result<(), SftpError> {
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let handle = c
            .raw
            .open(tmp_path.to_string(), flags, FileAttributes::empty())
            .await?
            .handle;
        let mut written = Ok(());
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            if let Err(e) = c.raw.write(handle.clone(), (i * CHUNK) as u64, chunk.to_vec()).await {
                written = Err(e);
                break;
            }
        }
        if written.is_ok() {
            // fsync@openssh.com where the server has it; a plain close elsewhere.
            match c.raw.fsync(handle.clone()).await {
                Ok(_) => {}
                Err(SftpError::Status(s)) if s.status_code == StatusCode::OpUnsupported => {}
                Err(e) => written = Err(e),
            }
        }
        let closed = c.raw.close(handle).await;
        written?;
        closed?;
        if c.posix_rename {
            let mut data = Vec::new();
            ssh_string(&mut data, tmp_path);
            ssh_string(&mut data, path);
            return match c.raw.extended(POSIX_RENAME, data).await? {
                Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
                Packet::Status(s) => Err(SftpError::Status(s)),
                _ => Err(SftpError::UnexpectedPacket),
            };
        }
        // Plain SFTP rename refuses an existing target: remove it first. A reader may find no file in between.
        match c.raw.rename(tmp_path.to_string(), path.to_string()).await {
            Ok(_) => Ok(()),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Failure => {
                match c.raw.remove(path.to_string()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, StatusCode::NoSuchFile) => {}
                    Err(e) => return Err(e),
                }
                c.raw.rename(tmp_path.to_string(), path.to_string()).await.map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl host";

    #[test]
    fn pins_parse_from_lines_known_hosts_and_fingerprints() {
        let k = PublicKey::from_openssh(LINE).expect("key");
        let fp = k.fingerprint(HashAlg::Sha256).to_string();
        for pin in [LINE.to_string(), format!("[127.0.0.1]:2222 {LINE}"), fp.clone()] {
            assert!(Pin::parse(&pin).expect("pin").matches(&k), "{pin}");
        }
        assert!(!Pin::parse("SHA256:AAAA").expect("pin").matches(&k));
        assert!(Pin::parse("not a key").is_err());
    }
}
