//! Base images: the Debian root filesystems bundles are built for.
//!
//! A base is named and defined in the configuration (`base:` in hostgroups/default.yaml or a
//! hostgroup: suite, variant, include, sources, and the os-release and architecture it must
//! have). `kiln base build NAME` makes it with debootstrap into the cache, keyed by the sha256
//! of that definition; `--base DIR|TAR` takes an existing root filesystem instead. Either way
//! Kiln reads the same few things from it: os-release `ID`/`VERSION_ID`, the dpkg architecture,
//! dpkg's status file (the installed package set and its digest), and the apt sources and keys
//! that package resolution uses (see `packages.rs`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ResolvedBase};

/// Version of the cached base layout and of the definition digest; bump to rebuild every base.
const BASE_FORMAT: u32 = 1;
/// Largest dpkg status file read.
const STATUS_LIMIT: u64 = 256 << 20;
/// Symlinks followed when resolving one path inside a root.
const MAX_LINKS: usize = 40;

/// The default mirror, as debootstrap's.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The cache directory: `--cache DIR` (or `$KILN_CACHE_DIR`, which clap maps to it), else
/// `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        let x = PathBuf::from(x);
        if x.is_absolute() {
            return Ok(x.join("kiln"));
        }
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache/kiln")),
        None => bail!("no cache directory: set HOME or XDG_CACHE_HOME, or pass --cache DIR"),
    }
}

/// What a base definition is made of, for its cache key: everything that changes the root
/// debootstrap makes, and nothing else (not the name, not the mirror).
pub fn definition(b: &ResolvedBase) -> serde_json::Value {
    let mut include = b.include.clone();
    include.sort();
    include.dedup();
    serde_json::json!({
        "format": BASE_FORMAT,
        "suite": b.suite,
        "variant": b.variant,
        "arch": b.arch,
        "include": include,
        "sources": b.sources,
        "os_id": b.os_id,
        "version_id": b.version_id,
    })
}

/// sha256 (hex) of the canonical JSON of [`definition`].
pub fn definition_digest(b: &ResolvedBase) -> String {
    let bytes = serde_json::to_vec(&definition(b)).expect("definition serializes");
    kiln_signing::sha256_hex(&bytes)
}

/// The base named `name` in the configuration. Every hostgroup that targets it must define
/// it the same way.
pub fn find_definition(config: &Config, name: &str) -> Result<ResolvedBase> {
    let mut found: Option<(ResolvedBase, String)> = None;
    let mut names = Vec::new();
    let mut problems = Vec::new();
    for hg in config.hostgroup_names() {
        let r = match config.resolve(&hg) {
            Ok(r) => r,
            Err(d) => {
                problems.push(format!(
                    "hostgroup {hg}: {} configuration problem(s)",
                    d.0.len()
                ));
                continue;
            }
        };
        if !names.contains(&r.base.name) {
            names.push(r.base.name.clone());
        }
        if r.base.name != name {
            continue;
        }
        match &found {
            None => found = Some((r.base, hg)),
            Some((b, first)) if definition(b) != definition(&r.base) => bail!(
                "base {name:?} is defined differently by hostgroups {first} and {hg}: give one of them another base name"
            ),
            Some(_) => {}
        }
    }
    match found {
        Some((b, _)) => Ok(b),
        None if !problems.is_empty() => bail!(
            "no valid hostgroup targets base {name:?} ({}; run kiln validate)",
            problems.join(", ")
        ),
        None => bail!(
            "no hostgroup targets a base named {name:?} (bases in the configuration: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    }
}

/// Where a built base lives in the cache.
pub fn cache_entry(cache: &Path, b: &ResolvedBase) -> PathBuf {
    cache.join("bases").join(&definition_digest(b)[..16])
}

/// The root filesystem of a built base, if the cache has it.
pub fn cached_root(cache: &Path, b: &ResolvedBase) -> Option<PathBuf> {
    let entry = cache_entry(cache, b);
    let info: BuiltInfo = serde_json::from_slice(&fs::read(entry.join("base.json")).ok()?).ok()?;
    (info.key == definition_digest(b) && entry.join("rootfs/etc").is_dir())
        .then(|| entry.join("rootfs"))
}

/// `base.json` beside a built base's `rootfs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuiltInfo {
    pub name: String,
    /// Full sha256 of the definition; the directory is named by its first 16 hex digits.
    pub key: String,
    pub definition: serde_json::Value,
    pub mirror: String,
    pub security_mirror: String,
    pub built: String,
    pub debootstrap_seconds: u64,
    pub id: String,
    pub version_id: String,
    pub arch: String,
    pub packages: usize,
    pub packages_digest: String,
}

/// How `kiln base build` reaches the archive.
#[derive(Debug, Clone)]
pub struct Mirrors {
    pub mirror: String,
    /// For `*-security` suites; default: the mirror with `-security` appended when it ends in
    /// `/debian` (as deb.debian.org serves both), else `http://security.debian.org/debian-security`.
    pub security: String,
}

impl Mirrors {
    pub fn new(mirror: Option<&str>, security: Option<&str>) -> Mirrors {
        let mirror = mirror
            .unwrap_or(DEFAULT_MIRROR)
            .trim_end_matches('/')
            .to_string();
        let security = match security {
            Some(s) => s.trim_end_matches('/').to_string(),
            None if mirror.ends_with("/debian") => format!("{mirror}-security"),
            None => "http://security.debian.org/debian-security".to_string(),
        };
        Mirrors { mirror, security }
    }

    /// The sources.list a base gets: its suite, then each extra suite, component main.
    pub fn sources_list(&self, b: &ResolvedBase) -> String {
        let mut out = String::from("# Written by kiln base build from the base definition.\n");
        for suite in std::iter::once(&b.suite).chain(&b.sources) {
            let uri = if suite.ends_with("-security") {
                &self.security
            } else {
                &self.mirror
            };
            out.push_str(&format!("deb {uri} {suite} main\n"));
        }
        out
    }
}

/// Options of `kiln base build`.
pub struct BuildOptions<'a> {
    pub mirrors: Mirrors,
    /// Build again even when the cache has the base.
    pub rebuild: bool,
    /// Progress lines go here (stderr).
    pub progress: &'a dyn Fn(&str),
}

