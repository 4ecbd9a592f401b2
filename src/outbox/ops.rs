//! Operator actions on the outbox, shared by the CLI (`scimgate outbox …`) and the admin API.

use serde_json::{Value, json};

use scimgate_store::{AuditEntry, OutboxEntry, OutboxFilter, OutboxStore, StoreError};

pub async fn list(
    store: &dyn OutboxStore,
    tenant: &str,
    status: Option<String>,
    target: Option<String>,
    identity: Option<String>,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    let limit = limit.max(1);
    while out.len() < limit {
        let page = store
            .outbox_list(
                tenant,
                &OutboxFilter {
                    status: status.clone(),
                    target: target.clone(),
                    identity: identity.clone(),
                    after: after.clone(),
                    limit: (limit - out.len()).min(1000),
                },
            )
            .await?;
        let done = page.len() < (limit - out.len()).min(1000);
        after = page.last().map(|r| r.id.clone());
        out.extend(page);
        if done || after.is_none() {
            break;
        }
    }
    Ok(out)
}

/// Put a dead letter back in the queue, with an audit record naming who did it.
pub async fn replay(store: &dyn OutboxStore, tenant: &str, id: &str, actor: &str) -> Result<bool, StoreError> {
    let Some(row) = store.outbox_get(tenant, id).await? else {
        return Ok(false);
    };
    let audit = AuditEntry {
        kind: "dead_letter_replayed".into(),
        actor: actor.to_string(),
        identity_id: Some(row.identity_id.clone()),
        request_id: None,
        data: json!({"outbox_id": row.id, "target": row.target, "attempts": row.attempts, "last_error": row.last_error}),
    };
    let now = scimgate_scim::resource::format_datetime(chrono::Utc::now());
    store.replay(tenant, id, &now, &[audit]).await
}

/// A row as operators see it: never the sealed secret, only whether there is one. `full` adds the payload.
pub fn to_json(r: &OutboxEntry, full: bool) -> Value {
    let mut v = json!({
        "id": r.id,
        "identity_id": r.identity_id,
        "target": r.target,
        "operation": r.operation,
        "priority": r.priority,
        "status": r.status,
        "attempts": r.attempts,
        "next_at": r.next_at,
        "last_error": r.last_error,
        "created": r.created,
        "updated": r.updated,
        "done_at": r.done_at,
        "plan_id": r.plan_id,
        "has_secret": r.secret.is_some(),
    });
    if full {
        v["payload"] = serde_json::from_str(&r.payload).unwrap_or(Value::Null);
    }
    v
}
