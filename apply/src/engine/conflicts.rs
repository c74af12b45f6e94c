//! Conflicts between the bundle and the root that the phases would otherwise only meet half-way,
//! with the root already changed: looked for read-only before anything changes (and by a dry
//! run), so that such a bundle is refused with the root exactly as it was. Each conflict is one
//! line naming the path, account or package.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use kiln_signing::{EntryKind, Package};
use nix::fcntl::{self, OFlag};
use nix::libc;
use nix::sys::stat::Mode;

use super::passwd::Accounts;
use super::process::Program;
use super::{ApplyError, Ctx};
use crate::fsroot::{self, Kind, Root};

/// Where the `.deb` files of the bundle are to be read from for their check.
pub(crate) enum Debs {
    /// In this bundle's staging area on the root (an apply).
    Staged,
    /// Copies outside the root, by digest (a dry run, which stages nothing).
    Copies(HashMap<String, File>),
}

/// Every conflict of the kinds below; `Err` only when the check itself could not be made.
pub(crate) fn find(ctx: &Ctx, have: &Accounts, debs: &Debs) -> Result<Vec<String>, ApplyError> {
    let mut out = directories(ctx)?;
    out.extend(accounts(ctx, have));
    out.extend(homes(ctx, have)?);
    out.extend(templates(ctx));
    out.extend(packages(ctx, debs)?);
    Ok(out)
}

/// What a directory the bundle needs is in the root.
#[derive(Debug, PartialEq, Eq)]
enum DirState {
    /// A directory, or a symlink that leads to one inside the root (followed, as every path is:
    /// `/lib -> usr/lib` of a merged-/usr base, `/var/run -> /run`).
    Dir,
    /// Missing: made when needed.
    Missing,
    /// Something that cannot become one without replacing it; why.
    Not(String),
}

fn dir_state(root: &Root, path: &str) -> DirState {
    let err = match root.open_dir(path) {
        Ok(_) => return DirState::Dir,
        Err(e) => e,
    };
    let lstat = match root.parent(path, false) {
        Ok(Some(p)) => p.lstat().map(|m| m.map(|m| (m, p))),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let link = |p: &fsroot::Parent| {
        p.readlink()
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "?".into())
    };
    match (err.raw_os_error(), lstat) {
        (Some(libc::ENOENT), Ok(None)) => DirState::Missing,
        (Some(libc::ELOOP), Ok(Some((m, p)))) if m.kind == Kind::Symlink => {
            DirState::Not(format!("is a symlink (-> {}) in a loop", link(&p)))
        }
        (_, Ok(Some((m, p)))) => DirState::Not(match m.kind {
            Kind::File => "is a regular file".into(),
            Kind::Symlink => format!(
                "is a symlink (-> {}) that does not lead to a directory",
                link(&p)
            ),
            Kind::Other => "is a device, fifo or socket".into(),
            Kind::Dir => format!("cannot be opened: {err}"),
        }),
        (_, _) => DirState::Not(format!("cannot be opened: {err}")),
    }
}

/// Checks that every directory above paths is, or can be made, a directory, each once.
struct DirWalk<'a> {
    root: &'a Root,
    /// Paths the bundle lists as directories: a conflict there is reported by its own entry.
    listed: HashSet<String>,
    /// Directories looked at: whether each is one.
    seen: HashMap<String, bool>,
    out: Vec<String>,
}

