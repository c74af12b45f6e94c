//! Blocking queries: `?index=N&wait=D` (kept short: wait=1s).

use crate::common::*;

use std::thread;
use std::time::{Duration, Instant};

fn later(d: Duration, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(d);
        f()
    })
}

#[test]
fn index_zero_returns_at_once() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/r/a", b"1");
    let t = Instant::now();
    let r = get(a, "/v1/kv/r/?recurse&index=0&wait=5s");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // An index below the current one returns at once too.
    let t = Instant::now();
    let r2 = get(
        a,
        &format!("/v1/kv/r/?recurse&index={}&wait=5s", r.index() - 1),
    );
    assert_eq!(r2.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[test]
fn prefix_query_returns_when_a_write_lands_under_the_prefix() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/rollout/web/h1", b"pending");
    let r = get(a, "/v1/kv/rollout/web/?recurse");
    let idx = r.index();
    let w = later(Duration::from_millis(300), move || {
        assert_eq!(put(a, "/v1/kv/rollout/web/h2", b"done").text(), "true");
    });
    let t = Instant::now();
    let r = get(
        a,
        &format!("/v1/kv/rollout/web/?recurse&index={idx}&wait=5s"),
    );
    let took = t.elapsed();
    w.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(r.index() > idx);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    r.assert_read_meta();
}

#[test]
fn timeout_answers_200_with_the_same_data_and_index() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/q/a", b"1");
    let first = get(a, "/v1/kv/q/?recurse");
    let t = Instant::now();
    let r = get(
        a,
        &format!("/v1/kv/q/?recurse&index={}&wait=1s", first.index()),
    );
    let took = t.elapsed();
    assert_eq!(r.status, 200);
    // wait plus at most wait/16 of jitter (and some slack for the machine).
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(r.index(), first.index());
    assert_eq!(r.body, first.body);
    r.assert_read_meta();
}

#[test]
fn unrelated_writes_do_not_end_a_prefix_query() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/mine/a", b"1");
    let idx = get(a, "/v1/kv/mine/?recurse").index();
    let w = later(Duration::from_millis(200), move || {
        put(a, "/v1/kv/theirs/a", b"1");
        put(a, "/v1/kv/minex", b"not under mine/");
    });
    let t = Instant::now();
    let r = get(a, &format!("/v1/kv/mine/?recurse&index={idx}&wait=1s"));
    w.join().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(990),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.index(), idx);
}

#[test]
fn single_key_query_wakes_on_that_key_only() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/k", b"1");
    let idx = get(a, "/v1/kv/k").index();
    let w = later(Duration::from_millis(200), move || {
        put(a, "/v1/kv/k2", b"other");
        thread::sleep(Duration::from_millis(200));
        put(a, "/v1/kv/k", b"2");
    });
    let t = Instant::now();
    let r = get(a, &format!("/v1/kv/k?index={idx}&wait=5s"));
    w.join().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(unb64(entry(&r)["Value"].as_str().unwrap()), b"2");
    assert_eq!(r.index(), modify_index(a, "k"));
    // An identical write does not wake anyone: nothing changed.
    let idx = r.index();
    let w = later(Duration::from_millis(200), move || {
        put(a, "/v1/kv/k", b"2");
    });
    let r = get(a, &format!("/v1/kv/k?index={idx}&wait=1s"));
    w.join().unwrap();
    assert_eq!(r.index(), idx);
}

#[test]
fn recursive_miss_blocks_until_the_prefix_appears() {
    let c = TestServer::start();
    let a = c.addr();
    let r = get(a, "/v1/kv/new/?recurse");
    assert_eq!(r.status, 404);
    let idx = r.index();
    let w = later(Duration::from_millis(200), move || {
        put(a, "/v1/kv/new/x", b"1");
    });
    let r = get(a, &format!("/v1/kv/new/?recurse&index={idx}&wait=5s"));
    w.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index() > idx);
    // And a delete under the prefix wakes it too (the tombstone moves the index).
    let idx = r.index();
    let w = later(Duration::from_millis(200), move || {
        delete(a, "/v1/kv/new/x");
    });
    let r = get(a, &format!("/v1/kv/new/?recurse&index={idx}&wait=5s"));
    w.join().unwrap();
    assert_eq!(r.status, 404);
    assert!(r.index() > idx);
}

