//! Consul faults during the dynamic step, against the project's Consul test server: down at
//! start then up before the deadline (succeeds), down past it (exit 20), slow answers, a 403,
//! garbage JSON, a missing key, a key-list policy without `list`, an agent that verifies
//! client certificates, a 500 `invalid key name` (final, not retried), and an address from
//! `CONSUL_HTTP_ADDR` without a scheme. After each failure: no rendered file, half-written or
//! whole; state.json (and the Consul report, when Consul answers) says failed; a rerun once
//! the fault is gone succeeds.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::*;
use crate::dynamic_support::*;
use consul_test_server::{AclConfig, Config, DefaultPolicy, Fault, Policy, TestPki, TestServer};

struct Case {
    consul: TestServer,
    trust: tempfile::TempDir,
    _work: tempfile::TempDir,
    bundle: std::path::PathBuf,
    spec: common::Spec,
    host: Host,
}

fn case(consul: TestServer, deadline: &str) -> Option<Case> {
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    let mut spec = consul_only_spec();
    spec.write(&key, &bundle);
    let mut host = Host::new("web-1")?;
    host.flag("consul-addr", &consul.url())
        .flag("dynamic-deadline", deadline);
    Some(Case {
        consul,
        trust,
        _work: work,
        bundle,
        spec,
        host,
    })
}

impl Case {
    fn apply(&self) -> std::process::Output {
        self.host.apply(self.trust.path(), &self.bundle, &[])
    }

    /// The failure left nothing of the templates, and said so in state.json.
    fn failed(&self, out: &std::process::Output, says: &str) {
        assert_eq!(out.status.code(), Some(20), "{}", out_text(out));
        assert!(
            stderr(out).contains(says),
            "{says:?} not in:\n{}",
            stderr(out)
        );
        assert_no_rendered_file(self.host.root.path(), &self.spec);
        // The static part is in place: the journal lets the rerun continue.
        assert_eq!(
            std::fs::read(self.host.path("/etc/app/static.conf")).unwrap(),
            b"static\n"
        );
        let state = self.host.state();
        assert_eq!(state["result"], "failure");
        assert_eq!(state["exit_code"], 20);
        assert!(
            state["error"].as_str().unwrap().contains(says),
            "{}",
            state["error"]
        );
        // Every step that ran is listed, the failed one last, in the state file, the timings
        // line and (when Consul took it) the report.
        let names = |v: &serde_json::Value| -> Vec<String> {
            v["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        };
        let ran = [
            "fetch",
            "verify",
            "stage",
            "groups",
            "users",
            "packages",
            "directories",
            "files",
            "symlinks",
            "absent",
            "services",
            "commands",
            "dynamic",
        ];
        assert_eq!(names(&state), ran, "{state}");
        let last = state["steps"].as_array().unwrap().last().unwrap();
        assert!(
            last["summary"].as_str().unwrap().starts_with("failed: "),
            "{last}"
        );
        let timings = stderr(out)
            .lines()
            .find(|l| l.contains("timings: "))
            .unwrap_or_default()
            .to_string();
        assert!(
            timings.contains(", dynamic ") && timings.contains("(exit 20)"),
            "{timings}"
        );
        if let Some(report) = self.report() {
            assert_eq!(report["result"], "failure", "{report}");
            assert_eq!(names(&report), ran, "{report}");
        }
    }

    fn succeeds(&self) {
        let out = self.apply();
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        assert_eq!(
            std::fs::read_to_string(self.host.path("/etc/app/version")).unwrap(),
            "7.1\n"
        );
        assert_eq!(self.host.state()["result"], "success");
        let report = self.consul.get("kiln/nodes/web/web-1").expect("a report");
        let report: serde_json::Value = serde_json::from_slice(&report.value).unwrap();
        assert_eq!(report["result"], "success");
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.consul
            .get("kiln/nodes/web/web-1")
            .map(|e| serde_json::from_slice(&e.value).unwrap())
    }
}

fn seeded() -> TestServer {
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"7.1");
    consul.put("kiln/apps/web/env/A", b"1");
    consul
}

#[test]
fn consul_down_at_start_and_up_before_the_deadline_succeeds() {
    let Some(c) = case(seeded(), "30s") else {
        return;
    };
    c.consul.down_for(Duration::from_secs(2));
    let t = Instant::now();
    let out = c.apply();
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(t.elapsed() >= Duration::from_secs(1));
    assert!(stderr(&out).contains("retrying in"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(c.host.path("/etc/app/tree.conf")).unwrap(),
        "A=1\n"
    );
}

#[test]
fn consul_down_past_the_deadline_fails_with_20_and_a_rerun_succeeds() {
    let Some(c) = case(seeded(), "2s") else {
        return;
    };
    c.consul.stop_listening();
    let t = Instant::now();
    let out = c.apply();
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    c.failed(&out, "consul unreachable until the deadline");
    // Consul was down for the report too: state.json says so.
    let state = c.host.state();
    assert!(
        state["dynamic"]["report"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{state}"
    );
    c.consul.resume_listening().unwrap();
    c.succeeds();
}

#[test]
fn slow_consul_answers_are_waited_for_within_the_deadline_and_not_past_it() {
    let Some(c) = case(seeded(), "30s") else {
        return;
    };
    c.consul.add_fault(
        Fault::delay_ms(1500)
            .path_prefix("/v1/kv/kiln/apps/")
            .times(1),
    );
    let out = c.apply();
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));

    let Some(c) = case(seeded(), "2s") else {
        return;
    };
    c.consul
        .add_fault(Fault::delay_ms(20_000).path_prefix("/v1/kv/kiln/apps/"));
    let t = Instant::now();
    let out = c.apply();
    // Nothing waits for ever: the request is cut at the deadline.
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    c.failed(&out, "consul unreachable until the deadline");
    c.consul.clear_faults();
    c.succeeds();
}

#[test]
fn a_403_is_a_hard_error_that_names_the_prefix() {
    let consul = TestServer::start_with(Config::default().with_acl(
        AclConfig::new("root", DefaultPolicy::Deny).with_token(
            "boot-token-9a8b7c",
            &[("kiln/apps/", Policy::Read), ("kiln/nodes/", Policy::Write)],
        ),
    ))
    .unwrap();
    consul.put("kiln/apps/web/version", b"7.1");
    let Some(mut c) = case(consul, "30s") else {
        return;
    };
    let token = c.host.cred("consul-token", "not-the-token\n");
    c.host.flag("consul-token-file", &token);
    let t = Instant::now();
    let out = c.apply();
    // Not retried: a refusal does not wait for the deadline.
    assert!(t.elapsed() < Duration::from_secs(10));
    c.failed(&out, "reading prefix kiln/apps/web/: HTTP 403");
    assert!(!out_text(&out).contains("not-the-token"));
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );
    // The token is only ever sent in a header, never in the URL.
    assert!(c
        .consul
        .requests()
        .iter()
        .all(|r| !r.query.contains("token")));
    std::fs::write(&token, "boot-token-9a8b7c\n").unwrap();
    c.succeeds();
}

