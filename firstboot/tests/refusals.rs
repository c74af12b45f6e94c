//! Bundles that must be refused before the root changes, each with its exit code: tampered
//! bundles (flipped byte, truncated, wrong key, revoked key, expired, other hostgroup, rollback,
//! pinned digest) and malicious manifests signed by a trusted key (duplicate paths, `..`, blob
//! size lies, device nodes and hardlinks in the tar, a zstd window bomb, a symlink pivot).
//! Each asserts the exit code, that the whole root is byte-for-byte as before (staging gone),
//! and that nothing appeared outside it.

mod common;

use std::path::Path;

use common::*;
use kiln_signing::{exit, EntryKind};

/// A bundle with a few files, one big enough that a flipped byte lands in blob data.
fn sample(version: u64) -> Spec {
    let mut s = Spec::new("web", version);
    s.dir("/srv/www", "0755", "root", "root")
        .file(
            "/srv/www/index.html",
            b"<h1>hello</h1>\n",
            "0644",
            "root",
            "root",
        )
        .file(
            "/srv/www/big.bin",
            &noise(7, 300_000),
            "0600",
            "root",
            "daemon",
        )
        .symlink("/srv/current", "/srv/www")
        .absent("/etc/hostname");
    s
}

/// Applies and asserts: exit `code`, the root unchanged, no staging left, `outside` empty.
fn refused(
    root: &Path,
    trust: &Path,
    bundle: &Path,
    extra: &[&str],
    code: i32,
    outside: &Path,
) -> String {
    let before = tree_listing(root);
    let out = apply(root, trust, bundle, extra);
    assert_eq!(out.status.code(), Some(code), "exit code");
    let after = tree_listing(root);
    if before != after {
        let added: Vec<_> = after.iter().filter(|l| !before.contains(l)).collect();
        let removed: Vec<_> = before.iter().filter(|l| !after.contains(l)).collect();
        panic!("the root changed on a refusal: added {added:#?} removed {removed:#?}");
    }
    assert!(
        !root.join("var/lib/kiln").exists(),
        "var/lib/kiln left behind"
    );
    assert_empty(outside);
    stderr(&out)
}

