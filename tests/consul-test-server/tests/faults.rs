//! Test controls outside the Consul API: faults, refusing connections, the request
//! log, the `/_test/` endpoints, the CLI, the async library API, and reqwest.

use crate::common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use consul_test_server::FaultKind;

#[test]
fn status_fault_for_the_next_k_requests() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("k", b"v");
    c.add_fault(Fault::status(503).times(2));
    for _ in 0..2 {
        let r = get(a, "/v1/kv/k");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert!(!r.has_header("X-Consul-Index"));
    }
    assert_eq!(get(a, "/v1/kv/k").status, 200);
    assert!(c.faults().is_empty());
    let log = c.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (log[0].status, log[0].fault.as_deref()),
        (Some(503), Some("status 503"))
    );
    assert_eq!((log[2].status, log[2].fault.as_deref()), (Some(200), None));
}

#[test]
fn faults_scoped_by_path_prefix_and_method() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("kiln/x", b"v");
    c.put("other", b"v");
    let id = c.add_fault(Fault::status(500).path_prefix("/v1/kv/kiln/"));
    c.add_fault(Fault::status(502).method("PUT").path_prefix("/v1/kv/other"));
    for _ in 0..3 {
        assert_eq!(get(a, "/v1/kv/kiln/x").status, 500);
        assert_eq!(get(a, "/v1/kv/kiln/?recurse").status, 500);
    }
    assert_eq!(get(a, "/v1/kv/other").status, 200);
    assert_eq!(put(a, "/v1/kv/other", b"w").status, 502);
    assert_eq!(get(a, "/v1/status/leader").status, 200);
    c.remove_fault(id);
    assert_eq!(get(a, "/v1/kv/kiln/x").status, 200);
    c.clear_faults();
    assert_eq!(put(a, "/v1/kv/other", b"w").status, 200);
}

#[test]
fn garbage_delay_and_drop() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("g", b"v");
    c.add_fault(Fault::garbage().times(1));
    let r = get(a, "/v1/kv/g");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert!(r.has_header("X-Consul-Index"));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&r.body).is_err(),
        "{}",
        r.text()
    );

    c.add_fault(Fault::delay_ms(400).times(1));
    let t = Instant::now();
    assert_eq!(get(a, "/v1/kv/g").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(390),
        "{:?}",
        t.elapsed()
    );

    c.add_fault(Fault::drop_connection().times(1));
    assert!(try_request(a, "GET", "/v1/kv/g", &[], b"").is_err());
    assert_eq!(get(a, "/v1/kv/g").status, 200);
    let log = c.requests();
    assert_eq!(log[2].fault.as_deref(), Some("drop"));
    assert_eq!(log[2].status, None);
}