#[test]
fn keys_query_blocks_too() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/ks/a", b"1");
    let idx = get(a, "/v1/kv/ks/?keys").index();
    let w = later(Duration::from_millis(200), move || {
        put(a, "/v1/kv/ks/b", b"1");
    });
    let r = get(a, &format!("/v1/kv/ks/?keys&index={idx}&wait=5s"));
    w.join().unwrap();
    assert_eq!(r.json(), serde_json::json!(["ks/a", "ks/b"]));
}

#[test]
fn bad_wait_and_index_are_400() {
    let c = TestServer::start();
    let a = c.addr();
    for (q, msg) in [
        ("wait=10", "Invalid wait time"),
        ("wait=abc", "Invalid wait time"),
        ("wait=1x", "Invalid wait time"),
        ("index=-1", "Invalid index"),
        ("index=abc", "Invalid index"),
        ("index=1.5", "Invalid index"),
    ] {
        let r = get(a, &format!("/v1/kv/k?{q}"));
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.text(), msg, "{q}");
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    }
    // Bad wait is refused on writes too (Consul parses query options first).
    assert_eq!(put(a, "/v1/kv/k?wait=zz", b"x").status, 400);
}

#[test]
fn odd_but_valid_waits() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/k", b"1");
    let idx = get(a, "/v1/kv/k").index();
    // Fractions and compound durations are Go durations.
    let t = Instant::now();
    let r = get(a, &format!("/v1/kv/k?index={idx}&wait=0.5s"));
    assert_eq!(r.status, 200);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let t = Instant::now();
    let r = get(a, &format!("/v1/kv/k?index={idx}&wait=300ms500ms"));
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(790),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_write_wakes_several_waiters() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/m/a", b"1");
    let idx = get(a, "/v1/kv/m/?recurse").index();
    let waiters: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || get(a, &format!("/v1/kv/m/?recurse&index={idx}&wait=5s"))))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    put(a, "/v1/kv/m/b", b"2");
    for w in waiters {
        let r = w.join().unwrap();
        assert!(r.index() > idx);
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

/// A restore puts the index back: a blocking query in flight answers at once with the lower
/// index (Consul abandons blocking queries on a restore), and the writes after it take
/// indexes at or below what clients saw before, which is why a client must start again
/// from 0 when the index goes backwards.
#[test]
fn a_restore_lowers_the_index_and_answers_blocking_queries_at_once() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("rollout/web/h1", b"old");
    let snap = c.snapshot();
    for i in 0..5 {
        c.put("rollout/web/h1", format!("v{i}").as_bytes());
    }
    let high = get(a, "/v1/kv/rollout/web/?recurse").index();
    assert_eq!(high, snap.index + 5);
    let c2 = c.controller();
    let w = later(Duration::from_millis(300), move || c2.restore(&snap));
    let t = Instant::now();
    let r = get(
        a,
        &format!("/v1/kv/rollout/web/?recurse&index={high}&wait=10s"),
    );
    let took = t.elapsed();
    w.join().unwrap();
    assert!(took < Duration::from_secs(5), "not abandoned: {took:?}");
    assert_eq!(r.status, 200);
    assert!(r.index() < high, "{} >= {high}", r.index());
    assert_eq!(unb64(r.json()[0]["Value"].as_str().unwrap()), b"old");
    // The next write takes an index a client that kept `high` would wait past.
    c.put("rollout/web/h2", b"new");
    assert!(c.index() <= high);
    let r = get(a, "/v1/kv/rollout/web/?recurse");
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    assert!(r.index() <= high);
    // Through the HTTP controls too.
    let s = request(a, "POST", "/_test/snapshot", &[], b"").json();
    c.put("rollout/web/h3", b"x");
    let back = request(
        a,
        "POST",
        &format!("/_test/restore?id={}", s["id"]),
        &[],
        b"",
    );
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(back.json()["index"], s["index"]);
    assert!(c.get("rollout/web/h3").is_none());
}
