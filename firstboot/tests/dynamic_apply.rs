//! The dynamic step against a real OpenBao (KILN_TEST_BAO) and the project's Consul test
//! server: values in place with the right modes, the generated password shared by the hosts of
//! a group, the certificate, the report in Consul and state.json, the requests each boot makes,
//! TLS with a custom CA, a Vault listener that requires a client certificate, and a rerun that
//! changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use crate::common::*;
use crate::dynamic_support::*;
use consul_test_server::{TestPki, TestServer};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn web_host(name: &str, v: &WebVault, consul: &TestServer) -> Option<Host> {
    let mut host = Host::new(name)?;
    let role_id = host.cred("role_id", &v.role_id);
    let wrapped = host.cred("wrapped", &v.bao.wrapped_secret_id("web", None));
    host.flag("consul-addr", &consul.url())
        .flag("vault-addr", &v.bao.addr)
        .flag("vault-role-id-file", &role_id)
        .flag("wrapped-secret-id-file", &wrapped)
        .flag("dynamic-deadline", "60s");
    Some(host)
}

#[test]
fn web_hosts_get_consul_and_vault_values_and_report_to_consul() {
    let Some(v) = web_vault() else { return };
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"1.4.2");
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    let sha = web_spec(1).write(&key, &bundle);
    let Some(host) = web_host("web-1", &v, &consul) else {
        return;
    };
    let mark = v.bao.audited().len();

    let t = Instant::now();
    let out = host.apply(trust.path(), &bundle, &["--json"]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));

    // The values, in place.
    let password = v.bao.kv_get("db/app").unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 32);
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    let env = std::fs::read_to_string(host.path("/etc/app/app.env")).unwrap();
    assert_eq!(
        env,
        format!(
            "VERSION=1.4.2\nLOG=info\nDB_PASSWORD={password}\nAPI_KEY={}\n",
            v.api_key
        )
    );
    assert_eq!(mode(&host.path("/etc/app/app.env")), 0o600);
    let crt = std::fs::read_to_string(host.path("/etc/ssl/kiln/web.crt")).unwrap();
    assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"), "{crt}");
    assert_eq!(
        crt.matches("BEGIN CERTIFICATE").count(),
        2,
        "certificate and chain"
    );
    assert_eq!(mode(&host.path("/etc/ssl/kiln/web.crt")), 0o644);
    let key_pem = std::fs::read_to_string(host.path("/etc/ssl/kiln/web.key")).unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    assert_eq!(mode(&host.path("/etc/ssl/kiln/web.key")), 0o600);
    // The certificate is this host's (openssl, when the machine has it).
    if let Ok(o) = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-ext", "subjectAltName"])
        .stdin(std::fs::File::open(host.path("/etc/ssl/kiln/web.crt")).unwrap())
        .output()
    {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("web-1.web.example.internal"), "{text}");
        assert!(
            text.contains("www.example.internal") && text.contains("10.0.0.5"),
            "{text}"
        );
    }
    // The token is revoked and not kept.
    assert!(!host.path("/run/kiln/vault-token").exists());

    // state.json and the report.
    let state = host.state();
    assert_eq!(state["result"], "success");
    assert_eq!(state["hostname"], "web-1");
    let d = &state["dynamic"];
    assert_eq!(d["templates"], 3);
    assert_eq!(d["changed"], 3);
    assert_eq!(d["report"], "consul kiln/nodes/web/web-1");
    let steps: Vec<&str> = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"dynamic"), "{steps:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&consul.get("kiln/nodes/web/web-1").unwrap().value).unwrap();
    assert_eq!(report["result"], "success");
    assert_eq!(report["hostgroup"], "web");
    assert_eq!(report["hostname"], "web-1");
    assert_eq!(report["bundle_sha256"], sha.as_str());
    assert_eq!(report["version"], 1);
    assert!(report["steps"].as_array().unwrap().len() >= 10);
    assert!(report["error"].is_null());

    // Requests: one Consul read per prefix and the report (cas=0: created); Vault as the
    // audit log saw them, which must be what kiln-firstboot counted.
    let kv_reads: Vec<_> = consul
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/kv/kiln/apps/"))
        .collect();
    assert_eq!(kv_reads.len(), 1);
    assert_eq!(kv_reads[0].query, "recurse");
    assert_eq!(consul.requests().len(), 2);
    assert_eq!(d["consul_requests"], 2);
    let vault_reqs = v.bao.audited_since(mark);
    assert_eq!(
        vault_reqs,
        [
            "update sys/wrapping/lookup",
            "update sys/wrapping/unwrap",
            "update auth/approle/login",
            "read secret/data/db/app",
            "create secret/data/db/app",
            "read secret/data/web/app",
            "update pki/issue/web",
            "update auth/token/revoke-self",
        ]
    );
    assert_eq!(d["vault_requests"], vault_reqs.len());
    eprintln!(
        "MEASURE first web host: consul {} request(s) ({} prefix read + report), vault {} request(s), apply {:.3}s, dynamic step {:.3}s",
        d["consul_requests"],
        kv_reads.len(),
        d["vault_requests"],
        took.as_secs_f64(),
        state["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "dynamic")
            .unwrap()["seconds"]
            .as_f64()
            .unwrap()
    );

    // A second host of the group reads the same password (it does not generate another).
    let Some(host2) = web_host("web-2", &v, &consul) else {
        return;
    };
    let before = v.bao.audited().len();
    let out = host2.apply(trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let env2 = std::fs::read_to_string(host2.path("/etc/app/app.env")).unwrap();
    assert!(env2.contains(&format!("DB_PASSWORD={password}\n")));
    assert_ne!(
        std::fs::read(host2.path("/etc/ssl/kiln/web.key")).unwrap(),
        key_pem.as_bytes(),
        "each host has its own key"
    );
    let second: Vec<String> = v.bao.audited_since(before);
    assert_eq!(second.len(), 7, "{second:?}");
    assert!(
        !second.iter().any(|r| r.starts_with("create")),
        "{second:?}"
    );
    eprintln!(
        "MEASURE next web hosts: vault {} request(s) (lookup, unwrap, login, 2 KV reads, 1 certificate, revoke)",
        second.len()
    );
    assert!(consul.get("kiln/nodes/web/web-2").is_some());

    // Running it again changes nothing and asks nobody.
    let n = consul.requests().len();
    let audited = v.bao.audited().len();
    let again = host.apply(trust.path(), &bundle, &[]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stderr(&again).contains("already applied"),
        "{}",
        stderr(&again)
    );
    assert_eq!(consul.requests().len(), n);
    assert_eq!(v.bao.audited().len(), audited);
    assert_eq!(
        std::fs::read_to_string(host.path("/etc/app/app.env")).unwrap(),
        env
    );
}

#[test]
fn vault_over_https_with_a_custom_ca() {
    let Some(bao) = Bao::start_with(true) else {
        return;
    };
    assert!(bao.addr.starts_with("https://"));
    let role_id = bao.approle("web", WEB_POLICY);
    bao.kv_put("web/app", serde_json::json!({"api_key": "k-0123456789"}));
    bao.pki("web", "example.internal");
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"2.0");
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    web_spec(1).write(&key, &bundle);
    let ca = bao.dir.path().join("vault-ca.pem");

    let Some(mut host) = Host::new("web-9") else {
        return;
    };
    let role = host.cred("role_id", &role_id);
    let wrapped = host.cred("wrapped", &bao.wrapped_secret_id("web", None));
    host.flag("consul-addr", &consul.url())
        .flag("vault-addr", &bao.addr)
        .flag("vault-role-id-file", &role)
        .flag("wrapped-secret-id-file", &wrapped)
        .flag("dynamic-deadline", "5s");
    // Without the CA: the system's roots do not know it; nothing is written, exit 20, and
    // at once (a certificate refused is final, not retried until the deadline).
    let out = host.apply(trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(20), "{}", out_text(&out));
    assert!(
        stderr(&out).contains("vault refused: sys/wrapping/lookup: TLS:")
            && stderr(&out).contains("UnknownIssuer")
            && !stderr(&out).contains("retrying"),
        "{}",
        stderr(&out)
    );
    // With it (given in the config file this time, as cloud-init would write it).
    std::fs::create_dir_all(host.path("/etc/kiln")).unwrap();
    std::fs::copy(&ca, host.path("/etc/kiln/vault-ca.pem")).unwrap();
    std::fs::write(
        host.path("/etc/kiln/firstboot.conf"),
        "# written by cloud-init\nvault-ca = /etc/kiln/vault-ca.pem\n",
    )
    .unwrap();
    let out = host.apply(trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read_to_string(host.path("/etc/app/app.env"))
        .unwrap()
        .contains("API_KEY=k-0123456789"));
}

