//! Fetching over HTTP from a server on 127.0.0.1: retries with backoff through 503s, a 404
//! that is final, a port nobody listens on until the deadline, and a pinned digest that does
//! not match (refused before anything else, the root left as it was).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use kiln_signing::exit;

/// Serves `body` at any path, answering `fail_first` requests with 503 first, or always
/// `status` when given. Returns the base URL and the request counter.
fn serve(body: Vec<u8>, fail_first: usize, status: Option<u16>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let n = c.fetch_add(1, Ordering::SeqCst);
            let code = status.unwrap_or(if n < fail_first { 503 } else { 200 });
            let payload: &[u8] = if code == 200 { &body } else { b"nope" };
            let _ = write!(
                stream,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(payload);
        }
    });
    (url, count)
}

fn bundle_bytes() -> (Vec<u8>, String) {
    let work = tempfile::tempdir().unwrap();
    let p = work.path().join("b.kiln");
    let mut s = Spec::new("web", 3);
    s.file("/etc/fetched", &noise(3, 100_000), "0644", "root", "root");
    let sha = s.write(&release_key(), &p);
    (std::fs::read(p).unwrap(), sha)
}

#[test]
fn downloads_with_retries_and_applies() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let trust = trust_dir(&[&release_key()], &[]);
    let (bytes, sha) = bundle_bytes();
    let (url, count) = serve(bytes.clone(), 2, None);
    let url = format!("{url}/web-3.kiln");
    let out = run(&[
        "apply",
        "--root",
        r.to_str().unwrap(),
        "--trust",
        trust.path().to_str().unwrap(),
        "--bundle",
        &url,
        "--sha256",
        &sha,
        "--deadline",
        "60s",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "two 503s, then the download"
    );
    let err = stderr(&out);
    assert!(err.contains("fetch attempt 1 failed: HTTP 503"), "{err}");
    assert_eq!(
        std::fs::read(r.join("etc/fetched")).unwrap(),
        noise(3, 100_000)
    );
    assert_eq!(read_state(r)["source"], url.as_str());
    assert!(!r.join("var/lib/kiln/staging").exists());
}

#[test]
fn a_404_is_final_and_an_unreachable_server_gives_up_at_the_deadline() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let trust = trust_dir(&[&release_key()], &[]);
    let before = tree_hash(r);
    let (url, count) = serve(vec![], 0, Some(404));
    let t = Instant::now();
    let out = run(&[
        "apply",
        "--root",
        r.to_str().unwrap(),
        "--trust",
        trust.path().to_str().unwrap(),
        "--bundle",
        &format!("{url}/x.kiln"),
    ]);
    assert_eq!(out.status.code(), Some(exit::FETCH));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(t.elapsed() < Duration::from_secs(10));

    // Nobody listens on this port (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let out = run(&[
        "apply",
        "--root",
        r.to_str().unwrap(),
        "--trust",
        trust.path().to_str().unwrap(),
        "--bundle",
        &format!("http://127.0.0.1:{port}/x.kiln"),
        "--deadline",
        "4s",
    ]);
    assert_eq!(out.status.code(), Some(exit::FETCH));
    assert!(stderr(&out).contains("deadline"), "{}", stderr(&out));
    assert!(
        (3..15).contains(&t.elapsed().as_secs()),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        tree_hash(r),
        before,
        "a failed fetch leaves the root as it was"
    );
}

#[test]
fn a_downloaded_bundle_with_the_wrong_digest_is_refused_with_19() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let trust = trust_dir(&[&release_key()], &[]);
    let (bytes, _) = bundle_bytes();
    let (url, _) = serve(bytes, 0, None);
    let before = tree_hash(r);
    let out = run(&[
        "apply",
        "--root",
        r.to_str().unwrap(),
        "--trust",
        trust.path().to_str().unwrap(),
        "--bundle",
        &format!("{url}/b.kiln"),
        "--sha256",
        &"ab".repeat(32),
    ]);
    assert_eq!(out.status.code(), Some(exit::DIGEST_MISMATCH));
    assert!(stderr(&out).contains("--sha256 pins"), "{}", stderr(&out));
    assert_eq!(tree_hash(r), before);
}
