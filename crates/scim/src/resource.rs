//! Request bodies → canonical resource documents.
//!
//! [`normalize`] checks a User or Group body against its schemas and returns the canonical document: attribute
//! names in their schema spelling, extension attributes under their URN, values type-checked and coerced where
//! real clients are sloppy (Entra's `"True"`, a manager sent as a bare id), `null` treated as unassigned, and
//! readOnly attributes dropped (RFC 7643 §2.2). `id`, `meta` and `schemas` are never part of the document; the
//! server adds them on output.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::error::{ProtocolError, Result};
use crate::schema::{AttrType, Attribute, Mutability, Registry, ResourceKind, ResourceType};

/// Whether required attributes must be present (create and replace) or may be missing (never, today: PATCH
/// results are checked as full replacements too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Create,
    Replace,
}

/// Check and canonicalise a request body. readOnly attributes and unknown schema URNs listed in `schemas` are
/// ignored; unknown attributes are refused.
pub fn normalize(reg: &Registry, kind: ResourceKind, body: Value, _mode: Mode) -> Result<Map<String, Value>> {
    let rt = reg.rt(kind);
    let Value::Object(body) = body else {
        return Err(ProtocolError::InvalidSyntax(
            "the request body must be a JSON object".into(),
        ));
    };
    if let Some(schemas) = body
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("schemas"))
        .map(|(_, v)| v)
    {
        let list = schemas
            .as_array()
            .filter(|a| a.iter().all(Value::is_string))
            .ok_or_else(|| ProtocolError::InvalidSyntax("schemas must be an array of URN strings".into()))?;
        if !list
            .iter()
            .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(&rt.core.id)))
        {
            return Err(ProtocolError::InvalidSyntax(format!(
                "schemas must include {}",
                rt.core.id
            )));
        }
    }
    let mut out = Map::new();
    for (key, value) in body {
        if key.eq_ignore_ascii_case("schemas") || value.is_null() {
            continue;
        }
        if let Some(ext) = rt.extension(&key) {
            let Value::Object(inner) = value else {
                return Err(ProtocolError::InvalidValue(format!("{} must be an object", ext.id)));
            };
            let mut ext_out = Map::new();
            for (k, v) in inner {
                if k.eq_ignore_ascii_case("schemas") || v.is_null() {
                    continue;
                }
                let attr = ext
                    .attr(&k)
                    .ok_or_else(|| ProtocolError::InvalidValue(format!("unknown attribute {k} in {}", ext.id)))?;
                put(&mut ext_out, attr, v)?;
            }
            if !ext_out.is_empty() {
                out.insert(ext.id.clone(), Value::Object(ext_out));
            }
            continue;
        }
        let attr = reg
            .common()
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(&key))
            .or_else(|| rt.core.attr(&key))
            .ok_or_else(|| ProtocolError::InvalidValue(format!("unknown attribute {key}")))?;
        put(&mut out, attr, value)?;
    }
    check_required(rt, &out)?;
    Ok(out)
}

/// Put one value under its canonical name, unless the attribute is readOnly (then it is ignored).
fn put(out: &mut Map<String, Value>, attr: &Attribute, value: Value) -> Result<()> {
    if attr.mutability == Mutability::ReadOnly {
        return Ok(());
    }
    if let Some(v) = coerce_attr(attr, value)? {
        out.insert(attr.name.clone(), v);
    }
    Ok(())
}

/// Type-check and coerce a value for `attr`. `Ok(None)` means unassigned (null, or an empty list).
pub fn coerce_attr(attr: &Attribute, value: Value) -> Result<Option<Value>> {
    if value.is_null() {
        return Ok(None);
    }
    if attr.multi_valued {
        let items = match value {
            Value::Array(items) => items,
            single => vec![single],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = coerce_single(attr, item)?
                && !out.contains(&v)
            {
                out.push(v);
            }
        }
        if attr.kind == AttrType::Complex {
            let primaries = out
                .iter()
                .filter(|v| v.get("primary") == Some(&Value::Bool(true)))
                .count();
            if primaries > 1 {
                return Err(ProtocolError::InvalidValue(format!(
                    "{}: at most one value may have primary true",
                    attr.name
                )));
            }
        }
        return Ok(if out.is_empty() { None } else { Some(Value::Array(out)) });
    }
    let value = match value {
        // Entra sends a singular complex value (the manager) as an array of one.
        Value::Array(mut items) if attr.kind == AttrType::Complex && items.len() == 1 => items.remove(0),
        Value::Array(_) => {
            return Err(ProtocolError::InvalidValue(format!(
                "{} is single-valued, not a list",
                attr.name
            )));
        }
        v => v,
    };
    coerce_single(attr, value)
}

