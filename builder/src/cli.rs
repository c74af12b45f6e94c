//! Command-line interface of `kiln`: one clap struct per subcommand. Every flag carries a doc
//! comment, which becomes its `--help` text and its man page entry (`help_expected` enforces it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build immutable, signed, per-hostgroup configuration bundles.
///
/// kiln resolves each hostgroup (hostgroups/default.yaml, then its layers, then
/// hostgroups/<name>.yaml) into a signed overlay bundle of files, packages and systemd
/// units that kiln-firstboot applies once, at a VM's first boot.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, help_expected = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new OpenSSH ed25519 signing key pair (NAME and NAME.pub).
    Keygen(KeygenArgs),
    /// Check every hostgroup and layer; print file:line:column: reason for each problem.
    Validate(ValidateArgs),
    /// Print the resolved configuration of one hostgroup as YAML.
    Render(RenderArgs),
    /// Build one signed bundle per hostgroup.
    Build(BuildArgs),
    /// Make or inspect base images (Debian root filesystems made with debootstrap).
    #[command(subcommand)]
    Base(BaseCommand),
    /// Apply a bundle to a copy of its base and write an image: tar, raw ext4 or qcow2 (as root).
    Bake(BakeArgs),
    /// Write the cloud-init user-data that runs kiln-firstboot at a VM's first boot.
    CloudInit(CloudInitArgs),
    /// Follow a rolling replacement: the nodes' reports in Consul.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Verify a bundle: signature, trust, expiry and every payload byte.
    Verify(VerifyArgs),
    /// Show what a bundle contains.
    Inspect(InspectArgs),
    /// Show what replacing hosts running OLD with NEW would change.
    Diff(DiffArgs),
    /// Write the JSON Schemas of hostgroup and layer files (for editors and linters).
    Schema(SchemaArgs),
    /// Write man pages for kiln, kiln-firstboot and each of their subcommands.
    Man(ManArgs),
    /// Print a shell completion script for kiln (or kiln-firstboot).
    Completions(CompletionsArgs),
}

