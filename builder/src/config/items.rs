//! The schema of one resource item (a file, a user, a service...): its allowed keys and the
//! type of each, read into a `*Spec`. The same readers check a single definition as written
//! (`complete == false`) and the merged result (`complete == true`, which also requires what
//! a finished item needs, such as a file's content).

use std::time::Duration;

use super::check::{self, known_keys};
use super::diag::{Sink, Span};
use super::model::{ServiceState, TemplateKind};
use super::yaml::{Node, NodeKind};

/// The resource sections, each a map from a name or path to an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Files,
    Directories,
    Users,
    Groups,
    Packages,
    Units,
    Services,
    Commands,
    Checks,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Files,
        Kind::Directories,
        Kind::Users,
        Kind::Groups,
        Kind::Packages,
        Kind::Units,
        Kind::Services,
        Kind::Commands,
        Kind::Checks,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Kind::Files => "files",
            Kind::Directories => "directories",
            Kind::Users => "users",
            Kind::Groups => "groups",
            Kind::Packages => "packages",
            Kind::Units => "units",
            Kind::Services => "services",
            Kind::Commands => "commands",
            Kind::Checks => "checks",
        }
    }

    pub fn from_key(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == key)
    }

    pub fn singular(self) -> &'static str {
        match self {
            Kind::Files => "file",
            Kind::Directories => "directory",
            Kind::Users => "user",
            Kind::Groups => "group",
            Kind::Packages => "package",
            Kind::Units => "unit",
            Kind::Services => "service",
            Kind::Commands => "command",
            Kind::Checks => "check",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn allowed(self) -> &'static [&'static str] {
        match self {
            Kind::Files => &[
                "content", "from", "symlink", "state", "mode", "owner", "group", "template",
                "restart", "reload",
            ],
            Kind::Directories => &["mode", "owner", "group", "state"],
            Kind::Users => &[
                "uid",
                "group",
                "groups",
                "home",
                "shell",
                "comment",
                "system",
                "create_home",
                "authorized_keys",
                "state",
            ],
            Kind::Groups => &["gid", "system", "state"],
            Kind::Packages => &["version", "state"],
            Kind::Units => &["content", "from", "template", "state"],
            Kind::Services => &["state", "enabled"],
            Kind::Commands => &["run", "timeout", "creates", "state"],
            Kind::Checks => &[
                "unit", "tcp", "http", "status", "run", "timeout", "deadline", "state",
            ],
        }
    }

    /// Keys an item with `state: absent` may still have.
    fn allowed_when_absent(self) -> &'static [&'static str] {
        match self {
            Kind::Files => &["state", "restart", "reload"],
            _ => &["state"],
        }
    }
}

/// Whether an item is written with `state: absent`.
pub fn is_absent(item: &Node) -> bool {
    item.get("state").and_then(Node::as_str) == Some("absent")
}

/// Check an item's name (the key in its section). Returns false when it is unusable.
pub fn check_name(kind: Kind, key: &Node, d: &mut Sink) -> bool {
    let name = key.key_str();
    let problem = match kind {
        Kind::Files | Kind::Directories => check::abs_path_problem(name),
        Kind::Users | Kind::Groups if !check::is_account_name(name) => {
            Some(format!("{} name {name:?} does not match {}", kind.singular(), kiln_signing::spec::ACCOUNT_NAME_PATTERN))
        }
        Kind::Packages if !check::is_package_name(name) => {
            Some(format!("package name {name:?} does not match Debian's [a-z0-9][a-z0-9+.-]+"))
        }
        Kind::Units if !check::is_unit_key(name) => Some(format!(
            "unit {name:?} is neither a unit file name (name.service, .socket, .timer, ...) nor a drop-in (unit.service.d/name.conf)"
        )),
        Kind::Services if !check::is_service_name(name) => Some(format!(
            "service name {name:?} needs a unit suffix ({})",
            check::SERVICE_SUFFIXES.iter().map(|s| format!(".{s}")).collect::<Vec<_>>().join(", ")
        )),
        Kind::Commands | Kind::Checks if !check::is_command_name(name) => Some(format!(
            "{} name {name:?} does not match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}",
            kind.singular()
        )),
        _ => None,
    };
    match problem {
        Some(p) => {
            d.err(&key.span, p);
            false
        }
        None => true,
    }
}

