//! `kiln base build`: debootstrap as the configuration defines the base, into the cache, keyed by
//! the definition; the second call finds it. Needs root and the Debian mirror (about a minute the
//! first time; under CI the cache persists in $KILN_CACHE/kiln-tests).

use crate::support::*;

#[test]
fn base_build_debootstraps_the_definition_once_with_its_sources() {
    if !need_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let config = t.path().join("config");
    std::fs::create_dir_all(config.join("hostgroups")).unwrap();
    std::fs::write(
        config.join("hostgroups/default.yaml"),
        "base:\n  name: test-minbase\n  suite: bookworm\n  variant: minbase\n  sources: [bookworm-updates, bookworm-security]\n",
    )
    .unwrap();
    std::fs::write(
        config.join("hostgroups/web.yaml"),
        "packages:\n  nginx: {}\n",
    )
    .unwrap();
    let cache = test_cache();
    let args = [
        "base",
        "build",
        "test-minbase",
        "--config",
        config.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ];
    let first: serde_json::Value = serde_json::from_str(&ok(&kiln(&args))).unwrap();
    let root = std::path::PathBuf::from(first["rootfs"].as_str().unwrap());
    assert!(root.starts_with(cache.join("bases")), "{}", root.display());
    assert_eq!(
        (
            first["id"].as_str(),
            first["version_id"].as_str(),
            first["arch"].as_str()
        ),
        (Some("debian"), Some("12"), Some("amd64"))
    );
    let sources = std::fs::read_to_string(root.join("etc/apt/sources.list")).unwrap();
    assert!(
        sources.contains(" bookworm main\n") && sources.contains(" bookworm-updates main\n"),
        "{sources}"
    );
    assert!(
        sources.contains("-security bookworm-security main\n"),
        "{sources}"
    );
    assert!(std::fs::read_dir(root.join("var/cache/apt/archives"))
        .unwrap()
        .all(|e| !e.unwrap().path().to_string_lossy().ends_with(".deb")));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.parent().unwrap().join("base.json")).unwrap())
            .unwrap();
    assert_eq!(info["packages_digest"], first["packages_digest"]);
    // Cached: the same path, at once, nothing built.
    let t0 = std::time::Instant::now();
    let second: serde_json::Value = serde_json::from_str(&ok(&kiln(&args))).unwrap();
    assert_eq!(second["rootfs"], first["rootfs"]);
    assert_eq!(second["built"], false);
    assert!(t0.elapsed().as_secs() < 5);
    // The built base is what `--base NAME` finds; the example's default.yaml names another.
    let show = kiln(&[
        "base",
        "show",
        "test-minbase",
        "--config",
        config.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&ok(&show)).unwrap();
    assert_eq!(shown["packages_digest"], first["packages_digest"]);
    // No leftovers of the build.
    for e in std::fs::read_dir(cache.join("bases")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(".tmp-"), "{n}");
    }
}
