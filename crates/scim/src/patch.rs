//! PATCH (RFC 7644 §3.5.2) on canonical documents.
//!
//! Accepted forms, all with case-insensitive op names (`Add`, `Replace`, `Remove` as Entra sends them):
//! - a path to an attribute, a sub-attribute, an extension URN or a URN-qualified attribute;
//! - a value path with a filter: `emails[type eq "work"].value`, `members[value eq "id"]`;
//! - no path, with a value object whose keys are attribute names, dotted sub-attribute paths
//!   (`name.givenName`) or URN-qualified paths, in one object (Entra's path-less replace);
//! - Okta's group rename, which re-sends the group's own `id`: an `id` equal to the current one is ignored.
//!
//! Decisions where the RFC leaves room (documented in README.md too):
//! - `add`/`replace` through a value filter that matches no element creates the element when the filter is a
//!   conjunction of `eq` tests on sub-attributes (Entra adds `emails[type eq "work"].value` to a user with no
//!   work email); any other filter that matches nothing is `400 noTarget`. It never succeeds silently.
//! - `remove` through a value filter that matches nothing changes nothing and succeeds: removal is idempotent,
//!   so a retried remove of a member that is already gone does not fail a sync.
//! - `remove` of a multi-valued attribute with a `value` list removes just those values (Entra's
//!   `{"op":"Remove","path":"members","value":[{"value":"id"}]}`).
//!
//! Group membership is not patched here: [`split_members`] turns member operations into [`MemberOp`]s that the
//! store applies as row inserts and deletes, so adding one member to a group of 100k is one insert.

use serde_json::{Map, Value};

use crate::error::{ProtocolError, Result};
use crate::eval::matches_element;
use crate::filter::{AttrPath, CompValue, CompareOp, Filter, FilterLimits, PatchPath, parse_patch_path};
use crate::resource::coerce_attr;
use crate::schema::{AttrType, Attribute, Home, Mutability, Registry, ResourceKind, Schema, Target};

pub const PATCH_OP_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Replace,
    Remove,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// Parse a PatchOp request body. `max_ops` bounds the number of operations.
pub fn parse_request(body: Value, limits: &FilterLimits, max_ops: usize) -> Result<Vec<PatchOp>> {
    let Value::Object(body) = body else {
        return Err(ProtocolError::InvalidSyntax(
            "a PATCH body must be a JSON object".into(),
        ));
    };
    let get = |name: &str| body.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let schemas = get("schemas").and_then(Value::as_array);
    if !schemas.is_some_and(|s| {
        s.iter()
            .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(PATCH_OP_URN)))
    }) {
        return Err(ProtocolError::InvalidSyntax(format!(
            "schemas must be [\"{PATCH_OP_URN}\"]"
        )));
    }
    let ops = get("Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ProtocolError::InvalidSyntax("Operations must be an array".into()))?;
    if ops.is_empty() {
        return Err(ProtocolError::InvalidSyntax("Operations is empty".into()));
    }
    if ops.len() > max_ops {
        return Err(ProtocolError::InvalidValue(format!(
            "at most {max_ops} operations per PATCH"
        )));
    }
    ops.iter().map(|o| parse_op(o, limits)).collect()
}

fn parse_op(o: &Value, limits: &FilterLimits) -> Result<PatchOp> {
    let o = o
        .as_object()
        .ok_or_else(|| ProtocolError::InvalidSyntax("each operation must be an object".into()))?;
    let get = |name: &str| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let op = match get("op")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("add") => OpKind::Add,
        Some("replace") => OpKind::Replace,
        Some("remove") => OpKind::Remove,
        _ => {
            return Err(ProtocolError::InvalidSyntax("op must be add, replace or remove".into()));
        }
    };
    let path = match get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.trim().is_empty() => None,
        Some(Value::String(p)) => Some(parse_patch_path(p.trim(), limits).map_err(ProtocolError::path)?),
        Some(_) => return Err(ProtocolError::InvalidPath("path must be a string".into())),
    };
    let value = get("value").cloned();
    if op != OpKind::Remove && value.is_none() {
        return Err(ProtocolError::InvalidValue("add and replace need a value".into()));
    }
    if op == OpKind::Remove && path.is_none() {
        return Err(ProtocolError::NoTarget("remove needs a path".into()));
    }
    Ok(PatchOp { op, path, value })
}

