//! The good-configuration corpus: every case under `tests/good-configs/<name>/` validates clean,
//! and each hostgroup renders (`kiln render`) exactly to `render-<hostgroup>.yaml` and, with
//! provenance, to `render-<hostgroup>-explain.yaml`. `KILN_BLESS=1` rewrites them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_builder::config;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/good-configs")
}

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("tests/good-configs exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn check_or_bless(path: &Path, got: &str, failures: &mut Vec<String>) {
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(path, got).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == got => {}
        Ok(expected) => failures.push(format!(
            "{}:\n--- expected\n{expected}--- got\n{got}",
            path.display()
        )),
        Err(e) => failures.push(format!("{}: {e}", path.display())),
    }
}

#[test]
fn good_configs_validate_and_render_exactly() {
    let cases = cases();
    assert!(cases.len() >= 2);
    let mut failures = Vec::new();
    for case in &cases {
        let cfg = config::load(case).unwrap_or_else(|d| panic!("{}:\n{d}", case.display()));
        let problems = cfg.validate_all();
        assert!(problems.is_empty(), "{}:\n{problems}", case.display());
        for hg in cfg.hostgroup_names() {
            let resolved = cfg
                .resolve(&hg)
                .unwrap_or_else(|d| panic!("{} {hg}:\n{d}", case.display()));
            for (explain, suffix) in [(false, ""), (true, "-explain")] {
                let text = resolved.to_yaml(explain);
                assert_eq!(
                    text,
                    cfg.resolve(&hg).unwrap().to_yaml(explain),
                    "render is not deterministic"
                );
                let parsed = config::yaml::parse(&Arc::from(Path::new("render.yaml")), &text);
                assert!(
                    parsed.diags.is_empty(),
                    "render of {hg} is not valid YAML: {:?}",
                    parsed.diags
                );
                check_or_bless(
                    &case.join(format!("render-{hg}{suffix}.yaml")),
                    &text,
                    &mut failures,
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The article's macro: one line in a hostgroup gives package, service, templated config file
/// with its reload hook, user and log directory, all attributed to the layer.
#[test]
fn httpd_state_running_expands_like_the_articles_merger() {
    let cfg = config::load(&corpus().join("httpd-article")).unwrap();
    let r = cfg.resolve("web").unwrap();
    assert_eq!(r.layers, ["httpd"]);
    assert!(r.packages.contains_key("httpd"));
    let svc = &r.services["httpd.service"].value;
    assert_eq!(
        (svc.state, svc.enabled),
        (config::ServiceState::Running, true)
    );
    let conf = &r.files["/etc/httpd/httpd.conf"];
    assert_eq!(conf.value.reload, ["httpd.service"]);
    assert_eq!(conf.span.file.to_str(), Some("layers/httpd.yaml"));
    match &conf.value.source {
        config::FileSource::Bytes(b) => {
            assert!(String::from_utf8_lossy(b).contains("User httpd\n"))
        }
        other => panic!("static template not rendered: {other:?}"),
    }
    assert!(r.users["httpd"].value.system);
    let logs = &r.directories["/var/log/httpd"].value;
    assert_eq!(
        (logs.mode, logs.owner.as_str(), logs.group.as_str()),
        (0o755, "httpd", "nogroup")
    );
}

/// Every input a hostgroup depends on is listed: its YAML, the layers it uses, `from:` files.
#[test]
fn hostgroup_inputs_cover_yaml_layers_and_from_files() {
    let root = corpus().join("httpd-article");
    let cfg = config::load(&root).unwrap();
    let rel: Vec<String> = cfg
        .hostgroup_inputs("web")
        .iter()
        .map(|p| p.strip_prefix(cfg.root()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        rel,
        [
            "hostgroups/default.yaml",
            "hostgroups/web.yaml",
            "layers/httpd/httpd.conf",
            "layers/httpd.yaml"
        ]
    );
    assert!(cfg.hostgroup_inputs("nope").is_empty());
}
