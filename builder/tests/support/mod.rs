//! Helpers shared by the tests that need a real base image, apt and the SPDX validator.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// 2026-01-01T00:00:00Z: bundles are reproducible and do not expire during the test.
pub const EPOCH: &str = "1767225600";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The value of a test variable; under CI (`CI=true`) a missing one fails the test, elsewhere
/// the test is skipped with a note (tests/README.md).
pub fn need(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{var} is not set: .ci/run prepares it (see tests/README.md); under CI this is a failure, not a skip")
        }
        _ => {
            eprintln!("skipped: {var} is not set (see tests/README.md)");
            None
        }
    }
}

/// Whether this process can do what root does (copy a root filesystem, chroot, unshare).
pub fn need_root() -> bool {
    if nix_is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root; CI runs as root");
    }
    eprintln!("skipped: needs root");
    false
}

fn nix_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// kiln's cache for tests: shared between runs under CI ($KILN_CACHE/kiln-tests), so apt lists
/// and .debs are downloaded once; else a directory in the system temp dir.
pub fn test_cache() -> PathBuf {
    match std::env::var_os("KILN_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c).join("kiln-tests"),
        _ => std::env::temp_dir().join("kiln-tests-cache"),
    }
}

/// Bundles built at EPOCH with the default --expires (90d) are long expired, which kiln build
/// refuses: a build without --expires gets 100 years.
pub fn with_expiry<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if args.first() == Some(&"build") && !args.contains(&"--expires") {
        args.extend(["--expires", "36500d"]);
    }
    args
}

pub fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(with_expiry(args))
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("KILN_CONFIG")
        .env_remove("KILN_CACHE_DIR")
        .output()
        .unwrap()
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

/// A signing key in `dir` and a trust directory with its public half.
pub fn key_and_trust(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("key");
    ok(&kiln(&[
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--comment",
        "test",
    ]));
    let trust = dir.join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(dir.join("key.pub"), trust.join("key.pub")).unwrap();
    (key, trust)
}

/// A copy of the example configuration (hostgroups, layers, files) to change in a test.
pub fn example_config(dir: &Path) -> PathBuf {
    let c = dir.join("config");
    std::fs::create_dir_all(&c).unwrap();
    for d in ["hostgroups", "layers", "files"] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(repo_root().join(d))
            .arg(&c)
            .status()
            .unwrap();
        assert!(st.success());
    }
    c
}

/// A copy of a root filesystem (cp -a, reflinks where the filesystem has them).
pub fn copy_root(src: &str, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    let st = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(format!("{src}/."))
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {src} {}", dst.display());
}

/// Only what resolution reads from a base (os-release, dpkg status, etc/apt): a small stand-in
/// for a root that tests may change (sources, os-release) without copying the whole root.
pub fn mini_base(src: &str, dst: &Path) {
    for d in ["etc", "usr/lib", "var/lib/dpkg"] {
        std::fs::create_dir_all(dst.join(d)).unwrap();
    }
    let st = Command::new("cp")
        .args(["-a", "-L"])
        .arg(format!("{src}/etc/apt"))
        .arg(dst.join("etc"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::copy(
        format!("{src}/usr/lib/os-release"),
        dst.join("usr/lib/os-release"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../usr/lib/os-release", dst.join("etc/os-release")).unwrap();
    std::fs::copy(
        format!("{src}/var/lib/dpkg/status"),
        dst.join("var/lib/dpkg/status"),
    )
    .unwrap();
}

/// The manifest of a bundle, as JSON.
pub fn manifest(bundle: &Path) -> serde_json::Value {
    let o = kiln(&["inspect", "--json", bundle.to_str().unwrap()]);
    serde_json::from_str(&ok(&o)).unwrap()
}

/// Checks an SBOM with the SPDX project's validator (pyspdxtools, KILN_TEST_SPDX).
pub fn validate_spdx(validator: &str, file: &Path) {
    let o = Command::new(validator)
        .arg("-i")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pyspdxtools -i {} refused it:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Installed packages of a root: name -> version, as dpkg-query in the root says.
pub fn dpkg_versions(root: &Path) -> std::collections::BTreeMap<String, String> {
    let o = Command::new("dpkg-query")
        .arg(format!("--admindir={}/var/lib/dpkg", root.display()))
        .args(["-W", "-f=${db:Status-Status} ${Package} ${Version}\n"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            (f.next() == Some("installed")).then(|| {
                (
                    f.next().unwrap().to_string(),
                    f.next().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// The kiln-firstboot binary beside kiln (cargo builds every binary of the workspace for
/// `cargo test --workspace` and .ci/run's `cargo build --workspace`).
pub fn firstboot_bin() -> Option<PathBuf> {
    let p = Path::new(KILN).with_file_name("kiln-firstboot");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing: build the workspace (cargo build --workspace)",
            p.display()
        );
    }
    eprintln!(
        "skipped: {} is missing (cargo build -p kiln-firstboot)",
        p.display()
    );
    None
}
