//! `kiln rollout status|wait` against the project's Consul test server: N successes -> 0, a
//! failure -> 3 at once, the timeout -> 4, Consul down for a while -> retried, and blocking
//! queries (the request log shows one request per change, each after the first carrying the
//! index of the previous answer), never a busy poll.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use consul_test_server::TestServer;
use support::*;

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
    Command::new(KILN)
        .args(["rollout", "wait", "web", "--consul-addr", &consul.url()])
        .args(args)
        .env_remove("CONSUL_HTTP_TOKEN")
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
