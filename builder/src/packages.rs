//! Package resolution: the exact `.deb` files a hostgroup needs on top of a base, dependencies
//! included, decided by apt itself against the base's dpkg status and apt sources.
//!
//! apt runs with a private configuration (none of the build host's apt.conf, sources or keys):
//! the base's `etc/apt` (sources.list, sources.list.d, trusted.gpg(.d), preferences) copied into
//! a private directory, keyrings named by `signed-by` copied from the base too, and a copy of
//! the base's `var/lib/dpkg/status` as the installed set. So what is resolved depends only on
//! the base and the package lists, and apt checks the repositories' signatures with the keys the
//! base trusts. One `apt-get update` per base per build; then, per hostgroup,
//! `apt-get install --print-uris` lists exactly what is missing from the base (the URI, the
//! file name, the size and the SHA256 from the signed index); one `apt-get download` fetches
//! whatever the shared cache lacks, and every file is checked against that SHA256.
//!
//! Cache layout (`<cache>/apt/`): `lists/<sources key>/` the package lists of one set of sources
//! and keys, `debs/` the downloaded `.deb` files, shared by every base and hostgroup (apt's file
//! names, `name_version_arch.deb`), `.lock` held while resolving.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::base::{self, BaseInfo};
use crate::config::{Resolved, Span};

/// Largest file copied from a base's etc/apt.
const APT_FILE_LIMIT: u64 = 8 << 20;

/// A package the configuration asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub name: String,
    /// Exact version pin.
    pub version: Option<String>,
    /// Where the configuration declared it.
    pub span: Option<Span>,
}

impl Request {
    /// The packages of a resolved hostgroup, sorted by name.
    pub fn from_resolved(r: &Resolved) -> Vec<Request> {
        r.packages
            .iter()
            .map(|(name, p)| Request {
                name: name.clone(),
                version: p.value.version.clone(),
                span: Some(p.span.clone()),
            })
            .collect()
    }

