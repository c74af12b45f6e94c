//! The shipped example on the path a user takes (README): `kiln base build debian-12` (done by
//! .ci/run into KILN_TEST_KILN_CACHE), `kiln build --all --base debian-12` against it, then for
//! EVERY hostgroup `kiln-firstboot apply` of the signed bundle exactly as built, on a fresh copy
//! of that base, with its packages installed offline from the bundle and its dynamic step against
//! a real OpenBao (KILN_TEST_BAO) and the project's Consul test server. Nothing is pre-seeded in
//! the root and nothing is stripped from the bundle.
//!
//! Asserted as a user would see it: exit 0; every entry's bytes, mode, owner and group; symlinks
//! and absent paths; users and their keys; every carried package installed at its version;
//! services enabled or disabled; the rendered dynamic values; state.json; the node report in
//! Consul. `cargo test --release -p kiln-builder --test integration example_apply:: -- --nocapture` prints each
//! hostgroup's apply time and phase split as MEASURE lines.

use crate::bao;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::bao::Bao;
use crate::support::*;
use consul_test_server::TestServer;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// name -> id, from a root's /etc/passwd or /etc/group.
fn ids(root: &Path, file: &str) -> BTreeMap<String, u32> {
    std::fs::read_to_string(root.join(file))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .collect()
}

fn passwd_line(root: &Path, user: &str) -> Option<Vec<String>> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .find(|f| f[0] == user)
}

fn mode_of(s: &str) -> u32 {
    u32::from_str_radix(s, 8).unwrap()
}

