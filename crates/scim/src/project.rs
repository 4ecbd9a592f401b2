//! Output: `returned` characteristics plus `attributes` / `excludedAttributes` (RFC 7643 §2.2, RFC 7644 §3.9).

use serde_json::{Map, Value};

use crate::error::{ProtocolError, Result};
use crate::filter::{AttrPath, FilterLimits, parse_patch_path};
use crate::schema::{Attribute, Registry, ResourceKind, Returned, Target};

/// Which attributes a client asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Projection {
    #[default]
    Default,
    /// `attributes=`: only these (plus `returned: always`).
    Only(Vec<AttrPath>),
    /// `excludedAttributes=`: the defaults less these.
    Excluding(Vec<AttrPath>),
}

impl Projection {
    /// From the two query parameters; both at once is `invalidValue`? RFC 7644 lets `attributes` win; we do too.
    pub fn parse(reg: &Registry, kind: ResourceKind, attributes: Option<&str>, excluded: Option<&str>) -> Result<Self> {
        let list = |s: &str| -> Result<Vec<AttrPath>> {
            let mut out = Vec::new();
            for item in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let p = parse_patch_path(item, &FilterLimits::default())
                    .map_err(|e| ProtocolError::InvalidValue(format!("attribute list: {e}")))?;
                if p.filter.is_some() || p.sub.is_some() {
                    return Err(ProtocolError::InvalidValue(format!(
                        "{item}: filters are not allowed here"
                    )));
                }
                // Unknown names are ignored (nothing to return for them), but canonicalise known ones.
                match reg.resolve(kind, &p.attr) {
                    Some(Target::Attr(r)) => out.push(r.to_path()),
                    Some(Target::Extension(s)) => out.push(AttrPath {
                        urn: Some(s.id.clone()),
                        attr: String::new(),
                        sub: None,
                    }),
                    None => {}
                }
            }
            Ok(out)
        };
        Ok(match (attributes, excluded) {
            (Some(a), _) if !a.trim().is_empty() => Projection::Only(list(a)?),
            (_, Some(e)) if !e.trim().is_empty() => Projection::Excluding(list(e)?),
            _ => Projection::Default,
        })
    }

    /// Whether the (core) attribute `name` could be returned: lets the server skip loading group members.
    pub fn may_return(&self, name: &str) -> bool {
        match self {
            Projection::Default => true,
            Projection::Only(l) => l.iter().any(|p| p.urn.is_none() && p.attr.eq_ignore_ascii_case(name)),
            Projection::Excluding(l) => !l
                .iter()
                .any(|p| p.urn.is_none() && p.sub.is_none() && p.attr.eq_ignore_ascii_case(name)),
        }
    }
}

/// Select what to return from a full canonical document (with id, meta, and derived members/groups).
pub fn render(reg: &Registry, kind: ResourceKind, doc: &Map<String, Value>, proj: &Projection) -> Value {
    let rt = reg.rt(kind);
    let mut out = Map::new();
    // `schemas` is filled in last: it lists the extensions actually present in the output.
    out.insert("schemas".into(), Value::Array(vec![]));
    for attr in reg.common().iter().chain(rt.core.attributes.iter()) {
        if let Some(v) = doc.get(&attr.name)
            && let Some(v) = select(attr, None, v, proj)
        {
            out.insert(attr.name.clone(), v);
        }
    }
    for (ext, _) in &rt.extensions {
        let Some(Value::Object(inner)) = doc.get(&ext.id) else {
            continue;
        };
        let whole = match proj {
            Projection::Only(l) => l
                .iter()
                .any(|p| p.attr.is_empty() && p.urn.as_deref() == Some(ext.id.as_str())),
            Projection::Excluding(l) => {
                if l.iter()
                    .any(|p| p.attr.is_empty() && p.urn.as_deref() == Some(ext.id.as_str()))
                {
                    continue;
                }
                false
            }
            Projection::Default => false,
        };
        let mut ext_out = Map::new();
        for attr in &ext.attributes {
            if let Some(v) = inner.get(&attr.name) {
                let picked = if whole {
                    select(attr, Some(&ext.id), v, &Projection::Default)
                } else {
                    select(attr, Some(&ext.id), v, proj)
                };
                if let Some(v) = picked {
                    ext_out.insert(attr.name.clone(), v);
                }
            }
        }
        if !ext_out.is_empty() {
            out.insert(ext.id.clone(), Value::Object(ext_out));
        }
    }
    let schemas: Vec<Value> = rt
        .urns()
        .enumerate()
        .filter(|(i, u)| *i == 0 || out.contains_key(*u))
        .map(|(_, u)| Value::String(u.into()))
        .collect();
    out.insert("schemas".into(), Value::Array(schemas));
    Value::Object(out)
}

fn named(p: &AttrPath, urn: Option<&str>, attr: &str) -> bool {
    p.urn.as_deref() == urn && p.attr == attr
}

/// Apply `returned` and the projection to one attribute's value.
fn select(attr: &Attribute, urn: Option<&str>, v: &Value, proj: &Projection) -> Option<Value> {
    match attr.returned {
        Returned::Never => return None,
        Returned::Always => return Some(strip_never(attr, v)),
        _ => {}
    }
    match proj {
        Projection::Default => (attr.returned == Returned::Default).then(|| strip_never(attr, v)),
        Projection::Excluding(l) => {
            if attr.returned == Returned::Request || l.iter().any(|p| named(p, urn, &attr.name) && p.sub.is_none()) {
                return None;
            }
            let subs: Vec<&str> = l
                .iter()
                .filter(|p| named(p, urn, &attr.name))
                .filter_map(|p| p.sub.as_deref())
                .collect();
            Some(filter_subs(attr, v, |s| {
                !subs.contains(&s.name.as_str()) && s.returned != Returned::Request
            }))
        }
        Projection::Only(l) => {
            let mine: Vec<&AttrPath> = l.iter().filter(|p| named(p, urn, &attr.name)).collect();
            if mine.is_empty() {
                return None;
            }
            if mine.iter().any(|p| p.sub.is_none()) {
                return Some(strip_never(attr, v));
            }
            let subs: Vec<&str> = mine.iter().filter_map(|p| p.sub.as_deref()).collect();
            let picked = filter_subs(attr, v, |s| {
                subs.contains(&s.name.as_str()) || s.returned == Returned::Always
            });
            present_or_none(picked)
        }
    }
}

fn present_or_none(v: Value) -> Option<Value> {
    match &v {
        Value::Object(o) if o.is_empty() => None,
        Value::Array(a) if a.iter().all(|e| e.as_object().is_some_and(Map::is_empty)) => None,
        _ => Some(v),
    }
}

fn strip_never(attr: &Attribute, v: &Value) -> Value {
    if attr.sub_attributes.iter().any(|s| s.returned == Returned::Never) {
        filter_subs(attr, v, |s| s.returned != Returned::Never)
    } else {
        v.clone()
    }
}

fn filter_subs(attr: &Attribute, v: &Value, keep: impl Fn(&Attribute) -> bool) -> Value {
    let pick = |o: &Map<String, Value>| -> Value {
        Value::Object(
            o.iter()
                .filter(|(k, _)| attr.sub(k).is_some_and(|s| s.returned != Returned::Never && keep(s)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    match v {
        Value::Object(o) => pick(o),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|e| e.as_object().map(pick).unwrap_or_else(|| e.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}
