//! Bulk (RFC 7644 §3.7): request parsing, `bulkId:` references and execution order.
//!
//! References may appear in the path and at any depth inside `data`. An operation runs after every POST whose
//! bulkId it references; operations that reference each other in a cycle cannot be ordered and answer 409.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::error::{ProtocolError, Result};

pub const BULK_REQUEST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE_URN: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkOp {
    pub method: Method,
    pub bulk_id: Option<String>,
    pub version: Option<String>,
    pub path: String,
    pub data: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkRequest {
    /// Stop after this many errors (RFC 7644 §3.7.3).
    pub fail_on_errors: Option<usize>,
    pub ops: Vec<BulkOp>,
}

/// How many operations a body holds, before parsing it in full (for the 413 check).
pub fn count_ops(body: &Value) -> usize {
    body.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("Operations")))
        .and_then(|(_, v)| v.as_array())
        .map_or(0, Vec::len)
}

pub fn parse(body: Value) -> Result<BulkRequest> {
    let Value::Object(mut body) = body else {
        return Err(ProtocolError::InvalidSyntax("a Bulk body must be a JSON object".into()));
    };
    let take = |body: &mut Map<String, Value>, name: &str| {
        let key = body.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned();
        key.and_then(|k| body.remove(&k))
    };
    let schemas = take(&mut body, "schemas");
    if !schemas.as_ref().and_then(Value::as_array).is_some_and(|s| {
        s.iter()
            .any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(BULK_REQUEST_URN)))
    }) {
        return Err(ProtocolError::InvalidSyntax(format!(
            "schemas must be [\"{BULK_REQUEST_URN}\"]"
        )));
    }
    let fail_on_errors = match take(&mut body, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n >= 1 => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => {
                return Err(ProtocolError::InvalidValue(
                    "failOnErrors must be a positive integer".into(),
                ));
            }
        },
        Some(_) => {
            return Err(ProtocolError::InvalidValue(
                "failOnErrors must be a positive integer".into(),
            ));
        }
    };
    let Some(Value::Array(raw)) = take(&mut body, "Operations") else {
        return Err(ProtocolError::InvalidSyntax("Operations must be an array".into()));
    };
    let mut ops = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for (i, op) in raw.into_iter().enumerate() {
        let Value::Object(mut op) = op else {
            return Err(ProtocolError::InvalidSyntax(format!("operation {i} must be an object")));
        };
        let method = match take(&mut op, "method")
            .as_ref()
            .and_then(Value::as_str)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("PATCH") => Method::Patch,
            Some("DELETE") => Method::Delete,
            _ => {
                return Err(ProtocolError::InvalidSyntax(format!(
                    "operation {i}: method must be POST, PUT, PATCH or DELETE"
                )));
            }
        };
        let str_field = |op: &mut Map<String, Value>, name: &str| -> Result<Option<String>> {
            match take(op, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(ProtocolError::InvalidSyntax(format!(
                    "operation {i}: {name} must be a string"
                ))),
            }
        };
        let bulk_id = str_field(&mut op, "bulkId")?;
        let version = str_field(&mut op, "version")?;
        let path = str_field(&mut op, "path")?
            .ok_or_else(|| ProtocolError::InvalidSyntax(format!("operation {i}: path is required")))?;
        let data = take(&mut op, "data");
        if method == Method::Post && bulk_id.is_none() {
            return Err(ProtocolError::InvalidSyntax(format!(
                "operation {i}: POST needs a bulkId"
            )));
        }
        if let Some(b) = &bulk_id
            && !seen.insert(b.clone())
        {
            return Err(ProtocolError::InvalidSyntax(format!("bulkId {b} is used twice")));
        }
        if matches!(method, Method::Post | Method::Put | Method::Patch) && data.is_none() {
            return Err(ProtocolError::InvalidSyntax(format!(
                "operation {i}: data is required for {}",
                method.as_str()
            )));
        }
        ops.push(BulkOp {
            method,
            bulk_id,
            version,
            path,
            data,
        });
    }
    Ok(BulkRequest { fail_on_errors, ops })
}

const PREFIX: &str = "bulkId:";

/// The bulkIds an operation references, in its path and anywhere in its data.
pub fn references(op: &BulkOp) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect_str(&op.path, &mut out);
    if let Some(d) = &op.data {
        collect(d, &mut out);
    }
    out
}

