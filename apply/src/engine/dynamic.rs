//! Dynamic values, steps 5 and 6 of the design: the Consul prefixes and Vault secrets a
//! bundle declares, read at first boot and rendered into its dynamic templates, then the
//! apply's result reported to Consul (`kiln/nodes/<hostgroup>/<hostname>`).
//!
//! The values come from a [`Sources`] the caller gives the engine (kiln-firstboot's: Consul
//! and Vault over HTTP, each a module of its own). The step runs after the static apply and before services start: Consul first (a missing
//! Consul key fails before a secret_id is spent), then Vault (login, KV reads, values generated
//! if absent, the certificate), then every template rendered in memory, then written all at
//! once: each to a temporary file beside its target, and only when all are written are they
//! renamed into place. A failure anywhere before leaves no rendered file, half-written or
//! whole. No value is ever logged: Vault values are [`Secret`]s and every message coming from
//! outside goes through a [`Redactor`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::engine::journal::Journal;
use crate::engine::passwd::Accounts;
use crate::engine::{entries, ApplyError, Ctx};
use crate::fsroot::{self, Kind, Parent, Root};
use crate::log::Log;
use crate::secret::{Redactor, Secret};
pub use crate::state::DynamicSummary;
use crate::state::State;
use crate::template::{self, Read as TRead, RenderError, Values};
use kiln_signing::spec::parse_mode;

/// Why the dynamic step failed. [`exit_code`](Self::exit_code): 20 (DYNAMIC) for the sources
/// and their data, 21 (APPLY) for a template that cannot render.
#[derive(Debug, Error)]
pub enum DynamicError {
    /// Still unreachable (or answering 5xx, or garbage) when the deadline passed.
    #[error("{source_name} unreachable until the deadline: {detail}")]
    Unreachable { source_name: String, detail: String },
    /// Reachable, but refused us (a 403, a login, a wrapping token).
    #[error("{source_name} refused: {detail}")]
    Refused { source_name: String, detail: String },
    /// A value a template needs does not exist and the template gives no default.
    #[error("{source_name}: {key} does not exist (and the template gives no default)")]
    Missing { source_name: String, key: String },
    /// The host's side is missing: an address, a token file, a hostname.
    #[error("{0}")]
    Config(String),
    /// A template cannot be rendered (a type error, a value that is not text).
    #[error("{0}")]
    Render(String),
    /// A template reads, unguarded, a fact of the host the host does not have.
    #[error("template {template}: {detail}")]
    Fact { template: String, detail: String },
}

impl DynamicError {
    pub fn exit_code(&self) -> i32 {
        match self {
            DynamicError::Render(_) => kiln_signing::exit::APPLY,
            _ => kiln_signing::exit::DYNAMIC,
        }
    }

    /// The same error with every known secret scrubbed out of its text.
    fn scrubbed(self, r: &Redactor) -> DynamicError {
        match self {
            DynamicError::Unreachable {
                source_name,
                detail,
            } => DynamicError::Unreachable {
                source_name,
                detail: r.scrub(&detail),
            },
            DynamicError::Refused {
                source_name,
                detail,
            } => DynamicError::Refused {
                source_name,
                detail: r.scrub(&detail),
            },
            DynamicError::Missing { source_name, key } => DynamicError::Missing {
                source_name,
                key: r.scrub(&key),
            },
            DynamicError::Config(s) => DynamicError::Config(r.scrub(&s)),
            DynamicError::Render(s) => DynamicError::Render(r.scrub(&s)),
            DynamicError::Fact { template, detail } => DynamicError::Fact {
                template,
                detail: r.scrub(&detail),
            },
        }
    }
}

/// Where a dynamic phase gets its values: the engine asks, the caller answers. kiln-firstboot's
/// sources are Consul and Vault over HTTP; `kiln bake` gives none (the phase waits for the
/// first boot).
pub trait Sources {
    /// Reads what the bundle's `dynamic` section declares (`want.declared`) into `values`, in
    /// order: Consul first, then [`check_consul_keys`] (so a missing key costs no Vault
    /// secret_id), then Vault. Every secret read is added to `redactor`; requests are counted
    /// in `summary`. Returns what is left to do once the templates are written (revoke a Vault
    /// token), if anything.
    fn fetch<'a>(
        &'a self,
        want: &Want<'_, 'a>,
        values: &mut Values,
        redactor: &mut Redactor,
        summary: &mut DynamicSummary,
    ) -> Result<Option<Box<dyn Finish + 'a>>, ApplyError>;

    /// Publishes the apply's result (kiln-firstboot: to Consul, check-and-set); `None` when
    /// this host reports nowhere. Never fails the apply.
    fn report(&self, root: &Root, state: &State, log: &dyn Log) -> Option<Reported>;
}