/// Builds the base with debootstrap unless the cache has it; returns its root filesystem and
/// whether it was built now. Atomic: built in `bases/.tmp-<key>-<pid>`, renamed when complete.
pub fn build(cache: &Path, b: &ResolvedBase, opts: &BuildOptions) -> Result<(PathBuf, bool)> {
    let bases = cache.join("bases");
    fs::create_dir_all(&bases).with_context(|| format!("creating {}", bases.display()))?;
    let key = definition_digest(b);
    let short = &key[..16];
    let entry = bases.join(short);
    if !opts.rebuild {
        if let Some(root) = cached_root(cache, b) {
            return Ok((root, false));
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("building a base needs root (debootstrap creates device nodes and files of other users); run kiln base build as root");
    }
    let debootstrap = which("debootstrap")
        .ok_or_else(|| anyhow!("debootstrap is not installed (apt-get install debootstrap)"))?;
    let _lock = lock_file(
        &bases.join(format!(".lock-{short}")),
        opts.progress,
        "another kiln base build of this base",
    )?;
    if !opts.rebuild {
        if let Some(root) = cached_root(cache, b) {
            return Ok((root, false));
        }
    }
    // Holding the lock, any temp dir of this key is a leftover of an interrupted build.
    for e in fs::read_dir(&bases)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!(".tmp-{short}-")) {
            (opts.progress)(&format!("removing the leftover {}", e.path().display()));
            safe_remove(&e.path())?;
        }
    }
    let tmp = bases.join(format!(".tmp-{short}-{}", std::process::id()));
    let guard = RemoveOnDrop(tmp.clone());
    fs::create_dir_all(&tmp)?;
    let rootfs = tmp.join("rootfs");
    let debs = cache.join("debootstrap-debs");
    fs::create_dir_all(&debs)?;
    let log_path = tmp.join("debootstrap.log");
    let log = File::create(&log_path)?;
    let mut cmd = Command::new(&debootstrap);
    if b.variant != "default" {
        cmd.arg(format!("--variant={}", b.variant));
    }
    cmd.arg(format!("--arch={}", b.arch));
    let mut include = b.include.clone();
    include.sort();
    include.dedup();
    if !include.is_empty() {
        cmd.arg(format!("--include={}", include.join(",")));
    }
    cmd.arg(format!("--cache-dir={}", debs.display()))
        .arg(&b.suite)
        .arg(&rootfs)
        .arg(&opts.mirrors.mirror)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    (opts.progress)(&format!(
        "debootstrap {} {} ({}{}) from {} -> {} (log: {})",
        b.suite,
        b.arch,
        b.variant,
        if include.is_empty() {
            String::new()
        } else {
            format!(", +{} packages", include.len())
        },
        opts.mirrors.mirror,
        entry.display(),
        log_path.display()
    ));
    let t0 = Instant::now();
    let status = cmd.status().context("running debootstrap")?;
    let seconds = t0.elapsed().as_secs();
    if !status.success() {
        let mut tail = tail_lines(&log_path, 30);
        let inner = rootfs.join("debootstrap/debootstrap.log");
        if inner.exists() {
            tail.push_str("\n-- debootstrap/debootstrap.log:\n");
            tail.push_str(&tail_lines(&inner, 30));
        }
        bail!(
            "debootstrap failed ({status}) for base {}; the end of its log:\n{tail}",
            b.name
        );
    }
    // debootstrap leaves its .debs in the root; they are in the debootstrap cache already.
    if let Ok(rd) = fs::read_dir(rootfs.join("var/cache/apt/archives")) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    fs::write(
        rootfs.join("etc/apt/sources.list"),
        opts.mirrors.sources_list(b),
    )
    .context("writing the base's etc/apt/sources.list")?;
    let info = BaseInfo::open_dir(&rootfs)?;
    if let Err(why) = info.matches(b) {
        bail!("debootstrap made a root that is not base {}: {why}", b.name);
    }
    let built = BuiltInfo {
        name: b.name.clone(),
        key: key.clone(),
        definition: definition(b),
        mirror: opts.mirrors.mirror.clone(),
        security_mirror: opts.mirrors.security.clone(),
        built: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        debootstrap_seconds: seconds,
        id: info.id.clone(),
        version_id: info.version_id.clone(),
        arch: info.arch.clone(),
        packages: info.installed.len(),
        packages_digest: info.packages_digest.clone(),
    };
    fs::write(tmp.join("base.json"), serde_json::to_vec_pretty(&built)?)?;
    if entry.exists() {
        // --rebuild, or a directory without a valid base.json: out of the way first.
        let old = bases.join(format!(".old-{short}-{}", std::process::id()));
        fs::rename(&entry, &old)
            .with_context(|| format!("moving the old {} away", entry.display()))?;
        safe_remove(&old)?;
    }
    fs::rename(&tmp, &entry)
        .with_context(|| format!("renaming {} to {}", tmp.display(), entry.display()))?;
    std::mem::forget(guard);
    (opts.progress)(&format!(
        "built base {} in {seconds}s: {} packages, packages digest {}",
        b.name,
        info.installed.len(),
        info.packages_digest
    ));
    Ok((entry.join("rootfs"), true))
}

