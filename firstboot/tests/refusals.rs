//! Bundles that must be refused before the root changes, each with its exit code: tampered
//! bundles (flipped byte, truncated, wrong key, revoked key, expired, other hostgroup, rollback,
//! pinned digest) and malicious manifests signed by a trusted key (duplicate paths, `..`, blob
//! size lies, device nodes and hardlinks in the tar, a zstd window bomb, a symlink pivot).
//! Each asserts the exit code, that the whole root is byte-for-byte as before (staging gone),
//! and that nothing appeared outside it. Then roots that conflict with a good bundle (exit 22,
//! by the apply and its dry run alike): a file or a broken symlink where a directory is needed,
//! a second uid 0, a symlinked home or `.ssh`, a `.deb` that is not the manifest's, a symlink
//! on the way to a dynamic template; and a relative `--root`.

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::common::*;
use kiln_signing::{exit, EntryKind, Group, Package, Template};

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

/// The conflict lines of an error report (those under "the root conflicts with the bundle").
fn conflict_lines(err: &str) -> Vec<String> {
    let mut lines: Vec<String> = err
        .lines()
        .skip_while(|l| !l.contains("the root conflicts with the bundle (nothing was changed):"))
        .skip(1)
        .take_while(|l| l.starts_with("  ") && !l.starts_with("  caused by:"))
        // The same errno in the binary's libc's words: musl (the static build) says
        // "Symbolic link loop" where glibc says "Too many levels of symbolic links".
        .map(|l| {
            l.trim().replace(
                "Symbolic link loop (os error 40)",
                "Too many levels of symbolic links (os error 40)",
            )
        })
        .collect();
    lines.sort();
    lines
}

/// A bundle the root conflicts with: refused by a dry run and by the apply alike, exit 22,
/// "refusing", the same conflicts named, the root unchanged. Returns the apply's stderr.
fn conflicts(root: &Path, trust: &Path, bundle: &Path, outside: &Path) -> String {
    let dry = refused(root, trust, bundle, &["--dry-run"], exit::CONFLICT, outside);
    assert!(dry.contains("error: dry run of"), "{dry}");
    let err = refused(root, trust, bundle, &[], exit::CONFLICT, outside);
    assert!(err.contains("error: refusing "), "{err}");
    assert!(!err.contains("failed applying"), "{err}");
    let lines = conflict_lines(&err);
    assert!(!lines.is_empty(), "{err}");
    assert_eq!(
        conflict_lines(&dry),
        lines,
        "the dry run names the same conflicts"
    );
    err
}

#[test]
fn a_file_or_a_broken_symlink_where_the_bundle_needs_a_directory_is_refused() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(r.join("etc/app"), "a file\n").unwrap();
    symlink("/nowhere", r.join("etc/dangling")).unwrap();
    std::fs::write(r.join("etc/target.conf"), "x\n").unwrap();
    symlink("target.conf", r.join("etc/tofile")).unwrap();
    symlink("loop", r.join("etc/loop")).unwrap();

    // The path, how the bundle makes it, the conflicts named.
    type Case<'a> = (&'a str, fn(&mut Spec, &str), &'a [&'a str]);
    let cases: [Case; 5] = [
        (
            "/etc/app/x.conf",
            |s, p| {
                s.file(p, b"x\n", "0644", "root", "root");
            },
            &["/etc/app: is a regular file in the root, where the bundle needs a directory (for /etc/app/x.conf)"],
        ),
        (
            "/etc/app/deep/er/y.conf",
            |s, p| {
                s.file(p, b"y\n", "0644", "root", "root");
            },
            &["/etc/app: is a regular file in the root, where the bundle needs a directory (for /etc/app/deep/er/y.conf)"],
        ),
        (
            "/etc/dangling/sub",
            |s, p| {
                s.dir(p, "0755", "root", "root");
            },
            &["/etc/dangling: is a symlink (-> /nowhere) that does not lead to a directory in the root, where the bundle needs a directory (for /etc/dangling/sub)"],
        ),
        (
            "/etc/tofile/link",
            |s, p| {
                s.symlink(p, "/srv");
            },
            &["/etc/tofile: is a symlink (-> target.conf) that does not lead to a directory in the root, where the bundle needs a directory (for /etc/tofile/link)"],
        ),
        (
            "/etc/loop/z.conf",
            |s, p| {
                s.file(p, b"z\n", "0644", "root", "root");
            },
            &[
                // The entry's own check says it too (ELOOP, in glibc's words; musl's are
                // "Symbolic link loop", see `conflict_lines`).
                "/etc/loop/z.conf: Too many levels of symbolic links (os error 40)",
                "/etc/loop: is a symlink (-> loop) in a loop in the root, where the bundle needs a directory (for /etc/loop/z.conf)",
            ],
        ),
    ];
    for (i, (path, add, want)) in cases.iter().enumerate() {
        let mut s = sample(7);
        add(&mut s, path);
        let b = work.path().join(format!("dir-{i}.kiln"));
        s.write(&key, &b);
        let err = conflicts(r, t, &b, outside.path());
        assert_eq!(conflict_lines(&err), *want, "{err}");
    }

    // The same bundle once the file is a directory: applied. A symlink that leads to a
    // directory inside the root is followed, not refused.
    std::fs::remove_file(r.join("etc/app")).unwrap();
    symlink("/srv", r.join("etc/app")).unwrap();
    let b = work.path().join("dir-0.kiln");
    let out = apply(r, t, &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(r.join("srv/x.conf")).unwrap(), b"x\n");
}

