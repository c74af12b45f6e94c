//! A manifest larger than what the reader keeps in memory (16 MiB): `kiln-firstboot apply`
//! spools it to the staging area as it reads and hashes it, and applies it like any other.

use std::path::Path;

use crate::common::*;

/// Symlinks with long targets: few entries, many manifest bytes.
const LINKS: usize = 4500;

fn target(i: usize) -> String {
    format!("{}{i:05}", "t/".repeat(1995))
}

fn big_spec() -> Spec {
    let mut s = Spec::new("large", 1);
    s.dir("/srv/large", "0755", "root", "root").file(
        "/srv/large/plain",
        b"plain\n",
        "0644",
        "root",
        "root",
    );
    for i in 0..LINKS {
        s.symlink(&format!("/srv/large/l{i:05}"), &target(i));
    }
    s
}

#[test]
fn a_manifest_over_the_in_memory_cap_is_spooled_and_applied() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("large-1.kiln");
    let mut spec = big_spec();
    spec.write(&key, &b);
    let json = spec.m.to_canonical_json().len() as u64;
    let cap = kiln_signing::Limits::default().max_manifest_bytes;
    assert!(json > cap, "the manifest ({json} bytes) must exceed {cap}");

    // The readers that hold the manifest in memory refuse it, with the limit named.
    let refused = kiln_signing::open_lean(
        std::fs::File::open(&b).unwrap(),
        &kiln_signing::TrustStore::load(trust.path()).unwrap(),
        &kiln_signing::Limits::default(),
    )
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(&format!("is {json} bytes, more than the limit {cap}")),
        "{refused}"
    );

    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("symlinks: {LINKS} changed, 0 unchanged")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(r.join("srv/large/plain")).unwrap(),
        b"plain\n"
    );
    for i in [0, 1, LINKS / 2, LINKS - 1] {
        assert_eq!(
            std::fs::read_link(r.join(format!("srv/large/l{i:05}"))).unwrap(),
            Path::new(&target(i))
        );
    }
    assert_eq!(
        std::fs::read_dir(r.join("srv/large")).unwrap().count(),
        LINKS + 1
    );
    assert!(!r.join("var/lib/kiln/staging").exists());
    assert_eq!(read_state(r)["result"], "success");

    // Applied already: the rerun says so.
    let again = apply(r, trust.path(), &b, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("already applied"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_refused_large_bundle_leaves_the_root_as_it_was() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let before = tree_hash(r);
    let key = release_key();
    let trust = trust_dir(&[&other_key()], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("large-1.kiln");
    big_spec().write(&key, &b);
    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(
        out.status.code(),
        Some(kiln_signing::exit::UNTRUSTED_KEY),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(r), before, "{:?}", tree_listing(r));
    assert!(!r.join("var/lib/kiln").exists());
}

/// Where the staging area cannot be made, the manifest is spooled to the temporary directory:
/// a rerun of an applied bundle still says so (a file where the staging directory would be
/// stands in for a read-only root).
#[test]
fn no_staging_area_spools_to_the_temporary_directory() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("small-1.kiln");
    let mut spec = Spec::new("small", 1);
    spec.file("/srv/small", b"small\n", "0644", "root", "root");
    spec.write(&key, &b);
    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(r.join("var/lib/kiln/staging"), b"in the way\n").unwrap();
    let again = apply(r, trust.path(), &b, &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let err = stderr(&again);
    assert!(err.contains("spooling the manifest to "), "{err}");
    assert!(err.contains("already applied"), "{err}");
}

/// More files than the files phase writes in one batch (16,384), most of them sharing a few
/// blobs across batches (the last user of a blob takes the staged file, the others a copy):
/// every file arrives with its bytes and mode, and nothing is left in the staging area.
#[test]
fn files_over_several_batches_sharing_blobs_all_arrive() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("many-1.kiln");
    const FILES: usize = 40_000;
    let content = |i: usize| -> Vec<u8> {
        if i.is_multiple_of(10) {
            format!("unique {i}\n").into_bytes()
        } else {
            format!("shared {}\n", i % 3).into_bytes()
        }
    };
    let mut spec = Spec::new("many", 1);
    for d in 0..40 {
        spec.dir(&format!("/srv/many/d{d:02}"), "0750", "root", "root");
    }
    spec.dir("/srv/many", "0755", "root", "root");
    for i in 0..FILES {
        let mode = if i.is_multiple_of(2) { "0644" } else { "0600" };
        spec.file(
            &format!("/srv/many/d{:02}/f{i:05}", i % 40),
            &content(i),
            mode,
            "root",
            "root",
        );
    }
    spec.write(&key, &b);
    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("files: {FILES} changed, 0 unchanged")),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    for i in 0..FILES {
        let p = r.join(format!("srv/many/d{:02}/f{i:05}", i % 40));
        assert_eq!(std::fs::read(&p).unwrap(), content(i), "{}", p.display());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(
            mode,
            if i.is_multiple_of(2) { 0o644 } else { 0o600 },
            "{}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::metadata(r.join("srv/many/d07"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
    assert!(!r.join("var/lib/kiln/staging").exists());
}
