//! Replays recorded IdP request sequences (Okta, Microsoft Entra ID) against the real gateway.
//!
//! Every `*.json` file under `conformance/fixtures/` is one scenario; see `conformance/README.md` for the
//! format. Each scenario runs against its own freshly started gateway, so scenarios never see each other's
//! data. All scenarios run (a failing one does not hide the others); the test then fails listing every
//! failed scenario with the step, the request, what was expected, what came back and the whole response body.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use common::{Backend, Gateway, TOKEN};

/// At least this many fixture files must run, so an empty or misplaced directory cannot pass.
const MIN_FIXTURES: usize = 10;
/// Scenarios in flight at once (each has its own gateway process).
const PARALLEL: usize = 4;
const DEFAULT_CONTENT_TYPE: &str = "application/scim+json";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    name: String,
    /// Where the requests come from: document title and section.
    source: String,
    #[serde(default)]
    description: Option<String>,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: String,
    /// Free text: why the step expects what it expects (RFC section, doc quote).
    #[serde(default)]
    note: Option<String>,
    method: String,
    /// Relative to the SCIM base, e.g. `/Users?filter=userName eq "x"`. The query is written unencoded and
    /// split on `&` and the first `=`; the player percent-encodes each name and value.
    path: String,
    #[serde(default)]
    body: Option<Value>,
    /// Content-Type of the body; default `application/scim+json`.
    #[serde(default)]
    content_type: Option<String>,
    /// Extra request headers (e.g. `Authorization` with `no_auth`).
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Do not send the default bearer token.
    #[serde(default)]
    no_auth: bool,
    /// The expected status, or a list of acceptable ones.
    status: StatusSpec,
    /// Variable name -> JSON pointer into the response body.
    #[serde(default)]
    save: BTreeMap<String, String>,
    /// JSON pointer -> exact value.
    #[serde(default)]
    expect: BTreeMap<String, Value>,
    /// JSON pointer -> array length.
    #[serde(default)]
    expect_len: BTreeMap<String, usize>,
    /// Pointer with one `*` segment (`/members/*/value`) -> the values it collects, in any order.
    #[serde(default)]
    expect_unordered: BTreeMap<String, Vec<Value>>,
    /// Pointers that must not exist in the response body.
    #[serde(default)]
    absent: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StatusSpec {
    One(u16),
    AnyOf(Vec<u16>),
}

impl StatusSpec {
    fn accepts(&self, s: u16) -> bool {
        match self {
            StatusSpec::One(e) => *e == s,
            StatusSpec::AnyOf(l) => l.contains(&s),
        }
    }

    fn describe(&self) -> String {
        match self {
            StatusSpec::One(e) => e.to_string(),
            StatusSpec::AnyOf(l) => format!("one of {l:?}"),
        }
    }
}

type Vars = BTreeMap<String, String>;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join("fixtures")
}

fn collect_json(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            collect_json(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// Every fixture, sorted by path, as (path relative to the fixtures dir, fixture).
fn load_fixtures() -> Vec<(String, Fixture)> {
    let root = fixtures_dir();
    let mut files = Vec::new();
    collect_json(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {rel}: {e}"));
            let fx: Fixture = serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {rel} is malformed: {e}"));
            assert!(!fx.steps.is_empty(), "fixture {rel} has no steps");
            assert!(!fx.source.trim().is_empty(), "fixture {rel} has no source");
            (rel, fx)
        })
        .collect()
}

/// Replace every `${name}` in `s` with its saved value.
fn subst(s: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        let v = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable ${{{name}}} in {s:?} (known: {:?})", vars.keys()))?;
        out.push_str(v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn subst_value(v: &Value, vars: &Vars) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(subst(s, vars)?),
        Value::Array(a) => Value::Array(a.iter().map(|x| subst_value(x, vars)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            let mut m = serde_json::Map::new();
            for (k, x) in o {
                m.insert(subst(k, vars)?, subst_value(x, vars)?);
            }
            Value::Object(m)
        }
        other => other.clone(),
    })
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `/Users?filter=userName eq "x"&count=1` -> `/Users?filter=userName%20eq%20%22x%22&count=1`.
fn encode_path(path: &str) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_string();
    };
    let query: Vec<String> = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => format!("{}={}", encode(k), encode(v)),
            None => encode(kv),
        })
        .collect();
    format!("{p}?{}", query.join("&"))
}