/// Coerce one (non-list) value.
pub fn coerce_single(attr: &Attribute, value: Value) -> Result<Option<Value>> {
    let bad = |what: &str| ProtocolError::InvalidValue(format!("{} must be {what}", attr.name));
    Ok(Some(match (attr.kind, value) {
        (_, Value::Null) => return Ok(None),
        (AttrType::Complex, Value::Object(inner)) => {
            let mut out = Map::new();
            for (k, v) in inner {
                let sub = attr
                    .sub(&k)
                    .ok_or_else(|| ProtocolError::InvalidValue(format!("unknown sub-attribute {}.{k}", attr.name)))?;
                if sub.mutability == Mutability::ReadOnly && attr.mutability != Mutability::ReadOnly {
                    // e.g. members.display: server-computed; ignored as RFC 7643 §2.2 says.
                    continue;
                }
                if let Some(v) = coerce_attr(sub, v)? {
                    out.insert(sub.name.clone(), v);
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
            for sub in attr.sub_attributes.iter().filter(|s| s.required) {
                if !out.contains_key(&sub.name) {
                    return Err(ProtocolError::InvalidValue(format!(
                        "{}.{} is required",
                        attr.name, sub.name
                    )));
                }
            }
            Value::Object(out)
        }
        // A complex value given as its bare `value` (Entra's manager id).
        (AttrType::Complex, v @ Value::String(_)) if attr.sub("value").is_some() => {
            let mut out = Map::new();
            out.insert("value".into(), v);
            Value::Object(out)
        }
        (AttrType::Complex, _) => return Err(bad("an object")),
        (AttrType::String | AttrType::Reference, Value::String(s)) => Value::String(s),
        (AttrType::String | AttrType::Reference, _) => return Err(bad("a string")),
        (AttrType::Binary, Value::String(s)) => {
            if !is_base64(&s) {
                return Err(bad("base64"));
            }
            Value::String(s)
        }
        (AttrType::Binary, _) => return Err(bad("a base64 string")),
        (AttrType::Boolean, Value::Bool(b)) => Value::Bool(b),
        (AttrType::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        (AttrType::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        (AttrType::Boolean, _) => return Err(bad("a boolean")),
        (AttrType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
        (AttrType::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| bad("an integer"))?,
        (AttrType::Integer, _) => return Err(bad("an integer")),
        (AttrType::Decimal, Value::Number(n)) => Value::Number(n),
        (AttrType::Decimal, Value::String(s)) => {
            let f: f64 = s.trim().parse().map_err(|_| bad("a decimal"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| bad("a finite decimal"))?
        }
        (AttrType::Decimal, _) => return Err(bad("a decimal")),
        (AttrType::DateTime, Value::String(s)) => {
            if parse_datetime(&s).is_none() {
                return Err(bad("an xsd:dateTime such as 2026-01-31T09:00:00Z"));
            }
            Value::String(s)
        }
        (AttrType::DateTime, _) => return Err(bad("a dateTime string")),
    }))
}

fn check_required(rt: &ResourceType, doc: &Map<String, Value>) -> Result<()> {
    for a in rt
        .core
        .attributes
        .iter()
        .filter(|a| a.required && a.mutability != Mutability::ReadOnly)
    {
        match doc.get(&a.name) {
            None => return Err(ProtocolError::InvalidValue(format!("{} is required", a.name))),
            // A required string must say something (RFC 7643 §4.1.1: userName "MUST be non-empty").
            Some(Value::String(v)) if v.trim().is_empty() => {
                return Err(ProtocolError::InvalidValue(format!("{} must not be empty", a.name)));
            }
            Some(_) => {}
        }
    }
    for (ext, required) in &rt.extensions {
        let inner = doc.get(&ext.id).and_then(Value::as_object);
        if *required && inner.is_none() {
            return Err(ProtocolError::InvalidValue(format!("extension {} is required", ext.id)));
        }
        if let Some(inner) = inner {
            for a in ext
                .attributes
                .iter()
                .filter(|a| a.required && a.mutability != Mutability::ReadOnly)
            {
                if !inner.contains_key(&a.name) {
                    return Err(ProtocolError::InvalidValue(format!(
                        "{}:{} is required",
                        ext.id, a.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Refuse a change to an immutable attribute that already has a value (RFC 7643 §2.2).
pub fn check_immutable(
    reg: &Registry,
    kind: ResourceKind,
    old: &Map<String, Value>,
    new: &Map<String, Value>,
) -> Result<()> {
    let rt = reg.rt(kind);
    let check = |attrs: &[Attribute], o: Option<&Map<String, Value>>, n: Option<&Map<String, Value>>| -> Result<()> {
        for a in attrs.iter().filter(|a| a.mutability == Mutability::Immutable) {
            let before = o.and_then(|m| m.get(&a.name));
            let after = n.and_then(|m| m.get(&a.name));
            if before.is_some() && before != after {
                return Err(ProtocolError::Mutability(format!("{} is immutable", a.name)));
            }
        }
        Ok(())
    };
    check(&rt.core.attributes, Some(old), Some(new))?;
    check(reg.common(), Some(old), Some(new))?;
    for (ext, _) in &rt.extensions {
        let o = old.get(&ext.id).and_then(Value::as_object);
        let n = new.get(&ext.id).and_then(Value::as_object);
        check(&ext.attributes, o, n)?;
    }
    Ok(())
}

fn is_base64(s: &str) -> bool {
    let s = s.trim_end_matches('=');
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

/// Parse an xsd:dateTime (RFC 3339; a missing offset is read as UTC).
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// The fixed-width UTC form every stored timestamp uses, so text order is time order.
pub fn format_datetime(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Normalise an xsd:dateTime string to [`format_datetime`] form.
pub fn normalize_datetime(s: &str) -> Option<String> {
    parse_datetime(s).map(format_datetime)
}
