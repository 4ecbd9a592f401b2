//! Building each configured target's adapter from its `[targets.<kind>]` table. Construction validates the
//! mapping and the settings but does not connect: a target that is down at start-up is a circuit to open, not a
//! reason to refuse to start (the IdP's writes must still be accepted and queued).

use std::sync::Arc;

use scimgate_adapter_sdk::{Adapter, AdapterError};

use crate::StartError;
use crate::config::TargetConfig;

use super::TargetSpec;

type Built = (Arc<dyn Adapter>, Option<Arc<scimgate_adapter_file::FileAdapter>>);

fn adapter(t: &TargetConfig) -> Result<Built, AdapterError> {
    if let Some(c) = &t.file {
        let f = Arc::new(scimgate_adapter_file::FileAdapter::new(c.clone())?);
        let snapshots = f.schedule().is_some().then(|| f.clone());
        return Ok((f, snapshots));
    }
    Ok((adapter_of(t)?, None))
}

fn adapter_of(t: &TargetConfig) -> Result<Arc<dyn Adapter>, AdapterError> {
    Ok(if let Some(c) = &t.ldap {
        Arc::new(scimgate_adapter_ldap::LdapAdapter::new(c.clone())?)
    } else if let Some(c) = &t.sql {
        Arc::new(scimgate_adapter_sql::SqlAdapter::new(c.clone())?)
    } else if let Some(c) = &t.rest {
        Arc::new(scimgate_adapter_rest::RestAdapter::new(c.clone())?)
    } else if let Some(c) = &t.scim {
        Arc::new(scimgate_adapter_scim::ScimAdapter::new(c.clone())?)
    } else {
        return Err(AdapterError::config("no adapter table"));
    })
}

pub async fn build(targets: &[TargetConfig]) -> Result<Vec<TargetSpec>, StartError> {
    targets
        .iter()
        .map(|t| {
            let (adapter, snapshots) = adapter(t).map_err(|e| StartError::Target {
                target: t.id.clone(),
                error: e.message,
            })?;
            Ok(TargetSpec {
                id: t.id.clone(),
                adapter,
                concurrency: t.concurrency,
                max_attempts: t.max_attempts,
                snapshots,
            })
        })
        .collect()
}
