//! The flat-file adapter against a real local directory and a real OpenSSH sshd (internal-sftp) on a loopback
//! port. Files are read back with the `sftp` CLI, not through the adapter.

use std::path::Path;

use scimgate_adapter_file::{Config, FileAdapter};
use scimgate_adapter_sdk::compliance::{self, Fixture, user_doc};
use scimgate_adapter_sdk::{Adapter, DesiredAccount, ErrorKind};
use scimgate_testkit::sshd::{Sshd, foreign_host_key};

const COLUMNS: &str = r#"
key_column = "id"
columns = [
  { name = "id", source = "id" },
  { name = "userName", source = "userName", required = true },
  { name = "givenName", source = "name.givenName" },
  { name = "familyName", source = "name.familyName" },
  { name = "email", source = 'emails[type eq "work"].value' },
  { name = "enabled", source = "$enabled" },
  { name = "groups", source = "$entitlements" },
  { name = "action", source = "$action" },
  { name = "identity", source = "$identity_id" },
]
"#;

fn config(extra: &str, destination: &str) -> Config {
    let text = format!("{COLUMNS}\n{extra}\n[destination]\n{destination}\n");
    toml::from_str(&text).unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

fn local(dir: &Path, extra: &str) -> FileAdapter {
    FileAdapter::new(config(
        extra,
        &format!("type = \"local\"\ndir = {:?}", dir.display().to_string()),
    ))
    .expect("adapter")
}

fn sftp_dest(s: &Sshd, auth: &str, host_key: &str) -> String {
    format!(
        "type = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nhost_key = {host_key:?}\ndir = {:?}\n\
         connect_timeout_seconds = 5\n{auth}",
        s.port,
        s.user,
        s.upload_dir.display().to_string()
    )
}

fn key_auth(s: &Sshd) -> String {
    format!("private_key_file = {:?}", s.client_key.display().to_string())
}

fn sftp(s: &Sshd, extra: &str) -> FileAdapter {
    FileAdapter::new(config(extra, &sftp_dest(s, &key_auth(s), &s.host_public_key))).expect("adapter")
}

fn fixture() -> Fixture {
    Fixture {
        prefix: scimgate_testkit::unique("kit"),
        entitlements: ["grp-a".into(), "grp-b".into()],
        family_name_attr: "familyName".into(),
        user_name_attr: "userName".into(),
        password: false,
    }
}

fn person(id: &str, user_name: &str, given: &str, family: &str, enabled: bool) -> DesiredAccount {
    DesiredAccount {
        identity_id: format!("ident-{id}"),
        user: user_doc(id, user_name, given, family),
        entitlements: ["grp-a".to_string()].into(),
        managed: ["grp-a".to_string(), "grp-b".to_string()].into(),
        enabled,
        password: None,
    }
}

fn parse(bytes: &[u8]) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .records()
        .map(|r| r.expect("csv record").iter().map(str::to_string).collect())
        .collect()
}

fn remote(s: &Sshd, name: &str) -> String {
    format!("{}/{name}", s.upload_dir.display())
}

fn no_temp_files(names: &[String]) {
    assert!(
        names.iter().all(|n| !n.starts_with('.') && !n.contains(".tmp-")),
        "temporary files left: {names:?}"
    );
}

#[tokio::test]
async fn compliance_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = local(dir.path(), "");
    let report = compliance::run(&a, &fixture()).await.expect("compliance");
    println!("local: {:?}", report.steps);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    no_temp_files(&names);
    // Header only: the kit removed what it made.
    let rows = parse(&std::fs::read(dir.path().join("users.csv")).expect("population"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][0], "id");
}