impl<'a> DirWalk<'a> {
    /// `listed`: the bundle's directories.
    fn new(ctx: &'a Ctx, listed: HashSet<String>) -> DirWalk<'a> {
        DirWalk {
            root: ctx.root,
            listed,
            seen: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// A walk over the bundle's directories, read in a pass of its own.
    fn of(ctx: &'a Ctx) -> Result<DirWalk<'a>, ApplyError> {
        let mut listed = HashSet::new();
        for e in ctx.entries() {
            let e = e?;
            if matches!(e.kind, EntryKind::Directory { .. }) {
                listed.insert(e.into_owned().path);
            }
        }
        Ok(DirWalk::new(ctx, listed))
    }

    /// `dir` and every directory above it, from the top; `what` needs them (for the message).
    fn dir(&mut self, dir: &str, what: &str) {
        let ends = dir
            .match_indices('/')
            .map(|(i, _)| i)
            .filter(|i| *i > 0)
            .chain([dir.len()]);
        for end in ends {
            let d = &dir[..end];
            match self.seen.get(d) {
                Some(true) => continue,
                Some(false) => return,
                None => {}
            }
            let state = dir_state(self.root, d);
            self.seen.insert(d.to_string(), state == DirState::Dir);
            match state {
                DirState::Dir => {}
                DirState::Missing => return,
                DirState::Not(why) => {
                    if !self.listed.contains(d) {
                        self.out.push(format!(
                            "{d}: {why} in the root, where the bundle needs a directory (for {what})"
                        ));
                    }
                    return;
                }
            }
        }
    }

    /// The directories above `path`.
    fn above(&mut self, path: &str, what: &str) {
        if let Some(i) = path.rfind('/') {
            self.dir(&path[..i], what);
        }
    }
}

/// (a) The directories above the bundle's files, directories and symlinks: a regular file, a
/// dangling symlink or one to a file there would stop the apply half-way.
fn directories(ctx: &Ctx) -> Result<Vec<String>, ApplyError> {
    // Each directory once, named after the first path that needs it; and the bundle's own
    // directories, in the same pass.
    let mut parents: BTreeMap<String, String> = BTreeMap::new();
    let mut listed = HashSet::new();
    for e in ctx.entries() {
        let e = e?;
        match e.kind {
            EntryKind::Absent => continue,
            EntryKind::Directory { .. } => {
                listed.insert(e.path.clone());
            }
            _ => {}
        }
        if let Some(i) = e.path.rfind('/') {
            if !parents.contains_key(&e.path[..i]) {
                parents.insert(e.path[..i].to_string(), e.path.clone());
            }
        }
    }
    let mut walk = DirWalk::new(ctx, listed);
    for (dir, path) in parents {
        walk.dir(&dir, &path);
    }
    Ok(walk.out)
}

/// (b) uid 0 and gid 0 are root's alone, and the shadow tools refuse a uid or gid that is taken
/// (they would fail half-way through the accounts): a bundle user or group asking for either
/// is refused, and so is a bundle that adds or changes accounts on a root that already has a
/// second uid 0 or gid 0 account (a base the bundle was not built for, or a backdoor that the
/// first boot must not build on).
fn accounts(ctx: &Ctx, have: &Accounts) -> Vec<String> {
    let m = ctx.manifest;
    let mut out = Vec::new();
    if m.users.is_empty() && m.groups.is_empty() {
        return out;
    }
    let zero_users: Vec<&str> = have
        .users
        .iter()
        .filter(|u| u.uid == 0)
        .map(|u| u.name.as_str())
        .collect();
    if zero_users.len() > 1 {
        out.push(format!(
            "the root has {} users with uid 0 ({}); only root may have it, and the bundle adds or changes accounts",
            zero_users.len(),
            zero_users.join(", ")
        ));
    }
    let zero_groups: Vec<&str> = have
        .groups
        .iter()
        .filter(|g| g.gid == 0)
        .map(|g| g.name.as_str())
        .collect();
    if zero_groups.len() > 1 {
        out.push(format!(
            "the root has {} groups with gid 0 ({}); only root may have it, and the bundle adds or changes accounts",
            zero_groups.len(),
            zero_groups.join(", ")
        ));
    }

    let mut asked: BTreeMap<u32, &str> = BTreeMap::new();
    for g in &m.groups {
        let Some(gid) = g.gid else { continue };
        if gid == 0 && g.name != "root" {
            out.push(format!(
                "group {}: asks for gid 0, which is root's group alone",
                g.name
            ));
            continue;
        }
        if let Some(other) = asked.insert(gid, &g.name) {
            out.push(format!(
                "group {}: gid {gid} is asked for by group {other} of the bundle too",
                g.name
            ));
        }
        if have.group(&g.name).is_none() {
            if let Some(other) = have.groups.iter().find(|o| o.gid == gid) {
                out.push(format!(
                    "group {}: gid {gid} is taken by group {} in the root",
                    g.name, other.name
                ));
            }
        }
    }
    let mut asked: BTreeMap<u32, &str> = BTreeMap::new();
    for u in &m.users {
        if u.name != "root" && have.user(&u.name).is_some_and(|e| e.uid == 0) {
            out.push(format!(
                "user {}: has uid 0 in the root, which is root's alone",
                u.name
            ));
        }
        let Some(uid) = u.uid else { continue };
        if uid == 0 && u.name != "root" {
            out.push(format!(
                "user {}: asks for uid 0, which is root's alone",
                u.name
            ));
            continue;
        }
        if let Some(other) = asked.insert(uid, &u.name) {
            out.push(format!(
                "user {}: uid {uid} is asked for by user {other} of the bundle too",
                u.name
            ));
        }
        if have.user(&u.name).is_none() {
            if let Some(other) = have.users.iter().find(|o| o.uid == uid) {
                out.push(format!(
                    "user {}: uid {uid} is taken by user {} in the root",
                    u.name, other.name
                ));
            }
        }
    }
    out
}

/// Where `useradd` puts homes by default (`HOME=` of the root's /etc/default/useradd).
fn home_base(root: &Root) -> String {
    root.read_text("/etc/default/useradd", 64 * 1024)
        .ok()
        .flatten()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("HOME=")
                    .map(|v| v.trim().trim_matches('"').trim_end_matches('/').to_string())
            })
        })
        .filter(|h| h.starts_with('/') && !h.split('/').any(|c| c == ".."))
        .unwrap_or_else(|| "/home".into())
}

