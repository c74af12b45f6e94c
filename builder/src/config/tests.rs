//! Tests of the whole model on small trees written to a temporary directory: merge rules,
//! provenance, layers, and what `validate_all` and `resolve` report.

use std::path::Path;

use super::*;

/// A configuration tree from (path, content) pairs.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

fn resolve(files: &[(&str, &str)], hg: &str) -> Result<Resolved, Diagnostics> {
    let dir = tree(files);
    load(dir.path()).unwrap().resolve(hg)
}

fn problems(files: &[(&str, &str)]) -> String {
    let dir = tree(files);
    match load(dir.path()) {
        Ok(c) => c.validate_all().to_string(),
        Err(d) => d.to_string(),
    }
}

#[test]
fn provenance_of_an_overridden_value_points_at_the_overriding_file() {
    let r = resolve(
        &[
            (
                "hostgroups/default.yaml",
                "files:\n  /etc/motd: {content: \"hi\\n\", mode: \"0644\"}\n",
            ),
            (
                "hostgroups/web.yaml",
                "files:\n  /etc/motd: {mode: \"0600\"}\n",
            ),
        ],
        "web",
    )
    .unwrap();
    let motd = &r.files["/etc/motd"];
    assert_eq!(motd.value.mode, 0o600);
    assert_eq!(motd.value.source, FileSource::Bytes(b"hi\n".to_vec()));
    assert_eq!(motd.span.to_string(), "hostgroups/web.yaml:2:3");
    assert_eq!(
        motd.merged_over
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["hostgroups/default.yaml:2:3"]
    );
}

#[test]
fn merge_order_is_default_then_layers_then_hostgroup() {
    let r = resolve(
        &[
            (
                "hostgroups/default.yaml",
                "vars: {who: default, keep: 1}\nlayers: [l]\n",
            ),
            (
                "layers/l.yaml",
                "resources:\n  vars: {who: layer, list: [1, 2]}\n",
            ),
            ("hostgroups/web.yaml", "vars: {who: web, list: [3]}\n"),
        ],
        "web",
    )
    .unwrap();
    assert_eq!(
        r.vars,
        serde_json::json!({"who": "web", "keep": 1, "list": [3]})
    );
    assert_eq!(
        r.vars_spans["who"].file.to_str(),
        Some("hostgroups/web.yaml")
    );
    assert_eq!(
        r.vars_spans["keep"].file.to_str(),
        Some("hostgroups/default.yaml")
    );
}

#[test]
fn absent_drops_declarations_and_a_later_definition_brings_them_back() {
    let r = resolve(
        &[
            (
                "hostgroups/default.yaml",
                "packages: {telnet: {}, curl: {version: \"7.88.1-10\"}}\nusers: {old: {uid: 3000}}\nservices: {x.service: {state: running}}\n",
            ),
            (
                "hostgroups/web.yaml",
                "packages: {telnet: {state: absent}}\nusers: {old: {state: absent}}\nservices: {x.service: {state: absent}}\n",
            ),
        ],
        "web",
    )
    .unwrap();
    assert!(
        !r.packages.contains_key("telnet")
            && r.packages["curl"].value.version.as_deref() == Some("7.88.1-10")
    );
    assert!(r.users.is_empty() && r.services.is_empty());
}

#[test]
fn layer_parameters_merge_default_and_hostgroup_and_keep_their_types() {
    let r = resolve(
        &[
            ("hostgroups/default.yaml", "svc: {name: a.service}\n"),
            (
                "layers/svc.yaml",
                "params:\n  name: {}\n  enabled: {default: true}\n  port: {default: 80}\nresources:\n  services:\n    \"{{ params.name }}\": {state: dead, enabled: \"{{ params.enabled }}\"}\n  vars:\n    port: \"{{ params.port }}\"\n    url: \"http://x:{{ params.port }}/\"\n",
            ),
            ("hostgroups/web.yaml", "svc: {enabled: false, port: 8080}\n"),
        ],
        "web",
    )
    .unwrap();
    let s = &r.services["a.service"];
    assert_eq!(
        (s.value.state, s.value.enabled),
        (ServiceState::Dead, false)
    );
    assert_eq!(
        r.vars,
        serde_json::json!({"port": 8080, "url": "http://x:8080/"})
    );
    assert_eq!(
        r.layer_uses["svc"].to_string(),
        "hostgroups/default.yaml:1:1"
    );
}