#[test]
fn garbage_json_is_retried_and_fails_only_past_the_deadline() {
    let Some(c) = case(seeded(), "30s") else {
        return;
    };
    c.consul.add_fault(Fault::garbage().method("GET").times(2));
    let out = c.apply();
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert!(
        stderr(&out).contains("not Consul's KV JSON"),
        "{}",
        stderr(&out)
    );

    let Some(c) = case(seeded(), "2s") else {
        return;
    };
    c.consul.add_fault(
        Fault::garbage()
            .method("GET")
            .path_prefix("/v1/kv/kiln/apps/"),
    );
    let out = c.apply();
    c.failed(&out, "not Consul's KV JSON");
    // Consul itself answers: the report says the apply failed, and why.
    let report = c.report().expect("a report");
    assert_eq!(report["result"], "failure");
    assert_eq!(report["exit_code"], 20);
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("not Consul's KV JSON"));
    c.consul.clear_faults();
    c.succeeds();
}

#[test]
fn a_missing_key_without_default_fails_with_its_name() {
    let consul = TestServer::start();
    let Some(c) = case(consul, "30s") else {
        return;
    };
    let out = c.apply();
    c.failed(&out, "kiln/apps/web/version does not exist");
    let report = c.report().expect("a report");
    assert_eq!(report["result"], "failure");
    assert!(report["error"]
        .as_str()
        .unwrap()
        .contains("kiln/apps/web/version"));
    // A 404 on the prefix is "nothing there", not an error, and it was asked once.
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );
    c.consul.put("kiln/apps/web/version", b"7.1");
    c.succeeds();
    // The report replaced the failed one (check-and-set on its index).
    assert_eq!(c.report().unwrap()["result"], "success");
}