#[tokio::test]
async fn compliance_over_sftp_and_no_temp_files_left() {
    let s = Sshd::start();
    let a = sftp(&s, "");
    let report = compliance::run(&a, &fixture()).await.expect("compliance");
    println!("sftp: {:?}", report.steps);
    let names = s.sftp_ls(&s.upload_dir.display().to_string());
    assert!(names.contains(&"users.csv".to_string()), "{names:?}");
    no_temp_files(&names);
    // The kit's nasty userName went through quoting both ways: its delta files hold it verbatim.
    let nasty_seen = names.iter().filter(|n| n.starts_with("users-")).any(|n| {
        parse(&s.sftp_get(&remote(&s, n)))
            .iter()
            .any(|r| r[1].ends_with("a,b=c*(\\)+\"<>;'#"))
    });
    assert!(nasty_seen, "no delta file holds the special-character userName");
}

#[tokio::test]
async fn sftp_to_a_dead_port_is_unavailable() {
    let dest = format!(
        "type = \"sftp\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"nobody\"\npassword = \"x\"\n\
         host_key = \"SHA256:AAAA\"\ndir = \"/tmp\"\nconnect_timeout_seconds = 2",
        scimgate_testkit::free_port()
    );
    let a = FileAdapter::new(config("", &dest)).expect("adapter");
    compliance::unreachable(&a).await.expect("unreachable");
}

#[tokio::test]
async fn joiner_lands_as_a_row_and_leaver_shows_up_over_sftp() {
    let s = Sshd::start();
    let a = sftp(&s, "");
    let joiner = person("j1", "jane.joiner", "Jane", "Joiner", true);
    let id = a.apply(None, &joiner).await.expect("joiner");
    assert_eq!(id.primary, "j1");

    let dir = s.upload_dir.display().to_string();
    let names = s.sftp_ls(&dir);
    no_temp_files(&names);
    let deltas: Vec<&String> = names.iter().filter(|n| n.starts_with("users-")).collect();
    assert_eq!(deltas.len(), 1, "one delta per change: {names:?}");
    let d = &deltas[0];
    assert!(
        d.ends_with(".csv") && d.len() == "users-20240131T235959123Z-000001.csv".len(),
        "{d}"
    );
    let delta = parse(&s.sftp_get(&remote(&s, d)));
    assert_eq!(
        delta[0],
        [
            "id",
            "userName",
            "givenName",
            "familyName",
            "email",
            "enabled",
            "groups",
            "action",
            "identity"
        ]
    );
    assert_eq!(
        delta[1],
        [
            "j1",
            "jane.joiner",
            "Jane",
            "Joiner",
            "j1@example.test",
            "true",
            "grp-a",
            "upsert",
            "ident-j1"
        ]
    );
    let population = parse(&s.sftp_get(&remote(&s, "users.csv")));
    assert_eq!(population[1], delta[1]);

    // The same state again changes nothing and delivers nothing.
    a.apply(Some(&id), &joiner).await.expect("again");
    assert_eq!(s.sftp_ls(&dir).len(), names.len());

    // A mover (disabled) and a leaver each deliver their own file.
    let mut mover = joiner.clone();
    mover.enabled = false;
    a.apply(Some(&id), &mover).await.expect("disable");
    a.remove(Some(&id), &mover).await.expect("leaver");
    a.remove(Some(&id), &mover).await.expect("leaver twice");
    let names = s.sftp_ls(&dir);
    no_temp_files(&names);
    let mut deltas: Vec<&String> = names.iter().filter(|n| n.starts_with("users-")).collect();
    deltas.sort();
    assert_eq!(deltas.len(), 3, "{names:?}");
    let disabled = parse(&s.sftp_get(&remote(&s, deltas[1])));
    assert_eq!((disabled[1][5].as_str(), disabled[1][7].as_str()), ("false", "disable"));
    let leaver = parse(&s.sftp_get(&remote(&s, deltas[2])));
    assert_eq!((leaver[1][0].as_str(), leaver[1][7].as_str()), ("j1", "delete"));
    let population = parse(&s.sftp_get(&remote(&s, "users.csv")));
    assert_eq!(population.len(), 1, "only the header remains: {population:?}");
}