/// Where the configuration tree is.
#[derive(Debug, Args, Clone)]
pub struct ConfigArg {
    /// Configuration directory holding hostgroups/ and layers/.
    #[arg(
        long,
        short = 'c',
        default_value = ".",
        env = "KILN_CONFIG",
        value_name = "DIR"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path of the secret key to write; the public key goes to PATH.pub.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Comment stored in the key (shown by ssh-keygen -l).
    #[arg(long, default_value = "kiln-signing")]
    pub comment: String,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Make warnings (a literal secret in a static file) errors: exit 1.
    #[arg(long)]
    pub deny_warnings: bool,
    /// Print the problems and the warnings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The hostgroup to render.
    pub hostgroup: String,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Follow each value with the file:line:column it came from.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Hostgroups to build (names of hostgroups/<name>.yaml).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub hostgroups: Vec<String>,
    /// Build every hostgroup.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub config: ConfigArg,
    /// OpenSSH ed25519 secret key that signs the bundles (unencrypted; from your CI's secret store).
    #[arg(long, env = "KILN_SIGNING_KEY", value_name = "PATH")]
    pub key: PathBuf,
    /// Directory the bundles are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Bundle version, a positive integer that must grow with every release (hosts refuse
    /// older ones). Default: the build time in Unix seconds.
    #[arg(long, value_name = "N")]
    pub version: Option<u64>,
    /// How long the bundle stays valid after its creation time (e.g. 90d, 12h).
    #[arg(long, default_value = "90d", value_name = "DURATION")]
    pub expires: humantime::Duration,
    /// Build only the hostgroups of shard K of N (1-based), for a CI matrix; needs --all.
    #[arg(long, value_name = "K/N", requires = "all")]
    pub shard: Option<Shard>,
    /// Commit of the configuration, recorded in the manifest.
    #[arg(long, env = "KILN_SOURCE_COMMIT", value_name = "REV")]
    pub source_commit: Option<String>,
    /// Hostgroups built at the same time (default: number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Resolve every hostgroup's packages against this base and carry the .debs in the bundle:
    /// a base NAME of the configuration built by `kiln base build NAME`, a root filesystem DIR,
    /// or a TAR archive of one. Without it, packages are listed by name and pin only.
    #[arg(long, value_name = "NAME|DIR|TAR")]
    pub base: Option<String>,
    #[command(flatten)]
    pub cache: CacheArg,
    /// With --base: resolve against the apt lists already in the cache (no apt-get update).
    #[arg(long, requires = "base")]
    pub no_apt_update: bool,
    /// Make warnings errors (exit 1): a hostgroup with a warning (its packages not carried
    /// without --base, a literal secret in a static file) is not built.
    #[arg(long)]
    pub deny_warnings: bool,
    /// Print one JSON object per bundle written, as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Where bases, apt lists and downloaded packages are kept.
#[derive(Debug, Args, Clone)]
pub struct CacheArg {
    /// Cache directory for bases, apt lists and downloaded packages
    /// (default: $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long, env = "KILN_CACHE_DIR", value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Make a base with debootstrap as the configuration defines it, into the cache (as root);
    /// print its root filesystem's path. A base already in the cache is not made again.
    Build(BaseBuildArgs),
    /// Show what Kiln reads from a base: os-release, architecture, installed packages and
    /// their digest.
    Show(BaseShowArgs),
}

#[derive(Debug, Args)]
pub struct BaseBuildArgs {
    /// The base's name (`base: {name: ...}` in hostgroups/default.yaml or a hostgroup).
    pub name: String,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub cache: CacheArg,
    /// Debian mirror debootstrap and the base's sources.list use.
    #[arg(long, env = "KILN_DEBIAN_MIRROR", value_name = "URL")]
    pub mirror: Option<String>,
    /// Mirror of the security archive, for `*-security` suites in `sources` (default: the
    /// mirror with -security appended when it ends in /debian, else security.debian.org).
    #[arg(long, value_name = "URL")]
    pub security_mirror: Option<String>,
    /// Build it again even if the cache has it (replaces the cached base).
    #[arg(long)]
    pub rebuild: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BaseShowArgs {
    /// The base: a NAME of the configuration (built into the cache), a DIR or a TAR.
    #[arg(value_name = "NAME|DIR|TAR")]
    pub base: String,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub cache: CacheArg,
    /// Also list the installed packages.
    #[arg(long)]
    pub packages: bool,
    /// Print the result as JSON (packages included).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BakeArgs {
    /// The bundle to apply (<hostgroup>-<version>.kiln).
    pub bundle: PathBuf,
    /// The base to apply it to: a NAME of the configuration built by `kiln base build`, a root
    /// filesystem DIR, or a TAR archive of one. It must be the base the bundle was built for.
    #[arg(long, value_name = "NAME|DIR|TAR")]
    pub base: String,
    /// The image file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// What to write: a root filesystem tar, a raw ext4 image, or a qcow2 image.
    #[arg(long, value_enum, default_value = "tar")]
    pub format: crate::bake::Format,
    /// Size of the raw or qcow2 image's filesystem (e.g. 2G, 1536M; default: what the root
    /// needs plus a third and 256 MiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::bake::parse_size)]
    pub size: Option<u64>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// The kiln-firstboot binary installed in the image (default: the one beside kiln).
    #[arg(long, value_name = "PATH")]
    pub firstboot: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub cache: CacheArg,
    /// Keep the applied root directory beside the output, for inspection.
    #[arg(long)]
    pub keep_workdir: bool,
    /// Print the result as JSON (with the time of each step).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CloudInitArgs {
    /// The hostgroup the VM belongs to (kiln-firstboot refuses a bundle for another one).
    pub hostgroup: String,
    /// Where the VM downloads the bundle (http:// or https://, e.g. an object store).
    #[arg(long, value_name = "URL")]
    pub bundle_url: Option<String>,
    /// The bundle file here: its sha256 is pinned (--sha256 auto) and its hostgroup checked.
    /// Without --bundle-url, the VM reads it from the NoCloud seed disk (ship it there, at the
    /// top level, beside user-data).
    #[arg(long, value_name = "PATH")]
    pub bundle_file: Option<std::path::PathBuf>,
    /// The bundle's sha256, pinned in the user-data (kiln-firstboot refuses any other file,
    /// exit 19); `auto` computes it from --bundle-file.
    #[arg(long, default_value = "auto", value_name = "HEX|auto")]
    pub sha256: String,
    /// Who starts kiln-firstboot: cloud-init's runcmd, or kiln-firstboot.service (installed
    /// by `kiln bake`; runs before the bundle's services; needs --bundle-url).
    #[arg(long, value_enum, default_value = "runcmd")]
    pub via: crate::cloudinit::Via,
    /// Consul address as the VM reaches it (the dynamic values, and where the VM reports);
    /// required when the --bundle-file reads Consul.
    #[arg(long, value_name = "URL")]
    pub consul_addr: Option<String>,
    /// PEM CA certificates for Consul's https (written to /etc/kiln/consul-ca.pem).
    #[arg(long, value_name = "FILE")]
    pub consul_ca: Option<std::path::PathBuf>,
    /// File holding the VM's Consul ACL token (handed over 0600 in /run/kiln, tmpfs).
    #[arg(long, value_name = "FILE")]
    pub consul_token_file: Option<std::path::PathBuf>,
    /// Vault (or OpenBao) address as the VM reaches it; required when the --bundle-file reads
    /// Vault.
    #[arg(long, value_name = "URL")]
    pub vault_addr: Option<String>,
    /// PEM CA certificates for Vault's https (written to /etc/kiln/vault-ca.pem).
    #[arg(long, value_name = "FILE")]
    pub vault_ca: Option<std::path::PathBuf>,
    /// File holding the AppRole role_id, if the bundle does not carry it.
    #[arg(long, value_name = "FILE")]
    pub vault_role_id_file: Option<std::path::PathBuf>,
    /// File holding the response-wrapping token of the VM's AppRole secret_id (`vault write
    /// -wrap-ttl=30m -f auth/approle/role/ROLE/secret-id`): handed over 0600 root in /run/kiln
    /// (tmpfs), deleted by kiln-firstboot once unwrapped.
    #[arg(long, value_name = "FILE")]
    pub wrapped_secret_id_file: Option<std::path::PathBuf>,
    /// Refuse bundles below this version on the VM (rollback protection).
    #[arg(long, value_name = "N")]
    pub min_version: Option<u64>,
    /// kiln-firstboot's fetch deadline (default 10m).
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// kiln-firstboot's deadline for Consul and Vault (default 5m).
    #[arg(long, value_name = "DURATION")]
    pub dynamic_deadline: Option<String>,
    /// kiln-firstboot's path in the image (`kiln bake` installs it there).
    #[arg(
        long,
        default_value = "/usr/local/sbin/kiln-firstboot",
        value_name = "PATH"
    )]
    pub firstboot_path: String,
    /// Where to write the user-data (0600; `-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// The nodes of a hostgroup by version and result, from their reports in Consul.
    Status(RolloutStatusArgs),
    /// Wait until N nodes of version V report success (exit 0); exit 3 at once when a node
    /// reports failure, 4 when the timeout passes first.
    Wait(RolloutWaitArgs),
}

