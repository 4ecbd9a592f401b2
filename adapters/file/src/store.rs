//! Where files are read and delivered: a local directory or an SFTP server. Every write is atomic: the bytes go
//! to `.<name>.tmp-<uuid>` in the same directory, are flushed to disk, and the temporary file is renamed over
//! the final name.

use std::path::PathBuf;

use scimgate_adapter_sdk::AdapterError;
use tokio::io::AsyncWriteExt;

use crate::error;
use crate::names;
use crate::sftp::Sftp;

pub(crate) enum Store {
    Local(PathBuf),
    Sftp(Box<Sftp>),
}

fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple())
}

impl Store {
    pub(crate) async fn health(&self) -> Result<(), AdapterError> {
        match self {
            Store::Local(dir) => {
                let m = tokio::fs::metadata(dir)
                    .await
                    .map_err(|e| error::io(&format!("directory {}", dir.display()), &e))?;
                if !m.is_dir() {
                    return Err(AdapterError::config(format!("{} is not a directory", dir.display())));
                }
                Ok(())
            }
            Store::Sftp(s) => s.health().await,
        }
    }

    /// The file's bytes, `None` when it does not exist; refused past `max` bytes.
    pub(crate) async fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, AdapterError> {
        match self {
            Store::Local(dir) => {
                let path = names::inside(dir, name)?;
                match tokio::fs::metadata(&path).await {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(error::io(&format!("stat {}", path.display()), &e)),
                    Ok(m) if m.len() > max => {
                        return Err(AdapterError::config(format!(
                            "{} is larger than max_file_bytes ({max})",
                            path.display()
                        )));
                    }
                    Ok(_) => {}
                }
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(error::io(&format!("read {}", path.display()), &e)),
                }
            }
            Store::Sftp(s) => s.read(name, max).await,
        }
    }

    /// Deliver `bytes` as `name`, replacing any file of that name, atomically.
    pub(crate) async fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), AdapterError> {
        let tmp = temp_name(name);
        match self {
            Store::Local(dir) => {
                let path = names::inside(dir, name)?;
                // `name` is a checked plain name, so the temporary name is one too.
                let tmp_path = dir.join(&tmp);
                let written = async {
                    let mut f = tokio::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&tmp_path)
                        .await?;
                    f.write_all(bytes).await?;
                    f.sync_all().await?;
                    drop(f);
                    tokio::fs::rename(&tmp_path, &path).await?;
                    // Make the rename itself durable.
                    tokio::fs::File::open(dir).await?.sync_all().await
                }
                .await;
                if let Err(e) = written {
                    let _ = tokio::fs::remove_file(&tmp_path).await;
                    return Err(error::io(&format!("write {}", path.display()), &e));
                }
                Ok(())
            }
            Store::Sftp(s) => s.write_atomic(name, &tmp, bytes).await,
        }
    }
}
