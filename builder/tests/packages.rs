//! Package resolution against a real debootstrapped bookworm base (KILN_TEST_BASE), with apt
//! reaching the Debian mirror; the offline install of the result by kiln-firstboot in a network
//! namespace with no network; the SBOM checked by the SPDX project's validator; and the errors:
//! unknown package, unsatisfiable pin, base missing, apt unreachable, another base.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// `kiln build HOSTGROUP... --base BASE` into `out`; returns the kiln output.
fn build_with_base(
    config: &Path,
    key: &Path,
    out: &Path,
    base: &str,
    hostgroups: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let cache = test_cache();
    let mut args = vec![
        "build",
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "3",
        "--expires",
        "3650d",
        "--base",
        base,
        "--cache",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(hostgroups);
    kiln(&args)
}

fn packages_of(m: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

/// The example `web` hostgroup built against the base with nginx and less pinned (to what apt
/// picks unpinned) and bash (in the base) declared; checks the manifest and the SBOM. Returns
/// the bundle, its packages and the trust directory.
fn pinned_web(t: &Path, base: &str) -> (PathBuf, BTreeMap<String, serde_json::Value>, PathBuf) {
    let (key, trust) = key_and_trust(t);
    let repo = repo_root();

    // 1. The example web hostgroup, unpinned, to learn what apt picks.
    let out1 = t.join("out1");
    ok(&build_with_base(&repo, &key, &out1, base, &["web"], &[]));
    let m1 = manifest(&out1.join("web-3.kiln"));
    let p1 = packages_of(&m1);
    let nginx = p1["nginx"]["version"].as_str().unwrap().to_string();
    let less = p1["less"]["version"].as_str().unwrap().to_string();

    // 2. The same with pins (and a package the base already has, which is not carried).
    let config = example_config(t);
    append(
        &config.join("hostgroups/web.yaml"),
        &format!("\npackages:\n  nginx: {{version: \"{nginx}\"}}\n  less: {{version: \"{less}\"}}\n  bash: {{}}\n"),
    );
    let out = t.join("out");
    ok(&build_with_base(&config, &key, &out, base, &["web"], &[]));
    let bundle = out.join("web-3.kiln");
    let m = manifest(&bundle);
    let pkgs = packages_of(&m);
    assert_eq!(pkgs["nginx"]["version"], nginx.as_str());
    assert_eq!(pkgs["less"]["version"], less.as_str());

    // Every package is a resolved deb: version, arch, digest, size, and its blob.
    let blobs: BTreeMap<String, u64> = m["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["digest"].as_str().unwrap().to_string(),
                b["size"].as_u64().unwrap(),
            )
        })
        .collect();
    for (name, p) in &pkgs {
        let digest = p["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no digest"));
        assert_eq!(
            blobs.get(digest).copied(),
            p["size"].as_u64(),
            "{name}: blob"
        );
        assert!(
            p["arch"]
                .as_str()
                .is_some_and(|a| a == "amd64" || a == "all"),
            "{name}: arch {}",
            p["arch"]
        );
    }
    // What the base has at the same version is not carried again (bash, libc6, ...).
    let installed = dpkg_versions(Path::new(&base));
    assert!(installed.contains_key("bash") && installed.contains_key("libc6"));
    for (name, p) in &pkgs {
        assert_ne!(
            installed.get(name).map(String::as_str),
            p["version"].as_str(),
            "{name} is in the base already"
        );
    }
    assert!(!pkgs.contains_key("bash"));
    // Dependencies are included (nginx needs nginx-common, which is not in the base).
    assert!(pkgs.contains_key("nginx-common"));

    // The manifest records the base: os-release, arch and the digest of its package set, which
    // is what dpkg-query says (sorted `name version arch` lines).
    let digest = sh(&format!(
        "dpkg-query --admindir={base}/var/lib/dpkg -W -f='${{db:Status-Status}} ${{Package}} ${{Version}} ${{Architecture}}\\n' \
         | awk '$1 == \"installed\" {{ print $2, $3, $4 }}' | LC_ALL=C sort | sha256sum | cut -d' ' -f1"
    ));
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_string();
    assert_eq!(m["base"]["packages_digest"], digest.as_str());
    assert_eq!(
        (
            m["base"]["id"].as_str(),
            m["base"]["version_id"].as_str(),
            m["base"]["arch"].as_str()
        ),
        (Some("debian"), Some("12"), Some("amd64"))
    );

    // The SBOM lists the base and every package with its version, and is valid SPDX.
    let sbom_path = out.join("web-3.spdx.json");
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
    let listed: BTreeMap<String, String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["versionInfo"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = pkgs
        .iter()
        .map(|(n, p)| (n.clone(), p["version"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(listed, want);
    let base_pkgs = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["SPDXID"]
                .as_str()
                .unwrap()
                .starts_with("SPDXRef-base-deb-")
        })
        .count();
    assert_eq!(base_pkgs, installed.len());
    assert!(
        sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["SPDXID"] == "SPDXRef-Base"
                && p["primaryPackagePurpose"] == "OPERATING-SYSTEM")
    );
    if let Some(v) = need("KILN_TEST_SPDX") {
        validate_spdx(&v, &sbom_path);
    }
    (bundle, pkgs, trust)
}

