//! End-to-end tests of `kiln` on the shipped example configuration: build, verify with kiln and
//! with the real ssh-keygen, reproducibility, tamper refusals with their exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// A fixed build time, so bundles are reproducible and their expiry is predictable.
const EPOCH: &str = "1767225600"; // 2026-01-01T00:00:00Z

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Bundles built at EPOCH with the default --expires (90d) are long expired, which kiln build
/// refuses: a build without --expires gets 100 years.
fn with_expiry<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if args.first() == Some(&"build") && !args.contains(&"--expires") {
        args.extend(["--expires", "36500d"]);
    }
    args
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN)
        .args(with_expiry(args))
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap()
}

/// A bundle's manifest, read with standard tools as the README shows.
fn zstd_manifest(bundle: &Path) -> serde_json::Value {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO kiln/manifest.json",
            bundle.display()
        ))
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap()
}

fn kiln_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .current_dir(dir)
        .args(with_expiry(args))
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("KILN_CONFIG")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    ok(&kiln(&[
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--comment",
        name,
    ]));
    key
}

/// Build every example hostgroup with `key` into `out`; returns hostgroup -> bundle path.
fn build_all(config: &Path, key: &Path, out: &Path, extra: &[&str]) -> BTreeMap<String, PathBuf> {
    let mut args = vec![
        "build",
        "--all",
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
        "--json",
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&kiln(&args));
    let built: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    built
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["hostgroup"].as_str().unwrap().to_string(),
                PathBuf::from(b["path"].as_str().unwrap()),
            )
        })
        .collect()
}

fn trust_dir(dir: &Path, keys: &[&Path]) -> PathBuf {
    let t = dir.join(format!("trust-{}", keys.len()));
    std::fs::create_dir_all(&t).unwrap();
    for (i, k) in keys.iter().enumerate() {
        std::fs::copy(format!("{}.pub", k.display()), t.join(format!("k{i}.pub"))).unwrap();
    }
    t
}

fn verify_code(bundle: &Path, trust: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "verify",
        bundle.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = kiln(&args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn shipped_example_builds_and_verifies_with_kiln_and_ssh_keygen() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let out = tmp.path().join("out");
    let bundles = build_all(&repo_root(), &key, &out, &["--expires", "36500d"]);
    assert!(
        bundles.len() >= 3,
        "expected at least three example hostgroups, got {bundles:?}"
    );
    for name in ["web", "db", "bastion"] {
        assert!(bundles.contains_key(name), "no bundle for {name}");
    }
    let trust = trust_dir(tmp.path(), &[&key]);
    for (name, path) in &bundles {
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("{name}-7.kiln")
        );
        let stdout = ok(&kiln(&[
            "verify",
            path.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
        ]));
        assert!(stdout.starts_with("OK "), "{stdout}");

        // The manifest and its signature come out with standard tools, and OpenSSH accepts it.
        let x = tmp.path().join(format!("x-{name}"));
        std::fs::create_dir_all(&x).unwrap();
        let sh = format!(
            "zstd -dc {b} | tar -x -C {x} kiln/manifest.json kiln/manifest.json.sig",
            b = path.display(),
            x = x.display()
        );
        assert!(Command::new("sh")
            .arg("-c")
            .arg(&sh)
            .status()
            .unwrap()
            .success());
        let pubkey = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
        std::fs::write(x.join("allowed_signers"), format!("ci {pubkey}")).unwrap();
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ssh-keygen -Y verify -f {x}/allowed_signers -I ci -n kiln-bundle -s {x}/kiln/manifest.json.sig < {x}/kiln/manifest.json",
                x = x.display()
            ))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ssh-keygen refused {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(x.join("kiln/manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["hostgroup"], name.as_str());
        assert_eq!(manifest["created"], "2026-01-01T00:00:00Z");
    }
}

#[test]
fn two_builds_of_the_same_input_are_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let a = build_all(&repo_root(), &key, &tmp.path().join("a"), &["-j", "2"]);
    let b = build_all(&repo_root(), &key, &tmp.path().join("b"), &["-j", "1"]);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, pa) in &a {
        let x = std::fs::read(pa).unwrap();
        let y = std::fs::read(&b[name]).unwrap();
        assert!(x == y, "{name}: builds differ");
    }
}

