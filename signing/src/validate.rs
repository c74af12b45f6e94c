//! Validation of a manifest, defined once and made by the writer (so a builder cannot write a
//! bundle a host refuses), by the reader (after the signature is checked) and again by the
//! applier before it changes anything (a signed manifest is trusted to be what the builder
//! meant, not to be well-formed). It enforces the mix-and-match and size defences (every blob
//! listed once, referenced and within limits) and the rules of [`spec`](crate::spec) on every
//! path, mode, name and digest: every name that reaches a command line is checked, so nothing
//! from the manifest can be taken for an option.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::entries::EntryList;
use crate::error::BundleError;
use crate::limits::Limits;
use crate::manifest::{Check, Entry, EntryKind, Manifest, Probe, FORMAT_VERSION};
use crate::spec::{self, STATE_DIR};

fn corrupt(msg: impl Into<String>) -> BundleError {
    BundleError::Corrupt(msg.into())
}

/// Checks everything about a manifest that does not depend on the host: format, times,
/// paths, modes, names, digests, blob list and limits.
pub fn validate_manifest(m: &Manifest, limits: &Limits) -> Result<(), BundleError> {
    validate_with(
        m,
        m.entries.len(),
        &mut m.entries.iter().map(|e| Ok(Cow::Borrowed(e))),
        limits,
    )
}

/// [`validate_manifest`] of `m` with `entries` as its entries (its own are not looked at):
/// one pass over them, holding none.
pub fn validate_entries(
    m: &Manifest,
    entries: &EntryList,
    limits: &Limits,
) -> Result<(), BundleError> {
    validate_with(m, entries.len(), &mut entries.iter(), limits)
}