    fn apt_arg(&self) -> String {
        match &self.version {
            Some(v) => format!("{}={v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// One `.deb` a hostgroup needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SHA256 from the repository's signed index; the file is checked against it.
    pub sha256: String,
    pub size: u64,
    /// Where apt fetches it from.
    pub uri: String,
    /// apt's file name (`name_version_arch.deb`, `:` as `%3a`).
    pub file_name: String,
}

/// Why a hostgroup's packages could not be resolved.
#[derive(Debug)]
pub struct ResolveError {
    pub hostgroup: String,
    pub base: String,
    /// One line per problem, each naming the package when apt names one that was asked for.
    pub problems: Vec<String>,
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `kiln build` prints it after "hostgroup NAME: ".
        write!(f, "apt cannot resolve its packages on base {}:", self.base)?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ResolveError {}

/// apt, set up for one base.
pub struct Resolver {
    view: tempfile::TempDir,
    apt_conf: PathBuf,
    lists: PathBuf,
    debs: PathBuf,
    base: String,
    sources_key: String,
    _lock: nix::fcntl::Flock<File>,
}

impl Resolver {
    /// Prepares apt for `base` with its lists and debs under `<cache>/apt`. Holds the cache's
    /// lock until dropped (two builds never run apt on the same cache at once).
    pub fn new(base: &BaseInfo, cache: &Path, progress: &dyn Fn(&str)) -> Result<Resolver> {
        if base::which("apt-get").is_none() {
            bail!("apt-get is not installed: package resolution needs apt");
        }
        let apt_dir = cache.join("apt");
        fs::create_dir_all(&apt_dir).with_context(|| format!("creating {}", apt_dir.display()))?;
        let apt_dir = apt_dir.canonicalize()?;
        let lock = base::lock_file(
            &apt_dir.join(".lock"),
            progress,
            "another kiln using this apt cache",
        )?;
        let view = tempfile::Builder::new()
            .prefix("kiln-apt-")
            .tempdir()
            .context("creating a temp dir for apt")?;
        let sources_key = make_view(base, view.path())
            .with_context(|| format!("reading the apt configuration of base {}", base.source))?;
        let lists = apt_dir.join("lists").join(&sources_key[..16]);
        let debs = apt_dir.join("debs");
        for d in [lists.join("partial"), debs.clone()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let v = view.path();
        for p in [&lists, &debs, &v.to_path_buf()] {
            if p.to_string_lossy().contains(['"', '\n', '{', '}', ';']) {
                bail!("apt cannot be configured with the path {} (it contains a quote, brace, ; or newline)", p.display());
            }
        }
        let mut conf = String::new();
        let mut set = |k: &str, val: &str| conf.push_str(&format!("{k} \"{val}\";\n"));
        set("Dir::Etc::main", "/dev/null");
        set(
            "Dir::Etc::parts",
            &v.join("apt.conf.d").display().to_string(),
        );
        set("Dir::State", &v.join("state").display().to_string());
        set(
            "Dir::State::status",
            &v.join("status").display().to_string(),
        );
        set("Dir::State::Lists", &lists.display().to_string());
        set("Dir::Cache", &v.join("cache").display().to_string());
        set(
            "Dir::Cache::archives",
            &v.join("archives").display().to_string(),
        );
        set(
            "Dir::Etc::sourcelist",
            &v.join("etc/sources.list").display().to_string(),
        );
        set(
            "Dir::Etc::sourceparts",
            &v.join("etc/sources.list.d").display().to_string(),
        );
        set(
            "Dir::Etc::trusted",
            &v.join("etc/trusted.gpg").display().to_string(),
        );
        set(
            "Dir::Etc::trustedparts",
            &v.join("etc/trusted.gpg.d").display().to_string(),
        );
        set(
            "Dir::Etc::preferences",
            &v.join("etc/preferences").display().to_string(),
        );
        set(
            "Dir::Etc::preferencesparts",
            &v.join("etc/preferences.d").display().to_string(),
        );
        set(
            "Dir::Etc::netrc",
            &v.join("etc/auth.conf").display().to_string(),
        );
        set(
            "Dir::Etc::netrcparts",
            &v.join("etc/auth.conf.d").display().to_string(),
        );
        set("Dir::Log", &v.join("log").display().to_string());
        set("Debug::NoLocking", "true");
        set("APT::Architecture", &base.arch);
        set("APT::Install-Recommends", "false");
        set("APT::Install-Suggests", "false");
        set("Acquire::Languages", "none");
        set("Acquire::ForceHash", "SHA256");
        set("Acquire::Retries", "2");
        set("Acquire::http::Timeout", "30");
        set("Acquire::https::Timeout", "30");
        set("APT::Update::Error-Mode", "any");
        let archs: Vec<String> = std::iter::once(&base.arch)
            .chain(&base.foreign_archs)
            .map(|a| format!("\"{a}\";"))
            .collect();
        conf.push_str(&format!("APT::Architectures {{ {} }};\n", archs.join(" ")));
        for d in ["apt.conf.d", "state", "cache", "archives/partial", "log"] {
            fs::create_dir_all(v.join(d))?;
        }
        let apt_conf = v.join("apt.conf");
        fs::write(&apt_conf, conf)?;
        Ok(Resolver {
            view,
            apt_conf,
            lists,
            debs,
            base: base.source.clone(),
            sources_key,
            _lock: lock,
        })
    }

    /// The digest of the base's apt sources, keys and preferences: names the lists directory.
    pub fn sources_key(&self) -> &str {
        &self.sources_key
    }

    /// The directory of downloaded `.deb` files.
    pub fn debs_dir(&self) -> &Path {
        &self.debs
    }

    fn apt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &self.apt_conf)
            .env("LC_ALL", "C.UTF-8")
            .env("LANGUAGE", "")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    }

    /// `apt-get update` of the base's sources into the cached lists.
    pub fn update(&self) -> Result<()> {
        let out = self
            .apt("apt-get")
            .arg("-q")
            .arg("update")
            .output()
            .context("running apt-get update")?;
        if !out.status.success() {
            let text = output_text(&out);
            let mut lines: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:"))
                .collect();
            if lines.is_empty() {
                lines = text.lines().collect();
            }
            bail!(
                "apt-get update failed for base {} ({}): the archive is unreachable or refused:\n  {}",
                self.base,
                out.status,
                lines.join("\n  ")
            );
        }
        Ok(())
    }

    /// Whether `update` has ever filled the lists (for `--no-apt-update`).
    pub fn has_lists(&self) -> bool {
        fs::read_dir(&self.lists)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
            })
            .unwrap_or(false)
    }

    /// The debs `requests` need on top of the base, sorted by name and architecture. Nothing
    /// is downloaded (see [`fetch`](Self::fetch)).
    pub fn resolve(&self, hostgroup: &str, requests: &[Request]) -> Result<Vec<Deb>, ResolveError> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let fail = |problems: Vec<String>| ResolveError {
            hostgroup: hostgroup.to_string(),
            base: self.base.clone(),
            problems,
        };
        let mut cmd = self.apt("apt-get");
        cmd.args([
            "-q",
            "-y",
            "--no-remove",
            "--allow-downgrades",
            "--print-uris",
            "install",
        ]);
        cmd.args(requests.iter().map(Request::apt_arg));
        let out = cmd
            .output()
            .map_err(|e| fail(vec![format!("running apt-get: {e}")]))?;
        let text = output_text(&out);
        if !out.status.success() {
            return Err(fail(explain(&text, requests)));
        }
        let mut debs = Vec::new();
        for line in text.lines().filter(|l| l.starts_with('\'')) {
            debs.push(
                parse_uri_line(line)
                    .map_err(|e| fail(vec![format!("unexpected apt output {line:?}: {e}")]))?,
            );
        }
        debs.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
        Ok(debs)
    }

