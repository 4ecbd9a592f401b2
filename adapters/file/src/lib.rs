//! The flat-file adapter: accounts as rows of a CSV file, delivered to a local directory or over SFTP.
//!
//! A flat file has no account store to ask, so the adapter keeps one on the destination: the **population
//! file** (`state_file`, `users.csv` by default) holds one row per account in the configured dialect, keyed by
//! `key_column` (the SCIM `id` is the stable choice). `get` and `search` read it; `apply` and `remove` rewrite
//! it. In `delta` mode each change that alters a row is also delivered as its own file (`file_name`, e.g.
//! `users-{timestamp}-{seq}.csv`) holding that one row, with an `$action` column saying `upsert`, `disable` or
//! `delete`. In `snapshot` mode the gateway calls [`FileAdapter::write_snapshot`] every `schedule_seconds` to
//! deliver a copy of the population under a `file_name`.
//!
//! The delta file is written before the population file: after a crash between the two, the retry finds the
//! row unchanged and delivers the delta again, so delivery is at least once and never lost.
//!
//! Layout: [`config`] (the TOML settings), `format` (the CSV dialect, formula neutralisation, encodings),
//! `names` (file name templates and the plain-name check), `store` (atomic local and SFTP writes), `sftp`
//! (russh with a pinned host key), `error` (failures as [`AdapterError`]s).
//!
//! Writes are serialised inside the adapter (one `tokio::sync::Mutex`); the gateway also runs file targets with
//! concurrency 1, as two writers of one file would lose each other's rows.

pub mod config;
mod error;
mod format;
mod names;
mod sftp;
mod store;

use std::collections::BTreeSet;

use async_trait::async_trait;
use scimgate_adapter_sdk::mapping::Path;
use scimgate_adapter_sdk::{
    Account, AccountId, Adapter, AdapterError, Capabilities, DesiredAccount, SearchPage, SearchQuery,
};
use tokio::sync::Mutex;

pub use config::Config;
use config::{Destination, Mode};
use format::Dialect;
pub use format::{neutralise, unneutralise};
use names::NameTemplate;
use store::Store;

const MAX_PAGE: usize = 1000;

#[derive(Debug, Clone)]
enum Source {
    Attr(Path),
    Enabled,
    Entitlements,
    Action,
    IdentityId,
}

#[derive(Debug, Clone)]
struct Col {
    name: String,
    source: Source,
    required: bool,
}

/// What a row says happened to the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Upsert,
    Disable,
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Upsert => "upsert",
            Action::Disable => "disable",
            Action::Delete => "delete",
        }
    }
}

/// The flat-file adapter.
pub struct FileAdapter {
    cfg: Config,
    cols: Vec<Col>,
    key: usize,
    dialect: Dialect,
    template: NameTemplate,
    store: Store,
    /// Serialises every write; holds the `{seq}` counter.
    writer: Mutex<u64>,
}