/// Every entry of the manifest, checked on disk.
fn check_entries(root: &Path, m: &Value) {
    let users = ids(root, "etc/passwd");
    let groups = ids(root, "etc/group");
    let id = |map: &BTreeMap<String, u32>, name: &str| -> u32 {
        name.parse()
            .ok()
            .or_else(|| map.get(name).copied())
            .unwrap_or_else(|| panic!("account {name:?} is not in the applied root"))
    };
    for e in m["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        let on_disk = root.join(path.trim_start_matches('/'));
        let meta = std::fs::symlink_metadata(&on_disk);
        match e["type"].as_str().unwrap() {
            "file" | "directory" => {
                let meta = meta.unwrap_or_else(|err| panic!("{path}: {err}"));
                if e["type"] == "file" {
                    assert!(meta.is_file(), "{path} is not a regular file");
                    let bytes = std::fs::read(&on_disk).unwrap();
                    assert_eq!(
                        hex(&Sha256::digest(&bytes)),
                        e["digest"].as_str().unwrap(),
                        "{path}: bytes differ from the bundle's"
                    );
                } else {
                    assert!(meta.is_dir(), "{path} is not a directory");
                }
                assert_eq!(
                    meta.mode() & 0o7777,
                    mode_of(e["mode"].as_str().unwrap()),
                    "{path}: mode"
                );
                assert_eq!(
                    meta.uid(),
                    id(&users, e["owner"].as_str().unwrap()),
                    "{path}: owner"
                );
                assert_eq!(
                    meta.gid(),
                    id(&groups, e["group"].as_str().unwrap()),
                    "{path}: group"
                );
            }
            "symlink" => {
                assert_eq!(
                    std::fs::read_link(&on_disk)
                        .unwrap_or_else(|err| panic!("{path}: {err}"))
                        .to_str()
                        .unwrap(),
                    e["target"].as_str().unwrap(),
                    "{path}: link target"
                );
            }
            "absent" => assert!(meta.is_err(), "{path} should be absent"),
            other => panic!("{path}: unknown entry type {other}"),
        }
    }
    for t in m["templates"].as_array().unwrap() {
        let path = t["path"].as_str().unwrap();
        let meta = std::fs::symlink_metadata(root.join(path.trim_start_matches('/')))
            .unwrap_or_else(|err| panic!("dynamic template {path} not rendered: {err}"));
        assert!(meta.is_file(), "{path}");
        assert_eq!(
            meta.mode() & 0o7777,
            mode_of(t["mode"].as_str().unwrap()),
            "{path}: mode"
        );
        assert_eq!(
            meta.uid(),
            id(&users, t["owner"].as_str().unwrap()),
            "{path}: owner"
        );
        assert_eq!(
            meta.gid(),
            id(&groups, t["group"].as_str().unwrap()),
            "{path}: group"
        );
    }
    for u in m["users"].as_array().unwrap() {
        let name = u["name"].as_str().unwrap();
        let line = passwd_line(root, name).unwrap_or_else(|| panic!("user {name} missing"));
        if let Some(uid) = u["uid"].as_u64() {
            assert_eq!(line[2], uid.to_string(), "uid of {name}");
        }
        let keys = u["authorized_keys"].as_array().unwrap();
        if !keys.is_empty() {
            let home = root.join(line[5].trim_start_matches('/'));
            let ak = std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap();
            for k in keys {
                assert!(ak.contains(k.as_str().unwrap()), "{name}'s authorized_keys");
            }
            let meta = std::fs::metadata(home.join(".ssh/authorized_keys")).unwrap();
            assert_eq!(
                meta.uid().to_string(),
                line[2],
                "{name} owns authorized_keys"
            );
        }
    }
    for g in m["groups"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let gid = *groups
            .get(name)
            .unwrap_or_else(|| panic!("group {name} missing"));
        if let Some(want) = g["gid"].as_u64() {
            assert_eq!(gid as u64, want, "gid of {name}");
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check_packages(root: &Path, m: &Value) -> usize {
    let installed = dpkg_versions(root);
    let pkgs = m["packages"].as_array().unwrap();
    for p in pkgs {
        let name = p["name"].as_str().unwrap();
        assert!(
            p["digest"].is_string(),
            "{name} is not carried (built without --base?)"
        );
        assert_eq!(
            installed.get(name).map(String::as_str),
            p["version"].as_str(),
            "package {name} in the applied root"
        );
    }
    pkgs.len()
}

fn check_services(root: &Path, m: &Value) {
    for s in m["services"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let o = Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .args(["is-enabled", name])
            .output()
            .unwrap();
        let now = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if s["enabled"] == true {
            assert!(
                ["enabled", "static", "alias", "indirect", "generated"].contains(&now.as_str()),
                "{name} should be enabled, is {now:?}"
            );
        } else {
            assert!(
                ["disabled", "masked", "static"].contains(&now.as_str()),
                "{name} should be disabled, is {now:?}"
            );
        }
    }
}

struct Fleet {
    bao: Bao,
    consul: TestServer,
    roles: BTreeMap<&'static str, String>,
    creds: tempfile::TempDir,
}

impl Fleet {
    /// OpenBao and Consul as docs/dynamic.md sets them up.
    fn start() -> Option<Fleet> {
        let bao = bao::bao_bin().and_then(|_| Bao::start())?;
        let db_policy =
            r#"path "secret/data/db/app" { capabilities = ["read", "create", "update"] }"#;
        let web_policy = r#"
path "secret/data/db/app" { capabilities = ["read", "create", "update"] }
path "pki/issue/web" { capabilities = ["update"] }
"#;
        let mut roles = BTreeMap::new();
        roles.insert("db", bao.approle("db", db_policy));
        roles.insert("web", bao.approle("web", web_policy));
        bao.pki("web", "example.invalid");
        let consul = TestServer::start();
        consul.put("kiln/apps/web/version", b"1.4.2");
        Some(Fleet {
            bao,
            consul,
            roles,
            creds: tempfile::tempdir().unwrap(),
        })
    }

    /// `kiln-firstboot apply` with the flags a VM gets (the Vault ones where the bundle logs in).
    fn apply(&self, hostgroup: &str, bundle: &Path, trust: &Path, root: &Path) -> (i32, String) {
        let mut args: Vec<String> = [
            "apply",
            "--root",
            root.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--consul-addr",
            &self.consul.url(),
            "--dynamic-deadline",
            "60s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(role_id) = self.roles.get(hostgroup) {
            let rid = self.creds.path().join(format!("{hostgroup}.role_id"));
            std::fs::write(&rid, role_id).unwrap();
            let wrapped = self.creds.path().join(format!("{hostgroup}.wrapped"));
            std::fs::write(&wrapped, self.bao.wrapped_secret_id(hostgroup, None)).unwrap();
            args.extend([
                "--vault-addr".into(),
                self.bao.addr.clone(),
                "--vault-role-id-file".into(),
                rid.to_str().unwrap().into(),
                "--wrapped-secret-id-file".into(),
                wrapped.to_str().unwrap().into(),
            ]);
        }
        let o = Command::new(firstboot_bin().unwrap())
            .args(&args)
            .output()
            .unwrap();
        (o.status.code().unwrap_or(-1), stderr(&o))
    }
}

#[test]
fn every_example_hostgroup_applies_on_its_real_base_with_packages_and_dynamic_values() {
    let Some(cache) = need("KILN_TEST_KILN_CACHE") else {
        return;
    };
    if !need_root() || firstboot_bin().is_none() {
        return;
    }
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("kiln-example-apply-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let (key, trust) = key_and_trust(dir.path());
    let out = dir.path().join("out");
    let repo = repo_root();

    // The README's commands: the base from the cache (.ci/run built it with `kiln base build
    // debian-12`), every hostgroup built against it. Built now (no fixed SOURCE_DATE_EPOCH):
    // the bundles must be valid today.
    let o = Command::new(KILN)
        .args([
            "base",
            "build",
            "debian-12",
            "--json",
            "--cache",
            &cache,
            "--config",
        ])
        .arg(&repo)
        .output()
        .unwrap();
    let base_json: Value = serde_json::from_str(&ok(&o)).unwrap();
    let base = base_json["rootfs"]
        .as_str()
        .unwrap_or_else(|| panic!("kiln base build --json: no rootfs in {base_json}"))
        .to_string();
    let o = Command::new(KILN)
        .args([
            "build",
            "--all",
            "--base",
            "debian-12",
            "--cache",
            &cache,
            "--version",
            "7",
        ])
        .arg("--config")
        .arg(&repo)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    ok(&o);

    let hostgroups: Vec<String> = std::fs::read_dir(repo.join("hostgroups"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix(".yaml")
                .filter(|h| *h != "default")
                .map(str::to_string)
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(hostgroups.len() >= 4, "{hostgroups:?}");
    // db first: it generates the database password web then reads.
    let mut order = hostgroups.clone();
    order.sort_by_key(|h| (h != "db", h.clone()));

    for hg in &order {
        let bundle = out.join(format!("{hg}-7.kiln"));
        let m = manifest(&bundle);
        let root = dir.path().join(format!("root-{hg}"));
        copy_root(&base, &root);
        let host = format!("{hg}-1");
        std::fs::write(root.join("etc/hostname"), format!("{host}\n")).unwrap();

        let (code, err) = fleet.apply(hg, &bundle, &trust, &root);
        let state_text =
            std::fs::read_to_string(root.join("var/lib/kiln/state.json")).unwrap_or_default();
        assert_eq!(
            code, 0,
            "{hg}: kiln-firstboot apply failed:\n{err}\nstate.json:\n{state_text}"
        );
        let state: Value = serde_json::from_str(&state_text).unwrap();
        assert_eq!(state["result"], "success", "{hg}");
        assert_eq!(state["hostgroup"], hg.as_str());

        check_entries(&root, &m);
        // Every command ran, and succeeded.
        let ran: Vec<(String, String)> = state["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = m["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), "ok".to_string()))
            .collect();
        assert_eq!(ran, want, "{hg}: commands");
        let packages = check_packages(&root, &m);
        check_services(&root, &m);
        // Nothing a maintainer script could have started stays allowed to start.
        assert!(
            !root.join("usr/sbin/policy-rc.d").exists(),
            "{hg}: policy-rc.d left behind"
        );
        // The journal and staging area are gone after success.
        assert!(
            !root.join("var/lib/kiln/staging").exists()
                || std::fs::read_dir(root.join("var/lib/kiln/staging"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{hg}: staging left behind"
        );

        // The report a rollout reads.
        let report = fleet
            .consul
            .get(&format!("kiln/nodes/{hg}/{host}"))
            .unwrap_or_else(|| panic!("{hg}: no report in Consul"));
        let report: Value = serde_json::from_slice(&report.value).unwrap();
        assert_eq!(report["result"], "success", "{hg}: {report}");
        assert_eq!(report["version"], 7, "{hg}: {report}");

        let steps: Vec<String> = state["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {:.2}s",
                    s["name"].as_str().unwrap(),
                    s["seconds"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let total: f64 = state["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["seconds"].as_f64().unwrap_or(0.0))
            .sum();
        eprintln!(
            "MEASURE {hg}: {} entries, {packages} packages, {} templates, apply {total:.1}s [{}]",
            m["entries"].as_array().unwrap().len(),
            m["templates"].as_array().unwrap().len(),
            steps.join(", ")
        );

        // What each hostgroup's own values must be.
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        match hg.as_str() {
            "db" => {
                let pw = fleet.bao.kv_get("db/app").unwrap()["password"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert_eq!(pw.len(), 32);
                assert_eq!(read("etc/app-db/app.password"), format!("{pw}\n"));
                // Owned by the account the postgresql package made (system_accounts).
                let pg = ids(&root, "etc/passwd")["postgres"];
                assert_eq!(
                    std::fs::metadata(root.join("etc/app-db/app.password"))
                        .unwrap()
                        .uid(),
                    pg
                );
                assert!(root
                    .join("etc/postgresql/15/main/postgresql.conf")
                    .is_file());
            }
            "web" => {
                let pw = fleet.bao.kv_get("db/app").unwrap()["password"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let env = read("etc/app/app.env");
                assert!(env.contains("APP_VERSION=1.4.2\n"), "{env}");
                assert!(env.contains(&format!("DATABASE_PASSWORD={pw}\n")), "{env}");
                assert_eq!(
                    read("etc/ssl/kiln/web.crt")
                        .matches("BEGIN CERTIFICATE")
                        .count(),
                    2
                );
                assert!(read("etc/ssl/kiln/web.key").contains("PRIVATE KEY"));
            }
            _ => {}
        }
        // A second run is a no-op that says so.
        let (code, err) = fleet.apply(hg, &bundle, &trust, &root);
        assert_eq!(code, 0, "{hg}: rerun:\n{err}");
        assert!(err.contains("already applied"), "{hg}: rerun:\n{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
