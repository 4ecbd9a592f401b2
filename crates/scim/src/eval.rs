//! Filter resolution and in-memory evaluation.
//!
//! [`resolve`] turns a parsed filter into its canonical, protocol-neutral form: every attribute path is checked
//! against the resource type and rewritten to its schema spelling (URN only for extension attributes), and every
//! comparison value is coerced to the attribute's type. The store lowers what it can of that form to SQL;
//! [`matches`] evaluates any of it in memory with the same semantics:
//! - strings compare case-insensitively unless the attribute is caseExact; dateTimes compare as instants;
//! - a multi-valued attribute matches if any value matches; a complex attribute without a sub-attribute is
//!   compared through its `value` sub-attribute;
//! - `ne` is exactly `not eq` (so an absent attribute is `ne` anything), and `eq null` is `not pr`.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use crate::error::{ProtocolError, Result};
use crate::filter::{AttrPath, CompValue, CompareOp, Filter};
use crate::resource::parse_datetime;
use crate::schema::{AttrType, Attribute, Home, Registry, Resolved, ResourceKind, Target};

/// The userName a resolved User filter asks for, if the filter is exactly `userName eq "…"` (the lookup an IdP
/// makes before it creates or links a user).
pub fn user_name_eq(f: &Filter) -> Option<&str> {
    match f {
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: CompValue::Str(s),
        } if path.urn.is_none() && path.sub.is_none() && path.attr == "userName" => Some(s),
        _ => None,
    }
}

/// Resolve a filter against a resource type. Unknown attributes and operators that do not apply to the
/// attribute's type are `invalidFilter`.
pub fn resolve(reg: &Registry, kind: ResourceKind, f: Filter) -> Result<Filter> {
    resolve_in(reg, kind, None, f)
}

fn resolve_in(reg: &Registry, kind: ResourceKind, parent: Option<&Resolved<'_>>, f: Filter) -> Result<Filter> {
    Ok(match f {
        Filter::And(a, b) => Filter::And(
            Box::new(resolve_in(reg, kind, parent, *a)?),
            Box::new(resolve_in(reg, kind, parent, *b)?),
        ),
        Filter::Or(a, b) => Filter::Or(
            Box::new(resolve_in(reg, kind, parent, *a)?),
            Box::new(resolve_in(reg, kind, parent, *b)?),
        ),
        Filter::Not(a) => Filter::Not(Box::new(resolve_in(reg, kind, parent, *a)?)),
        Filter::Present(p) => Filter::Present(resolve_path(reg, kind, parent, &p)?.to_path()),
        Filter::Compare { path, op, value } => {
            let r = resolve_path(reg, kind, parent, &path)?;
            let value = coerce_value(&r, op, value)?;
            Filter::Compare {
                path: r.to_path(),
                op,
                value,
            }
        }
        Filter::ValuePath { path, filter } => {
            if parent.is_some() {
                return Err(ProtocolError::InvalidFilter(
                    "a value filter cannot nest another".into(),
                ));
            }
            let r = resolve_path(reg, kind, None, &path)?;
            if r.sub.is_some() || r.attr.kind != AttrType::Complex {
                return Err(ProtocolError::InvalidFilter(format!(
                    "{path} is not a complex attribute"
                )));
            }
            let inner = resolve_in(reg, kind, Some(&r), *filter)?;
            Filter::ValuePath {
                path: r.to_path(),
                filter: Box::new(inner),
            }
        }
    })
}

fn resolve_path<'r>(
    reg: &'r Registry,
    kind: ResourceKind,
    parent: Option<&Resolved<'r>>,
    p: &AttrPath,
) -> Result<Resolved<'r>> {
    let unknown = || ProtocolError::InvalidFilter(format!("unknown attribute {p}"));
    if let Some(parent) = parent {
        // Inside `x[...]`, names are sub-attributes of x.
        if p.urn.is_some() || p.sub.is_some() {
            return Err(unknown());
        }
        let sub = parent.attr.sub(&p.attr).ok_or_else(unknown)?;
        return Ok(Resolved {
            home: parent.home,
            attr: parent.attr,
            sub: Some(sub),
        });
    }
    match reg.resolve(kind, p) {
        Some(Target::Attr(r)) => Ok(r),
        _ => Err(unknown()),
    }
}