fn validate_with<'a>(
    m: &Manifest,
    count: usize,
    entries: &mut dyn Iterator<Item = Result<Cow<'a, Entry>, BundleError>>,
    limits: &Limits,
) -> Result<(), BundleError> {
    if m.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "manifest format {} is not supported (this kiln reads format {FORMAT_VERSION})",
            m.format
        )));
    }
    parse_time("created", &m.created)?;
    parse_time("expires", &m.expires)?;
    if let Some(d) = &m.base.packages_digest {
        check_digest("base packages_digest", d)?;
    }

    let paths = count.saturating_add(m.templates.len());
    if paths > limits.max_entries {
        return Err(BundleError::Limit(format!(
            "{paths} entries and templates, more than the limit {}",
            limits.max_entries
        )));
    }
    if m.blobs.len() > limits.max_entries {
        return Err(BundleError::Limit(format!(
            "{} blobs, more than the limit {}",
            m.blobs.len(),
            limits.max_entries
        )));
    }

    // Blobs: valid digests, strictly ascending (so each is listed once, and found by binary
    // search: no map of them), within the limits.
    let mut total: u64 = 0;
    for (i, blob) in m.blobs.iter().enumerate() {
        check_digest("blob", &blob.digest)?;
        if let Some(prev) = i.checked_sub(1).and_then(|p| m.blobs.get(p)) {
            if prev.digest >= blob.digest {
                return Err(corrupt(format!(
                    "blob list not strictly sorted at {} (after {})",
                    blob.digest, prev.digest
                )));
            }
        }
        if blob.size > limits.max_blob_bytes {
            return Err(BundleError::Limit(format!(
                "blob {} is {} bytes, more than the limit {}",
                blob.digest, blob.size, limits.max_blob_bytes
            )));
        }
        total = total
            .checked_add(blob.size)
            .filter(|t| *t <= limits.max_total_bytes)
            .ok_or_else(|| {
                BundleError::Limit(format!(
                    "blobs total more than the limit of {} bytes",
                    limits.max_total_bytes
                ))
            })?;
    }

    let mut referenced = vec![false; m.blobs.len()];
    let mut reference = |what: &dyn Fn() -> String, digest: &str, size: Option<u64>| {
        let i = m
            .blobs
            .binary_search_by(|b| b.digest.as_str().cmp(digest))
            .map_err(|_| {
                corrupt(format!(
                    "{}: blob {digest:?} is not in the blob list",
                    what()
                ))
            })?;
        let listed = m.blobs[i].size;
        if let Some(size) = size {
            if size != listed {
                return Err(corrupt(format!(
                    "{}: size {size} differs from blob {digest} size {listed}",
                    what()
                )));
            }
        }
        referenced[i] = true;
        Ok(())
    };

    // The templates' paths, and the directories above them, by path: an entry may be neither
    // a template's path nor anything but a directory above one.
    let mut above_templates: HashMap<&str, &str> = HashMap::new();
    for t in &m.templates {
        check_path(&t.path)?;
        let mut dir = t.path.as_str();
        while let Some(i) = dir.rfind('/') {
            dir = &dir[..i];
            if dir.is_empty() {
                break;
            }
            above_templates.entry(dir).or_insert(&t.path);
        }
    }
    let templates: HashSet<&str> = m.templates.iter().map(|t| t.path.as_str()).collect();

    // Entries come sorted by path, so a path's ancestors among them came before it: the
    // entries that are a prefix of the current path are kept on a stack (by string prefix,
    // not only by path: byte order puts `/etc/a-b` between `/etc/a` and `/etc/a/x`, and the
    // paths starting with a prefix are together in the order).
    let mut stack: Vec<(String, Kind)> = Vec::new();
    let mut prev = String::new();
    for (i, e) in entries.enumerate() {
        let e = e?;
        check_path(&e.path)?;
        if i > 0 && e.path <= prev {
            return Err(corrupt(if e.path == prev {
                format!("duplicate path {:?}", e.path)
            } else {
                format!("entries not sorted by path: {:?} after {prev:?}", e.path)
            }));
        }
        prev.clone_from(&e.path);
        if spec::is_under(&e.path, STATE_DIR) {
            return Err(corrupt(format!(
                "{}: {STATE_DIR} is kiln's own state, not bundle content",
                e.path
            )));
        }
        if templates.contains(e.path.as_str()) {
            return Err(corrupt(format!("duplicate path {:?} (template)", e.path)));
        }
        let at = |x: String| corrupt(format!("{}: {x}", e.path));
        match &e.kind {
            EntryKind::File {
                mode,
                owner,
                group,
                digest,
                size,
                restart,
                reload,
            } => {
                check_mode(&e.path, mode)?;
                check_owner("owner", owner).map_err(at)?;
                check_owner("group", group).map_err(at)?;
                reference(&|| format!("file {:?}", e.path), digest, Some(*size))?;
                for s in restart.iter().chain(reload) {
                    check_unit_name(s).map_err(at)?;
                }
            }
            EntryKind::Directory { mode, owner, group } => {
                check_mode(&e.path, mode)?;
                check_owner("owner", owner).map_err(at)?;
                check_owner("group", group).map_err(at)?;
            }
            EntryKind::Symlink { target } => {
                if let Some(why) = spec::symlink_target_problem(target) {
                    return Err(corrupt(format!("symlink {:?}: {why}", e.path)));
                }
            }
            EntryKind::Absent => {}
        }
        let kind = Kind::of(&e.kind);
        // Nothing may live below a path that is a file, a symlink or absent: below a symlink
        // it would be written through the bundle's own link (a pivot); below a file or absent
        // it cannot exist. An absent path may be below another absent one.
        while stack
            .last()
            .is_some_and(|(p, _)| !e.path.starts_with(p.as_str()))
        {
            stack.pop();
        }
        let parent = stack.iter().rev().find(|(p, k)| {
            e.path.as_bytes().get(p.len()) == Some(&b'/')
                && !(*k == Kind::Directory || (*k == Kind::Absent && kind == Kind::Absent))
        });
        if let Some((p, k)) = parent {
            return Err(corrupt(format!(
                "{}: its parent {p} is {} in the same bundle",
                e.path,
                k.name()
            )));
        }
        if kind != Kind::Directory {
            if let Some(t) = above_templates.get(e.path.as_str()) {
                // Likewise a template (often a secret) below the bundle's own symlink, file or
                // absent.
                return Err(corrupt(format!(
                    "{t}: its parent {} is {} in the same bundle",
                    e.path,
                    kind.name()
                )));
            }
        }
        stack.push((e.path.clone(), kind));
    }
    for t in &m.templates {
        if spec::is_under(&t.path, STATE_DIR) {
            return Err(corrupt(format!(
                "{}: {STATE_DIR} is kiln's own state",
                t.path
            )));
        }
        check_mode(&t.path, &t.mode)?;
        let at = |x: String| corrupt(format!("{}: {x}", t.path));
        check_owner("owner", &t.owner).map_err(at)?;
        check_owner("group", &t.group).map_err(at)?;
        for s in t.restart.iter().chain(&t.reload) {
            check_unit_name(s).map_err(at)?;
        }
        reference(&|| format!("template {:?}", t.path), &t.digest, None)?;
    }
    let mut seen = HashSet::with_capacity(m.templates.len());
    for t in &m.templates {
        if !seen.insert(t.path.as_str()) {
            return Err(corrupt(format!("duplicate path {:?} (template)", t.path)));
        }
    }
    // Its names become URLs the host requests.
    crate::dynamic::check(m).map_err(corrupt)?;

    let mut names = HashSet::new();
    for p in &m.packages {
        if !spec::is_package_name(&p.name) {
            return Err(corrupt(format!(
                "package name {:?} is not a Debian package name",
                p.name
            )));
        }
        if !names.insert(p.name.as_str()) {
            return Err(corrupt(format!("package {} listed twice", p.name)));
        }
        if let Some(v) = &p.version {
            if !spec::is_package_version(v) {
                return Err(corrupt(format!(
                    "package {}: version {v:?} is not a Debian version",
                    p.name
                )));
            }
        }
        match (&p.digest, p.size) {
            (Some(d), size) => reference(&|| format!("package {:?}", p.name), d, size)?,
            (None, Some(_)) => {
                return Err(corrupt(format!(
                    "package {:?} has a size but no digest",
                    p.name
                )))
            }
            (None, None) => {}
        }
    }
    if let Some((b, _)) = m.blobs.iter().zip(&referenced).find(|(_, used)| !**used) {
        return Err(corrupt(format!(
            "blob {} is listed but nothing uses it",
            b.digest
        )));
    }
    check_accounts(m).map_err(corrupt)?;
    check_services_checks_commands(m).map_err(corrupt)?;
    Ok(())
}

