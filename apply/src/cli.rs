//! Command-line interface of `kiln-firstboot`: one clap struct per subcommand. Every flag has a
//! doc comment, which is its `--help` text (`help_expected` makes a missing one a build error).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Verify a signed Kiln bundle and apply it, once, at a VM's first boot.
///
/// Exit codes: 0 applied (or already applied), 1 failure, 2 usage, 10 bad signature,
/// 11 untrusted key, 12 revoked key, 13 expired, 14 wrong hostgroup, 15 wrong base,
/// 16 rollback, 17 corrupt bundle, 18 fetch failed, 19 --sha256 mismatch, 20 a dynamic source
/// (Consul, Vault) unreachable past the deadline, refusing, or missing a value, 21 apply failed
/// (the root was changed: rerun to continue), 22 the root conflicts with the bundle (refused,
/// nothing changed).
#[derive(Debug, Parser)]
#[command(
    name = "kiln-firstboot",
    version,
    help_expected = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch, verify and apply a bundle to a root filesystem.
    Apply(Box<ApplyArgs>),
    /// Show what the last apply did (from <root>/var/lib/kiln/state.json).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The bundle: a file path or an http(s) URL. kiln-firstboot.service passes it in the
    /// environment (/etc/kiln/firstboot.env).
    #[arg(long, env = "KILN_BUNDLE", value_name = "PATH|URL")]
    pub bundle: String,
    /// Refuse (exit 19) unless the bundle file's sha256 is HEX; checked before anything else.
    #[arg(long, env = "KILN_BUNDLE_SHA256", value_name = "HEX")]
    pub sha256: Option<String>,
    /// The root filesystem to apply to.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Trusted keys: a directory of .pub files (and an optional revoked_keys), a .pub file, or
    /// an allowed_signers file.
    #[arg(long, default_value = "/etc/kiln/trust", value_name = "DIR|FILE")]
    pub trust: PathBuf,
    /// Refuse bundles older than version N (also <root>/etc/kiln/min-version, and never below
    /// the version already applied).
    #[arg(long, value_name = "N")]
    pub min_version: Option<u64>,
    /// Give up fetching a URL after this long (retrying with backoff until then), e.g. 90s, 10m.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Verify everything and print what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse a bundle for another hostgroup (default: <root>/etc/kiln/hostgroup if it exists).
    #[arg(long, env = "KILN_HOSTGROUP", value_name = "NAME")]
    pub hostgroup: Option<String>,
    /// Apply even though another bundle was applied, or left half-applied, on this root.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON report on stdout at the end (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Queue service starts and restarts without waiting for them (systemctl --no-block):
    /// kiln-firstboot.service passes it, as it runs during boot before those services.
    #[arg(long)]
    pub no_block: bool,
    #[command(flatten)]
    pub dynamic: DynamicArgs,
}

/// Where the dynamic sources are, for the bundle's dynamic templates and the Consul report.
/// Each may also be set in the firstboot config file (same names, `key = value` lines, paths
/// inside the root); a flag wins. Tokens are only ever read from files.
#[derive(Debug, Args, Default, Clone)]
pub struct DynamicArgs {
    /// Consul agent address, e.g. http://127.0.0.1:8500 or https://127.0.0.1:8501; host:port
    /// alone is http (https when CONSUL_HTTP_SSL=true), as in Consul's own tools. Default:
    /// consul-addr in the firstboot config, else $CONSUL_HTTP_ADDR.
    #[arg(long, value_name = "URL")]
    pub consul_addr: Option<String>,
    /// File holding the Consul ACL token (sent as X-Consul-Token).
    #[arg(long, value_name = "FILE")]
    pub consul_token_file: Option<PathBuf>,
    /// PEM file of the CA certificates Consul's https certificate must chain to (only these
    /// are trusted then).
    #[arg(long, value_name = "FILE")]
    pub consul_ca: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Consul's https, for an agent with
    /// verify_incoming; needs --consul-client-key.
    #[arg(long, value_name = "FILE")]
    pub consul_client_cert: Option<PathBuf>,
    /// PEM private key of --consul-client-cert.
    #[arg(long, value_name = "FILE")]
    pub consul_client_key: Option<PathBuf>,
    /// Vault (or OpenBao) address, e.g. https://vault.internal:8200.
    #[arg(long, value_name = "URL")]
    pub vault_addr: Option<String>,
    /// PEM file of the CA certificates Vault's https certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub vault_ca: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Vault's https (a listener with
    /// tls_require_and_verify_client_cert); needs --vault-client-key.
    #[arg(long, value_name = "FILE")]
    pub vault_client_cert: Option<PathBuf>,
    /// PEM private key of --vault-client-cert.
    #[arg(long, value_name = "FILE")]
    pub vault_client_key: Option<PathBuf>,
    /// File holding the AppRole role_id (default: the one the bundle carries).
    #[arg(long, value_name = "FILE")]
    pub vault_role_id_file: Option<PathBuf>,
    /// File holding the response-wrapping token of the AppRole secret_id (cloud-init writes it).
    #[arg(long, value_name = "FILE")]
    pub wrapped_secret_id_file: Option<PathBuf>,
    /// This host's name, for templates, the certificate and the Consul report (default: the
    /// first line of <root>/etc/hostname).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// `host.primary_ip` for dynamic templates (default: the IPv4 address of the running
    /// system's default route interface, also under --root).
    #[arg(long, value_name = "IPV4")]
    pub primary_ip: Option<std::net::Ipv4Addr>,
    /// Overall deadline of the dynamic step (every Consul and Vault request and retry), e.g. 90s.
    /// Default 5m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub dynamic_deadline: Option<Duration>,
    /// The firstboot config file (default: <root>/etc/kiln/firstboot.conf, when present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The root filesystem whose state to show.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}
