//! The binary's other faces: `scimgate check` and serving over TLS.

mod common;

use std::process::Command;

use serde_json::Value;

fn scimgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scimgate"))
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("scimgate.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nurl = \"sqlite://{}/x.db\"\n[scim]\nschemas_dir = \"{}\"\n{extra}\n[[tenants]]\nid = \"t\"\n\
             base_path = \"/scim/v2\"\ntokens = [{{ env = \"CLI_TEST_TOKEN\" }}]\n",
            dir.display(),
            common::repo_root().join("schemas").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn check_accepts_the_quickstart_and_reports_bad_input_clearly() {
    let out = scimgate()
        .args(["check", "--config"])
        .arg(common::repo_root().join("examples/quickstart.toml"))
        .env("SCIMGATE_TOKEN", "quickstart-token-0123456789")
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("config ok") && stdout.contains("policy ok"), "{stdout}");

    let dir = tempfile::tempdir().expect("temp dir");
    // An unknown key.
    let cfg = write_config(dir.path(), "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n");
    let out = scimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("CLI_TEST_TOKEN", "x".repeat(20))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lisen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A missing token variable.
    let cfg = write_config(dir.path(), "");
    let out = scimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .env_remove("CLI_TEST_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLI_TEST_TOKEN"));
    // A bad policy names its place.
    std::fs::write(
        dir.path().join("bad.toml"),
        "version = 1\n[[roles]]\nid = \"r\"\ngrants = [\"nope:x\"]\n",
    )
    .expect("policy");
    let cfg = write_config(dir.path(), "[policy]\nfile = \"bad.toml\"\n");
    let out = scimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("CLI_TEST_TOKEN", "x".repeat(20))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml:4:") && err.contains("nope:x"), "{err}");
    // Env overrides reach the config.
    let cfg = write_config(dir.path(), "");
    let out = scimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("CLI_TEST_TOKEN", "x".repeat(20))
        .env("SCIMGATE_SCIM__SCHEMAS_DIR", "/nonexistent")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_with_rustls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).expect("key");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ntls = {{ cert = \"{0}/cert.pem\", key = \"{0}/key.pem\" }}\n",
            dir.path().display()
        ),
    );
    let mut child = scimgate()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("CLI_TEST_TOKEN", "tls-token-0123456789")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
    let client = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{port}/scim/v2/ServiceProviderConfig");
    let mut ok = None;
    for _ in 0..100 {
        if let Ok(r) = client.get(&url).bearer_auth("tls-token-0123456789").send().await {
            ok = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = ok.expect("the gateway answers over TLS");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["meta"]["location"]
            .as_str()
            .expect("location")
            .starts_with("https://"),
        "{v}"
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = reqwest::Client::new().get(url.replace("https", "http")).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let _ = child.kill();
    let _ = child.wait();
}
