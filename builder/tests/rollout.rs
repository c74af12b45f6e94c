//! `kiln rollout status|wait` against the project's Consul test server: N successes -> 0, a
//! failure -> 3 at once, the timeout -> 4, Consul down for a while -> retried, and blocking
//! queries (the request log shows one request per change, each after the first carrying the
//! index of the previous answer), never a busy poll; an index that goes backwards restarts
//! from 0. What no retry can change ends at once with 1: a 403 (a key-list policy without
//! `list`), a 500 `invalid key name`, a TLS certificate refused. Client certificates, and
//! `CONSUL_HTTP_ADDR` without a scheme as Consul's tools read it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use consul_test_server::{AclConfig, Config, DefaultPolicy, Fault, Policy, TestPki, TestServer};

/// A report as kiln-firstboot writes it.
fn report(host: &str, version: u64, ok: bool) -> Vec<u8> {
    serde_json::json!({
        "hostgroup": "web", "hostname": host, "version": version,
        "bundle_sha256": "ab".repeat(32),
        "result": if ok { "success" } else { "failure" },
        "exit_code": if ok { 0 } else { 20 },
        "started_at": "2026-11-27T10:00:00Z", "finished_at": "2026-11-27T10:01:00Z",
        "steps": [{"name": "fetch", "seconds": 0.2}, {"name": "dynamic", "seconds": 1.5}],
        "error": if ok { serde_json::Value::Null } else { "dynamic: vault refused: permission denied".into() },
        "firstboot": "0.1.0"
    })
    .to_string()
    .into_bytes()
}

fn wait_cmd(consul: &TestServer, args: &[&str]) -> Child {
    let mut all = vec!["wait", "web", "--consul-addr"];
    let url = consul.url();
    all.push(&url);
    all.extend_from_slice(args);
    rollout(&all, &[])
}

/// `kiln rollout ARGS` with these environment variables (and none of Consul's from the
/// test's own environment).
fn rollout(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(KILN);
    c.arg("rollout").args(args);
    for v in [
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "CONSUL_CACERT",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
    ] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (i32, String, String, Duration) {
    let t = Instant::now();
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t.elapsed(),
    )
}

/// GETs of the reports' prefix, as (query) strings.
fn reads(consul: &TestServer) -> Vec<String> {
    consul
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v1/kv/kiln/nodes/web/"))
        .map(|r| r.query)
        .collect()
}

#[test]
fn n_successes_end_the_wait_with_0_using_blocking_queries() {
    let consul = TestServer::start();
    consul.put("kiln/nodes/web/old-1", &report("old-1", 6, true));
    // An old version's failure does not stop a rollout of version 7.
    consul.put("kiln/nodes/web/old-2", &report("old-2", 6, false));
    let t = Instant::now();
    let child = wait_cmd(
        &consul,
        &[
            "--version",
            "7",
            "--count",
            "3",
            "--timeout",
            "60s",
            "--json",
        ],
    );
    for i in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        consul.put(
            &format!("kiln/nodes/web/web-{i}"),
            &report(&format!("web-{i}"), 7, true),
        );
    }
    let (code, out, err, _) = finish(child);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        took >= Duration::from_millis(4400) && took < Duration::from_secs(20),
        "{took:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "done");
    assert_eq!(v["succeeded"], 3);
    // One read at once, then one blocking read per change: about 4 in 4.5 s, not a poll.
    let q = reads(&consul);
    assert!(q.len() <= 6, "busy polling? {} reads: {q:?}", q.len());
    assert_eq!(q[0], "recurse");
    assert!(
        q[1..]
            .iter()
            .all(|q| q.contains("index=") && q.contains("wait=")),
        "{q:?}"
    );
    assert_eq!(v["requests"].as_u64().unwrap() as usize, q.len());
}

#[test]
fn a_quiet_hostgroup_costs_one_request_per_wait() {
    let consul = TestServer::start();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    let child = wait_cmd(
        &consul,
        &[
            "--version",
            "7",
            "--count",
            "2",
            "--timeout",
            "5s",
            "--wait",
            "2s",
        ],
    );
    let (code, _, err, took) = finish(child);
    assert_eq!(code, 4, "{err}");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(12),
        "{took:?}"
    );
    assert!(
        err.contains("timed out after 5s with 1 of 2 node(s) succeeded"),
        "{err}"
    );
    // 5 s with --wait 2s: the first read, then blocking reads of 2 s (+ jitter) each.
    let q = reads(&consul);
    assert!((2..=5).contains(&q.len()), "{q:?}");
}