/// The common start of every item reader: the entries, unknown keys, `state`, and the rule
/// that an absent item carries nothing else. Returns the entries and whether it is absent.
fn begin<'a>(
    kind: Kind,
    key: &Node,
    item: &'a Node,
    d: &mut Sink,
) -> Option<(&'a [(Node, Node)], bool)> {
    let entries = check::map(item, d)?;
    let what = format!("{} {}", kind.singular(), key.key_str());
    known_keys(entries, kind.allowed(), &what, d);
    let mut absent = false;
    if let Some(state) = item.get("state") {
        let states: &[&str] = if kind == Kind::Services {
            &["running", "dead", "absent"]
        } else {
            &["present", "absent"]
        };
        match check::string("state", state, d) {
            Some(s) if states.contains(&s) => absent = s == "absent",
            Some(s) => d.err(
                &state.span,
                format!("state {s:?} is not one of: {}", states.join(", ")),
            ),
            None => {}
        }
    }
    if absent {
        for (k, _) in entries {
            let name = k.key_str();
            if kind.allowed().contains(&name) && !kind.allowed_when_absent().contains(&name) {
                d.err(
                    &k.span,
                    format!("state: absent takes no other keys (found {name})"),
                );
            }
        }
    }
    Some((entries, absent))
}

fn account_ref(key: &str, node: &Node, what: &str, d: &mut Sink) -> Option<(String, Span)> {
    let s = check::string(key, node, d)?;
    if !check::is_account_name(s) {
        d.err(
            &node.span,
            format!(
                "{what} {s:?} is not a valid {what} name ({})",
                kiln_signing::spec::ACCOUNT_NAME_PATTERN
            ),
        );
        return None;
    }
    Some((s.to_string(), node.span.clone()))
}

fn service_refs(key: &str, node: &Node, d: &mut Sink) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for item in check::strings(key, node, d) {
        let s = item.as_str().unwrap_or_default();
        if check::is_service_name(s) {
            out.push((s.to_string(), item.span.clone()));
        } else {
            d.err(
                &item.span,
                format!("{key}: {s:?} is not a service name (such as nginx.service)"),
            );
        }
    }
    out
}

/// Where a file's bytes come from, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum Src {
    Content(String),
    From(String),
    Symlink(String),
    Absent,
}

/// A file or unit as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct FileSpec {
    /// The source and the span of the node that gave it (the `from:` value, the content...).
    pub src: Option<(Src, Span)>,
    pub mode: Option<u32>,
    pub owner: Option<(String, Span)>,
    pub group: Option<(String, Span)>,
    pub template: TemplateKind,
    pub template_span: Option<Span>,
    pub restart: Vec<(String, Span)>,
    pub reload: Vec<(String, Span)>,
}