    /// Makes sure every deb is in the cache with its SHA256, downloading the missing ones with
    /// one `apt-get download`. Returns each deb's path.
    pub fn fetch(
        &self,
        debs: &[Deb],
        progress: &dyn Fn(&str),
    ) -> Result<BTreeMap<String, PathBuf>> {
        let mut unique: BTreeMap<&str, &Deb> = BTreeMap::new();
        for d in debs {
            unique.insert(&d.file_name, d);
        }
        let mut missing = Vec::new();
        for d in unique.values() {
            let path = self.debs.join(&d.file_name);
            match kiln_signing::sha256_file(&path) {
                Ok((sha, size)) if sha == d.sha256 && size == d.size => {}
                Ok(_) => {
                    // Truncated by an interrupted download, or another build of the same
                    // name_version_arch: fetch it again.
                    fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    missing.push(*d);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(*d),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        if !missing.is_empty() {
            let bytes: u64 = missing.iter().map(|d| d.size).sum();
            progress(&format!(
                "downloading {} packages ({:.1} MB) into {}",
                missing.len(),
                bytes as f64 / 1e6,
                self.debs.display()
            ));
            let mut cmd = self.apt("apt-get");
            cmd.current_dir(&self.debs).args(["-q", "download"]);
            cmd.args(
                missing
                    .iter()
                    .map(|d| format!("{}:{}={}", d.name, d.arch, d.version)),
            );
            let out = cmd.output().context("running apt-get download")?;
            if !out.status.success() {
                let text = output_text(&out);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("E:") || l.starts_with("Err:"))
                    .collect();
                bail!(
                    "apt-get download failed for base {} ({}):\n  {}",
                    self.base,
                    out.status,
                    if lines.is_empty() {
                        text.trim().to_string()
                    } else {
                        lines.join("\n  ")
                    }
                );
            }
        }
        let mut paths = BTreeMap::new();
        for d in unique.values() {
            let path = self.debs.join(&d.file_name);
            let (sha, size) = kiln_signing::sha256_file(&path)
                .with_context(|| format!("apt-get download left no {}", path.display()))?;
            if sha != d.sha256 || size != d.size {
                bail!(
                    "{}: sha256 {sha} ({size} bytes) differs from the repository index's {} ({} bytes)",
                    path.display(),
                    d.sha256,
                    d.size
                );
            }
            paths.insert(d.sha256.clone(), path);
        }
        Ok(paths)
    }

    #[doc(hidden)]
    pub fn view_dir(&self) -> &Path {
        self.view.path()
    }
}

/// stdout then stderr, lossily.
fn output_text(o: &Output) -> String {
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    s
}

/// `%xx` escapes (apt quotes `:` as `%3a` in file names).
fn unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hexd = s.get(i + 1..i + 3).ok_or("truncated % escape")?;
            out.push(u8::from_str_radix(hexd, 16).map_err(|_| format!("bad % escape %{hexd}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
}

/// `'URI' name_version_arch.deb SIZE SHA256:hex`.
fn parse_uri_line(line: &str) -> Result<Deb, String> {
    let rest = line.strip_prefix('\'').ok_or("no URI")?;
    let (uri, rest) = rest.split_once('\'').ok_or("unterminated URI")?;
    let mut f = rest.split_whitespace();
    let file_name = f.next().ok_or("no file name")?.to_string();
    let size: u64 = f.next().ok_or("no size")?.parse().map_err(|_| "bad size")?;
    let hash = f.next().ok_or("no hash")?;
    let sha256 = hash
        .strip_prefix("SHA256:")
        .ok_or("not a SHA256 hash (Acquire::ForceHash)")?;
    let sha256 = kiln_signing::spec::sha256_hex_any_case(sha256).ok_or("bad SHA256")?;
    let stem = file_name.strip_suffix(".deb").ok_or("not a .deb")?;
    let mut parts = stem.splitn(3, '_');
    let (name, version, arch) = match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(v), Some(a)) => (unescape(n)?, unescape(v)?, unescape(a)?),
        _ => return Err("file name is not name_version_arch.deb".into()),
    };
    if name.is_empty() || version.is_empty() || arch.is_empty() || file_name.contains('/') {
        return Err("file name is not name_version_arch.deb".into());
    }
    Ok(Deb {
        name,
        version,
        arch,
        sha256,
        size,
        uri: uri.to_string(),
        file_name,
    })
}

/// The requested package a line of apt's output is about, if any.
fn named_package<'r>(line: &str, requests: &'r [Request]) -> Option<&'r Request> {
    let find = |n: &str| requests.iter().find(|r| r.name == n);
    let between = |s: &str, pre: &str, post: &str| -> Option<String> {
        let i = s.find(pre)? + pre.len();
        let j = s[i..].find(post)? + i;
        Some(s[i..j].to_string())
    };
    if let Some(i) = line.find("Unable to locate package ") {
        return find(line[i + "Unable to locate package ".len()..].trim());
    }
    if let Some(n) = between(line, "' for '", "' was not found") {
        return find(&n);
    }
    if let Some(n) = between(line, "Package '", "' has no installation candidate") {
        return find(&n);
    }
    if let Some(n) = between(line, "Couldn't find any package by glob '", "'") {
        return find(&n);
    }
    if let Some(n) = between(line, "Couldn't find any package by regex '", "'") {
        return find(&n);
    }
    // An unmet dependency: " name : Depends: ..."
    let t = line.trim_start();
    if line.starts_with(' ') {
        if let Some((n, _)) = t.split_once(" : ") {
            return find(n.trim());
        }
    }
    None
}