#[test]
fn a_generated_field_is_added_to_an_existing_secret_keeping_its_other_fields() {
    let Some(v) = web_vault() else { return };
    v.bao.kv_put("db/app", serde_json::json!({"user": "app"}));
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"1");
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    web_spec(1).write(&key, &bundle);
    let Some(host) = web_host("web-3", &v, &consul) else {
        return;
    };
    let out = host.apply(trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    let data = v.bao.kv_get("db/app").unwrap();
    assert_eq!(data["user"], "app");
    let password = data["password"].as_str().unwrap();
    assert_eq!(password.len(), 32);
    let (_, meta) = v.bao.call("GET", "secret/data/db/app", None, Some("root"));
    assert_eq!(
        meta["data"]["metadata"]["version"], 2,
        "one write, with check-and-set 1"
    );
    assert!(std::fs::read_to_string(host.path("/etc/app/app.env"))
        .unwrap()
        .contains(&format!("DB_PASSWORD={password}\n")));
}

/// A Vault listener with `tls_require_and_verify_client_cert`: without --vault-client-cert the
/// TLS handshake is refused, at once (exit 20, nothing written, the wrapped secret_id not
/// spent); with the CA's client certificate the same boot succeeds.
#[test]
fn vault_requiring_a_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path()).expect("the test PKI (needs openssl)");
    let Some(bao) = Bao::start_with_client_tls(&pki.server_cert, &pki.server_key, &pki.ca) else {
        return;
    };
    let mtls = bao.mtls_addr.clone().unwrap();
    let role_id = bao.approle("web", WEB_POLICY);
    bao.kv_put(
        "web/app",
        serde_json::json!({"api_key": "k-mtls-0123456789"}),
    );
    bao.pki("web", "example.internal");
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"2.0");
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    web_spec(1).write(&key, &bundle);

    let Some(mut host) = Host::new("web-8") else {
        return;
    };
    let role = host.cred("role_id", &role_id);
    let wrapped = host.cred("wrapped", &bao.wrapped_secret_id("web", None));
    host.flag("consul-addr", &consul.url())
        .flag("vault-addr", &mtls)
        .flag("vault-ca", pki.ca.to_str().unwrap())
        .flag("vault-role-id-file", &role)
        .flag("wrapped-secret-id-file", &wrapped)
        .flag("dynamic-deadline", "60s");
    let t = Instant::now();
    let out = host.apply(trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(20), "{}", out_text(&out));
    assert!(t.elapsed().as_secs() < 15, "retried? {:?}", t.elapsed());
    assert!(
        stderr(&out).contains("vault refused: sys/wrapping/lookup: TLS:"),
        "{}",
        stderr(&out)
    );
    assert!(!host.path("/etc/app/app.env").exists());
    assert!(std::path::Path::new(&wrapped).exists());

    let out = host.apply(
        trust.path(),
        &bundle,
        &[
            "--vault-client-cert",
            pki.client_cert.to_str().unwrap(),
            "--vault-client-key",
            pki.client_key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(std::fs::read_to_string(host.path("/etc/app/app.env"))
        .unwrap()
        .contains("API_KEY=k-mtls-0123456789"));
}
