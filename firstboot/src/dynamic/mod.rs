//! Dynamic values, steps 5 and 6 of the design: the Consul prefixes and Vault secrets a
//! bundle declares, read at first boot and rendered into its dynamic templates, then the
//! apply's result reported to Consul (`kiln/nodes/<hostgroup>/<hostname>`).
//!
//! Each source (Consul, Vault) is one module implementing [`DynamicSource`], afterburn-style.
//! The step runs after the static apply and before services start: Consul first (a missing
//! Consul key fails before a secret_id is spent), then Vault (login, KV reads, values generated
//! if absent, the certificate), then every template rendered in memory, then written all at
//! once: each to a temporary file beside its target, and only when all are written are they
//! renamed into place. A failure anywhere before leaves no rendered file, half-written or
//! whole. No value is ever logged: Vault values are [`Secret`]s and every message coming from
//! outside goes through a [`Redactor`].

#[cfg(feature = "http")]
pub mod consul;
pub mod facts;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod vault;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::apply::accounts::Accounts;
use crate::apply::fsroot::{self, Kind, Parent, Root};
use crate::apply::journal::Journal;
use crate::apply::validate::parse_mode;
use crate::apply::{entries, ApplyError, Ctx};
use crate::log::Log;
use crate::secret::{Redactor, Secret};
use crate::state::State;
use crate::template::{self, Read as TRead, RenderError, Values};

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

/// A source of values for dynamic templates. Every method has a no-op default so a source
/// implements only what it offers.
pub trait DynamicSource {
    /// Short name for logs and errors: `consul`, `vault`.
    fn name(&self) -> &'static str;

    /// Connect and authenticate (Vault: AppRole login with the wrapped secret_id), retrying
    /// until `deadline`.
    fn connect(&mut self, _deadline: Instant, _log: &dyn Log) -> Result<(), DynamicError> {
        Ok(())
    }

    /// Read everything the bundle declares from this source into `values`; every secret read
    /// is added to `redactor`. A value is never logged.
    fn fetch(
        &mut self,
        _values: &mut Values,
        _redactor: &mut Redactor,
        _deadline: Instant,
        _log: &dyn Log,
    ) -> Result<(), DynamicError> {
        Ok(())
    }

    /// After the templates are in place: give up credentials (Vault: revoke the token).
    fn finish(&mut self, _deadline: Instant, _log: &dyn Log) -> Result<(), DynamicError> {
        Ok(())
    }

    /// Publish the apply's result as `body` at `key` (Consul).
    fn report(
        &mut self,
        _key: &str,
        _body: &[u8],
        _deadline: Instant,
        _log: &dyn Log,
    ) -> Result<(), DynamicError> {
        Ok(())
    }

    /// HTTP requests made so far (each attempt counts).
    fn requests(&self) -> u32 {
        0
    }
}