/// What the dynamic phase asks its [`Sources`] for.
pub struct Want<'r, 'a> {
    /// The root, its log, its warnings.
    pub ctx: &'r Ctx<'a>,
    /// The sources the bundle declares.
    pub declared: &'r kiln_signing::Dynamic,
    /// This host's name ([`hostname`]).
    pub hostname: &'r str,
    /// Every value a template reads without a default: (template path, what it reads).
    pub needed: &'r [(String, TRead)],
    /// Every request, every retry, ends by then.
    pub deadline: Instant,
}

/// What a source still has to do after the templates are in place.
pub trait Finish {
    /// Gives up credentials (Vault: revokes the token). A failure is a warning: the templates
    /// are written.
    fn finish(self: Box<Self>, ctx: &Ctx, summary: &mut DynamicSummary, deadline: Instant);
}

/// The host's dynamic setup: where the sources are ([`DynamicConfig`]) and the client that
/// reads them.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    pub config: &'a DynamicConfig,
    pub sources: &'a dyn Sources,
}

/// A file the host reads a token, key or CA from: a path on the running system (a flag), or a
/// path inside the target root (the firstboot config file, which describes that root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRef {
    Host(PathBuf),
    InRoot(String),
}

impl FileRef {
    /// Reads the file (at most 1 MiB) as a secret; `what` names it in the error.
    pub fn read(&self, root: &Root, what: &str) -> Result<Secret, DynamicError> {
        const LIMIT: u64 = 1 << 20;
        let bytes = match self {
            FileRef::Host(p) => std::fs::File::open(p).and_then(|f| {
                let mut buf = Vec::new();
                f.take(LIMIT + 1).read_to_end(&mut buf)?;
                Ok(buf)
            }),
            FileRef::InRoot(p) => root
                .read_text(p, LIMIT)
                .and_then(|t| t.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound)))
                .map(String::into_bytes),
        };
        match bytes {
            Ok(b) if b.len() as u64 > LIMIT => Err(DynamicError::Config(format!(
                "{what} {}: larger than 1 MiB",
                self.display(root)
            ))),
            Ok(b) => Ok(Secret::new(b)),
            Err(e) => Err(DynamicError::Config(format!(
                "{what} {}: {e}",
                self.display(root)
            ))),
        }
    }

    /// Removes the file (gone already: fine).
    pub fn remove(&self, root: &Root) -> std::io::Result<()> {
        let r = match self {
            FileRef::Host(p) => std::fs::remove_file(p),
            FileRef::InRoot(p) => match root.parent(p, false)? {
                Some(parent) => match parent.lstat()? {
                    Some(_) => parent.remove(Kind::File),
                    None => Ok(()),
                },
                None => Ok(()),
            },
        };
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// The file's path as the operator knows it.
    pub fn display(&self, root: &Root) -> String {
        match self {
            FileRef::Host(p) => p.display().to_string(),
            FileRef::InRoot(p) => root.display(p).display().to_string(),
        }
    }
}