/// What an entry makes of its path, as far as the paths below it care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Symlink,
    Directory,
    Absent,
}

impl Kind {
    fn of(k: &EntryKind) -> Kind {
        match k {
            EntryKind::File { .. } => Kind::File,
            EntryKind::Symlink { .. } => Kind::Symlink,
            EntryKind::Directory { .. } => Kind::Directory,
            EntryKind::Absent => Kind::Absent,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Symlink => "a symlink",
            Kind::Directory => "a directory",
            Kind::Absent => "absent",
        }
    }
}

fn check_account_name(what: &str, n: &str) -> Result<(), String> {
    if spec::is_account_name(n) {
        Ok(())
    } else {
        Err(format!(
            "{what} name {n:?} does not match {}",
            spec::ACCOUNT_NAME_PATTERN
        ))
    }
}

/// Owner fields: an account name or a number.
fn check_owner(what: &str, n: &str) -> Result<(), String> {
    if spec::is_owner(n) {
        Ok(())
    } else {
        Err(format!(
            "{what} {n:?} is neither an account name nor a uid/gid"
        ))
    }
}

fn check_unit_name(n: &str) -> Result<(), String> {
    if spec::is_unit_name(n) {
        Ok(())
    } else {
        Err(format!("service name {n:?} is not a systemd unit name"))
    }
}

/// A passwd field (comment, home, shell): no `:` or newline, which would corrupt /etc/passwd.
fn check_passwd_field(what: &str, v: &str) -> Result<(), String> {
    if v.contains([':', '\n', '\0']) || v.starts_with('-') {
        return Err(format!(
            "{what} {v:?} contains ':', a newline or NUL, or starts with '-'"
        ));
    }
    Ok(())
}