/// The values a pointer with one `*` segment collects: `/members/*/value` -> every member's value.
fn collect_wildcard(body: &Value, pointer: &str) -> Result<Vec<Value>, String> {
    let (prefix, suffix) = match pointer.split_once("/*") {
        Some((p, s)) if s.is_empty() || s.starts_with('/') => (p, s),
        _ => {
            return Err(format!("{pointer}: expect_unordered needs exactly one `/*` segment"));
        }
    };
    match body.pointer(prefix) {
        Some(Value::Array(a)) => Ok(a.iter().filter_map(|el| el.pointer(suffix).cloned()).collect()),
        Some(other) => Err(format!("{prefix}: expected an array, got {other}")),
        None => Ok(vec![]),
    }
}

fn same_multiset(expected: &[Value], actual: &[Value]) -> bool {
    let mut left: Vec<&Value> = actual.iter().collect();
    for e in expected {
        match left.iter().position(|a| *a == e) {
            Some(i) => {
                left.swap_remove(i);
            }
            None => return false,
        }
    }
    left.is_empty()
}

struct Sent {
    method: String,
    path: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

struct Received {
    status: u16,
    content_type: Option<String>,
    body: Value,
}

async fn send(gw: &Gateway, step: &Step, vars: &Vars) -> Result<(Sent, Received), String> {
    let path = subst(&step.path, vars)?;
    let body = step.body.as_ref().map(|b| subst_value(b, vars)).transpose()?;
    let url = gw.url(&encode_path(&path));
    let method =
        reqwest::Method::from_bytes(step.method.as_bytes()).map_err(|e| format!("method {}: {e}", step.method))?;
    let mut headers = Vec::new();
    if !step.no_auth {
        headers.push(("Authorization".to_string(), format!("Bearer {TOKEN}")));
    }
    if body.is_some() {
        headers.push((
            "Content-Type".to_string(),
            step.content_type.clone().unwrap_or_else(|| DEFAULT_CONTENT_TYPE.into()),
        ));
    }
    for (k, v) in &step.headers {
        headers.push((k.clone(), subst(v, vars)?));
    }
    let mut rb = gw.client.request(method, &url);
    for (k, v) in &headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    if let Some(b) = &body {
        rb = rb.body(b.to_string());
    }
    let sent = Sent {
        method: step.method.clone(),
        path,
        url,
        headers,
        body,
    };
    let resp = rb.send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.map_err(|e| format!("reading the body failed: {e}"))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((
        sent,
        Received {
            status,
            content_type,
            body,
        },
    ))
}

/// Everything wrong with one response, one line each.
fn check(step: &Step, got: &Received, vars: &Vars) -> Result<Vec<String>, String> {
    let mut bad = Vec::new();
    if !step.status.accepts(got.status) {
        bad.push(format!(
            "status: expected {}, got {}",
            step.status.describe(),
            got.status
        ));
        return Ok(bad);
    }
    if !got.body.is_null() {
        let mime = got
            .content_type
            .as_deref()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if mime != DEFAULT_CONTENT_TYPE {
            bad.push(format!(
                "Content-Type: expected {DEFAULT_CONTENT_TYPE}, got {:?}",
                got.content_type
            ));
        }
    }
    for (ptr, want) in &step.expect {
        let ptr = subst(ptr, vars)?;
        let want = subst_value(want, vars)?;
        match got.body.pointer(&ptr) {
            Some(v) if *v == want => {}
            Some(v) => bad.push(format!("{ptr}: expected {want}, got {v}")),
            None => bad.push(format!("{ptr}: expected {want}, but it is absent")),
        }
    }
    for (ptr, want) in &step.expect_len {
        let ptr = subst(ptr, vars)?;
        match got.body.pointer(&ptr) {
            Some(Value::Array(a)) if a.len() == *want => {}
            Some(Value::Array(a)) => bad.push(format!("{ptr}: expected {want} elements, got {}", a.len())),
            Some(v) => bad.push(format!("{ptr}: expected an array of {want}, got {v}")),
            None => bad.push(format!("{ptr}: expected an array of {want}, but it is absent")),
        }
    }
    for (ptr, want) in &step.expect_unordered {
        let ptr = subst(ptr, vars)?;
        let want: Vec<Value> = want.iter().map(|w| subst_value(w, vars)).collect::<Result<_, _>>()?;
        let actual = collect_wildcard(&got.body, &ptr)?;
        if !same_multiset(&want, &actual) {
            bad.push(format!(
                "{ptr}: expected {} in any order, got {}",
                Value::Array(want),
                Value::Array(actual)
            ));
        }
    }
    for ptr in &step.absent {
        let ptr = subst(ptr, vars)?;
        if let Some(v) = got.body.pointer(&ptr) {
            bad.push(format!("{ptr}: expected absent, got {v}"));
        }
    }
    Ok(bad)
}

/// Drop terminal colour sequences (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn report(
    file: &str,
    fx: &Fixture,
    idx: usize,
    step: &Step,
    sent: Option<&Sent>,
    got: Option<&Received>,
    problems: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "fixture {file} ({}), step {} of {}: {}",
        fx.name,
        idx + 1,
        fx.steps.len(),
        step.name
    );
    let _ = writeln!(s, "  source: {}", fx.source);
    if let Some(d) = &fx.description {
        let _ = writeln!(s, "  about: {d}");
    }
    if let Some(n) = &step.note {
        let _ = writeln!(s, "  note: {n}");
    }
    match sent {
        Some(r) => {
            let _ = writeln!(s, "  request: {} {}\n  url: {}", r.method, r.path, r.url);
            for (k, v) in &r.headers {
                let _ = writeln!(s, "  header: {k}: {v}");
            }
            if let Some(b) = &r.body {
                let _ = writeln!(s, "  body: {b}");
            }
        }
        None => {
            let _ = writeln!(s, "  request: {} {}", step.method, step.path);
        }
    }
    for p in problems {
        let _ = writeln!(s, "  MISMATCH {p}");
    }
    if let Some(g) = got {
        let _ = writeln!(
            s,
            "  response: {} (Content-Type {:?})\n{}",
            g.status,
            g.content_type,
            pretty(&g.body)
        );
    }
    s
}

