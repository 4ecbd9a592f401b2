//! Lowering resolved filters to SQL over the indexed columns.
//!
//! Every fragment is two-valued (never SQL NULL), so `NOT` and `ne` mean exactly what the in-memory evaluator
//! means: `ne` is `not eq`, and an absent attribute is `ne` anything. What cannot be lowered stays a residual
//! filter for [`scimgate_scim::eval::matches`].

use scimgate_scim::filter::{AttrPath, CompValue, CompareOp, Filter};
use scimgate_scim::resource::{normalize_datetime, parse_datetime};
use scimgate_scim::schema::ResourceKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Byte-order comparison on PostgreSQL whatever the database collation (SQLite's BINARY already is).
    fn ordered(self, col: &str) -> String {
        match self {
            Dialect::Sqlite => col.to_string(),
            Dialect::Postgres => format!("{col} COLLATE \"C\""),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    Exact,
    Lower,
    Time,
}

enum Col {
    Plain(&'static str, Fold),
    Emails,
}

fn column(kind: ResourceKind, p: &AttrPath) -> Option<Col> {
    if p.urn.is_some() {
        return None;
    }
    let sub = p.sub.as_deref();
    Some(match (kind, p.attr.as_str(), sub) {
        (_, "id", None) => Col::Plain("r.id", Fold::Exact),
        (_, "externalId", None) => Col::Plain("r.external_id", Fold::Exact),
        (_, "meta", Some("created")) => Col::Plain("r.created", Fold::Time),
        (_, "meta", Some("lastModified")) => Col::Plain("r.last_modified", Fold::Time),
        (_, "displayName", None) => Col::Plain("r.display_name_lower", Fold::Lower),
        (ResourceKind::User, "userName", None) => Col::Plain("r.user_name_lower", Fold::Lower),
        (ResourceKind::User, "emails", None | Some("value")) => Col::Emails,
        _ => return None,
    })
}

/// The ORDER BY column for a sort attribute, if it has one.
pub(crate) fn sort_column(kind: ResourceKind, p: &AttrPath, d: Dialect) -> Option<String> {
    match column(kind, p)? {
        Col::Plain(c, _) => Some(d.ordered(c)),
        Col::Emails => None,
    }
}

pub(crate) struct Binds(pub Vec<String>);

impl Binds {
    fn push(&mut self, v: String) -> String {
        self.0.push(v);
        format!("${}", self.0.len())
    }
}

fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lower a whole filter, or `None` if any part cannot be.
pub(crate) fn lower(kind: ResourceKind, d: Dialect, f: &Filter, b: &mut Binds) -> Option<String> {
    match f {
        Filter::And(x, y) => {
            let mark = b.0.len();
            match (lower(kind, d, x, b), lower(kind, d, y, b)) {
                (Some(x), Some(y)) => Some(format!("({x} AND {y})")),
                _ => {
                    b.0.truncate(mark);
                    None
                }
            }
        }
        Filter::Or(x, y) => {
            let mark = b.0.len();
            match (lower(kind, d, x, b), lower(kind, d, y, b)) {
                // The tenant and the live-row condition are repeated inside each branch, so that every branch can
                // seek an index on its own ((tenant, user_name_lower) is partial, `WHERE archived_at IS NULL`):
                // SQLite and PostgreSQL then answer an `or` of indexed comparisons as a union of index lookups
                // instead of scanning the tenant. ($1 is the tenant; both conditions hold outside anyway.)
                (Some(x), Some(y)) => Some(format!(
                    "((r.tenant = $1 AND r.archived_at IS NULL AND {x}) OR (r.tenant = $1 AND r.archived_at IS NULL AND {y}))"
                )),
                _ => {
                    b.0.truncate(mark);
                    None
                }
            }
        }
        Filter::Not(x) => lower(kind, d, x, b).map(|x| format!("(NOT {x})")),
        Filter::Present(p) => {
            if p.sub.is_none() && p.attr == "emails" {
                return None;
            }
            match column(kind, p)? {
                Col::Plain(c, _) => Some(format!("({c} IS NOT NULL AND {c} <> '')")),
                Col::Emails => Some(
                    "EXISTS (SELECT 1 FROM scim_user_emails e WHERE e.tenant = r.tenant AND e.user_id = r.id AND e.value_lower <> '')"
                        .to_string(),
                ),
            }
        }
        Filter::Compare { path, op, value } => compare(kind, d, path, *op, value, b),
        Filter::ValuePath { .. } => None,
    }
}

fn compare(
    kind: ResourceKind,
    d: Dialect,
    path: &AttrPath,
    op: CompareOp,
    value: &CompValue,
    b: &mut Binds,
) -> Option<String> {
    let CompValue::Str(raw) = value else {
        return None;
    };
    let col = column(kind, path)?;
    let fold = match col {
        Col::Plain(_, f) => f,
        Col::Emails => Fold::Lower,
    };
    let v = match fold {
        Fold::Exact => raw.clone(),
        Fold::Lower => raw.to_lowercase(),
        Fold::Time => {
            let norm = normalize_datetime(raw)?;
            // Sub-millisecond precision would be lost: leave such values to memory.
            if parse_datetime(&norm)? != parse_datetime(raw)? {
                return None;
            }
            norm
        }
    };
    let (c, wrap): (&str, bool) = match col {
        Col::Plain(c, _) => (c, false),
        Col::Emails => ("e.value_lower", true),
    };
    let test = match op {
        CompareOp::Eq | CompareOp::Ne => format!("{c} = {}", b.push(v)),
        CompareOp::Co => format!("{c} LIKE {} ESCAPE '\\'", b.push(format!("%{}%", like_escape(&v)))),
        CompareOp::Sw => format!("{c} LIKE {} ESCAPE '\\'", b.push(format!("{}%", like_escape(&v)))),
        CompareOp::Ew => format!("{c} LIKE {} ESCAPE '\\'", b.push(format!("%{}", like_escape(&v)))),
        CompareOp::Gt => format!("{} > {}", d.ordered(c), b.push(v)),
        CompareOp::Ge => format!("{} >= {}", d.ordered(c), b.push(v)),
        CompareOp::Lt => format!("{} < {}", d.ordered(c), b.push(v)),
        CompareOp::Le => format!("{} <= {}", d.ordered(c), b.push(v)),
    };
    let positive = if wrap {
        format!("EXISTS (SELECT 1 FROM scim_user_emails e WHERE e.tenant = r.tenant AND e.user_id = r.id AND {test})")
    } else {
        format!("({c} IS NOT NULL AND {test})")
    };
    Some(if op == CompareOp::Ne {
        format!("(NOT {positive})")
    } else {
        positive
    })
}

/// Split a filter into a SQL prefilter (the lowerable top-level conjuncts) and an in-memory residual.
pub(crate) fn split(kind: ResourceKind, d: Dialect, f: &Filter, b: &mut Binds) -> (Vec<String>, Option<Filter>) {
    if let Some(sql) = lower(kind, d, f, b) {
        return (vec![sql], None);
    }
    match f {
        Filter::And(x, y) => {
            let (mut sx, rx) = split(kind, d, x, b);
            let (sy, ry) = split(kind, d, y, b);
            sx.extend(sy);
            let residual = match (rx, ry) {
                (Some(x), Some(y)) => Some(Filter::And(Box::new(x), Box::new(y))),
                (x, y) => x.or(y),
            };
            (sx, residual)
        }
        other => (vec![], Some(other.clone())),
    }
}
