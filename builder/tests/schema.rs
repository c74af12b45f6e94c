//! `kiln schema`: the JSON Schemas of hostgroup and layer files. Every shipped file validates
//! against them with a real JSON Schema validator (PyPI check-jsonschema, KILN_TEST_JSONSCHEMA),
//! the schemas pass their metaschema, and files with the mistakes users make are refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn check(validator: &str, schema: &Path, files: &[PathBuf]) -> Output {
    Command::new(validator)
        .arg("--schemafile")
        .arg(schema)
        .args(files)
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_schemas_name_the_sections_and_the_configurations_layers() {
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    let listed = ok(&kiln(&[
        "schema",
        "--config",
        root.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]));
    let (hg, layer) = (
        tmp.path().join("hostgroup.schema.json"),
        tmp.path().join("layer.schema.json"),
    );
    assert_eq!(listed, format!("{}\n{}\n", hg.display(), layer.display()));
    // The same bytes on stdout.
    let printed = ok(&kiln(&[
        "schema",
        "hostgroup",
        "--config",
        root.to_str().unwrap(),
    ]));
    assert_eq!(printed, std::fs::read_to_string(&hg).unwrap());
    let h: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(h["additionalProperties"], false);
    for key in [
        "files", "users", "packages", "services", "commands", "dynamic", "layers",
    ] {
        assert!(h["properties"][key].is_object(), "no {key}");
    }
    // The nginx layer is a key, with its parameters.
    let nginx = &h["properties"]["nginx"];
    assert!(
        nginx["properties"]["worker_connections"].is_object(),
        "{nginx}"
    );
    assert_eq!(nginx["additionalProperties"], false);
    let layers = h["properties"]["layers"]["items"]["enum"]
        .as_array()
        .unwrap();
    assert!(layers.contains(&serde_json::json!("chrony")));
    // No kind, no --out: a usage error.
    assert_eq!(kiln(&["schema"]).status.code(), Some(2));
}

#[test]
fn every_shipped_file_validates_and_mistakes_are_refused() {
    let Some(validator) = need("KILN_TEST_JSONSCHEMA") else {
        return;
    };
    let root = repo_root();
    let tmp = tempfile::tempdir().unwrap();
    ok(&kiln(&[
        "schema",
        "--config",
        root.to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
    ]));
    let (hg, layer) = (
        tmp.path().join("hostgroup.schema.json"),
        tmp.path().join("layer.schema.json"),
    );
    for schema in [&hg, &layer] {
        let o = Command::new(&validator)
            .arg("--check-metaschema")
            .arg(schema)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}: {}", schema.display(), out(&o));
    }
    let hostgroups = yaml_files(&root.join("hostgroups"));
    let layers = yaml_files(&root.join("layers"));
    assert!(hostgroups.len() >= 4 && layers.len() >= 3);
    for (schema, files) in [(&hg, &hostgroups), (&layer, &layers)] {
        let o = check(&validator, schema, files);
        assert!(o.status.success(), "{}", out(&o));
    }

    // The shipped files with the mistakes users make.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let web = std::fs::read_to_string(root.join("hostgroups/web.yaml")).unwrap();
    let chrony = std::fs::read_to_string(root.join("layers/chrony.yaml")).unwrap();
    let cases: Vec<(&Path, &str, String, &str)> = vec![
        (
            &hg,
            "web-typo.yaml",
            web.replacen("    owner: app\n", "    ownr: app\n", 1),
            "'ownr' was unexpected",
        ),
        (
            &hg,
            "web-mode.yaml",
            web.replacen("{mode: \"0750\",", "{mode: 0750,", 1),
            "is not of type 'string'",
        ),
        (
            &hg,
            "web-top.yaml",
            format!("{web}\nngnix: {{}}\n"),
            "'ngnix' was unexpected",
        ),
        (
            &hg,
            "web-param.yaml",
            web.replacen("nginx:\n", "nginx:\n  workers: 4\n", 1),
            "'workers' was unexpected",
        ),
        (
            &hg,
            "web-layer.yaml",
            web.replacen("layers: [nginx,", "layers: [ngnix,", 1),
            "'ngnix' is not one of",
        ),
        (
            &hg,
            "web-relative.yaml",
            web.replacen("  /srv/app: {", "  srv/app: {", 1),
            "'srv/app'",
        ),
        (
            &layer,
            "chrony-typo.yaml",
            chrony.replacen("resources:\n", "resources:\n  file: {}\n", 1),
            "'file' was unexpected",
        ),
    ];
    for (schema, name, text, want) in cases {
        let original = if schema == hg.as_path() {
            &web
        } else {
            &chrony
        };
        assert_ne!(&text, original, "{name}: the mistake was not made");
        let f = bad.join(name);
        std::fs::write(&f, &text).unwrap();
        let o = check(&validator, schema, &[f]);
        assert_eq!(o.status.code(), Some(1), "{name} accepted: {}", out(&o));
        assert!(out(&o).contains(want), "{name}: no {want:?} in {}", out(&o));
    }
}