/// Read a file (`kind == Files`) or a unit (`kind == Units`).
pub fn file(kind: Kind, key: &Node, item: &Node, complete: bool, d: &mut Sink) -> FileSpec {
    let mut spec = FileSpec::default();
    let Some((entries, absent)) = begin(kind, key, item, d) else {
        return spec;
    };
    let what = format!("{} {}", kind.singular(), key.key_str());
    let mut sources: Vec<&str> = Vec::new();
    if absent {
        let span = item
            .get_entry("state")
            .map(|(k, _)| k.span.clone())
            .unwrap_or_else(|| key.span.clone());
        spec.src = Some((Src::Absent, span));
        sources.push("state: absent");
    }
    for (k, v) in entries {
        match k.key_str() {
            "content" => {
                sources.push("content");
                if let Some(s) = check::string("content", v, d) {
                    spec.src
                        .get_or_insert((Src::Content(s.to_string()), v.span.clone()));
                }
            }
            "from" => {
                sources.push("from");
                if let Some(s) = check::string("from", v, d) {
                    match check::rel_path_problem(s) {
                        Some(p) => d.err(&v.span, p),
                        None => {
                            spec.src
                                .get_or_insert((Src::From(s.to_string()), v.span.clone()));
                        }
                    }
                }
            }
            "symlink" => {
                sources.push("symlink");
                if let Some(s) = check::string("symlink", v, d) {
                    if s.is_empty() || s.contains('\0') || s.contains('\n') {
                        d.err(
                            &v.span,
                            "symlink target must be a non-empty path without NUL or newline",
                        );
                    } else {
                        spec.src
                            .get_or_insert((Src::Symlink(s.to_string()), v.span.clone()));
                    }
                }
            }
            "mode" => spec.mode = check::mode(v, d),
            "owner" => spec.owner = account_ref("owner", v, "owner", d),
            "group" => spec.group = account_ref("group", v, "group", d),
            "template" => {
                spec.template_span = Some(k.span.clone());
                match check::string("template", v, d) {
                    Some("none") => spec.template = TemplateKind::None,
                    Some("static") => spec.template = TemplateKind::Static,
                    Some("dynamic") if kind == Kind::Files => spec.template = TemplateKind::Dynamic,
                    Some(s) => {
                        let allowed = if kind == Kind::Files {
                            "none, static or dynamic"
                        } else {
                            "none or static"
                        };
                        d.err(&v.span, format!("template {s:?} is not one of: {allowed}"));
                    }
                    None => {}
                }
            }
            "restart" => spec.restart = service_refs("restart", v, d),
            "reload" => spec.reload = service_refs("reload", v, d),
            _ => {}
        }
    }
    if sources.len() > 1 {
        d.err(
            &key.span,
            format!(
                "{what} has {} (exactly one of content, from, {}state: absent)",
                sources.join(" and "),
                if kind == Kind::Files { "symlink, " } else { "" }
            ),
        );
    }
    if let Some((Src::Symlink(_), _)) = &spec.src {
        for (k, _) in entries {
            let name = k.key_str();
            if matches!(name, "mode" | "owner" | "group" | "template") {
                d.err(&k.span, format!("a symlink takes no {name}"));
            }
        }
    }
    if complete {
        match (&spec.src, spec.template) {
            (None, _) if sources.is_empty() => d.err(
                &key.span,
                format!(
                    "{what} needs one of content, from, {}state: absent",
                    if kind == Kind::Files { "symlink, " } else { "" }
                ),
            ),
            _ => {}
        }
    }
    spec
}

/// A directory as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct DirSpec {
    pub absent: bool,
    pub mode: Option<u32>,
    pub owner: Option<(String, Span)>,
    pub group: Option<(String, Span)>,
}

pub fn directory(key: &Node, item: &Node, d: &mut Sink) -> DirSpec {
    let mut spec = DirSpec::default();
    let Some((entries, absent)) = begin(Kind::Directories, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        match k.key_str() {
            "mode" => spec.mode = check::mode(v, d),
            "owner" => spec.owner = account_ref("owner", v, "owner", d),
            "group" => spec.group = account_ref("group", v, "group", d),
            _ => {}
        }
    }
    spec
}

/// Highest uid/gid Kiln accepts: 65534 is nobody/nogroup, 65535 is (uid_t)-1 on 16 bits.
pub const MAX_ID: i64 = 65533;

/// A user as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct UserSpec {
    pub absent: bool,
    pub uid: Option<(u32, Span)>,
    pub group: Option<(String, Span)>,
    pub groups: Vec<(String, Span)>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    pub system: bool,
    pub create_home: Option<bool>,
    pub authorized_keys: Vec<String>,
}

fn abs_path_value(key: &str, v: &Node, d: &mut Sink) -> Option<String> {
    let s = check::string(key, v, d)?;
    match check::abs_path_problem(s) {
        Some(p) => {
            d.err(&v.span, format!("{key}: {p}"));
            None
        }
        None => Some(s.to_string()),
    }
}

