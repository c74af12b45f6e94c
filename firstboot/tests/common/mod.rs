//! Shared by the integration tests: bundles built directly with kiln_signing (valid ones with
//! `write_bundle`, malicious ones by hand, still signed by a trusted key), keys and trust
//! directories, target roots (a copy of the debootstrapped base from KILN_TEST_BASE, or a
//! small synthetic root), a hash of a whole tree, and running the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use kiln_signing::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The binary under test: cargo's build of it, or KILN_FIRSTBOOT_BIN (e.g. the static musl
/// release build, to run the same tests against what ships).
pub fn bin() -> String {
    std::env::var("KILN_FIRSTBOOT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kiln-firstboot").to_string())
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The signing key every test trusts, and a stranger.
pub fn release_key() -> SigningKey {
    SigningKey::from_seed(&[0x11; 32], "release@kiln-test")
}

pub fn other_key() -> SigningKey {
    SigningKey::from_seed(&[0x22; 32], "stranger@kiln-test")
}

/// A trust directory with these keys' `.pub` files and, if any, a revoked_keys list.
pub fn trust_dir(trusted: &[&SigningKey], revoked: &[&SigningKey]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, k) in trusted.iter().enumerate() {
        std::fs::write(
            dir.path().join(format!("key{i}.pub")),
            format!("{}\n", k.public().to_openssh()),
        )
        .unwrap();
    }
    if !revoked.is_empty() {
        let text: String = revoked
            .iter()
            .map(|k| format!("{}\n", k.public().to_openssh()))
            .collect();
        std::fs::write(dir.path().join(REVOKED_FILE), text).unwrap();
    }
    dir
}