/// Removes a directory on drop (a failed or interrupted build's temp dir).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = safe_remove(&self.0);
    }
}

/// `rm -rf --one-file-system` after unmounting anything debootstrap may have left mounted below.
fn safe_remove(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
        let prefix = format!("{}/", dir.display());
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
    let status = Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg("--")
        .arg(dir)
        .status()
        .context("running rm")?;
    if !status.success() {
        bail!("could not remove {}", dir.display());
    }
    Ok(())
}

fn tail_lines(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The path of a program on `PATH` (and the sbin directories, which a non-login root may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// An exclusive flock on `path` (created if missing), waiting for another holder.
pub fn lock_file(
    path: &Path,
    progress: &dyn Fn(&str),
    who: &str,
) -> Result<nix::fcntl::Flock<File>> {
    use nix::fcntl::{Flock, FlockArg};
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock {}", path.display()))?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(l),
        Err((f, _)) => {
            progress(&format!("waiting for {who} ({})", path.display()));
            Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow!("locking {}: {e}", path.display()))
        }
    }
}

/// How `--base` names a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSpec {
    /// A base of the configuration, built into the cache by `kiln base build NAME`.
    Name(String),
    /// A root filesystem directory.
    Dir(PathBuf),
    /// A tar archive of a root filesystem (plain, gzip, xz or zstd).
    Tar(PathBuf),
}

