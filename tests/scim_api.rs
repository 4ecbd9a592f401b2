//! The SCIM API end to end against the real binary, on SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeSet;

use common::{Backend, Gateway, Options, TOKEN};
use serde_json::{Value, json};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn user(name: &str) -> Value {
    json!({"schemas": [USER], "userName": name})
}

/// Run an async scenario on both backends.
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    };
}

fn assert_error(body: &Value, status: u16, scim_type: Option<&str>) {
    assert_eq!(
        body["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:Error"]),
        "{body}"
    );
    assert_eq!(body["status"], json!(status.to_string()), "{body}");
    assert_eq!(body.get("scimType").and_then(Value::as_str), scim_type, "{body}");
}

async fn crud_etags_and_headers(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let body = json!({"schemas": [USER], "userName": "bjensen", "password": "t1meMa$heen",
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": "bjensen@example.com", "type": "work", "primary": true}]});
    let r = gw
        .req(reqwest::Method::POST, "/Users")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/scim+json");
    let location = r.headers()["location"].to_str().expect("location").to_string();
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["meta"]["location"], json!(location));
    assert_eq!(created["meta"]["version"], json!(etag));
    assert!(
        created.get("password").is_none(),
        "password must never be returned: {created}"
    );
    let id = created["id"].as_str().expect("id").to_string();

    // GET, and If-None-Match with the current version → 304.
    let r = gw
        .req(reqwest::Method::GET, &format!("/Users/{id}"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 304);
    let (s, got) = gw.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(got["userName"], "bjensen");
    assert!(got.get("password").is_none());

    // PUT with a stale If-Match → 412; with the right one → 200 and a new version.
    let mut put = got.clone();
    put["displayName"] = json!("Babs");
    let r = gw
        .req(reqwest::Method::PUT, &format!("/Users/{id}"))
        .header("if-match", "W/\"999\"")
        .body(put.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 412);
    let r = gw
        .req(reqwest::Method::PUT, &format!("/Users/{id}"))
        .header("if-match", &etag)
        .body(put.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let new_etag = r.headers()["etag"].to_str().expect("etag").to_string();
    assert_ne!(new_etag, etag);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["displayName"], "Babs");

    // PATCH returns 200 with the resource.
    let p = json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "name.givenName", "value": "Barb"}]});
    let (s, v) = gw.call("PATCH", &format!("/Users/{id}"), Some(&p)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"]["givenName"], "Barb");
    assert_eq!(v["name"]["familyName"], "Jensen");

    // Duplicate userName, case-insensitively → 409 uniqueness.
    let (s, v) = gw.call("POST", "/Users", Some(&user("BJensen"))).await;
    assert_eq!(s, 409);
    assert_error(&v, 409, Some("uniqueness"));

    // DELETE → 204, then 404, and GET → 404.
    let (s, _) = gw.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(s, 204);
    let (s, v) = gw.call("DELETE", &format!("/Users/{id}"), None).await;
    assert_eq!(s, 404);
    assert_error(&v, 404, None);
    let (s, _) = gw.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(s, 404);
}
both_backends!(crud_etags_and_headers);

async fn concurrent_puts_with_one_if_match(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let (_, created) = gw.call("POST", "/Users", Some(&user("race"))).await;
    let id = created["id"].as_str().expect("id").to_string();
    for round in 0..10 {
        let (_, current) = gw.call("GET", &format!("/Users/{id}"), None).await;
        let etag = current["meta"]["version"].as_str().expect("version").to_string();
        let send = |title: String| {
            let mut body = current.clone();
            body["title"] = json!(title);
            gw.req(reqwest::Method::PUT, &format!("/Users/{id}"))
                .header("if-match", etag.clone())
                .body(body.to_string())
                .send()
        };
        let (a, b) = tokio::join!(send(format!("a{round}")), send(format!("b{round}")));
        let mut statuses = [a.expect("a").status().as_u16(), b.expect("b").status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "round {round}: exactly one PUT may win");
    }
}
both_backends!(concurrent_puts_with_one_if_match);