/// Apply operations to a canonical document (without `id`/`meta`). `id` is the resource's id, for the Okta
/// rename echo. The caller validates the result with `normalize` and `check_immutable`.
pub fn apply(
    reg: &Registry,
    kind: ResourceKind,
    id: &str,
    doc: &mut Map<String, Value>,
    ops: &[PatchOp],
) -> Result<()> {
    let cx = Cx { reg, kind, id };
    for op in ops {
        match &op.path {
            Some(path) => cx.apply_path(doc, op.op, path, op.value.clone())?,
            None => {
                let Some(Value::Object(value)) = op.value.clone() else {
                    return Err(ProtocolError::InvalidValue(
                        "without a path, the value must be an object".into(),
                    ));
                };
                for (key, v) in value {
                    if key.eq_ignore_ascii_case("schemas") || key.eq_ignore_ascii_case("meta") {
                        continue;
                    }
                    let limits = FilterLimits::default();
                    let path = parse_patch_path(&key, &limits)
                        .map_err(|_| ProtocolError::InvalidValue(format!("{key:?} is not an attribute name")))?;
                    if path.filter.is_some() {
                        return Err(ProtocolError::InvalidValue(format!(
                            "{key:?}: value keys cannot hold filters"
                        )));
                    }
                    cx.apply_path(doc, op.op, &path, Some(v))?;
                }
            }
        }
    }
    Ok(())
}

struct Cx<'a> {
    reg: &'a Registry,
    kind: ResourceKind,
    id: &'a str,
}

impl Cx<'_> {
    fn apply_path(
        &self,
        doc: &mut Map<String, Value>,
        op: OpKind,
        path: &PatchPath,
        value: Option<Value>,
    ) -> Result<()> {
        let target = self
            .reg
            .resolve(self.kind, &path.attr)
            .ok_or_else(|| ProtocolError::InvalidPath(format!("unknown attribute {}", path.attr)))?;
        let r = match target {
            Target::Extension(schema) => return self.apply_extension(doc, op, schema, path, value),
            Target::Attr(r) => r,
        };
        if r.attr.name == "id" && r.home == Home::Common {
            // Okta's rename echoes the id; the same id is no change at all.
            return match value {
                Some(Value::String(v)) if v == self.id && op != OpKind::Remove => Ok(()),
                _ => Err(ProtocolError::Mutability("id is readOnly".into())),
            };
        }
        if r.attr.mutability == Mutability::ReadOnly || r.sub.is_some_and(|s| s.mutability == Mutability::ReadOnly) {
            return Err(ProtocolError::Mutability(format!("{} is readOnly", path.attr)));
        }
        let container = match r.home {
            Home::Extension(urn) => {
                let entry = doc.entry(urn.to_string()).or_insert_with(|| Value::Object(Map::new()));
                match entry {
                    Value::Object(m) => m,
                    _ => {
                        return Err(ProtocolError::InvalidValue(format!("{urn} must be an object")));
                    }
                }
            }
            _ => &mut *doc,
        };
        let sub = match (&path.filter, &path.sub, r.sub) {
            (Some(_), Some(s), None) => Some(
                r.attr
                    .sub(s)
                    .ok_or_else(|| ProtocolError::InvalidPath(format!("unknown sub-attribute {s}")))?,
            ),
            (Some(_), None, None) => None,
            (None, None, s) => s,
            _ => {
                return Err(ProtocolError::InvalidPath(format!(
                    "{} is not a valid path",
                    path_text(path)
                )));
            }
        };
        if let Some(s) = sub
            && s.mutability == Mutability::ReadOnly
        {
            return Err(ProtocolError::Mutability(format!("{} is readOnly", s.name)));
        }
        let result = match &path.filter {
            Some(filter) => {
                if !(r.attr.multi_valued && r.attr.kind == AttrType::Complex) {
                    return Err(ProtocolError::InvalidPath(format!(
                        "{} is not a multi-valued complex attribute",
                        r.attr.name
                    )));
                }
                let filter = crate::eval::resolve(
                    self.reg,
                    self.kind,
                    Filter::ValuePath {
                        path: path.attr.clone(),
                        filter: Box::new(filter.clone()),
                    },
                )
                .map_err(|e| ProtocolError::InvalidPath(e.to_string()))?;
                let Filter::ValuePath { filter, .. } = filter else {
                    return Err(ProtocolError::InvalidPath("bad value filter".into()));
                };
                filtered(container, op, r.attr, &filter, sub, value)
            }
            None => match sub {
                Some(sub) => on_sub(container, op, r.attr, sub, value),
                None => on_attr(container, op, r.attr, value),
            },
        };
        if let Home::Extension(urn) = r.home
            && doc.get(urn).and_then(Value::as_object).is_some_and(Map::is_empty)
        {
            doc.remove(urn);
        }
        result
    }

    fn apply_extension(
        &self,
        doc: &mut Map<String, Value>,
        op: OpKind,
        schema: &Schema,
        path: &PatchPath,
        value: Option<Value>,
    ) -> Result<()> {
        if path.filter.is_some() || path.sub.is_some() {
            return Err(ProtocolError::InvalidPath(format!(
                "{} is not a valid path",
                path_text(path)
            )));
        }
        match (op, value) {
            (OpKind::Remove, _) => {
                doc.remove(&schema.id);
                Ok(())
            }
            (_, Some(Value::Object(inner))) => {
                for (k, v) in inner {
                    if k.eq_ignore_ascii_case("schemas") {
                        continue;
                    }
                    let p = PatchPath {
                        attr: parse_ext_key(&schema.id, &k),
                        filter: None,
                        sub: None,
                    };
                    self.apply_path(doc, op, &p, Some(v))?;
                }
                Ok(())
            }
            _ => Err(ProtocolError::InvalidValue(format!(
                "the value for {} must be an object",
                schema.id
            ))),
        }
    }
}