fn zstd_dc(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("zstd")
        .args(["-dc", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

fn copy_tree(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

#[test]
fn changing_one_byte_of_a_layer_file_changes_only_the_hostgroups_using_that_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    for d in ["hostgroups", "layers", "files"] {
        if repo_root().join(d).exists() {
            copy_tree(&repo_root().join(d), &cfg.join(d));
        }
    }
    let before = build_all(&cfg, &key, &tmp.path().join("before"), &[]);

    // Which hostgroups use the nginx layer, as `kiln render --explain` tells.
    let mut users = Vec::new();
    for name in before.keys() {
        let rendered = ok(&kiln_in(&cfg, &["render", name, "--explain"]));
        if rendered.contains("layers/nginx") {
            users.push(name.clone());
        }
    }
    assert!(
        !users.is_empty(),
        "no example hostgroup uses the nginx layer"
    );
    assert!(
        users.len() < before.len(),
        "every hostgroup uses nginx; the test would prove nothing"
    );

    // Flip one byte in a file of the layer (a comment character, so the config stays valid).
    let layer_dir = cfg.join("layers/nginx");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&layer_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let target = &files[0];
    let mut bytes = std::fs::read(target).unwrap();
    let last = bytes.len() - 1;
    bytes[last] = if bytes[last] == b'\n' { b' ' } else { b'\n' };
    std::fs::write(target, &bytes).unwrap();

    let after = build_all(&cfg, &key, &tmp.path().join("after"), &[]);
    let mut changed: Vec<String> = before
        .iter()
        .filter(|(name, p)| std::fs::read(p).unwrap() != std::fs::read(&after[*name]).unwrap())
        .map(|(n, _)| n.clone())
        .collect();
    changed.sort();
    users.sort();
    assert_eq!(changed, users);
}

#[test]
fn tampered_bundles_are_refused_each_with_its_own_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let other = keygen(tmp.path(), "other");
    let out = tmp.path().join("out");
    let bundles = build_all(&repo_root(), &key, &out, &["--expires", "36500d"]);
    let bundle = &bundles["web"];
    let good = std::fs::read(bundle).unwrap();
    let trust = trust_dir(tmp.path(), &[&key]);
    assert_eq!(verify_code(bundle, &trust, &[]).0, 0);

    let t = tmp.path().join("t.kiln");
    // Single flipped bytes across the whole file: refused as a bad signature (10) when the flip
    // lands in the signed manifest, as corrupt (17) anywhere else. Never accepted.
    let n = good.len();
    let mut positions: Vec<usize> = (0..200).map(|i| i * n / 200).collect();
    positions.extend([0, 1, 2, 3, 4, 5, n - 1, n - 2, n - 4, n - 8]);
    let mut seen = std::collections::BTreeSet::new();
    for &pos in &positions {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        std::fs::write(&t, &bad).unwrap();
        let (code, stderr) = verify_code(&t, &trust, &[]);
        if code == 0 {
            // zstd's encoding is not canonical: a flip can turn a match offset into another
            // offset that points at identical bytes. Accepted only if what it decodes to is
            // byte-for-byte the original stream (same manifest, same blobs).
            assert_eq!(
                zstd_dc(&bad),
                zstd_dc(&good),
                "flip at {pos}/{n} accepted with different content"
            );
            continue;
        }
        assert!(
            code == 10 || code == 17,
            "flip at {pos}/{n}: exit {code}: {stderr}"
        );
        seen.insert(code);
    }
    assert!(seen.contains(&17), "no flip was reported as corrupt");
    // Truncated anywhere: corrupt.
    for len in (0..n).step_by(n / 50 + 1).chain([n - 1]) {
        std::fs::write(&t, &good[..len]).unwrap();
        let (code, stderr) = verify_code(&t, &trust, &[]);
        assert!(
            code == 17 || code == 10,
            "truncated to {len}: exit {code}: {stderr}"
        );
    }
    // Appended data: corrupt.
    for extra in [&b"\0"[..], b"x", &[0u8; 1024], &good[..64]] {
        let mut bad = good.clone();
        bad.extend_from_slice(extra);
        std::fs::write(&t, &bad).unwrap();
        assert_eq!(
            verify_code(&t, &trust, &[]).0,
            17,
            "appended {} bytes",
            extra.len()
        );
    }
    // Wrong key: untrusted (11).
    let other_trust = trust_dir(&tmp.path().join("o"), &[&other]);
    let (code, stderr) = verify_code(bundle, &other_trust, &[]);
    assert_eq!(code, 11, "{stderr}");
    assert!(stderr.contains("untrusted key"), "{stderr}");
    // Revoked key, even though it is also trusted: revoked (12).
    let revoked = tmp.path().join("revoked_keys");
    std::fs::copy(format!("{}.pub", key.display()), &revoked).unwrap();
    let (code, stderr) = verify_code(bundle, &trust, &["--revoked", revoked.to_str().unwrap()]);
    assert_eq!(code, 12, "{stderr}");
    // Wrong hostgroup (14), rollback below a minimum version (16).
    assert_eq!(verify_code(bundle, &trust, &["--hostgroup", "db"]).0, 14);
    assert_eq!(verify_code(bundle, &trust, &["--min-version", "8"]).0, 16);
    assert_eq!(
        verify_code(
            bundle,
            &trust,
            &["--min-version", "7", "--hostgroup", "web"]
        )
        .0,
        0
    );
}

/// `--trust signing/keys/dev.pub` failed with `unsupported key type "kiln-signing"`: a single
/// file was always read as allowed_signers. A `.pub` file is now a list of trusted keys.
#[test]
fn trust_accepts_a_pub_file_an_allowed_signers_file_and_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "kiln-signing");
    let other = keygen(tmp.path(), "other");
    let out = tmp.path().join("out");
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
        "--expires",
        "36500d",
    ]));
    let bundle = out.join("web-7.kiln");
    let pubkey = PathBuf::from(format!("{}.pub", key.display()));
    let allowed = tmp.path().join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("ci {}", std::fs::read_to_string(&pubkey).unwrap()),
    )
    .unwrap();
    let dir = trust_dir(tmp.path(), &[&key]);
    for trust in [&pubkey, &allowed, &dir] {
        let (code, stderr) = verify_code(&bundle, trust, &[]);
        assert_eq!(code, 0, "--trust {}: {stderr}", trust.display());
    }
    // Another key's .pub trusts that key only: untrusted (11), not a parse error (1).
    let other_pub = PathBuf::from(format!("{}.pub", other.display()));
    let (code, stderr) = verify_code(&bundle, &other_pub, &[]);
    assert_eq!(code, 11, "{stderr}");

    // kiln-firstboot reads --trust with the same code: past the trust check, an empty root is
    // refused for its base (15); another key's .pub is untrusted (11).
    let firstboot = Path::new(KILN).with_file_name("kiln-firstboot");
    if !firstboot.is_file() {
        eprintln!("kiln-firstboot not built beside kiln: its half of this test skipped");
        return;
    }
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (trust, want) in [(&pubkey, 15), (&other_pub, 11)] {
        let o = Command::new(&firstboot)
            .args([
                "apply",
                "--dry-run",
                "--bundle",
                bundle.to_str().unwrap(),
                "--root",
            ])
            .arg(&root)
            .arg("--trust")
            .arg(trust)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(want),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn an_expired_bundle_is_refused_with_exit_13() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let out = tmp.path().join("out");
    // Built now (kiln build refuses a bundle born expired), valid for two seconds.
    let o = Command::new(KILN)
        .args([
            "build",
            "web",
            "--config",
            repo_root().to_str().unwrap(),
            "--key",
        ])
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .args(["--version", "7", "--expires", "2s"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    ok(&o);
    let bundle = out.join("web-7.kiln");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&kiln(&["inspect", "--json", bundle.to_str().unwrap()]))).unwrap();
    let expires = inspect["expires"].as_str().unwrap().to_string();
    let trust = trust_dir(tmp.path(), &[&key]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (code, stderr) = verify_code(&bundle, &trust, &[]);
    assert_eq!(code, 13, "{stderr}");
    assert!(
        stderr.contains(&format!("expired at {expires}")),
        "{stderr}"
    );
}

/// A bundle whose creation time (SOURCE_DATE_EPOCH) plus --expires is already past would be
/// refused by every host: the build refuses it first and writes nothing.
#[test]
fn a_build_that_would_be_born_expired_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let out = tmp.path().join("out");
    let o = kiln(&[
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
        "--expires",
        "90d",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with(
            "kiln: error: the bundles would be born expired: created 2026-01-01T00:00:00Z \
             (SOURCE_DATE_EPOCH) + --expires 90d = 2026-04-01T00:00:00Z, which is past (now "
        ),
        "{stderr}"
    );
    assert!(!out.join("web-7.kiln").exists());
}

#[test]
fn inspect_and_diff_report_what_a_replacement_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    for d in ["hostgroups", "layers", "files"] {
        if repo_root().join(d).exists() {
            copy_tree(&repo_root().join(d), &cfg.join(d));
        }
    }
    let old = build_all(&cfg, &key, &tmp.path().join("old"), &[]);
    let inspect: serde_json::Value = serde_json::from_str(&ok(&kiln(&[
        "inspect",
        old["web"].to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(inspect["hostgroup"], "web");
    assert_eq!(inspect["version"], 7);
    assert!(inspect["signer"].as_str().unwrap().starts_with("SHA256:"));

    // Add a file to web and build version 8.
    let web = cfg.join("hostgroups/web.yaml");
    let text = std::fs::read_to_string(&web).unwrap();
    let added = "  /etc/kiln-diff-test:\n    content: \"hello\\n\"\n";
    let text = if text.starts_with("files:\n") || text.contains("\nfiles:\n") {
        text.replacen("files:\n", &format!("files:\n{added}"), 1)
    } else {
        format!("{text}\nfiles:\n{added}")
    };
    std::fs::write(&web, text).unwrap();
    let o = kiln(&[
        "build",
        "web",
        "--config",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        tmp.path().join("new").to_str().unwrap(),
        "--version",
        "8",
    ]);
    ok(&o);
    let new = tmp.path().join("new/web-8.kiln");
    let d: serde_json::Value = serde_json::from_str(&ok(&kiln(&[
        "diff",
        old["web"].to_str().unwrap(),
        new.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(d["version"], serde_json::json!([7, 8]));
    assert_eq!(
        d["sections"]["entries"]["added"],
        serde_json::json!(["/etc/kiln-diff-test"])
    );
    let text = ok(&kiln(&[
        "diff",
        old["web"].to_str().unwrap(),
        new.to_str().unwrap(),
    ]));
    assert!(text.contains("+ /etc/kiln-diff-test"), "{text}");
    let same = kiln(&[
        "diff",
        old["web"].to_str().unwrap(),
        old["web"].to_str().unwrap(),
        "--exit-code",
    ]);
    assert_eq!(same.status.code(), Some(0));
    let differ = kiln(&[
        "diff",
        old["web"].to_str().unwrap(),
        new.to_str().unwrap(),
        "--exit-code",
    ]);
    assert_eq!(differ.status.code(), Some(1));
}

#[test]
fn validate_accepts_the_shipped_example_and_reports_locations_otherwise() {
    ok(&kiln_in(&repo_root(), &["validate"]));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("hostgroups")).unwrap();
    std::fs::write(
        tmp.path().join("hostgroups/default.yaml"),
        "files:\n  etc/motd:\n    content: hi\n",
    )
    .unwrap();
    std::fs::write(tmp.path().join("hostgroups/web.yaml"), "{}\n").unwrap();
    let o = kiln_in(tmp.path(), &["validate"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("hostgroups/default.yaml:2:3: "),
        "{stderr}"
    );
}

#[test]
fn keygen_writes_an_openssh_pair_with_a_private_secret() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let o = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .unwrap();
    let derived = String::from_utf8_lossy(&o.stdout);
    let written = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    assert_eq!(
        derived.split_whitespace().nth(1),
        written.split_whitespace().nth(1)
    );
    // Refuses to overwrite without --force.
    let o = kiln(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn man_pages_and_completions_are_generated_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    ok(&kiln(&["man", "--out", tmp.path().to_str().unwrap()]));
    for page in ["kiln.1", "kiln-build.1", "kiln-verify.1", "kiln-diff.1"] {
        let text = std::fs::read_to_string(tmp.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let build = std::fs::read_to_string(tmp.path().join("kiln-build.1")).unwrap();
    assert!(
        build.contains("shard"),
        "kiln-build.1 does not document --shard"
    );
    let bash = ok(&kiln(&["completions", "bash"]));
    assert!(bash.contains("--min-version"));
}

/// The rows of docs/reference.md's "Exit codes" table (the source of truth), as (code, meaning).
fn readme_exit_codes() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("docs/reference.md")).unwrap();
    let table = readme.split("\n## Exit codes\n").nth(1).unwrap();
    let rows: Vec<(String, String)> = table
        .lines()
        .skip_while(|l| !l.starts_with("| code |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            (cells[0].trim().to_string(), cells[1].trim().to_string())
        })
        .collect();
    let codes: Vec<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        codes,
        [
            "0", "1", "2", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "20", "21",
            "22", "23"
        ]
    );
    rows
}

#[test]
fn kiln_firstboot_has_man_pages_and_completions_and_every_page_lists_the_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let listed = ok(&kiln(&["man", "--out", tmp.path().to_str().unwrap()]));
    for page in [
        "kiln.1",
        "kiln-verify.1",
        "kiln-build.1",
        "kiln-firstboot.1",
        "kiln-firstboot-apply.1",
        "kiln-firstboot-status.1",
    ] {
        let path = tmp.path().join(page);
        assert!(
            listed.lines().any(|l| Path::new(l) == path),
            "{page} not listed:\n{listed}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(".ie") && text.contains("\n.TH "),
            "{page} is not a man page"
        );
        let section = text
            .split("\n.SH \"EXIT STATUS\"\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{page} has no EXIT STATUS section"));
        for (code, meaning) in readme_exit_codes() {
            // roff: the code in bold, then the meaning as plain text (`-` escaped, no backticks).
            let item = format!(
                ".TP\n\\fB{code}\\fR\n{}\n",
                meaning
                    .replace('`', "")
                    .replace('-', "\\-")
                    .replace('\'', "\\*(Aq")
            );
            assert!(section.contains(&item), "{page}: no {item:?} in\n{section}");
        }
    }
    let apply = std::fs::read_to_string(tmp.path().join("kiln-firstboot-apply.1")).unwrap();
    assert!(
        apply.contains("dry\\-run"),
        "kiln-firstboot-apply.1 lacks --dry-run"
    );
    let rollout = std::fs::read_to_string(tmp.path().join("kiln.1")).unwrap();
    assert!(rollout.contains("kiln rollout wait exits 3"));

    let bash = ok(&kiln(&[
        "completions",
        "bash",
        "--program",
        "kiln-firstboot",
    ]));
    assert!(
        bash.contains("--dry-run") && bash.contains("kiln-firstboot"),
        "{bash}"
    );
    assert!(
        !bash.contains("--shard"),
        "kiln's flags in kiln-firstboot's completions"
    );
    let zsh = ok(&kiln(&[
        "completions",
        "zsh",
        "--program",
        "kiln-firstboot",
    ]));
    assert!(zsh.starts_with("#compdef kiln-firstboot"), "{zsh}");
}

#[test]
fn shards_split_all_hostgroups_without_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let all = build_all(&repo_root(), &key, &tmp.path().join("all"), &[]);
    let mut union = Vec::new();
    for k in 1..=3 {
        let part = build_all(
            &repo_root(),
            &key,
            &tmp.path().join(format!("s{k}")),
            &["--shard", &format!("{k}/3")],
        );
        union.extend(part.into_keys());
    }
    union.sort();
    assert_eq!(union, all.into_keys().collect::<Vec<_>>());
}

/// Runs `bin args` with stdout a pipe whose reader is already gone, so the first write fails
/// with EPIPE whatever the output's size (as `| head -1` does once head has its line).
fn with_closed_stdout(bin: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(bin)
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("KILN_CONFIG")
        .stdout(writer)
        .output()
        .unwrap()
}

/// `kiln inspect --json out/web-7.kiln | head -1` panicked ("failed printing to stdout: Broken
/// pipe") and exited 101; every command now ends quietly with exit 0.
#[test]
fn a_closed_stdout_pipe_ends_every_command_quietly_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let out = tmp.path().join("out");
    let root = repo_root();
    let config = root.to_str().unwrap();
    ok(&kiln(&[
        "build",
        "web",
        "--config",
        config,
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
        "--expires",
        "36500d",
    ]));
    let bundle = out.join("web-7.kiln");
    let b = bundle.to_str().unwrap();
    let trust = trust_dir(tmp.path(), &[&key]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["inspect", "--json", b],
        vec!["inspect", b],
        vec!["diff", b, b, "--json"],
        vec!["verify", b, "--trust", trust.to_str().unwrap()],
        vec!["validate", "--config", config, "--json"],
        vec!["render", "web", "--config", config, "--explain"],
        vec!["completions", "bash"],
        vec![
            "cloud-init",
            "web",
            "--bundle-file",
            b,
            "--consul-addr",
            "http://127.0.0.1:8500",
            "--vault-addr",
            "http://127.0.0.1:8200",
            "--out",
            "-",
        ],
        vec!["--help"],
    ];
    for args in &cases {
        let o = with_closed_stdout(Path::new(KILN), args);
        assert_eq!(
            (o.status.code(), String::from_utf8_lossy(&o.stderr).as_ref()),
            (Some(0), ""),
            "kiln {}",
            args.join(" ")
        );
    }
    let firstboot = Path::new(KILN).with_file_name("kiln-firstboot");
    if !firstboot.is_file() {
        eprintln!("kiln-firstboot not built beside kiln: its half of this test skipped");
        return;
    }
    let target = tmp.path().join("root");
    std::fs::create_dir_all(&target).unwrap();
    let o = with_closed_stdout(
        &firstboot,
        &[
            "apply",
            "--dry-run",
            "--json",
            "--bundle",
            b,
            "--root",
            target.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
        ],
    );
    // The refusal (no os-release: 15) is decided before the JSON report is printed; the
    // closed pipe then ends it quietly. Stderr still has the progress lines.
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}

#[test]
fn an_unknown_hostgroup_gets_a_suggestion_when_it_looks_like_a_typo() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let root = repo_root();
    let o = kiln_in(&root, &["render", "wbe"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with(
            "hostgroups/wbe.yaml:1:1: unknown hostgroup \"wbe\": did you mean \"web\"? (known: "
        ),
        "{stderr}"
    );
    let o = kiln_in(
        &root,
        &[
            "build",
            "wbe",
            "--key",
            key.to_str().unwrap(),
            "--out",
            tmp.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown hostgroup \"wbe\""), "{stderr}");
    assert!(
        stderr.contains(": did you mean \"web\"? (known: "),
        "{stderr}"
    );
    // Nothing near enough: no suggestion.
    let stderr =
        String::from_utf8_lossy(&kiln_in(&root, &["render", "frontend"]).stderr).into_owned();
    assert!(
        stderr.contains("unknown hostgroup \"frontend\" (known: "),
        "{stderr}"
    );
}

/// A published `web-7.kiln` must never change under the same name: a second build of the same
/// version keeps an identical file (and says so) and refuses to replace a different one.
#[test]
fn a_bundle_of_the_same_name_is_kept_when_identical_and_never_replaced_when_not() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    for d in ["hostgroups", "layers", "files"] {
        copy_tree(&repo_root().join(d), &cfg.join(d));
    }
    let out = tmp.path().join("out");
    let build = || {
        kiln(&[
            "build",
            "web",
            "--config",
            cfg.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--version",
            "7",
        ])
    };
    let first = ok(&build());
    let bundle = out.join("web-7.kiln");
    let sbom = out.join("web-7.spdx.json");
    let (bytes, sbom_bytes) = (
        std::fs::read(&bundle).unwrap(),
        std::fs::read(&sbom).unwrap(),
    );
    assert!(!first.contains("kept"), "{first}");

    let again = ok(&build());
    assert!(
        again.ends_with(&format!(
            "  {}  ({} bytes, {} entries; already there with the same bytes: kept)\n",
            bundle.display(),
            bytes.len(),
            {
                // Entries and dynamic templates, as kiln build counts them.
                let m = zstd_manifest(&bundle);
                m["entries"].as_array().unwrap().len() + m["templates"].as_array().unwrap().len()
            }
        )),
        "{again}"
    );
    let o = kiln(&[
        "build",
        "web",
        "--config",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
        "--json",
    ]);
    let built: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(built[0]["unchanged"], true);

    // One more file for every hostgroup: same name, other bytes.
    let default = cfg.join("hostgroups/default.yaml");
    let text = std::fs::read_to_string(&default).unwrap();
    assert!(text.contains("\nfiles:\n"));
    std::fs::write(
        &default,
        text.replacen(
            "\nfiles:\n",
            "\nfiles:\n  /etc/kiln-test-extra: {content: \"x\\n\"}\n",
            1,
        ),
    )
    .unwrap();
    let o = build();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "kiln: hostgroup web: {} exists with other bytes (sha256 ",
            bundle.display()
        )) && stderr.contains("it is not replaced; build with a new --version"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&bundle).unwrap(),
        bytes,
        "the published bundle changed"
    );
    assert_eq!(
        std::fs::read(&sbom).unwrap(),
        sbom_bytes,
        "its SBOM changed"
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    // A new version builds.
    ok(&kiln(&[
        "build",
        "web",
        "--config",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "8",
    ]));
}

