//! A private OpenLDAP slapd on a loopback port, for the LDAP adapter's tests.
//!
//! [`Slapd::start`] writes a `slapd.conf` into a temporary directory (core, cosine, inetorgperson and nis schemas;
//! an mdb database with `dbnosync`; indexes on objectClass, uid, cn, mail, member, memberOf and entryUUID; the
//! memberof overlay for groupOfNames/member with refint; the ppolicy overlay with a default policy and lockout),
//! checks it with `slaptest`, runs `slapd -d 0` in the foreground on a free 127.0.0.1 port, and loads the suffix
//! entry plus `ou=people`, `ou=groups` and `ou=policies` (with `cn=default`) with `ldapadd`. Dropping the guard
//! kills the process and removes the directory.
//!
//! [`Slapd::stop`] and [`Slapd::start_again`] stop the server and start it again on the same port with the same
//! data (outage tests). [`Slapd::ldapadd`] and [`Slapd::ldapsearch`] read and write the directory directly with
//! the `ldap-utils` CLI, bypassing the code under test.
//!
//! Needs the Debian packages `slapd` and `ldap-utils`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// One entry as `ldapsearch` prints it: attribute names as the server spells them, values decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub dn: String,
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl Entry {
    /// Every value of an attribute, its name compared case-insensitively.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.attrs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.iter().cloned())
            .collect()
    }

    pub fn first(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }
}

fn decode(value: &str, b64: bool) -> String {
    if b64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .unwrap_or_else(|e| panic!("ldapsearch printed bad base64 {value:?}: {e}"));
        match String::from_utf8(bytes) {
            Ok(s) => s,
            // Binary values (objectGUID): hex.
            Err(e) => e.into_bytes().iter().map(|b| format!("{b:02x}")).collect(),
        }
    } else {
        value.to_string()
    }
}

/// Parse `ldapsearch -LLL -o ldif-wrap=no` output.
pub fn parse_ldif(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut cur: Option<Entry> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if let Some(e) = cur.take() {
                out.push(e);
            }
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let (b64, value) = match rest.strip_prefix(':') {
            Some(v) => (true, v.trim_start()),
            None => (false, rest.strip_prefix(' ').unwrap_or(rest)),
        };
        let value = decode(value, b64);
        if name.eq_ignore_ascii_case("dn") {
            if let Some(e) = cur.take() {
                out.push(e);
            }
            cur = Some(Entry {
                dn: value,
                attrs: BTreeMap::new(),
            });
        } else if let Some(e) = cur.as_mut() {
            e.attrs.entry(name.to_string()).or_default().push(value);
        }
    }
    out.extend(cur);
    out
}

