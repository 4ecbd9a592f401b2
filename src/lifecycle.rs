//! The SCIM service's side of the lifecycle: gathering what the engine needs for an identity (its prior
//! state, groups, manager, exceptions, pending approvals), asking [`Engine::decide`], and turning a group push
//! that would create an enforce-mode SoD conflict into a 403.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use scimgate_scim::patch::MemberOp;
use scimgate_scim::schema::{ENTERPRISE_URN, ResourceKind};
use scimgate_store::{DecisionInputs, Effects, IdentityState, StoreError, Stored};

use crate::engine::{Decision, Engine, EngineError, Subject};
use crate::http::error::ApiError;
use crate::service::ScimService;

pub(crate) fn engine_err(e: EngineError) -> ApiError {
    match e {
        EngineError::Forbidden(m) => ApiError::Forbidden(m),
        EngineError::Conflict(m) => ApiError::Protocol(scimgate_scim::ProtocolError::Conflict(m)),
        other => ApiError::internal(other),
    }
}

/// A user about to change: its id, new document, new groups, whether it is being archived, and whether it is new
/// (no lifecycle state yet).
pub(crate) struct Change<'a> {
    pub id: &'a str,
    pub doc: &'a Map<String, Value>,
    pub groups: &'a [String],
    pub archived: bool,
    pub fresh: bool,
    /// The document or password changed (accounts are refreshed downstream).
    pub changed: bool,
    /// The identity's decision inputs, when the caller read them with the user
    /// ([`LifecycleStore::user_for_change`](scimgate_store::LifecycleStore::user_for_change)); otherwise they are
    /// read here, in one statement. Unused for a fresh identity.
    pub inputs: Option<DecisionInputs>,
}

/// How a membership change affects one user: the groups before and after.
struct Affected {
    user: Stored,
    before: Vec<String>,
    after: Vec<String>,
}

impl ScimService {
    /// The userName of the identity's manager (enterprise `manager.value`), the manager-stage approver.
    async fn manager_name(&self, tenant: &str, doc: &Map<String, Value>) -> Result<Option<String>, ApiError> {
        let Some(mid) = doc
            .get(ENTERPRISE_URN)
            .and_then(|e| e.get("manager"))
            .and_then(|m| m.get("value"))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        Ok(self
            .store
            .get(tenant, ResourceKind::User, mid)
            .await?
            .and_then(|m| m.doc.get("userName").and_then(Value::as_str).map(str::to_string)))
    }

    pub(crate) async fn group_names(&self, tenant: &str, user: &str) -> Result<Vec<String>, ApiError> {
        Ok(self
            .store
            .groups_of(tenant, user)
            .await?
            .into_iter()
            .map(|(_, name)| name)
            .collect())
    }

    /// Decide on a user whose document (or groups) is about to change.
    pub(crate) async fn decide_user(
        &self,
        tenant: &str,
        c: Change<'_>,
        cause: &str,
    ) -> Result<Option<Decision>, ApiError> {
        let Change {
            id,
            doc,
            groups,
            archived,
            fresh,
            changed,
            inputs,
        } = c;
        let Some(engine) = &self.engine else { return Ok(None) };
        let (prior, exceptions, pending) = if fresh {
            (None, vec![], vec![])
        } else {
            let inputs = match inputs {
                Some(i) => i,
                None => self.store.decision_inputs(tenant, id).await?,
            };
            (inputs.state, inputs.exceptions, inputs.pending)
        };
        let manager = self.manager_name(tenant, doc).await?;
        let subject = Subject {
            tenant,
            id,
            doc,
            groups,
            archived,
            manager,
            changed,
        };
        engine
            .decide(&subject, prior.as_ref(), &exceptions, &pending, cause)
            .map(Some)
            .map_err(engine_err)
    }