/// (c) The home and `~/.ssh` of every user given authorized_keys: a symlink at either would
/// have the keys (and the owner change of `.ssh`) go through it, to another user's `.ssh` or
/// anywhere; something that is not a directory there would stop the apply half-way.
fn homes(ctx: &Ctx, have: &Accounts) -> Result<Vec<String>, ApplyError> {
    let mut out = Vec::new();
    if ctx
        .manifest
        .users
        .iter()
        .all(|u| u.authorized_keys.is_empty())
    {
        return Ok(out);
    }
    let mut walk = DirWalk::of(ctx)?;
    let mut base = None;
    for u in ctx.manifest.users.iter() {
        if u.authorized_keys.is_empty() {
            continue;
        }
        let home = match (&u.home, have.user(&u.name)) {
            (Some(h), _) => h.clone(),
            (None, Some(e)) => e.home.clone(),
            (None, None) => format!(
                "{}/{}",
                base.get_or_insert_with(|| home_base(ctx.root)),
                u.name
            ),
        };
        let given = home.as_str();
        let home = given.trim_end_matches('/');
        if !home.starts_with('/') || home.split('/').any(|c| c == "..") {
            out.push(format!(
                "user {}: home {given:?} in the root cannot hold authorized_keys",
                u.name
            ));
            continue;
        }
        walk.above(home, &format!("the home of user {}", u.name));
        let ssh = format!("{home}/.ssh");
        let keys = format!("{ssh}/authorized_keys");
        if home_dir(ctx.root, &u.name, "home", home, &mut out)
            && home_dir(ctx.root, &u.name, ".ssh", &ssh, &mut out)
            && lstat(ctx.root, &keys).is_some_and(|(k, _)| k == Kind::Dir)
        {
            out.push(format!(
                "user {}: {keys} is a directory in the root",
                u.name
            ));
        }
    }
    out.extend(walk.out);
    Ok(out)
}

/// Whether the home (or `.ssh`) at `path` is a directory; a conflict in `out` if it is something
/// else, a symlink included.
fn home_dir(root: &Root, user: &str, what: &str, path: &str, out: &mut Vec<String>) -> bool {
    match lstat(root, path) {
        None => false,
        Some((Kind::Dir, _)) => true,
        Some((Kind::Symlink, target)) => {
            out.push(format!(
                "user {user}: {what} {path} is a symlink (-> {target}) in the root; authorized_keys would be written through it"
            ));
            false
        }
        Some(_) => {
            out.push(format!(
                "user {user}: {what} {path} is not a directory in the root"
            ));
            false
        }
    }
}