#[test]
fn refusing_connections_and_coming_back() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("k", b"v");
    // A kept-alive connection made before the outage is closed by it.
    let mut held = TcpStream::connect(a).unwrap();
    held.write_all(format!("GET /v1/kv/k HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = held.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    c.stop_listening();
    assert!(!c.is_listening());
    let e = TcpStream::connect_timeout(&a, Duration::from_secs(2)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = held.write_all(format!("GET /v1/kv/k HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes());
    let closed = matches!(held.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the old connection must not be served while down");

    c.resume_listening().unwrap();
    assert_eq!(c.addr(), a);
    assert_eq!(get(a, "/v1/kv/k").status, 200);

    // down_for: refused now, back by itself.
    c.down_for(Duration::from_millis(500));
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_err());
    let t = Instant::now();
    loop {
        if let Ok(r) = try_request(a, "GET", "/v1/kv/k", &[], b"") {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn request_log_records_what_tests_count() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/kiln/nodes/web/h1?cas=0", b"12345");
    request(
        a,
        "GET",
        "/v1/kv/kiln/hostgroups/web/?recurse",
        &[("X-Consul-Token", "t")],
        b"",
    );
    get(a, "/v1/kv/kiln/hostgroups/web/?recurse&index=0");
    let log = c.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].method, "PUT");
    assert_eq!(log[0].path, "/v1/kv/kiln/nodes/web/h1");
    assert_eq!(log[0].query, "cas=0");
    assert_eq!(log[0].query_param("cas").as_deref(), Some("0"));
    assert_eq!(log[0].body_size, 5);
    assert!(!log[0].token_present);
    assert!(log[1].token_present);
    assert_eq!(log[1].status, Some(404));
    assert_eq!(log[1].query_param("recurse").as_deref(), Some(""));
    assert!(log[1].duration_ms.is_some());
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(c.count_requests(Some("GET"), "/v1/kv/kiln/hostgroups/"), 2);
    assert_eq!(c.count_requests(None, "/v1/kv/"), 3);
    c.clear_requests();
    assert!(c.requests().is_empty());
    assert!(c.connections() >= 3);
}

#[test]
fn a_blocking_query_is_logged_while_in_flight() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("w", b"1");
    let idx = get(a, "/v1/kv/w").index();
    c.clear_requests();
    let t = std::thread::spawn(move || get(a, &format!("/v1/kv/w?index={idx}&wait=1s")));
    std::thread::sleep(Duration::from_millis(300));
    let log = c.requests();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, None);
    assert_eq!(t.join().unwrap().status, 200);
    assert_eq!(c.requests()[0].status, Some(200));
}

#[test]
fn http_test_controls() {
    let c = TestServer::start();
    let a = c.addr();
    let r = request(
        a,
        "POST",
        "/_test/faults",
        &[],
        br#"{"kind":"status","status":503,"count":1,"path_prefix":"/v1/kv/"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["id"].as_u64().is_some());
    let f = get(a, "/_test/faults").json();
    assert_eq!(f[0]["status"], 503);
    assert_eq!(get(a, "/v1/kv/x").status, 503);
    assert_eq!(get(a, "/v1/kv/x").status, 404);
    let log = get(a, "/_test/requests").json();
    // The controls themselves are not logged.
    assert_eq!(log.as_array().unwrap().len(), 2, "{log}");
    assert_eq!(log[0]["status"], 503);
    assert_eq!(log[0]["path"], "/v1/kv/x");
    assert_eq!(delete(a, "/_test/requests").status, 200);
    assert!(c.requests().is_empty());

    assert_eq!(
        request(
            a,
            "POST",
            "/_test/seed",
            &[],
            br#"{"s/a": "1", "s/b": "2"}"#
        )
        .status,
        200
    );
    assert_eq!(get(a, "/v1/kv/s/b?raw").text(), "2");
    let kv = get(a, "/_test/kv").json();
    assert_eq!(kv.as_array().unwrap().len(), 2);
    let st = get(a, "/_test/status").json();
    assert_eq!(st["index"], c.index());
    assert_eq!(st["listening"], true);

    let acl = r#"{"management_token": "root", "default_policy": "deny"}"#;
    assert_eq!(
        request(a, "PUT", "/_test/acl", &[], acl.as_bytes()).status,
        200
    );
    assert_eq!(get(a, "/v1/kv/s/a").status, 403);
    assert_eq!(request(a, "PUT", "/_test/acl", &[], b"null").status, 200);
    assert_eq!(get(a, "/v1/kv/s/a").status, 200);

    let r = request(a, "POST", "/_test/down?ms=400", &[], b"");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(150));
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_err());
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(a, "/v1/kv/s/a").status, 200);

    assert_eq!(
        request(a, "POST", "/_test/faults", &[], b"{\"kind\":\"nope\"}").status,
        400
    );
    assert_eq!(get(a, "/_test/nothing").status, 404);
    let _ = FaultKind::Drop;
}

