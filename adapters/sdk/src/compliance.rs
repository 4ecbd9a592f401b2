//! The compliance kit: the behaviour every adapter must show against its real server.
//!
//! An adapter's test builds the adapter against a live target, describes the target in a [`Fixture`], and calls
//! [`run`]. The kit creates its own accounts (userNames start with the fixture's prefix), checks each promise of the
//! [`Adapter`] trait by reading the target back through [`Adapter::get`] and [`Adapter::search`], and removes what
//! it created. Adapter tests add their own direct reads of the server (ldapsearch, SQL) on top; the kit is the
//! shared floor. [`unreachable`] checks that an adapter pointed at a dead endpoint reports a retriable error.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::{Account, AccountId, Adapter, AdapterError, DesiredAccount, ErrorKind, SearchQuery, Secret};

/// What the kit needs to know about the target.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Prefix for the kit's userNames, unique per run.
    pub prefix: String,
    /// Two entitlement values the target accepts (existing groups, or ones the adapter creates).
    pub entitlements: [String; 2],
    /// The target attribute mapped from `name.familyName`, to check that an update reaches the target.
    pub family_name_attr: String,
    /// The target attribute mapped from `userName`, for filtered searches.
    pub user_name_attr: String,
    /// Whether to include a password in the desired state (for targets with `passwords`).
    pub password: bool,
}

/// A failed promise: the step and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compliance step {step:?} failed: {detail}")]
pub struct Failure {
    pub step: &'static str,
    pub detail: String,
}

/// What passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub steps: Vec<&'static str>,
}

fn fail(step: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        step,
        detail: detail.into(),
    }
}

fn at(step: &'static str) -> impl Fn(AdapterError) -> Failure {
    move |e| fail(step, e.to_string())
}

/// A SCIM user document as the outbox hands it to adapters.
pub fn user_doc(id: &str, user_name: &str, given: &str, family: &str) -> Map<String, Value> {
    let v = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": id,
        "externalId": format!("ext-{id}"),
        "userName": user_name,
        "name": {"givenName": given, "familyName": family, "formatted": format!("{given} {family}")},
        "displayName": format!("{given} {family}"),
        "emails": [{"value": format!("{id}@example.test"), "type": "work", "primary": true}],
        "title": "Engineer",
        "active": true,
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D", "employeeNumber": id}
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn desired(fx: &Fixture, id: &str, user_name: &str, family: &str, ents: &[&str], enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: id.to_string(),
        user: user_doc(id, user_name, "Kit", family),
        entitlements: ents.iter().map(|s| s.to_string()).collect(),
        managed: fx.entitlements.iter().cloned().collect(),
        enabled,
        password: fx.password.then(|| Secret::new("Kit-Passw0rd!x")),
    }
}

fn managed_held(a: &Account, fx: &Fixture) -> BTreeSet<String> {
    let managed: BTreeSet<String> = fx.entitlements.iter().map(|e| e.to_lowercase()).collect();
    a.entitlements
        .iter()
        .map(|e| e.to_lowercase())
        .filter(|e| managed.contains(e))
        .collect()
}

fn lower(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|e| e.to_lowercase()).collect()
}

async fn must_get(
    a: &dyn Adapter,
    step: &'static str,
    id: Option<&AccountId>,
    d: &DesiredAccount,
) -> Result<Account, Failure> {
    a.get(id, d)
        .await
        .map_err(at(step))?
        .ok_or_else(|| fail(step, "the account is not on the target"))
}

async fn count_by_user_name(a: &dyn Adapter, fx: &Fixture, user_name: &str) -> Result<usize, AdapterError> {
    let mut n = 0;
    let mut cursor = None;
    loop {
        let page = a
            .search(&SearchQuery {
                filter: Some((fx.user_name_attr.clone(), user_name.to_string())),
                cursor,
                limit: 50,
            })
            .await?;
        n += page
            .accounts
            .iter()
            .filter(|acc| {
                acc.attr(&fx.user_name_attr)
                    .is_some_and(|v| v.eq_ignore_ascii_case(user_name))
            })
            .count();
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(n),
        }
    }
}

