//! Building each configured target's adapter from its `[targets.<kind>]` table.

use std::sync::Arc;

use crate::StartError;
use crate::config::TargetConfig;

use super::TargetSpec;

pub async fn build(targets: &[TargetConfig]) -> Result<Vec<TargetSpec>, StartError> {
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let err = |error: String| StartError::Target {
            target: t.id.clone(),
            error,
        };
        let adapter: Arc<dyn scimgate_adapter_sdk::Adapter> = {
            let _ = &t.ldap;
            return Err(err("adapters are not wired yet".into()));
        };
        #[allow(unreachable_code)]
        out.push(TargetSpec {
            id: t.id.clone(),
            adapter,
            concurrency: t.concurrency,
            max_attempts: t.max_attempts,
        });
    }
    Ok(out)
}