fn check_accounts(m: &Manifest) -> Result<(), String> {
    let mut names = HashSet::new();
    for g in &m.groups {
        check_account_name("group", &g.name)?;
        if !names.insert(g.name.as_str()) {
            return Err(format!("group {} listed twice", g.name));
        }
    }
    let mut names = HashSet::new();
    for u in &m.users {
        check_account_name("user", &u.name)?;
        if !names.insert(u.name.as_str()) {
            return Err(format!("user {} listed twice", u.name));
        }
        if let Some(g) = &u.group {
            check_owner("primary group of", g).map_err(|x| format!("user {}: {x}", u.name))?;
        }
        for g in &u.groups {
            check_account_name("group", g).map_err(|x| format!("user {}: {x}", u.name))?;
        }
        for (what, v) in [
            ("home", &u.home),
            ("shell", &u.shell),
            ("comment", &u.comment),
        ] {
            if let Some(v) = v {
                check_passwd_field(what, v).map_err(|x| format!("user {}: {x}", u.name))?;
                if what != "comment" {
                    spec::check_path(v).map_err(|x| format!("user {} {what}: {x}", u.name))?;
                }
            }
        }
        for k in &u.authorized_keys {
            if k.contains(['\n', '\r', '\0']) {
                return Err(format!("user {}: an authorized key spans lines", u.name));
            }
        }
    }
    let mut names = HashSet::new();
    for a in &m.system_accounts {
        check_account_name("system account", a)?;
        if !names.insert(a.as_str()) {
            return Err(format!("system account {a} listed twice"));
        }
    }
    Ok(())
}

fn check_services_checks_commands(m: &Manifest) -> Result<(), String> {
    let mut names = HashSet::new();
    for s in &m.services {
        check_unit_name(&s.name)?;
        if !names.insert(s.name.as_str()) {
            return Err(format!("service {} listed twice", s.name));
        }
    }
    let mut names = HashSet::new();
    for c in &m.checks {
        check_health_check(c)?;
        if !names.insert(c.name.as_str()) {
            return Err(format!("check {} listed twice", c.name));
        }
    }
    let mut names = HashSet::new();
    for c in &m.commands {
        if !names.insert(c.name.as_str()) {
            return Err(format!("command {} listed twice", c.name));
        }
        if c.argv.first().is_none_or(|a| a.is_empty()) {
            return Err(format!("command {}: empty argv", c.name));
        }
        if c.argv.iter().any(|a| a.contains('\0')) {
            return Err(format!("command {}: NUL in argv", c.name));
        }
        if c.timeout_secs == 0 || c.timeout_secs > 24 * 3600 {
            return Err(format!(
                "command {}: timeout_secs must be between 1 and 86400",
                c.name
            ));
        }
        if let Some(p) = &c.creates {
            spec::check_path(p).map_err(|x| format!("command {} creates: {x}", c.name))?;
        }
    }
    Ok(())
}

/// A health check: a usable name, a probe whose target cannot be taken for an option, a
/// deadline of at most an hour.
fn check_health_check(c: &Check) -> Result<(), String> {
    if !spec::is_command_name(&c.name) {
        return Err(format!(
            "check name {:?} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}",
            c.name
        ));
    }
    if c.deadline_secs == 0 || c.deadline_secs > 3600 {
        return Err(format!(
            "check {}: deadline_secs must be between 1 and 3600",
            c.name
        ));
    }
    let bad = |what: &str| Err(format!("check {}: {what}", c.name));
    match &c.probe {
        Probe::Unit { unit } => check_unit_name(unit).map_err(|x| format!("check {}: {x}", c.name)),
        Probe::Tcp { address } => match address.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty()
                    && !host.starts_with('-')
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
                    && port.parse::<u16>().is_ok_and(|p| p > 0) =>
            {
                Ok(())
            }
            _ => bad(&format!("tcp address {address:?} is not host:port")),
        },
        Probe::Http { url, status } => {
            if !url.starts_with("http://") || url.len() > 2048 || url.contains(char::is_whitespace)
            {
                return bad(&format!("http URL {url:?} is not an http:// URL"));
            }
            if !(100..=599).contains(status) {
                return bad(&format!("http status {status} is not between 100 and 599"));
            }
            Ok(())
        }
        Probe::Command { argv, timeout_secs } => {
            if argv.first().is_none_or(|a| a.is_empty()) || argv.iter().any(|a| a.contains('\0')) {
                return bad("empty argv or NUL in it");
            }
            if *timeout_secs == 0 || *timeout_secs > 3600 {
                return bad("timeout_secs must be between 1 and 3600");
            }
            Ok(())
        }
    }
}