/// The Debian architecture of this machine, which the synthetic roots and bundles target.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A manifest under construction, with its blobs.
#[derive(Clone)]
pub struct Spec {
    pub m: Manifest,
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl Spec {
    pub fn new(hostgroup: &str, version: u64) -> Spec {
        let now = SystemTime::now();
        Spec {
            m: Manifest {
                format: FORMAT_VERSION,
                hostgroup: hostgroup.into(),
                version,
                created: rfc3339(now - Duration::from_secs(3600)),
                expires: rfc3339(now + Duration::from_secs(30 * 86400)),
                source_commit: None,
                builder: "kiln-firstboot tests".into(),
                base: Base {
                    name: "debian-12".into(),
                    id: "debian".into(),
                    version_id: "12".into(),
                    arch: host_arch().into(),
                    packages_digest: None,
                },
                entries: vec![],
                groups: vec![],
                users: vec![],
                packages: vec![],
                system_accounts: vec![],
                services: vec![],
                commands: vec![],
                checks: vec![],
                templates: vec![],
                dynamic: None,
                blobs: vec![],
            },
            blobs: BTreeMap::new(),
        }
    }

    pub fn blob(&mut self, data: &[u8]) -> String {
        let d = sha256_hex(data);
        self.blobs.insert(d.clone(), data.to_vec());
        d
    }

    pub fn file(
        &mut self,
        path: &str,
        data: &[u8],
        mode: &str,
        owner: &str,
        group: &str,
    ) -> &mut Spec {
        self.file_hooks(path, data, mode, owner, group, &[], &[])
    }

    #[allow(clippy::too_many_arguments)]
    pub fn file_hooks(
        &mut self,
        path: &str,
        data: &[u8],
        mode: &str,
        owner: &str,
        group: &str,
        restart: &[&str],
        reload: &[&str],
    ) -> &mut Spec {
        let digest = self.blob(data);
        self.m.entries.push(Entry {
            path: path.into(),
            kind: EntryKind::File {
                mode: mode.into(),
                owner: owner.into(),
                group: group.into(),
                digest,
                size: data.len() as u64,
                restart: restart.iter().map(|s| s.to_string()).collect(),
                reload: reload.iter().map(|s| s.to_string()).collect(),
            },
        });
        self
    }

    pub fn dir(&mut self, path: &str, mode: &str, owner: &str, group: &str) -> &mut Spec {
        self.m.entries.push(Entry {
            path: path.into(),
            kind: EntryKind::Directory {
                mode: mode.into(),
                owner: owner.into(),
                group: group.into(),
            },
        });
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Spec {
        self.m.entries.push(Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        });
        self
    }

    pub fn absent(&mut self, path: &str) -> &mut Spec {
        self.m.entries.push(Entry {
            path: path.into(),
            kind: EntryKind::Absent,
        });
        self
    }

    pub fn command(
        &mut self,
        name: &str,
        argv: &[&str],
        timeout_secs: u64,
        creates: Option<&str>,
    ) -> &mut Spec {
        self.m.commands.push(kiln_signing::Command {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_secs,
            creates: creates.map(Into::into),
        });
        self
    }

    pub fn service(&mut self, name: &str, state: ServiceState, enabled: bool) -> &mut Spec {
        self.m.services.push(Service {
            name: name.into(),
            state,
            enabled,
        });
        self
    }

    /// Sorts what the format wants sorted and lists the blobs.
    pub fn finish(&mut self) -> &mut Spec {
        self.m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self.m.groups.sort_by(|a, b| a.name.cmp(&b.name));
        self.m.users.sort_by(|a, b| a.name.cmp(&b.name));
        self.m.packages.sort_by(|a, b| a.name.cmp(&b.name));
        self.m.services.sort_by(|a, b| a.name.cmp(&b.name));
        self.m.blobs = self
            .blobs
            .iter()
            .map(|(d, b)| Blob {
                digest: d.clone(),
                size: b.len() as u64,
            })
            .collect();
        self
    }

    /// A valid bundle, written by kiln_signing::write_bundle; returns its sha256.
    pub fn write(&mut self, key: &SigningKey, path: &Path) -> String {
        self.finish();
        let blobs = self.blobs.clone();
        let out = write_bundle(Vec::new(), &self.m, key, &mut |b, w| {
            w.write_all(&blobs[&b.digest])
        })
        .expect("write_bundle");
        std::fs::write(path, &out).unwrap();
        sha256_hex(&out)
    }

    /// A bundle written by hand, bypassing every check of the writer: the manifest as it is
    /// (signed by `key`), the blobs as listed in `m.blobs`, then `extra` members.
    pub fn write_raw(&self, key: &SigningKey, path: &Path, raw: Raw) -> String {
        let json = self.m.to_canonical_json();
        let sig = kiln_signing::sshsig::sign(key, NAMESPACE, &json);
        let mut tar = Vec::new();
        member(
            &mut tar,
            MANIFEST_NAME.as_bytes(),
            tar::EntryType::Regular,
            &json,
            None,
        );
        member(
            &mut tar,
            SIGNATURE_NAME.as_bytes(),
            tar::EntryType::Regular,
            sig.as_bytes(),
            None,
        );
        for b in &self.m.blobs {
            let name = format!("blobs/{}", b.digest);
            match raw.replace.iter().find(|(d, _, _)| *d == b.digest) {
                Some((_, kind, link)) => {
                    member(&mut tar, name.as_bytes(), *kind, &[], link.as_deref())
                }
                None => {
                    let data = self.blobs.get(&b.digest).cloned().unwrap_or_default();
                    member(
                        &mut tar,
                        name.as_bytes(),
                        tar::EntryType::Regular,
                        &data,
                        None,
                    )
                }
            }
        }
        for (name, kind, data, link) in &raw.extra {
            member(&mut tar, name.as_bytes(), *kind, data, link.as_deref());
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        z.set_parameter(zstd::zstd_safe::CParameter::WindowLog(
            raw.window_log.unwrap_or(21),
        ))
        .unwrap();
        z.include_checksum(true).unwrap();
        if raw.window_log.is_some() {
            // Without a known content size zstd writes the window into the frame header.
            z.include_contentsize(false).unwrap();
        }
        z.write_all(&tar).unwrap();
        let out = z.finish().unwrap();
        std::fs::write(path, &out).unwrap();
        sha256_hex(&out)
    }
}

/// Ways to break a hand-written bundle.
#[derive(Default)]
pub struct Raw {
    /// Members appended after the blobs: name, type, data, link target.
    pub extra: Vec<(String, tar::EntryType, Vec<u8>, Option<String>)>,
    /// Blobs whose member is replaced by another type (digest, type, link target).
    pub replace: Vec<(String, tar::EntryType, Option<String>)>,
    pub window_log: Option<u32>,
}

fn member(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, data: &[u8], link: Option<&str>) {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    if kind == tar::EntryType::Char || kind == tar::EntryType::Block {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    let rem = data.len() % 512;
    if rem != 0 {
        out.extend(std::iter::repeat_n(0u8, 512 - rem));
    }
}

/// A minimal `.deb` with these control fields, built by dpkg-deb in `work`.
pub fn deb(work: &Path, package: &str, version: &str, arch: &str) -> Vec<u8> {
    deb_with_postinst(work, package, version, arch, None)
}

/// [`deb`], with a `postinst` maintainer script when given.
pub fn deb_with_postinst(
    work: &Path,
    package: &str,
    version: &str,
    arch: &str,
    postinst: Option<&str>,
) -> Vec<u8> {
    let d = work.join(format!("deb-{package}-{version}"));
    std::fs::create_dir_all(d.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(d.join("usr/share/doc").join(package)).unwrap();
    std::fs::write(
        d.join("usr/share/doc").join(package).join("README"),
        package,
    )
    .unwrap();
    std::fs::write(
        d.join("DEBIAN/control"),
        format!("Package: {package}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: Kiln <kiln@example.org>\nDescription: kiln test package\n"),
    )
    .unwrap();
    if let Some(script) = postinst {
        std::fs::write(d.join("DEBIAN/postinst"), script).unwrap();
        std::fs::set_permissions(
            d.join("DEBIAN/postinst"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    let out = d.with_extension("deb");
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&d)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "dpkg-deb: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(out).unwrap()
}

/// Deterministic noise, so blobs do not compress away.
/// A user with this name and every other field at its default (no home created).
pub fn user(name: &str) -> User {
    User {
        name: name.into(),
        uid: None,
        group: None,
        groups: vec![],
        home: None,
        shell: None,
        comment: None,
        system: false,
        create_home: false,
        authorized_keys: vec![],
    }
}

pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// A fresh copy of the debootstrapped base root (KILN_TEST_BASE) under /var/tmp. Without it:
/// in CI (CI=true) the test fails; elsewhere it is skipped with a note (returns None).
pub fn base_root() -> Option<TempDir> {
    let base = match std::env::var_os("KILN_TEST_BASE") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => {
            if in_ci() {
                panic!("KILN_TEST_BASE is not set, and CI=true: the base-image tests must run in CI (see tests/support/base-image.sh)");
            }
            eprintln!("note: KILN_TEST_BASE is not set: skipping this test (set it to a debootstrapped bookworm minbase root)");
            return None;
        }
    };
    if !is_root() {
        if in_ci() {
            panic!("the base-image tests need root (uids, chroot)");
        }
        eprintln!("note: not root: skipping this base-image test");
        return None;
    }
    assert!(
        base.join("etc/os-release").exists(),
        "KILN_TEST_BASE={} is not a root filesystem",
        base.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("kiln-fb-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", base.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} failed", base.display());
    Some(dir)
}

/// A small synthetic root: os-release, dpkg status (for the architecture), passwd and group.
/// Needs root to own files as root; returns None (skip) when not root outside CI.
pub fn mini_root() -> Option<TempDir> {
    if !is_root() {
        if in_ci() {
            panic!("these tests need root (files owned by uid 0)");
        }
        eprintln!("note: not root: skipping");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("kiln-fb-mini-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    for sub in ["etc", "usr/lib", "var/lib/dpkg", "tmp", "opt", "srv"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        d.join("usr/lib/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", d.join("etc/os-release")).unwrap();
    std::fs::write(
        d.join("var/lib/dpkg/status"),
        format!(
            "Package: dpkg\nStatus: install ok installed\nVersion: 1.21.22\nArchitecture: {}\n",
            host_arch()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(d.join("etc/group"), "root:x:0:\ndaemon:x:1:\nadm:x:4:\n").unwrap();
    std::fs::write(d.join("etc/hostname"), "mini\n").unwrap();
    Some(dir)
}

/// A hash of a whole tree: every path with its type, mode, owner, content or link target or
/// device number, never following symlinks.
pub fn tree_hash(root: &Path) -> String {
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.sort();
    sha256_hex(lines.join("\n").as_bytes())
}

/// The lines [`tree_hash`] hashes (for a readable diff when it fails).
pub fn tree_listing(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    walk(root, root, &mut lines);
    lines.sort();
    lines
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let what = if ft.is_symlink() {
            format!("link {}", std::fs::read_link(&p).unwrap().display())
        } else if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            format!("file {}", sha256_hex(&std::fs::read(&p).unwrap()))
        } else {
            format!("special {:o} {}", md.mode() & 0o170000, md.rdev())
        };
        out.push(format!(
            "{rel} {:o} {}:{} {what}",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        ));
        if ft.is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Runs the binary; returns its output.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// [`run`] with these environment variables (and none of Consul's from the test's own).
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .env_remove("CI")
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_SSL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    eprintln!(
        "$ kiln-firstboot {}\n--- exit {:?}\n--- stderr\n{}--- stdout\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `kiln-firstboot apply --root R --trust T --bundle B` plus `extra`.
pub fn apply(root: &Path, trust: &Path, bundle: &Path, extra: &[&str]) -> Output {
    apply_env(root, trust, bundle, extra, &[])
}

/// [`apply`] with environment variables.
pub fn apply_env(
    root: &Path,
    trust: &Path,
    bundle: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec![
        "apply",
        "--root",
        root.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_env(&args, env)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A directory outside every root, which must stay empty.
pub fn outside_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("kiln-outside-")
        .tempdir_in("/tmp")
        .unwrap()
}

pub fn assert_empty(dir: &Path) {
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.is_empty(),
        "{} is not empty: {names:?}",
        dir.display()
    );
}

pub fn read_state(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("var/lib/kiln/state.json")).unwrap()).unwrap()
}

/// uid of a user in the root's /etc/passwd.
pub fn uid_in(root: &Path, name: &str) -> u32 {
    id_in(&root.join("etc/passwd"), name, 2)
}

pub fn gid_in(root: &Path, name: &str) -> u32 {
    id_in(&root.join("etc/group"), name, 2)
}

fn id_in(file: &Path, name: &str, field: usize) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("{name} not in {}", file.display()))[field]
        .parse()
        .unwrap()
}
