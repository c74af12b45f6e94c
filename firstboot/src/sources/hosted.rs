//! kiln-firstboot's [`Sources`]: Consul and Vault over HTTP(S), as the host's
//! [`DynamicConfig`] (flags or `/etc/kiln/firstboot.conf`) says.

use std::time::{Duration, Instant};

use kiln_apply::dynamic::{
    check_consul_keys, render_common_name, DynamicError, DynamicSummary, FileRef, Finish, Reported,
    Want,
};
use kiln_apply::engine::{ApplyError, Ctx};
use kiln_apply::fsroot::Root;
use kiln_apply::http;
use kiln_apply::log::Log;
use kiln_apply::secret::{Redactor, Secret};
use kiln_apply::state::State;
use kiln_apply::template::Values;
use kiln_apply::{DynamicConfig, Sources};

use super::{consul, vault, DynamicSource};

/// Consul and Vault where the host's configuration says they are.
pub struct Hosted<'c> {
    pub config: &'c DynamicConfig,
}

/// The sources that still have something to do after the templates are written.
struct Live<'a> {
    vault: Option<vault::Vault<'a>>,
}

impl Sources for Hosted<'_> {
    fn fetch<'a>(
        &'a self,
        want: &Want<'_, 'a>,
        values: &mut Values,
        redactor: &mut Redactor,
        summary: &mut DynamicSummary,
    ) -> Result<Option<Box<dyn Finish + 'a>>, ApplyError> {
        let (ctx, cfg, sources, hostname) = (want.ctx, self.config, want.declared, want.hostname);
        let (needed, deadline) = (want.needed, want.deadline);
        let log = ctx.log();
        let root: &'a Root = ctx.root();
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
                Some(p) => render_common_name(&p.common_name, hostname, &ctx.manifest().hostgroup)?,
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
        Ok(live.vault.map(|v| Box::new(v) as Box<dyn Finish + 'a>))
    }

    /// Writes the apply's result to Consul (check-and-set) when a Consul address is configured.
    fn report(&self, root: &Root, state: &State, log: &dyn Log) -> Option<Reported> {
        let addr = self.config.consul_addr.as_deref()?;
        let mut requests = 0;
        let result = report(self.config, root, state, log, addr, &mut requests);
        Some(Reported { result, requests })
    }
}

/// After the templates are in place: the Vault token is revoked (and its kept copy removed).
/// A failure here is a warning: the templates are written.
impl Finish for vault::Vault<'_> {
    fn finish(mut self: Box<Self>, ctx: &Ctx, summary: &mut DynamicSummary, deadline: Instant) {
        let before = self.requests();
        // At least a few seconds, even if the fetch used up the deadline.
        let d = deadline.max(Instant::now() + Duration::from_secs(5));
        let r = DynamicSource::finish(&mut *self, d, ctx.log());
        summary.vault_requests += self.requests() - before;
        match r {
            Ok(()) => ctx.log().info("vault: token revoked"),
            Err(e) => ctx.warn(&format!("vault: could not revoke the token: {e}")),
        }
    }
}

fn report(
    cfg: &DynamicConfig,
    root: &Root,
    state: &State,
    log: &dyn Log,
    addr: &str,
    requests: &mut u32,
) -> Result<String, String> {
    let (key, body) = kiln_apply::dynamic::report_of(cfg, root, state)?;
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

/// One source's CA and client certificate files, read (the key is a [`Secret`]).
struct TlsRead {
    ca: Option<Secret>,
    client: Option<(Secret, Secret)>,
}

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