/// An RFC 3339 UTC time as the manifest writes it: `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub(crate) fn parse_time(field: &str, value: &str) -> Result<SystemTime, BundleError> {
    let bad = || {
        corrupt(format!(
            "{field} {value:?} is not an RFC 3339 UTC time (…Z)"
        ))
    };
    let b = value.as_bytes();
    let shape_ok = b.len() >= 20
        && b.iter().enumerate().take(19).all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
        && match &b[19..] {
            [b'Z'] => true,
            [b'.', frac @ .., b'Z'] => {
                (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        };
    if !shape_ok {
        return Err(bad());
    }
    humantime::parse_rfc3339(value).map_err(|_| bad())
}

/// [`spec::path_problem`], as the reader says it.
pub(crate) fn check_path(path: &str) -> Result<(), BundleError> {
    spec::check_path(path).map_err(corrupt)
}

/// [`spec::parse_mode`], naming the path.
pub(crate) fn check_mode(path: &str, mode: &str) -> Result<(), BundleError> {
    spec::parse_mode(mode)
        .map(|_| ())
        .map_err(|e| corrupt(format!("{path}: {e}")))
}

/// [`spec::check_digest`].
pub(crate) fn check_digest(what: &str, digest: &str) -> Result<(), BundleError> {
    spec::check_digest(what, digest).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Command, Entry, User};
    use crate::testutil::{manifest_for, noise};

    /// Rules the applier alone used to make (a writer wrote such bundles, a host refused them
    /// at apply time) are now the writer's and the reader's too; and the one account-name rule
    /// takes a Samba machine account, as useradd does.
    #[test]
    fn what_a_host_refuses_no_writer_writes() {
        let blobs: Vec<Vec<u8>> = (0..4).map(|i| noise(i, 100 + i as usize)).collect();
        let limits = Limits::default();
        let refused = |edit: &dyn Fn(&mut Manifest), why: &str| {
            let mut m = manifest_for(&blobs);
            edit(&mut m);
            m.entries.sort_by(|a, b| a.path.cmp(&b.path));
            match validate_manifest(&m, &limits) {
                Err(BundleError::Corrupt(msg)) => assert!(msg.contains(why), "{why}: {msg}"),
                other => panic!("{why}: {other:?}"),
            }
        };
        assert!(validate_manifest(&manifest_for(&blobs), &limits).is_ok());
        refused(
            &|m| m.services[0].name = "--now".into(),
            "service name \"--now\" is not a systemd unit name",
        );
        refused(
            &|m| m.entries[1].path = "/var/lib/kiln/state.json".into(),
            "/var/lib/kiln is kiln's own state",
        );
        refused(
            &|m| {
                if let EntryKind::File { mode, .. } = &mut m.entries[1].kind {
                    *mode = "04755".into();
                }
            },
            "mode \"04755\" is not an octal mode",
        );
        refused(
            &|m| {
                if let EntryKind::File { owner, .. } = &mut m.entries[1].kind {
                    *owner = "-root".into();
                }
            },
            "owner \"-root\" is neither",
        );
        refused(
            &|m| m.groups[0].name = "--help".into(),
            "group name \"--help\" does not match",
        );
        refused(
            &|m| m.packages[0].version = Some("latest".into()),
            "version \"latest\" is not a Debian version",
        );
        refused(
            &|m| {
                m.entries.push(Entry {
                    path: "/etc/web/index.html".into(),
                    kind: EntryKind::Absent,
                })
            },
            "its parent /etc/web is a symlink in the same bundle",
        );
        refused(
            &|m| {
                m.commands.push(Command {
                    name: "x".into(),
                    argv: vec![],
                    timeout_secs: 10,
                    creates: None,
                })
            },
            "command x: empty argv",
        );
        let mut m = manifest_for(&blobs);
        m.users.push(User {
            name: "host$".into(),
            uid: None,
            group: Some("machines$".into()),
            groups: vec![],
            home: Some("/nonexistent".into()),
            shell: Some("/usr/sbin/nologin".into()),
            comment: None,
            system: true,
            create_home: false,
            authorized_keys: vec![],
        });
        m.groups[0].name = "machines$".into();
        m.templates[0].group = "machines$".into();
        assert!(validate_manifest(&m, &limits).is_ok());
    }

    #[test]
    fn paths() {
        for ok in [
            "/etc",
            "/etc/nginx/nginx.conf",
            "/a b/.hidden",
            "/x/...",
            "/x/..y",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "etc",
            "./etc",
            "/etc/",
            "//etc",
            "/etc//x",
            "/etc/./x",
            "/etc/../x",
            "/..",
            "/.",
            "/a\0b",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::Corrupt(_))),
                "{bad:?}"
            );
        }
        assert!(check_path(&format!("/{}", "a".repeat(256))).is_err());
        assert!(check_path(&format!("/{}", "a/".repeat(2100))).is_err());
    }

    #[test]
    fn modes_digests_times() {
        for ok in ["644", "0644", "4755", "000"] {
            assert!(check_mode("/x", ok).is_ok());
        }
        for bad in ["", "64", "06444", "0o644", "0648", "rw-", "+644"] {
            assert!(check_mode("/x", bad).is_err(), "{bad}");
        }
        assert!(check_digest("b", &"a".repeat(64)).is_ok());
        assert!(check_digest("b", &"A".repeat(64)).is_err());
        assert!(check_digest("b", &"a".repeat(63)).is_err());
        assert!(check_digest("b", &"g".repeat(64)).is_err());
        assert!(parse_time("t", "2024-01-01T00:00:00Z").is_ok());
        assert!(parse_time("t", "2024-01-01T00:00:00.5Z").is_ok());
        for bad in [
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01 00:00:00Z",
            "yesterday",
            "",
            "2024-01-01T00:00:00ZZ",
            "2024-13-01T00:00:00Z",
            "1969-01-01T00:00:00Z",
        ] {
            assert!(parse_time("t", bad).is_err(), "{bad}");
        }
    }

    /// The parent rule holds in one pass over sorted entries, also where byte order puts a
    /// sibling between a path and its children (`-` sorts before `/`); unsorted entries are
    /// refused.
    #[test]
    fn parents_are_checked_in_one_sorted_pass() {
        let blobs: Vec<Vec<u8>> = (0..4).map(|i| noise(i, 100 + i as usize)).collect();
        let limits = Limits::default();
        let with = |extra: &[(&str, EntryKind)], sort: bool| {
            let mut m = manifest_for(&blobs);
            for (p, k) in extra {
                m.entries.push(Entry {
                    path: p.to_string(),
                    kind: k.clone(),
                });
            }
            if sort {
                m.entries.sort_by(|a, b| a.path.cmp(&b.path));
            }
            validate_manifest(&m, &limits).map_err(|e| e.to_string())
        };
        let link = || EntryKind::Symlink {
            target: "/x".into(),
        };
        let dir = || EntryKind::Directory {
            mode: "0755".into(),
            owner: "root".into(),
            group: "root".into(),
        };
        let err = with(
            &[
                ("/opt/a", link()),
                ("/opt/a-b", dir()),
                ("/opt/a.c", dir()),
                ("/opt/a/x", EntryKind::Absent),
            ],
            true,
        )
        .unwrap_err();
        assert!(
            err.contains("/opt/a/x: its parent /opt/a is a symlink in the same bundle"),
            "{err}"
        );
        with(
            &[
                ("/opt/a", dir()),
                ("/opt/a-b", link()),
                ("/opt/a/x", link()),
                ("/opt/a/y", EntryKind::Absent),
                ("/opt/a/y/z", EntryKind::Absent),
            ],
            true,
        )
        .unwrap();
        let err = with(&[("/zz/a", dir()), ("/zz/0", dir())], false).unwrap_err();
        assert!(
            err.contains("entries not sorted by path: \"/zz/0\" after \"/zz/a\""),
            "{err}"
        );
    }
}