#[test]
fn web_resolves_against_the_base_with_its_pins_and_an_spdx_sbom() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    pinned_web(t.path(), &base);
}

/// Regression: one `dpkg -i` of every deb failed on web, because dpkg refuses a package whose
/// pre-dependency in the same call is not yet configured (cron pre-depends on cron-daemon-common).
/// The example targets a bootable base (systemd, cloud-init, kernel: see hostgroups/default.yaml),
/// so the apply runs on that one: minbase has no systemd units to enable.
#[test]
fn web_installs_offline_in_a_network_namespace_at_the_pinned_versions() {
    let Some(base) = need("KILN_TEST_BOOTABLE_BASE") else {
        return;
    };
    if !need_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (bundle, pkgs, trust) = pinned_web(t.path(), &base);
    let nginx = pkgs["nginx"]["version"].as_str().unwrap().to_string();
    let less = pkgs["less"]["version"].as_str().unwrap().to_string();
    // 3. Applied offline into a copy of the base, in a network namespace with no network.
    let root = t.path().join("root");
    copy_root(&base, &root);
    let Some(firstboot) = firstboot_bin() else {
        return;
    };
    let o = Command::new("unshare")
        .arg("-n")
        .arg(&firstboot)
        .args(["apply", "--bundle"])
        .arg(&bundle)
        .arg("--root")
        .arg(&root)
        .arg("--trust")
        .arg(&trust)
        .output()
        .unwrap();
    let state = std::fs::read_to_string(root.join("var/lib/kiln/state.json")).unwrap_or_default();
    // web reads Consul and Vault at first boot; in a namespace with no network the static part
    // (packages, files, units) completes and the dynamic step then fails with its own code (20),
    // naming the source. That is the point here: nothing in the static part needed a network.
    assert_eq!(
        o.status.code(),
        Some(20),
        "kiln-firstboot apply: exit {:?}\n{}\nstate.json:\n{state}",
        o.status.code(),
        stderr(&o)
    );
    assert!(stderr(&o).contains("Consul"), "{}", stderr(&o));
    let after = dpkg_versions(&root);
    for (name, p) in &pkgs {
        assert_eq!(
            after.get(name).map(String::as_str),
            p["version"].as_str(),
            "dpkg in the root: {name}"
        );
    }
    assert_eq!(after["nginx"], nginx);
    assert_eq!(after["less"], less);
    // No service was started by a maintainer script, and the policy-rc.d is gone again.
    assert!(!root.join("usr/sbin/policy-rc.d").exists());
    // The files that need the packages are there, over the packages' own.
    assert!(
        std::fs::read_to_string(root.join("etc/nginx/sites-available/app.conf"))
            .unwrap()
            .contains("server")
    );
    assert!(!root.join("etc/nginx/sites-enabled/default").exists());
}