/// apt's reasons, one line each, naming the requested package (and where it was declared).
fn explain(text: &str, requests: &[Request]) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut block: Option<&str> = None;
    let mut removed = Vec::new();
    for line in text.lines() {
        if line.starts_with("The following packages have unmet dependencies") {
            block = Some("unmet");
            continue;
        }
        if line.starts_with("The following packages will be REMOVED") {
            block = Some("remove");
            continue;
        }
        if block.is_some() && !line.starts_with(' ') {
            block = None;
        }
        match block {
            Some("unmet") => {
                reasons.push(line.trim_end().to_string());
                continue;
            }
            Some("remove") => {
                removed.extend(line.split_whitespace().map(str::to_string));
                continue;
            }
            _ => {}
        }
        if line.starts_with("E:") {
            if line.contains("Packages need to be removed but remove is disabled") {
                reasons.push(format!(
                    "E: installing these packages would remove {} from the base, and a bundle never removes base packages",
                    if removed.is_empty() { "packages".to_string() } else { removed.join(" ") }
                ));
            } else if line.contains("Unable to correct problems, you have held broken packages")
                && !reasons.is_empty()
            {
                // Says nothing more than the unmet dependencies above it.
            } else {
                reasons.push(line.trim_end().to_string());
            }
        }
    }
    if reasons.is_empty() {
        reasons = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for r in reasons {
        let line = match named_package(&r, requests) {
            Some(req) => {
                let at = req
                    .span
                    .as_ref()
                    .map(|s| format!("{s}: "))
                    .unwrap_or_default();
                let pin = req
                    .version
                    .as_ref()
                    .map(|v| format!(" (pinned {v})"))
                    .unwrap_or_default();
                format!("{at}package {}{pin}: {}", req.name, r.trim())
            }
            None => format!("apt: {}", r.trim()),
        };
        if seen.insert(line.clone()) {
            out.push(line);
        }
    }
    out
}

