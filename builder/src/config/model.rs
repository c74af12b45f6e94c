//! The resolved hostgroup: what one bundle is built from, each item with the place that
//! defined it (its provenance), for `kiln render --explain` and for error messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::diag::Span;

/// A value and where its winning definition came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    /// The key of the last definition that contributed (the one that won).
    pub span: Span,
    /// Earlier definitions this one was merged over, in merge order (empty when the winning
    /// definition is the only one, or replaced the earlier ones, as `state: absent` does).
    pub merged_over: Vec<Span>,
}

impl<T> Sourced<T> {
    pub fn new(value: T, span: Span) -> Sourced<T> {
        Sourced {
            value,
            span,
            merged_over: Vec::new(),
        }
    }
}

/// The base image the bundle targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBase {
    pub name: String,
    pub os_id: String,
    pub version_id: String,
    pub arch: String,
    pub suite: String,
    pub variant: String,
    pub include: Vec<String>,
    /// Suites added to the base's apt sources besides `suite` (`bookworm-updates`,
    /// `bookworm-security`), written by `kiln base build`.
    pub sources: Vec<String>,
}

impl Default for ResolvedBase {
    fn default() -> Self {
        ResolvedBase {
            name: "debian-12".into(),
            os_id: "debian".into(),
            version_id: "12".into(),
            arch: "amd64".into(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// How a file's bytes come about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// Inline content, a static template already rendered, or a unit file.
    Bytes(Vec<u8>),
    /// A verbatim `from:` file: absolute path, checked to exist, to be a regular file and to
    /// stay inside the configuration tree.
    Path(PathBuf),
    /// A symbolic link to this target.
    Symlink(String),
    /// Removed on the host.
    Absent,
    /// A dynamic template, rendered on the host at first boot; the raw template text.
    Dynamic { template: String },
}

/// `template:` of a file or unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TemplateKind {
    #[default]
    None,
    Static,
    Dynamic,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::None => "none",
            TemplateKind::Static => "static",
            TemplateKind::Dynamic => "dynamic",
        }
    }
}

/// A file, symlink or removal (units are files under /etc/systemd/system/).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedFile {
    pub source: FileSource,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub restart: Vec<String>,
    pub reload: Vec<String>,
    /// The `from:` file, relative to the configuration root, when the content came from one.
    pub from: Option<PathBuf>,
    pub template: TemplateKind,
}

/// A directory, or its removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDir {
    pub absent: bool,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

/// A local user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: Option<u32>,
    /// Primary group; `None`: a group named like the user.
    pub group: Option<String>,
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub create_home: bool,
    pub authorized_keys: Vec<String>,
}

/// A local group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedGroup {
    pub gid: Option<u32>,
    pub system: bool,
}

/// A Debian package, with an optional exact version pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPackage {
    pub version: Option<String>,
}

/// The state a service must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Dead,
}

impl ServiceState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Dead => "dead",
        }
    }
}

/// A service: its state and whether it is enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedService {
    pub state: ServiceState,
    pub enabled: bool,
}

/// A command run once at first boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedCommand {
    pub name: String,
    /// argv; a string in the configuration becomes `["/bin/sh", "-c", s]`.
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub creates: Option<String>,
}

/// A health check run once the services have started (see the manifest's `Check`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedCheck {
    pub name: String,
    pub probe: kiln_signing::Probe,
    pub deadline: Duration,
}

/// One hostgroup, fully merged and checked: the input of a bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub hostgroup: String,
    pub base: ResolvedBase,
    /// Layers applied, in order.
    pub layers: Vec<String>,
    /// The merged `vars` map.
    pub vars: serde_json::Value,
    /// Where each top-level key of `vars` got its value.
    pub vars_spans: BTreeMap<String, Span>,
    /// Key: absolute path. Includes units (under /etc/systemd/system/).
    pub files: BTreeMap<String, Sourced<ResolvedFile>>,
    pub directories: BTreeMap<String, Sourced<ResolvedDir>>,
    pub users: BTreeMap<String, Sourced<ResolvedUser>>,
    pub groups: BTreeMap<String, Sourced<ResolvedGroup>>,
    pub packages: BTreeMap<String, Sourced<ResolvedPackage>>,
    /// Unit file names shipped: `app.service`, `ssh.service.d/10-kiln.conf`.
    pub units: Vec<String>,
    pub services: BTreeMap<String, Sourced<ResolvedService>>,
    /// In merged order.
    pub commands: Vec<Sourced<ResolvedCommand>>,
    /// Sorted by name.
    pub checks: BTreeMap<String, Sourced<ResolvedCheck>>,
    pub system_accounts: BTreeSet<String>,
    /// Where each applied layer was first asked for (a hostgroup key, a `layers:` entry).
    pub layer_uses: BTreeMap<String, Span>,
    /// The merged `dynamic:` section: what dynamic templates may read (the manifest's).
    pub dynamic: Option<kiln_signing::Dynamic>,
    /// Where the `dynamic:` section was last defined.
    pub dynamic_span: Option<Span>,
    /// What each dynamic template reads, by target path, in template order.
    pub template_reads: BTreeMap<String, Vec<kiln_apply::template::Read>>,
    /// Not errors, but worth a look (a literal secret in a static file).
    pub warnings: Vec<super::diag::Diagnostic>,
}
