//! SCIM filter text (RFC 7644 §3.4.2.2) built from values that are never trusted.

/// A comparison value as a SCIM filter string literal: the JSON string grammar the filter ABNF uses, so `"`
/// and `\` (and control characters) are escaped and the value cannot end the literal early.
pub fn string_literal(value: &str) -> String {
    serde_json::Value::String(value.to_string()).to_string()
}

/// Whether `name` is an attribute path this adapter may put into a filter as it is: `userName`,
/// `name.familyName`, or an extension URN attribute. Anything else is filtered in memory instead.
pub fn is_attr_path(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-' | '$'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// `attr eq "value"`.
pub fn eq(attr: &str, value: &str) -> String {
    format!("{attr} eq {}", string_literal(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(eq("userName", r#"a"b\c"#), r#"userName eq "a\"b\\c""#);
        assert_eq!(
            eq("externalId", r#"x" or userName pr or "y"#),
            r#"externalId eq "x\" or userName pr or \"y""#
        );
        assert!(is_attr_path("name.familyName"));
        assert!(is_attr_path(
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"
        ));
        assert!(!is_attr_path("userName eq \"x\" or id"));
        assert!(!is_attr_path(""));
    }

    proptest! {
        #[test]
        fn a_literal_is_one_string_token(s in any::<String>()) {
            let lit = string_literal(&s);
            // It parses back to the value, and the only unescaped quotes are the two around it.
            prop_assert_eq!(serde_json::from_str::<String>(&lit).ok(), Some(s));
            let inner = &lit[1..lit.len() - 1];
            let mut escaped = false;
            for c in inner.chars() {
                prop_assert!(escaped || c != '"');
                escaped = !escaped && c == '\\';
            }
        }
    }
}
