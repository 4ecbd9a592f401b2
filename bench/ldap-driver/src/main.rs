//! Driver for `bench/ldap.sh`: provisioning joiners into slapd, raw and through scimgate.
//!
//! - `slapd`: start a private slapd with `scimgate_testkit::slapd::Slapd` (the same recipe as the LDAP adapter's
//!   and the provisioning tests: mdb with `dbnosync`, memberof + refint, ppolicy), add one `groupOfNames` holding
//!   a placeholder member, write the connection details as shell assignments to `--info`, and run until SIGTERM or
//!   SIGINT (then stop slapd and remove its directory).
//! - `raw`: the ceiling. `-n` joiners written straight into slapd with ldap3 over `-c` bound connections, one
//!   joiner at a time per connection: the entry (the attributes the gateway's LDAP target writes) and a `member`
//!   add on the group. `--ops adapter` also does the two searches the LDAP adapter makes per new account (the key
//!   search before the add, the base read after it).
//! - `scim`: `-n` SCIM POST /Users through the gateway at `--http-c` requests in flight, while one ldap3 connection
//!   polls the group's `member` count; done when every joiner is a member (the adapter's last step per joiner).
//!
//! `raw` and `scim` print `key=value` lines on stdout for the script.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ldap3::{Ldap, LdapConnAsync, Mod, Scope, SearchEntry};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "bench/ldap.sh driver: raw ldap3 joiners vs SCIM joiners through scimgate, into slapd")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ops {
    /// add the entry, add it to the group
    Minimal,
    /// key search, add, base read, group add: the LDAP adapter's operations for a new account
    Adapter,
}

#[derive(clap::Args, Clone)]
struct Ldap3Args {
    /// ldap://127.0.0.1:PORT
    #[arg(long)]
    ldap_url: String,
    #[arg(long)]
    bind_dn: String,
    /// file holding the bind password
    #[arg(long)]
    pw_file: PathBuf,
    /// the group every joiner joins
    #[arg(long)]
    group: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a private slapd (testkit recipe) with one group; run until SIGTERM/SIGINT.
    Slapd {
        /// where to write the shell assignments (LDAP_URL, LDAP_SUFFIX, LDAP_ROOT_DN, LDAP_PW_FILE, LDAP_GROUP)
        #[arg(long)]
        info: PathBuf,
        #[arg(long, default_value = "dc=example,dc=com")]
        suffix: String,
        #[arg(long, default_value = "staff")]
        group_cn: String,
    },
    /// The ceiling: N joiners written with ldap3 at concurrency C.
    Raw {
        #[command(flatten)]
        ldap: Ldap3Args,
        /// parent of the entries, e.g. ou=people,dc=example,dc=com
        #[arg(long)]
        people: String,
        #[arg(short, long, default_value_t = 2000)]
        n: usize,
        #[arg(short, long, default_value_t = 4)]
        c: usize,
        #[arg(long, value_enum, default_value_t = Ops::Minimal)]
        ops: Ops,
        /// userName prefix (several runs can share one directory)
        #[arg(long, default_value = "joiner")]
        prefix: String,
    },
    /// N SCIM joiners through the gateway; time until all are members of the group in slapd.
    Scim {
        #[command(flatten)]
        ldap: Ldap3Args,
        /// http://127.0.0.1:PORT/scim/v2
        #[arg(long)]
        base: String,
        /// bearer token for the SCIM API
        #[arg(long, env = "SCIM_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(short, long, default_value_t = 2000)]
        n: usize,
        /// SCIM requests in flight
        #[arg(long, default_value_t = 16)]
        http_c: usize,
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
        /// give up after this long
        #[arg(long, default_value_t = 900)]
        timeout_secs: u64,
        #[arg(long, default_value = "joiner")]
        prefix: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Slapd { info, suffix, group_cn } => run_slapd(&info, &suffix, &group_cn),
        Cmd::Raw {
            ldap,
            people,
            n,
            c,
            ops,
            prefix,
        } => runtime()?.block_on(raw(ldap, people, n, c, ops, prefix)),
        Cmd::Scim {
            ldap,
            base,
            token,
            n,
            http_c,
            poll_ms,
            timeout_secs,
            prefix,
        } => runtime()?.block_on(scim(ScimRun {
            ldap,
            base,
            token,
            n,
            http_c,
            poll: Duration::from_millis(poll_ms.max(10)),
            timeout: Duration::from_secs(timeout_secs),
            prefix,
        })),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run_slapd(info: &Path, suffix: &str, group_cn: &str) -> Result<()> {
    let slapd = scimgate_testkit::slapd::Slapd::start(suffix);
    let group = format!("cn={group_cn},ou=groups,{suffix}");
    slapd.ldapadd(&format!(
        "dn: {group}\nobjectClass: groupOfNames\ncn: {group_cn}\nmember: {PLACEHOLDER}\n"
    ));
    let dir = info.parent().context("--info has no parent directory")?;
    let pw_file = dir.join(format!(
        "{}.pw",
        info.file_name().and_then(|f| f.to_str()).unwrap_or("slapd")
    ));
    std::fs::write(&pw_file, &slapd.root_pw)?;
    let text = format!(
        "LDAP_URL={}\nLDAP_SUFFIX={}\nLDAP_ROOT_DN={}\nLDAP_PW_FILE={}\nLDAP_GROUP={}\n",
        sh_quote(&slapd.url),
        sh_quote(suffix),
        sh_quote(&slapd.root_dn),
        sh_quote(&pw_file.display().to_string()),
        sh_quote(&group),
    );
    // Written whole, then renamed: the script waits for the file to appear.
    let tmp = info.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, info)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(slapd);
    Ok(())
}

/// groupOfNames needs one member; the gateway's target config names the same placeholder.
const PLACEHOLDER: &str = "cn=nobody";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

async fn connect(a: &Ldap3Args) -> Result<Ldap> {
    let pw = std::fs::read_to_string(&a.pw_file).with_context(|| format!("reading {}", a.pw_file.display()))?;
    let (conn, mut ldap) = LdapConnAsync::new(&a.ldap_url).await?;
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(&a.bind_dn, pw.trim_end()).await?.success()?;
    Ok(ldap)
}

/// The joiner's SCIM User (the same shape as tests/provisioning.rs).
fn scim_user(name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "userName": name,
        "name": {"givenName": "Given", "familyName": format!("Family-{name}")},
        "emails": [{"value": format!("{name}@example.com"), "type": "work", "primary": true}],
        "title": "Engineer",
        "active": true,
        ENTERPRISE: {"department": "Engineering"}
    })
}