/// What is at `path` (not following its last component), with a symlink's target.
fn lstat(root: &Root, path: &str) -> Option<(Kind, String)> {
    let parent = root.parent(path, false).ok()??;
    let m = parent.lstat().ok()??;
    let target = if m.kind == Kind::Symlink {
        parent
            .readlink()
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Some((m.kind, target))
}

/// (e) Dynamic templates (often secrets) are never written through a symlink: none may be on
/// the way to one, from the root down, nor at the target itself.
pub(crate) fn templates(ctx: &Ctx) -> Vec<String> {
    let mut out = Vec::new();
    for t in &ctx.manifest.templates {
        if let Some(why) = template_path(ctx.root, &t.path) {
            out.push(format!("dynamic template {}: {why}", t.path));
        }
    }
    out
}

fn template_path(root: &Root, path: &str) -> Option<String> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut dir: OwnedFd = match fsroot::dup_cloexec(root.fd()) {
        Ok(fd) => fd,
        Err(e) => return Some(format!("cannot open the root: {e}")),
    };
    for (i, comp) in comps.iter().enumerate() {
        let at = format!("/{}", comps[..=i].join("/"));
        let last = i + 1 == comps.len();
        let m = match fsroot::lstat_at(dir.as_fd(), comp) {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(e) => return Some(format!("{at}: {e}")),
        };
        match m.kind {
            Kind::Symlink => {
                let target = fcntl::readlinkat(&dir, *comp)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Some(if last {
                    format!(
                        "is a symlink (-> {target}) in the root; it would be written through it"
                    )
                } else {
                    format!(
                        "{at} is a symlink (-> {target}) in the root; the template would be written through it"
                    )
                });
            }
            Kind::Dir if last => return Some("is a directory in the root".into()),
            Kind::Dir => {}
            _ if last => return None,
            _ => return Some(format!("{at} is not a directory in the root")),
        }
        dir = match fcntl::openat(
            &dir,
            *comp,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => return Some(format!("{at}: {e}")),
        };
    }
    None
}

/// Time `dpkg-deb -f` gets to read a package's control fields.
const DPKG_DEB_TIMEOUT: Duration = Duration::from_secs(120);

/// (d) Every `.deb` of the bundle is what the manifest says (its control's Package, Version and
/// Architecture), asked of the host's `dpkg-deb -f` reading the blob on its stdin: nothing of
/// the bundle runs, and a mismatch is found before dpkg installs anything.
fn packages(ctx: &Ctx, debs: &Debs) -> Result<Vec<String>, ApplyError> {
    let mut out = Vec::new();
    for p in &ctx.manifest.packages {
        let Some(digest) = p.digest.as_deref() else {
            continue;
        };
        let err = |e: std::io::Error| {
            ApplyError::step("preflight", &format!("the .deb of package {}", p.name), e)
        };
        let fd: OwnedFd = match debs {
            Debs::Staged => ctx.root.open_read(&ctx.staged_blob(digest)).map_err(err)?,
            Debs::Copies(files) => files
                .get(digest)
                .ok_or_else(|| err(std::io::Error::other("not copied")))?
                .try_clone()
                .map_err(err)?,
        }
        .into();
        let program = Program::new(
            &[
                "dpkg-deb",
                "-f",
                "/dev/stdin",
                "Package",
                "Version",
                "Architecture",
            ],
            DPKG_DEB_TIMEOUT,
        )
        .stdin(fd);
        let done = program
            .run()
            .map_err(|e| err(std::io::Error::other(format!("running dpkg-deb: {e}"))))?;
        if !done.success() {
            out.push(format!(
                "package {}: its .deb is not a Debian package (dpkg-deb: {})",
                p.name,
                done.last_line()
            ));
            continue;
        }
        out.extend(deb_mismatch(p, &done.output));
    }
    Ok(out)
}

/// How the control fields `dpkg-deb -f` printed differ from the manifest's package.
fn deb_mismatch(p: &Package, fields: &str) -> Option<String> {
    let field = |name: &str| {
        fields.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    };
    let mut diffs = Vec::new();
    let mut differs = |what: &str, want: &str, got: Option<&str>| {
        if got != Some(want) {
            diffs.push(format!(
                "{what} {:?} where the manifest says {want:?}",
                got.unwrap_or("(none)")
            ));
        }
    };
    differs("Package", &p.name, field("Package"));
    if let Some(v) = &p.version {
        differs("Version", v, field("Version"));
    }
    if let Some(a) = &p.arch {
        differs("Architecture", a, field("Architecture"));
    }
    (!diffs.is_empty()).then(|| format!("package {}: its .deb says {}", p.name, diffs.join(", ")))
}

