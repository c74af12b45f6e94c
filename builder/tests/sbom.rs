//! The SBOM beside every bundle, without a base (packages by name and pin): valid SPDX 2.3 by the
//! SPDX project's validator, and byte-identical for identical inputs.

use crate::support::*;

#[test]
fn every_example_bundle_has_a_valid_spdx_sbom() {
    let t = tempfile::tempdir().unwrap();
    let (key, _) = key_and_trust(t.path());
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for out in [&a, &b] {
        ok(&kiln(&[
            "build",
            "--all",
            "--config",
            repo_root().to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--version",
            "5",
        ]));
    }
    let validator = need("KILN_TEST_SPDX");
    for hg in ["bastion", "db", "legacy-web", "web"] {
        let path = a.join(format!("{hg}-5.spdx.json"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(b.join(format!("{hg}-5.spdx.json"))).unwrap(),
            "{hg}: not reproducible"
        );
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        let m = manifest(&a.join(format!("{hg}-5.kiln")));
        let names: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, want, "{hg}");
        // The bundle is described with its own SHA256.
        let bundle = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["SPDXID"] == "SPDXRef-Bundle")
            .unwrap();
        let sha = sh(&format!(
            "sha256sum {} | cut -d' ' -f1",
            a.join(format!("{hg}-5.kiln")).display()
        ));
        assert_eq!(
            bundle["checksums"][0]["checksumValue"],
            String::from_utf8_lossy(&sha.stdout).trim()
        );
        if let Some(v) = &validator {
            validate_spdx(v, &path);
        }
    }
}
