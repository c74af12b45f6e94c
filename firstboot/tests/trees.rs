//! Files of a new directory are staged in a private copy of it, which the directories phase
//! renames into place whole. What the root ends up with is the same as file by file: every
//! file's bytes, mode and owner, the directory's own, and nothing else in it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::common::*;

fn spec() -> Spec {
    let mut s = Spec::new("trees", 1);
    s.dir("/srv/new", "0755", "root", "root")
        .dir("/srv/new/private", "0750", "root", "daemon")
        .dir("/srv/old", "0755", "root", "root")
        .file("/srv/new/a", b"a\n", "0644", "root", "root")
        .file("/srv/new/b", b"b\n", "0600", "daemon", "daemon")
        .file("/srv/new/private/key", b"k\n", "0440", "root", "daemon")
        .file("/srv/new/setuid", b"x\n", "4755", "root", "root")
        // One blob, two paths: copied, not staged in the tree.
        .file("/srv/new/same1", b"same\n", "0644", "root", "root")
        .file("/srv/new/same2", b"same\n", "0644", "root", "root")
        .file("/srv/old/c", b"c\n", "0644", "root", "root");
    s
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_new_directory_arrives_with_its_files_owners_and_modes() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    // /srv/old exists before: its file is renamed in alone.
    std::fs::create_dir_all(r.join("srv/old")).unwrap();
    std::fs::set_permissions(r.join("srv/old"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("trees-1.kiln");
    spec().write(&key, &b);
    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("directories: 3 changed, 0 unchanged"), "{err}");
    assert!(err.contains("files: 7 changed, 0 unchanged"), "{err}");

    assert_eq!(meta(&r.join("srv/new")), (0o755, 0, 0));
    assert_eq!(meta(&r.join("srv/new/private")), (0o750, 0, 1));
    assert_eq!(meta(&r.join("srv/old")), (0o755, 0, 0));
    assert_eq!(
        names(&r.join("srv/new")),
        ["a", "b", "private", "same1", "same2", "setuid"]
    );
    assert_eq!(names(&r.join("srv/new/private")), ["key"]);
    assert_eq!(names(&r.join("srv/old")), ["c"]);
    for (p, bytes, m) in [
        ("srv/new/a", &b"a\n"[..], (0o644, 0, 0)),
        ("srv/new/b", b"b\n", (0o600, 1, 1)),
        ("srv/new/private/key", b"k\n", (0o440, 0, 1)),
        ("srv/new/setuid", b"x\n", (0o4755, 0, 0)),
        ("srv/new/same1", b"same\n", (0o644, 0, 0)),
        ("srv/new/same2", b"same\n", (0o644, 0, 0)),
        ("srv/old/c", b"c\n", (0o644, 0, 0)),
    ] {
        assert_eq!(std::fs::read(r.join(p)).unwrap(), bytes, "{p}");
        assert_eq!(meta(&r.join(p)), m, "{p}");
    }
    assert!(!r.join("var/lib/kiln/staging").exists());

    // Again, forced: everything is found as it should be.
    let mut s = spec();
    s.m.version = 2;
    let b2 = work.path().join("trees-2.kiln");
    s.write(&key, &b2);
    let out = apply(r, trust.path(), &b2, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("directories: 0 changed, 3 unchanged"), "{err}");
    assert!(err.contains("files: 0 changed, 7 unchanged"), "{err}");
}

#[test]
fn a_tree_left_in_the_staging_area_by_an_earlier_run_brings_nothing_of_its_own() {
    // An interrupted run's staging area, with a stray file in every tree it could have made:
    // the new directories hold their files and nothing else.
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let b = work.path().join("trees-1.kiln");
    let sha = spec().write(&key, &b);
    let blobs = r.join("var/lib/kiln/staging").join(&sha).join("blobs");
    for i in 0..20 {
        let t = blobs.join(format!("t{i}"));
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("stray"), b"not in the bundle\n").unwrap();
        std::fs::write(t.join("a"), b"old bytes\n").unwrap();
    }
    let out = apply(r, trust.path(), &b, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        names(&r.join("srv/new")),
        ["a", "b", "private", "same1", "same2", "setuid"]
    );
    assert_eq!(names(&r.join("srv/new/private")), ["key"]);
    assert_eq!(std::fs::read(r.join("srv/new/a")).unwrap(), b"a\n");
    assert!(!r.join("var/lib/kiln/staging").exists());
}