/// A file the host reads a token, key or CA from: a path on the running system (a flag), or a
/// path inside the target root (the firstboot config file, which describes that root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRef {
    Host(PathBuf),
    InRoot(String),
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
impl FileRef {
    fn read(&self, root: &Root, what: &str) -> Result<Secret, DynamicError> {
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
    fn remove(&self, root: &Root) -> std::io::Result<()> {
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

    fn display(&self, root: &Root) -> String {
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

/// One source's CA and client certificate files, read (the key is a [`Secret`]).
#[cfg(feature = "http")]
struct TlsRead {
    ca: Option<Secret>,
    client: Option<(Secret, Secret)>,
}

#[cfg(feature = "http")]
impl TlsRead {
    fn read(
        root: &Root,
        name: &str,
        ca: &Option<FileRef>,
        cert: &Option<FileRef>,
        key: &Option<FileRef>,
    ) -> Result<TlsRead, DynamicError> {
        let ca = ca
            .as_ref()
            .map(|f| f.read(root, &format!("{name} CA file")))
            .transpose()?;
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((
                c.read(root, &format!("{name} client certificate file"))?,
                k.read(root, &format!("{name} client key file"))?,
            )),
            (None, None) => None,
            _ => {
                let flag = name.to_ascii_lowercase();
                return Err(DynamicError::Config(format!(
                    "a {name} client certificate needs both --{flag}-client-cert and --{flag}-client-key"
                )));
            }
        };
        Ok(TlsRead { ca, client })
    }

    fn files(&self) -> http::TlsFiles<'_> {
        http::TlsFiles {
            ca: self.ca.as_ref().map(|c| c.expose()),
            client: self.client.as_ref().map(|(c, k)| (c.expose(), k.expose())),
        }
    }
}

/// What the dynamic step did, for the state file and the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicSummary {
    pub templates: usize,
    pub changed: usize,
    /// HTTP requests to Consul (the report included), every attempt counted.
    pub consul_requests: u32,
    /// HTTP requests to Vault, every attempt counted.
    pub vault_requests: u32,
    /// Where the result was reported (`consul kiln/nodes/web/web-1`), or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
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
        if hex::encode(Sha256::digest(&buf)) != t.digest {
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
    cfg: &DynamicConfig,
    journal: &mut Journal,
) -> Result<String, ApplyError> {
    let started = Instant::now();
    let mut summary = DynamicSummary {
        templates: ctx.manifest.templates.len(),
        ..DynamicSummary::default()
    };
    let mut redactor = Redactor::default();
    let result = run_inner(ctx, cfg, journal, &mut summary, &mut redactor, started);
    *ctx.dynamic_summary.borrow_mut() = Some(summary);
    result.map_err(|e| match e {
        ApplyError::Dynamic(d) => ApplyError::Dynamic(d.scrubbed(&redactor)),
        other => other,
    })
}

fn run_inner(
    ctx: &Ctx,
    cfg: &DynamicConfig,
    journal: &mut Journal,
    summary: &mut DynamicSummary,
    redactor: &mut Redactor,
    started: Instant,
) -> Result<String, ApplyError> {
    let m = ctx.manifest;
    let deadline = started + cfg.deadline;
    // Looked for before any change already; again here, before any value is read, for what the
    // phases since made (a package's or command's symlink; a baked image's first boot resumes
    // after them).
    let through = crate::apply::conflicts::templates(ctx);
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
    let sources = m.dynamic.clone().unwrap_or(kiln_signing::Dynamic {
        consul: None,
        vault: None,
    });

    let live = fetch_all(
        ctx,
        cfg,
        &sources,
        &hostname,
        &needed,
        &mut values,
        redactor,
        summary,
        deadline,
    )?;
    let values = Arc::new(values);
    // The host's facts, when a template reads one (gathered after the fetch: cloud-init's
    // instance data is written by then).
    let facts = if reads_facts {
        facts::gather(ctx.root, &hostname, cfg.primary_ip.as_deref())
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

    finish_sources(ctx, live, summary, deadline);
    Ok(format!(
        "{} template(s) for {hostname}, {changed} changed, {} unchanged; requests: consul {}, vault {}",
        m.templates.len(),
        m.templates.len() - changed,
        summary.consul_requests,
        summary.vault_requests
    ))
}

/// The sources that still have something to do after the templates are written.
#[cfg(feature = "http")]
struct Live<'a> {
    vault: Option<vault::Vault<'a>>,
}

#[cfg(not(feature = "http"))]
struct Live<'a> {
    _root: std::marker::PhantomData<&'a ()>,
}

#[allow(clippy::too_many_arguments)]
#[cfg(feature = "http")]
fn fetch_all<'a>(
    ctx: &Ctx<'a>,
    cfg: &DynamicConfig,
    sources: &kiln_signing::Dynamic,
    hostname: &str,
    needed: &[(String, TRead)],
    values: &mut Values,
    redactor: &mut Redactor,
    summary: &mut DynamicSummary,
    deadline: Instant,
) -> Result<Live<'a>, ApplyError> {
    let log = ctx.log;
    let root: &'a Root = ctx.root;
    if let Some(c) = &sources.consul {
        let addr = cfg.consul_addr.as_deref().ok_or_else(|| {
            DynamicError::Config(format!(
                "the bundle reads Consul ({}), but no Consul address is configured (--consul-addr, or consul-addr in the firstboot config)",
                c.prefixes.join(", ")
            ))
        })?;
        let token = cfg
            .consul_token
            .as_ref()
            .map(|f| f.read(root, "Consul token file"))
            .transpose()?;
        if let Some(t) = &token {
            redactor.add(t);
        }
        let tls = TlsRead::read(
            root,
            "Consul",
            &cfg.consul_ca,
            &cfg.consul_client_cert,
            &cfg.consul_client_key,
        )?;
        let mut consul = consul::Consul::new(
            addr,
            token,
            tls.files(),
            c.prefixes.clone(),
            cfg.request_timeout,
        )?;
        let r = consul.fetch(values, redactor, deadline, log);
        summary.consul_requests += consul.requests();
        r?;
    }
    check_consul_keys(needed, values)?;
    let mut live = Live { vault: None };
    if let Some(v) = &sources.vault {
        let addr = cfg.vault_addr.as_deref().ok_or_else(|| {
            DynamicError::Config(
                "the bundle reads Vault, but no Vault address is configured (--vault-addr, or vault-addr in the firstboot config)".into(),
            )
        })?;
        let tls = TlsRead::read(
            root,
            "Vault",
            &cfg.vault_ca,
            &cfg.vault_client_cert,
            &cfg.vault_client_key,
        )?;
        let role_id = cfg
            .vault_role_id
            .as_ref()
            .map(|f| f.read(root, "Vault role_id file"))
            .transpose()?;
        let kept = matches!(root.read_text(vault::TOKEN_CACHE, 4096), Ok(Some(_)));
        let wrapped = match &cfg.wrapped_secret_id {
            // A rerun that kept its token does not need it (it is spent anyway).
            Some(f) => match f.read(root, "wrapped secret_id file") {
                Ok(s) => Some(s),
                Err(_) if kept => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if let Some(w) = &wrapped {
            redactor.add(w);
        }
        let common_name = match &v.pki {
            Some(p) => render_common_name(&p.common_name, hostname, &ctx.manifest.hostgroup)?,
            None => String::new(),
        };
        let mut vault = vault::Vault::new(
            addr,
            tls.files(),
            v.clone(),
            role_id,
            wrapped,
            common_name,
            Some(root),
            cfg.request_timeout,
        )?;
        let r = vault.connect(deadline, log);
        if r.is_ok() {
            // Logged in: the wrapping token is spent (unwrapped now, or in the run that kept
            // the client token). Its file goes, so nothing is left to read or to retry with.
            if let Some(f) = &cfg.wrapped_secret_id {
                if let Err(e) = f.remove(root) {
                    ctx.warn(&format!(
                        "could not remove the wrapped secret_id file {}: {e}",
                        f.display(root)
                    ));
                }
            }
        }
        let r = r.and_then(|()| vault.fetch(values, redactor, deadline, log));
        summary.vault_requests += vault.requests();
        r?;
        live.vault = Some(vault);
    }
    Ok(live)
}

/// After the templates are in place: the Vault token is revoked (and its kept copy removed).
/// A failure here is a warning: the templates are written.
#[cfg(feature = "http")]
fn finish_sources(ctx: &Ctx, live: Live<'_>, summary: &mut DynamicSummary, deadline: Instant) {
    if let Some(mut vault) = live.vault {
        let before = vault.requests();
        // At least a few seconds, even if the fetch used up the deadline.
        let d = deadline.max(Instant::now() + Duration::from_secs(5));
        let r = vault.finish(d, ctx.log);
        summary.vault_requests += vault.requests() - before;
        match r {
            Ok(()) => ctx.log.info("vault: token revoked"),
            Err(e) => ctx.warn(&format!("vault: could not revoke the token: {e}")),
        }
    }
}

#[cfg(not(feature = "http"))]
#[allow(clippy::too_many_arguments)]
fn fetch_all<'a>(
    _ctx: &Ctx<'a>,
    _cfg: &DynamicConfig,
    sources: &kiln_signing::Dynamic,
    _hostname: &str,
    needed: &[(String, TRead)],
    values: &mut Values,
    _redactor: &mut Redactor,
    _summary: &mut DynamicSummary,
    _deadline: Instant,
) -> Result<Live<'a>, ApplyError> {
    if sources.consul.is_some() || sources.vault.is_some() {
        return Err(DynamicError::Config(
            "this kiln-firstboot was built without the `http` feature: it cannot read Consul or Vault".into(),
        )
        .into());
    }
    check_consul_keys(needed, values)?;
    Ok(Live {
        _root: std::marker::PhantomData,
    })
}

