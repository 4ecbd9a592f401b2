//! Loading the schema directory into a [`Registry`].

use std::path::Path;

use scimgate_scim::schema::{Registry, SchemaDoc};

/// The file that lists the resource types; every other `*.json` file is one schema.
pub const RESOURCE_TYPES_FILE: &str = "resource-types.json";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read schema directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("{path}: line {line}, column {column}: {msg}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{0} is missing")]
    NoResourceTypes(String),
    #[error(transparent)]
    Schema(#[from] scimgate_scim::schema::SchemaError),
}

pub fn load(dir: &Path) -> Result<Registry, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    let mut types = None;
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::File {
            path: path.display().to_string(),
            source,
        })?;
        let json = serde_json::from_str(&text).map_err(|e| LoadError::Json {
            path: path.display().to_string(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        let doc = SchemaDoc {
            source: path.display().to_string(),
            json,
        };
        if path.file_name().is_some_and(|n| n == RESOURCE_TYPES_FILE) {
            types = Some(doc);
        } else {
            docs.push(doc);
        }
    }
    let types = types.ok_or_else(|| LoadError::NoResourceTypes(dir.join(RESOURCE_TYPES_FILE).display().to_string()))?;
    Ok(Registry::build(docs, &types)?)
}
