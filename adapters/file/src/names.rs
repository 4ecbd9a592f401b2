//! File names: the `file_name` template and the check that a name stays a plain name inside the directory.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use scimgate_adapter_sdk::AdapterError;

/// Why a name is refused, or `None` when it is a plain file name: not empty, at most 255 bytes, no `/`, `\`,
/// `:`, NUL or other control character, no `..`, and no leading `.` (temporary files start with one).
pub fn refuse_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if name.contains(['/', '\\']) {
        Some("it holds a path separator")
    } else if name.contains(':') {
        Some("it holds a colon")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else if name.contains("..") {
        Some("it holds ..")
    } else if name.starts_with('.') {
        Some("it starts with a dot")
    } else {
        None
    }
}

pub fn check(name: &str) -> Result<(), AdapterError> {
    match refuse_reason(name) {
        None => Ok(()),
        Some(why) => Err(AdapterError::config(format!("file name {name:?} is refused: {why}"))),
    }
}

/// `dir/name`, refused unless the result is a direct child of `dir`.
pub fn inside(dir: &Path, name: &str) -> Result<PathBuf, AdapterError> {
    check(name)?;
    let p = dir.join(name);
    if p.parent() != Some(dir) || p.file_name().and_then(|n| n.to_str()) != Some(name) {
        return Err(AdapterError::config(format!(
            "file name {name:?} leaves {}",
            dir.display()
        )));
    }
    Ok(p)
}

/// `dir/name` on an SFTP server (always `/`-separated).
pub fn remote(dir: &str, name: &str) -> Result<String, AdapterError> {
    check(name)?;
    Ok(format!("{}/{name}", dir.trim_end_matches('/')))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Timestamp,
    Date,
    Seq,
    Uuid,
}

/// A parsed `file_name` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    parts: Vec<Part>,
}

impl NameTemplate {
    /// Parse and check: only the whitelisted placeholders, and a sample rendering must be a plain name.
    pub fn parse(text: &str) -> Result<NameTemplate, AdapterError> {
        let bad = |why: &str| AdapterError::config(format!("file_name {text:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(bad("unmatched }"));
            }
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(bad("unclosed {"));
            };
            parts.push(match &rest[open + 1..open + close] {
                "timestamp" => Part::Timestamp,
                "date" => Part::Date,
                "seq" => Part::Seq,
                "uuid" => Part::Uuid,
                other => {
                    return Err(bad(&format!(
                        "unknown placeholder {{{other}}} (use {{timestamp}}, {{date}}, {{seq}}, {{uuid}})"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(bad("unmatched }"));
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let t = NameTemplate { parts };
        check(&t.render(DateTime::<Utc>::UNIX_EPOCH, 0, "0"))?;
        Ok(t)
    }

    /// Whether two renderings at different moments or counters differ (a delta template needs this).
    pub fn is_unique(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Timestamp | Part::Seq | Part::Uuid))
    }

    pub fn render(&self, now: DateTime<Utc>, seq: u64, uuid: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Timestamp => out.push_str(&now.format("%Y%m%dT%H%M%S%3fZ").to_string()),
                Part::Date => out.push_str(&now.format("%Y%m%d").to_string()),
                Part::Seq => out.push_str(&format!("{seq:06}")),
                Part::Uuid => out.push_str(uuid),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for bad in [
            "../x.csv", "/etc/x", "a/b.csv", "..", ".", "a\\b.csv", "x\0.csv", "", ".hidden", "c:x", "a..b",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
            assert!(NameTemplate::parse(bad).is_err(), "template {bad:?} accepted");
        }
        assert!(NameTemplate::parse("{timestamp}/../x").is_err());
        assert!(NameTemplate::parse("users-{home}.csv").is_err());
        assert!(NameTemplate::parse("users-{seq.csv").is_err());
        assert!(NameTemplate::parse("users-}.csv").is_err());
    }

    #[test]
    fn templates_render_plain_names() {
        let t = NameTemplate::parse("users-{timestamp}-{seq}.csv").expect("template");
        assert!(t.is_unique());
        let now = DateTime::parse_from_rfc3339("2024-01-31T23:59:59.123Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(t.render(now, 7, "u"), "users-20240131T235959123Z-000007.csv");
        assert!(!NameTemplate::parse("users-{date}.csv").expect("template").is_unique());
        assert_eq!(
            inside(Path::new("/srv/out"), "a.csv").expect("inside"),
            PathBuf::from("/srv/out/a.csv")
        );
        assert!(inside(Path::new("/srv/out"), "../a.csv").is_err());
        assert_eq!(remote("/srv/out/", "a.csv").expect("remote"), "/srv/out/a.csv");
    }

    proptest! {
        #[test]
        fn an_accepted_name_is_a_single_normal_component(name in "\\PC{0,40}") {
            if check(&name).is_ok() {
                let p = inside(Path::new("/base"), &name).expect("inside");
                prop_assert_eq!(p.parent(), Some(Path::new("/base")));
                let comps: Vec<_> = Path::new(&name).components().collect();
                prop_assert_eq!(comps.len(), 1);
                prop_assert!(matches!(comps[0], std::path::Component::Normal(_)));
            }
        }
    }
}