#[test]
fn a_second_uid_0_or_a_taken_id_is_refused() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();

    // The bundle asks for uid 0 and gid 0 under other names, and for daemon's uid.
    let mut s = sample(7);
    let mut toor = user("toor");
    toor.uid = Some(0);
    let mut web = user("web");
    web.uid = Some(1);
    s.m.users.extend([toor, web]);
    s.m.groups.push(Group {
        name: "wheel".into(),
        gid: Some(0),
        system: false,
    });
    let b = work.path().join("ids.kiln");
    s.write(&key, &b);
    let err = conflicts(r, t, &b, outside.path());
    assert_eq!(
        conflict_lines(&err),
        [
            "group wheel: asks for gid 0, which is root's group alone",
            "user toor: asks for uid 0, which is root's alone",
            "user web: uid 1 is taken by user daemon in the root",
        ],
        "{err}"
    );

    // The root has a second uid 0 already: a bundle that adds an account is refused...
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        format!("{passwd}toor:x:0:0:toor:/root:/bin/sh\n"),
    )
    .unwrap();
    let mut s = sample(7);
    s.m.groups.push(Group {
        name: "webadm".into(),
        gid: None,
        system: false,
    });
    let b = work.path().join("second-root.kiln");
    s.write(&key, &b);
    let err = conflicts(r, t, &b, outside.path());
    assert_eq!(
        conflict_lines(&err),
        ["the root has 2 users with uid 0 (root, toor); only root may have it, and the bundle adds or changes accounts"],
        "{err}"
    );
    // ... one that touches no account is not.
    let b = work.path().join("no-accounts.kiln");
    sample(7).write(&key, &b);
    let out = apply(r, t, &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_symlinked_home_or_ssh_directory_is_refused() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(r.join("root/.ssh")).unwrap();
    std::fs::write(
        r.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA root\n",
    )
    .unwrap();
    symlink("/root", r.join("srv/web")).unwrap();
    std::fs::create_dir_all(r.join("srv/ops")).unwrap();
    symlink("/root/.ssh", r.join("srv/ops/.ssh")).unwrap();
    std::fs::write(r.join("srv/filer"), "a file\n").unwrap();
    std::fs::create_dir_all(r.join("srv/dk/.ssh/authorized_keys")).unwrap();
    std::fs::write(r.join("srv/flat"), "a file\n").unwrap();

    // An account of the root whose home is `/`.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    std::fs::write(
        r.join("etc/passwd"),
        format!("{passwd}slash:x:1500:1:slash:/:/bin/sh\n"),
    )
    .unwrap();

    let mut s = sample(7);
    for (name, home) in [
        ("web", Some("/srv/web")),
        ("ops", Some("/srv/ops")),
        ("slash", None),
        ("filer", Some("/srv/filer")),
        ("dirkeys", Some("/srv/dk")),
        ("under", Some("/srv/flat/under")),
        ("fine", Some("/srv/fine")),
    ] {
        let mut u = user(name);
        u.home = home.map(Into::into);
        u.authorized_keys = vec![format!("ssh-ed25519 AAAA {name}")];
        s.m.users.push(u);
    }
    let b = work.path().join("homes.kiln");
    s.write(&key, &b);
    let err = conflicts(r, t, &b, outside.path());
    assert_eq!(
        conflict_lines(&err),
        [
            "/srv/flat: is a regular file in the root, where the bundle needs a directory (for the home of user under)",
            "user dirkeys: /srv/dk/.ssh/authorized_keys is a directory in the root",
            "user filer: home /srv/filer is not a directory in the root",
            "user ops: .ssh /srv/ops/.ssh is a symlink (-> /root/.ssh) in the root; authorized_keys would be written through it",
            "user slash: home \"/\" in the root cannot hold authorized_keys",
            "user web: home /srv/web is a symlink (-> /root) in the root; authorized_keys would be written through it",
        ],
        "{err}"
    );
}