/// Where the dynamic sources are and how to authenticate: flags of `kiln-firstboot apply`, or
/// `/etc/kiln/firstboot.conf` written by cloud-init. What to read comes from the bundle.
#[derive(Debug, Clone)]
pub struct DynamicConfig {
    /// `http(s)://host:port` of a Consul agent.
    pub consul_addr: Option<String>,
    pub consul_token: Option<FileRef>,
    /// PEM CA certificates: the only roots trusted for Consul's https.
    pub consul_ca: Option<FileRef>,
    /// PEM client certificate and key presented to Consul (an agent with `verify_incoming`).
    pub consul_client_cert: Option<FileRef>,
    pub consul_client_key: Option<FileRef>,
    pub vault_addr: Option<String>,
    pub vault_ca: Option<FileRef>,
    /// PEM client certificate and key presented to Vault.
    pub vault_client_cert: Option<FileRef>,
    pub vault_client_key: Option<FileRef>,
    /// The AppRole role_id (else the bundle's `dynamic.vault.role_id`).
    pub vault_role_id: Option<FileRef>,
    /// The response-wrapping token of the secret_id.
    pub wrapped_secret_id: Option<FileRef>,
    /// This host's name (else `<root>/etc/hostname`).
    pub hostname: Option<String>,
    /// `host.primary_ip` (else the IPv4 address of the running system's default route).
    pub primary_ip: Option<String>,
    /// The whole step (every request, every retry) ends by then.
    pub deadline: Duration,
    /// Longest a single request may take.
    pub request_timeout: Duration,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            consul_addr: None,
            consul_token: None,
            consul_ca: None,
            consul_client_cert: None,
            consul_client_key: None,
            vault_addr: None,
            vault_ca: None,
            vault_client_cert: None,
            vault_client_key: None,
            vault_role_id: None,
            wrapped_secret_id: None,
            hostname: None,
            primary_ip: None,
            deadline: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A Consul address as Consul's own tools take it (`api.NewClient`): `host:port` without a
/// scheme is http, or https when `CONSUL_HTTP_SSL` (`http_ssl`) is true, which also turns an
/// `http://` address into https ("never revert to http if TLS was explicitly requested");
/// `https://` stays https. Any other scheme is refused. Returns an `http(s)://` URL.
pub fn consul_url(addr: &str, http_ssl: Option<&str>) -> Result<String, String> {
    // Go's strconv.ParseBool.
    let ssl = match http_ssl.map(str::trim) {
        None | Some("") => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(v) => return Err(format!("CONSUL_HTTP_SSL={v:?} is neither true nor false")),
    };
    let addr = addr.trim();
    let plain = if ssl { "https" } else { "http" };
    let (scheme, rest) = match addr.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (plain, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
        Some((s, _)) => {
            return Err(format!(
                "Consul address {addr:?}: unknown scheme {s:?} (http://, https://, or host:port)"
            ))
        }
        None => (plain, addr),
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("Consul address {addr:?} names no host"));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// `[A-Za-z0-9-]` labels joined by `.`: the hostname goes into a Consul key and a certificate.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// This host's name: the configured one, else `<root>/etc/hostname`, else (on the running
/// system) the kernel's.
pub fn hostname(cfg: &DynamicConfig, root: &Root) -> Result<String, DynamicError> {
    let name = match &cfg.hostname {
        Some(h) => h.trim().to_string(),
        None => match root.read_text("/etc/hostname", 4096) {
            Ok(Some(t)) if !t.trim().is_empty() => {
                t.lines().next().unwrap_or("").trim().to_string()
            }
            _ if root.path() == std::path::Path::new("/") => nix::sys::utsname::uname()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        },
    };
    if name.is_empty() {
        return Err(DynamicError::Config(
            "no hostname: pass --hostname (or hostname in the firstboot config), or write /etc/hostname".into(),
        ));
    }
    if !is_hostname(&name) {
        return Err(DynamicError::Config(format!(
            "hostname {name:?} is not a DNS name ([A-Za-z0-9-] labels joined by .)"
        )));
    }
    Ok(name)
}

/// A template read from its staged blob, checked against its digest.
struct Loaded<'m> {
    t: &'m kiln_signing::Template,
    text: String,
}

fn load_templates<'m>(ctx: &Ctx<'m>) -> Result<Vec<Loaded<'m>>, ApplyError> {
    let mut out = Vec::new();
    for t in &ctx.manifest.templates {
        let err = |m: String| ApplyError::step("dynamic", &t.path, m);
        let blob = ctx.staged_blob(&t.digest);
        let mut f = ctx
            .root
            .open_read(&blob)
            .map_err(|e| err(format!("opening staged template {blob}: {e}")))?;
        let mut buf = Vec::new();
        (&mut f)
            .take(16 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| err(format!("reading staged template {blob}: {e}")))?;
        if kiln_signing::sha256_hex(&buf) != t.digest {
            return Err(err(
                "staged template does not match its digest (staging area corrupted?)".into(),
            ));
        }
        let text = String::from_utf8(buf).map_err(|_| err("template is not UTF-8".into()))?;
        out.push(Loaded { t, text });
    }
    Ok(out)
}