/// Coerce a comparison value to the attribute's type and check the operator applies.
fn coerce_value(r: &Resolved<'_>, op: CompareOp, value: CompValue) -> Result<CompValue> {
    let leaf = compare_attr(r);
    let bad = |msg: String| ProtocolError::InvalidFilter(msg);
    let name = r.to_path();
    if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) && !leaf.kind.is_stringy() {
        return Err(bad(format!("{} cannot be used on {name} ({:?})", op, leaf.kind)));
    }
    if matches!(op, CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le)
        && matches!(leaf.kind, AttrType::Boolean | AttrType::Binary)
    {
        return Err(bad(format!("{op} cannot be used on {name}")));
    }
    if value == CompValue::Null {
        return if matches!(op, CompareOp::Eq | CompareOp::Ne) {
            Ok(value)
        } else {
            Err(bad(format!("{op} needs a value, not null")))
        };
    }
    Ok(match leaf.kind {
        AttrType::Boolean => match value {
            CompValue::Bool(b) => CompValue::Bool(b),
            CompValue::Str(s) if s.eq_ignore_ascii_case("true") => CompValue::Bool(true),
            CompValue::Str(s) if s.eq_ignore_ascii_case("false") => CompValue::Bool(false),
            _ => return Err(bad(format!("{name} compares with true or false"))),
        },
        AttrType::Integer | AttrType::Decimal => match value {
            CompValue::Num(n) => CompValue::Num(n),
            CompValue::Str(s) => s
                .parse::<serde_json::Number>()
                .map(CompValue::Num)
                .map_err(|_| bad(format!("{name} compares with a number")))?,
            _ => return Err(bad(format!("{name} compares with a number"))),
        },
        AttrType::DateTime => match value {
            CompValue::Str(s) if parse_datetime(&s).is_some() => CompValue::Str(s),
            _ => return Err(bad(format!("{name} compares with a quoted dateTime"))),
        },
        // Entra's legacy unquoted values can parse as numbers or booleans: they are strings here.
        _ => match value {
            CompValue::Str(s) => CompValue::Str(s),
            CompValue::Num(n) => CompValue::Str(n.to_string()),
            CompValue::Bool(b) => CompValue::Str(b.to_string()),
            CompValue::Null => CompValue::Null,
        },
    })
}

/// The attribute whose type governs a comparison: the sub-attribute, or `value` of a complex attribute.
fn compare_attr<'r>(r: &Resolved<'r>) -> &'r Attribute {
    match r.sub {
        Some(s) => s,
        None if r.attr.kind == AttrType::Complex => r.attr.sub("value").unwrap_or(r.attr),
        None => r.attr,
    }
}

/// Evaluate a resolved filter against a canonical document (with `id` and `meta` present).
pub fn matches(reg: &Registry, kind: ResourceKind, f: &Filter, doc: &Map<String, Value>) -> bool {
    match f {
        Filter::And(a, b) => matches(reg, kind, a, doc) && matches(reg, kind, b, doc),
        Filter::Or(a, b) => matches(reg, kind, a, doc) || matches(reg, kind, b, doc),
        Filter::Not(a) => !matches(reg, kind, a, doc),
        Filter::Present(p) => leaf_values(reg, kind, p, doc).iter().any(|(_, v)| present(v)),
        Filter::Compare { path, op, value } => compare_path(reg, kind, path, *op, value, doc),
        Filter::ValuePath { path, filter } => {
            let Some(Target::Attr(r)) = reg.resolve(kind, path) else {
                return false;
            };
            element_values(r.home, r.attr, doc)
                .into_iter()
                .filter_map(Value::as_object)
                .any(|el| matches_element(r.attr, filter, el))
        }
    }
}

/// Evaluate a value filter (sub-attribute names) against one element of a multi-valued complex attribute.
pub fn matches_element(attr: &Attribute, f: &Filter, el: &Map<String, Value>) -> bool {
    match f {
        Filter::And(a, b) => matches_element(attr, a, el) && matches_element(attr, b, el),
        Filter::Or(a, b) => matches_element(attr, a, el) || matches_element(attr, b, el),
        Filter::Not(a) => !matches_element(attr, a, el),
        Filter::Present(p) => {
            let name = p.sub.as_deref().unwrap_or(&p.attr);
            el.get(name).is_some_and(present)
        }
        Filter::Compare { path, op, value } => {
            let name = path.sub.as_deref().unwrap_or(&path.attr);
            let Some(sub) = attr.sub(name) else {
                return false;
            };
            let vals: Vec<&Value> = match el.get(&sub.name) {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v) => vec![v],
                None => vec![],
            };
            compare_values(sub, &vals, *op, value)
        }
        Filter::ValuePath { .. } => false,
    }
}

fn compare_path(
    reg: &Registry,
    kind: ResourceKind,
    path: &AttrPath,
    op: CompareOp,
    value: &CompValue,
    doc: &Map<String, Value>,
) -> bool {
    let Some(Target::Attr(r)) = reg.resolve(kind, path) else {
        return false;
    };
    let leaf = compare_attr(&r);
    let vals: Vec<&Value> = leaf_values(reg, kind, path, doc).into_iter().map(|(_, v)| v).collect();
    compare_values(leaf, &vals, op, value)
}