#[tokio::test]
async fn formula_cells_are_neutralised_in_the_delivered_file() {
    let s = Sshd::start();
    let a = sftp(&s, "");
    let evil = person("f1", "@evil", "=HYPERLINK(\"http://x\",\"y\")", "+1-2", true);
    let mut evil2 = person("f2", "-cmd", "\t=1+1", "\r=2", true);
    evil2.entitlements = ["=grp".to_string()].into();
    evil2.managed.insert("=grp".into());
    a.apply(None, &evil).await.expect("apply");
    a.apply(None, &evil2).await.expect("apply");

    let raw = s.sftp_get(&remote(&s, "users.csv"));
    let rows = parse(&raw);
    for row in &rows[1..] {
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "formula cell {cell:?} in {row:?}"
            );
        }
    }
    let f1 = rows.iter().find(|r| r[0] == "f1").expect("f1");
    assert_eq!(f1[1], "'@evil");
    assert_eq!(f1[2], "'=HYPERLINK(\"http://x\",\"y\")");
    assert_eq!(f1[3], "'+1-2");
    let f2 = rows.iter().find(|r| r[0] == "f2").expect("f2");
    assert_eq!(&f2[1..4], ["'-cmd", "'\t=1+1", "'\r=2"]);
    assert_eq!(f2[6], "'=grp");
    // The adapter reads the original values back.
    let acc = a.get(None, &evil).await.expect("get").expect("row");
    assert_eq!(acc.attr("userName"), Some("@evil"));
    assert_eq!(acc.attr("givenName"), Some("=HYPERLINK(\"http://x\",\"y\")"));
    let acc = a.get(None, &evil2).await.expect("get").expect("row");
    assert!(acc.entitlements.contains("=grp"));
}

#[test]
fn path_traversal_in_file_names_is_refused_at_construction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = format!("type = \"local\"\ndir = {:?}", dir.path().display().to_string());
    for bad in [
        "../x.csv",
        "/etc/x",
        "a/b.csv",
        "..\\x.csv",
        "{timestamp}/../../x",
        ".hidden-{seq}",
        "x\u{0}{seq}",
    ] {
        for key in ["file_name", "state_file"] {
            let c = config(&format!("{key} = {}", toml::Value::String(bad.to_string())), &dest);
            let e = FileAdapter::new(c).expect_err(&format!("{key} {bad:?} accepted"));
            assert_eq!(e.kind, ErrorKind::Config, "{key} {bad:?}: {e}");
            assert!(!e.retriable);
        }
    }
    let c = config("file_name = \"users-{home}.csv\"", &dest);
    assert!(FileAdapter::new(c).is_err(), "unknown placeholders are refused");
    let c = config("file_name = \"users.csv\"", &dest);
    assert!(FileAdapter::new(c).is_err(), "a delta template must be unique");
}

#[tokio::test]
async fn an_unknown_host_key_is_refused() {
    let s = Sshd::start();
    let other = foreign_host_key();
    for pin in [
        other.clone(),
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU".to_string(),
    ] {
        let a = FileAdapter::new(config("", &sftp_dest(&s, &key_auth(&s), &pin))).expect("adapter");
        let e = a.health().await.expect_err("connected to an unpinned host");
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
        assert!(!e.retriable);
        let e = a
            .apply(None, &person("h1", "h", "H", "H", true))
            .await
            .expect_err("applied");
        assert_eq!(e.kind, ErrorKind::Config, "{e}");
    }
    assert!(
        s.sftp_ls(&s.upload_dir.display().to_string()).is_empty(),
        "nothing was written"
    );
    // The real key pinned by its fingerprint connects.
    let a = FileAdapter::new(config("", &sftp_dest(&s, &key_auth(&s), &s.host_key_fingerprint))).expect("adapter");
    a.health().await.expect("fingerprint pin");
}

