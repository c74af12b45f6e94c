//! `kiln cloud-init`: the user-data passes Debian's real `cloud-init schema --config-file`, has
//! exactly the structure Kiln means (cloud-init 22.4 does not reject unknown top-level keys, so
//! the structure is asserted too, through python3-yaml, which cloud-init itself uses), stays
//! under AWS's 16 KB, hands the wrapped secret_id over 0600 root under /run (and only there),
//! pins the digest, and its runcmd script reports failure loudly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;
use serde_json::{json, Value};

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    sha256: String,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let (key, _trust) = key_and_trust(&dir);
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("hostgroups")).unwrap();
    std::fs::write(
        config.join("hostgroups/default.yaml"),
        "files:\n  /etc/motd: {content: \"hi\\n\"}\n",
    )
    .unwrap();
    std::fs::write(config.join("hostgroups/web.yaml"), "vars: {}\n").unwrap();
    let out = dir.join("out");
    ok(&kiln(&[
        "build",
        "web",
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
    ]));
    let bundle = out.join("web-7.kiln");
    let sha256 = sh(&format!("sha256sum {} | cut -c1-64", bundle.display()));
    let sha256 = String::from_utf8_lossy(&sha256.stdout).trim().to_string();
    std::fs::write(dir.join("wrapped"), "s.WRAPPEDTOKEN123\n").unwrap();
    std::fs::write(dir.join("consul-token"), "c0ffee-token\n").unwrap();
    Fixture {
        _t: t,
        dir,
        bundle,
        sha256,
    }
}