/// Without --base the bundle names packages but carries none: said once per build, and
/// --deny-warnings turns it into a refusal that writes nothing.
#[test]
fn a_build_without_base_warns_that_packages_are_not_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let out = tmp.path().join("out");
    let root = repo_root();
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = [
            "build",
            "--all",
            "--config",
            root.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--version",
            "7",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| kiln(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(args(&[]));
    let hostgroups = ok(&o).lines().count();
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with(
            "kiln: warning: no --base: packages are listed by name only, not carried (bastion: "
        ) && warnings[0].contains("kiln-firstboot cannot install them")
            && warnings[0].contains("the accounts packages create (postgres) will be missing"),
        "{stderr}"
    );

    std::fs::remove_dir_all(&out).unwrap();
    let o = run(args(&["--deny-warnings"]));
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(
            "kiln: hostgroup web: not built: without --base its 12 packages would be listed by \
             name only, not carried, and --deny-warnings makes warnings errors\n"
        ) && stderr.ends_with(&format!(
            "kiln: error: {hostgroups} of {hostgroups} hostgroups failed to build\n"
        )),
        "{stderr}"
    );
    let written: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");

    // A configuration without packages: nothing to warn about.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(plain.join("hostgroups")).unwrap();
    std::fs::write(
        plain.join("hostgroups/default.yaml"),
        "files:\n  /etc/motd: {content: \"hi\\n\"}\n",
    )
    .unwrap();
    std::fs::write(plain.join("hostgroups/web.yaml"), "{}\n").unwrap();
    let o = kiln(&[
        "build",
        "--all",
        "--config",
        plain.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        tmp.path().join("plain-out").to_str().unwrap(),
        "--deny-warnings",
    ]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

/// A hostgroup's own warnings (a literal secret in a static file) stop that hostgroup under
/// --deny-warnings; the others build.
#[test]
fn deny_warnings_stops_the_hostgroup_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(cfg.join("hostgroups")).unwrap();
    std::fs::write(cfg.join("hostgroups/default.yaml"), "").unwrap();
    std::fs::write(
        cfg.join("hostgroups/web.yaml"),
        "files:\n  /etc/app.ini: {content: \"[db]\\npassword = Zx81-secret-Value\\n\"}\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("hostgroups/db.yaml"),
        "files:\n  /etc/motd: {content: \"db\\n\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let build = |extra: &[&str]| {
        let mut a = vec![
            "build",
            "--all",
            "--config",
            cfg.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--version",
            "7",
        ];
        a.extend_from_slice(extra);
        kiln(&a)
    };
    let o = build(&["--deny-warnings"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("hostgroups/web.yaml:2:27: warning: /etc/app.ini: line 2 assigns a literal value to \"password\"")
            && stderr.contains(
                "kiln: hostgroup web: not built: 1 warning above, and --deny-warnings makes warnings errors"
            )
            && stderr.ends_with("kiln: error: 1 of 2 hostgroups failed to build\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("Zx81"));
    assert!(out.join("db-7.kiln").exists() && !out.join("web-7.kiln").exists());
    // Without it: a warning, and built.
    ok(&build(&[]));
    assert!(out.join("web-7.kiln").exists());
}

/// Every JSON output carries `"schema_version": 1` (each object of `kiln build --json`'s
/// array): scripts can check what they parse.
#[test]
fn every_json_output_has_a_schema_version() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let parse = |o: &Output| -> serde_json::Value {
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
    };
    let mut outputs = Vec::new();
    outputs.push((
        "keygen",
        parse(&kiln(&["keygen", "--out", key.to_str().unwrap(), "--json"])),
    ));
    let root = repo_root();
    outputs.push((
        "validate",
        parse(&kiln(&[
            "validate",
            "--config",
            root.to_str().unwrap(),
            "--json",
        ])),
    ));
    let out = tmp.path().join("out");
    let built = parse(&kiln(&[
        "build",
        "web",
        "db",
        "--config",
        root.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
        "--json",
    ]));
    assert_eq!(built.as_array().unwrap().len(), 2);
    for b in built.as_array().unwrap() {
        outputs.push(("build", b.clone()));
    }
    let (web, db) = (out.join("web-7.kiln"), out.join("db-7.kiln"));
    let trust = trust_dir(tmp.path(), &[&key]);
    outputs.push((
        "verify",
        parse(&kiln(&[
            "verify",
            web.to_str().unwrap(),
            "--trust",
            trust.to_str().unwrap(),
            "--json",
        ])),
    ));
    let refused = kiln(&[
        "verify",
        web.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--hostgroup",
        "db",
        "--json",
    ]);
    assert_eq!(refused.status.code(), Some(14));
    outputs.push(("verify (refused)", parse(&refused)));
    outputs.push((
        "inspect",
        parse(&kiln(&["inspect", web.to_str().unwrap(), "--json"])),
    ));
    outputs.push((
        "diff",
        parse(&kiln(&[
            "diff",
            web.to_str().unwrap(),
            db.to_str().unwrap(),
            "--json",
        ])),
    ));
    for (what, v) in &outputs {
        assert_eq!(v["schema_version"], 1, "kiln {what} --json: {v}");
    }
}

#[test]
fn validate_json_includes_warnings_and_deny_warnings_fails() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("hostgroups")).unwrap();
    std::fs::write(tmp.path().join("hostgroups/default.yaml"), "").unwrap();
    std::fs::write(
        tmp.path().join("hostgroups/web.yaml"),
        "files:\n  /etc/app.ini: {content: \"[db]\\npassword = Zx81-secret-Value\\n\"}\n",
    )
    .unwrap();
    let o = kiln_in(tmp.path(), &["validate", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(
        v["warnings"],
        serde_json::json!([{
            "file": "hostgroups/web.yaml", "line": 2, "column": 27,
            "message": v["warnings"][0]["message"],
        }])
    );
    let message = v["warnings"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("/etc/app.ini: line 2 assigns a literal value to \"password\""),
        "{message}"
    );
    assert!(!message.contains("Zx81"));

    let o = kiln_in(tmp.path(), &["validate", "--json", "--deny-warnings"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["warnings"].as_array().unwrap().len()),
        (serde_json::json!(false), 1)
    );
    let o = kiln_in(tmp.path(), &["validate", "--deny-warnings"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .ends_with("kiln: error: 1 warning found, and --deny-warnings makes warnings errors\n"));
    assert_eq!(kiln_in(tmp.path(), &["validate"]).status.code(), Some(0));
}

fn sha256_hex(bytes: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// What a reviewer of a change needs: the content of each changed text file and template as a
/// unified diff, binary and large files by size and digest, and the changes of dynamic
/// sources, users, groups, package versions, services and commands.
#[test]
fn diff_shows_content_and_every_kind_of_change() {
    let tmp = tempfile::tempdir().unwrap();
    let key = keygen(tmp.path(), "ci");
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    for d in ["hostgroups", "layers", "files"] {
        copy_tree(&repo_root().join(d), &cfg.join(d));
    }
    let web = cfg.join("hostgroups/web.yaml");
    let edit = |path: &Path, from: &str, to: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{} lacks {from:?}", path.display());
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    };
    let append = |path: &Path, more: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("{text}{more}")).unwrap();
    };
    let (bin, big) = (
        cfg.join("files/web/tool.bin"),
        cfg.join("files/web/big.txt"),
    );
    std::fs::write(&bin, b"\x7fELF\0\x01").unwrap();
    std::fs::write(&big, "x".repeat(299_999) + "\n").unwrap();
    edit(
        &web,
        "\nfiles:\n",
        "\nfiles:\n  /usr/local/bin/tool: {from: web/tool.bin, mode: \"0755\"}\n  /srv/big.txt: {from: web/big.txt}\n",
    );
    let out = tmp.path().join("out");
    let build = |version: &str| {
        ok(&kiln(&[
            "build",
            "web",
            "--config",
            cfg.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--version",
            version,
        ]))
    };
    build("1");
    let old_bin = std::fs::read(&bin).unwrap();
    let old_big = std::fs::read(&big).unwrap();

    edit(
        &cfg.join("files/web/nginx-app.conf"),
        "\tlisten 80 default_server;",
        "\tlisten 8080 default_server;",
    );
    append(&cfg.join("files/web/app.env.j2"), "# one more line\n");
    std::fs::write(&bin, b"\x7fELF\0\x02").unwrap();
    std::fs::write(&big, "y".repeat(299_999) + "\n").unwrap();
    edit(&web, "    shell: /usr/sbin/nologin", "    shell: /bin/bash");
    edit(&web, "  app: {gid: 2100}", "  app: {gid: 2101}");
    edit(&web, "      ttl: 72h", "      ttl: 48h");
    edit(
        &web,
        "  prefixes: [kiln/apps/web/]",
        "  prefixes: [kiln/apps/web/, kiln/apps/shared/]",
    );
    append(
        &web,
        "services:\n  nginx.service: {state: dead}\npackages:\n  less: {version: \"590-2\"}\ncommands:\n  hello:\n    run: [/bin/true]\n    timeout: \"10s\"\n",
    );
    build("2");
    let (v1, v2) = (out.join("web-1.kiln"), out.join("web-2.kiln"));

    let text = ok(&kiln(&["diff", v1.to_str().unwrap(), v2.to_str().unwrap()]));
    for want in [
        "web: version 1 -> 2\n",
        "commands:\n  + 01 hello\n",
        "dynamic:\n  + consul prefix kiln/apps/shared/\n  ~ vault pki  ttl 72h -> 48h\n",
        "groups:\n  ~ app  gid 2100 -> 2101\n",
        "packages:\n  ~ less  version - -> 590-2\n",
        "services:\n  ~ nginx.service  enabled true -> false, state running -> dead\n",
        "users:\n  ~ app  shell /usr/sbin/nologin -> /bin/bash\n",
        // A static file: its unified diff, three lines of context.
        "--- a/etc/nginx/sites-available/app.conf\n+++ b/etc/nginx/sites-available/app.conf\n@@ ",
        " server {\n-\tlisten 80 default_server;\n+\tlisten 8080 default_server;\n \tlisten [::]:80 default_server;\n",
        // A dynamic template's text.
        "--- a/etc/app/app.env\n+++ b/etc/app/app.env\n@@ ",
        "+# one more line\n",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let short = |b: &[u8]| sha256_hex(b)[..12].to_string();
    let new_bin = std::fs::read(&bin).unwrap();
    let new_big = std::fs::read(&big).unwrap();
    assert!(
        text.contains(&format!(
            "binary /usr/local/bin/tool: 6 bytes (sha256 {}) -> 6 bytes (sha256 {})\n",
            short(&old_bin),
            short(&new_bin)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "large /srv/big.txt: 300000 bytes (sha256 {}) -> 300000 bytes (sha256 {}), over 262144 bytes: not shown\n",
            short(&old_big),
            short(&new_big)
        )),
        "{text}"
    );

    let d: serde_json::Value = serde_json::from_str(&ok(&kiln(&[
        "diff",
        v1.to_str().unwrap(),
        v2.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let contents: BTreeMap<String, serde_json::Value> = d["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    let kinds: BTreeMap<&str, &str> = contents
        .iter()
        .map(|(p, c)| (p.as_str(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("/etc/app/app.env", "text"),
            ("/etc/nginx/sites-available/app.conf", "text"),
            ("/srv/big.txt", "large"),
            ("/usr/local/bin/tool", "binary"),
        ])
    );
    assert_eq!(
        contents["/usr/local/bin/tool"]["old"]["sha256"],
        sha256_hex(&old_bin)
    );
    assert_eq!(contents["/usr/local/bin/tool"]["new"]["size"], 6);
    assert!(contents["/usr/local/bin/tool"].get("unified").is_none());
    assert!(contents["/etc/app/app.env"]["unified"]
        .as_str()
        .unwrap()
        .ends_with("+# one more line\n"));
    assert_eq!(
        d["sections"]["packages"]["changed"][0]["fields"]["version"],
        serde_json::json!([null, "590-2"])
    );
    assert_eq!(
        d["sections"]["dynamic"]["added"],
        serde_json::json!(["consul prefix kiln/apps/shared/"])
    );
    // The same bundle twice: nothing.
    let same: serde_json::Value = serde_json::from_str(&ok(&kiln(&[
        "diff",
        v1.to_str().unwrap(),
        v1.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(same["contents"], serde_json::json!([]));
}

/// The `sh` blocks of the README's "Five minutes with Kiln", run as written from the top of the
/// repository: the tour block (without its `cargo build` and `export PATH` lines: the binaries
/// under test come first on PATH instead), then the ssh-keygen block in the same shell.
#[test]
fn the_readmes_five_minute_tour_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Five minutes with Kiln\n")
        .nth(1)
        .expect("README.md has a \"Five minutes with Kiln\" section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 2, "the tour and the ssh-keygen check");
    let tour: Vec<&str> = blocks[0]
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.starts_with("export PATH="))
        .collect();
    assert!(tour.iter().any(|l| l.starts_with("kiln diff ")));
    let script = format!("set -euo pipefail\n{}\n{}", tour.join("\n"), blocks[1]);
    let tmp = tempfile::tempdir().unwrap();
    let bin = Path::new(KILN).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(repo_root())
        .env("PATH", path)
        .env("TMPDIR", tmp.path())
        .env_remove("KILN_CONFIG")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "the tour failed ({}):\n{stdout}\n{stderr}",
        o.status
    );
    // What the reader is told to expect: the render with provenance, a verified bundle, the
    // change shown as a unified diff of nginx's configuration, and ssh-keygen's verdict.
    assert!(stdout.contains("hostgroup: web"), "{stdout}");
    assert!(stdout.contains("worker_connections"), "{stdout}");
    assert!(
        stdout.contains("-\tworker_connections 2048;")
            && stdout.contains("+\tworker_connections 4096;"),
        "the diff shows the edit:\n{stdout}"
    );
    assert!(
        stdout.contains("Good \"kiln-bundle\" signature for ci with ED25519 key"),
        "{stderr}"
    );
    // Nothing was written into the repository: everything went under $T.
    assert!(!repo_root().join("allowed_signers").exists());
    assert!(!repo_root().join("kiln/manifest.json").exists());
}

/// Every relative link of the README and docs/ leads to a file of the repository (and to a
/// heading of it when it names one); none leads outside the repository.
#[test]
fn documentation_links_resolve_inside_the_repository() {
    let root = repo_root().canonicalize().unwrap();
    let mut pages = vec![root.join("README.md"), root.join("firstboot/README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            pages.push(p);
        }
    }
    let anchor = |heading: &str| -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    };
    let anchors = |page: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(page).unwrap();
        let mut in_code = false;
        let mut out = Vec::new();
        for l in text.lines() {
            if l.starts_with("```") {
                in_code = !in_code;
            } else if !in_code && l.starts_with('#') {
                out.push(anchor(l.trim_start_matches('#')));
            }
        }
        out
    };
    let mut bad = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, l) in text.lines().enumerate() {
            for link in l.split("](").skip(1) {
                let target = link.split(')').next().unwrap();
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, frag) = target.split_once('#').unwrap_or((target, ""));
                let dest = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().unwrap().join(file)
                };
                let at = format!("{}:{}: {target}", page.display(), i + 1);
                match dest.canonicalize() {
                    Err(_) => bad.push(format!("{at}: no such file")),
                    Ok(d) if !d.starts_with(&root) => {
                        bad.push(format!("{at}: outside the repository"))
                    }
                    Ok(d) if !frag.is_empty() && !anchors(&d).contains(&frag.to_string()) => {
                        bad.push(format!("{at}: no heading #{frag}"))
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "broken documentation links:\n{}",
        bad.join("\n")
    );
}