/// The step, as the engine's `dynamic` phase. Returns the summary line.
pub(crate) fn run_phase(
    ctx: &Ctx,
    setup: Setup<'_>,
    journal: &mut Journal,
) -> Result<String, ApplyError> {
    let started = Instant::now();
    let mut summary = DynamicSummary {
        templates: ctx.manifest.templates.len(),
        ..DynamicSummary::default()
    };
    let mut redactor = Redactor::default();
    let result = run_inner(ctx, setup, journal, &mut summary, &mut redactor, started);
    *ctx.dynamic_summary.borrow_mut() = Some(summary);
    result.map_err(|e| match e {
        ApplyError::Dynamic(d) => ApplyError::Dynamic(d.scrubbed(&redactor)),
        other => other,
    })
}

fn run_inner(
    ctx: &Ctx,
    setup: Setup<'_>,
    journal: &mut Journal,
    summary: &mut DynamicSummary,
    redactor: &mut Redactor,
    started: Instant,
) -> Result<String, ApplyError> {
    let m = ctx.manifest;
    let cfg = setup.config;
    let deadline = started + cfg.deadline;
    // Looked for before any change already; again here, before any value is read, for what the
    // phases since made (a package's or command's symlink; a baked image's first boot resumes
    // after them).
    let through = crate::engine::conflicts::templates(ctx);
    if !through.is_empty() {
        return Err(ApplyError::step("dynamic", "templates", through.join("; ")));
    }
    let templates = load_templates(ctx)?;
    let hostname = hostname(cfg, ctx.root)?;
    // Every value read without a default, to fail on a missing Consul key before Vault.
    let mut needed: Vec<(String, TRead)> = Vec::new();
    let mut reads_facts = false;
    for l in &templates {
        let calls = template::analyze(&l.t.path, &l.text)
            .map_err(|e| DynamicError::Render(format!("{}: {e}", l.t.path)))?;
        reads_facts |= calls.iter().any(|c| matches!(c.read, TRead::Fact(_)));
        needed.extend(
            calls
                .into_iter()
                .filter(|c| !c.has_default)
                .map(|c| (l.t.path.clone(), c.read)),
        );
    }
    let mut values = Values::default();
    let declared = m.dynamic.clone().unwrap_or(kiln_signing::Dynamic {
        consul: None,
        vault: None,
    });
    let want = Want {
        ctx,
        declared: &declared,
        hostname: &hostname,
        needed: &needed,
        deadline,
    };
    let live = setup.sources.fetch(&want, &mut values, redactor, summary)?;
    let values = Arc::new(values);
    // The host's facts, when a template reads one (gathered after the fetch: cloud-init's
    // instance data is written by then).
    let facts = if reads_facts {
        crate::facts::gather(ctx.root, &hostname, cfg.primary_ip.as_deref())
    } else {
        template::Facts::default()
    };

    // Render every template in memory.
    let mut rendered: Vec<(&kiln_signing::Template, Secret)> = Vec::new();
    for l in &templates {
        let tctx = template::Context {
            hostname: &hostname,
            hostgroup: &m.hostgroup,
            vars: &l.t.vars,
            facts: &facts,
        };
        let out =
            template::render(values.clone(), &l.t.path, &l.text, &tctx).map_err(|e| match e {
                e @ RenderError::Fact { .. } => DynamicError::Fact {
                    template: l.t.path.clone(),
                    detail: e.to_string(),
                },
                RenderError::Missing { source_name, key } => DynamicError::Missing {
                    source_name: format!("{} (template {})", source_name, l.t.path),
                    key,
                },
                RenderError::Undeclared(s) | RenderError::Other(s) => {
                    DynamicError::Render(format!("template {}: {s}", l.t.path))
                }
            })?;
        rendered.push((l.t, out));
    }

    // Write them, all or none.
    let changed = commit(ctx, journal, &rendered)?;
    summary.changed = changed;
    drop(rendered);
    drop(values);

    if let Some(live) = live {
        live.finish(ctx, summary, deadline);
    }
    Ok(format!(
        "{} template(s) for {hostname}, {changed} changed, {} unchanged; requests: consul {}, vault {}",
        m.templates.len(),
        m.templates.len() - changed,
        summary.consul_requests,
        summary.vault_requests
    ))
}