/// Fills `dir` with the base's apt configuration (sources, keys, preferences), its dpkg status
/// and the keyrings its sources name; returns the sha256 of what decides the package lists.
fn make_view(base: &BaseInfo, dir: &Path) -> Result<String> {
    let etc = dir.join("etc");
    for d in [
        "sources.list.d",
        "trusted.gpg.d",
        "preferences.d",
        "auth.conf.d",
    ] {
        fs::create_dir_all(etc.join(d))?;
    }
    fs::create_dir_all(dir.join("keyrings"))?;
    let status = base
        .read("/var/lib/dpkg/status", 256 << 20)
        .context("reading var/lib/dpkg/status")?;
    fs::write(dir.join("status"), status)?;
    let mut key = Sha256::new();
    key.update(format!("arch {} {}\n", base.arch, base.foreign_archs.join(",")).as_bytes());
    let mut keyrings = Keyrings { base, dir, n: 0 };

    let copy = |rel: &str, text: String, key: &mut Sha256| -> Result<()> {
        key.update(format!("{rel} {}\n", text.len()).as_bytes());
        key.update(text.as_bytes());
        fs::write(etc.join(rel), text)?;
        Ok(())
    };
    // sources.list and sources.list.d/*.list|*.sources, signed-by keyrings rewritten.
    match base.read("/etc/apt/sources.list", APT_FILE_LIMIT) {
        Ok(b) => {
            let t = rewrite_one_line(&String::from_utf8_lossy(&b), &mut keyrings)?;
            copy("sources.list", t, &mut key)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("reading etc/apt/sources.list"),
    }
    for name in list_dir(base, "/etc/apt/sources.list.d")? {
        let rel = format!("sources.list.d/{name}");
        let bytes = base
            .read(&format!("/etc/apt/{rel}"), APT_FILE_LIMIT)
            .with_context(|| format!("reading etc/apt/{rel}"))?;
        let text = String::from_utf8_lossy(&bytes);
        let t = if name.ends_with(".list") {
            rewrite_one_line(&text, &mut keyrings)?
        } else if name.ends_with(".sources") {
            rewrite_deb822(&text, &mut keyrings)?
        } else {
            continue;
        };
        copy(&rel, t, &mut key)?;
    }
    // Keys and preferences, as they are.
    for (file, parts, exts) in [
        ("trusted.gpg", "trusted.gpg.d", &[".gpg", ".asc"][..]),
        ("preferences", "preferences.d", &["", ".pref"][..]),
    ] {
        if let Ok(b) = base.read(&format!("/etc/apt/{file}"), APT_FILE_LIMIT) {
            key.update(format!("{file} {}\n", b.len()).as_bytes());
            key.update(&b);
            fs::write(etc.join(file), b)?;
        }
        for name in list_dir(base, &format!("/etc/apt/{parts}"))? {
            let ok = exts.iter().any(|x| {
                if x.is_empty() {
                    !name.contains('.')
                } else {
                    name.ends_with(x)
                }
            });
            if !ok {
                continue;
            }
            let rel = format!("{parts}/{name}");
            let b = base
                .read(&format!("/etc/apt/{rel}"), APT_FILE_LIMIT)
                .with_context(|| format!("reading etc/apt/{rel}"))?;
            key.update(format!("{rel} {}\n", b.len()).as_bytes());
            key.update(&b);
            fs::write(etc.join(&rel), b)?;
        }
    }
    for (name, bytes) in keyrings_digest_inputs(dir)? {
        key.update(format!("keyring {name} {}\n", bytes.len()).as_bytes());
        key.update(&bytes);
    }
    Ok(hex::encode(key.finalize()))
}

fn keyrings_digest_inputs(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir.join("keyrings"))?.flatten() {
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            fs::read(e.path())?,
        ));
    }
    out.sort();
    Ok(out)
}