/// Where Consul is, for `kiln rollout`.
#[derive(Debug, Args, Clone)]
pub struct ConsulArgs {
    /// Consul address: a URL, or host:port as in Consul's own tools (http, or https when
    /// CONSUL_HTTP_SSL=true).
    #[arg(
        long,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500",
        value_name = "URL"
    )]
    pub consul_addr: String,
    /// File holding a Consul ACL token that may read kiln/nodes/ (else $CONSUL_HTTP_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub consul_token_file: Option<std::path::PathBuf>,
    /// PEM CA certificates for Consul's https (else the system's).
    #[arg(long, env = "CONSUL_CACERT", value_name = "FILE")]
    pub consul_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) for an agent with verify_incoming; needs
    /// --consul-client-key.
    #[arg(long, env = "CONSUL_CLIENT_CERT", value_name = "FILE")]
    pub consul_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --consul-client-cert.
    #[arg(long, env = "CONSUL_CLIENT_KEY", value_name = "FILE")]
    pub consul_client_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The hostgroup (reports under kiln/nodes/HOSTGROUP/).
    pub hostgroup: String,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Print the nodes and the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RolloutWaitArgs {
    /// The hostgroup (reports under kiln/nodes/HOSTGROUP/).
    pub hostgroup: String,
    /// The bundle version being rolled out.
    #[arg(long, value_name = "V")]
    pub version: u64,
    /// How many nodes of that version must report success.
    #[arg(long, value_name = "N")]
    pub count: usize,
    /// Give up after this long (exit 4), e.g. 15m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Longest a single blocking query waits (Consul caps it at 10m).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Print the final state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--shard K/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, n) = s.split_once('/').ok_or("expected K/N, e.g. 2/4")?;
        let index: u32 = k
            .trim()
            .parse()
            .map_err(|_| format!("shard index {k:?} is not a number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count {n:?} is not a number"))?;
        if count == 0 || index == 0 || index > count {
            return Err(format!("shard {index}/{count}: need 1 <= K <= N"));
        }
        Ok(Shard { index, count })
    }
}

/// Trust flags shared by commands that check signatures.
#[derive(Debug, Args, Clone)]
pub struct TrustArgs {
    /// Trusted keys: a directory of *.pub files (and optional revoked_keys), a .pub file, or an
    /// allowed_signers file.
    #[arg(long, env = "KILN_TRUST", value_name = "DIR|FILE")]
    pub trust: PathBuf,
    /// A file of revoked public keys (one OpenSSH public key per line); revocation always wins.
    #[arg(long, value_name = "FILE")]
    pub revoked: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle file (<hostgroup>-<version>.kiln).
    pub bundle: PathBuf,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Also require the bundle to be for this hostgroup.
    #[arg(long, value_name = "NAME")]
    pub hostgroup: Option<String>,
    /// Also require at least this bundle version (rollback protection).
    #[arg(long, value_name = "N")]
    pub min_version: Option<u64>,
    /// Print the result as JSON (also on refusal).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Print the whole manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The bundle hosts run now.
    pub old: PathBuf,
    /// The bundle that replaces it.
    pub new: PathBuf,
    /// Print the differences as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when the bundles differ (like `git diff --exit-code`).
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Print this schema on stdout (without --out).
    #[arg(value_enum, required_unless_present = "out", conflicts_with = "out")]
    pub kind: Option<SchemaKind>,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Write both, as DIR/hostgroup.schema.json and DIR/layer.schema.json.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Which file a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// hostgroups/*.yaml (default.yaml too); the configuration's layers are keys of it.
    Hostgroup,
    /// layers/*.yaml.
    Layer,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory the man pages are written to.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
    /// The program to complete.
    #[arg(long, value_enum, default_value = "kiln")]
    pub program: Program,
}

/// The two programs of Kiln, for `kiln completions --program`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    /// kiln, the builder.
    Kiln,
    /// kiln-firstboot, the applier run at first boot.
    KilnFirstboot,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its own definition (unique names, docs on every flag) only when asked.
    #[test]
    fn the_cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
