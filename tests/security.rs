//! The security suite against the real binary: JWT validation, mTLS, rate limits, body and filter limits, and
//! secrets that never reach the logs. (Route-by-route 401s are in the router tests, which walk the same route
//! tables the router is built from; tenant isolation is in scim_api.rs; audit tampering in audit.rs.)

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::{Backend, Gateway, Options, TOKEN};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "scimgate";

struct Signer {
    key: EncodingKey,
    jwk: Value,
}

fn signer(kid: &str) -> Signer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..65])});
    Signer {
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("pem"),
        jwk,
    }
}

fn token(s: &Signer, kid: &str, aud: &str, exp_offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    encode(
        &h,
        &json!({"iss": ISSUER, "aud": aud, "sub": "entra-sync", "iat": now, "exp": now + exp_offset}),
        &s.key,
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_bearer_tokens_are_checked_for_signature_issuer_audience_and_expiry() {
    let good = signer("k1");
    let dir = tempfile::tempdir().expect("dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [good.jwk]}).to_string()).expect("jwks");
    let gw = Gateway::start_with(Options {
        backend: Backend::Sqlite,
        tenant_block: Some(format!(
            "[[tenants]]\nid = \"default\"\nbase_path = \"/scim/v2\"\ntokens = [{{ env = \"SCIMGATE_TEST_TOKEN\" }}]\n\
             jwt = {{ issuer = \"{ISSUER}\", audience = \"{AUDIENCE}\", jwks_file = \"{}\" }}\n",
            jwks.display()
        )),
        ..Options::default()
    })
    .await;
    let get = |t: String| {
        let rb = gw.client.get(gw.url("/Users")).bearer_auth(t);
        async move { rb.send().await.expect("send").status().as_u16() }
    };
    assert_eq!(get(token(&good, "k1", AUDIENCE, 300)).await, 200, "a valid JWT");
    assert_eq!(get(TOKEN.to_string()).await, 200, "static tokens still work");
    assert_eq!(
        get(token(&good, "k1", "someone-else", 300)).await,
        401,
        "wrong audience"
    );
    assert_eq!(get(token(&good, "k1", AUDIENCE, -600)).await, 401, "expired");
    let forger = signer("k1");
    assert_eq!(
        get(token(&forger, "k1", AUDIENCE, 300)).await,
        401,
        "bad signature (same kid, other key)"
    );
    assert_eq!(
        get(token(&good, "unknown-kid", AUDIENCE, 300)).await,
        401,
        "unknown key"
    );
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": ISSUER, "aud": AUDIENCE, "exp": chrono::Utc::now().timestamp() + 300}),
        &EncodingKey::from_secret(b"guessable"),
    )
    .expect("sign");
    assert_eq!(get(hs).await, 401, "symmetric algorithms are refused");
    let r = gw
        .client
        .get(gw.url("/Users"))
        .bearer_auth(token(&good, "k1", AUDIENCE, -600))
        .send()
        .await
        .expect("send");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["status"], "401");
    assert_eq!(body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_rate_limit_gets_429_with_retry_after() {
    let gw = Gateway::start_with(Options {
        backend: Backend::Sqlite,
        tenant_block: Some(
            "[[tenants]]\nid = \"default\"\nbase_path = \"/scim/v2\"\ntokens = [{ env = \"SCIMGATE_TEST_TOKEN\" }]\n\
             rate_limit = { per_second = 1, burst = 3 }\n"
                .into(),
        ),
        ..Options::default()
    })
    .await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..8 {
        let r = gw
            .req(reqwest::Method::GET, "/ServiceProviderConfig")
            .send()
            .await
            .expect("send");
        statuses.push(r.status().as_u16());
        if r.status() == 429 && limited.is_none() {
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            limited = Some((retry, r.json::<Value>().await.expect("json")));
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "the burst passes: {statuses:?}");
    let (retry, body) = limited.expect("some requests are limited");
    assert!(
        retry.and_then(|r| r.parse::<u64>().ok()).is_some_and(|s| s >= 1),
        "Retry-After in seconds"
    );
    assert_eq!(body["status"], "429");
    assert_eq!(body["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_and_deep_filters_are_refused() {
    let gw = Gateway::start(Backend::Sqlite).await;
    let big = json!({"userName": "x".repeat(2 * 1024 * 1024)});
    let (s, v) = gw.call("POST", "/Users", Some(&big)).await;
    assert_eq!((s, v["status"].as_str()), (413, Some("413")));
    let deep = format!("{}userName pr{}", "(".repeat(40), ")".repeat(40));
    let r = gw
        .req(reqwest::Method::GET, "/Users")
        .query(&[("filter", deep)])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["scimType"], "invalidFilter");
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_without_a_client_certificate_is_refused() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().expect("dir");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "scimgate test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
    cp.distinguished_name.push(DnType::CommonName, "okta-provisioning");
    let client = cp.signed_by(&client_key, &ca, &ca_key).expect("client cert");
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca.pem()).expect("write");
    std::fs::write(p("server.pem"), server.pem()).expect("write");
    std::fs::write(p("server.key"), server_key.serialize_pem()).expect("write");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    std::fs::write(
        p("scimgate.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ntls = {{ cert = \"{0}/server.pem\", key = \"{0}/server.key\", \
             client_ca = \"{0}/ca.pem\" }}\n[store]\nurl = \"sqlite://{0}/x.db\"\n[scim]\nschemas_dir = \"{1}\"\n\
             [[tenants]]\nid = \"t\"\nbase_path = \"/scim/v2\"\ntokens = [{{ env = \"MTLS_TOKEN\" }}]\n",
            dir.path().display(),
            common::repo_root().join("schemas").display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scimgate"))
        .args(["serve", "--config"])
        .arg(p("scimgate.toml"))
        .env("MTLS_TOKEN", TOKEN)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("root");
    let url = format!("https://127.0.0.1:{port}/scim/v2/ServiceProviderConfig");
    let identity = reqwest::Identity::from_pem(format!("{}{}", client.pem(), client_key.serialize_pem()).as_bytes())
        .expect("identity");
    let with_cert = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .identity(identity)
        .build()
        .expect("client");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(r) = with_cert.get(&url).bearer_auth(TOKEN).send().await {
            answered = Some(r.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered, Some(200), "a client with a certificate from the CA gets in");
    let without = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .expect("client");
    let refused = without.get(&url).bearer_auth(TOKEN).send().await;
    assert!(
        refused.is_err(),
        "no client certificate: the handshake is refused, got {:?}",
        refused.map(|r| r.status())
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A full scenario at TRACE level: no token, admin token or password may appear in any log line, and at INFO
/// level no user name (PII only at debug).
#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    for (level, pii_allowed) in [("trace", true), ("info", false)] {
        let gw = Gateway::start_with(Options {
            backend: Backend::Sqlite,
            rust_log: Some(level.into()),
            extra_config: "[log]\nformat = \"json\"\n".into(),
            ..Options::default()
        })
        .await;
        let password = format!("Pa55-{}-word", uuid::Uuid::new_v4().simple());
        let user_name = format!("pii.person.{}", uuid::Uuid::new_v4().simple());
        let (s, v) = gw
            .call(
                "POST",
                "/Users",
                Some(&json!({"userName": user_name, "password": password, "emails": [{"value": "pii@example.com"}]})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let id = v["id"].as_str().expect("id").to_string();
        let new_password = format!("N3w-{}", uuid::Uuid::new_v4().simple());
        let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "value": {"password": new_password}}]});
        assert_eq!(gw.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await.0, 200);
        gw.call("GET", &format!("/Users?filter=userName%20eq%20%22{user_name}%22"), None)
            .await;
        let r = gw
            .client
            .get(gw.url("/Users"))
            .bearer_auth("wrong-token-that-is-secret-too")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        gw.call("DELETE", &format!("/Users/{id}"), None).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let logs = gw.logs();
        // At info: the start-up lines and the delete (a create is a debug line: the audit trail records every
        // create, and a line per create cost a third of a create's CPU under load).
        assert!(logs.lines().count() >= 2, "the gateway logged at {level}");
        for secret in [
            TOKEN,
            password.as_str(),
            new_password.as_str(),
            "wrong-token-that-is-secret-too",
        ] {
            assert!(!logs.contains(secret), "{level}: a secret leaked into the logs");
        }
        if !pii_allowed {
            assert!(
                !logs.contains(&user_name) && !logs.contains("pii@example.com"),
                "PII at {level}"
            );
        }
        // JSON logs carry the request id.
        let with_rid = logs.lines().filter(|l| l.contains("request_id")).count();
        assert!(with_rid > 0, "request ids in the logs at {level}");
    }
}