/// `manager.value` inside an extension object → the URN-qualified AttrPath.
fn parse_ext_key(urn: &str, key: &str) -> AttrPath {
    let (attr, sub) = match key.split_once('.') {
        Some((a, s)) => (a.to_string(), Some(s.to_string())),
        None => (key.to_string(), None),
    };
    AttrPath {
        urn: Some(urn.to_string()),
        attr,
        sub,
    }
}

fn path_text(p: &PatchPath) -> String {
    p.to_string()
}

fn need(value: Option<Value>) -> Result<Value> {
    value.ok_or_else(|| ProtocolError::InvalidValue("a value is required".into()))
}

/// add/replace/remove of a whole attribute.
fn on_attr(container: &mut Map<String, Value>, op: OpKind, attr: &Attribute, value: Option<Value>) -> Result<()> {
    match op {
        OpKind::Remove => {
            match (attr.multi_valued, value) {
                // Entra: remove just the listed values.
                (true, Some(v)) if !v.is_null() => {
                    let Some(remove) = coerce_attr(attr, v)? else {
                        return Ok(());
                    };
                    let remove = remove.as_array().cloned().unwrap_or_default();
                    if let Some(Value::Array(items)) = container.get_mut(&attr.name) {
                        items.retain(|item| !remove.iter().any(|r| same_element(attr, item, r)));
                        if items.is_empty() {
                            container.remove(&attr.name);
                        }
                    }
                }
                _ => {
                    container.remove(&attr.name);
                }
            }
            Ok(())
        }
        OpKind::Add | OpKind::Replace => {
            let Some(v) = coerce_attr(attr, need(value)?)? else {
                if op == OpKind::Replace {
                    container.remove(&attr.name);
                }
                return Ok(());
            };
            match (attr.multi_valued, attr.kind, op) {
                (true, _, OpKind::Add) => {
                    let new = v.as_array().cloned().unwrap_or_default();
                    let entry = container
                        .entry(attr.name.clone())
                        .or_insert_with(|| Value::Array(vec![]));
                    let Value::Array(items) = entry else {
                        return Err(ProtocolError::InvalidValue(format!("{} is not a list", attr.name)));
                    };
                    for n in new {
                        if is_primary(&n) {
                            clear_primary(items);
                        }
                        if let Some(existing) = items.iter_mut().find(|i| same_element(attr, i, &n)) {
                            *existing = n;
                        } else {
                            items.push(n);
                        }
                    }
                }
                (false, AttrType::Complex, _) => {
                    let entry = container
                        .entry(attr.name.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    merge(entry, v);
                }
                _ => {
                    container.insert(attr.name.clone(), v);
                }
            }
            Ok(())
        }
    }
}

/// add/replace/remove of a sub-attribute, without a filter (`name.givenName`, or every element's `emails.type`).
fn on_sub(
    container: &mut Map<String, Value>,
    op: OpKind,
    attr: &Attribute,
    sub: &Attribute,
    value: Option<Value>,
) -> Result<()> {
    let v = match op {
        OpKind::Remove => None,
        _ => coerce_attr(sub, need(value)?)?,
    };
    if !attr.multi_valued {
        let entry = container
            .entry(attr.name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            match v {
                Some(v) => {
                    m.insert(sub.name.clone(), v);
                }
                None => {
                    m.remove(&sub.name);
                }
            }
            if m.is_empty() {
                container.remove(&attr.name);
            }
        }
        return Ok(());
    }
    let Some(Value::Array(items)) = container.get_mut(&attr.name) else {
        return match v {
            None => Ok(()),
            Some(_) => Err(ProtocolError::NoTarget(format!(
                "{} has no values to set {} on",
                attr.name, sub.name
            ))),
        };
    };
    for item in items.iter_mut().filter_map(Value::as_object_mut) {
        match &v {
            Some(v) => {
                item.insert(sub.name.clone(), v.clone());
            }
            None => {
                item.remove(&sub.name);
            }
        }
    }
    Ok(())
}

/// Operations through a value filter.
fn filtered(
    container: &mut Map<String, Value>,
    op: OpKind,
    attr: &Attribute,
    filter: &Filter,
    sub: Option<&Attribute>,
    value: Option<Value>,
) -> Result<()> {
    let coerced = match (op, sub) {
        (OpKind::Remove, _) => None,
        (_, Some(s)) => coerce_attr(s, need(value)?)?,
        (_, None) => {
            let v = need(value)?;
            let v = match v {
                Value::Array(mut a) if a.len() == 1 => a.remove(0),
                v => v,
            };
            crate::resource::coerce_single(attr, v)?
        }
    };
    let items = match container.get_mut(&attr.name) {
        Some(Value::Array(items)) => items,
        _ => {
            container.remove(&attr.name);
            return create_for_filter(container, op, attr, filter, sub, coerced);
        }
    };
    let hits: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, el)| el.as_object().is_some_and(|o| matches_element(attr, filter, o)))
        .map(|(i, _)| i)
        .collect();
    if hits.is_empty() {
        return create_for_filter(container, op, attr, filter, sub, coerced);
    }
    match op {
        OpKind::Remove => {
            match sub {
                Some(s) => {
                    for i in hits {
                        if let Some(o) = items[i].as_object_mut() {
                            o.remove(&s.name);
                        }
                    }
                }
                None => {
                    let mut i = 0;
                    items.retain(|_| {
                        let keep = !hits.contains(&i);
                        i += 1;
                        keep
                    });
                }
            }
            if items.is_empty() {
                container.remove(&attr.name);
            }
        }
        OpKind::Add | OpKind::Replace => {
            let Some(v) = coerced else { return Ok(()) };
            if sub.is_none() && is_primary(&v) || sub.is_some_and(|s| s.name == "primary") && v == Value::Bool(true) {
                clear_primary(items);
            }
            for i in hits {
                match sub {
                    Some(s) => {
                        if let Some(o) = items[i].as_object_mut() {
                            o.insert(s.name.clone(), v.clone());
                        }
                    }
                    None if op == OpKind::Replace => items[i] = v.clone(),
                    None => merge(&mut items[i], v.clone()),
                }
            }
        }
    }
    Ok(())
}

