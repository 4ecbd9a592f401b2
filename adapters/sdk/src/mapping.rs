//! Reading SCIM attribute paths out of a user document, and `{path}` templates.
//!
//! Every adapter's declarative mapping names SCIM attributes the same way:
//! - `userName`, `name.givenName` (sub-attributes with a dot);
//! - `emails[type eq "work"].value`, `emails[primary eq true].value` (one simple `eq` selector on a multi-valued
//!   attribute; without a selector the primary value wins, then the first);
//! - `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department` and `…:User:manager.value`
//!   (extension attributes under their schema URN);
//! - `id` and `externalId`.
//!
//! Names compare case-insensitively, as in SCIM.

use serde_json::{Map, Value};

use crate::AdapterError;

/// A parsed attribute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The extension URN, when the attribute lives under one.
    urn: Option<String>,
    attr: String,
    selector: Option<(String, Value)>,
    sub: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad attribute path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

fn bad(path: &str, reason: &str) -> PathError {
    PathError {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let t = text.trim();
        let (urn, rest) = if t.len() > 4 && t[..4].eq_ignore_ascii_case("urn:") {
            // The attribute follows the URN's last colon.
            let Some(i) = t.rfind(':') else {
                return Err(bad(text, "a URN needs an attribute after its last colon"));
            };
            (Some(t[..i].to_string()), &t[i + 1..])
        } else {
            (None, t)
        };
        let (head, selector, tail) = match rest.find('[') {
            Some(open) => {
                let Some(close) = rest.find(']') else {
                    return Err(bad(text, "unclosed ["));
                };
                if close < open {
                    return Err(bad(text, "] before ["));
                }
                let inner = rest[open + 1..close].trim();
                let mut parts = inner.splitn(3, char::is_whitespace);
                let (Some(a), Some(op), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(bad(text, "a selector is `attr eq value`"));
                };
                if !op.eq_ignore_ascii_case("eq") || !is_name(a) {
                    return Err(bad(text, "a selector is `attr eq value`"));
                }
                let v: Value = serde_json::from_str(v.trim()).map_err(|_| bad(text, "selector value is not JSON"))?;
                let tail = rest[close + 1..].to_string();
                (rest[..open].to_string(), Some((a.to_string(), v)), tail)
            }
            None => match rest.split_once('.') {
                Some((h, s)) => (h.to_string(), None, format!(".{s}")),
                None => (rest.to_string(), None, String::new()),
            },
        };
        let sub = match tail.as_str() {
            "" => None,
            s => match s.strip_prefix('.') {
                Some(n) if is_name(n) => Some(n.to_string()),
                _ => return Err(bad(text, "only one sub-attribute may follow")),
            },
        };
        if !is_name(&head) {
            return Err(bad(text, "not an attribute name"));
        }
        Ok(Path {
            urn,
            attr: head,
            selector,
            sub,
        })
    }

    /// The value at this path: a scalar, or for a multi-valued attribute without a sub-attribute, the array.
    pub fn get<'u>(&self, user: &'u Map<String, Value>) -> Option<&'u Value> {
        let scope = match &self.urn {
            Some(urn) => get_ci(user, urn)?.as_object()?,
            None => user,
        };
        let v = get_ci(scope, &self.attr)?;
        let v = match (v, &self.selector) {
            (Value::Array(items), Some((a, want))) => items
                .iter()
                .find(|i| i.as_object().and_then(|o| get_ci(o, a)).is_some_and(|x| eq_ci(x, want)))?,
            (Value::Array(items), None) if self.sub.is_some() => items
                .iter()
                .find(|i| i.get("primary") == Some(&Value::Bool(true)))
                .or_else(|| items.first())?,
            (v, _) => v,
        };
        match &self.sub {
            Some(s) => get_ci(v.as_object()?, s),
            None => Some(v),
        }
    }

    /// The value as text: strings as they are, numbers and booleans printed, the first element of an array of
    /// scalars. Objects and null give `None`.
    pub fn text(&self, user: &Map<String, Value>) -> Option<String> {
        scalar_text(self.get(user)?)
    }

    /// Every value as text (a multi-valued attribute without a selector gives all of them).
    pub fn texts(&self, user: &Map<String, Value>) -> Vec<String> {
        match self.get(user) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| match i {
                    Value::Object(o) => get_ci(o, "value").and_then(scalar_text),
                    other => scalar_text(other),
                })
                .collect(),
            Some(v) => scalar_text(v).into_iter().collect(),
            None => vec![],
        }
    }
}