    /// A rehire: the archived identity is reused, its entitlements derived afresh. Old approvals are cancelled,
    /// old SoD exceptions dropped, and the leaver clock stopped; what it still holds is revoked unless the new
    /// record justifies it.
    pub(crate) async fn decide_rehire(
        &self,
        tenant: &str,
        id: &str,
        doc: &Map<String, Value>,
    ) -> Result<Option<Decision>, ApiError> {
        let Some(engine) = &self.engine else { return Ok(None) };
        let prior = self.store.identity_state(tenant, id).await?.map(|p| IdentityState {
            leaver_since: None,
            ..p
        });
        let stale = self.store.approvals(tenant, Some("pending"), Some(id)).await?;
        let manager = self.manager_name(tenant, doc).await?;
        let subject = Subject {
            tenant,
            id,
            doc,
            groups: &[],
            archived: false,
            manager,
            changed: true,
        };
        let mut d = engine
            .decide(&subject, prior.as_ref(), &[], &[], "rehire")
            .map_err(engine_err)?;
        d.effects.cancel_approvals.extend(stale.into_iter().map(|a| a.id));
        d.effects.clear_exceptions = true;
        Ok(Some(d))
    }

    /// Effects of a group change on its member users. `old_name`/`new_name` are the group's displayName before
    /// and after (None: the group did not exist / no longer exists). A change that would create a conflict with
    /// an enforce-mode SoD rule is refused with 403 naming the rule; nothing is stored.
    pub(crate) async fn membership_effects(
        &self,
        tenant: &str,
        group_id: Option<&str>,
        old_name: Option<&str>,
        new_name: Option<&str>,
        ops: &[MemberOp],
    ) -> Result<Vec<Effects>, ApiError> {
        let Some(engine) = &self.engine else { return Ok(vec![]) };
        // Adding or removing some members of a group that keeps its name affects only those members: look up
        // whether each is a member now, not the whole member list (a PATCH to a 100k-member group stays cheap).
        let delta_only = old_name.is_some()
            && old_name == new_name
            && ops
                .iter()
                .all(|op| matches!(op, MemberOp::Add(_) | MemberOp::Remove(_)));
        // The mentioned members' groups, when looked up here: also each one's groups before the change.
        let mut prefetched: Option<std::collections::HashMap<String, Vec<(String, String)>>> = None;
        let current: BTreeSet<String> = match group_id {
            Some(g) if delta_only => {
                let mentioned: Vec<&str> = ops
                    .iter()
                    .flat_map(|op| match op {
                        MemberOp::Add(list) => list.iter().map(|m| m.value.as_str()).collect::<Vec<_>>(),
                        MemberOp::Remove(ids) => ids.iter().map(String::as_str).collect(),
                        _ => Vec::new(),
                    })
                    .collect();
                let groups = self.store.groups_of_many(tenant, &mentioned).await?;
                let current = mentioned
                    .into_iter()
                    .filter(|id| groups.get(*id).is_some_and(|gs| gs.iter().any(|(gid, _)| gid == g)))
                    .map(str::to_string)
                    .collect();
                prefetched = Some(groups);
                current
            }
            Some(g) if old_name.is_some() => self
                .store
                .members(tenant, g)
                .await?
                .into_iter()
                .map(|m| m.value)
                .collect(),
            _ => BTreeSet::new(),
        };
        let mut after = current.clone();
        for op in ops {
            match op {
                MemberOp::Add(list) => after.extend(list.iter().map(|m| m.value.clone())),
                MemberOp::Replace(list) => after = list.iter().map(|m| m.value.clone()).collect(),
                MemberOp::Remove(ids) => ids.iter().for_each(|i| {
                    after.remove(i);
                }),
                MemberOp::RemoveWhere(_) => {}
            }
        }
        if new_name.is_none() {
            after.clear();
        }
        let renamed = old_name.is_some() && new_name.is_some() && old_name != new_name;
        let affected_ids: BTreeSet<&String> = current
            .symmetric_difference(&after)
            .chain(if renamed {
                after.intersection(&current).collect::<Vec<_>>()
            } else {
                vec![]
            })
            .collect();
        let mut affected = Vec::new();
        for uid in affected_ids {
            let Some(user) = self.store.get(tenant, ResourceKind::User, uid).await? else {
                continue; // a nested group, or a member that is not (yet) a user
            };
            let before = match &prefetched {
                Some(m) => m
                    .get(uid.as_str())
                    .map(|gs| gs.iter().map(|(_, name)| name.clone()).collect())
                    .unwrap_or_default(),
                None => self.group_names(tenant, uid).await?,
            };
            let mut groups: Vec<String> = before.clone();
            if current.contains(uid)
                && let Some(old) = old_name
                && let Some(pos) = groups.iter().position(|g| g == old)
            {
                groups.remove(pos);
            }
            if after.contains(uid)
                && let Some(new) = new_name
            {
                groups.push(new.to_string());
            }
            affected.push(Affected {
                user,
                before,
                after: groups,
            });
        }
        let mut effects = Vec::with_capacity(affected.len());
        for a in affected {
            let user = &a.user;
            let Some(d) = self
                .decide_user(
                    tenant,
                    Change {
                        id: &user.id,
                        doc: &user.doc,
                        groups: &a.after,
                        archived: false,
                        fresh: false,
                        changed: false,
                        inputs: None,
                    },
                    "membership",
                )
                .await?
            else {
                continue;
            };
            if !d.refused.is_empty() {
                let was = self
                    .refused_with(engine, tenant, &user.id, &user.doc, &a.before)
                    .await?;
                let new: Vec<&String> = d.refused.iter().filter(|r| !was.contains(*r)).collect();
                if let Some(rule) = new.first() {
                    let name = user.doc.get("userName").and_then(Value::as_str).unwrap_or(&user.id);
                    return Err(ApiError::Forbidden(format!(
                        "refused by Separation-of-Duties rule {rule}: this membership would give {name} conflicting entitlements"
                    )));
                }
            }
            effects.push(d.effects);
        }
        Ok(effects)
    }