impl BaseSpec {
    /// A path that exists is a directory or a tar file; a word without `/` is a base name.
    pub fn parse(s: &str) -> Result<BaseSpec> {
        let p = Path::new(s);
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => Ok(BaseSpec::Dir(p.to_path_buf())),
            Ok(_) => Ok(BaseSpec::Tar(p.to_path_buf())),
            Err(_) if !s.contains('/') && !s.is_empty() && !s.starts_with('.') => {
                Ok(BaseSpec::Name(s.to_string()))
            }
            Err(e) => bail!("base {s}: {e}"),
        }
    }
}

/// What Kiln knows about a base root filesystem.
pub struct BaseInfo {
    /// Where the base came from, for messages.
    pub source: String,
    /// A directory with the base's files: the root itself (a directory or a cached base), or,
    /// for a tar archive, the few files resolution needs, extracted.
    pub root: PathBuf,
    /// os-release `ID`.
    pub id: String,
    /// os-release `VERSION_ID`.
    pub version_id: String,
    /// dpkg's native architecture.
    pub arch: String,
    /// dpkg's foreign architectures (`/var/lib/dpkg/arch`, lines after the first).
    pub foreign_archs: Vec<String>,
    /// Installed packages: name -> (version, architecture).
    pub installed: BTreeMap<String, (String, String)>,
    /// sha256 of the sorted `name version arch` lines of the installed packages.
    pub packages_digest: String,
    _tmp: Option<tempfile::TempDir>,
}

impl BaseInfo {
    /// Opens a base as `--base` named it. A name is looked up in the cache, as the
    /// configuration defines it.
    pub fn open(spec: &BaseSpec, config: Option<&Config>, cache: &Path) -> Result<BaseInfo> {
        match spec {
            BaseSpec::Dir(d) => BaseInfo::open_dir(d),
            BaseSpec::Tar(t) => BaseInfo::open_tar(t),
            BaseSpec::Name(n) => {
                let config = config
                    .ok_or_else(|| anyhow!("base {n}: a base name needs the configuration"))?;
                let def = find_definition(config, n)?;
                let root = cached_root(cache, &def).ok_or_else(|| {
                    anyhow!(
                        "base {n} is not built in {}: run `kiln base build {n}` (as root), or pass --base DIR|TAR",
                        cache.display()
                    )
                })?;
                let mut info = BaseInfo::open_dir(&root)?;
                info.source = format!("{n} ({})", root.display());
                Ok(info)
            }
        }
    }

    /// Reads a root filesystem directory.
    pub fn open_dir(dir: &Path) -> Result<BaseInfo> {
        let meta = fs::metadata(dir).with_context(|| format!("base {}", dir.display()))?;
        if !meta.is_dir() {
            bail!("base {} is not a directory", dir.display());
        }
        let root = dir.to_path_buf();
        let os = read_in_root(&root, "/etc/os-release", 1 << 16)
            .or_else(|_| read_in_root(&root, "/usr/lib/os-release", 1 << 16))
            .map_err(|_| {
                anyhow!(
                    "base {} does not look like a root filesystem: no etc/os-release or usr/lib/os-release",
                    dir.display()
                )
            })?;
        let (id, version_id) = parse_os_release(&String::from_utf8_lossy(&os));
        let status = read_in_root(&root, "/var/lib/dpkg/status", STATUS_LIMIT).map_err(|e| {
            anyhow!("base {} has no readable var/lib/dpkg/status ({e}): Kiln needs a Debian root with dpkg", dir.display())
        })?;
        let installed = parse_status(&String::from_utf8_lossy(&status));
        let (arch, foreign_archs) = match read_in_root(&root, "/var/lib/dpkg/arch", 1 << 16) {
            Ok(t) if !String::from_utf8_lossy(&t).trim().is_empty() => {
                let t = String::from_utf8_lossy(&t).into_owned();
                let mut lines = t.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string);
                let native = lines.next().unwrap_or_default();
                (native, lines.collect())
            }
            _ => match installed.get("dpkg") {
                Some((_, a)) if !a.is_empty() => (a.clone(), Vec::new()),
                _ => bail!("base {}: cannot tell its architecture (no var/lib/dpkg/arch, no dpkg installed)", dir.display()),
            },
        };
        let packages_digest = packages_digest(&installed);
        Ok(BaseInfo {
            source: dir.display().to_string(),
            root,
            id,
            version_id,
            arch,
            foreign_archs,
            installed,
            packages_digest,
            _tmp: None,
        })
    }

    /// Reads a tar archive of a root filesystem, extracting only what Kiln reads from a base
    /// (os-release, dpkg's status and arch, etc/apt, usr/share/keyrings) into a temp dir.
    pub fn open_tar(path: &Path) -> Result<BaseInfo> {
        let tmp = tempfile::Builder::new()
            .prefix("kiln-base-")
            .tempdir()
            .context("creating a temp dir")?;
        extract_for_resolution(path, tmp.path())
            .with_context(|| format!("reading base archive {}", path.display()))?;
        let mut info = BaseInfo::open_dir(tmp.path())
            .with_context(|| format!("base archive {}", path.display()))?;
        info.source = path.display().to_string();
        info._tmp = Some(tmp);
        Ok(info)
    }

    /// Whether this root is the base a configuration defines (os-release and architecture).
    pub fn matches(&self, b: &ResolvedBase) -> Result<(), String> {
        let mut diffs = Vec::new();
        if self.id != b.os_id {
            diffs.push(format!(
                "os-release ID is {:?}, the configuration says os_id {:?}",
                self.id, b.os_id
            ));
        }
        if self.version_id != b.version_id {
            diffs.push(format!(
                "os-release VERSION_ID is {:?}, the configuration says version_id {:?}",
                self.version_id, b.version_id
            ));
        }
        if self.arch != b.arch {
            diffs.push(format!(
                "dpkg architecture is {}, the configuration says arch {}",
                self.arch, b.arch
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join("; "))
        }
    }

    /// Reads a file of the base, following symlinks as inside the root.
    pub fn read(&self, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        read_in_root(&self.root, path, limit)
    }

    /// The host path of an in-root path, symlinks resolved inside the root.
    pub fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        resolve_in_root(&self.root, path)
    }
}