#[test]
fn tampered_bundles_are_refused_with_their_code_and_change_nothing() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("web-7.kiln");
    let sha = sample(7).write(&key, &good);
    let bytes = std::fs::read(&good).unwrap();

    // A flipped byte in the payload: the zstd checksum or a blob digest catches it.
    for at in [bytes.len() / 2, bytes.len() * 3 / 4, bytes.len() - 10] {
        let mut b = bytes.clone();
        b[at] ^= 0x40;
        let p = work.path().join(format!("flip-{at}.kiln"));
        std::fs::write(&p, &b).unwrap();
        let err = refused(r, t, &p, &[], exit::CORRUPT, outside.path());
        assert!(err.contains("corrupt"), "{err}");
    }
    // Truncated.
    for keep in [bytes.len() - 1, bytes.len() / 2, 100] {
        let p = work.path().join(format!("trunc-{keep}.kiln"));
        std::fs::write(&p, &bytes[..keep]).unwrap();
        refused(r, t, &p, &[], exit::CORRUPT, outside.path());
    }
    // Appended garbage.
    let p = work.path().join("appended.kiln");
    std::fs::write(&p, [bytes.as_slice(), b"more"].concat()).unwrap();
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());

    // Signed by a key that is not trusted.
    let stranger = work.path().join("stranger.kiln");
    sample(7).write(&other_key(), &stranger);
    let err = refused(r, t, &stranger, &[], exit::UNTRUSTED_KEY, outside.path());
    assert!(err.contains("untrusted key"), "{err}");

    // Trusted but revoked: revoked wins.
    let revoked = trust_dir(&[&key], &[&key]);
    let err = refused(
        r,
        revoked.path(),
        &good,
        &[],
        exit::REVOKED_KEY,
        outside.path(),
    );
    assert!(err.contains("revoked"), "{err}");

    // Expired.
    let mut old = sample(7);
    old.m.created = "2020-01-01T00:00:00Z".into();
    old.m.expires = "2020-02-01T00:00:00Z".into();
    let expired = work.path().join("expired.kiln");
    old.write(&key, &expired);
    let err = refused(r, t, &expired, &[], exit::EXPIRED, outside.path());
    assert!(err.contains("expired"), "{err}");

    // Another hostgroup: by flag, and by <root>/etc/kiln/hostgroup.
    refused(
        r,
        t,
        &good,
        &["--hostgroup", "db"],
        exit::WRONG_HOSTGROUP,
        outside.path(),
    );
    std::fs::create_dir_all(r.join("etc/kiln")).unwrap();
    std::fs::write(r.join("etc/kiln/hostgroup"), "db\n").unwrap();
    refused(r, t, &good, &[], exit::WRONG_HOSTGROUP, outside.path());
    // Rollback: by flag, and by <root>/etc/kiln/min-version.
    std::fs::write(r.join("etc/kiln/hostgroup"), "web\n").unwrap();
    refused(
        r,
        t,
        &good,
        &["--min-version", "8"],
        exit::ROLLBACK,
        outside.path(),
    );
    std::fs::write(r.join("etc/kiln/min-version"), "9\n").unwrap();
    refused(r, t, &good, &[], exit::ROLLBACK, outside.path());
    std::fs::remove_file(r.join("etc/kiln/min-version")).unwrap();

    // A pinned digest that does not match is refused before anything else (even before the
    // signature: the stranger's bundle gives 19, not 11).
    let wrong = "0".repeat(64);
    refused(
        r,
        t,
        &stranger,
        &["--sha256", &wrong],
        exit::DIGEST_MISMATCH,
        outside.path(),
    );

    // The manifest changed after signing: bad signature.
    let mut forged = sample(7);
    forged.finish();
    let sig_of_original = {
        let json = forged.m.to_canonical_json();
        kiln_signing::sshsig::sign(&key, kiln_signing::NAMESPACE, &json)
    };
    forged.m.version = 99;
    let forged_path = work.path().join("forged.kiln");
    write_with_signature(&forged, &sig_of_original, &forged_path);
    let err = refused(r, t, &forged_path, &[], exit::BAD_SIGNATURE, outside.path());
    assert!(err.contains("signature"), "{err}");

    // And the good bundle still applies, pinned, after all that.
    let out = apply(r, t, &good, &["--sha256", &sha]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read(r.join("srv/www/index.html")).unwrap(),
        b"<h1>hello</h1>\n"
    );
    assert!(!r.join("etc/hostname").exists());
    assert!(!r.join("var/lib/kiln/staging").exists());
}