async fn filters_sorting_and_paging(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let mut ids = Vec::new();
    for i in 0..23 {
        let dept = if i % 2 == 0 { "Sales" } else { "Engineering" };
        let body = json!({"schemas": [USER, ENTERPRISE], "userName": format!("user{i:02}"), "displayName": format!("User {i}"),
            "active": i % 3 != 0, "title": if i < 5 { Value::Null } else { json!("Engineer") },
            "emails": [{"value": format!("u{i}@{}.example.com", dept.to_lowercase()), "type": "work"},
                       {"value": format!("u{i}@home.example.org"), "type": "home"}],
            ENTERPRISE: {"department": dept}});
        let (s, v) = gw.call("POST", "/Users", Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().expect("id").to_string());
    }
    assert_eq!(total(&gw, "userName eq \"USER07\"").await, 1);
    assert_eq!(total(&gw, "userName sw \"user1\"").await, 10);
    assert_eq!(total(&gw, "userName co \"er2\"").await, 3);
    assert_eq!(total(&gw, "userName ew \"7\"").await, 2);
    assert_eq!(total(&gw, "userName gt \"user19\"").await, 3);
    assert_eq!(total(&gw, "userName ge \"user19\" and userName le \"user20\"").await, 2);
    assert_eq!(total(&gw, "not (userName sw \"user1\")").await, 13);
    assert_eq!(total(&gw, "title pr").await, 18);
    assert_eq!(total(&gw, "active eq false").await, 8);
    assert_eq!(total(&gw, "emails.value ew \"sales.example.com\"").await, 12);
    assert_eq!(
        total(&gw, "emails[type eq \"work\" and value co \"@engineering\"]").await,
        11
    );
    assert_eq!(
        total(&gw, "emails[type eq \"work\"].value eq \"U3@ENGINEERING.example.com\"").await,
        1
    );
    assert_eq!(
        total(
            &gw,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq \"sales\""
        )
        .await,
        12
    );
    assert_eq!(
        total(
            &gw,
            "userName eq \"user01\" or (displayName eq \"User 2\" and active eq true)"
        )
        .await,
        2
    );
    assert_eq!(total(&gw, "meta.lastModified gt \"2000-01-01T00:00:00Z\"").await, 23);
    assert_eq!(total(&gw, "meta.created lt \"2000-01-01T00:00:00Z\"").await, 0);
    assert_eq!(total(&gw, "id eq \"nope\" or externalId pr").await, 0);

    // Sorting, descending.
    let (_, v) = gw
        .call("GET", "/Users?sortBy=userName&sortOrder=descending&count=3", None)
        .await;
    let names: Vec<&str> = v["Resources"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["userName"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["user22", "user21", "user20"]);

    // Index paging: pages of 5 visit every user once, in a stable order.
    let mut seen = BTreeSet::new();
    for start in (1..=23).step_by(5) {
        let (_, v) = gw
            .call("GET", &format!("/Users?startIndex={start}&count=5"), None)
            .await;
        assert_eq!(v["startIndex"], json!(start));
        assert_eq!(v["totalResults"], json!(23));
        for r in v["Resources"].as_array().expect("list") {
            assert!(seen.insert(r["id"].as_str().expect("id").to_string()));
        }
    }
    assert_eq!(seen.len(), 23);
    let (_, v) = gw.call("GET", "/Users?count=0", None).await;
    assert_eq!(v["totalResults"], json!(23));
    assert_eq!(v["itemsPerPage"], json!(0));

    // Cursor paging (RFC 9865), with and without a filter and a sort.
    for query in [
        "",
        "&filter=emails.value co \"sales\"",
        "&sortBy=displayName",
        "&filter=title pr&sortBy=userName",
    ] {
        let mut seen = BTreeSet::new();
        let mut path = format!("/Users?cursor&count=4{query}");
        let mut expected = None;
        loop {
            let (s, v) = gw
                .call("GET", &path.replace(' ', "%20").replace('"', "%22"), None)
                .await;
            assert_eq!(s, 200, "{path}: {v}");
            let total = v["totalResults"].as_u64().expect("total");
            assert_eq!(
                *expected.get_or_insert(total),
                total,
                "{query}: the same totalResults on every page"
            );
            for r in v["Resources"].as_array().expect("list") {
                assert!(
                    seen.insert(r["id"].as_str().expect("id").to_string()),
                    "{query}: duplicate across pages"
                );
            }
            match v.get("nextCursor").and_then(Value::as_str) {
                Some(c) => path = format!("/Users?cursor={c}&count=4{query}"),
                None => break,
            }
        }
        assert_eq!(Some(seen.len() as u64), expected, "{query}");
    }
    // A tampered cursor, or one reused with other parameters → 400 invalidCursor.
    let (_, v) = gw.call("GET", "/Users?cursor&count=2", None).await;
    let c = v["nextCursor"].as_str().expect("cursor").to_string();
    let mut bad = c.clone().into_bytes();
    bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).expect("ascii");
    let (s, v) = gw.call("GET", &format!("/Users?cursor={bad}&count=2"), None).await;
    assert_eq!(s, 400);
    assert_error(&v, 400, Some("invalidCursor"));
    let (s, v) = gw
        .call("GET", &format!("/Users?cursor={c}&count=2&sortBy=userName"), None)
        .await;
    assert_eq!(s, 400);
    assert_error(&v, 400, Some("invalidCursor"));

    // attributes / excludedAttributes, case-insensitive names.
    let (_, v) = gw
        .call(
            "GET",
            &format!("/Users/{}?attributes=USERNAME,emails.value", ids[3]),
            None,
        )
        .await;
    assert_eq!(v["userName"], "user03");
    assert!(v.get("displayName").is_none());
    assert_eq!(v["emails"][0], json!({"value": "u3@engineering.example.com"}));
    assert!(v.get("id").is_some(), "id is returned always");
    let (_, v) = gw
        .call(
            "GET",
            &format!("/Users/{}?excludedAttributes=emails,{ENTERPRISE}", ids[3]),
            None,
        )
        .await;
    assert!(v.get("emails").is_none() && v.get(ENTERPRISE).is_none());
    assert_eq!(v["displayName"], "User 3");

    // POST .search, per type and at the root.
    let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName sw \"user2\"", "attributes": ["userName"], "startIndex": 1, "count": 10});
    let (s, v) = gw.call("POST", "/Users/.search", Some(&search)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["totalResults"], json!(3));
    let (s, v) = gw.call("POST", "/.search", Some(&search)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["totalResults"], json!(3));
}
both_backends!(filters_sorting_and_paging);