/// The web hosts' token as docs/dynamic.md ("ACL policies") gives it: `read` (or, for
/// `acl.enable_key_list_policy`, `list`) on kiln/apps/web/, `write` on kiln/nodes/web/.
fn boot_acl(list: bool) -> AclConfig {
    let read = if list { Policy::List } else { Policy::Read };
    AclConfig::new("root", DefaultPolicy::Deny)
        .with_token(
            "boot-token-9a8b7c",
            &[("kiln/apps/web/", read), ("kiln/nodes/web/", Policy::Write)],
        )
        .with_key_list_policy(true)
}

#[test]
fn with_enable_key_list_policy_a_token_without_list_is_refused_naming_the_prefix() {
    let consul = TestServer::start_with(Config::default().with_acl(boot_acl(false))).unwrap();
    consul.put("kiln/apps/web/version", b"7.1");
    consul.put("kiln/apps/web/env/A", b"1");
    let Some(mut c) = case(consul, "60s") else {
        return;
    };
    let token = c.host.cred("consul-token", "boot-token-9a8b7c\n");
    c.host.flag("consul-token-file", &token);
    let t = Instant::now();
    let out = c.apply();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    c.failed(&out, "reading prefix kiln/apps/web/: HTTP 403");
    assert!(
        stderr(&out).contains("lacks permission 'key:list' on \"kiln/apps/web/\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );
    // The report could still be written (write on kiln/nodes/), saying why.
    let report = c.report().expect("a report");
    assert!(report["error"].as_str().unwrap().contains("key:list"));
    // With `list` on the prefix, the same boot succeeds.
    c.consul.set_acl(Some(boot_acl(true)));
    c.succeeds();
}

/// A Consul agent with `verify_incoming`: without a client certificate of its CA the TLS
/// handshake fails, which no retry changes (exit 20 at once, no request reached the API);
/// with --consul-client-cert/--consul-client-key (or the same keys in firstboot.conf) the
/// boot succeeds.
#[test]
fn an_agent_with_verify_incoming_needs_the_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path()).expect("the test PKI (needs openssl)");
    let consul = TestServer::start_with(Config::default().with_tls(pki.server_tls(true))).unwrap();
    consul.put("kiln/apps/web/version", b"7.1");
    consul.put("kiln/apps/web/env/A", b"1");
    let Some(mut c) = case(consul, "60s") else {
        return;
    };
    assert!(c.consul.url().starts_with("https://"));
    c.host.flag("consul-ca", pki.ca.to_str().unwrap());
    let t = Instant::now();
    let out = c.apply();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "retried? {:?}",
        t.elapsed()
    );
    c.failed(&out, "consul refused: reading prefix kiln/apps/web/: TLS:");
    assert!(
        stderr(&out).contains("CertificateRequired"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("retrying"), "{}", stderr(&out));
    assert_eq!(c.consul.count_requests(None, "/"), 0);
    assert!(!c.consul.tls_handshake_errors().is_empty());

    // A certificate of another CA: refused the same way.
    let mut other = c.host.args.clone();
    other.extend(
        [
            "--consul-client-cert",
            pki.foreign_client_cert.to_str().unwrap(),
            "--consul-client-key",
            pki.foreign_client_key.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = other.iter().map(String::as_str).collect();
    let out = common::apply(c.host.root.path(), c.trust.path(), &c.bundle, &args);
    c.failed(&out, "TLS:");
    assert_eq!(c.consul.count_requests(None, "/"), 0);

    // A certificate without its key is a usage error, before anything is read.
    let out = c.host.apply(
        c.trust.path(),
        &c.bundle,
        &["--consul-client-cert", pki.client_cert.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out_text(&out));
    assert!(
        stderr(&out).contains("consul-client-key"),
        "{}",
        stderr(&out)
    );

    // The CA's client certificate, from firstboot.conf (paths inside the root).
    let kiln_etc = c.host.path("/etc/kiln");
    std::fs::create_dir_all(&kiln_etc).unwrap();
    std::fs::copy(&pki.client_cert, kiln_etc.join("consul-client.pem")).unwrap();
    std::fs::copy(&pki.client_key, kiln_etc.join("consul-client.key")).unwrap();
    std::fs::write(
        kiln_etc.join("firstboot.conf"),
        "consul-client-cert = /etc/kiln/consul-client.pem\nconsul-client-key = /etc/kiln/consul-client.key\n",
    )
    .unwrap();
    c.succeeds();
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );
}

/// Consul 1.21.5 answers 500 `invalid key name` for key names it will never accept: that is
/// final (exit 20 at once, one request), not a 5xx to retry until the deadline.
#[test]
fn a_500_invalid_key_name_fails_at_once() {
    let Some(c) = case(seeded(), "60s") else {
        return;
    };
    c.consul.add_fault(
        Fault::status(500).path_prefix("/v1/kv/kiln/apps/").body(
            "invalid key name, keys should respect the \"^[a-zA-Z0-9,_./\\\\-?&=]+$\" format",
        ),
    );
    let t = Instant::now();
    let out = c.apply();
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "retried until the deadline? {took:?}"
    );
    c.failed(
        &out,
        "reading prefix kiln/apps/web/: HTTP 500 (invalid key name",
    );
    assert!(
        stderr(&out).contains("no retry can change"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );
    // Any other 500 is still retried.
    c.consul.clear_faults();
    c.consul
        .add_fault(Fault::status(500).path_prefix("/v1/kv/kiln/apps/").times(1));
    c.succeeds();
}

/// No --consul-addr and no consul-addr in the file: `CONSUL_HTTP_ADDR=127.0.0.1:PORT`, without
/// a scheme, is http as in Consul's own tools, and https with `CONSUL_HTTP_SSL=true`.
#[test]
fn consul_http_addr_without_a_scheme() {
    let consul = seeded();
    let addr = consul.addr().to_string();
    let Some(mut c) = case(consul, "30s") else {
        return;
    };
    c.host.args.clear();
    c.host.flag("dynamic-deadline", "30s");
    c.host.env.push(("CONSUL_HTTP_ADDR".into(), addr));
    c.succeeds();
    assert_eq!(
        c.consul
            .count_requests(Some("GET"), "/v1/kv/kiln/apps/web/"),
        1
    );

    // An https agent: CONSUL_HTTP_SSL=true makes host:port https.
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path()).expect("the test PKI (needs openssl)");
    let tls = TestServer::start_with(Config::default().with_tls(pki.server_tls(false))).unwrap();
    tls.put("kiln/apps/web/version", b"7.1");
    tls.put("kiln/apps/web/env/A", b"1");
    let Some(mut c) = case(tls, "30s") else {
        return;
    };
    let ca = pki.ca.to_str().unwrap();
    c.host
        .env
        .push(("CONSUL_HTTP_ADDR".into(), c.consul.addr().to_string()));
    // Without CONSUL_HTTP_SSL it speaks http to the https port: that never works.
    c.host.args.clear();
    c.host.flag("dynamic-deadline", "2s").flag("consul-ca", ca);
    let out = c.apply();
    c.failed(&out, "consul unreachable until the deadline");
    assert_eq!(c.consul.count_requests(None, "/"), 0);
    c.host.args.clear();
    c.host.flag("dynamic-deadline", "30s").flag("consul-ca", ca);
    c.host.env.push(("CONSUL_HTTP_SSL".into(), "true".into()));
    c.succeeds();
}

/// The report after the apply has a short budget of its own (15 s at most), not a second
/// dynamic deadline: with a 60 s deadline and every report write answered 503, the apply still
/// succeeds and the writes stop after what 15 s of backoff allows. Retries back off from 0.2 s,
/// doubling up to 5 s, each pause between half and all of it: 15 s hold at most 10 attempts,
/// where 60 s would take at least 15.
#[test]
fn a_report_consul_refuses_is_retried_for_a_short_budget_not_a_second_deadline() {
    let Some(c) = case(seeded(), "60s") else {
        return;
    };
    c.consul.add_fault(
        Fault::status(503)
            .method("PUT")
            .path_prefix("/v1/kv/kiln/nodes/"),
    );
    let out = c.apply();
    assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
    assert_eq!(
        std::fs::read_to_string(c.host.path("/etc/app/version")).unwrap(),
        "7.1\n"
    );
    let writes = c.consul.count_requests(Some("PUT"), "/v1/kv/kiln/nodes/");
    assert!((2..=10).contains(&writes), "{writes} report writes");
    assert!(
        stderr(&out).contains(&format!(
            "consul kiln/nodes/web/web-1: consul unreachable until the deadline: writing kiln/nodes/web/web-1: {writes} attempt(s) before the deadline, last: HTTP 503"
        )),
        "{}",
        stderr(&out)
    );
    let state = c.host.state();
    assert_eq!(state["result"], "success");
    assert!(
        state["dynamic"]["report"]
            .as_str()
            .unwrap()
            .starts_with("failed"),
        "{state}"
    );
    assert!(c.report().is_none());
}