/// A value filter matched nothing: create the element for `eq` conjunctions, otherwise noTarget.
fn create_for_filter(
    container: &mut Map<String, Value>,
    op: OpKind,
    attr: &Attribute,
    filter: &Filter,
    sub: Option<&Attribute>,
    value: Option<Value>,
) -> Result<()> {
    if op == OpKind::Remove {
        return Ok(());
    }
    let mut element = Map::new();
    if !eq_conjunction(filter, &mut element) {
        return Err(ProtocolError::NoTarget(format!(
            "no value of {} matches the filter",
            attr.name
        )));
    }
    let Some(v) = value else { return Ok(()) };
    match (sub, v) {
        (Some(s), v) => {
            element.insert(s.name.clone(), v);
        }
        (None, Value::Object(o)) => element.extend(o),
        (None, _) => {
            return Err(ProtocolError::InvalidValue(format!("{} values are objects", attr.name)));
        }
    }
    let entry = container
        .entry(attr.name.clone())
        .or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(items) = entry {
        let new = Value::Object(element);
        if is_primary(&new) {
            clear_primary(items);
        }
        items.push(new);
    }
    Ok(())
}

fn eq_conjunction(f: &Filter, out: &mut Map<String, Value>) -> bool {
    match f {
        Filter::And(a, b) => eq_conjunction(a, out) && eq_conjunction(b, out),
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value,
        } => {
            let name = path.sub.clone().unwrap_or_else(|| path.attr.clone());
            let v = match value {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::Num(n) => Value::Number(n.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Null => return false,
            };
            out.insert(name, v);
            true
        }
        _ => false,
    }
}