/// Copies of the bundle's `.deb` blobs outside the root, for a dry run's checks: each read
/// once from the bundle as `blobs` streams it, into an unnamed file of the host's temporary
/// directory.
pub(crate) struct DebCopies {
    wanted: BTreeSet<String>,
    files: HashMap<String, File>,
}

impl DebCopies {
    pub(crate) fn new(ctx: &Ctx) -> DebCopies {
        DebCopies {
            wanted: ctx
                .manifest
                .packages
                .iter()
                .filter_map(|p| p.digest.clone())
                .collect(),
            files: HashMap::new(),
        }
    }

    /// Takes the blob `digest` from `reader` if it is a package's; drains nothing otherwise.
    pub(crate) fn take(
        &mut self,
        digest: &str,
        reader: &mut dyn std::io::Read,
    ) -> std::io::Result<bool> {
        if !self.wanted.contains(digest) {
            return Ok(false);
        }
        let dir = std::env::temp_dir();
        let fd = fcntl::open(
            &dir,
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| {
            std::io::Error::other(format!(
                "a temporary file in {} for the .deb {digest}: {e}",
                dir.display()
            ))
        })?;
        let mut f = File::from(fd);
        std::io::copy(reader, &mut f)?;
        self.files.insert(digest.to_string(), f);
        Ok(true)
    }

    pub(crate) fn into_debs(self) -> Debs {
        Debs::Copies(self.files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: Option<&str>, arch: Option<&str>) -> Package {
        Package {
            name: name.into(),
            version: version.map(Into::into),
            arch: arch.map(Into::into),
            digest: Some("0".repeat(64)),
            size: None,
        }
    }

    #[test]
    fn deb_fields_must_match_the_manifest() {
        let fields = "Package: kiln-hello\nVersion: 1:1.0-1\nArchitecture: all\n";
        assert_eq!(
            deb_mismatch(&pkg("kiln-hello", Some("1:1.0-1"), Some("all")), fields),
            None
        );
        assert_eq!(deb_mismatch(&pkg("kiln-hello", None, None), fields), None);
        assert_eq!(
            deb_mismatch(&pkg("kiln-hello", Some("1.0-1"), Some("amd64")), fields).unwrap(),
            "package kiln-hello: its .deb says Version \"1:1.0-1\" where the manifest says \"1.0-1\", Architecture \"all\" where the manifest says \"amd64\""
        );
        assert!(deb_mismatch(&pkg("other", None, None), fields)
            .unwrap()
            .contains("Package \"kiln-hello\" where the manifest says \"other\""));
        assert!(deb_mismatch(&pkg("x", None, None), "")
            .unwrap()
            .contains("Package \"(none)\""));
    }

    #[test]
    fn directories_above_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc/real")).unwrap();
        std::fs::write(d.join("etc/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/nowhere", d.join("etc/dangling")).unwrap();
        std::os::unix::fs::symlink("file", d.join("etc/tofile")).unwrap();
        std::os::unix::fs::symlink("real", d.join("etc/todir")).unwrap();
        std::os::unix::fs::symlink("loop", d.join("etc/loop")).unwrap();
        let root = Root::open(d).unwrap();
        assert_eq!(dir_state(&root, "/etc/real"), DirState::Dir);
        assert_eq!(dir_state(&root, "/etc/todir"), DirState::Dir);
        assert_eq!(dir_state(&root, "/etc/missing"), DirState::Missing);
        let not = |p: &str| match dir_state(&root, p) {
            DirState::Not(why) => why,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(not("/etc/file"), "is a regular file");
        assert!(not("/etc/dangling").contains("-> /nowhere"), "dangling");
        assert!(not("/etc/tofile").contains("does not lead to a directory"));
        assert!(not("/etc/loop").contains("loop"));
    }
}
