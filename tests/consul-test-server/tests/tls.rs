//! HTTPS with `verify_incoming`, as a Consul agent with `tls.defaults.verify_incoming = true`
//! serves it: a client with a certificate the CA signed is served; one without a certificate,
//! or with a certificate of another CA, fails the TLS handshake and never sends a request.

use crate::common::*;

use std::time::Duration;

use consul_test_server::TestPki;

fn client(
    pki: &TestPki,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(&pki.ca).unwrap();
    let mut b = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap());
    if let Some((c, k)) = cert {
        let mut pem = std::fs::read(c).unwrap();
        pem.extend(std::fs::read(k).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).expect("the test PKI (needs openssl)");
    (dir, pki)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[test]
fn verify_incoming_refuses_clients_without_a_certificate_of_the_ca() {
    let (_dir, pki) = pki();
    let c = TestServer::start_with(Config::default().with_tls(pki.server_tls(true))).unwrap();
    c.put("kiln/apps/web/version", b"7");
    let url = c.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let read = format!("{url}/v1/kv/kiln/apps/web/?recurse");

    // With the CA's client certificate: served as over http.
    let ok = client(&pki, Some((&pki.client_cert, &pki.client_key)));
    let r = ok.get(&read).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-consul-index"));
    assert_eq!(c.count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"), 1);
    assert!(c.tls_handshake_errors().is_empty());

    // Without a certificate: the handshake fails, no request reaches the API.
    let e = client(&pki, None).get(&read).send().unwrap_err();
    let errors = c.tls_handshake_errors();
    assert_eq!(errors.len(), 1, "{errors:?} ({})", chain(&e));
    assert!(
        errors[0].to_lowercase().contains("certificate"),
        "{errors:?}"
    );
    // Another CA's certificate: refused the same way.
    let e2 = client(
        &pki,
        Some((&pki.foreign_client_cert, &pki.foreign_client_key)),
    )
    .get(&read)
    .send()
    .unwrap_err();
    let errors = c.tls_handshake_errors();
    assert_eq!(errors.len(), 2, "{errors:?} ({})", chain(&e2));
    assert_eq!(c.count_requests(None, "/"), 1, "{:?}", c.requests());

    // Plain http to the https port is not answered as HTTP.
    let plain = reqwest::blocking::Client::new();
    let r = plain
        .get(format!("http://{}/v1/kv/kiln/apps/web/?recurse", c.addr()))
        .send();
    assert!(r.map(|r| r.status() != 200).unwrap_or(true));
    assert_eq!(c.count_requests(None, "/"), 1);
}

#[test]
fn without_verify_incoming_any_client_is_served() {
    let (_dir, pki) = pki();
    let c = TestServer::start_with(Config::default().with_tls(pki.server_tls(false))).unwrap();
    let r = client(&pki, None)
        .get(format!("{}/v1/status/leader", c.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The server's certificate is the CA's: a client trusting other roots refuses it.
    let other = std::fs::read(pki.dir.join("other-ca.pem")).unwrap();
    let strict = reqwest::blocking::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&other).unwrap())
        .build()
        .unwrap();
    assert!(strict
        .get(format!("{}/v1/status/leader", c.url()))
        .send()
        .is_err());
}

#[test]
fn verify_incoming_without_a_ca_is_a_configuration_error() {
    let (_dir, pki) = pki();
    let mut tls = pki.server_tls(true);
    tls.ca_pem = None;
    let e = TestServer::start_with(Config::default().with_tls(tls))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("verify_incoming needs a CA"), "{e}");
}

/// The process form: `--tls-cert --tls-key --tls-ca --verify-incoming`.
#[test]
fn the_binary_serves_https_with_verify_incoming() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (_dir, pki) = pki();
    let bin = env!("CARGO_BIN_EXE_consul-test-server");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_key)
        .arg("--tls-ca")
        .arg(&pki.ca)
        .arg("--verify-incoming")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let url = format!("https://{addr}/v1/status/leader");
    let with = client(&pki, Some((&pki.client_cert, &pki.client_key)))
        .get(&url)
        .send();
    let without = client(&pki, None).get(&url).send();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(with.unwrap().status(), 200);
    assert!(without.is_err());
    // verify_incoming without certificates is a usage error.
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--verify-incoming"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-cert"));
}