/// Names in a directory of the base (sorted; apt also ignores names with odd characters).
fn list_dir(base: &BaseInfo, path: &str) -> Result<Vec<String>> {
    let host = base.resolve(path)?;
    let mut names = Vec::new();
    match fs::read_dir(&host) {
        Ok(rd) => {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.is_empty()
                    && n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c))
                    && !n.starts_with('.')
                {
                    names.push(n);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {path}")),
    }
    names.sort();
    Ok(names)
}

/// Copies the keyrings that sources name (`signed-by`) from the base into the view.
struct Keyrings<'a> {
    base: &'a BaseInfo,
    dir: &'a Path,
    n: usize,
}

impl Keyrings<'_> {
    /// A `signed-by` value: absolute paths become copies of the base's files; fingerprints
    /// stay.
    fn rewrite(&mut self, value: &str) -> Result<String> {
        let mut out = Vec::new();
        for item in value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
        {
            if item.starts_with('/') {
                let bytes = self.base.read(item, APT_FILE_LIMIT).map_err(|e| {
                    anyhow!("the base's apt sources name the keyring {item}, which the base does not have ({e})")
                })?;
                self.n += 1;
                let file = Path::new(item)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let copy = self
                    .dir
                    .join("keyrings")
                    .join(format!("{:02}-{file}", self.n));
                fs::write(&copy, bytes)?;
                out.push(copy.display().to_string());
            } else {
                out.push(item.to_string());
            }
        }
        Ok(out.join(","))
    }
}

