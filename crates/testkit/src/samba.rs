//! A private Samba Active Directory domain controller (realm `EXAMPLE.TEST`, domain `EXAMPLE`) serving LDAPS on
//! its own loopback address, for the LDAP adapter's AD-mode tests.
//!
//! Provisioning takes 6–8 s, so it is done once per Samba version into a template directory under
//! `/var/tmp/scimgate-samba/` (under an exclusive file lock, so concurrent test processes wait for one
//! provisioning instead of racing; a `ready` marker is written last, so a half-made template is redone). Password
//! rules are relaxed in the template (no complexity, no history, no minimum or maximum age). [`Samba::start`]
//! copies the template into a temporary directory, points its `smb.conf` at that directory and at a free
//! loopback address (127.0.0.2 upwards, each held with a lock file while in use: the LDAP ports 389/636 are fixed
//! in Samba), makes a throwaway CA and a server certificate with an IP SAN for that address (so clients verify
//! TLS properly against [`Samba::ca_file`]), and runs `samba -i -M single` as one process serving only LDAP.
//! Dropping the guard stops it and removes the directory.
//!
//! Needs the Debian packages samba, samba-ad-dc, samba-ad-provision, samba-dsdb-modules, samba-vfs-modules,
//! winbind, krb5-user and ldap-utils.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::slapd::{Entry, ldap_tool, parse_ldif, terminate};

/// The template's administrator password (a throwaway domain on loopback, for tests only).
const ADMIN_PW: &str = "Adm1n-Passw0rd!";
const TEMPLATE_ROOT: &str = "/var/tmp/scimgate-samba";
/// The address the template is provisioned for; each copy is re-addressed.
const TEMPLATE_IP: &str = "127.0.0.2";

/// A running Samba AD DC.
pub struct Samba {
    /// `ldaps://127.0.0.N`
    pub url: String,
    /// `ldap://127.0.0.N` (simple binds are refused there without TLS; for "no plaintext" tests).
    pub plain_url: String,
    pub ip: Ipv4Addr,
    /// `DC=example,DC=test`
    pub base_dn: String,
    /// `CN=Administrator,CN=Users,DC=example,DC=test`
    pub admin_dn: String,
    pub admin_pw: String,
    /// PEM of the CA that signed the LDAPS certificate.
    pub ca_file: PathBuf,
    /// The UPN suffix (`example.test`).
    pub realm_domain: String,
    child: Option<Child>,
    _addr_lock: fs::File,
    dir: tempfile::TempDir,
}