fn merge(target: &mut Value, v: Value) {
    match (target, v) {
        (Value::Object(t), Value::Object(v)) => t.extend(v),
        (t, v) => *t = v,
    }
}

fn is_primary(v: &Value) -> bool {
    v.get("primary") == Some(&Value::Bool(true))
}

fn clear_primary(items: &mut [Value]) {
    for i in items.iter_mut().filter_map(Value::as_object_mut) {
        if i.get("primary") == Some(&Value::Bool(true)) {
            i.insert("primary".into(), Value::Bool(false));
        }
    }
}

/// Two elements of a multi-valued attribute are the same if their `value` sub-attributes are equal (or, with
/// no `value`, if they are equal whole).
fn same_element(attr: &Attribute, a: &Value, b: &Value) -> bool {
    if attr.kind == AttrType::Complex {
        let case_exact = attr.sub("value").is_none_or(|s| s.case_exact);
        match (a.get("value"), b.get("value")) {
            (Some(Value::String(x)), Some(Value::String(y))) if !case_exact => {
                x.eq_ignore_ascii_case(y) && a.get("type") == b.get("type")
            }
            (Some(x), Some(y)) => {
                x == y && (a.get("type") == b.get("type") || a.get("type").is_none() || b.get("type").is_none())
            }
            _ => a == b,
        }
    } else {
        a == b
    }
}

/// A change to group membership, applied by the store as row operations.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    /// Add these members (each `{value, type?}`), ignoring ones already present.
    Add(Vec<Member>),
    /// Remove these member ids; absent ones are ignored.
    Remove(Vec<String>),
    /// Replace the whole list.
    Replace(Vec<Member>),
    /// Remove the members matching a value filter over `value`, `type`, `display`, `$ref`.
    RemoveWhere(Filter),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub value: String,
    /// `User` or `Group`, when the client said which.
    pub kind: Option<String>,
}

/// Split a Group PATCH into membership operations and the rest, preserving order within each.
pub fn split_members(reg: &Registry, ops: Vec<PatchOp>) -> Result<(Vec<MemberOp>, Vec<PatchOp>)> {
    let rt = reg.rt(ResourceKind::Group);
    let Some(members_attr) = rt.core.attr("members") else {
        return Ok((vec![], ops));
    };
    let is_members = |p: &AttrPath| {
        p.attr.eq_ignore_ascii_case("members")
            && p.sub.is_none()
            && p.urn.as_deref().is_none_or(|u| u.eq_ignore_ascii_case(&rt.core.id))
    };
    let mut member_ops = Vec::new();
    let mut rest = Vec::new();
    for op in ops {
        match &op.path {
            Some(p) if is_members(&p.attr) => {
                if p.sub.is_some() {
                    return Err(ProtocolError::Mutability(
                        "member sub-attributes cannot be changed".into(),
                    ));
                }
                member_ops.push(member_op(members_attr, op.op, p.filter.clone(), op.value)?);
            }
            Some(_) => rest.push(op),
            None => {
                let Some(Value::Object(mut value)) = op.value else {
                    return Err(ProtocolError::InvalidValue(
                        "without a path, the value must be an object".into(),
                    ));
                };
                let key = value.keys().find(|k| k.eq_ignore_ascii_case("members")).cloned();
                if let Some(key) = key
                    && let Some(v) = value.remove(&key)
                {
                    member_ops.push(member_op(members_attr, op.op, None, Some(v))?);
                }
                if !value.is_empty() {
                    rest.push(PatchOp {
                        op: op.op,
                        path: None,
                        value: Some(Value::Object(value)),
                    });
                }
            }
        }
    }
    Ok((member_ops, rest))
}