/// A JSON scalar as text: strings as they are, numbers and booleans printed; `None` for null, arrays and objects.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// [`scalar`], or the first element of an array of scalars.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Array(a) => a.first().and_then(scalar_text),
        v => scalar(v),
    }
}

fn get_ci<'m>(m: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    m.get(key)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

fn eq_ci(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    }
}

/// The text at `path` in `user` (parsing the path each time; adapters parse once with [`Path::parse`]).
pub fn lookup(user: &Map<String, Value>, path: &str) -> Option<String> {
    Path::parse(path).ok()?.text(user)
}

/// A string with `{path}` placeholders, e.g. `uid={userName},ou=people,dc=example,dc=com`. `{{` and `}}` are
/// literal braces. Each value passes through the caller's escaper (RFC 4514 for a DN, say) before it is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Attr(Path, String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, PathError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(bad(text, "unclosed {"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    let p = Path::parse(&name)?;
                    parts.push(Part::Attr(p, name));
                }
                '}' => return Err(bad(text, "unmatched }")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            source: text.to_string(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The attribute paths the template reads.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attr(_, n) => Some(n.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Fill the template. A missing value is a non-retriable `Rejected` error naming the attribute.
    pub fn render(&self, user: &Map<String, Value>, escape: impl Fn(&str) -> String) -> Result<String, AdapterError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Attr(path, name) => {
                    let v = path.text(user).filter(|v| !v.is_empty()).ok_or_else(|| {
                        AdapterError::rejected(format!("the user has no {name}, which {:?} needs", self.source))
                    })?;
                    out.push_str(&escape(&v));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> Map<String, Value> {
        json!({
            "id": "u1",
            "userName": "ada",
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "home@x", "type": "home"}, {"value": "ada@x", "type": "work", "primary": true}],
            "active": true,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "department": "R&D", "manager": {"value": "m1"}
            }
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    #[test]
    fn paths_read_what_scim_means() {
        let u = user();
        assert_eq!(lookup(&u, "userName").as_deref(), Some("ada"));
        assert_eq!(lookup(&u, "USERNAME").as_deref(), Some("ada"));
        assert_eq!(lookup(&u, "name.familyName").as_deref(), Some("Lovelace"));
        assert_eq!(lookup(&u, "emails[type eq \"home\"].value").as_deref(), Some("home@x"));
        assert_eq!(lookup(&u, "emails.value").as_deref(), Some("ada@x"), "primary wins");
        assert_eq!(lookup(&u, "emails[primary eq true].value").as_deref(), Some("ada@x"));
        assert_eq!(lookup(&u, "active").as_deref(), Some("true"));
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        assert_eq!(lookup(&u, &format!("{ent}:department")).as_deref(), Some("R&D"));
        assert_eq!(lookup(&u, &format!("{ent}:manager.value")).as_deref(), Some("m1"));
        assert_eq!(lookup(&u, "title"), None);
        assert_eq!(
            Path::parse("emails").map(|p| p.texts(&u)),
            Ok(vec!["home@x".into(), "ada@x".into()])
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "",
            "a b",
            "emails[type]",
            "emails[type eq x]",
            "a.b.c",
            "emails[type eq \"w\"",
        ] {
            assert!(Path::parse(p).is_err(), "{p}");
        }
    }

    #[test]
    fn templates_escape_every_value() {
        let t = Template::parse("uid={userName},ou={{people}}").expect("parse");
        assert_eq!(
            t.render(&user(), |v| v.to_uppercase()).expect("render"),
            "uid=ADA,ou={people}"
        );
        assert_eq!(t.paths().collect::<Vec<_>>(), vec!["userName"]);
        let missing = Template::parse("cn={title}").expect("parse");
        let e = missing.render(&user(), str::to_string).expect_err("missing");
        assert!(!e.retriable);
        assert!(Template::parse("cn={userName").is_err());
        assert!(Template::parse("cn=}").is_err());
    }
}