async fn total(gw: &Gateway, f: &str) -> u64 {
    let (s, v) = gw
        .call("GET", &format!("/Users?filter={}&count=1000", percent(f)), None)
        .await;
    assert_eq!(s, 200, "{f}: {v}");
    assert_eq!(
        v["totalResults"].as_u64(),
        Some(v["Resources"].as_array().map_or(0, Vec::len) as u64)
    );
    v["totalResults"].as_u64().expect("total")
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn bad_input_gets_scim_errors(backend: Backend) {
    let gw = Gateway::start_with(Options {
        backend,
        extra_config: "max_filter_depth = 8\nbulk_max_operations = 5\nbulk_max_payload_bytes = 20000".into(),
        ..Options::default()
    })
    .await;
    let (_, u) = gw.call("POST", "/Users", Some(&user("victim"))).await;
    let uid = u["id"].as_str().expect("id").to_string();
    let raw = |method: &str, path: &str, body: &str| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let rb = gw
            .req(m, path)
            .header("content-type", "application/scim+json")
            .body(body.to_string());
        async move {
            let r = rb.send().await.expect("send");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let cases: Vec<(&str, String, String, u16, Option<&str>)> = vec![
        ("POST", "/Users".into(), "{\"userName\": ".into(), 400, Some("invalidSyntax")),
        ("POST", "/Users".into(), "[1,2]".into(), 400, Some("invalidSyntax")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "userName": 5}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "userName": "x", "active": "maybe"}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "userName": "x", "shoeSize": 9}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "displayName": "no userName"}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".into(), json!({"schemas": [GROUP], "userName": "x"}).to_string(), 400, Some("invalidSyntax")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "userName": "x", "emails": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}).to_string(), 400, Some("invalidValue")),
        ("POST", "/Users".into(), json!({"schemas": [USER], "userName": "x", ENTERPRISE: {"manager": {"value": 7}}}).to_string(), 400, Some("invalidValue")),
        ("GET", format!("/Users?filter={}", percent("userName eq")), String::new(), 400, Some("invalidFilter")),
        ("GET", format!("/Users?filter={}", percent("userName xx \"a\"")), String::new(), 400, Some("invalidFilter")),
        ("GET", format!("/Users?filter={}", percent("shoeSize eq 9")), String::new(), 400, Some("invalidFilter")),
        ("GET", format!("/Users?filter={}", percent("active co \"t\"")), String::new(), 400, Some("invalidFilter")),
        ("GET", format!("/Users?filter={}{}{}", "(".repeat(20), percent("userName pr"), ")".repeat(20)), String::new(), 400, Some("invalidFilter")),
        ("GET", format!("/Users?filter={}", "a".repeat(5000)), String::new(), 400, Some("invalidFilter")),
        ("GET", "/Users?startIndex=abc".into(), String::new(), 400, Some("invalidValue")),
        ("GET", "/Users?sortBy=shoeSize".into(), String::new(), 400, Some("invalidValue")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "emails[type eq", "value": "x"}]}).to_string(), 400, Some("invalidPath")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "shoeSize", "value": "x"}]}).to_string(), 400, Some("invalidPath")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "emails[value co \"zzz\"].type", "value": "home"}]}).to_string(), 400, Some("noTarget")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "remove"}]}).to_string(), 400, Some("noTarget")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "id", "value": "other"}]}).to_string(), 400, Some("mutability")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": "userName"}]}).to_string(), 400, Some("invalidValue")),
        ("PATCH", format!("/Users/{uid}"), json!({"schemas": [PATCH], "Operations": [{"op": "jump", "path": "userName"}]}).to_string(), 400, Some("invalidSyntax")),
        ("PATCH", format!("/Users/{uid}"), json!({"Operations": []}).to_string(), 400, Some("invalidSyntax")),
        ("POST", "/Users".into(), format!("{{\"userName\": \"{}\"}}", "x".repeat(2 * 1024 * 1024)), 413, None),
        ("POST", "/Bulk".into(), json!({"schemas": [BULK], "Operations": (0..6).map(|i| json!({"method": "POST", "bulkId": format!("b{i}"), "path": "/Users", "data": user(&format!("bulk{i}"))})).collect::<Vec<_>>()}).to_string(), 413, None),
        ("POST", "/Bulk".into(), json!({"schemas": [BULK], "Operations": [{"method": "POST", "bulkId": "b", "path": "/Users", "data": {"userName": "y".repeat(30000)}}]}).to_string(), 413, None),
        ("POST", "/Bulk".into(), json!({"Operations": []}).to_string(), 400, Some("invalidSyntax")),
        ("GET", "/Users/does-not-exist".into(), String::new(), 404, None),
        ("POST", "/ServiceProviderConfig".into(), "{}".into(), 405, None),
        ("DELETE", "/Schemas".into(), String::new(), 405, None),
        ("GET", "/Me".into(), String::new(), 501, None),
        ("GET", "/NoSuchThing".into(), String::new(), 404, None),
        ("GET", "/Schemas/urn:nope".into(), String::new(), 404, None),
        ("GET", "/ResourceTypes/Nope".into(), String::new(), 404, None),
    ];
    for (method, path, body, status, scim_type) in cases {
        let (s, v) = raw(method, &path, &body).await;
        let shown = &path[..path.len().min(80)];
        assert_eq!(s, status, "{method} {shown}: {v}");
        if status != 404 || v != Value::Null {
            assert_eq!(v["status"], json!(status.to_string()), "{method} {shown}: {v}");
            assert_eq!(
                v.get("scimType").and_then(Value::as_str),
                scim_type,
                "{method} {shown}: {v}"
            );
        }
    }
    assert!(!gw.logs().contains("panicked"), "no panics: {}", gw.logs());
    // Unauthenticated and wrong-token requests get 401 with an Error body, discovery included.
    for path in [
        "/Users",
        "/Groups",
        "/ServiceProviderConfig",
        "/Schemas",
        "/ResourceTypes",
        "/Bulk",
        "/Me",
        "/nope",
    ] {
        let r = gw.client.get(gw.url(path)).send().await.expect("send");
        assert_eq!(r.status(), 401, "{path}");
        let v: Value = r.json().await.expect("json");
        assert_error(&v, 401, None);
        let r = gw
            .client
            .get(gw.url(path))
            .header("authorization", "non-token")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "{path}");
        let r = gw
            .client
            .get(gw.url(path))
            .bearer_auth(format!("{TOKEN}x"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "{path}");
    }
}
both_backends!(bad_input_gets_scim_errors);