pub use kiln_signing::debian::{
    packages_digest, parse_dpkg_status as parse_status, parse_os_release,
};

/// The host path of `path` inside `root`, resolving symlinks as a chroot would: absolute
/// targets start again at `root`, `..` never climbs above it.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .rev()
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let mut host = root.to_path_buf();
        host.extend(&done);
        host.push(&c);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {path}"
                    )));
                }
                let target = fs::read_link(&host)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                for t in target.split('/').filter(|c| !c.is_empty()).rev() {
                    todo.push(t.to_string());
                }
            }
            Ok(_) => done.push(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The rest does not exist: the path is what it names, unresolved.
                done.push(c);
                while let Some(c) = todo.pop() {
                    done.push(c);
                }
                let mut host = root.to_path_buf();
                host.extend(&done);
                return Ok(host);
            }
            Err(e) => return Err(e),
        }
    }
    let mut host = root.to_path_buf();
    host.extend(&done);
    Ok(host)
}

/// Reads a regular file inside `root` (symlinks resolved inside it), at most `limit` bytes.
pub fn read_in_root(root: &Path, path: &str, limit: u64) -> io::Result<Vec<u8>> {
    let host = resolve_in_root(root, path)?;
    let m = fs::metadata(&host)?;
    if !m.is_file() {
        return Err(io::Error::other(format!("{path} is not a regular file")));
    }
    if m.len() > limit {
        return Err(io::Error::other(format!(
            "{path} is larger than {limit} bytes"
        )));
    }
    fs::read(&host)
}

/// The decompressor for an archive's first bytes, if it is compressed.
fn decompressor(magic: &[u8]) -> Option<&'static str> {
    if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    }
}

/// Whether an archive member is one Kiln reads from a base.
fn wanted(rel: &str) -> bool {
    matches!(
        rel,
        "etc/os-release" | "usr/lib/os-release" | "var/lib/dpkg/status" | "var/lib/dpkg/arch"
    ) || rel.starts_with("etc/apt/")
        || rel.starts_with("usr/share/keyrings/")
}