/// Run every check. Accounts the kit made are removed at the end, also after most failures.
pub async fn run(a: &dyn Adapter, fx: &Fixture) -> Result<Report, Failure> {
    let mut report = Report::default();
    let caps = a.capabilities();
    let [e1, e2] = [fx.entitlements[0].as_str(), fx.entitlements[1].as_str()];

    a.health().await.map_err(at("health"))?;
    report.steps.push("health");

    // Create, then the same state again: one account, same id.
    let uid = format!("{}-1", fx.prefix);
    let un = format!("{}.kit", fx.prefix);
    let d = desired(fx, &uid, &un, "One", &[e1], true);
    let id = a.apply(None, &d).await.map_err(at("create"))?;
    let acc = must_get(a, "create", Some(&id), &d).await?;
    if caps.disable && acc.enabled != Some(true) {
        return Err(fail(
            "create",
            format!("a new enabled account reads as {:?}", acc.enabled),
        ));
    }
    if caps.groups && managed_held(&acc, fx) != lower(&[e1]) {
        return Err(fail(
            "create",
            format!("entitlements read back as {:?}", acc.entitlements),
        ));
    }
    report.steps.push("create");

    let again = a.apply(Some(&id), &d).await.map_err(at("idempotent apply"))?;
    if again.primary != id.primary {
        return Err(fail("idempotent apply", format!("{id:?} became {again:?}")));
    }
    // Lost the id (a crash between the target's answer and our commit): must find the account, not add a second.
    let blind = a.apply(None, &d).await.map_err(at("apply without a known id"))?;
    if blind.primary != id.primary {
        return Err(fail("apply without a known id", format!("{id:?} became {blind:?}")));
    }
    let n = count_by_user_name(a, fx, &un).await.map_err(at("no duplicate"))?;
    if n != 1 {
        return Err(fail("no duplicate", format!("{n} accounts hold userName {un}")));
    }
    report.steps.push("idempotent apply");

    // An attribute change reaches the target.
    let d = desired(fx, &uid, &un, "Two", &[e1], true);
    let id = a.apply(Some(&id), &d).await.map_err(at("update"))?;
    let acc = must_get(a, "update", Some(&id), &d).await?;
    if acc.attr(&fx.family_name_attr) != Some("Two") {
        return Err(fail(
            "update",
            format!(
                "{} reads {:?}, not Two",
                fx.family_name_attr,
                acc.attr(&fx.family_name_attr)
            ),
        ));
    }
    report.steps.push("update");

    if caps.groups {
        let d = desired(fx, &uid, &un, "Two", &[e1, e2], true);
        a.apply(Some(&id), &d).await.map_err(at("grant"))?;
        let acc = must_get(a, "grant", Some(&id), &d).await?;
        if managed_held(&acc, fx) != lower(&[e1, e2]) {
            return Err(fail(
                "grant",
                format!("entitlements read back as {:?}", acc.entitlements),
            ));
        }
        let d = desired(fx, &uid, &un, "Two", &[e2], true);
        a.apply(Some(&id), &d).await.map_err(at("revoke"))?;
        let acc = must_get(a, "revoke", Some(&id), &d).await?;
        if managed_held(&acc, fx) != lower(&[e2]) {
            return Err(fail(
                "revoke",
                format!("entitlements read back as {:?}", acc.entitlements),
            ));
        }
        report.steps.push("grant and revoke");
    }

    if caps.disable {
        let d = desired(fx, &uid, &un, "Two", &[e2], false);
        a.apply(Some(&id), &d).await.map_err(at("disable"))?;
        let acc = must_get(a, "disable", Some(&id), &d).await?;
        if acc.enabled != Some(false) {
            return Err(fail(
                "disable",
                format!("a disabled account reads as {:?}", acc.enabled),
            ));
        }
        // Disabling twice is fine.
        a.apply(Some(&id), &d).await.map_err(at("disable"))?;
        let d = desired(fx, &uid, &un, "Two", &[e2], true);
        a.apply(Some(&id), &d).await.map_err(at("enable"))?;
        let acc = must_get(a, "enable", Some(&id), &d).await?;
        if acc.enabled != Some(true) {
            return Err(fail(
                "enable",
                format!("a re-enabled account reads as {:?}", acc.enabled),
            ));
        }
        report.steps.push("disable and enable");
    }

    // A userName made of every character DNs, LDAP filters, SQL and CSV treat specially.
    let nasty_uid = format!("{}-2", fx.prefix);
    let nasty = format!("{}a,b=c*(\\)+\"<>;'#", fx.prefix);
    let dn = desired(fx, &nasty_uid, &nasty, "Quote'\"", &[e1], true);
    let nid = a.apply(None, &dn).await.map_err(at("special characters"))?;
    let nacc = must_get(a, "special characters", Some(&nid), &dn).await?;
    if nacc.attr(&fx.user_name_attr) != Some(nasty.as_str()) {
        return Err(fail(
            "special characters",
            format!("userName reads back as {:?}", nacc.attr(&fx.user_name_attr)),
        ));
    }
    // A wildcard must not match the other account.
    let star = format!("{}*", fx.prefix);
    let n = count_by_user_name(a, fx, &star)
        .await
        .map_err(at("special characters"))?;
    if n != 0 {
        return Err(fail(
            "special characters",
            format!("a search for {star:?} matched {n} accounts"),
        ));
    }
    report.steps.push("special characters");

    // Search pages through everything and finds both accounts.
    let mut seen = BTreeSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = a
            .search(&SearchQuery {
                filter: None,
                cursor,
                limit: 1,
            })
            .await
            .map_err(at("search"))?;
        pages += 1;
        if page.accounts.len() > 1 {
            return Err(fail("search", format!("limit 1 gave {} accounts", page.accounts.len())));
        }
        seen.extend(
            page.accounts
                .iter()
                .filter_map(|a| a.attr(&fx.user_name_attr).map(str::to_string)),
        );
        match page.next {
            Some(c) if pages < 100_000 => cursor = Some(c),
            _ => break,
        }
    }
    if !seen.contains(&un) || !seen.contains(&nasty) {
        return Err(fail("search", format!("paging did not find both accounts: {seen:?}")));
    }
    report.steps.push("search");

    // Remove, twice; then a stale id recreates rather than failing.
    for (id, d) in [(&id, &d), (&nid, &dn)] {
        a.remove(Some(id), d).await.map_err(at("remove"))?;
        if a.get(Some(id), d).await.map_err(at("remove"))?.is_some() {
            return Err(fail("remove", "the account is still there"));
        }
        a.remove(Some(id), d).await.map_err(at("remove twice"))?;
    }
    report.steps.push("remove");

    let d = desired(fx, &uid, &un, "Three", &[e1], true);
    let fresh = a.apply(Some(&id), &d).await.map_err(at("stale id"))?;
    must_get(a, "stale id", Some(&fresh), &d).await?;
    a.remove(Some(&fresh), &d).await.map_err(at("stale id"))?;
    report.steps.push("stale id");

    // Bad data is refused without retry: a user whose mapped key is missing.
    let mut broken = desired(fx, &format!("{}-3", fx.prefix), "x", "Four", &[], true);
    broken.user.remove("userName");
    match a.apply(None, &broken).await {
        Err(e) if !e.retriable => {}
        Err(e) => return Err(fail("bad data", format!("retriable error for bad data: {e}"))),
        Ok(id) => {
            let _ = a.remove(Some(&id), &broken).await;
            return Err(fail("bad data", "a user without userName was accepted"));
        }
    }
    report.steps.push("bad data");
    Ok(report)
}

/// An adapter pointed at an endpoint nothing listens on must fail its health check, and an apply, with a
/// retriable `Unavailable` error (the outbox retries those and opens the target's circuit breaker).
pub async fn unreachable(a: &dyn Adapter) -> Result<(), Failure> {
    for (step, r) in [
        ("unreachable health", a.health().await.err()),
        (
            "unreachable apply",
            a.apply(
                None,
                &DesiredAccount {
                    identity_id: "u".into(),
                    user: user_doc("u", "unreachable", "U", "R"),
                    enabled: true,
                    ..Default::default()
                },
            )
            .await
            .err(),
        ),
    ] {
        match r {
            Some(e) if e.retriable && e.kind == ErrorKind::Unavailable => {}
            Some(e) => return Err(fail(step, format!("want a retriable Unavailable error, got {e}"))),
            None => return Err(fail(step, "succeeded against a dead endpoint")),
        }
    }
    Ok(())
}