fn member_list(attr: &Attribute, v: Value) -> Result<Vec<Member>> {
    let Some(v) = coerce_attr(attr, v)? else {
        return Ok(vec![]);
    };
    let mut out = Vec::new();
    for el in v.as_array().into_iter().flatten() {
        let value = el
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| ProtocolError::InvalidValue("each member needs a value".into()))?;
        let kind = el.get("type").and_then(Value::as_str).map(str::to_string);
        out.push(Member {
            value: value.to_string(),
            kind,
        });
    }
    Ok(out)
}

fn member_op(attr: &Attribute, op: OpKind, filter: Option<Filter>, value: Option<Value>) -> Result<MemberOp> {
    match (op, filter) {
        (OpKind::Remove, Some(f)) => Ok(match value_ids(&f) {
            Some(ids) => MemberOp::Remove(ids),
            None => MemberOp::RemoveWhere(f),
        }),
        (OpKind::Remove, None) => match value {
            Some(v) if !v.is_null() => Ok(MemberOp::Remove(
                member_list(attr, v)?.into_iter().map(|m| m.value).collect(),
            )),
            _ => Ok(MemberOp::Replace(vec![])),
        },
        (_, Some(_)) => Err(ProtocolError::InvalidPath(
            "members can be added or replaced only as a list".into(),
        )),
        (OpKind::Add, None) => Ok(MemberOp::Add(member_list(attr, need(value)?)?)),
        (OpKind::Replace, None) => Ok(MemberOp::Replace(member_list(attr, need(value)?)?)),
    }
}