#[test]
fn only_loopback_addresses() {
    let cfg = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..Config::default()
    };
    let e = TestServer::start_with(cfg).err().expect("must refuse");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn cli_prints_address_writes_port_file_and_serves_seed() {
    let dir = std::env::temp_dir().join(format!("cts-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed.json");
    std::fs::write(&seed, r#"{"kiln/hostgroups/web/config": "{\"v\": 1}"}"#).unwrap();
    let acl = dir.join("acl.json");
    std::fs::write(
        &acl,
        r#"{"management_token": "root", "default_policy": "deny",
        "tokens": [{"secret": "boot", "key_prefix": {"kiln/": "read"}}]}"#,
    )
    .unwrap();
    let port_file = dir.join("port");
    let mut child = Command::new(env!("CARGO_BIN_EXE_consul-test-server"))
        .args(["--listen", "127.0.0.1:0", "--seed"])
        .arg(&seed)
        .arg("--acl")
        .arg(&acl)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr_s = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let addr: std::net::SocketAddr = addr_s.parse().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    assert_eq!(std::fs::read_to_string(&port_file).unwrap().trim(), addr_s);
    let r = get_tok(addr, "/v1/kv/kiln/hostgroups/web/config?raw", "boot");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"v\": 1}");
    assert_eq!(
        get_tok(addr, "/v1/kv/kiln/x", "nope").text(),
        "ACL not found"
    );
    // SIGTERM ends it cleanly.
    unsafe_kill_term(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn unsafe_kill_term(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn cli_refuses_non_loopback_and_bad_arguments() {
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "192.0.2.1:8500"][..],
        &["--bogus"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_consul-test-server"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn async_library_api() {
    let h = consul_test_server::start(Config::default().with_seed("a/b", b"c"))
        .await
        .unwrap();
    let a = h.addr();
    let r = tokio::task::spawn_blocking(move || get(a, "/v1/kv/a/b?raw"))
        .await
        .unwrap();
    assert_eq!(r.text(), "c");
    h.stop_listening().await;
    assert!(tokio::net::TcpStream::connect(a).await.is_err());
    h.resume_listening().await.unwrap();
    let r = tokio::task::spawn_blocking(move || get(a, "/v1/kv/a/b?raw"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    h.shutdown().await;
    assert!(tokio::net::TcpStream::connect(a).await.is_err());
}

#[test]
fn dropping_the_test_server_stops_it() {
    let c = TestServer::start();
    let a = c.addr();
    assert_eq!(get(a, "/v1/status/leader").status, 200);
    drop(c);
    assert!(TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_err());
}

#[test]
fn works_with_reqwest_like_kiln_firstboot() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = TestServer::start();
    c.put("kiln/hostgroups/web/a", b"1");
    c.put("kiln/hostgroups/web/b", b"2");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = c.url();
    let r = client
        .get(format!("{url}/v1/kv/kiln/hostgroups/web/?recurse"))
        .header("X-Consul-Token", "t")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let idx: u64 = r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text().unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let r = client
        .put(format!("{url}/v1/kv/kiln/nodes/web/h1?cas=0"))
        .body("{\"ok\":true}")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "true");
    // A blocking query through reqwest.
    let c2 = c.controller();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c2.put("kiln/hostgroups/web/c", b"3");
    });
    let r = client
        .get(format!(
            "{url}/v1/kv/kiln/hostgroups/web/?recurse&index={idx}&wait=5s"
        ))
        .send()
        .unwrap();
    t.join().unwrap();
    assert!(
        r.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > idx
    );
    // While down, requests fail; afterwards the same client works again.
    c.stop_listening();
    assert!(client
        .get(format!("{url}/v1/status/leader"))
        .send()
        .is_err());
    c.resume_listening().unwrap();
    assert_eq!(
        client
            .get(format!("{url}/v1/status/leader"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "\"127.0.0.1:8300\""
    );
    // One request per boot is easy to count.
    assert_eq!(c.count_requests(Some("GET"), "/v1/kv/kiln/hostgroups/"), 2);
}