/// The entry the gateway's LDAP target (bench/ldap.sh's mapping) writes for `scim_user(name)`.
fn entry_attrs(name: &str) -> Vec<(String, HashSet<String>)> {
    let one = |v: String| HashSet::from([v]);
    let attrs: Vec<(&str, HashSet<String>)> = vec![
        (
            "objectClass",
            ["top", "person", "organizationalPerson", "inetOrgPerson"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        ("cn", one(format!("Given Family-{name}"))),
        ("sn", one(format!("Family-{name}"))),
        ("givenName", one("Given".into())),
        ("mail", one(format!("{name}@example.com"))),
        ("title", one("Engineer".into())),
        ("departmentNumber", one("Engineering".into())),
        ("uid", one(name.to_string())),
    ];
    attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The attributes the adapter reads back (key, entryUUID, naming attribute, mapped attributes, memberOf, ppolicy).
const READ_ATTRS: [&str; 10] = [
    "uid",
    "entryUUID",
    "cn",
    "sn",
    "givenName",
    "mail",
    "title",
    "departmentNumber",
    "memberOf",
    "pwdAccountLockedTime",
];

async fn one_raw(ldap: &mut Ldap, people: &str, group: &str, name: &str, ops: Ops) -> Result<()> {
    let dn = format!("uid={name},{people}");
    if ops == Ops::Adapter {
        let (found, _) = ldap
            .search(
                people,
                Scope::Subtree,
                &format!("(&(objectClass=inetOrgPerson)(uid={name}))"),
                READ_ATTRS.to_vec(),
            )
            .await?
            .success()?;
        if !found.is_empty() {
            bail!("{dn} exists already");
        }
    }
    ldap.add(&dn, entry_attrs(name)).await?.success()?;
    if ops == Ops::Adapter {
        let (found, _) = ldap
            .search(&dn, Scope::Base, "(objectClass=inetOrgPerson)", READ_ATTRS.to_vec())
            .await?
            .success()?;
        if found.is_empty() {
            bail!("{dn} not readable after its add");
        }
    }
    ldap.modify(group, vec![Mod::Add("member", HashSet::from([dn.as_str()]))])
        .await?
        .success()?;
    Ok(())
}

async fn raw(a: Ldap3Args, people: String, n: usize, c: usize, ops: Ops, prefix: String) -> Result<()> {
    let mut conns = Vec::new();
    for _ in 0..c.max(1) {
        conns.push(connect(&a).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let people = Arc::new(people);
    let group = Arc::new(a.group.clone());
    let prefix = Arc::new(prefix);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut ldap in conns {
        let (next, people, group, prefix) = (next.clone(), people.clone(), group.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let name = format!("{prefix}{i:06}");
                one_raw(&mut ldap, &people, &group, &name, ops).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut ldap = connect(&a).await?;
    let members = member_count(&mut ldap, &a.group).await?;
    println!("secs={secs:.3}");
    println!("rate={:.1}", n as f64 / secs);
    println!("members={members}");
    Ok(())
}

/// Members of the group other than the placeholder.
async fn member_count(ldap: &mut Ldap, group: &str) -> Result<usize> {
    let (found, _) = ldap
        .search(group, Scope::Base, "(objectClass=groupOfNames)", vec!["member"])
        .await?
        .success()?;
    let Some(e) = found.into_iter().next() else {
        bail!("group {group} not found");
    };
    let e = SearchEntry::construct(e);
    Ok(e.attrs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("member"))
        .flat_map(|(_, v)| v.iter())
        .filter(|m| !m.eq_ignore_ascii_case(PLACEHOLDER))
        .count())
}

struct ScimRun {
    ldap: Ldap3Args,
    base: String,
    token: String,
    n: usize,
    http_c: usize,
    poll: Duration,
    timeout: Duration,
    prefix: String,
}

async fn scim(r: ScimRun) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(r.http_c)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut poller = connect(&r.ldap).await?;
    let before = member_count(&mut poller, &r.ldap.group).await?;
    if before != 0 {
        bail!("the group holds {before} members before the run");
    }
    let url = Arc::new(format!("{}/Users", r.base.trim_end_matches('/')));
    let token = Arc::new(r.token.clone());
    let prefix = Arc::new(r.prefix.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let n = r.n;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..r.http_c.max(1) {
        let (client, url, token, prefix, next) =
            (client.clone(), url.clone(), token.clone(), prefix.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::<String>::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return (ok, failed);
                }
                let name = format!("{prefix}{i:06}");
                let sent = client
                    .post(url.as_str())
                    .bearer_auth(token.as_str())
                    .header("content-type", "application/scim+json")
                    .body(scim_user(&name).to_string())
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status().as_u16() == 201 => {
                        let _ = resp.bytes().await;
                        ok += 1;
                    }
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.text().await.unwrap_or_default();
                        failed.push(format!(
                            "{name}: {status} {}",
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                    Err(e) => failed.push(format!("{name}: {e}")),
                }
            }
        }));
    }
    let posts = async {
        let (mut ok, mut failed) = (0usize, Vec::new());
        for t in tasks {
            let (o, f) = t.await?;
            ok += o;
            failed.extend(f);
        }
        let secs = t0.elapsed().as_secs_f64();
        anyhow::Ok((ok, failed, secs))
    };
    // Poll while the POSTs run; when they end, note how many joiners had reached slapd by then.
    tokio::pin!(posts);
    let mut accepted: Option<(usize, Vec<String>, f64, usize)> = None;
    let mut seen;
    loop {
        tokio::select! {
            done = &mut posts, if accepted.is_none() => {
                let (ok, failed, secs) = done?;
                let at = member_count(&mut poller, &r.ldap.group).await?;
                accepted = Some((ok, failed, secs, at));
                continue;
            }
            _ = tokio::time::sleep(r.poll) => {}
        }
        seen = member_count(&mut poller, &r.ldap.group).await?;
        if let Some((ok, ..)) = &accepted
            && seen >= *ok
        {
            break;
        }
        if t0.elapsed() > r.timeout {
            bail!("only {seen} of {n} joiners in slapd after {:?}", r.timeout);
        }
    }
    let e2e = t0.elapsed().as_secs_f64();
    let Some((ok, failed, accept_secs, at_accept)) = accepted else {
        bail!("the POSTs did not finish");
    };
    for f in failed.iter().take(5) {
        eprintln!("POST failed: {f}");
    }
    let after = (e2e - accept_secs).max(1e-9);
    println!("accepted={ok}");
    println!("failed={}", failed.len());
    println!("accept_secs={accept_secs:.3}");
    println!("accept_rate={:.1}", ok as f64 / accept_secs);
    println!("at_accept={at_accept}");
    println!("e2e_secs={e2e:.3}");
    println!("e2e_rate={:.1}", seen as f64 / e2e);
    println!("during_rate={:.1}", at_accept as f64 / accept_secs);
    println!("after_rate={:.1}", (seen - at_accept) as f64 / after);
    println!("members={seen}");
    Ok(())
}