#[test]
fn nested_layers_come_first_once_each() {
    let r = resolve(
        &[
            ("hostgroups/default.yaml", "layers: [c]\n"),
            ("layers/a.yaml", "resources: {vars: {order: a}}\n"),
            (
                "layers/b.yaml",
                "layers: [a]\nresources: {vars: {order: b}}\n",
            ),
            (
                "layers/c.yaml",
                "layers: [b, a]\nresources: {vars: {order: c}}\n",
            ),
            ("hostgroups/web.yaml", "b: {}\n"),
        ],
        "web",
    )
    .unwrap();
    assert_eq!(r.layers, ["a", "b", "c"]);
    assert_eq!(r.vars["order"], "c");
}

#[test]
fn a_cycle_is_reported_once_whichever_layer_it_is_entered_from() {
    let out = problems(&[
        ("hostgroups/default.yaml", ""),
        ("layers/a.yaml", "layers: [b]\n"),
        ("layers/b.yaml", "layers: [a]\n"),
        ("hostgroups/one.yaml", "layers: [a]\n"),
        ("hostgroups/two.yaml", "layers: [b]\n"),
    ]);
    assert_eq!(out, "layers/a.yaml:1:10: layer cycle: a -> b -> a\n");
}

#[test]
fn a_layer_no_hostgroup_uses_is_still_checked() {
    let out = problems(&[
        ("hostgroups/default.yaml", ""),
        ("hostgroups/web.yaml", ""),
        (
            "layers/unused.yaml",
            "resources:\n  packages:\n    Bad: {}\n",
        ),
        // Required parameters cannot be guessed: only the layer's own shape is checked.
        (
            "layers/needs.yaml",
            "params: {x: {}}\nresources:\n  vars: {v: \"{{ params.x }}\"}\n",
        ),
    ]);
    assert_eq!(out, "layers/unused.yaml:3:5: package name \"Bad\" does not match Debian's [a-z0-9][a-z0-9+.-]+\n");
}