#[test]
fn a_failure_ends_the_wait_at_once_with_3() {
    let consul = TestServer::start();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    let t = Instant::now();
    let child = wait_cmd(
        &consul,
        &["--version", "7", "--count", "5", "--timeout", "120s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    consul.put("kiln/nodes/web/web-2", &report("web-2", 7, false));
    let (code, _, err, _) = finish(child);
    assert_eq!(code, 3, "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.contains("1 node(s) reported failure")
            && err.contains("web-2 (version 7): exit 20: dynamic: vault refused"),
        "{err}"
    );
    // A refusal before the bundle's version was read (version 0) fails the wait too.
    consul.delete("kiln/nodes/web/web-2");
    consul.put("kiln/nodes/web/web-3", &report("web-3", 0, false));
    let (code, _, err, _) = finish(wait_cmd(
        &consul,
        &["--version", "7", "--count", "5", "--timeout", "30s"],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("web-3 (version unknown)"), "{err}");
}

#[test]
fn consul_down_for_a_while_is_retried() {
    let consul = TestServer::start();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    consul.down_for(Duration::from_secs(2));
    let (code, _, err, took) = finish(wait_cmd(
        &consul,
        &["--version", "7", "--count", "1", "--timeout", "30s"],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(err.contains("reading Consul:"), "{err}");
    // Down past the timeout: 4, saying why.
    consul.stop_listening();
    let (code, _, err, _) = finish(wait_cmd(
        &consul,
        &["--version", "7", "--count", "1", "--timeout", "2s"],
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("Consul could not be read"), "{err}");
}

#[test]
fn status_shows_nodes_by_version_and_result() {
    let consul = TestServer::start();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    consul.put("kiln/nodes/web/web-2", &report("web-2", 7, false));
    consul.put("kiln/nodes/web/web-3", &report("web-3", 6, true));
    consul.put("kiln/nodes/webby/x", &report("x", 7, true));
    let status = |json: bool| {
        let mut args = vec!["rollout", "status", "web", "--consul-addr"];
        let url = consul.url();
        args.push(&url);
        if json {
            args.push("--json");
        }
        let o = kiln(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = status(false);
    assert!(text.contains("hostgroup web: 3 node(s)"), "{text}");
    assert!(text.contains("version 7: 1 success, 1 failure"), "{text}");
    assert!(text.contains("version 6: 1 success, 0 failure"), "{text}");
    assert!(text.contains("dynamic: vault refused"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(v["by_version"]["7"]["failure"], 1);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(v["nodes"][0]["hostname"], "web-1");
    // No reports at all: an empty hostgroup, not an error.
    let o = kiln(&[
        "rollout",
        "status",
        "nobody",
        "--consul-addr",
        &consul.url(),
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 node(s)"));
    // A bad name is a usage error.
    let o = kiln(&["rollout", "status", "../x", "--consul-addr", &consul.url()]);
    assert_eq!(o.status.code(), Some(2));
}

/// Consul's blocking-query rule: when X-Consul-Index goes backwards (here the servers are
/// rebuilt from an older snapshot while the wait blocks), the client starts again from
/// index 0. A client that kept the higher index would sleep through the reports written
/// after the restore (their indexes are below it) until the timeout.
#[test]
fn an_index_that_goes_backwards_restarts_from_0() {
    let consul = TestServer::start();
    let before = consul.snapshot();
    for _ in 0..5 {
        consul.put("kiln/nodes/web/old-1", &report("old-1", 6, true));
        consul.put("kiln/nodes/web/old-1", &report("old-1", 6, false));
    }
    let high = consul.index();
    let t = Instant::now();
    let child = wait_cmd(
        &consul,
        &[
            "--version",
            "7",
            "--count",
            "1",
            "--timeout",
            "40s",
            "--wait",
            "60s",
            "--json",
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    consul.restore(&before);
    assert!(consul.index() < high);
    std::thread::sleep(Duration::from_millis(1000));
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    assert!(consul.index() <= high);
    let (code, out, err, _) = finish(child);
    let took = t.elapsed();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["succeeded"], 1);
    // The read after the restore carried no index (a fresh start), the ones after it the
    // restored, lower index.
    let q = reads(&consul);
    assert_eq!(q.iter().filter(|q| *q == "recurse").count(), 2, "{q:?}");
    let last = q.last().unwrap();
    assert!(last.contains("index="), "{q:?}");
    let idx: u64 = last
        .split('&')
        .find_map(|p| p.strip_prefix("index="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(idx < high, "{q:?}");
}

/// A 403 will not change by waiting: with `acl.enable_key_list_policy`, a token that may read
/// the reports but not list their prefix ends `rollout wait` at once, with 1 and Consul's
/// reason naming the prefix. With `list` on kiln/nodes/ it works.
#[test]
fn a_403_under_a_key_list_policy_ends_the_wait_at_once() {
    // CI's token as docs/dynamic.md ("ACL policies") gives it.
    let acl = |list: bool| {
        let policy = if list { Policy::List } else { Policy::Read };
        AclConfig::new("root", DefaultPolicy::Deny)
            .with_token("ci-token", &[("kiln/nodes/", policy)])
            .with_key_list_policy(true)
    };
    let consul = TestServer::start_with(Config::default().with_acl(acl(false))).unwrap();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ci-token\n").unwrap();
    let args = [
        "--version",
        "7",
        "--count",
        "1",
        "--timeout",
        "60s",
        "--consul-token-file",
        token.to_str().unwrap(),
    ];
    let (code, _, err, took) = finish(wait_cmd(&consul, &args));
    assert_eq!(code, 1, "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        err.contains("GET kiln/nodes/web/: HTTP 403")
            && err.contains("lacks permission 'key:list' on \"kiln/nodes/web/\""),
        "{err}"
    );
    assert_eq!(reads(&consul).len(), 1);
    consul.set_acl(Some(acl(true)));
    let (code, _, err, _) = finish(wait_cmd(&consul, &args));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_500_invalid_key_name_ends_the_wait_at_once() {
    let consul = TestServer::start();
    consul.add_fault(
        Fault::status(500).path_prefix("/v1/kv/kiln/nodes/").body(
            "invalid key name, keys should respect the \"^[a-zA-Z0-9,_./\\\\-?&=]+$\" format",
        ),
    );
    let (code, _, err, took) = finish(wait_cmd(
        &consul,
        &["--version", "7", "--count", "1", "--timeout", "60s"],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        err.contains("HTTP 500: invalid key name") && err.contains("no retry can change"),
        "{err}"
    );
    assert_eq!(reads(&consul).len(), 1);
}

/// An agent with `verify_incoming`: without a client certificate the handshake fails and the
/// wait ends at once (1); with --consul-client-cert/--consul-client-key, or Consul's
/// environment variables with CONSUL_HTTP_ADDR as host:port and CONSUL_HTTP_SSL=true, it works.
#[test]
fn client_certificates_and_consul_http_addr_without_a_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).expect("the test PKI (needs openssl)");
    let consul = TestServer::start_with(Config::default().with_tls(pki.server_tls(true))).unwrap();
    consul.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let wait = ["--version", "7", "--count", "1", "--timeout", "60s"];

    let mut args = wait.to_vec();
    args.extend(["--consul-ca", ca]);
    let (code, _, err, took) = finish(wait_cmd(&consul, &args));
    assert_eq!(code, 1, "{err}");
    assert!(took < Duration::from_secs(10), "retried? {took:?}");
    assert!(
        err.contains("TLS:") && err.contains("CertificateRequired"),
        "{err}"
    );
    assert!(reads(&consul).is_empty());

    args.extend(["--consul-client-cert", cert]);
    let (code, _, err, _) = finish(wait_cmd(&consul, &args));
    assert_eq!(code, 2, "a certificate without its key: {err}");
    args.extend(["--consul-client-key", key]);
    let (code, _, err, _) = finish(wait_cmd(&consul, &args));
    assert_eq!(code, 0, "{err}");
    assert_eq!(reads(&consul).len(), 1);

    // The same through Consul's own environment variables, the address without a scheme.
    let addr = consul.addr().to_string();
    let env = [
        ("CONSUL_HTTP_ADDR", addr.as_str()),
        ("CONSUL_CACERT", ca),
        ("CONSUL_CLIENT_CERT", cert),
        ("CONSUL_CLIENT_KEY", key),
    ];
    let (code, out, err, _) = finish(rollout(&["status", "web"], &env));
    assert_eq!(
        code, 1,
        "host:port is http without CONSUL_HTTP_SSL: {out}{err}"
    );
    assert!(err.contains(&format!("http://{addr}/")), "{err}");
    let mut ssl = env.to_vec();
    ssl.push(("CONSUL_HTTP_SSL", "true"));
    let (code, out, err, _) = finish(rollout(&["status", "web"], &ssl));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostgroup web: 1 node(s)"), "{out}");

    // A plain agent: host:port is http.
    let plain = TestServer::start();
    plain.put("kiln/nodes/web/web-1", &report("web-1", 7, true));
    let addr = plain.addr().to_string();
    let (code, out, err, _) = finish(rollout(
        &["status", "web"],
        &[("CONSUL_HTTP_ADDR", addr.as_str())],
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostgroup web: 1 node(s)"), "{out}");
    assert_eq!(
        plain.count_requests(Some("GET"), "/v1/kv/kiln/nodes/web/"),
        1
    );
}