fn run(program: &str, args: &[&str], what: &str) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {program} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn samba_version(samba: &str) -> String {
    let out = Command::new(samba)
        .arg("-V")
        .output()
        .unwrap_or_else(|e| panic!("cannot run samba -V: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect()
}

/// The provisioned template for this Samba version, made once under a lock.
fn template() -> PathBuf {
    let samba = crate::require("samba", "samba");
    let tool = crate::require("samba-tool", "samba-common-bin");
    let root = Path::new(TEMPLATE_ROOT);
    fs::create_dir_all(root).unwrap_or_else(|e| panic!("samba: cannot create {TEMPLATE_ROOT}: {e}"));
    let dir = root.join(samba_version(&samba));
    let lock = fs::File::create(root.join(format!("{}.lock", samba_version(&samba))))
        .unwrap_or_else(|e| panic!("samba: template lock: {e}"));
    lock.lock().unwrap_or_else(|e| panic!("samba: template lock: {e}"));
    if dir.join("ready").exists() {
        return dir;
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("cache")).unwrap_or_else(|e| panic!("samba: {e}"));
    let d = dir.display().to_string();
    let opts = [
        format!("interfaces={TEMPLATE_IP}/8"),
        "bind interfaces only=yes".into(),
        format!("pid directory={d}/run"),
        format!("ncalrpc dir={d}/run/ncalrpc"),
        format!("winbindd socket directory={d}/run/winbindd"),
        format!("ntp signd socket directory={d}/run/ntp_signd"),
        format!("log file={d}/log.samba"),
        format!("cache directory={d}/cache"),
        format!("lock directory={d}/lock"),
        format!("state directory={d}/state"),
        "disable netbios=yes".into(),
        "smb ports=44599".into(),
    ];
    let mut args: Vec<String> = [
        "domain",
        "provision",
        "--realm=EXAMPLE.TEST",
        "--domain=EXAMPLE",
        "--server-role=dc",
        "--dns-backend=NONE",
        "--host-name=dc1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--targetdir={d}"));
    args.push(format!("--adminpass={ADMIN_PW}"));
    args.push(format!("--host-ip={TEMPLATE_IP}"));
    args.extend(opts.iter().map(|o| format!("--option={o}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&tool, &args, "samba-tool domain provision");
    let sam = format!("{d}/private/sam.ldb");
    run(
        &tool,
        &[
            "domain",
            "passwordsettings",
            "set",
            "-H",
            &sam,
            "--complexity=off",
            "--history-length=0",
            "--min-pwd-age=0",
            "--max-pwd-age=0",
            "--min-pwd-length=1",
        ],
        "samba-tool domain passwordsettings",
    );
    fs::write(dir.join("ready"), d).unwrap_or_else(|e| panic!("samba: {e}"));
    dir
}

/// A loopback address whose LDAP ports are free, held with a lock file while the guard lives.
fn claim_address() -> (Ipv4Addr, fs::File) {
    for n in 2..=250u8 {
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let lock = fs::File::create(format!("/tmp/scimgate-samba-{ip}.lock"))
            .unwrap_or_else(|e| panic!("samba: address lock: {e}"));
        if lock.try_lock().is_err() {
            continue;
        }
        let free = [389u16, 636, 88, 464]
            .iter()
            .all(|p| TcpListener::bind((IpAddr::V4(ip), *p)).is_ok());
        if free {
            return (ip, lock);
        }
    }
    panic!("samba: no free loopback address in 127.0.0.2-250");
}

fn tls_files(dir: &Path, ip: Ipv4Addr) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let fail = |e: rcgen::Error| -> ! { panic!("samba: cannot make test certificates: {e}") };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "scimgate test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let mut leaf = CertificateParams::new(vec!["dc1.example.test".to_string()]).unwrap_or_else(|e| fail(e));
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(ip)));
    leaf.distinguished_name.push(DnType::CommonName, "dc1.example.test");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap_or_else(|e| fail(e));
    let tls = dir.join("tls-test");
    fs::create_dir_all(&tls).unwrap_or_else(|e| panic!("samba: {e}"));
    let (ca_file, cert_file, key_file) = (tls.join("ca.pem"), tls.join("cert.pem"), tls.join("key.pem"));
    fs::write(&ca_file, ca_cert.pem()).unwrap_or_else(|e| panic!("samba: {e}"));
    fs::write(&cert_file, cert.pem()).unwrap_or_else(|e| panic!("samba: {e}"));
    fs::write(&key_file, key.serialize_pem()).unwrap_or_else(|e| panic!("samba: {e}"));
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap_or_else(|e| panic!("samba: {e}"));
    (ca_file, cert_file, key_file)
}

impl Samba {
    /// Start a fresh DC (a copy of the provisioned template). Panics if it cannot.
    pub fn start() -> Samba {
        let samba = crate::require("samba", "samba");
        crate::require("ldapsearch", "ldap-utils");
        let template = template();
        let (ip, addr_lock) = claim_address();
        let dir = tempfile::Builder::new()
            .prefix("scimgate-samba-")
            .tempdir()
            .unwrap_or_else(|e| panic!("samba: no temp dir: {e}"));
        let d = dir.path().join("dc");
        run(
            "cp",
            &["-a", &template.display().to_string(), &d.display().to_string()],
            "copy the Samba template",
        );
        let conf = d.join("etc/smb.conf");
        let text = fs::read_to_string(&conf).unwrap_or_else(|e| panic!("samba: {e}"));
        let text = text
            .replace(&template.display().to_string(), &d.display().to_string())
            .replace(&format!("{TEMPLATE_IP}/8"), &format!("{ip}/8"));
        fs::write(&conf, text).unwrap_or_else(|e| panic!("samba: {e}"));
        let (ca_file, cert_file, key_file) = tls_files(dir.path(), ip);
        let log = fs::File::create(dir.path().join("samba.out")).unwrap_or_else(|e| panic!("samba: {e}"));
        let child = Command::new(&samba)
            .arg("-s")
            .arg(&conf)
            .args(["-i", "-M", "single", "--option=server services=ldap"])
            .arg("--option=tls enabled=yes")
            .arg(format!("--option=tls keyfile={}", key_file.display()))
            .arg(format!("--option=tls certfile={}", cert_file.display()))
            .arg(format!("--option=tls cafile={}", ca_file.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start samba: {e}"));
        let mut s = Samba {
            url: format!("ldaps://{ip}"),
            plain_url: format!("ldap://{ip}"),
            ip,
            base_dn: "DC=example,DC=test".into(),
            admin_dn: "CN=Administrator,CN=Users,DC=example,DC=test".into(),
            admin_pw: ADMIN_PW.into(),
            ca_file,
            realm_domain: "example.test".into(),
            child: Some(child),
            _addr_lock: addr_lock,
            dir,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let addr = format!("{}:636", self.ip);
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(&addr).is_ok() && self.try_search() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log = fs::read_to_string(self.dir.path().join("samba.out")).unwrap_or_default();
                panic!("samba exited ({status}) before serving LDAPS on {addr}: {log}");
            }
            if start.elapsed() > Duration::from_secs(60) {
                let log = fs::read_to_string(self.dir.path().join("samba.out")).unwrap_or_default();
                panic!("samba did not serve LDAPS on {addr} within 60 s: {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_search(&self) -> bool {
        Command::new("ldapsearch")
            .args(self.auth_args())
            .args([
                "-LLL",
                "-b",
                "",
                "-s",
                "base",
                "(objectClass=*)",
                "defaultNamingContext",
            ])
            .env("LDAPTLS_CACERT", &self.ca_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn auth_args(&self) -> Vec<String> {
        vec![
            "-x".into(),
            "-H".into(),
            self.url.clone(),
            "-D".into(),
            self.admin_dn.clone(),
            "-w".into(),
            self.admin_pw.clone(),
        ]
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("LDAPTLS_CACERT", self.ca_file.display().to_string())]
    }

    /// Load LDIF add records as the administrator, over LDAPS.
    pub fn ldapadd(&self, ldif: &str) {
        let mut args = self.auth_args();
        args.push("-a".into());
        ldap_tool("ldapmodify", &args, &self.env(), Some(ldif));
    }

    /// Apply LDIF change records as the administrator, over LDAPS.
    pub fn ldapmodify(&self, ldif: &str) {
        ldap_tool("ldapmodify", &self.auth_args(), &self.env(), Some(ldif));
    }

    /// Subtree search under `base` as the administrator. Binary values (objectGUID) come back as hex.
    pub fn ldapsearch(&self, base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
        let mut args = self.auth_args();
        args.extend(
            ["-LLL", "-o", "ldif-wrap=no", "-b", base, "-s", "sub", filter]
                .iter()
                .map(|s| s.to_string()),
        );
        args.extend(attrs.iter().map(|s| s.to_string()));
        parse_ldif(&ldap_tool("ldapsearch", &args, &self.env(), None))
    }

    /// Whether `dn` / `password` can bind over LDAPS (a base search of the root DSE; `ldapwhoami` does not work
    /// on AD).
    pub fn can_bind(&self, dn: &str, password: &str) -> bool {
        Command::new("ldapsearch")
            .args(["-x", "-H", &self.url, "-D", dn, "-w", password])
            .args([
                "-LLL",
                "-b",
                "",
                "-s",
                "base",
                "(objectClass=*)",
                "defaultNamingContext",
            ])
            .env("LDAPTLS_CACERT", &self.ca_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(5));
        }
    }
}