#[cfg(not(feature = "http"))]
fn finish_sources(_ctx: &Ctx, _live: Live<'_>, _summary: &mut DynamicSummary, _deadline: Instant) {}

/// Every Consul key a template reads without a default must exist: checked as soon as Consul
/// is read, so that a missing key costs no secret_id.
fn check_consul_keys(needed: &[(String, TRead)], values: &Values) -> Result<(), DynamicError> {
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
#[cfg_attr(not(feature = "http"), allow(dead_code))]
fn render_common_name(
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

/// The report Kiln writes to Consul and keeps in the state file's terms.
#[derive(Debug, Serialize)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
struct Report<'a> {
    hostgroup: &'a str,
    hostname: &'a str,
    version: u64,
    bundle_sha256: &'a str,
    result: crate::state::Outcome,
    exit_code: i32,
    started_at: &'a str,
    finished_at: &'a str,
    steps: Vec<ReportStep<'a>>,
    error: Option<&'a str>,
    /// `healthy` or `unhealthy` with each check, when the bundle has checks and they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<&'a crate::apply::health::Health>,
    firstboot: &'static str,
}

#[derive(Debug, Serialize)]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
struct ReportStep<'a> {
    name: &'a str,
    seconds: f64,
}

/// The report's key: `kiln/nodes/<hostgroup>/<hostname>`.
pub fn report_key(hostgroup: &str, hostname: &str) -> String {
    format!("kiln/nodes/{hostgroup}/{hostname}")
}

/// How the report went.
#[derive(Debug)]
pub struct Reported {
    /// Where it was written (`consul kiln/nodes/web/web-1`), or why it was not.
    pub result: Result<String, String>,
    /// Requests it took.
    pub requests: u32,
}

/// Writes the apply's result to Consul (check-and-set) when a Consul address is configured
/// (`None` when not). Never fails the apply.
pub fn report(cfg: &DynamicConfig, root: &Root, state: &State, log: &dyn Log) -> Option<Reported> {
    let addr = cfg.consul_addr.as_deref()?;
    let mut requests = 0;
    let result = report_inner(cfg, root, state, log, addr, &mut requests);
    Some(Reported { result, requests })
}

#[cfg(feature = "http")]
fn report_inner(
    cfg: &DynamicConfig,
    root: &Root,
    state: &State,
    log: &dyn Log,
    addr: &str,
    requests: &mut u32,
) -> Result<String, String> {
    let hostname = state
        .hostname
        .clone()
        .map(Ok)
        .unwrap_or_else(|| hostname(cfg, root))
        .map_err(|e| e.to_string())?;
    let key = report_key(&state.hostgroup, &hostname);
    let body = Report {
        hostgroup: &state.hostgroup,
        hostname: &hostname,
        version: state.version,
        bundle_sha256: &state.sha256,
        result: state.result,
        exit_code: state.exit_code,
        started_at: &state.started_at,
        finished_at: &state.applied_at,
        steps: state
            .steps
            .iter()
            .map(|s| ReportStep {
                name: &s.name,
                seconds: s.seconds,
            })
            .collect(),
        error: state.error.as_deref(),
        health: state.health.as_ref(),
        firstboot: env!("CARGO_PKG_VERSION"),
    };
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let token = cfg
        .consul_token
        .as_ref()
        .map(|f| f.read(root, "Consul token file"))
        .transpose()
        .map_err(|e| e.to_string())?;
    let tls = TlsRead::read(
        root,
        "Consul",
        &cfg.consul_ca,
        &cfg.consul_client_cert,
        &cfg.consul_client_key,
    )
    .map_err(|e| e.to_string())?;
    let mut c = consul::Consul::new(
        addr,
        token,
        tls.files(),
        Vec::new(),
        cfg.request_timeout.min(Duration::from_secs(10)),
    )
    .map_err(|e| e.to_string())?;
    // Short: a Consul that is down must not hold up the end of the boot.
    let deadline = Instant::now() + cfg.deadline.min(Duration::from_secs(15));
    let r = c.report(&key, &body, deadline, log);
    *requests = c.requests();
    match r {
        Ok(()) => Ok(format!("consul {key}")),
        Err(e) => Err(format!("consul {key}: {e}")),
    }
}

#[cfg(not(feature = "http"))]
fn report_inner(
    _cfg: &DynamicConfig,
    _root: &Root,
    _state: &State,
    _log: &dyn Log,
    _addr: &str,
    _requests: &mut u32,
) -> Result<String, String> {
    Err("built without the `http` feature".into())
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