async fn groups_membership_and_bulk(backend: Backend) {
    let gw = Gateway::start(backend).await;
    // Bulk: the group references users created later in the same request; the POSTs run first.
    let mut ops = vec![json!({"method": "POST", "bulkId": "g", "path": "/Groups",
        "data": {"schemas": [GROUP], "displayName": "Tour Guides", "members": (0..3).map(|i| json!({"type": "User", "value": format!("bulkId:u{i}")})).collect::<Vec<_>>()}})];
    for i in 0..3 {
        ops.push(
            json!({"method": "POST", "bulkId": format!("u{i}"), "path": "/Users", "data": user(&format!("guide{i}"))}),
        );
    }
    ops.push(json!({"method": "PATCH", "path": "/Groups/bulkId:g", "data": {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "Guides"}]}}));
    ops.push(json!({"method": "POST", "bulkId": "dup", "path": "/Users", "data": user("guide0")}));
    ops.push(json!({"method": "POST", "bulkId": "c1", "path": "/Groups", "data": {"schemas": [GROUP], "displayName": "c1", "members": [{"value": "bulkId:c2"}]}}));
    ops.push(json!({"method": "POST", "bulkId": "c2", "path": "/Groups", "data": {"schemas": [GROUP], "displayName": "c2", "members": [{"value": "bulkId:c1"}]}}));
    let (s, v) = gw
        .call("POST", "/Bulk", Some(&json!({"schemas": [BULK], "Operations": ops})))
        .await;
    assert_eq!(s, 200, "{v}");
    let results = v["Operations"].as_array().expect("ops");
    let status_of = |bulk_id: &str| {
        results
            .iter()
            .find(|r| r["bulkId"] == bulk_id)
            .map(|r| r["status"].clone())
    };
    assert_eq!(status_of("g"), Some(json!("201")));
    assert_eq!(status_of("u1"), Some(json!("201")));
    assert_eq!(status_of("dup"), Some(json!("409")));
    assert_eq!(status_of("c1"), Some(json!("409")));
    assert!(
        results.iter().any(|r| r["method"] == "PATCH" && r["status"] == "200"),
        "{v}"
    );
    let group_loc = results
        .iter()
        .find(|r| r["bulkId"] == "g")
        .and_then(|r| r["location"].as_str())
        .expect("location");
    let gid = group_loc.rsplit('/').next().expect("id").to_string();
    let (_, g) = gw.call("GET", &format!("/Groups/{gid}"), None).await;
    assert_eq!(g["displayName"], "Guides");
    assert_eq!(g["members"].as_array().map(Vec::len), Some(3), "{g}");
    let uid0 = g["members"][0]["value"].as_str().expect("member").to_string();
    let (_, u) = gw.call("GET", &format!("/Users/{uid0}"), None).await;
    assert_eq!(u["groups"][0]["value"], json!(gid), "{u}");

    // Group displayName is unique per tenant, case-insensitively (Entra and AD need it).
    let (s, v) = gw
        .call(
            "POST",
            "/Groups",
            Some(&json!({"schemas": [GROUP], "displayName": "GUIDES"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_error(&v, 409, Some("uniqueness"));

    // failOnErrors stops after the first failure.
    let ops = json!({"schemas": [BULK], "failOnErrors": 1, "Operations": [
        {"method": "POST", "bulkId": "a", "path": "/Users", "data": user("guide1")},
        {"method": "POST", "bulkId": "b", "path": "/Users", "data": user("fresh")}]});
    let (_, v) = gw.call("POST", "/Bulk", Some(&ops)).await;
    assert_eq!(v["Operations"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = gw.call("GET", "/Users?filter=userName%20eq%20%22fresh%22", None).await;
    assert_eq!(v["totalResults"], json!(0));

    // Membership PATCH in every form; a member that does not exist is refused.
    let p = |ops: Value| json!({"schemas": [PATCH], "Operations": ops});
    let path = format!("/Groups/{gid}");
    let (s, v) = gw
        .call(
            "PATCH",
            &path,
            Some(&p(
                json!([{"op": "remove", "path": format!("members[value eq \"{uid0}\"]")}]),
            )),
        )
        .await;
    assert_eq!((s, v["members"].as_array().map(Vec::len)), (200, Some(2)), "{v}");
    let (s, _) = gw
        .call(
            "PATCH",
            &path,
            Some(&p(
                json!([{"op": "add", "path": "members", "value": [{"value": uid0}]}]),
            )),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = gw
        .call(
            "PATCH",
            &path,
            Some(&p(
                json!([{"op": "Remove", "path": "members", "value": [{"value": uid0}]}]),
            )),
        )
        .await;
    assert_eq!((s, v["members"].as_array().map(Vec::len)), (200, Some(2)));
    let (s, v) = gw
        .call(
            "PATCH",
            &path,
            Some(&p(
                json!([{"op": "add", "path": "members", "value": [{"value": "ghost"}]}]),
            )),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_error(&v, 400, Some("invalidValue"));
    let (s, v) = gw
        .call(
            "PATCH",
            &path,
            Some(&p(
                json!([{"op": "replace", "path": "members", "value": [{"value": uid0}]}]),
            )),
        )
        .await;
    assert_eq!((s, v["members"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, v) = gw
        .call(
            "PATCH",
            &format!("{path}?excludedAttributes=members"),
            Some(&p(json!([{"op": "remove", "path": "members[type eq \"User\"]"}]))),
        )
        .await;
    assert_eq!(s, 200);
    assert!(v.get("members").is_none());
    let (_, v) = gw.call("GET", &path, None).await;
    assert!(v.get("members").is_none(), "all members removed: {v}");
    // Deleting a user removes its memberships.
    gw.call(
        "PATCH",
        &path,
        Some(&p(
            json!([{"op": "add", "path": "members", "value": [{"value": uid0}]}]),
        )),
    )
    .await;
    gw.call("DELETE", &format!("/Users/{uid0}"), None).await;
    let (_, v) = gw.call("GET", &path, None).await;
    assert!(v.get("members").is_none(), "{v}");
}
both_backends!(groups_membership_and_bulk);

/// Bulk creates commit in batches; a batch that cannot commit (here: a taken userName in the middle) runs again
/// one operation at a time, so every operation gets the answer it would get alone.
async fn bulk_creates_in_batches(backend: Backend) {
    let gw = Gateway::start(backend).await;
    let (s, _) = gw.call("POST", "/Users", Some(&user("taken"))).await;
    assert_eq!(s, 201);
    // 600 creates: more than one batch. #137 repeats #10's userName (case aside), #400 takes an existing one.
    let name = |i: usize| match i {
        137 => "Batch0010".to_string(),
        400 => "taken".to_string(),
        _ => format!("batch{i:04}"),
    };
    let mut ops: Vec<Value> = (0..600)
        .map(|i| json!({"method": "POST", "bulkId": format!("u{i}"), "path": "/Users", "data": user(&name(i))}))
        .collect();
    // A group that references batched users: it runs after them, with their ids.
    ops.push(
        json!({"method": "POST", "bulkId": "g", "path": "/Groups", "data": {"schemas": [GROUP],
        "displayName": "batched", "members": [{"value": "bulkId:u5"}, {"value": "bulkId:u599"}]}}),
    );
    let (s, v) = gw
        .call("POST", "/Bulk", Some(&json!({"schemas": [BULK], "Operations": ops})))
        .await;
    assert_eq!(s, 200, "{v}");
    let results = v["Operations"].as_array().expect("ops");
    assert_eq!(results.len(), 601);
    let mut ids = BTreeSet::new();
    for (i, r) in results.iter().take(600).enumerate() {
        assert_eq!(r["bulkId"], json!(format!("u{i}")), "results keep the request order");
        assert_eq!(r["method"], "POST");
        if i == 137 || i == 400 {
            assert_eq!(r["status"], "409", "{r}");
            assert_error(&r["response"], 409, Some("uniqueness"));
            assert!(r.get("location").is_none(), "{r}");
            continue;
        }
        assert_eq!(r["status"], "201", "{r}");
        assert_eq!(r["version"], "W/\"1\"", "{r}");
        let loc = r["location"].as_str().expect("location");
        assert!(loc.starts_with(&format!("{}/Users/", gw.base)), "{loc}");
        ids.insert(loc.rsplit('/').next().expect("id").to_string());
    }
    assert_eq!(ids.len(), 598, "every created user has its own id");
    assert_eq!(results[600]["status"], "201", "{}", results[600]);
    assert_eq!(total(&gw, "userName sw \"batch\"").await, 598);
    assert_eq!(total(&gw, "userName eq \"batch0010\"").await, 1);
    // Every created user reads back as itself (its id is the one its result named).
    for (i, r) in results.iter().enumerate().take(600).step_by(97) {
        let Some(loc) = r["location"].as_str() else { continue };
        let id = loc.rsplit('/').next().expect("id");
        let (s, u) = gw.call("GET", &format!("/Users/{id}"), None).await;
        assert_eq!((s, u["userName"].clone()), (200, json!(name(i))), "{u}");
        assert_eq!(u["meta"]["location"], json!(loc));
    }
    let gloc = results[600]["location"].as_str().expect("group location");
    let (_, g) = gw.call("GET", &gloc.replace(&gw.base, ""), None).await;
    let members: BTreeSet<String> = g["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["value"].as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = [5, 599]
        .iter()
        .map(|&i| {
            results[i]["location"]
                .as_str()
                .expect("loc")
                .rsplit('/')
                .next()
                .expect("id")
                .to_string()
        })
        .collect();
    assert_eq!(members, want, "{g}");
    // Three batches of creates: the two holding a taken userName ran again one by one, the third committed whole.
    assert_eq!(gw.logs().matches("batched creates failed").count(), 2, "{}", gw.logs());

    // failOnErrors counts a failure inside a batch at its place: nothing after it runs.
    let ops: Vec<Value> = (0..20)
        .map(|i| {
            let n = if i == 7 {
                "taken".to_string()
            } else {
                format!("stop{i:02}")
            };
            json!({"method": "POST", "bulkId": format!("s{i}"), "path": "/Users", "data": user(&n)})
        })
        .collect();
    let (s, v) = gw
        .call(
            "POST",
            "/Bulk",
            Some(&json!({"schemas": [BULK], "failOnErrors": 1, "Operations": ops})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let results = v["Operations"].as_array().expect("ops");
    assert_eq!(results.len(), 8, "{v}");
    assert_eq!(results[7]["status"], "409");
    assert!(results[..7].iter().all(|r| r["status"] == "201"), "{v}");
    assert_eq!(total(&gw, "userName sw \"stop\"").await, 7);
}
both_backends!(bulk_creates_in_batches);

/// A user drops in an extension schema file; its attributes are validated, stored, filterable, patchable,
/// projected and discoverable with no code change.
async fn extension_schema_file(backend: Backend) {
    let ext = common::repo_root().join("examples/schemas/costcenter-extension.json");
    let gw = Gateway::start_with(Options {
        backend,
        extra_schemas: vec![ext],
        ..Options::default()
    })
    .await;
    const ACME: &str = "urn:example:params:scim:schemas:extension:acme:2.0:User";
    let (s, v) = gw.call("GET", &format!("/Schemas/{ACME}"), None).await;
    assert_eq!(s, 200);
    assert!(v.get("x-scimgate-extends").is_none(), "x- keys are not served");
    let (_, v) = gw.call("GET", "/ResourceTypes/User", None).await;
    assert!(
        v["schemaExtensions"]
            .as_array()
            .expect("ext")
            .iter()
            .any(|e| e["schema"] == ACME),
        "{v}"
    );

    for (name, badge, level) in [("ext1", "B-100", 3), ("ext2", "B-200", 5)] {
        let body = json!({"schemas": [USER, ACME], "userName": name, ACME: {"badgeNumber": badge, "clearanceLevel": level, "siteCodes": ["HQ"], "parking": {"spot": "A1", "level": -1}}});
        let (s, v) = gw.call("POST", "/Users", Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        assert!(v["schemas"].as_array().expect("schemas").contains(&json!(ACME)));
    }
    // Validated: a string where an integer belongs is refused.
    let bad = json!({"schemas": [USER, ACME], "userName": "ext3", ACME: {"clearanceLevel": "high"}});
    let (s, _) = gw.call("POST", "/Users", Some(&bad)).await;
    assert_eq!(s, 400);
    // Filterable.
    let f = percent(&format!("{ACME}:clearanceLevel gt 4 and {ACME}:parking.spot eq \"a1\""));
    let (_, v) = gw.call("GET", &format!("/Users?filter={f}"), None).await;
    assert_eq!(v["totalResults"], json!(1), "{v}");
    assert_eq!(v["Resources"][0]["userName"], "ext2");
    let id = v["Resources"][0]["id"].as_str().expect("id").to_string();
    // Patchable.
    let p = json!({"schemas": [PATCH], "Operations": [
        {"op": "replace", "path": format!("{ACME}:badgeNumber"), "value": "B-999"},
        {"op": "add", "path": format!("{ACME}:siteCodes"), "value": ["DC2"]}]});
    let (s, v) = gw.call("PATCH", &format!("/Users/{id}"), Some(&p)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[ACME]["badgeNumber"], "B-999");
    assert_eq!(v[ACME]["siteCodes"], json!(["HQ", "DC2"]));
    // Projected.
    let (_, v) = gw
        .call("GET", &format!("/Users/{id}?attributes={ACME}:badgeNumber"), None)
        .await;
    assert_eq!(v[ACME], json!({"badgeNumber": "B-999"}), "{v}");
    assert!(v.get("userName").is_none());
}
both_backends!(extension_schema_file);

async fn tenants_are_isolated(backend: Backend) {
    // Tenant B's token is configured only as its SHA-256.
    let token_b = "tenant-b-token-abcdef0123456789";
    let hash_b: String = {
        use std::fmt::Write;
        let d = <sha2::Sha256 as sha2::Digest>::digest(token_b.as_bytes());
        d.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    let gw = Gateway::start_with(Options {
        backend,
        extra_config: format!(
            "[[tenants]]\nid = \"b\"\nbase_path = \"/b/scim/v2\"\ntokens = [{{ sha256 = \"{hash_b}\" }}]\n"
        ),
        ..Options::default()
    })
    .await;
    let base_b = gw.base.replace("/scim/v2", "/b/scim/v2");
    let (s, a_user) = gw.call("POST", "/Users", Some(&user("shared-name"))).await;
    assert_eq!(s, 201);
    let a_id = a_user["id"].as_str().expect("id");
    // B can use the same userName: data is per tenant.
    let r = gw
        .client
        .post(format!("{base_b}/Users"))
        .bearer_auth(token_b)
        .body(user("shared-name").to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201);
    // A's token does not work on B, and B cannot see A's user.
    let r = gw
        .client
        .get(format!("{base_b}/Users"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let r = gw
        .client
        .get(format!("{base_b}/Users/{a_id}"))
        .bearer_auth(token_b)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    let r = gw
        .client
        .delete(format!("{base_b}/Users/{a_id}"))
        .bearer_auth(token_b)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 404);
    let r = gw
        .client
        .get(gw.url("/Users"))
        .bearer_auth(token_b)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let (_, v) = gw.call("GET", "/Users", None).await;
    assert_eq!(v["totalResults"], json!(1));
}
both_backends!(tenants_are_isolated);

/// SIGTERM lets in-flight requests finish before the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut gw = Gateway::start(Backend::Sqlite).await;
    let ops: Vec<Value> = (0..1000).map(|i| json!({"method": "POST", "bulkId": format!("b{i}"), "path": "/Users", "data": user(&format!("drain{i}"))})).collect();
    let req = gw
        .req(reqwest::Method::POST, "/Bulk")
        .body(json!({"schemas": [BULK], "Operations": ops}).to_string())
        .send();
    let pending = tokio::spawn(req);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let pid = gw.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let r = pending.await.expect("join").expect("the in-flight request completes");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["Operations"].as_array().map(Vec::len), Some(1000));
    assert!(
        v["Operations"]
            .as_array()
            .expect("ops")
            .iter()
            .all(|o| o["status"] == "201")
    );
    gw.stop();
    assert!(gw.logs().contains("drained"), "{}", gw.logs());
}