/// `cloud-init schema --config-file` (Debian's package). Missing: fails in CI, else skipped.
fn schema(file: &Path) -> Option<(bool, String)> {
    let o = match Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("cloud-init is not installed; .ci/run installs it")
        }
        Err(_) => {
            eprintln!("skipped: cloud-init is not installed (apt-get install cloud-init)");
            return None;
        }
    };
    Some((
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

/// The YAML as cloud-init reads it (python3-yaml, cloud-init's own parser).
fn yaml(file: &Path) -> Value {
    let o = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn cloud_init(f: &Fixture, name: &str, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let out = f.dir.join(name);
    let out_s = out.to_str().unwrap().to_string();
    let mut args = vec!["cloud-init", "web"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--out", &out_s]);
    let o = kiln(&args);
    (out, o)
}

#[test]
fn runcmd_user_data_is_valid_small_and_exactly_what_kiln_means() {
    let f = fixture();
    let bundle = f.bundle.to_str().unwrap();
    let (out, o) = cloud_init(
        &f,
        "user-data",
        &[
            "--bundle-url",
            "http://10.0.2.100/bundles/web-7.kiln",
            "--bundle-file",
            bundle,
            "--consul-addr",
            "http://10.0.2.100:8500",
            "--consul-token-file",
            f.dir.join("consul-token").to_str().unwrap(),
            "--vault-addr",
            "http://10.0.2.100:8200",
            "--wrapped-secret-id-file",
            f.dir.join("wrapped").to_str().unwrap(),
            "--min-version",
            "5",
        ],
    );
    ok(&o);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
    // The file holds secrets: 0600.
    let mode = std::fs::metadata(&out).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    if let Some((valid, msg)) = schema(&out) {
        assert!(valid, "cloud-init schema: {msg}");
        assert!(msg.contains("Valid cloud-config"), "{msg}");
    }
    let v = yaml(&out);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["runcmd", "write_files"], "{v}");
    let files = v["write_files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/etc/kiln/firstboot.conf",
            "/run/kiln/consul-token",
            "/run/kiln/wrapped-secret-id"
        ]
    );
    for f in files {
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["content", "owner", "path", "permissions"], "{f}");
        assert_eq!(f["owner"], "root:root");
    }
    assert_eq!(files[0]["permissions"], "0644");
    assert_eq!(
        files[0]["content"],
        "# Written by cloud-init (kiln cloud-init): where Consul and Vault are.\n\
         consul-addr = http://10.0.2.100:8500\n\
         consul-token-file = /run/kiln/consul-token\n\
         vault-addr = http://10.0.2.100:8200\n\
         wrapped-secret-id-file = /run/kiln/wrapped-secret-id\n"
    );
    assert_eq!(
        files[2],
        json!({"path": "/run/kiln/wrapped-secret-id", "owner": "root:root",
               "permissions": "0600", "content": "s.WRAPPEDTOKEN123\n"})
    );
    assert_eq!(files[1]["permissions"], "0600");
    assert_eq!(files[1]["content"], "c0ffee-token\n");
    // The secrets appear nowhere else (not in the command line, not in the config file).
    assert_eq!(text.matches("s.WRAPPEDTOKEN123").count(), 1);
    assert_eq!(text.matches("c0ffee-token").count(), 1);
    // runcmd: exactly one command, `sh -c SCRIPT`.
    let runcmd = v["runcmd"].as_array().unwrap();
    assert_eq!(runcmd.len(), 1);
    let cmd = runcmd[0].as_array().unwrap();
    assert_eq!(cmd.len(), 3);
    assert_eq!((cmd[0].as_str(), cmd[1].as_str()), (Some("sh"), Some("-c")));
    let script = cmd[2].as_str().unwrap();
    assert!(
        script.contains(&format!(
            "'/usr/local/sbin/kiln-firstboot' apply --bundle 'http://10.0.2.100/bundles/web-7.kiln' --sha256 {} --hostgroup 'web' --min-version 5\n",
            f.sha256
        )),
        "{script}"
    );
    assert!(script.ends_with("exit \"$rc\"\n"), "{script}");
    // The script is valid POSIX sh.
    let check = Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The runcmd script, run here with a fake kiln-firstboot: its exit code is the script's, and
/// one marker line says OK or FAILED with the code.
#[test]
fn the_script_passes_kiln_firstboots_exit_code_on_and_says_so() {
    let f = fixture();
    for (code, want) in [
        (0, "KILN-FIRSTBOOT: OK hostgroup=web"),
        (19, "KILN-FIRSTBOOT: FAILED exit=19 hostgroup=web"),
    ] {
        let fake = f.dir.join(format!("fake-{code}"));
        std::fs::write(
            &fake,
            format!("#!/bin/sh\necho \"fake $*\" >&2\nexit {code}\n"),
        )
        .unwrap();
        sh(&format!("chmod 755 {}", fake.display()));
        let (out, o) = cloud_init(
            &f,
            &format!("ud-{code}"),
            &[
                "--bundle-url",
                "https://x.invalid/web-7.kiln",
                "--sha256",
                &f.sha256,
                "--firstboot-path",
                fake.to_str().unwrap(),
            ],
        );
        ok(&o);
        let v = yaml(&out);
        let script = v["runcmd"][0][2].as_str().unwrap().to_string();
        // /dev/console is not ours here: the marker goes to the script's stdout instead.
        let script = script.replace(">/dev/console", "");
        let r = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert_eq!(r.status.code(), Some(code));
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.contains("KILN-FIRSTBOOT: start uptime="), "{stdout}");
        assert!(stdout.contains(want), "{stdout}");
        assert!(String::from_utf8_lossy(&r.stderr).contains(&format!("--sha256 {}", f.sha256)));
    }
}

#[test]
fn systemd_and_seed_disk_variants_are_valid_too() {
    let f = fixture();
    let bundle = f.bundle.to_str().unwrap();
    // --via systemd: no runcmd; the unit's environment file instead.
    let (out, o) = cloud_init(
        &f,
        "ud-systemd",
        &[
            "--via",
            "systemd",
            "--bundle-url",
            "https://b.invalid/web-7.kiln",
            "--bundle-file",
            bundle,
        ],
    );
    ok(&o);
    if let Some((valid, msg)) = schema(&out) {
        assert!(valid, "{msg}");
    }
    let v = yaml(&out);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["write_files"]);
    assert_eq!(v["write_files"][1]["path"], "/etc/kiln/firstboot.env");
    assert_eq!(
        v["write_files"][1]["content"],
        format!(
            "# Written by cloud-init (kiln cloud-init --via systemd) for kiln-firstboot.service.\n\
             KILN_BUNDLE=\"https://b.invalid/web-7.kiln\"\nKILN_BUNDLE_SHA256={}\nKILN_HOSTGROUP=web\n",
            f.sha256
        )
    );
    // --bundle-file alone: the bundle ships on the seed disk, mounted read-only by label.
    let (out, o) = cloud_init(&f, "ud-seed", &["--bundle-file", bundle]);
    ok(&o);
    if let Some((valid, msg)) = schema(&out) {
        assert!(valid, "{msg}");
    }
    let script = yaml(&out)["runcmd"][0][2].as_str().unwrap().to_string();
    assert!(
        script.contains("mount -o ro LABEL=cidata /run/kiln/seed"),
        "{script}"
    );
    assert!(
        script.contains("--bundle '/run/kiln/seed/web-7.kiln'"),
        "{script}"
    );
}