fn collect_str(s: &str, out: &mut BTreeSet<String>) {
    let mut rest = s;
    while let Some(i) = rest.find(PREFIX) {
        let tail = &rest[i + PREFIX.len()..];
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        if end > 0 {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
}

fn collect(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => collect_str(s, out),
        Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

/// Execution order: indices into `ops`, each after the POSTs it references, otherwise in request order.
/// The second list holds operations caught in reference cycles (they answer 409).
pub fn order(ops: &[BulkOp]) -> (Vec<usize>, Vec<usize>) {
    let defined: HashMap<&str, usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.bulk_id.as_deref().map(|b| (b, i)))
        .collect();
    let deps: Vec<Vec<usize>> = ops
        .iter()
        .enumerate()
        .map(|(i, o)| {
            references(o)
                .iter()
                .filter_map(|r| defined.get(r.as_str()).copied())
                .filter(|&d| d != i)
                .collect()
        })
        .collect();
    let self_ref: Vec<bool> = ops
        .iter()
        .map(|o| o.bulk_id.as_ref().is_some_and(|b| references(o).contains(b)))
        .collect();
    let mut done = vec![false; ops.len()];
    let mut out = Vec::with_capacity(ops.len());
    loop {
        let mut progressed = false;
        for i in 0..ops.len() {
            if !done[i] && !self_ref[i] && deps[i].iter().all(|&d| done[d]) {
                done[i] = true;
                out.push(i);
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    let cyclic = (0..ops.len()).filter(|&i| !done[i]).collect();
    (out, cyclic)
}

/// Replace `bulkId:x` with the id created for x. Unknown references are `invalidValue`... unless `x` failed,
/// which the caller reports as a failed dependency.
pub fn substitute(v: &mut Value, ids: &HashMap<String, String>) -> std::result::Result<(), String> {
    match v {
        Value::String(s) => {
            let mut refs = BTreeSet::new();
            collect_str(s, &mut refs);
            for r in refs {
                let id = ids.get(&r).ok_or_else(|| r.clone())?;
                *s = s.replace(&format!("{PREFIX}{r}"), id);
            }
            Ok(())
        }
        Value::Array(a) => a.iter_mut().try_for_each(|v| substitute(v, ids)),
        Value::Object(o) => o.values_mut().try_for_each(|v| substitute(v, ids)),
        _ => Ok(()),
    }
}

/// The same for a path string.
pub fn substitute_path(path: &str, ids: &HashMap<String, String>) -> std::result::Result<String, String> {
    let mut v = Value::String(path.to_string());
    substitute(&mut v, ids)?;
    Ok(match v {
        Value::String(s) => s,
        _ => path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(method: Method, bulk: Option<&str>, path: &str, data: Value) -> BulkOp {
        BulkOp {
            method,
            bulk_id: bulk.map(str::to_string),
            version: None,
            path: path.into(),
            data: Some(data),
        }
    }

    #[test]
    fn references_run_first_and_cycles_are_reported() {
        let ops = vec![
            op(
                Method::Post,
                Some("g"),
                "/Groups",
                json!({"members": [{"value": "bulkId:u"}]}),
            ),
            op(Method::Post, Some("u"), "/Users", json!({"userName": "a"})),
            op(Method::Patch, None, "/Groups/bulkId:g", json!({})),
            op(
                Method::Post,
                Some("x"),
                "/Groups",
                json!({"members": [{"value": "bulkId:y"}]}),
            ),
            op(
                Method::Post,
                Some("y"),
                "/Groups",
                json!({"members": [{"value": "bulkId:x"}]}),
            ),
        ];
        let (order, cyclic) = order(&ops);
        assert_eq!(order, vec![1, 0, 2]);
        assert_eq!(cyclic, vec![3, 4]);
    }

    #[test]
    fn substitution_reaches_any_depth() {
        let ids = HashMap::from([("u".to_string(), "123".to_string())]);
        let mut v = json!({"a": [{"b": {"value": "bulkId:u"}}]});
        substitute(&mut v, &ids).expect("known id");
        assert_eq!(v, json!({"a": [{"b": {"value": "123"}}]}));
        assert_eq!(substitute_path("/Users/bulkId:u", &ids).as_deref(), Ok("/Users/123"));
        assert_eq!(substitute_path("/Users/bulkId:zz", &ids), Err("zz".to_string()));
    }

    #[test]
    fn parse_checks_shape() {
        let body = json!({"schemas": [BULK_REQUEST_URN], "failOnErrors": 1, "Operations": [
            {"method": "post", "bulkId": "a", "path": "/Users", "data": {"userName": "x"}}]});
        let req = parse(body).expect("valid");
        assert_eq!(req.fail_on_errors, Some(1));
        assert_eq!(req.ops[0].method, Method::Post);
        assert!(parse(json!({"Operations": []})).is_err());
        let no_bulk_id =
            json!({"schemas": [BULK_REQUEST_URN], "Operations": [{"method": "POST", "path": "/Users", "data": {}}]});
        assert!(parse(no_bulk_id).is_err());
    }
}