#[test]
fn resolution_is_deterministic_and_shares_the_deb_cache() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let repo = repo_root();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ok(&build_with_base(
        &repo,
        &key,
        &a,
        &base,
        &["web", "bastion"],
        &[],
    ));
    // Same base, same lists (no update in between): the same debs, byte-identical bundles.
    ok(&build_with_base(
        &repo,
        &key,
        &b,
        &base,
        &["web", "bastion"],
        &["--no-apt-update"],
    ));
    for f in [
        "web-3.kiln",
        "bastion-3.kiln",
        "web-3.spdx.json",
        "bastion-3.spdx.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    // web and bastion share packages (default.yaml's): one file each in the cache.
    let web = packages_of(&manifest(&a.join("web-3.kiln")));
    let bastion = packages_of(&manifest(&a.join("bastion-3.kiln")));
    let shared: Vec<&String> = web.keys().filter(|n| bastion.contains_key(*n)).collect();
    assert!(shared.len() > 5, "shared: {shared:?}");
    let debs: Vec<PathBuf> = std::fs::read_dir(test_cache().join("apt/debs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for n in shared {
        let v = web[n]["version"].as_str().unwrap().replace(':', "%3a");
        let hits = debs
            .iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{n}_{v}_"))
            })
            .count();
        assert_eq!(hits, 1, "{n} {v}");
    }
}

#[test]
fn unknown_package_and_unsatisfiable_pin_name_hostgroup_package_and_reason() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let config = example_config(t.path());
    append(
        &config.join("hostgroups/web.yaml"),
        "\npackages:\n  no-such-package-kiln: {}\n  nginx: {version: \"0.0.1-1\"}\n",
    );
    let out = t.path().join("out");
    let o = build_with_base(&config, &key, &out, &base, &["web", "db"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("hostgroup web: apt cannot resolve its packages on base"),
        "{err}"
    );
    assert!(
        err.contains("hostgroups/web.yaml:")
            && err.contains(
                "package no-such-package-kiln: E: Unable to locate package no-such-package-kiln"
            ),
        "{err}"
    );
    assert!(
        err.contains(
            "package nginx (pinned 0.0.1-1): E: Version '0.0.1-1' for 'nginx' was not found"
        ),
        "{err}"
    );
    assert!(err.contains("1 of 2 hostgroups failed"), "{err}");
    // The other hostgroup still built.
    assert!(out.join("db-3.kiln").exists() && !out.join("web-3.kiln").exists());
}