/// Every Consul key a template reads without a default must exist: checked as soon as Consul
/// is read, so that a missing key costs no secret_id.
pub fn check_consul_keys(needed: &[(String, TRead)], values: &Values) -> Result<(), DynamicError> {
    for (path, read) in needed {
        if let TRead::ConsulKey(k) = read {
            if !values.consul.contains_key(k) {
                return Err(DynamicError::Missing {
                    source_name: format!("consul (template {path})"),
                    key: k.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The PKI common name is a small template of its own (`{{ hostname }}.web.example.internal`).
pub fn render_common_name(
    source: &str,
    hostname: &str,
    hostgroup: &str,
) -> Result<String, DynamicError> {
    let env = template::environment();
    let ctx = minijinja::Value::from(BTreeMap::from([
        ("hostname".to_string(), minijinja::Value::from(hostname)),
        ("hostgroup".to_string(), minijinja::Value::from(hostgroup)),
    ]));
    let cn = env
        .render_str(source, ctx)
        .map_err(|e| DynamicError::Render(format!("pki common_name: {}", template::reason(&e))))?;
    if !kiln_signing::dynamic::is_dns_name(cn.trim()) {
        return Err(DynamicError::Config(format!(
            "pki common_name {cn:?} is not a DNS name"
        )));
    }
    Ok(cn.trim().to_string())
}

/// If the regular file at `parent` holds exactly `bytes`, fixes its owner and mode and says so
/// (not when other hard links share its inode: then it is rewritten, as a new inode).
fn keep_if_same(
    parent: &Parent,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> std::io::Result<bool> {
    let fd = parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    let meta = fsroot::fmeta(fd.as_fd())?;
    if meta.kind != Kind::File || meta.nlink != 1 || meta.size != bytes.len() as u64 {
        return Ok(false);
    }
    let mut have = Vec::with_capacity(bytes.len());
    std::fs::File::from(fd.try_clone()?)
        .take(bytes.len() as u64 + 1)
        .read_to_end(&mut have)?;
    let same = have == bytes;
    have.iter_mut().for_each(|b| *b = 0);
    if !same {
        return Ok(false);
    }
    if meta.mode != mode || meta.uid != uid || meta.gid != gid {
        fsroot::set_owner_mode(fd.as_fd(), uid, gid, mode)?;
    }
    Ok(true)
}

/// One rendered template on its way into place.
struct Pending<'a> {
    path: &'a str,
    parent: Parent,
    tmp: Option<String>,
    hooks: bool,
}

/// Writes every rendered template to a temporary file beside its target (owner, mode, fsync),
/// then, only when all are written, renames each into place (journaling those with restart or
/// reload hooks first) and fsyncs its directory. A template whose file already holds exactly
/// its bytes gets only its owner and mode fixed. Any failure before the renames removes every
/// temporary: no rendered file is left, half-written or whole. Returns how many changed.
fn commit(
    ctx: &Ctx,
    journal: &mut Journal,
    rendered: &[(&kiln_signing::Template, Secret)],
) -> Result<usize, ApplyError> {
    let accounts =
        Accounts::load(ctx.root).map_err(|e| ApplyError::step("dynamic", "/etc/passwd", e))?;
    let mut pending: Vec<Pending> = Vec::new();
    let result = (|| -> Result<(), ApplyError> {
        for (t, bytes) in rendered {
            let err = |m: String| ApplyError::step("dynamic", &t.path, m);
            let (uid, gid) = entries::ids(&accounts, &t.owner, &t.group).map_err(err)?;
            let mode = parse_mode(&t.mode).map_err(err)?;
            let parent = ctx
                .root
                .parent(&t.path, true)
                .map_err(|e| err(e.to_string()))?
                .ok_or_else(|| err("parent missing".into()))?;
            match parent.lstat().map_err(|e| err(e.to_string()))? {
                Some(m) if m.kind == Kind::Dir => {
                    return Err(err(
                        "is a directory (refusing to replace it with a file)".into()
                    ))
                }
                Some(m)
                    if m.kind == Kind::File
                        && m.size == bytes.len() as u64
                        && keep_if_same(&parent, bytes.expose(), mode, uid, gid)
                            .map_err(|e| err(e.to_string()))? =>
                {
                    pending.push(Pending {
                        path: &t.path,
                        parent,
                        tmp: None,
                        hooks: false,
                    });
                    continue;
                }
                _ => {}
            }
            let tmp = parent.temp_name();
            parent.remove_temp(&tmp).map_err(|e| err(e.to_string()))?;
            let fd = nix::fcntl::openat(
                &parent.dir,
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| err(format!("creating {tmp}: {e}")))?;
            pending.push(Pending {
                path: &t.path,
                parent,
                tmp: Some(tmp),
                hooks: !t.restart.is_empty() || !t.reload.is_empty(),
            });
            let mut file = std::fs::File::from(fd);
            file.write_all(bytes.expose())
                .and_then(|()| file.flush())
                .and_then(|()| fsroot::set_owner_mode(file.as_fd(), uid, gid, mode))
                .and_then(|()| file.sync_all())
                .map_err(|e| err(format!("writing: {e}")))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in &pending {
            if let Some(tmp) = &p.tmp {
                let _ = p.parent.remove_temp(tmp);
            }
        }
        return Err(e);
    }
    let mut changed = 0;
    for (i, p) in pending.iter().enumerate() {
        let Some(tmp) = &p.tmp else { continue };
        let r = (|| -> std::io::Result<()> {
            if p.hooks {
                journal.changed(p.path)?;
            }
            nix::fcntl::renameat(
                &p.parent.dir,
                tmp.as_str(),
                &p.parent.dir,
                p.parent.name.as_str(),
            )?;
            nix::unistd::fsync(&p.parent.dir)?;
            Ok(())
        })();
        if let Err(e) = r {
            for q in &pending[i..] {
                if let Some(tmp) = &q.tmp {
                    let _ = q.parent.remove_temp(tmp);
                }
            }
            return Err(ApplyError::step(
                "dynamic",
                p.path,
                format!("renaming into place: {e}"),
            ));
        }
        changed += 1;
    }
    Ok(changed)
}

pub use crate::report::report_key;

/// How the report went.
#[derive(Debug)]
pub struct Reported {
    /// Where it was written (`consul kiln/nodes/web/web-1`), or why it was not.
    pub result: Result<String, String>,
    /// Requests it took.
    pub requests: u32,
}

/// The report of an apply: its key (`kiln/nodes/<hostgroup>/<hostname>`) and its JSON body.
/// The hostname is the state's, else this host's ([`hostname`]).
pub fn report_of(
    cfg: &DynamicConfig,
    root: &Root,
    state: &State,
) -> Result<(String, Vec<u8>), String> {
    let hostname = state
        .hostname
        .clone()
        .map(Ok)
        .unwrap_or_else(|| hostname(cfg, root))
        .map_err(|e| e.to_string())?;
    let key = report_key(&state.hostgroup, &hostname);
    let body = crate::report::NodeReport::of(state, &hostname);
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    Ok((key, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_addresses_as_consul_tools_read_them() {
        let ok = |a: &str, ssl: Option<&str>| consul_url(a, ssl).unwrap();
        assert_eq!(ok("127.0.0.1:8500", None), "http://127.0.0.1:8500");
        assert_eq!(
            ok("c.internal:8501", Some("true")),
            "https://c.internal:8501"
        );
        assert_eq!(ok("c.internal:8501", Some("1")), "https://c.internal:8501");
        assert_eq!(
            ok("c.internal:8500", Some("false")),
            "http://c.internal:8500"
        );
        assert_eq!(ok("https://c:8501", None), "https://c:8501");
        assert_eq!(ok("https://c:8501", Some("false")), "https://c:8501");
        // Consul never goes back to http once TLS is asked for.
        assert_eq!(ok("http://c:8500", Some("true")), "https://c:8500");
        assert_eq!(ok("http://c:8500", None), "http://c:8500");
        let err = |a: &str, ssl: Option<&str>| consul_url(a, ssl).unwrap_err();
        assert!(err("unix:///run/consul.sock", None).contains("unknown scheme"));
        assert!(err("c:8500", Some("yes")).contains("CONSUL_HTTP_SSL"));
        assert!(err("http://", None).contains("names no host"));
    }
}
