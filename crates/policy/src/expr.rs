//! CEL: the shared environment, compiling a condition written in the policy file (with its errors placed in the
//! file), and turning an identity into CEL values.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use cel::common::ast::Expr;
use cel::{Env, IdedExpr, Program, Value};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::CEL_VARIABLES;
use crate::error::{Kind, Reporter};

/// Identifiers that are not variables: CEL type names.
const TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];
/// Namespaces of functions (`math.greatest(...)`, `optional.of(...)`).
const NAMESPACES: [&str; 4] = ["math", "strings", "lists", "optional"];

/// The standard CEL library plus the strings, lists and math extensions; built once per process.
pub(crate) fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    Arc::clone(ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // These only fail on a name declared twice, which cannot happen on a fresh stdlib environment; an extension
        // that failed would only leave its functions out.
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::lists);
        let _ = env.add_extension(cel::extensions::math);
        Arc::new(env)
    }))
}

/// Where the characters of a string value start in the file, when they can be mapped one to one (a literal string,
/// or a basic string without escapes).
fn content_start(text: &str, span: &Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    for (open, close) in [("'''", "'''"), ("\"\"\"", "\"\"\""), ("'", "'"), ("\"", "\"")] {
        if let Some(inner) = raw.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            let mut skip = open.len();
            let mut inner = inner;
            if open.len() == 3 {
                // A newline right after the opening delimiter is not part of the value.
                if let Some(rest) = inner.strip_prefix("\r\n") {
                    inner = rest;
                    skip += 2;
                } else if let Some(rest) = inner.strip_prefix('\n') {
                    inner = rest;
                    skip += 1;
                }
            }
            return (inner == value).then_some(span.start + skip);
        }
    }
    None
}

/// A CEL condition from the file, and where it is.
pub(crate) struct Source<'a> {
    pub value: &'a str,
    /// Byte range of the TOML value (with its quotes); `None` for a built-in default.
    pub span: Option<Range<usize>>,
    /// Key path, for messages.
    pub path: String,
}

impl Source<'_> {
    /// The byte offset in the file of the character at `char_index` of the expression, or of the value itself when
    /// characters cannot be mapped.
    fn offset_of_char(&self, text: &str, char_index: usize) -> usize {
        let Some(span) = &self.span else { return 0 };
        match content_start(text, span, self.value) {
            Some(start) => {
                let byte = self
                    .value
                    .char_indices()
                    .nth(char_index)
                    .map_or(self.value.len(), |(b, _)| b);
                start + byte
            }
            None => span.start,
        }
    }

    /// The byte offset in the file of a 1-based line and column of the expression.
    fn offset_of_line_column(&self, text: &str, line: isize, column: isize) -> usize {
        let line = usize::try_from(line.max(1)).unwrap_or(1);
        let column = usize::try_from(column.max(1)).unwrap_or(1);
        let mut chars = 0;
        for (i, l) in self.value.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let len = l.trim_end_matches('\n').chars().count();
                return self.offset_of_char(text, chars + (column - 1).min(len));
            }
            chars += l.chars().count();
        }
        self.offset_of_char(text, chars)
    }
}

/// Compiles a condition, reporting a syntax error or an unknown variable at its place in the file.
pub(crate) fn compile(env: &Env, source: &Source<'_>, reporter: &mut Reporter<'_>) -> Option<Program> {
    let text = reporter.text();
    let program = match env.compile(source.value) {
        Ok(program) => program,
        Err(errors) => {
            let (offset, message) = match errors.errors.first() {
                Some(e) => (
                    source.offset_of_line_column(text, e.pos.0, e.pos.1),
                    format!("CEL: {}", e.msg),
                ),
                None => (source.offset_of_char(text, 0), "CEL: does not compile".to_owned()),
            };
            reporter.report(Kind::Cel, offset, source.path.clone(), message);
            return None;
        }
    };
    let mut unknown = Vec::new();
    let mut bound = Vec::new();
    undeclared(program.expression(), &mut bound, &mut unknown);
    if unknown.is_empty() {
        return Some(program);
    }
    let mut seen = BTreeSet::new();
    for (name, id) in unknown {
        if !seen.insert(name.clone()) {
            continue;
        }
        let char_index = program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        let offset = source.offset_of_char(text, char_index);
        reporter.report(
            Kind::Cel,
            offset,
            source.path.clone(),
            format!(
                "undeclared reference to '{name}' (the variables are {})",
                CEL_VARIABLES.join(", ")
            ),
        );
    }
    None
}

/// Collects the identifiers that are neither a policy variable, a comprehension variable in scope, a type name nor
/// a function namespace.
fn undeclared(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<(String, u64)>) {
    match &e.expr {
        Expr::Ident(name) => {
            let known = name.starts_with('@')
                || CEL_VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str())
                || bound.iter().any(|b| b == name);
            if !known {
                out.push((name.clone(), e.id));
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                let namespace = matches!(&target.expr, Expr::Ident(n) if NAMESPACES.contains(&n.as_str()));
                if !namespace {
                    undeclared(target, bound, out);
                }
            }
            for arg in &call.args {
                undeclared(arg, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            undeclared(&c.iter_range, bound, out);
            undeclared(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            undeclared(&c.loop_cond, bound, out);
            undeclared(&c.loop_step, bound, out);
            undeclared(&c.result, bound, out);
            bound.truncate(depth);
        }
        Expr::List(list) => {
            for element in &list.elements {
                undeclared(element, bound, out);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                entry_refs(&entry.expr, bound, out);
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                entry_refs(&entry.expr, bound, out);
            }
        }
        Expr::Select(select) => undeclared(&select.operand, bound, out),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry_refs(entry: &cel::common::ast::EntryExpr, bound: &mut Vec<String>, out: &mut Vec<(String, u64)>) {
    match entry {
        cel::common::ast::EntryExpr::StructField(field) => undeclared(&field.value, bound, out),
        cel::common::ast::EntryExpr::MapEntry(entry) => {
            undeclared(&entry.key, bound, out);
            undeclared(&entry.value, bound, out);
        }
    }
}

/// An `xsd:dateTime` (RFC 3339; a missing offset means UTC) or an `xsd:date` (midnight UTC).
pub(crate) fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(dt.and_utc());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc())
}

/// A JSON value as a CEL value: integers that fit as `int` (else `uint`, else `double`).
pub(crate) fn json_to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        serde_json::Value::Object(map) => object_to_cel(map.iter().map(|(k, v)| (k.clone(), json_to_cel(v)))),
    }
}

/// A CEL map from string keys.
pub(crate) fn object_to_cel(entries: impl Iterator<Item = (String, Value)>) -> Value {
    Value::from(entries.collect::<HashMap<String, Value>>())
}

/// A timestamp as a CEL value.
pub(crate) fn timestamp(t: DateTime<Utc>) -> Value {
    Value::Timestamp(t.fixed_offset())
}