/// A bundle whose manifest carries someone else's signature (write_raw signs; this does not).
fn write_with_signature(s: &Spec, sig: &str, path: &Path) {
    use std::io::Write;
    let json = s.m.to_canonical_json();
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [
        (kiln_signing::MANIFEST_NAME, json.as_slice()),
        (kiln_signing::SIGNATURE_NAME, sig.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append(&h, data).unwrap();
    }
    for b in &s.m.blobs {
        let data = &s.blobs[&b.digest];
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("blobs/{}", b.digest)).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append(&h, data.as_slice()).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.include_checksum(true).unwrap();
    z.write_all(&tar).unwrap();
    std::fs::write(path, z.finish().unwrap()).unwrap();
}

#[test]
fn malicious_manifests_signed_by_a_trusted_key_are_refused() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    let out_path = outside.path().to_str().unwrap().to_string();

    // Duplicate paths.
    let mut s = sample(7);
    s.file("/srv/www/index.html", b"second\n", "0644", "root", "root")
        .finish();
    let p = work.path().join("dup.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());

    // `..` climbing out of the root.
    let mut s = sample(7);
    s.file(
        &format!("/srv/../../../..{out_path}/x"),
        b"escape\n",
        "0644",
        "root",
        "root",
    )
    .finish();
    let p = work.path().join("dotdot.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());

    // A symlink pivot made by an earlier entry of the same bundle: a symlink to the outside
    // directory (absolute) or to / and a file below it.
    for target in [out_path.as_str(), "/"] {
        let mut s = sample(7);
        s.symlink("/opt/pivot", target)
            .file("/opt/pivot/pwned", b"pwned\n", "0644", "root", "root")
            .finish();
        let p = work.path().join("pivot.kiln");
        s.write_raw(&key, &p, Raw::default());
        let err = refused(r, t, &p, &[], exit::CORRUPT, outside.path());
        assert!(err.contains("symlink in the same bundle"), "{err}");
    }

    // The manifest's file size differs from its blob's size.
    let mut s = sample(7);
    s.finish();
    if let Some(EntryKind::File { size, .. }) =
        s.m.entries
            .iter_mut()
            .map(|e| &mut e.kind)
            .find(|k| matches!(k, EntryKind::File { .. }))
    {
        *size += 1;
    }
    let p = work.path().join("size-entry.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());

    // The manifest's blob list lies about a blob's size (the tar member has the real bytes).
    let mut s = sample(7);
    s.finish();
    let d = s.m.blobs[0].digest.clone();
    let real = s.blobs[&d].len();
    s.m.blobs[0].size = real as u64 + 5;
    for e in s.m.entries.iter_mut() {
        if let EntryKind::File { digest, size, .. } = &mut e.kind {
            if *digest == d {
                *size = real as u64 + 5;
            }
        }
    }
    let p = work.path().join("size-blob.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());

    // A device node and a hardlink in place of a blob, or appended after the blobs.
    let mut s = sample(7);
    s.finish();
    let d = s.m.blobs[0].digest.clone();
    let link_target = format!("{out_path}/x");
    let cases = vec![
        Raw {
            replace: vec![(d.clone(), tar::EntryType::Char, None)],
            ..Default::default()
        },
        Raw {
            replace: vec![(d.clone(), tar::EntryType::Link, Some(link_target.clone()))],
            ..Default::default()
        },
        Raw {
            replace: vec![(
                d.clone(),
                tar::EntryType::Symlink,
                Some(link_target.clone()),
            )],
            ..Default::default()
        },
        Raw {
            extra: vec![("blobs/dev".into(), tar::EntryType::Block, vec![], None)],
            ..Default::default()
        },
        Raw {
            extra: vec![(
                "etc/shadow".into(),
                tar::EntryType::Link,
                vec![],
                Some("/etc/shadow".into()),
            )],
            ..Default::default()
        },
        Raw {
            extra: vec![(
                format!("blobs/{d}"),
                tar::EntryType::Regular,
                b"again".to_vec(),
                None,
            )],
            ..Default::default()
        },
    ];
    for (i, raw) in cases.into_iter().enumerate() {
        let p = work.path().join(format!("member-{i}.kiln"));
        s.write_raw(&key, &p, raw);
        refused(r, t, &p, &[], exit::CORRUPT, outside.path());
    }

    // A zstd frame that needs a 128 MiB window (the reader allows 8 MiB).
    let p = work.path().join("window.kiln");
    s.write_raw(
        &key,
        &p,
        Raw {
            window_log: Some(27),
            ..Default::default()
        },
    );
    let err = refused(r, t, &p, &[], exit::CORRUPT, outside.path());
    assert!(err.contains("window"), "{err}");

    // A path under kiln's own state directory, and a user name that is an option.
    let mut s = sample(7);
    s.file("/var/lib/kiln/state.json", b"{}", "0644", "root", "root")
        .finish();
    let p = work.path().join("state.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());
    let mut s = sample(7);
    s.m.users.push(user("--root"));
    s.finish();
    let p = work.path().join("option-user.kiln");
    s.write_raw(&key, &p, Raw::default());
    refused(r, t, &p, &[], exit::CORRUPT, outside.path());
}

/// Symlinks that point out of the root, planted in the base or left by an earlier bundle, are
/// followed as if the root were `/`: what is written lands inside the root.
#[test]
fn symlinks_out_of_the_root_are_contained() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let out = outside.path();
    let inside = r.join(out.strip_prefix("/").unwrap());

    // Planted in the base: absolute and relative links leading outside.
    std::os::unix::fs::symlink(out, r.join("etc/evil")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../..".to_string() + out.to_str().unwrap(),
        r.join("srv/up"),
    )
    .unwrap();
    std::fs::create_dir_all(&inside).unwrap();
    let mut s = Spec::new("web", 1);
    s.file("/etc/evil/pwned", b"one\n", "0644", "root", "root")
        .file("/srv/up/pwned2", b"two\n", "0644", "root", "root")
        .dir("/etc/evil/sub", "0700", "root", "root")
        .symlink("/etc/evil/link", "/etc/shadow");
    let b1 = work.path().join("b1.kiln");
    s.write(&key, &b1);
    let o = apply(r, trust.path(), &b1, &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_empty(out);
    assert_eq!(std::fs::read(inside.join("pwned")).unwrap(), b"one\n");
    assert_eq!(std::fs::read(inside.join("pwned2")).unwrap(), b"two\n");
    assert!(inside.join("sub").is_dir());
    // The symlinks themselves were not replaced (the writes went through them).
    assert!(std::fs::symlink_metadata(r.join("etc/evil"))
        .unwrap()
        .file_type()
        .is_symlink());

    // A pivot left by an earlier bundle: /opt/pivot -> <outside>, then a later bundle (forced,
    // since one is applied already) writes below it.
    let mut s = Spec::new("web", 2);
    s.symlink("/opt/pivot", out.to_str().unwrap());
    let b2 = work.path().join("b2.kiln");
    s.write(&key, &b2);
    assert_eq!(
        apply(r, trust.path(), &b2, &["--force"]).status.code(),
        Some(0)
    );
    let mut s = Spec::new("web", 3);
    s.file("/opt/pivot/pwned3", b"three\n", "0644", "root", "root")
        .absent("/opt/pivot/pwned");
    let b3 = work.path().join("b3.kiln");
    s.write(&key, &b3);
    assert_eq!(
        apply(r, trust.path(), &b3, &["--force"]).status.code(),
        Some(0)
    );
    assert_empty(out);
    assert_eq!(std::fs::read(inside.join("pwned3")).unwrap(), b"three\n");
    assert!(
        !inside.join("pwned").exists(),
        "absent through the pivot removes inside the root"
    );

    // A different bundle without --force is refused, and a lower version even with it.
    let mut s = Spec::new("web", 4);
    s.file("/etc/v4", b"4\n", "0644", "root", "root");
    let b4 = work.path().join("b4.kiln");
    s.write(&key, &b4);
    let o = apply(r, trust.path(), &b4, &[]);
    assert_eq!(o.status.code(), Some(exit::FAILURE));
    assert!(
        stderr(&o).contains("already has web version 3"),
        "{}",
        stderr(&o)
    );
    let o = apply(r, trust.path(), &b1, &["--force"]);
    assert_eq!(o.status.code(), Some(exit::ROLLBACK));
}

#[test]
fn dry_run_verifies_and_lists_changes_without_making_them() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    sample(7).write(&key, &bundle);
    let before = tree_hash(r);
    let out = apply(r, trust.path(), &bundle, &["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(tree_hash(r), before);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "dry_run");
    let plan: Vec<&str> = report["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        plan,
        [
            "create directory /srv/www",
            "create file /srv/www/big.bin",
            "create file /srv/www/index.html",
            "create symlink /srv/current",
            "remove /etc/hostname"
        ]
    );

    // A dry run of a corrupt bundle is refused like the real thing, with a JSON report.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    let bad = work.path().join("bad.kiln");
    std::fs::write(&bad, bytes).unwrap();
    let out = apply(r, trust.path(), &bad, &["--dry-run", "--json"]);
    assert_eq!(out.status.code(), Some(exit::CORRUPT));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "refused");
    assert_eq!(report["exit_code"], exit::CORRUPT);
    assert_eq!(tree_hash(r), before);
}