impl std::fmt::Debug for FileAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAdapter")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl FileAdapter {
    /// Check the configuration and build the adapter. Nothing is contacted yet (see [`Adapter::health`]).
    pub fn new(cfg: Config) -> Result<FileAdapter, AdapterError> {
        if cfg.columns.is_empty() {
            return Err(AdapterError::config("columns is empty"));
        }
        let mut cols = Vec::with_capacity(cfg.columns.len());
        let mut seen = BTreeSet::new();
        for c in &cfg.columns {
            if c.name.is_empty() || !seen.insert(c.name.to_lowercase()) {
                return Err(AdapterError::config(format!(
                    "column name {:?} is empty or repeated",
                    c.name
                )));
            }
            let source = match c.source.as_str() {
                "$enabled" => Source::Enabled,
                "$entitlements" => Source::Entitlements,
                "$action" => Source::Action,
                "$identity_id" => Source::IdentityId,
                s if s.starts_with('$') => {
                    return Err(AdapterError::config(format!(
                        "column {}: unknown source {s} (use $enabled, $entitlements, $action, $identity_id)",
                        c.name
                    )));
                }
                s => Source::Attr(Path::parse(s).map_err(|e| AdapterError::config(format!("column {}: {e}", c.name)))?),
            };
            cols.push(Col {
                name: c.name.clone(),
                source,
                required: c.required,
            });
        }
        for special in ["$enabled", "$entitlements"] {
            if cfg.columns.iter().filter(|c| c.source == special).count() > 1 {
                return Err(AdapterError::config(format!(
                    "only one column may have source {special}"
                )));
            }
        }
        let key = cols
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(&cfg.key_column))
            .ok_or_else(|| AdapterError::config(format!("key_column {} is not a column", cfg.key_column)))?;
        if !matches!(cols[key].source, Source::Attr(_)) {
            return Err(AdapterError::config("key_column must read a SCIM attribute"));
        }
        cols[key].required = true;
        if cfg.entitlement_separator.is_empty() {
            return Err(AdapterError::config("entitlement_separator is empty"));
        }
        if cfg.enabled_value == cfg.disabled_value {
            return Err(AdapterError::config("enabled_value and disabled_value must differ"));
        }
        let dialect = Dialect::new(&cfg)?;
        names::check(&cfg.state_file)?;
        let template = NameTemplate::parse(&cfg.file_name)?;
        if cfg.mode == Mode::Delta && !template.is_unique() {
            return Err(AdapterError::config(
                "in delta mode file_name needs {timestamp}, {seq} or {uuid}, or each change overwrites the last",
            ));
        }
        if cfg.mode == Mode::Delta && !cols.iter().any(|c| matches!(c.source, Source::Action)) {
            return Err(AdapterError::config(
                "delta mode needs a column with source $action, or a delete cannot be told from an update",
            ));
        }
        if cfg.mode == Mode::Snapshot && cfg.schedule_seconds == 0 {
            return Err(AdapterError::config("schedule_seconds must be at least 1"));
        }
        let store = match &cfg.destination {
            Destination::Local { dir } => Store::Local(dir.clone()),
            Destination::Sftp(s) => Store::Sftp(Box::new(sftp::Sftp::new(s.clone())?)),
        };
        Ok(FileAdapter {
            cfg,
            cols,
            key,
            dialect,
            template,
            store,
            writer: Mutex::new(0),
        })
    }

    /// Snapshot mode: how often the gateway should call [`FileAdapter::write_snapshot`].
    pub fn schedule(&self) -> Option<std::time::Duration> {
        (self.cfg.mode == Mode::Snapshot).then(|| std::time::Duration::from_secs(self.cfg.schedule_seconds))
    }

    /// Deliver the whole population as a new file named by `file_name`; returns that name.
    pub async fn write_snapshot(&self) -> Result<String, AdapterError> {
        let mut seq = self.writer.lock().await;
        let rows = self.load().await?;
        let name = self.next_name(&mut seq)?;
        let bytes = self.dialect.write(self.header().as_deref(), &rows)?;
        self.store.write_atomic(&name, &bytes).await?;
        tracing::info!(target: "scimgate::adapter::file", file = %name, rows = rows.len(), "snapshot delivered");
        Ok(name)
    }

    fn header(&self) -> Option<Vec<String>> {
        self.cfg
            .header
            .then(|| self.cols.iter().map(|c| c.name.clone()).collect())
    }

    fn next_name(&self, seq: &mut u64) -> Result<String, AdapterError> {
        *seq += 1;
        let name = self
            .template
            .render(chrono::Utc::now(), *seq, &uuid::Uuid::new_v4().simple().to_string());
        names::check(&name)?;
        if name == self.cfg.state_file {
            return Err(AdapterError::config("file_name renders to the state_file's name"));
        }
        Ok(name)
    }

    /// The population file's rows (stored cells), without the header.
    async fn load(&self) -> Result<Vec<Vec<String>>, AdapterError> {
        let Some(bytes) = self.store.read(&self.cfg.state_file, self.cfg.max_file_bytes).await? else {
            return Ok(vec![]);
        };
        let mut records = self.dialect.read(&bytes)?;
        if let Some(h) = self.header() {
            if records.first() != Some(&h) && !records.is_empty() {
                return Err(AdapterError::config(format!(
                    "{} has other columns than configured; move it aside to start afresh",
                    self.cfg.state_file
                )));
            }
            if !records.is_empty() {
                records.remove(0);
            }
        }
        if let Some(r) = records.iter().find(|r| r.len() != self.cols.len()) {
            return Err(AdapterError::config(format!(
                "{} has a row of {} cells, not {}",
                self.cfg.state_file,
                r.len(),
                self.cols.len()
            )));
        }
        Ok(records)
    }

    async fn save(&self, mut rows: Vec<Vec<String>>) -> Result<(), AdapterError> {
        let k = self.key;
        rows.sort_by(|a, b| a[k].cmp(&b[k]));
        let bytes = self.dialect.write(self.header().as_deref(), &rows)?;
        self.store.write_atomic(&self.cfg.state_file, &bytes).await
    }

    /// The key value of `desired` (its stored cell is this, neutralised).
    fn key_of(&self, desired: &DesiredAccount) -> Result<String, AdapterError> {
        let Source::Attr(p) = &self.cols[self.key].source else {
            return Err(AdapterError::config("key_column must read a SCIM attribute"));
        };
        p.text(&desired.user).filter(|v| !v.is_empty()).ok_or_else(|| {
            AdapterError::rejected(format!(
                "the user has no value for the key column {}",
                self.cols[self.key].name
            ))
        })
    }

    fn find(&self, rows: &[Vec<String>], key: &str) -> Option<usize> {
        rows.iter().position(|r| format::unneutralise(&r[self.key]) == key)
    }

    /// Locate by `known`, then by the mapped key.
    fn locate(&self, rows: &[Vec<String>], known: Option<&AccountId>, desired: &DesiredAccount) -> Option<usize> {
        known
            .and_then(|k| self.find(rows, &k.primary))
            .or_else(|| self.key_of(desired).ok().and_then(|k| self.find(rows, &k)))
    }

    fn held(&self, row: &[String]) -> BTreeSet<String> {
        self.cols
            .iter()
            .position(|c| matches!(c.source, Source::Entitlements))
            .map(|i| {
                format::unneutralise(&row[i])
                    .split(self.cfg.entitlement_separator.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn build(&self, d: &DesiredAccount, held: &BTreeSet<String>, action: Action) -> Result<Vec<String>, AdapterError> {
        let sep = self.cfg.entitlement_separator.as_str();
        let mut row = Vec::with_capacity(self.cols.len());
        for c in &self.cols {
            let value = match &c.source {
                Source::Attr(p) => p.text(&d.user).unwrap_or_default(),
                Source::Enabled => if d.enabled {
                    &self.cfg.enabled_value
                } else {
                    &self.cfg.disabled_value
                }
                .clone(),
                Source::Entitlements => {
                    if let Some(bad) = d.entitlements.iter().find(|e| e.is_empty() || e.contains(sep)) {
                        return Err(AdapterError::rejected(format!(
                            "entitlement {bad:?} is empty or holds the separator {sep:?}"
                        )));
                    }
                    let keep = held.iter().filter(|e| !d.managed.contains(*e));
                    let all: BTreeSet<&String> = keep.chain(d.entitlements.iter()).collect();
                    all.into_iter().map(String::as_str).collect::<Vec<_>>().join(sep)
                }
                Source::Action => action.as_str().to_string(),
                Source::IdentityId => d.identity_id.clone(),
            };
            if c.required && value.is_empty() {
                return Err(AdapterError::rejected(format!(
                    "the user has no value for column {}",
                    c.name
                )));
            }
            row.push(self.dialect.cell(&c.name, &value)?);
        }
        Ok(row)
    }

    fn account(&self, row: &[String]) -> Account {
        let mut a = Account {
            id: AccountId::new(format::unneutralise(&row[self.key])),
            ..Default::default()
        };
        for (c, cell) in self.cols.iter().zip(row) {
            let v = format::unneutralise(cell);
            match c.source {
                Source::Enabled => a.enabled = Some(v == self.cfg.enabled_value),
                Source::Entitlements => a.entitlements = self.held(row),
                _ => {}
            }
            if !v.is_empty() {
                a.attributes.insert(c.name.clone(), vec![v.to_string()]);
            }
        }
        a
    }

    /// Delta mode: deliver one row as its own file.
    async fn deliver(&self, seq: &mut u64, row: Vec<String>) -> Result<(), AdapterError> {
        if self.cfg.mode != Mode::Delta {
            return Ok(());
        }
        let name = self.next_name(seq)?;
        let bytes = self.dialect.write(self.header().as_deref(), &[row])?;
        self.store.write_atomic(&name, &bytes).await?;
        tracing::info!(target: "scimgate::adapter::file", file = %name, "delta delivered");
        Ok(())
    }
}

#[async_trait]
impl Adapter for FileAdapter {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            disable: self.cols.iter().any(|c| matches!(c.source, Source::Enabled)),
            groups: self.cols.iter().any(|c| matches!(c.source, Source::Entitlements)),
            passwords: false,
            search_filters: false,
            max_batch: 1,
        }
    }

    async fn health(&self) -> Result<(), AdapterError> {
        self.store.health().await
    }

    async fn apply(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<AccountId, AdapterError> {
        let key = self.key_of(desired)?;
        let mut seq = self.writer.lock().await;
        let mut rows = self.load().await?;
        let at = self
            .find(&rows, &key)
            .or_else(|| known.and_then(|k| self.find(&rows, &k.primary)));
        let held = at.map(|i| self.held(&rows[i])).unwrap_or_default();
        let action = if desired.enabled {
            Action::Upsert
        } else {
            Action::Disable
        };
        let row = self.build(desired, &held, action)?;
        if at.is_some_and(|i| rows[i] == row) {
            return Ok(AccountId::new(key));
        }
        self.deliver(&mut seq, row.clone()).await?;
        match at {
            Some(i) => rows[i] = row,
            None => rows.push(row),
        }
        self.save(rows).await?;
        tracing::debug!(target: "scimgate::adapter::file", identity = %desired.identity_id, "row written");
        Ok(AccountId::new(key))
    }

    async fn remove(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<(), AdapterError> {
        let mut seq = self.writer.lock().await;
        let mut rows = self.load().await?;
        let Some(i) = self.locate(&rows, known, desired) else {
            return Ok(());
        };
        let mut row = rows.remove(i);
        if let Some(a) = self.cols.iter().position(|c| matches!(c.source, Source::Action)) {
            row[a] = Action::Delete.as_str().to_string();
        }
        self.deliver(&mut seq, row).await?;
        self.save(rows).await
    }

    async fn get(&self, known: Option<&AccountId>, desired: &DesiredAccount) -> Result<Option<Account>, AdapterError> {
        let rows = self.load().await?;
        Ok(self.locate(&rows, known, desired).map(|i| self.account(&rows[i])))
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, AdapterError> {
        let mut rows = self.load().await?;
        let k = self.key;
        rows.sort_by(|a, b| a[k].cmp(&b[k]));
        let filter = match &query.filter {
            Some((attr, value)) => {
                let Some(i) = self.cols.iter().position(|c| c.name.eq_ignore_ascii_case(attr)) else {
                    return Ok(SearchPage::default());
                };
                Some((i, value.as_str()))
            }
            None => None,
        };
        let matching: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| filter.is_none_or(|(i, v)| format::unneutralise(&r[i]) == v))
            .collect();
        let start: usize = match &query.cursor {
            Some(c) => c
                .parse()
                .map_err(|_| AdapterError::rejected(format!("bad search cursor {c:?}")))?,
            None => 0,
        };
        let limit = match query.limit {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let page: Vec<Account> = matching
            .iter()
            .skip(start)
            .take(limit)
            .map(|r| self.account(r))
            .collect();
        let end = start.saturating_add(page.len());
        Ok(SearchPage {
            accounts: page,
            next: (end < matching.len()).then(|| end.to_string()),
        })
    }
}