/// `value eq "a" or value eq "b"` → the ids.
fn value_ids(f: &Filter) -> Option<Vec<String>> {
    match f {
        Filter::Or(a, b) => {
            let mut v = value_ids(a)?;
            v.extend(value_ids(b)?);
            Some(v)
        }
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: CompValue::Str(s),
        } if path.urn.is_none() && path.sub.is_none() && path.attr.eq_ignore_ascii_case("value") => {
            Some(vec![s.clone()])
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Mode, normalize};
    use crate::schema::SchemaDoc;
    use serde_json::json;

    pub(crate) fn registry() -> Registry {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let mut docs = Vec::new();
        let mut types = None;
        for e in std::fs::read_dir(&dir).expect("schemas").flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let json = serde_json::from_str(&std::fs::read_to_string(&p).expect("read")).expect("json");
            let doc = SchemaDoc {
                source: p.display().to_string(),
                json,
            };
            if p.ends_with("resource-types.json") {
                types = Some(doc);
            } else {
                docs.push(doc);
            }
        }
        Registry::build(docs, &types.expect("types")).expect("registry")
    }

    fn run(reg: &Registry, doc: Value, ops: Value) -> Result<Value> {
        let mut doc = normalize(reg, ResourceKind::User, doc, Mode::Create)?;
        let ops = parse_request(
            json!({"schemas": [PATCH_OP_URN], "Operations": ops}),
            &FilterLimits::default(),
            100,
        )?;
        apply(reg, ResourceKind::User, "id-1", &mut doc, &ops)?;
        Ok(Value::Object(normalize(
            reg,
            ResourceKind::User,
            Value::Object(doc),
            Mode::Replace,
        )?))
    }

    #[test]
    fn entra_forms() {
        let reg = registry();
        let base = json!({"userName": "u", "active": true, "emails": [{"value": "h@x", "type": "home"}]});
        // Capitalised op, string boolean.
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
        )
        .expect("ok");
        assert_eq!(v["active"], json!(false));
        // Path-less replace with dotted and URN keys in one object.
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "replace", "value": {"name.givenName": "G",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "E7"}}]),
        )
        .expect("ok");
        assert_eq!(v["name"]["givenName"], "G");
        assert_eq!(v[crate::schema::ENTERPRISE_URN]["employeeNumber"], "E7");
        // Manager three ways.
        for value in [
            json!("m1"),
            json!({"value": "m1", "$ref": "../Users/m1"}),
            json!([{"value": "m1"}]),
        ] {
            let v = run(&reg, base.clone(), json!([{"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": value}]))
                .expect("ok");
            assert_eq!(v[crate::schema::ENTERPRISE_URN]["manager"]["value"], "m1");
        }
        // Add through a filter that matches nothing creates the element.
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "w@x"}]),
        )
        .expect("ok");
        assert_eq!(
            v["emails"],
            json!([{"value": "h@x", "type": "home"}, {"type": "work", "value": "w@x"}])
        );
        // ...and a second Add through the same filter updates it instead of duplicating.
        let v = run(
            &reg,
            v,
            json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "w2@x"}]),
        )
        .expect("ok");
        assert_eq!(v["emails"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["emails"][1]["value"], "w2@x");
    }

    #[test]
    fn okta_rename_echo_and_mutability() {
        let reg = registry();
        let base = json!({"userName": "u"});
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "replace", "value": {"id": "id-1", "displayName": "New"}}]),
        )
        .expect("same id is fine");
        assert_eq!(v["displayName"], "New");
        let e = run(&reg, base.clone(), json!([{"op": "replace", "value": {"id": "other"}}])).expect_err("other id");
        assert!(matches!(e, ProtocolError::Mutability(_)));
        let e = run(
            &reg,
            base.clone(),
            json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}]),
        )
        .expect_err("readOnly");
        assert!(matches!(e, ProtocolError::Mutability(_)));
    }

    #[test]
    fn value_filters_primary_and_removal() {
        let reg = registry();
        let base = json!({"userName": "u", "emails": [
            {"value": "a@x", "type": "work", "primary": true}, {"value": "b@x", "type": "home"}]});
        // A new primary clears the old one.
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "add", "path": "emails", "value": [{"value": "c@x", "primary": true}]}]),
        )
        .expect("ok");
        let primaries: Vec<&Value> = v["emails"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|e| e["primary"] == json!(true))
            .collect();
        assert_eq!(primaries.len(), 1);
        assert_eq!(primaries[0]["value"], "c@x");
        // Remove through a filter; a filter matching nothing is a no-op.
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
        )
        .expect("ok");
        assert_eq!(v["emails"].as_array().map(Vec::len), Some(1));
        let v = run(
            &reg,
            base.clone(),
            json!([{"op": "remove", "path": "emails[type eq \"other\"]"}]),
        )
        .expect("ok");
        assert_eq!(v["emails"].as_array().map(Vec::len), Some(2));
        // Replace through a non-equality filter that matches nothing is noTarget.
        let e = run(
            &reg,
            base.clone(),
            json!([{"op": "replace", "path": "emails[value co \"zz\"].type", "value": "x"}]),
        )
        .expect_err("noTarget");
        assert!(matches!(e, ProtocolError::NoTarget(_)));
        // Complex replace merges sub-attributes.
        let v = run(
            &reg,
            json!({"userName": "u", "name": {"givenName": "A", "familyName": "B"}}),
            json!([{"op": "replace", "path": "name", "value": {"givenName": "C"}}]),
        )
        .expect("ok");
        assert_eq!(v["name"], json!({"givenName": "C", "familyName": "B"}));
    }

    #[test]
    fn member_operations_split_out() {
        let reg = registry();
        let ops = parse_request(
            json!({"schemas": [PATCH_OP_URN], "Operations": [
                {"op": "add", "path": "members", "value": [{"value": "u1"}, {"value": "u2", "type": "User"}]},
                {"op": "remove", "path": "members[value eq \"u1\"]"},
                {"op": "Remove", "path": "members", "value": [{"value": "u2"}]},
                {"op": "remove", "path": "members[type eq \"Group\"]"},
                {"op": "replace", "value": {"displayName": "G", "members": [{"value": "u3"}]}},
                {"op": "replace", "path": "displayName", "value": "H"}]}),
            &FilterLimits::default(),
            100,
        )
        .expect("parse");
        let (members, rest) = split_members(&reg, ops).expect("split");
        assert_eq!(members.len(), 5);
        assert_eq!(
            members[0],
            MemberOp::Add(vec![
                Member {
                    value: "u1".into(),
                    kind: None
                },
                Member {
                    value: "u2".into(),
                    kind: Some("User".into())
                }
            ])
        );
        assert_eq!(members[1], MemberOp::Remove(vec!["u1".into()]));
        assert_eq!(members[2], MemberOp::Remove(vec!["u2".into()]));
        assert!(matches!(members[3], MemberOp::RemoveWhere(_)));
        assert_eq!(
            members[4],
            MemberOp::Replace(vec![Member {
                value: "u3".into(),
                kind: None
            }])
        );
        assert_eq!(rest.len(), 2);
    }
}
