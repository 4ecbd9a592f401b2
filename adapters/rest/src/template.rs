//! URL and body templates (minijinja), escaped by context so no value can change a request's shape:
//! - in a URL template every `{{ value }}` is percent-encoded as one URL component (only `A-Z a-z 0-9 - . _ ~`
//!   stay as they are), so a value never adds a `/`, `?`, `#`, `&`, `@` or `:`; a missing or empty value is an
//!   error, never an empty path segment;
//! - in a body template every `{{ value }}` renders as a JSON literal (a string with its quotes and escapes, a
//!   number, a list), and the result must parse as JSON.
//!
//! `|safe` does not bypass either: the formatter escapes every value the same way. Templates get a bounded
//! amount of fuel, so a runaway loop in a config is an error, not a hang.

use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, Value};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use scimgate_adapter_sdk::AdapterError;
use scimgate_adapter_sdk::mapping::Path;

/// Everything but RFC 3986 unreserved characters.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

const FUEL: u64 = 100_000;

/// Percent-encode a value as one URL component.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// `scim("emails[type eq \"work\"].value")`: the SDK's SCIM path lookup on the template's `user`.
fn scim(state: &State, path: &str) -> Result<Value, Error> {
    let p = Path::parse(path).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let user = state.lookup("user").unwrap_or(Value::UNDEFINED);
    let json = serde_json::to_value(&user).map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    Ok(json
        .as_object()
        .and_then(|u| p.get(u))
        .map(Value::from_serialize)
        .unwrap_or(Value::UNDEFINED))
}

fn url_value(out: &mut minijinja::Output, _: &State, v: &Value) -> Result<(), Error> {
    let text = match v.kind() {
        ValueKind::Undefined | ValueKind::None => None,
        ValueKind::String | ValueKind::Number | ValueKind::Bool => Some(v.to_string()),
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a URL template can only print strings, numbers and booleans",
            ));
        }
    };
    match text.filter(|t| !t.is_empty()) {
        Some(t) => out.write_str(&encode_component(&t)).map_err(Error::from),
        None => Err(Error::new(
            ErrorKind::UndefinedError,
            "a value a URL template prints is missing or empty",
        )),
    }
}

fn json_value(out: &mut minijinja::Output, _: &State, v: &Value) -> Result<(), Error> {
    let text = if v.is_undefined() {
        "null".to_string()
    } else {
        serde_json::to_string(v).map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?
    };
    out.write_str(&text).map_err(Error::from)
}

/// The compiled URL and body templates of one adapter.
pub struct Templates {
    url: Environment<'static>,
    body: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut url = Environment::new();
        url.set_undefined_behavior(UndefinedBehavior::Chainable);
        url.set_formatter(url_value);
        url.add_function("scim", scim);
        url.set_fuel(Some(FUEL));
        let mut body = Environment::new();
        body.set_undefined_behavior(UndefinedBehavior::Chainable);
        body.set_auto_escape_callback(|_| AutoEscape::Json);
        body.set_formatter(json_value);
        body.add_function("scim", scim);
        body.set_fuel(Some(FUEL));
        Templates { url, body }
    }

    pub fn add_url(&mut self, name: &str, source: &str) -> Result<(), AdapterError> {
        self.url
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| AdapterError::config(format!("URL template {name}: {e}")))
    }

    pub fn add_body(&mut self, name: &str, source: &str) -> Result<(), AdapterError> {
        self.body
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| AdapterError::config(format!("body template {name}: {e}")))
    }

    /// Render a URL template. A missing value is the data's fault: a non-retriable `Rejected`.
    pub fn render_url(&self, name: &str, ctx: &Value) -> Result<String, AdapterError> {
        let t = self
            .url
            .get_template(name)
            .map_err(|e| AdapterError::config(format!("URL template {name}: {e}")))?;
        t.render(ctx).map_err(|e| render_error("URL", name, &e))
    }

    /// Render a body template and parse it as JSON.
    pub fn render_body(&self, name: &str, ctx: &Value) -> Result<serde_json::Value, AdapterError> {
        let t = self
            .body
            .get_template(name)
            .map_err(|e| AdapterError::config(format!("body template {name}: {e}")))?;
        let text = t.render(ctx).map_err(|e| render_error("body", name, &e))?;
        serde_json::from_str(&text)
            .map_err(|e| AdapterError::config(format!("body template {name} did not render JSON: {e}")))
    }
}

fn render_error(kind: &str, name: &str, e: &Error) -> AdapterError {
    match e.kind() {
        ErrorKind::UndefinedError => AdapterError::rejected(format!("{kind} template {name}: {e}")),
        _ => AdapterError::config(format!("{kind} template {name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ctx(user_name: &str) -> Value {
        Value::from_serialize(json!({
            "user": {"userName": user_name, "name": {"familyName": "L"}, "emails": [{"value": "a@x", "primary": true}]},
            "id": 7,
            "enabled": true,
            "entitlements": ["g1", "g\"2"],
        }))
    }

    fn t() -> Templates {
        let mut t = Templates::new();
        t.add_url("u", "/users/{{ user.userName }}?id={{ id }}").expect("url");
        t.add_url("safe", "/users/{{ user.userName|safe }}").expect("url");
        t.add_url("missing", "/users/{{ user.nickName }}").expect("url");
        t.add_body(
            "b",
            r#"{"login": {{ user.userName }}, "given": {{ user.name.givenName }}, "mail": {{ scim("emails.value") }},
                "groups": {{ entitlements }}, "active": {{ enabled }}, "n": {{ id }}}"#,
        )
        .expect("body");
        t.add_body(
            "loop",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .expect("body");
        t
    }

    #[test]
    fn bodies_render_every_value_as_json() {
        let b = t().render_body("b", &ctx(r#"x","admin":true,"y":""#)).expect("render");
        assert_eq!(
            b,
            json!({"login": r#"x","admin":true,"y":""#, "given": null, "mail": "a@x", "groups": ["g1", "g\"2"],
                   "active": true, "n": 7})
        );
        assert!(b.get("admin").is_none());
    }

    #[test]
    fn urls_encode_every_value_as_one_component() {
        let t = t();
        assert_eq!(
            t.render_url("u", &ctx("../../admin?x=1#")).expect("url"),
            "/users/..%2F..%2Fadmin%3Fx%3D1%23?id=7"
        );
        assert_eq!(t.render_url("safe", &ctx("a/b")).expect("url"), "/users/a%2Fb");
        let e = t.render_url("missing", &ctx("a")).expect_err("missing");
        assert!(!e.retriable);
    }

    #[test]
    fn runaway_templates_stop() {
        assert!(t().render_body("loop", &ctx("a")).is_err());
    }

    proptest! {
        #[test]
        fn any_user_name_stays_one_json_string(s in any::<String>()) {
            let b = t().render_body("b", &ctx(&s)).expect("render");
            prop_assert_eq!(b.get("login"), Some(&serde_json::Value::String(s)));
            prop_assert_eq!(b.as_object().map(|o| o.len()), Some(6));
        }

        #[test]
        fn any_user_name_stays_one_url_component(s in any::<String>().prop_filter("non-empty", |s| !s.is_empty())) {
            let u = t().render_url("u", &ctx(&s)).expect("render");
            let seg = u.strip_prefix("/users/").and_then(|r| r.strip_suffix("?id=7")).expect("shape");
            prop_assert!(seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
            let back = percent_encoding::percent_decode_str(seg).decode_utf8().expect("utf8");
            prop_assert_eq!(back.as_ref(), s.as_str());
        }
    }
}