    /// The SoD rules that refuse grants for this user with these groups (no effects).
    async fn refused_with(
        &self,
        engine: &Engine,
        tenant: &str,
        id: &str,
        doc: &Map<String, Value>,
        groups: &[String],
    ) -> Result<HashSet<String>, ApiError> {
        let DecisionInputs {
            state: prior,
            exceptions,
            ..
        } = self.store.decision_inputs(tenant, id).await?;
        let subject = Subject {
            tenant,
            id,
            doc,
            groups,
            archived: false,
            manager: None,
            changed: false,
        };
        let plan = Engine::preview(&engine.policy(), &subject, prior.as_ref(), &exceptions, engine.now())
            .map_err(engine_err)?;
        Ok(plan.items.into_iter().filter_map(|i| i.refused).collect())
    }

    /// Re-evaluate one identity (a due timer, a policy change): effects written on their own.
    pub async fn reevaluate(&self, tenant: &str, id: &str, cause: &str) -> Result<Option<Decision>, ApiError> {
        for _ in 0..8 {
            let Some((user, archived)) = self.store.get_with_archived(tenant, id).await? else {
                return Ok(None);
            };
            let groups = if archived {
                vec![]
            } else {
                self.group_names(tenant, id).await?
            };
            let Some(d) = self
                .decide_user(
                    tenant,
                    Change {
                        id,
                        doc: &user.doc,
                        groups: &groups,
                        archived,
                        fresh: false,
                        changed: false,
                        inputs: None,
                    },
                    cause,
                )
                .await?
            else {
                return Ok(None);
            };
            match self.store.apply_effects(tenant, std::slice::from_ref(&d.effects)).await {
                Ok(()) => return Ok(Some(d)),
                Err(StoreError::StateConflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::StateConflict.into())
    }

    /// Run what is due: identity timers (start dates, end dates, leaver revocations, exception expiries) and
    /// approval escalations and expiries. Returns how many things it did.
    pub async fn tick(&self) -> Result<usize, ApiError> {
        let Some(engine) = &self.engine else { return Ok(0) };
        let now = scimgate_scim::resource::format_datetime(engine.now());
        let mut done = 0;
        // One identity or request that fails is logged and skipped: it must not hold up everyone else's timers.
        for (tenant, id) in self.store.due_identities(&now, 1000).await? {
            match self.reevaluate(&tenant, &id, "timer").await {
                Ok(Some(_)) => done += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tenant = %tenant, identity = %id, "lifecycle timer failed; will retry on the next tick");
                    e.log();
                }
            }
        }
        for (tenant, rec) in self.store.due_approvals(&now, 1000).await? {
            let outcome = match engine.tick_approval(&rec).map_err(engine_err) {
                Ok(Some(e)) => self.store.apply_effects(&tenant, &[e]).await.map_err(ApiError::from),
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) | Err(ApiError::Protocol(scimgate_scim::ProtocolError::Conflict(_))) => done += 1,
                Err(e) => {
                    tracing::error!(tenant = %tenant, approval = %rec.id, "approval deadline failed; will retry");
                    e.log();
                }
            }
        }
        crate::metrics::METRICS.lifecycle_timers.inc_by(done as u64);
        Ok(done)
    }
}