/// One-line sources (`deb [signed-by=/x.gpg arch=amd64] uri suite comp...`).
fn rewrite_one_line(text: &str, keys: &mut Keyrings) -> Result<String> {
    let mut out = String::new();
    for line in text.lines() {
        let body = line.split('#').next().unwrap_or("");
        let trimmed = body.trim_start();
        if let (Some(open), Some(close)) = (trimmed.find('['), trimmed.find(']')) {
            if open < close && (trimmed.starts_with("deb ") || trimmed.starts_with("deb-src ")) {
                let opts = &trimmed[open + 1..close];
                let mut new_opts = Vec::new();
                for o in opts.split_whitespace() {
                    match o.split_once('=') {
                        Some((k, v)) if k.eq_ignore_ascii_case("signed-by") => {
                            new_opts.push(format!("signed-by={}", keys.rewrite(v)?))
                        }
                        _ => new_opts.push(o.to_string()),
                    }
                }
                out.push_str(&format!(
                    "{}[{}]{}\n",
                    &trimmed[..open],
                    new_opts.join(" "),
                    &trimmed[close + 1..]
                ));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// deb822 sources (`Signed-By: /usr/share/keyrings/x.gpg`); an inline key (a multi-line value)
/// stays as it is.
fn rewrite_deb822(text: &str, keys: &mut Keyrings) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some((k, v)) = line.split_once(':') {
            let continued = lines.get(i + 1).is_some_and(|n| n.starts_with([' ', '\t']));
            if k.eq_ignore_ascii_case("Signed-By") && !v.trim().is_empty() && !continued {
                out.push_str(&format!("Signed-By: {}\n", keys.rewrite(v.trim())?));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_parse() {
        let d = parse_uri_line("'http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf1_1.1.2-0%2bdeb12u1_amd64.deb' libbpf1_1%3a1.1.2-0+deb12u1_amd64.deb 145032 SHA256:5e7505ef77ebc84ad0203411e4afdeb8a98f40fb7f78f013aa4dd8710e49f8ed").unwrap();
        assert_eq!(
            (d.name.as_str(), d.version.as_str(), d.arch.as_str(), d.size),
            ("libbpf1", "1:1.1.2-0+deb12u1", "amd64", 145032)
        );
        assert_eq!(d.file_name, "libbpf1_1%3a1.1.2-0+deb12u1_amd64.deb");
        assert!(parse_uri_line("'u' x_1_amd64.deb 1 MD5Sum:00").is_err());
    }

    #[test]
    fn apt_reasons_name_the_package() {
        let reqs = vec![
            Request {
                name: "nginx".into(),
                version: Some("9.9".into()),
                span: None,
            },
            Request {
                name: "nosuch".into(),
                version: None,
                span: None,
            },
            Request {
                name: "postfix".into(),
                version: None,
                span: None,
            },
        ];
        let text = "Reading package lists...\nE: Unable to locate package nosuch\nE: Version '9.9' for 'nginx' was not found\n";
        assert_eq!(
            explain(text, &reqs),
            [
                "package nosuch: E: Unable to locate package nosuch",
                "package nginx (pinned 9.9): E: Version '9.9' for 'nginx' was not found"
            ]
        );
        let text = "The following packages have unmet dependencies:\n exim4-config : Conflicts: postfix but 3.7 is to be installed\n postfix : Conflicts: mail-transport-agent\nE: Unable to correct problems, you have held broken packages.\n";
        assert_eq!(
            explain(text, &reqs),
            [
                "apt: exim4-config : Conflicts: postfix but 3.7 is to be installed",
                "package postfix: postfix : Conflicts: mail-transport-agent"
            ]
        );
    }

    #[test]
    fn one_line_signed_by_is_rewritten_and_comments_kept() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("usr/share/keyrings")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n").unwrap();
        fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: dpkg\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n",
        )
        .unwrap();
        fs::write(root.join("usr/share/keyrings/k.gpg"), "KEY").unwrap();
        let base = BaseInfo::open_dir(&root).unwrap();
        let view = d.path().join("view");
        fs::create_dir_all(view.join("keyrings")).unwrap();
        let mut k = Keyrings {
            base: &base,
            dir: &view,
            n: 0,
        };
        let t = rewrite_one_line("# c\ndeb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://x/debian bookworm main\n", &mut k).unwrap();
        let copy = view.join("keyrings/01-k.gpg");
        assert_eq!(
            t,
            format!(
                "# c\ndeb [arch=amd64 signed-by={}] http://x/debian bookworm main\n",
                copy.display()
            )
        );
        assert_eq!(fs::read(&copy).unwrap(), b"KEY");
        let t = rewrite_deb822(
            "Types: deb\nURIs: http://x\nSigned-By: /usr/share/keyrings/k.gpg\n",
            &mut k,
        )
        .unwrap();
        assert!(t.contains("Signed-By: ") && t.contains("02-k.gpg"), "{t}");
        assert!(rewrite_deb822("Signed-By: /nope.gpg\n", &mut k).is_err());
    }
}