#[test]
fn refusals() {
    let f = fixture();
    let bundle = f.bundle.to_str().unwrap();
    // Another hostgroup's bundle.
    let o = kiln(&["cloud-init", "db", "--bundle-file", bundle, "--out", "-"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("bundle for hostgroup \"web\", not \"db\""),
        "{}",
        stderr(&o)
    );
    // A pin that does not match the file.
    let o = kiln(&[
        "cloud-init",
        "web",
        "--bundle-file",
        bundle,
        "--sha256",
        &"0".repeat(64),
        "--out",
        "-",
    ]);
    assert!(stderr(&o).contains("does not match"), "{}", stderr(&o));
    // auto without a file to hash.
    let o = kiln(&[
        "cloud-init",
        "web",
        "--bundle-url",
        "https://x.invalid/a.kiln",
        "--out",
        "-",
    ]);
    assert!(
        stderr(&o).contains("--sha256 auto needs --bundle-file"),
        "{}",
        stderr(&o)
    );
    // A secret_id with nowhere to unwrap it; systemd without a URL; a non-URL.
    let w = f.dir.join("wrapped");
    let o = kiln(&[
        "cloud-init",
        "web",
        "--bundle-file",
        bundle,
        "--wrapped-secret-id-file",
        w.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = kiln(&[
        "cloud-init",
        "web",
        "--via",
        "systemd",
        "--bundle-file",
        bundle,
        "--out",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = kiln(&[
        "cloud-init",
        "web",
        "--bundle-url",
        "file:///x",
        "--bundle-file",
        bundle,
        "--out",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Over 16 KB (a huge CA bundle) is refused.
    let ca = f.dir.join("ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\n".to_string()
        + &"QUJD"
            .repeat(16)
            .repeat(300)
            .chars()
            .collect::<Vec<_>>()
            .chunks(64)
            .map(|c| c.iter().collect::<String>() + "\n")
            .collect::<String>()
        + "-----END CERTIFICATE-----\n";
    std::fs::write(&ca, pem).unwrap();
    let o = kiln(&[
        "cloud-init",
        "web",
        "--bundle-file",
        bundle,
        "--consul-ca",
        ca.to_str().unwrap(),
        "--out",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("over the 16 KB"), "{}", stderr(&o));
}

/// A bundle that reads Consul or Vault, with no address for it, would fail on every VM at first
/// boot (exit 20): refused here instead, as a usage error.
#[test]
fn a_bundle_that_reads_consul_or_vault_needs_their_addresses() {
    let t = tempfile::tempdir().unwrap();
    let (key, _trust) = key_and_trust(t.path());
    let out = t.path().join("out");
    ok(&kiln(&[
        "build",
        "web",
        "--config",
        repo_root().to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
    ]));
    let bundle = out.join("web-7.kiln");
    let b = bundle.to_str().unwrap();
    let m = manifest(&bundle);
    assert!(
        m["dynamic"]["consul"].is_object() && m["dynamic"]["vault"].is_object(),
        "the example's web no longer reads both Consul and Vault: {}",
        m["dynamic"]
    );
    let consul = ["--consul-addr", "https://consul.example.internal:8501"];
    let vault = ["--vault-addr", "https://vault.example.internal:8200"];
    let run = |extra: &[&str]| {
        let mut args = vec!["cloud-init", "web", "--bundle-file", b, "--out", "-"];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "kiln: error: {b}: the bundle reads Consul (--consul-addr URL) and Vault (--vault-addr URL) \
             but no address is given: kiln-firstboot would fail at first boot (exit 20)\n"
        )
    );
    assert!(o.stdout.is_empty());
    let o = run(&consul);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the bundle reads Vault (--vault-addr URL) but no address"),
        "{}",
        stderr(&o)
    );
    let o = run(&vault);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the bundle reads Consul (--consul-addr URL) but no address"),
        "{}",
        stderr(&o)
    );
    let o = run(&[consul[0], consul[1], vault[0], vault[1]]);
    let user_data = ok(&o);
    assert!(user_data.contains("vault-addr = https://vault.example.internal:8200"));
}