/// Normalized relative path of an archive member (`./etc/x` and `/etc/x` are `etc/x`), or
/// `None` for anything with `..`.
fn member_path(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn extract_for_resolution(archive: &Path, dest: &Path) -> Result<()> {
    let mut f = File::open(archive)?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    drop(f);
    let mut child = None;
    let reader: Box<dyn Read> = match decompressor(&magic[..n]) {
        Some(tool) => {
            let mut c = Command::new(tool)
                .arg("-dc")
                .stdin(File::open(archive)?)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("running {tool} -dc (is {tool} installed?)"))?;
            let out = c.stdout.take().expect("piped");
            child = Some((tool, c));
            Box::new(out)
        }
        None => Box::new(File::open(archive)?),
    };
    let mut ar = tar::Archive::new(reader);
    let mut links: Vec<(String, String)> = Vec::new();
    let mut seen = 0usize;
    for entry in ar.entries().context("reading the tar archive")? {
        let mut entry = entry.context("reading the tar archive")?;
        seen += 1;
        let Some(rel) = member_path(&entry.path()?) else {
            continue;
        };
        if !wanted(&rel) {
            continue;
        }
        let out = dest.join(&rel);
        let kind = entry.header().entry_type();
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        if kind.is_dir() {
            fs::create_dir_all(&out)?;
        } else if kind.is_file() {
            if entry.size() > STATUS_LIMIT {
                continue;
            }
            let mut w = File::create(&out)?;
            io::copy(&mut entry, &mut w)?;
        } else if kind.is_symlink() {
            if let Some(target) = entry.link_name()? {
                let _ = fs::remove_file(&out);
                std::os::unix::fs::symlink(target.as_ref(), &out)?;
            }
        } else if kind.is_hard_link() {
            if let Some(target) = entry.link_name()?.and_then(|t| member_path(&t)) {
                links.push((rel, target));
            }
        }
    }
    for (rel, target) in links {
        let from = dest.join(&target);
        if from.is_file() {
            fs::copy(&from, dest.join(&rel))?;
        }
    }
    if let Some((tool, mut c)) = child {
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = c.wait()?;
        if !status.success() {
            bail!("{tool} -dc failed ({status}): {}", err.trim());
        }
    }
    if seen == 0 {
        bail!("not a tar archive, or an empty one");
    }
    Ok(())
}

/// Writes `text` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_digest_counts_installed_packages_only() {
        let text = "Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: all\nDescription: x\n y: z\n\n\
                    Package: a\nStatus: hold ok installed\nVersion: 1:1.0\nArchitecture: amd64\n\n\
                    Package: c\nStatus: deinstall ok config-files\nVersion: 3\nArchitecture: amd64\n";
        let s = parse_status(text);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
        let expected = kiln_signing::sha256_hex(b"a 1:1.0 amd64\nb 2 all\n");
        assert_eq!(packages_digest(&s), expected);
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::write(
            r.join("usr/lib/os-release"),
            "ID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/../../../usr/lib/os-release", r.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("/etc/loop", r.join("etc/loop")).unwrap();
        assert_eq!(
            resolve_in_root(r, "/etc/os-release").unwrap(),
            r.join("usr/lib/os-release")
        );
        assert_eq!(
            resolve_in_root(r, "/etc/abs").unwrap(),
            r.join("usr/lib/os-release")
        );
        assert!(resolve_in_root(r, "/etc/loop").is_err());
        let (id, v) = parse_os_release(
            &String::from_utf8(read_in_root(r, "/etc/os-release", 100).unwrap()).unwrap(),
        );
        assert_eq!((id.as_str(), v.as_str()), ("debian", "12"));
    }

    #[test]
    fn definition_digest_ignores_name_and_include_order() {
        let a = ResolvedBase {
            include: vec!["b".into(), "a".into()],
            ..ResolvedBase::default()
        };
        let b = ResolvedBase {
            name: "other".into(),
            include: vec!["a".into(), "b".into(), "a".into()],
            ..ResolvedBase::default()
        };
        assert_eq!(definition_digest(&a), definition_digest(&b));
        let c = ResolvedBase {
            sources: vec!["bookworm-updates".into()],
            ..a.clone()
        };
        assert_ne!(definition_digest(&a), definition_digest(&c));
    }

    #[test]
    fn sources_list_uses_the_security_mirror_for_security_suites() {
        let b = ResolvedBase {
            sources: vec!["bookworm-updates".into(), "bookworm-security".into()],
            ..ResolvedBase::default()
        };
        let m = Mirrors::new(Some("http://deb.debian.org/debian/"), None);
        assert_eq!(
            m.sources_list(&b).lines().skip(1).collect::<Vec<_>>(),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        assert_eq!(
            Mirrors::new(Some("http://mirror.example/deb"), None).security,
            "http://security.debian.org/debian-security"
        );
    }
}
