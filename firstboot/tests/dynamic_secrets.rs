//! No secret value leaks: across failing and succeeding runs, every log line and output, the
//! state file and journal, every other file of the root, the Consul report (every value in
//! Consul) and the bundle are searched for each secret the test used (Consul token, wrapping
//! token, secret_id, role_id, Vault values, the generated password, the private key), and none
//! is found. Only the rendered templates hold them.

use crate::common::*;
use crate::dynamic_support::*;
use consul_test_server::{AclConfig, Config, DefaultPolicy, Policy, TestServer};
use serde_json::json;

#[test]
fn no_secret_value_appears_in_logs_state_report_or_bundle() {
    let Some(v) = web_vault() else { return };
    let consul_token = "consul-acl-7f3e9d2c1b0a";
    let consul = TestServer::start_with(Config::default().with_acl(
        AclConfig::new("root", DefaultPolicy::Deny).with_token(
            consul_token,
            &[("kiln/apps/", Policy::Read), ("kiln/nodes/", Policy::Write)],
        ),
    ))
    .unwrap();
    consul.put("kiln/apps/web/version", b"5.5");
    // The api_key field is missing at first: the first run fails after the login.
    v.bao
        .kv_put("web/app", json!({"other": "value-not-secret"}));

    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    web_spec(1).write(&key, &bundle);

    let Some(mut host) = Host::new("web-1") else {
        return;
    };
    let secret_id = "secret-id-0c9b8a7f6e5d4c3b";
    let wrapped = v.bao.wrapped_secret_id("web", Some(secret_id));
    let token_file = host.cred("consul-token", "wrong-token-5e4d3c2b1a\n");
    let role_file = host.cred("role_id", &v.role_id);
    let wrapped_file = host.cred("wrapped", &wrapped);
    host.flag("consul-addr", &consul.url())
        .flag("consul-token-file", &token_file)
        .flag("vault-addr", &v.bao.addr)
        .flag("vault-role-id-file", &role_file)
        .flag("wrapped-secret-id-file", &wrapped_file)
        .flag("dynamic-deadline", "30s");

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let keep = |what: &str,
                host: &Host,
                out: &std::process::Output,
                outputs: &mut Vec<(String, Vec<u8>)>| {
        outputs.push((format!("{what}: stdout"), out.stdout.clone()));
        outputs.push((format!("{what}: stderr"), out.stderr.clone()));
        for (p, b) in all_bytes(host.root.path()) {
            outputs.push((format!("{what}: {}", p.display()), b));
        }
    };

    // 1. A refused Consul token (403).
    let out = host.apply(trust.path(), &bundle, &["--json"]);
    assert_eq!(out.status.code(), Some(20), "{}", out_text(&out));
    keep("run 1", &host, &out, &mut outputs);
    // 2. The right token; the Vault field is missing (after the login).
    std::fs::write(&token_file, consul_token).unwrap();
    let out = host.apply(trust.path(), &bundle, &["--json"]);
    assert_eq!(out.status.code(), Some(20), "{}", out_text(&out));
    assert!(stderr(&out).contains("secret/data/web/app#api_key does not exist"));
    keep("run 2", &host, &out, &mut outputs);
    // 3. Fixed: success.
    v.bao.kv_put("web/app", json!({"api_key": v.api_key}));
    let out = host.apply(trust.path(), &bundle, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    keep("run 3", &host, &out, &mut outputs);
    let out = host.apply(trust.path(), &bundle, &["--json"]);
    keep("run 4 (already applied)", &host, &out, &mut outputs);
    let status = run(&[
        "status",
        "--root",
        host.root.path().to_str().unwrap(),
        "--json",
    ]);
    keep("status", &host, &status, &mut outputs);

    // Everything Consul holds (the reports), and the bundle.
    for e in consul.entries() {
        outputs.push((format!("consul {}", e.key), e.value.clone()));
    }
    outputs.push(("bundle".into(), std::fs::read(&bundle).unwrap()));
    let manifest = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | tar -xO kiln/manifest.json",
            bundle.display()
        ))
        .output()
        .unwrap();
    outputs.push(("manifest".into(), manifest.stdout));

    let password = v.bao.kv_get("db/app").unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    let key_pem = std::fs::read_to_string(host.path("/etc/ssl/kiln/web.key")).unwrap();
    let key_line = key_pem
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 20)
        .unwrap()
        .to_string();
    let secrets = [
        ("consul token", consul_token.to_string()),
        ("wrong consul token", "wrong-token-5e4d3c2b1a".to_string()),
        ("wrapping token", wrapped.clone()),
        ("secret_id", secret_id.to_string()),
        ("role_id", v.role_id.clone()),
        ("api_key", v.api_key.clone()),
        ("generated password", password.clone()),
        ("private key", key_line),
    ];
    // The rendered templates hold them, as they must.
    let env = std::fs::read_to_string(host.path("/etc/app/app.env")).unwrap();
    assert!(env.contains(&password) && env.contains(&v.api_key));

    let rendered = [
        "etc/app/app.env",
        "etc/ssl/kiln/web.key",
        "etc/ssl/kiln/web.crt",
    ];
    let mut leaks = Vec::new();
    let mut searched = 0;
    for (where_, bytes) in &outputs {
        if rendered.iter().any(|r| where_.ends_with(r)) {
            continue;
        }
        searched += 1;
        for (name, value) in &secrets {
            if contains(bytes, value) {
                leaks.push(format!("{name} in {where_}"));
            }
        }
    }
    assert!(searched > 20, "searched only {searched} outputs");
    assert!(leaks.is_empty(), "secrets found: {leaks:#?}");
    // The wrapping token file and the role_id file are the host's own (written by "cloud-init"
    // outside the root); the kept Vault token is gone after success.
    assert!(!host.path("/run/kiln/vault-token").exists());
}