/// Apply one comparison to all values of an attribute (any-match; `ne` is `not eq`).
fn compare_values(attr: &Attribute, vals: &[&Value], op: CompareOp, value: &CompValue) -> bool {
    if *value == CompValue::Null {
        let any = vals.iter().any(|v| present(v));
        return if op == CompareOp::Eq { !any } else { any };
    }
    if op == CompareOp::Ne {
        return !compare_values(attr, vals, CompareOp::Eq, value);
    }
    vals.iter().any(|v| compare_one(attr, v, op, value))
}

fn compare_one(attr: &Attribute, v: &Value, op: CompareOp, want: &CompValue) -> bool {
    let ord = match (attr.kind, v, want) {
        (AttrType::Boolean, Value::Bool(a), CompValue::Bool(b)) => {
            return op == CompareOp::Eq && a == b;
        }
        (AttrType::Integer | AttrType::Decimal, Value::Number(a), CompValue::Num(b)) => {
            match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            }
        }
        (AttrType::DateTime, Value::String(a), CompValue::Str(b)) => match (parse_datetime(a), parse_datetime(b)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => None,
        },
        (_, Value::String(a), CompValue::Str(b)) => {
            let (a, b) = if attr.case_exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => Some(a.cmp(&b)),
            }
        }
        _ => None,
    };
    let Some(ord) = ord else { return false };
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Ne | CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

/// Whether a value counts as present for `pr` (RFC 7644: not null, not empty).
pub fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(present),
        Value::Object(o) => o.values().any(present),
        _ => true,
    }
}

/// The values a path names: (element, value) pairs, flattening multi-valued attributes. For a complex attribute
/// without a sub-attribute, the values are its `value` sub-attribute when comparing and the elements for `pr`.
fn leaf_values<'d>(
    reg: &Registry,
    kind: ResourceKind,
    path: &AttrPath,
    doc: &'d Map<String, Value>,
) -> Vec<(usize, &'d Value)> {
    let Some(Target::Attr(r)) = reg.resolve(kind, path) else {
        return vec![];
    };
    let elements = element_values(r.home, r.attr, doc);
    let mut out = Vec::new();
    for (i, el) in elements.into_iter().enumerate() {
        match (r.sub, el) {
            (Some(sub), Value::Object(o)) => match o.get(&sub.name) {
                Some(Value::Array(a)) => out.extend(a.iter().map(|v| (i, v))),
                Some(v) => out.push((i, v)),
                None => {}
            },
            (Some(_), _) => {}
            (None, Value::Object(o)) if r.attr.kind == AttrType::Complex => {
                if let Some(v) = o.get("value") {
                    out.push((i, v));
                } else {
                    out.push((i, el));
                }
            }
            (None, v) => out.push((i, v)),
        }
    }
    out
}

/// The elements of an attribute in a document (one element for a singular attribute).
pub fn element_values<'d>(home: Home<'_>, attr: &Attribute, doc: &'d Map<String, Value>) -> Vec<&'d Value> {
    let container = match home {
        Home::Extension(urn) => match doc.get(urn).and_then(Value::as_object) {
            Some(o) => o,
            None => return vec![],
        },
        _ => doc,
    };
    match container.get(&attr.name) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    }
}

/// A sort key for `sortBy` (RFC 7644 §3.4.2.3): the primary (or first) value of a multi-valued attribute;
/// strings lower-cased unless caseExact. `None` sorts last in ascending order.
pub fn sort_key(reg: &Registry, kind: ResourceKind, path: &AttrPath, doc: &Map<String, Value>) -> Option<SortKey> {
    let Some(Target::Attr(r)) = reg.resolve(kind, path) else {
        return None;
    };
    let elements = element_values(r.home, r.attr, doc);
    let chosen = elements
        .iter()
        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
        .or_else(|| elements.first())?;
    let leaf = compare_attr(&r);
    let v = match (r.sub, r.attr.kind) {
        (Some(sub), _) => chosen.get(&sub.name)?,
        (None, AttrType::Complex) => chosen.get("value")?,
        (None, _) => chosen,
    };
    Some(match (leaf.kind, v) {
        (AttrType::DateTime, Value::String(s)) => SortKey::Time(parse_datetime(s)?.timestamp_micros()),
        (_, Value::String(s)) if leaf.case_exact => SortKey::Str(s.clone()),
        (_, Value::String(s)) => SortKey::Str(s.to_lowercase()),
        (_, Value::Number(n)) => SortKey::Num(n.as_f64()?),
        (_, Value::Bool(b)) => SortKey::Bool(*b),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum SortKey {
    Bool(bool),
    Num(f64),
    Time(i64),
    Str(String),
}