#[test]
fn a_missing_base_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let repo = repo_root();
    let out = t.path().join("out");
    let o = build_with_base(&repo, &key, &out, "/nonexistent/rootfs", &["web"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("base /nonexistent/rootfs: No such file or directory"),
        "{}",
        stderr(&o)
    );
    // A base name that was never built: says how to build it.
    let cache = t.path().join("empty-cache");
    let o = kiln(&[
        "build",
        "web",
        "--config",
        repo.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--base",
        "debian-12",
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("base debian-12 is not built in")
            && stderr(&o).contains("kiln base build debian-12"),
        "{}",
        stderr(&o)
    );
    // An unknown name.
    let o = build_with_base(&repo, &key, &out, "debian-99", &["web"], &[]);
    assert!(stderr(&o).contains("no hostgroup targets a base named \"debian-99\" (bases in the configuration: debian-12)"), "{}", stderr(&o));
    // A directory that is not a root filesystem.
    let o = build_with_base(&repo, &key, &out, t.path().to_str().unwrap(), &["web"], &[]);
    assert!(
        stderr(&o).contains("does not look like a root filesystem"),
        "{}",
        stderr(&o)
    );
    // A file that is not a tar archive.
    std::fs::write(t.path().join("junk.tar"), "not a tar archive at all").unwrap();
    let o = build_with_base(
        &repo,
        &key,
        &out,
        t.path().join("junk.tar").to_str().unwrap(),
        &["web"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("reading base archive"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("web-3.kiln").exists());
}

#[test]
fn an_unreachable_archive_is_a_clear_error() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let mini = t.path().join("base");
    mini_base(&base, &mini);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        mini.join("etc/apt/sources.list"),
        format!("deb http://127.0.0.1:{port}/debian bookworm main\n"),
    )
    .unwrap();
    let out = t.path().join("out");
    // Its own cache: the lists of this base must not be found from an earlier run.
    let cache = t.path().join("cache");
    let o = kiln(&[
        "build",
        "web",
        "--config",
        repo_root().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--base",
        mini.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("apt-get update failed for base") && err.contains("unreachable"),
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    // --no-apt-update with no lists says so.
    let o = kiln(&[
        "build",
        "web",
        "--config",
        repo_root().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--base",
        mini.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--no-apt-update",
    ]);
    assert!(
        stderr(&o).contains("--no-apt-update: the cache has no package lists"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_base_of_another_release_is_refused_at_build_and_at_apply() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, trust) = key_and_trust(t.path());
    // At build: the base's os-release is not what the configuration targets.
    let mini = t.path().join("base11");
    mini_base(&base, &mini);
    let os = std::fs::read_to_string(mini.join("usr/lib/os-release"))
        .unwrap()
        .replace("VERSION_ID=\"12\"", "VERSION_ID=\"11\"");
    std::fs::write(mini.join("usr/lib/os-release"), os).unwrap();
    let out = t.path().join("out");
    let o = build_with_base(
        &repo_root(),
        &key,
        &out,
        mini.to_str().unwrap(),
        &["web"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is not the base this hostgroup targets (debian-12): os-release VERSION_ID is \"11\", the configuration says version_id \"12\""),
        "{}",
        stderr(&o)
    );
    // At apply: a bundle built for bookworm, applied to a root that says it is Debian 11.
    if !need_root() {
        return;
    }
    ok(&build_with_base(
        &repo_root(),
        &key,
        &out,
        &base,
        &["web"],
        &[],
    ));
    let root = t.path().join("root");
    copy_root(&base, &root);
    let os = std::fs::read_to_string(root.join("usr/lib/os-release"))
        .unwrap()
        .replace("VERSION_ID=\"12\"", "VERSION_ID=\"11\"");
    std::fs::write(root.join("usr/lib/os-release"), os).unwrap();
    let Some(firstboot) = firstboot_bin() else {
        return;
    };
    let o = Command::new(&firstboot)
        .args(["apply", "--bundle"])
        .arg(out.join("web-3.kiln"))
        .arg("--root")
        .arg(&root)
        .arg("--trust")
        .arg(&trust)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    assert!(!root.join("var/lib/kiln/state.json").exists());
}

#[test]
fn a_tar_base_resolves_like_its_directory() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let mini = t.path().join("base");
    mini_base(&base, &mini);
    let tar = t.path().join("base.tar.zst");
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&mini)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ok(&build_with_base(
        &repo_root(),
        &key,
        &a,
        mini.to_str().unwrap(),
        &["web"],
        &[],
    ));
    ok(&build_with_base(
        &repo_root(),
        &key,
        &b,
        tar.to_str().unwrap(),
        &["web"],
        &["--no-apt-update"],
    ));
    let (ma, mb) = (
        manifest(&a.join("web-3.kiln")),
        manifest(&b.join("web-3.kiln")),
    );
    assert_eq!(ma["packages"], mb["packages"]);
    assert_eq!(ma["base"], mb["base"]);
}

#[test]
fn kiln_base_show_reports_the_package_digest() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    let o = kiln(&["base", "show", &base, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["id"], "debian");
    assert_eq!(v["version_id"], "12");
    assert_eq!(v["arch"], "amd64");
    assert_eq!(
        v["packages"].as_array().unwrap().len(),
        dpkg_versions(Path::new(&base)).len()
    );
    assert_eq!(v["packages_digest"].as_str().unwrap().len(), 64);
}