#[test]
fn a_problem_in_default_yaml_is_reported_once_for_all_hostgroups() {
    let out = problems(&[
        ("hostgroups/default.yaml", "packages: {Bad: {}}\n"),
        ("hostgroups/a.yaml", ""),
        ("hostgroups/b.yaml", ""),
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn resolve_reports_only_the_files_a_hostgroup_uses() {
    let dir = tree(&[
        ("hostgroups/default.yaml", ""),
        ("hostgroups/good.yaml", "packages: {curl: {}}\n"),
        ("hostgroups/bad.yaml", "packages: [curl\n"),
    ]);
    let cfg = load(dir.path()).unwrap();
    assert_eq!(cfg.hostgroup_names(), ["bad", "good"]);
    assert!(cfg.resolve("good").is_ok());
    let err = cfg.resolve("bad").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("hostgroups/bad.yaml:2:1: YAML syntax error"),
        "{err}"
    );
    let unknown = cfg.resolve("nope").unwrap_err().to_string();
    assert_eq!(
        unknown,
        "hostgroups/nope.yaml:1:1: unknown hostgroup \"nope\" (known: bad, good)\n"
    );
    assert!(cfg.resolve("default").is_err());
}

#[test]
fn from_files_are_absolute_paths_inside_the_tree() {
    let dir = tree(&[
        ("hostgroups/default.yaml", ""),
        (
            "hostgroups/web.yaml",
            "files: {/etc/a: {from: sub/a}}\nunits: {x.service.d/10-kiln.conf: {from: sub/a}}\n",
        ),
        ("files/sub/a", "[Service]\n"),
    ]);
    let cfg = load(dir.path()).unwrap();
    let r = cfg.resolve("web").unwrap();
    match &r.files["/etc/a"].value.source {
        FileSource::Path(p) => assert!(p.is_absolute() && p.starts_with(cfg.root()) && p.is_file()),
        other => panic!("{other:?}"),
    }
    // Units are files under /etc/systemd/system, with their bytes read in.
    let unit = &r.files["/etc/systemd/system/x.service.d/10-kiln.conf"].value;
    assert_eq!(
        (unit.mode, &unit.source),
        (0o644, &FileSource::Bytes(b"[Service]\n".to_vec()))
    );
    assert_eq!(r.units, ["x.service.d/10-kiln.conf"]);
}

#[test]
fn dynamic_templates_are_kept_raw_and_static_ones_see_vars_and_hostgroup() {
    let r = resolve(
        &[
            ("hostgroups/default.yaml", "vars: {port: 5432}\n"),
            (
                "hostgroups/web.yaml",
                "dynamic: {consul: {prefixes: [app/]}}\nfiles:\n  /etc/s: {content: \"{{ hostgroup }}:{{ vars.port }}\\n\", template: static}\n  /etc/d: {content: \"{{ consul('app/k') }}\\n\", template: dynamic, mode: \"0600\"}\n",
            ),
        ],
        "web",
    )
    .unwrap();
    assert_eq!(
        r.files["/etc/s"].value.source,
        FileSource::Bytes(b"web:5432\n".to_vec())
    );
    assert_eq!(
        r.files["/etc/d"].value.source,
        FileSource::Dynamic {
            template: "{{ consul('app/k') }}\n".into()
        }
    );
    assert_eq!(
        r.template_reads["/etc/d"],
        [kiln_apply::template::Read::ConsulKey("app/k".into())]
    );
}

#[test]
fn defaults_of_users_services_commands_and_base() {
    let r = resolve(
        &[
            ("hostgroups/default.yaml", ""),
            (
                "hostgroups/web.yaml",
                "users: {app: {system: true}, dev: {}}\nservices: {a.service: {state: running}, b.timer: {state: dead}}\ncommands: {c: {run: \"echo hi\"}}\n",
            ),
        ],
        "web",
    )
    .unwrap();
    let app = &r.users["app"].value;
    assert_eq!(
        (app.home.as_deref(), app.shell.as_deref(), app.create_home),
        (None, Some("/usr/sbin/nologin"), false)
    );
    let dev = &r.users["dev"].value;
    assert_eq!(
        (dev.home.as_deref(), dev.shell.as_deref(), dev.create_home),
        (Some("/home/dev"), Some("/bin/bash"), true)
    );
    assert!(r.services["a.service"].value.enabled && !r.services["b.timer"].value.enabled);
    let c = &r.commands[0].value;
    assert_eq!(c.argv, ["/bin/sh", "-c", "echo hi"]);
    assert_eq!(c.timeout, std::time::Duration::from_secs(300));
    assert_eq!(r.base, ResolvedBase::default());
}

#[test]
fn load_fails_only_without_default_yaml() {
    let dir = tree(&[("hostgroups/web.yaml", "")]);
    let err = load(dir.path()).unwrap_err().to_string();
    assert!(
        err.starts_with("hostgroups/default.yaml:1:1: missing"),
        "{err}"
    );
    let dir = tree(&[("hostgroups/default.yaml", "nonsense: 1\n")]);
    assert!(load(dir.path()).is_ok());
    assert!(load(Path::new("/nonexistent/kiln")).is_err());
}

#[test]
fn duplicate_keys_after_parameter_expansion_are_refused() {
    let out = problems(&[
        ("hostgroups/default.yaml", "layers: [l]\n"),
        ("layers/l.yaml", "params: {a: {default: x}}\nresources:\n  packages:\n    \"{{ params.a }}x\": {}\n    xx: {}\n"),
    ]);
    assert_eq!(
        out,
        "layers/l.yaml:5:5: duplicate key \"xx\" after expanding parameters (first at line 4)\n"
    );
}

/// Checking an unused layer on top of default.yaml alone must not blame default.yaml for what
/// every hostgroup provides (here: the user that owns a file of default.yaml).
#[test]
fn checking_an_unused_layer_does_not_report_default_yaml_out_of_context() {
    let out = problems(&[
        (
            "hostgroups/default.yaml",
            "files: {/etc/app.conf: {content: x, owner: app}}\nneeds: {}\n",
        ),
        ("hostgroups/web.yaml", "users: {app: {}}\nneeds: {x: 1}\n"),
        (
            "layers/needs.yaml",
            "params: {x: {}}\nresources: {vars: {x: \"{{ params.x }}\"}}\n",
        ),
        ("layers/unused.yaml", "resources: {packages: {curl: {}}}\n"),
    ]);
    assert_eq!(out, "");
}

/// A value that fails to expand is reported once, not again as a bad value of its key.
#[test]
fn an_expansion_error_is_not_reported_twice() {
    let out = problems(&[
        ("hostgroups/default.yaml", "layers: [l]\n"),
        ("layers/l.yaml", "resources:\n  services:\n    \"{{ params.nope }}\": {state: running}\n    a.service: {state: \"{{ nope }}\"}\n"),
    ]);
    assert_eq!(
        out,
        "layers/l.yaml:3:5: cannot expand \"{{ params.nope }}\": undefined value: `params.nope` is undefined\n\
         layers/l.yaml:4:24: cannot expand \"{{ nope }}\": undefined value: `nope` is undefined\n"
    );
}

/// `kiln build --all` resolves hostgroups in parallel from one loaded configuration.
#[test]
fn config_and_results_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Config>();
    shared::<Resolved>();
    shared::<Diagnostics>();
}

/// A key with a newline or an escape sequence still gives a one-line problem.
#[test]
fn every_problem_is_one_line() {
    let out = problems(&[(
        "hostgroups/default.yaml",
        "files:\n  \"/etc/a\\nb\": {content: x, \"mo\\u001bde\": 1}\n",
    )]);
    assert_eq!(out.lines().count(), out.matches('\n').count());
    assert!(!out.contains('\u{1b}'), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let d = Diagnostic::new(
        Span::file_start(std::sync::Arc::from(Path::new("f"))),
        "a\nb\u{1b}[31m",
    );
    assert_eq!(d.to_string(), "f:1:1: a\\nb\\u{1b}[31m");
}

#[test]
fn dynamic_sources_merge_and_templates_read_only_what_is_declared() {
    let r = resolve(
        &[
            (
                "hostgroups/default.yaml",
                "dynamic:\n  vault:\n    role: fleet\n    kv: [secret/data/common]\n",
            ),
            (
                "hostgroups/web.yaml",
                concat!(
                    "dynamic:\n",
                    "  consul: {prefixes: [kiln/apps/web/]}\n",
                    "  vault:\n",
                    "    role: web\n",
                    "    generate: [{path: secret/data/db/app, field: password}]\n",
                    "    pki: {role: web, common_name: \"{{ hostname }}.web.example.internal\"}\n",
                    "files:\n",
                    "  /etc/app.env:\n",
                    "    content: \"V={{ consul('kiln/apps/web/version') }}\\nP={{ vault('secret/data/db/app', 'password') }}\\n\"\n",
                    "    template: dynamic\n",
                    "  /etc/ssl/web.crt: {content: \"{{ pki_cert('certificate') }}\", template: dynamic}\n",
                    "  /etc/ssl/web.key: {content: \"{{ pki_cert('private_key') }}\", template: dynamic}\n",
                    "  /etc/app.pub: {content: \"{{ consul_or('kiln/apps/web/x', 'd') }}\", template: dynamic, mode: \"0640\"}\n",
                ),
            ),
        ],
        "web",
    )
    .unwrap();
    let d = r.dynamic.as_ref().unwrap();
    // Maps merge deeply (role from web, kv from default), lists are replaced.
    let v = d.vault.as_ref().unwrap();
    assert_eq!(v.role, "web");
    assert_eq!(v.auth_mount, "approle");
    assert_eq!(v.kv, ["secret/data/common"]);
    assert_eq!(v.generate[0].length, 32);
    let pki = v.pki.as_ref().unwrap();
    assert_eq!((pki.mount.as_str(), pki.ttl.as_str()), ("pki", "72h"));
    // Secrets make a file 0600 unless it says otherwise; a certificate alone does not.
    assert_eq!(r.files["/etc/app.env"].value.mode, 0o600);
    assert_eq!(r.files["/etc/ssl/web.key"].value.mode, 0o600);
    assert_eq!(r.files["/etc/ssl/web.crt"].value.mode, 0o644);
    assert_eq!(r.files["/etc/app.pub"].value.mode, 0o640);

    // The manifest records what each template reads.
    let info = crate::plan::BuildInfo {
        version: 1,
        created: std::time::UNIX_EPOCH,
        expires_after: std::time::Duration::from_secs(86400),
        source_commit: None,
    };
    let plan = crate::plan::plan(&r, &info).unwrap();
    let t = |p: &str| {
        plan.manifest
            .templates
            .iter()
            .find(|t| t.path == p)
            .unwrap()
    };
    assert_eq!(t("/etc/app.env").consul, ["kiln/apps/web/version"]);
    assert_eq!(t("/etc/app.env").vault, ["secret/data/db/app#password"]);
    assert_eq!(t("/etc/ssl/web.key").vault, ["pki/issue/web#private_key"]);
    assert_eq!(plan.manifest.dynamic.as_ref(), Some(d));
    kiln_signing::dynamic::check(&plan.manifest).unwrap();
}

#[test]
fn dynamic_problems_are_reported_where_they_are() {
    let out = problems(&[
        ("hostgroups/default.yaml", ""),
        (
            "hostgroups/web.yaml",
            concat!(
                "dynamic:\n",
                "  consul: {prefixes: [kiln/apps/web, \"a/../b/\"]}\n",
                "  vault:\n",
                "    kv: [secret/db/app]\n",
                "    generate: [{path: secret/data/x, field: pw, length: 4, charset: emoji}]\n",
                "    pki: {role: web, common_name: \"{{ vars.x }}\", ttl: 1d}\n",
                "    rolle: web\n",
                "files:\n",
                "  /etc/a: {content: \"{{ consul('other/k') }}{{ vault('secret/data/y', 'f') }}\", template: dynamic}\n",
            ),
        ),
    ]);
    assert!(!out.contains("prefixes is missing"), "{out}");
    for want in [
        "hostgroups/web.yaml:2:23: prefixes: \"kiln/apps/web\" is not a Consul prefix ending in /",
        "hostgroups/web.yaml:2:38: prefixes: \"a/../b/\" is not a Consul prefix",
        "hostgroups/web.yaml:3:3: dynamic.vault: role is missing",
        "hostgroups/web.yaml:4:10: kv: \"secret/db/app\" is not a KV v2 path",
        "hostgroups/web.yaml:5:57: generate: length must be an integer from 8 to 1024, found 4",
        "hostgroups/web.yaml:5:69: generate: charset \"emoji\" is not one of: alnum, hex, base64url",
        "hostgroups/web.yaml:6:35: common_name: undefined value",
        "hostgroups/web.yaml:6:56: ttl: \"1d\" is not a duration",
        "hostgroups/web.yaml:7:5: unknown key \"rolle\" in dynamic.vault",
        "hostgroups/web.yaml:9:21: dynamic template content reads Consul \"other/k\", which is under no prefix",
        "hostgroups/web.yaml:9:21: dynamic template content reads Vault secret/data/y#f, but secret/data/y is not in dynamic.vault.kv",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn a_literal_secret_in_a_static_file_is_a_warning_not_an_error() {
    let dir = tree(&[
        ("hostgroups/default.yaml", ""),
        (
            "hostgroups/web.yaml",
            "files:\n  /etc/app.ini: {content: \"[db]\\npassword = Zx81-secret-Value\\n\"}\n",
        ),
    ]);
    let cfg = load(dir.path()).unwrap();
    assert!(cfg.validate_all().is_empty());
    let r = cfg.resolve("web").unwrap();
    assert_eq!(r.warnings.len(), 1);
    let w = r.warnings[0].to_string();
    assert!(
        w.starts_with("hostgroups/web.yaml:2:27: /etc/app.ini: line 2 assigns a literal value to \"password\""),
        "{w}"
    );
    assert!(!w.contains("Zx81"), "{w}");
    assert_eq!(cfg.warnings_all().0, r.warnings);
}