/// Run an `ldap-utils` program with the given environment, feeding `input` on stdin; panics on failure.
pub(crate) fn ldap_tool(program: &str, args: &[String], env: &[(&str, String)], input: Option<&str>) -> String {
    let path = crate::require(program, "ldap-utils");
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{program}: cannot write stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{program} did not finish: {e}"));
    // ldapsearch exits 32 when the base does not exist: no entries.
    let code = out.status.code();
    assert!(
        out.status.success() || (program == "ldapsearch" && code == Some(32)),
        "{program} {args:?} failed ({code:?}): {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send SIGTERM (through `kill`, the crate forbids unsafe), wait up to `grace`, then SIGKILL.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running private slapd.
pub struct Slapd {
    /// `ldap://127.0.0.1:PORT`
    pub url: String,
    /// e.g. `dc=example,dc=com`
    pub suffix: String,
    pub root_dn: String,
    pub root_pw: String,
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Slapd {
    /// Start a fresh slapd for `suffix` (a `dc=` DN such as `dc=example,dc=com`). Panics if it cannot.
    pub fn start(suffix: &str) -> Slapd {
        crate::require("slapd", "slapd");
        let slaptest = crate::require("slaptest", "slapd");
        crate::require("ldapadd", "ldap-utils");
        let dir = tempfile::Builder::new()
            .prefix("scimgate-slapd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("slapd: no temp dir: {e}"));
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap_or_else(|e| panic!("slapd: {e}"));
        let root_dn = format!("cn=admin,{suffix}");
        let root_pw = crate::unique("pw");
        let conf = dir.path().join("slapd.conf");
        let text = format!(
            r#"include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload ppolicy
moduleload memberof
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
sizelimit unlimited

database mdb
maxsize 268435456
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {data}
dbnosync
index objectClass eq
index uid,cn,mail eq
index member,memberOf eq
index entryUUID eq

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE

overlay ppolicy
ppolicy_default "cn=default,ou=policies,{suffix}"
ppolicy_use_lockout
"#,
            dir = dir.path().display(),
            data = data.display(),
        );
        fs::write(&conf, text).unwrap_or_else(|e| panic!("slapd: cannot write slapd.conf: {e}"));
        let check = Command::new(&slaptest)
            .args(["-u", "-f"])
            .arg(&conf)
            .output()
            .unwrap_or_else(|e| panic!("cannot run slaptest: {e}"));
        assert!(
            check.status.success(),
            "slaptest refused the config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let port = crate::free_port();
        let mut s = Slapd {
            url: format!("ldap://127.0.0.1:{port}"),
            suffix: suffix.to_string(),
            root_dn,
            root_pw,
            port,
            conf,
            child: None,
            dir,
        };
        s.start_again();
        let dc = suffix
            .split(',')
            .next()
            .and_then(|r| r.split_once('='))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| "example".into());
        s.ldapadd(&format!(
            "dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {dc}\no: {dc}\n\n\
             dn: ou=people,{suffix}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{suffix}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=policies,{suffix}\nobjectClass: organizationalUnit\nou: policies\n\n\
             dn: cn=default,ou=policies,{suffix}\nobjectClass: device\nobjectClass: pwdPolicy\ncn: default\n\
             pwdAttribute: userPassword\npwdLockout: TRUE\npwdMaxFailure: 5\n"
        ));
        s
    }

    /// Stop the server (SIGTERM, then SIGKILL). The data stays; [`Slapd::start_again`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }

    /// (Re)start the server on the same port with the same data, and wait until it accepts connections.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let slapd = crate::require("slapd", "slapd");
        let log = fs::File::create(self.dir.path().join("slapd.log")).unwrap_or_else(|e| panic!("slapd log: {e}"));
        let child = Command::new(slapd)
            .arg("-f")
            .arg(&self.conf)
            .args(["-h", &format!("ldap://127.0.0.1:{}/", self.port), "-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start slapd: {e}"));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default();
                panic!("slapd exited ({status}) before listening on {addr}: {log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "slapd did not listen on {addr} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn auth_args(&self) -> Vec<String> {
        vec![
            "-x".into(),
            "-H".into(),
            self.url.clone(),
            "-D".into(),
            self.root_dn.clone(),
            "-w".into(),
            self.root_pw.clone(),
        ]
    }

    /// Load LDIF (add records, or change records with `changetype:`) as the root DN.
    pub fn ldapadd(&self, ldif: &str) {
        let mut args = self.auth_args();
        args.push("-a".into());
        ldap_tool("ldapmodify", &args, &[], Some(ldif));
    }

    /// Apply LDIF change records (`changetype: modify` and friends) as the root DN.
    pub fn ldapmodify(&self, ldif: &str) {
        ldap_tool("ldapmodify", &self.auth_args(), &[], Some(ldif));
    }

    /// Search as the root DN (subtree under `base`) and return the entries, with `attrs` (empty: all user
    /// attributes; name operational ones such as `entryUUID` or `memberOf` explicitly, or pass `+`).
    pub fn ldapsearch(&self, base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
        let mut args = self.auth_args();
        args.extend(
            ["-LLL", "-o", "ldif-wrap=no", "-b", base, "-s", "sub", filter]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(attrs.iter().map(|s| s.to_string()));
        parse_ldif(&ldap_tool("ldapsearch", &args, &[], None))
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldif_parses_plain_and_base64_values() {
        let text = "dn: uid=a,dc=x\nuid: a\ncn:: w6lsw6g=\nmember: m1\nmember: m2\n\ndn:: dWlkPWIsZGM9eA==\nuid: b\n";
        let e = parse_ldif(text);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].first("CN").as_deref(), Some("élè"));
        assert_eq!(e[0].all("member"), vec!["m1", "m2"]);
        assert_eq!(e[1].dn, "uid=b,dc=x");
    }
}