/// Run one fixture on its own gateway. Ok(steps run) or Err(failure report).
async fn run_fixture(backend: Backend, file: &str, fx: &Fixture) -> Result<usize, String> {
    let gw = Gateway::start(backend).await;
    let mut vars = Vars::new();
    vars.insert("base".into(), gw.base.clone());
    vars.insert("guid".into(), uuid::Uuid::new_v4().to_string());
    for (i, step) in fx.steps.iter().enumerate() {
        let (sent, got) = match send(&gw, step, &vars).await {
            Ok(x) => x,
            Err(e) => return Err(report(file, fx, i, step, None, None, &[e])),
        };
        let mut problems = match check(step, &got, &vars) {
            Ok(p) => p,
            Err(e) => vec![e],
        };
        if problems.is_empty() {
            for (var, ptr) in &step.save {
                match got.body.pointer(ptr) {
                    Some(Value::String(s)) => {
                        vars.insert(var.clone(), s.clone());
                    }
                    Some(Value::Null) | None => problems.push(format!("save {var}: {ptr} is absent")),
                    Some(v) => {
                        vars.insert(var.clone(), v.to_string());
                    }
                }
            }
        }
        if !problems.is_empty() {
            let mut r = report(file, fx, i, step, Some(&sent), Some(&got), &problems);
            let log = gw.logs();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            if !tail.is_empty() {
                let _ = writeln!(r, "  gateway log (last lines):");
                for l in tail.into_iter().rev() {
                    let _ = writeln!(r, "    {}", strip_ansi(l));
                }
            }
            return Err(r);
        }
    }
    Ok(fx.steps.len())
}

async fn replay_all(backend: Backend) {
    let fixtures = load_fixtures();
    assert!(
        fixtures.len() >= MIN_FIXTURES,
        "only {} fixture files under {}; at least {MIN_FIXTURES} must run",
        fixtures.len(),
        fixtures_dir().display()
    );
    let results: Vec<(String, Result<usize, String>)> = futures::stream::iter(fixtures.iter())
        .map(|(file, fx)| async move { (file.clone(), run_fixture(backend, file, fx).await) })
        .buffered(PARALLEL)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut steps = 0;
    for (file, r) in &results {
        match r {
            Ok(n) => {
                steps += n;
                println!("ok   {backend:?} {file} ({n} steps)");
            }
            Err(e) => {
                println!("FAIL {backend:?} {file}");
                failures.push(e.clone());
            }
        }
    }
    println!(
        "{backend:?}: {} of {} fixtures passed, {steps} steps",
        results.len() - failures.len(),
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed on {backend:?}:\n\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_fixtures_sqlite() {
    replay_all(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_fixtures_postgres() {
    replay_all(Backend::Postgres).await;
}

#[test]
fn player_helpers() {
    let mut vars = Vars::new();
    vars.insert("id".into(), "42".into());
    assert_eq!(subst("/Users/${id}?x=${id}", &vars).expect("subst"), "/Users/42?x=42");
    assert!(subst("${nope}", &vars).is_err());
    assert_eq!(
        encode_path("/Users?filter=userName eq \"a+b@x\"&count=1"),
        "/Users?filter=userName%20eq%20%22a%2Bb%40x%22&count=1"
    );
    let body = serde_json::json!({"members": [{"value": "a"}, {"value": "b"}]});
    let got = collect_wildcard(&body, "/members/*/value").expect("wildcard");
    assert!(same_multiset(&[serde_json::json!("b"), serde_json::json!("a")], &got));
    assert!(!same_multiset(&[serde_json::json!("a")], &got));
}