pub fn user(key: &Node, item: &Node, d: &mut Sink) -> UserSpec {
    let mut spec = UserSpec::default();
    let Some((entries, absent)) = begin(Kind::Users, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        match k.key_str() {
            "uid" => {
                spec.uid = check::int_in("uid", v, 1, MAX_ID, d).map(|i| (i as u32, v.span.clone()))
            }
            "group" => spec.group = account_ref("group", v, "group", d),
            "groups" => {
                spec.groups = check::strings("groups", v, d)
                    .into_iter()
                    .filter_map(|n| account_ref("groups", n, "group", d))
                    .collect()
            }
            "home" => spec.home = abs_path_value("home", v, d),
            "shell" => spec.shell = abs_path_value("shell", v, d),
            "comment" => {
                if let Some(s) = check::string("comment", v, d) {
                    if s.contains([':', '\n', '\r', '\0']) {
                        d.err(
                            &v.span,
                            "comment: a passwd comment cannot hold ':', NUL or a newline",
                        );
                    } else {
                        spec.comment = Some(s.to_string());
                    }
                }
            }
            "system" => spec.system = check::boolean(v, d).unwrap_or(false),
            "create_home" => spec.create_home = check::boolean(v, d),
            "authorized_keys" => {
                for n in check::strings("authorized_keys", v, d) {
                    let s = n.as_str().unwrap_or_default();
                    if s.contains(['\n', '\r', '\0']) || s.trim().is_empty() {
                        d.err(&n.span, "authorized_keys: each key is one non-empty line");
                    } else {
                        spec.authorized_keys.push(s.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    spec
}

/// A group as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct GroupSpec {
    pub absent: bool,
    pub gid: Option<(u32, Span)>,
    pub system: bool,
}

pub fn group(key: &Node, item: &Node, d: &mut Sink) -> GroupSpec {
    let mut spec = GroupSpec::default();
    let Some((entries, absent)) = begin(Kind::Groups, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        match k.key_str() {
            "gid" => {
                spec.gid = check::int_in("gid", v, 1, MAX_ID, d).map(|i| (i as u32, v.span.clone()))
            }
            "system" => spec.system = check::boolean(v, d).unwrap_or(false),
            _ => {}
        }
    }
    spec
}

/// A package as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct PackageSpec {
    pub absent: bool,
    pub version: Option<String>,
}

pub fn package(key: &Node, item: &Node, d: &mut Sink) -> PackageSpec {
    let mut spec = PackageSpec::default();
    let Some((entries, absent)) = begin(Kind::Packages, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        if k.key_str() == "version" {
            if let Some(s) = check::string("version", v, d) {
                if s.chars().any(char::is_whitespace) {
                    d.err(&v.span, format!("version {s:?} contains whitespace"));
                } else if !check::is_package_version(s) {
                    d.err(
                        &v.span,
                        format!(
                            "version {s:?} is not a Debian version such as \"1.22.1-9+deb12u1\""
                        ),
                    );
                } else {
                    spec.version = Some(s.to_string());
                }
            }
        }
    }
    spec
}

/// A service as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec {
    pub absent: bool,
    pub state: Option<ServiceState>,
    pub enabled: Option<bool>,
}

pub fn service(key: &Node, item: &Node, complete: bool, d: &mut Sink) -> ServiceSpec {
    let mut spec = ServiceSpec::default();
    let Some((entries, absent)) = begin(Kind::Services, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        match k.key_str() {
            "state" => match v.as_str() {
                Some("running") => spec.state = Some(ServiceState::Running),
                Some("dead") => spec.state = Some(ServiceState::Dead),
                _ => {}
            },
            "enabled" => spec.enabled = check::boolean(v, d),
            _ => {}
        }
    }
    if complete && !absent && spec.state.is_none() && item.get("state").is_none() {
        d.err(
            &key.span,
            format!("service {} needs state: running or dead", key.key_str()),
        );
    }
    spec
}

/// Longest timeout a first-boot command may have.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Timeout of a command that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A command as written (or merged).
#[derive(Clone, Debug, Default)]
pub struct CommandSpec {
    pub absent: bool,
    pub run: Option<Vec<String>>,
    pub timeout: Option<Duration>,
    pub creates: Option<String>,
}

pub fn command(key: &Node, item: &Node, complete: bool, d: &mut Sink) -> CommandSpec {
    let mut spec = CommandSpec::default();
    let Some((entries, absent)) = begin(Kind::Commands, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    for (k, v) in entries {
        match k.key_str() {
            "run" => match &v.kind {
                NodeKind::Str(s) if !s.trim().is_empty() => {
                    spec.run = Some(vec!["/bin/sh".into(), "-c".into(), s.clone()]);
                }
                NodeKind::Seq(items) if !items.is_empty() => {
                    let argv: Vec<String> = check::strings("run", v, d)
                        .into_iter()
                        .map(|n| n.as_str().unwrap_or_default().to_string())
                        .collect();
                    if argv.len() == items.len() {
                        if argv.iter().any(|a| a.contains('\0')) {
                            d.err(&v.span, "run: arguments cannot contain NUL");
                        } else {
                            spec.run = Some(argv);
                        }
                    }
                }
                _ => d.err(
                    &v.span,
                    format!(
                        "run: expected a non-empty command string or argv list, found {}",
                        v.describe()
                    ),
                ),
            },
            "timeout" => spec.timeout = duration_value("timeout", v, d),
            "creates" => spec.creates = abs_path_value("creates", v, d),
            _ => {}
        }
    }
    if complete && !absent && item.get("run").is_none() {
        d.err(&key.span, format!("command {} has no run", key.key_str()));
    }
    spec
}

/// A duration such as "90s" or "5m", above 0s and at most [`MAX_TIMEOUT`].
fn duration_value(key: &str, v: &Node, d: &mut Sink) -> Option<Duration> {
    let text = match &v.kind {
        NodeKind::Str(s) => Some(s.as_str()),
        _ => None,
    };
    match text.map(humantime::parse_duration) {
        None => d.err(
            &v.span,
            format!(
                "{key} must be a duration such as \"5m\" or \"90s\", found {}",
                v.describe()
            ),
        ),
        Some(Err(e)) => d.err(
            &v.span,
            format!("{key} {:?} is not a duration such as \"5m\": {e}", v.text()),
        ),
        Some(Ok(t)) if t > MAX_TIMEOUT => d.err(
            &v.span,
            format!("{key} {:?} is longer than the maximum of 1h", v.text()),
        ),
        Some(Ok(t)) if t.is_zero() => d.err(&v.span, format!("{key} must be longer than 0s")),
        Some(Ok(t)) => return Some(t),
    }
    None
}

/// A health check as written (or merged): exactly one probe.
#[derive(Clone, Debug, Default)]
pub struct CheckSpec {
    pub absent: bool,
    pub probe: Option<kiln_signing::Probe>,
    pub deadline: Option<Duration>,
}

/// How long a check is retried by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// A check's command runs at most this long per try by default.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

pub fn health_check(key: &Node, item: &Node, complete: bool, d: &mut Sink) -> CheckSpec {
    use kiln_signing::Probe;
    let mut spec = CheckSpec::default();
    let Some((entries, absent)) = begin(Kind::Checks, key, item, d) else {
        return spec;
    };
    spec.absent = absent;
    let probes: Vec<&Node> = ["unit", "tcp", "http", "run"]
        .iter()
        .filter_map(|k| {
            entries
                .iter()
                .find(|(n, _)| n.key_str() == *k)
                .map(|(n, _)| n)
        })
        .collect();
    if probes.len() > 1 {
        d.err(
            &probes[1].span,
            format!(
                "check {}: one probe per check (unit, tcp, http or run), found {}",
                key.key_str(),
                probes
                    .iter()
                    .map(|n| n.key_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        );
        return spec;
    }
    let mut timeout = None;
    let mut status = None;
    for (k, v) in entries {
        match k.key_str() {
            "unit" => {
                if let Some(u) = check::string("unit", v, d) {
                    if check::is_service_name(u) {
                        spec.probe = Some(Probe::Unit { unit: u.into() });
                    } else {
                        d.err(
                            &v.span,
                            format!(
                                "unit {u:?} is not a unit name (name.service, .socket, .timer...)"
                            ),
                        );
                    }
                }
            }
            "tcp" => {
                if let Some(a) = check::string("tcp", v, d) {
                    let ok = a.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty()
                            && !h.starts_with('-')
                            && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if ok {
                        spec.probe = Some(Probe::Tcp { address: a.into() });
                    } else {
                        d.err(
                            &v.span,
                            format!("tcp {a:?} is not host:port (e.g. \"127.0.0.1:5432\")"),
                        );
                    }
                }
            }
            "http" => {
                if let Some(u) = check::string("http", v, d) {
                    if u.starts_with("http://") && !u.contains(char::is_whitespace) && u.len() > 7 {
                        spec.probe = Some(Probe::Http {
                            url: u.into(),
                            status: 200,
                        });
                    } else {
                        d.err(&v.span, format!("http {u:?} is not an http:// URL (checks talk plain HTTP to the host itself)"));
                    }
                }
            }
            "status" => match &v.kind {
                NodeKind::Int(n) if (100..=599).contains(n) => status = Some(*n as u16),
                _ => d.err(
                    &v.span,
                    format!(
                        "status must be an HTTP status code (100-599), found {}",
                        v.describe()
                    ),
                ),
            },
            "run" => match &v.kind {
                NodeKind::Str(s) if !s.trim().is_empty() => {
                    spec.probe = Some(Probe::Command {
                        argv: vec!["/bin/sh".into(), "-c".into(), s.clone()],
                        timeout_secs: 0,
                    });
                }
                NodeKind::Seq(items) if !items.is_empty() => {
                    let argv: Vec<String> = check::strings("run", v, d)
                        .into_iter()
                        .map(|n| n.as_str().unwrap_or_default().to_string())
                        .collect();
                    if argv.len() == items.len() && !argv.iter().any(|a| a.contains('\0')) {
                        spec.probe = Some(Probe::Command {
                            argv,
                            timeout_secs: 0,
                        });
                    }
                }
                _ => d.err(
                    &v.span,
                    format!(
                        "run: expected a non-empty command string or argv list, found {}",
                        v.describe()
                    ),
                ),
            },
            "timeout" => timeout = duration_value("timeout", v, d),
            "deadline" => spec.deadline = duration_value("deadline", v, d),
            _ => {}
        }
    }
    match (&mut spec.probe, item.get("status")) {
        (Some(Probe::Http { status: s, .. }), _) => {
            if let Some(st) = status {
                *s = st;
            }
        }
        (_, Some(n)) => d.err(&n.span, "status is for http checks only"),
        _ => {}
    }
    match (&mut spec.probe, item.get("timeout")) {
        (Some(Probe::Command { timeout_secs, .. }), _) => {
            *timeout_secs = timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT).as_secs().max(1);
        }
        (_, Some(n)) => d.err(
            &n.span,
            "timeout is for run checks only (use deadline for how long a check is retried)",
        ),
        _ => {}
    }
    if complete && !absent && probes.is_empty() {
        d.err(
            &key.span,
            format!(
                "check {} has no probe: give one of unit, tcp, http or run",
                key.key_str()
            ),
        );
    }
    spec
}

/// Check one item as written (not merged), whatever its kind.
pub fn check_definition(kind: Kind, key: &Node, item: &Node, d: &mut Sink) {
    match kind {
        Kind::Files | Kind::Units => {
            file(kind, key, item, false, d);
        }
        Kind::Directories => {
            directory(key, item, d);
        }
        Kind::Users => {
            user(key, item, d);
        }
        Kind::Groups => {
            group(key, item, d);
        }
        Kind::Packages => {
            package(key, item, d);
        }
        Kind::Services => {
            service(key, item, false, d);
        }
        Kind::Commands => {
            command(key, item, false, d);
        }
        Kind::Checks => {
            health_check(key, item, false, d);
        }
    }
}
