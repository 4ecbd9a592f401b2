//! The LDAP adapter against real servers: a private slapd (OpenLDAP mode, ppolicy and attribute disable) and a
//! private Samba AD DC (AD mode over LDAPS with a verified certificate). Each runs the SDK compliance kit, then
//! reads the directory directly (ldapsearch) to prove escaping, memberships, disable and passwords.

use std::collections::BTreeSet;

use scimgate_adapter_ldap::escape::{Dn, same_dn};
use scimgate_adapter_ldap::{Config, LdapAdapter};
use scimgate_adapter_sdk::compliance::{self, Fixture, user_doc};
use scimgate_adapter_sdk::{Adapter, DesiredAccount, ErrorKind, SearchQuery, Secret};
use scimgate_testkit::samba::Samba;
use scimgate_testkit::slapd::Slapd;

const SUFFIX: &str = "dc=example,dc=com";

fn prefix() -> String {
    // Short: AD's sAMAccountName holds at most 20 characters.
    scimgate_testkit::unique("k").replace('_', "")[..8].to_string()
}

fn openldap_config(url: &str, slapd: &Slapd, disable: &str, extra: &str) -> Config {
    let text = format!(
        r#"
        url = "{url}"
        mode = "openldap"
        bind_dn = "{root_dn}"
        bind_password = "{root_pw}"
        base_dn = "ou=people,{SUFFIX}"
        dn = "uid={{userName}},ou=people,{SUFFIX}"
        key = {{ attribute = "uid", value = "{{userName}}" }}
        object_classes = ["top", "person", "organizationalPerson", "inetOrgPerson"]
        disable = {disable}
        pool_size = 3
        page_size = 2
        timeouts = {{ connect_secs = 2, operation_secs = 5 }}
        attributes = {{ cn = "{{name.givenName}} {{name.familyName}}", sn = "name.familyName", givenName = "name.givenName", mail = "emails.value", title = "title", employeeNumber = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber" }}
        {extra}
        "#,
        root_dn = slapd.root_dn,
        root_pw = slapd.root_pw,
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

fn groups(slapd: &Slapd, names: &[&str]) -> Vec<String> {
    let mut ldif = String::new();
    let mut dns = Vec::new();
    for n in names {
        let dn = format!("cn={n},ou=groups,{SUFFIX}");
        ldif.push_str(&format!(
            "dn: {dn}\nobjectClass: groupOfNames\ncn: {n}\nmember: cn=placeholder\n\n"
        ));
        dns.push(dn);
    }
    slapd.ldapadd(&ldif);
    dns
}

fn desired(id: &str, user_name: &str, ents: &[&String], managed: &[String], enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: id.into(),
        user: user_doc(id, user_name, "Test", "User"),
        entitlements: ents.iter().map(|s| s.to_string()).collect(),
        managed: managed.iter().cloned().collect(),
        enabled,
        password: None,
    }
}

fn members(slapd: &Slapd, group: &str) -> Vec<String> {
    slapd
        .ldapsearch(group, "(objectClass=*)", &["member"])
        .first()
        .map(|e| e.all("member"))
        .unwrap_or_default()
}

fn holds(members: &[String], dn: &str) -> bool {
    members.iter().any(|m| same_dn(m, dn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_ppolicy_passes_compliance_and_escapes() {
    let mut slapd = Slapd::start(SUFFIX);
    let g = groups(&slapd, &["kit1", "kit2", "other"]);
    let cfg = openldap_config(
        &slapd.url,
        &slapd,
        r#"{ mode = "ppolicy" }"#,
        r#"groups = { placeholder_member = "cn=placeholder" }"#,
    );
    let a = LdapAdapter::new(cfg).expect("adapter");
    let fx = Fixture {
        prefix: prefix(),
        entitlements: [g[0].clone(), g[1].clone()],
        family_name_attr: "sn".into(),
        user_name_attr: "uid".into(),
        password: false,
    };
    let report = compliance::run(&a, &fx).await.unwrap_or_else(|f| panic!("{f}"));
    println!("slapd ppolicy compliance: {:?}", report.steps);

    let managed = vec![g[0].clone(), g[1].clone()];
    let people = format!("ou=people,{SUFFIX}");

    // A bystander the injection attempts must not reach.
    let by = desired("by", "bystander", &[&g[0]], &managed, true);
    let by_id = a.apply(None, &by).await.expect("bystander");

    // The issue's userName: one entry, its DN escaped per RFC 4514, found by an escaped filter.
    let nasty = "a,b=c*(\\)";
    let d = desired("n1", nasty, &[&g[0]], &managed, true);
    let id = a.apply(None, &d).await.expect("apply nasty");
    let found = slapd.ldapsearch(&people, "(uid=a,b=c\\2a\\28\\5c\\29)", &["uid", "memberOf"]);
    assert_eq!(found.len(), 1, "{found:?}");
    let leaf = Dn::parse(&found[0].dn).expect("dn").0;
    assert_eq!(leaf.len(), 4, "the value did not split the DN: {}", found[0].dn);
    assert_eq!(leaf[0], vec![("uid".to_string(), nasty.to_string())]);
    assert!(same_dn(&found[0].dn, &id.primary));
    assert!(same_dn(&found[0].dn, &format!("uid=a\\,b\\=c*(\\\\),{people}")));
    assert_eq!(found[0].all("uid"), vec![nasty.to_string()]);
    assert!(holds(&members(&slapd, &g[0]), &id.primary), "member of kit1");
    assert!(found[0].all("memberOf").iter().any(|m| same_dn(m, &g[0])));
    assert!(!id.secondary.get("entryUUID").is_none_or(String::is_empty));

    // Filter injection: `*)(uid=*` is a literal userName, not a wildcard.
    let inj = "*)(uid=*";
    let di = desired("n2", inj, &[], &managed, true);
    assert!(
        a.get(None, &di).await.expect("get").is_none(),
        "the injection matched an account"
    );
    let before = slapd
        .ldapsearch(&people, "(objectClass=inetOrgPerson)", &["uid", "sn"])
        .len();
    let iid = a.apply(None, &di).await.expect("apply injection");
    let after = slapd.ldapsearch(&people, "(objectClass=inetOrgPerson)", &["uid", "sn"]);
    assert_eq!(after.len(), before + 1, "a new entry, nothing else touched");
    let literal = slapd.ldapsearch(&people, "(uid=\\2a\\29\\28uid=\\2a)", &["uid"]);
    assert_eq!(literal.len(), 1);
    assert!(same_dn(&literal[0].dn, &iid.primary));
    assert!(!same_dn(&iid.primary, &by_id.primary));
    let page = a
        .search(&SearchQuery {
            filter: Some(("uid".into(), inj.into())),
            cursor: None,
            limit: 50,
        })
        .await
        .expect("search");
    assert_eq!(page.accounts.len(), 1, "{:?}", page.accounts);
    let by_now = a
        .get(Some(&by_id), &by)
        .await
        .expect("get")
        .expect("bystander is there");
    assert_eq!(by_now.attr("uid"), Some("bystander"));
    assert!(by_now.entitlements.iter().any(|e| same_dn(e, &g[0])));

    // Disable is ppolicy's administrative lock, read directly.
    let mut off = d.clone();
    off.enabled = false;
    a.apply(Some(&id), &off).await.expect("disable");
    let e = slapd.ldapsearch(&people, "(uid=a,b=c\\2a\\28\\5c\\29)", &["pwdAccountLockedTime"]);
    assert_eq!(e[0].first("pwdAccountLockedTime").as_deref(), Some("000001010000Z"));
    a.apply(Some(&id), &d).await.expect("enable");
    let e = slapd.ldapsearch(&people, "(uid=a,b=c\\2a\\28\\5c\\29)", &["pwdAccountLockedTime"]);
    assert_eq!(e[0].first("pwdAccountLockedTime"), None);

    // A rename is a modify-DN; the entryUUID stays and memberships follow the new DN.
    let mut renamed = d.clone();
    renamed.user.insert("userName".into(), "renamed+one".into());
    renamed.entitlements = [g[1].clone()].into();
    let rid = a.apply(Some(&id), &renamed).await.expect("rename");
    assert_eq!(rid.secondary.get("entryUUID"), id.secondary.get("entryUUID"));
    assert!(same_dn(&rid.primary, &format!("uid=renamed\\+one,{people}")));
    assert!(
        slapd
            .ldapsearch(&people, "(uid=a,b=c\\2a\\28\\5c\\29)", &["uid"])
            .is_empty()
    );
    assert!(!holds(&members(&slapd, &g[0]), &id.primary) && !holds(&members(&slapd, &g[0]), &rid.primary));
    assert!(holds(&members(&slapd, &g[1]), &rid.primary));
    // Found again by entryUUID when the known DN is stale.
    let got = a.get(Some(&id), &renamed).await.expect("get").expect("by entryUUID");
    assert!(same_dn(&got.id.primary, &rid.primary));

    // The last member leaves a group: the placeholder keeps groupOfNames valid. Unmanaged groups are untouched.
    slapd.ldapmodify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        g[2], rid.primary
    ));
    let solo = format!("cn=solo,ou=groups,{SUFFIX}");
    slapd.ldapadd(&format!(
        "dn: {solo}\nobjectClass: groupOfNames\ncn: solo\nmember: {}\n",
        rid.primary
    ));
    let mut none = renamed.clone();
    none.entitlements = BTreeSet::new();
    none.managed.insert(solo.clone());
    a.apply(Some(&rid), &none).await.expect("revoke all");
    assert!(!holds(&members(&slapd, &g[1]), &rid.primary));
    assert_eq!(
        members(&slapd, &solo),
        vec!["cn=placeholder".to_string()],
        "the placeholder took the last seat"
    );
    assert!(
        holds(&members(&slapd, &g[2]), &rid.primary),
        "an unmanaged group was touched"
    );

    // Passwords never travel over plain LDAP.
    let mut pw = none.clone();
    pw.password = Some(Secret::new("Never-Sent-1"));
    let err = a.apply(Some(&rid), &pw).await.expect_err("plaintext password");
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(!err.message.contains("Never-Sent-1"));

    // Outage: the server goes away and comes back on the same port; the pool reconnects.
    slapd.stop();
    let err = a.apply(Some(&rid), &none).await.expect_err("server down");
    assert!(err.retriable && err.kind == ErrorKind::Unavailable, "{err}");
    let err = a.health().await.expect_err("server down");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    slapd.start_again();
    a.apply(Some(&rid), &none).await.expect("after the outage");
    a.health().await.expect("healthy again");

    for (id, d) in [(&rid, &none), (&iid, &di), (&by_id, &by)] {
        a.remove(Some(id), d).await.expect("cleanup");
    }
    assert!(
        !holds(&members(&slapd, &g[0]), &by_id.primary),
        "remove drops memberships"
    );

    // Wrong credentials are not retried.
    let mut bad = openldap_config(&slapd.url, &slapd, r#"{ mode = "ppolicy" }"#, "");
    bad.bind_password = Some("wrong".into());
    let err = LdapAdapter::new(bad)
        .expect("adapter")
        .health()
        .await
        .expect_err("bad password");
    assert_eq!(err.kind, ErrorKind::Unauthorized);
    assert!(!err.retriable);

    // Nothing listens there: retriable Unavailable.
    let dead = format!("ldap://127.0.0.1:{}", scimgate_testkit::free_port());
    let a = LdapAdapter::new(openldap_config(&dead, &slapd, r#"{ mode = "ppolicy" }"#, "")).expect("adapter");
    compliance::unreachable(&a).await.unwrap_or_else(|f| panic!("{f}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openldap_attribute_disable_passes_compliance() {
    let slapd = Slapd::start(SUFFIX);
    let g = groups(&slapd, &["a1", "a2"]);
    let cfg = openldap_config(
        &slapd.url,
        &slapd,
        r#"{ mode = "attribute", attribute = "employeeType", disabled_value = "disabled", enabled_value = "active" }"#,
        &format!(
            r#"groups = {{ read = "search", base_dn = "ou=groups,{SUFFIX}", placeholder_member = "cn=placeholder" }}"#
        ),
    );
    let a = LdapAdapter::new(cfg).expect("adapter");
    let fx = Fixture {
        prefix: prefix(),
        entitlements: [g[0].clone(), g[1].clone()],
        family_name_attr: "sn".into(),
        user_name_attr: "uid".into(),
        password: false,
    };
    let report = compliance::run(&a, &fx).await.unwrap_or_else(|f| panic!("{f}"));
    println!("slapd attribute-disable compliance: {:?}", report.steps);

    let managed = vec![g[0].clone(), g[1].clone()];
    let people = format!("ou=people,{SUFFIX}");
    let d = desired("x1", "attr.user", &[&g[1]], &managed, false);
    let id = a.apply(None, &d).await.expect("apply");
    let e = slapd.ldapsearch(&people, "(uid=attr.user)", &["employeeType", "pwdAccountLockedTime"]);
    assert_eq!(e[0].first("employeeType").as_deref(), Some("disabled"));
    assert_eq!(e[0].first("pwdAccountLockedTime"), None);
    let mut on = d.clone();
    on.enabled = true;
    a.apply(Some(&id), &on).await.expect("enable");
    let e = slapd.ldapsearch(&people, "(uid=attr.user)", &["employeeType"]);
    assert_eq!(e[0].first("employeeType").as_deref(), Some("active"));
    assert!(holds(&members(&slapd, &g[1]), &id.primary));
    a.remove(Some(&id), &on).await.expect("remove");
    assert!(slapd.ldapsearch(&people, "(uid=attr.user)", &["uid"]).is_empty());
    assert!(!holds(&members(&slapd, &g[1]), &id.primary));
}

fn ad_config(samba: &Samba, url: &str) -> Config {
    let text = format!(
        r#"
        url = "{url}"
        mode = "ad"
        bind_dn = "{admin}"
        bind_password = "{pw}"
        base_dn = "OU=scim,{base}"
        dn = "CN={{userName}},OU=scim,{base}"
        key = {{ attribute = "sAMAccountName", value = "{{id}}" }}
        object_classes = ["top", "person", "organizationalPerson", "user"]
        disable = {{ mode = "ad" }}
        tls = {{ ca_file = "{ca}" }}
        page_size = 2
        attributes = {{ sAMAccountName = "id", userPrincipalName = "{{id}}@{realm}", sn = "name.familyName", givenName = "name.givenName", displayName = "displayName", mail = "emails.value", title = "title" }}
        "#,
        admin = samba.admin_dn,
        pw = samba.admin_pw,
        base = samba.base_dn,
        ca = samba.ca_file.display(),
        realm = samba.realm_domain,
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samba_ad_passes_compliance() {
    let samba = Samba::start();
    let base = samba.base_dn.clone();
    let ou = format!("OU=scim,{base}");
    let mut ldif = format!("dn: {ou}\nobjectClass: organizationalUnit\nou: scim\n\n");
    let g: Vec<String> = ["adg1", "adg2"].iter().map(|n| format!("CN={n},{ou}")).collect();
    for (dn, n) in g.iter().zip(["adg1", "adg2"]) {
        ldif.push_str(&format!(
            "dn: {dn}\nobjectClass: group\ncn: {n}\nsAMAccountName: {n}\n\n"
        ));
    }
    samba.ldapadd(&ldif);

    let a = LdapAdapter::new(ad_config(&samba, &samba.url)).expect("adapter");
    assert!(a.capabilities().passwords);
    let fx = Fixture {
        prefix: prefix(),
        entitlements: [g[0].clone(), g[1].clone()],
        family_name_attr: "sn".into(),
        user_name_attr: "cn".into(),
        password: true,
    };
    let report = compliance::run(&a, &fx).await.unwrap_or_else(|f| panic!("{f}"));
    println!("samba AD compliance: {:?}", report.steps);

    let managed = vec![g[0].clone(), g[1].clone()];
    let nasty = "a,b=c*(\\)";
    let mut d = desired("adu1", nasty, &[&g[0]], &managed, true);
    d.password = Some(Secret::new("Adu1-Passw0rd!"));
    let id = a.apply(None, &d).await.expect("apply");
    assert!(id.secondary.get("objectGUID").is_some_and(|g| g.len() == 36), "{id:?}");

    // One entry, escaped DN, userAccountControl 512, member of the group.
    let found = samba.ldapsearch(
        &ou,
        "(cn=a,b=c\\2a\\28\\5c\\29)",
        &["userAccountControl", "sAMAccountName", "memberOf"],
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        Dn::parse(&found[0].dn).expect("dn").0[0],
        vec![("CN".to_string(), nasty.to_string())]
    );
    assert!(same_dn(&found[0].dn, &id.primary));
    assert_eq!(found[0].first("userAccountControl").as_deref(), Some("512"));
    assert_eq!(found[0].first("sAMAccountName").as_deref(), Some("adu1"));
    assert!(found[0].all("memberOf").iter().any(|m| same_dn(m, &g[0])));
    let group = samba.ldapsearch(&g[0], "(objectClass=group)", &["member"]);
    assert!(holds(&group[0].all("member"), &id.primary));

    // The new user can bind with the password the adapter set (unicodePwd over LDAPS).
    assert!(samba.can_bind(&id.primary, "Adu1-Passw0rd!"), "bind as the new user");
    assert!(!samba.can_bind(&id.primary, "wrong-password"));

    // Disable is bit 2 of userAccountControl: 514, and the bind fails; enable gives 512 again.
    let mut off = d.clone();
    off.enabled = false;
    a.apply(Some(&id), &off).await.expect("disable");
    let e = samba.ldapsearch(&ou, "(sAMAccountName=adu1)", &["userAccountControl"]);
    assert_eq!(e[0].first("userAccountControl").as_deref(), Some("514"));
    assert!(
        !samba.can_bind(&id.primary, "Adu1-Passw0rd!"),
        "a disabled account binds"
    );
    a.apply(Some(&id), &d).await.expect("enable");
    let e = samba.ldapsearch(&ou, "(sAMAccountName=adu1)", &["userAccountControl"]);
    assert_eq!(e[0].first("userAccountControl").as_deref(), Some("512"));
    assert!(samba.can_bind(&id.primary, "Adu1-Passw0rd!"));

    // Filter injection does not match other entries.
    let inj = desired("adu2", "*)(cn=*", &[], &managed, true);
    assert!(a.get(None, &inj).await.expect("get").is_none());
    let page = a
        .search(&SearchQuery {
            filter: Some(("cn".into(), "*)(cn=*".into())),
            cursor: None,
            limit: 50,
        })
        .await
        .expect("search");
    assert!(page.accounts.is_empty(), "{:?}", page.accounts);

    // A password over plain ldap:// is refused by the adapter itself (Samba would take it).
    let plain = LdapAdapter::new(ad_config(&samba, &samba.plain_url)).expect("adapter");
    assert!(!plain.capabilities().passwords);
    let err = plain.apply(Some(&id), &d).await.expect_err("plaintext password");
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(!err.message.contains("Adu1-Passw0rd!"));

    a.remove(Some(&id), &d).await.expect("remove");
    assert!(samba.ldapsearch(&ou, "(sAMAccountName=adu1)", &["cn"]).is_empty());
    let group = samba.ldapsearch(&g[0], "(objectClass=group)", &["member"]);
    assert!(!holds(&group[0].all("member"), &id.primary));
}