#[tokio::test]
async fn password_authentication_and_a_wrong_password() {
    let s = Sshd::start();
    let pw_file = s.dir().join("password");
    std::fs::write(&pw_file, format!("{}\n", s.password)).expect("password file");
    let auth = format!("password_file = {:?}", pw_file.display().to_string());
    let a = FileAdapter::new(config("", &sftp_dest(&s, &auth, &s.host_public_key))).expect("adapter");
    a.health().await.expect("password login");
    a.apply(None, &person("p1", "pat", "Pat", "Password", true))
        .await
        .expect("apply");
    let rows = parse(&s.sftp_get(&remote(&s, "users.csv")));
    assert_eq!(rows[1][1], "pat");

    let a = FileAdapter::new(config(
        "",
        &sftp_dest(&s, "password = \"wrong-password\"", &s.host_public_key),
    ))
    .expect("adapter");
    let e = a.health().await.expect_err("wrong password accepted");
    assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
    assert!(!e.retriable);
    assert!(!e.message.contains("wrong-password"));
}

#[tokio::test]
async fn latin1_files_hold_windows_1252_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = local(
        dir.path(),
        "encoding = \"latin1\"\ndelimiter = \";\"\nline_ending = \"crlf\"",
    );
    a.apply(None, &person("l1", "zoe", "Zoë", "Müller €", true))
        .await
        .expect("apply");
    let bytes = std::fs::read(dir.path().join("users.csv")).expect("read");
    let want: &[u8] = b"l1;zoe;Zo\xEB;M\xFCller \x80;l1@example.test;true;grp-a;upsert;ident-l1\r\n";
    assert!(bytes.ends_with(want), "{bytes:?}");
    let acc = a
        .get(None, &person("l1", "zoe", "", "", true))
        .await
        .expect("get")
        .expect("row");
    assert_eq!(acc.attr("familyName"), Some("Müller €"));
    let e = a
        .apply(None, &person("l2", "lukasz", "Łukasz", "Nowak", true))
        .await
        .expect_err("unmappable accepted");
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert!(!e.retriable);
}

#[tokio::test]
async fn snapshot_mode_delivers_the_population_on_request() {
    let s = Sshd::start();
    let a = sftp(
        &s,
        "mode = \"snapshot\"\nfile_name = \"export-{timestamp}.csv\"\nschedule_seconds = 60\nquote_style = \"always\"",
    );
    assert_eq!(a.schedule(), Some(std::time::Duration::from_secs(60)));
    a.apply(None, &person("s1", "sam", "Sam", "One", true))
        .await
        .expect("apply");
    a.apply(None, &person("s2", "sue", "Sue", "Two", false))
        .await
        .expect("apply");
    let dir = s.upload_dir.display().to_string();
    assert_eq!(s.sftp_ls(&dir), ["users.csv"], "snapshot mode writes no delta files");
    let name = a.write_snapshot().await.expect("snapshot");
    let names = s.sftp_ls(&dir);
    assert!(names.contains(&name), "{names:?}");
    no_temp_files(&names);
    let raw = s.sftp_get(&remote(&s, &name));
    assert!(raw.starts_with(b"\"id\",\"userName\""), "quote_style always");
    let rows = parse(&raw);
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[1][1].as_str(), rows[2][1].as_str()), ("sam", "sue"));
    assert_eq!(rows[2][5], "false");
    // A second snapshot replaces nothing: it is a new file, and the population is unchanged.
    assert_eq!(s.sftp_get(&remote(&s, "users.csv")), raw);
}

#[test]
fn the_example_config_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/targets/file-sftp.toml"
    ))
    .expect("example");
    let v: toml::Value = toml::from_str(&text).expect("toml");
    let file = v["targets"][0]["file"].clone();
    let c: Config = file.try_into().expect("the example's [targets.file] is a valid Config");
    assert_eq!(c.columns.len(), 9);
}