#[test]
fn a_deb_that_is_not_what_the_manifest_says_is_refused_before_dpkg_runs() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    let mut s = sample(7);
    let debs = [
        // name and version in the manifest, the .deb's bytes
        ("kiln-good", "1.0-1", deb(w, "kiln-good", "1.0-1", "all")),
        ("kiln-ver", "1.0-1", deb(w, "kiln-ver", "2.0-1", "all")),
        ("kiln-name", "1.0-1", deb(w, "kiln-other", "1.0-1", "all")),
        ("kiln-junk", "1.0-1", noise(3, 5000)),
    ];
    for (name, version, bytes) in &debs {
        let digest = s.blob(bytes);
        s.m.packages.push(Package {
            name: name.to_string(),
            version: Some(version.to_string()),
            arch: Some("all".into()),
            digest: Some(digest),
            size: Some(bytes.len() as u64),
        });
    }
    let b = work.path().join("debs.kiln");
    s.write(&key, &b);
    let err = conflicts(r, t, &b, outside.path());
    let lines = conflict_lines(&err);
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("package kiln-junk: its .deb is not a Debian package (dpkg-deb: "),
        "{err}"
    );
    assert_eq!(
        lines[1..],
        [
            "package kiln-name: its .deb says Package \"kiln-other\" where the manifest says \"kiln-name\"",
            "package kiln-ver: its .deb says Version \"2.0-1\" where the manifest says \"1.0-1\"",
        ],
        "{err}"
    );
    assert!(!err.contains("dpkg -i"), "dpkg ran: {err}");
}

#[test]
fn a_symlink_on_the_way_to_a_dynamic_template_is_refused() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let t = trust.path();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(r.join("srv/appconf")).unwrap();
    symlink("/srv/appconf", r.join("etc/app")).unwrap();
    symlink("/etc/hostname", r.join("etc/token")).unwrap();

    let template = |s: &mut Spec, path: &str| {
        let digest = s.blob(b"static text\n");
        s.m.templates.push(Template {
            path: path.into(),
            digest,
            mode: "0600".into(),
            owner: "root".into(),
            group: "root".into(),
            consul: vec![],
            vault: vec![],
            vars: Default::default(),
            restart: vec![],
            reload: vec![],
        });
        s.m.templates.sort_by(|a, b| a.path.cmp(&b.path));
    };
    let mut s = sample(7);
    template(&mut s, "/etc/app/secret.conf");
    template(&mut s, "/etc/token");
    template(&mut s, "/etc/fine.conf");
    let b = work.path().join("templates.kiln");
    s.write(&key, &b);
    let err = conflicts(r, t, &b, outside.path());
    assert_eq!(
        conflict_lines(&err),
        [
            "dynamic template /etc/app/secret.conf: /etc/app is a symlink (-> /srv/appconf) in the root; the template would be written through it",
            "dynamic template /etc/token: is a symlink (-> /etc/hostname) in the root; it would be written through it",
        ],
        "{err}"
    );

    // Below the bundle's own symlink: a manifest error.
    let mut s = sample(7);
    s.symlink("/etc/tpl", "/srv");
    template(&mut s, "/etc/tpl/secret.conf");
    s.finish();
    let b = work.path().join("template-below-link.kiln");
    s.write_raw(&key, &b, Raw::default());
    let err = refused(r, t, &b, &[], exit::CORRUPT, outside.path());
    assert!(
        err.contains("/etc/tpl/secret.conf: its parent /etc/tpl is a symlink in the same bundle"),
        "{err}"
    );
}

/// Regression: when the checks themselves failed (here: /etc/passwd is not UTF-8), the staged
/// blobs were left in the root.
#[test]
fn checks_that_cannot_be_made_leave_no_staging_behind() {
    let Some(root) = mini_root() else { return };
    let outside = outside_dir();
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    std::fs::write(r.join("etc/passwd"), b"root:x:0:0:\xff:/root:/bin/sh\n").unwrap();
    let b = work.path().join("web-7.kiln");
    sample(7).write(&key, &b);
    let err = refused(r, trust.path(), &b, &[], exit::APPLY, outside.path());
    assert!(err.contains("error: refusing web-7.kiln"), "{err}");
    assert!(err.contains("/etc/passwd is not UTF-8"), "{err}");
}

/// Regression: a relative --root was handed as it was to the tools, which run from `/` (chroot,
/// useradd --root): the apply failed half-way, or worked on another directory.
#[test]
fn a_relative_root_is_made_absolute() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let mut s = Spec::new("web", 7);
    s.file("/etc/motd", b"relative\n", "0644", "root", "root")
        .command("ran", &["touch", "/var/tmp/kiln-ran"], 30, None);
    s.m.groups.push(Group {
        name: "webadm".into(),
        gid: None,
        system: false,
    });
    let b = work.path().join("web-7.kiln");
    s.write(&key, &b);
    let name = r.file_name().unwrap().to_str().unwrap();
    let out = std::process::Command::new(bin())
        .current_dir(r.parent().unwrap())
        .args(["apply", "--root", name, "--trust"])
        .arg(trust.path())
        .arg("--bundle")
        .arg(&b)
        .env_remove("CI")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(r.join("etc/motd")).unwrap(), b"relative\n");
    assert!(r.join("var/tmp/kiln-ran").exists());
    assert!(gid_in(r, "webadm") >= 1000);
    assert_eq!(read_state(r)["result"], "success");
}
