//! Sessions and locks: create/info/renew/destroy, `?acquire` / `?release`, LockIndex,
//! invalidation (release or delete) and lock-delay.

use crate::common::*;

use std::time::{Duration, Instant};

fn create(a: std::net::SocketAddr, body: &str) -> String {
    let r = put(a, "/v1/session/create", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let id = r.json()["ID"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "{id}");
    id
}

#[test]
fn create_info_renew_destroy() {
    let c = TestServer::start();
    let a = c.addr();
    // No body: the agent's defaults.
    let r = put(a, "/v1/session/create", b"");
    assert_eq!(r.status, 200);
    let id = r.json()["ID"].as_str().unwrap().to_string();
    let info = get(a, &format!("/v1/session/info/{id}"));
    assert_eq!(info.status, 200);
    info.assert_read_meta();
    let s = &info.json()[0];
    assert_eq!(s["ID"], id.as_str());
    assert_eq!(s["Node"], "consul-test-server");
    assert_eq!(s["Behavior"], "release");
    assert_eq!(s["LockDelay"], 15_000_000_000u64);
    assert_eq!(s["TTL"], "");
    assert_eq!(s["NodeChecks"], serde_json::json!(["serfHealth"]));
    assert_eq!(info.index(), s["CreateIndex"].as_u64().unwrap());

    let id2 = create(
        a,
        r#"{"Name": "kiln-rollout", "TTL": "30s", "LockDelay": "1s", "Behavior": "delete"}"#,
    );
    let s = &get(a, &format!("/v1/session/info/{id2}")).json()[0];
    assert_eq!(
        (
            s["Name"].as_str(),
            s["TTL"].as_str(),
            s["Behavior"].as_str()
        ),
        (Some("kiln-rollout"), Some("30s"), Some("delete"))
    );
    assert_eq!(s["LockDelay"], 1_000_000_000u64);

    let r = put(a, &format!("/v1/session/renew/{id2}"), b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["ID"], id2.as_str());

    let r = put(a, &format!("/v1/session/destroy/{id2}"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let r = get(a, &format!("/v1/session/info/{id2}"));
    assert_eq!((r.status, r.text().as_str()), (200, "[]"));
    let r = put(a, &format!("/v1/session/renew/{id2}"), b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), format!("Session id '{id2}' not found"));
    // list
    let r = get(a, "/v1/session/list");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

#[test]
fn session_create_validation() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(a, "/v1/session/create", br#"{"TTL": "1s"}"#);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "Invalid Session TTL '1000000000', must be between [10s=24h0m0s]"
    );
    let r = put(a, "/v1/session/create", br#"{"TTL": "soon"}"#);
    assert_eq!(r.status, 500);
    assert!(
        r.text().starts_with("Session TTL 'soon' invalid: "),
        "{}",
        r.text()
    );
    let r = put(a, "/v1/session/create", br#"{"Behavior": "explode"}"#);
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "Invalid Behavior setting 'explode'")
    );
    let r = put(a, "/v1/session/create", b"{not json");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Request decode failed: "));
    let r = put(a, "/v1/session/create", br#"{"Node": "some-other-host"}"#);
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("Missing node registration"),
        "{}",
        r.text()
    );
    let r = get(a, "/v1/session/create");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("OPTIONS,PUT"));
    let r = put(a, "/v1/session/destroy/", b"");
    assert_eq!((r.status, r.text().as_str()), (400, "Missing session"));
}

#[test]
fn acquire_and_release_with_lock_index() {
    let c = TestServer::start();
    let a = c.addr();
    let s1 = create(a, r#"{"LockDelay": "0s"}"#);
    let s2 = create(a, r#"{"LockDelay": "0s"}"#);

    let r = put(a, &format!("/v1/kv/lock/web?acquire={s1}"), b"holder-1");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let e = entry(&get(a, "/v1/kv/lock/web"));
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(e["Session"], s1.as_str());
    assert_eq!(unb64(e["Value"].as_str().unwrap()), b"holder-1");

    // Someone else's session: false, nothing changes.
    let idx = c.index();
    let r = put(a, &format!("/v1/kv/lock/web?acquire={s2}"), b"holder-2");
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    assert_eq!(c.index(), idx);
    // Re-acquiring with the holder's session keeps LockIndex.
    assert_eq!(
        put(a, &format!("/v1/kv/lock/web?acquire={s1}"), b"holder-1b").text(),
        "true"
    );
    assert_eq!(entry(&get(a, "/v1/kv/lock/web"))["LockIndex"], 1);

    // Release with the wrong session: false.
    let r = put(a, &format!("/v1/kv/lock/web?release={s2}"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    // Release with the holder: Session cleared, LockIndex kept.
    let r = put(a, &format!("/v1/kv/lock/web?release={s1}"), b"released");
    assert_eq!(r.text(), "true");
    let e = entry(&get(a, "/v1/kv/lock/web"));
    assert!(e.get("Session").is_none(), "{e}");
    assert_eq!(e["LockIndex"], 1);
    assert_eq!(unb64(e["Value"].as_str().unwrap()), b"released");

    // Now the other session gets it: LockIndex + 1.
    assert_eq!(
        put(a, &format!("/v1/kv/lock/web?acquire={s2}"), b"holder-2").text(),
        "true"
    );
    let e = entry(&get(a, "/v1/kv/lock/web"));
    assert_eq!(
        (e["LockIndex"].as_u64(), e["Session"].as_str()),
        (Some(2), Some(s2.as_str()))
    );

    // A plain PUT keeps the holder (Consul's kvsSetTxn keeps the session).
    put(a, "/v1/kv/lock/web", b"plain");
    assert_eq!(entry(&get(a, "/v1/kv/lock/web"))["Session"], s2.as_str());
}

#[test]
fn acquire_needs_a_live_session() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(
        a,
        "/v1/kv/l?acquire=00000000-0000-0000-0000-000000000000",
        b"",
    );
    assert_eq!(r.status, 500);
    assert_eq!(
        r.text(),
        "invalid session \"00000000-0000-0000-0000-000000000000\""
    );
    let r = put(a, "/v1/kv/l?acquire=", b"");
    assert_eq!((r.status, r.text().as_str()), (500, "missing session"));
    // Release of a missing key: false.
    let s = create(a, "{}");
    assert_eq!(
        put(a, &format!("/v1/kv/none?release={s}"), b"").text(),
        "false"
    );
}

#[test]
fn destroy_releases_locks_and_lock_delay_holds_them() {
    let c = TestServer::start();
    let a = c.addr();
    let s1 = create(a, r#"{"LockDelay": "2s"}"#);
    let s2 = create(a, r#"{"LockDelay": "0s"}"#);
    assert_eq!(
        put(a, &format!("/v1/kv/lk?acquire={s1}"), b"v").text(),
        "true"
    );
    let before = modify_index(a, "lk");
    assert_eq!(
        put(a, &format!("/v1/session/destroy/{s1}"), b"").text(),
        "true"
    );
    let e = entry(&get(a, "/v1/kv/lk"));
    assert!(e.get("Session").is_none(), "{e}");
    assert_eq!(e["LockIndex"], 1);
    assert!(e["ModifyIndex"].as_u64().unwrap() > before);
    // Within the lock-delay nobody can acquire it.
    let t = Instant::now();
    assert_eq!(
        put(a, &format!("/v1/kv/lk?acquire={s2}"), b"v2").text(),
        "false"
    );
    while t.elapsed() < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        put(a, &format!("/v1/kv/lk?acquire={s2}"), b"v2").text(),
        "true"
    );
    assert_eq!(entry(&get(a, "/v1/kv/lk"))["LockIndex"], 2);
}

#[test]
fn delete_behavior_removes_held_keys() {
    let c = TestServer::start();
    let a = c.addr();
    let s = create(a, r#"{"Behavior": "delete", "LockDelay": "0s"}"#);
    assert_eq!(
        put(a, &format!("/v1/kv/eph/a?acquire={s}"), b"1").text(),
        "true"
    );
    put(a, "/v1/kv/eph/b", b"not held");
    let idx = get(a, "/v1/kv/eph/?recurse").index();
    put(a, &format!("/v1/session/destroy/{s}"), b"");
    assert_eq!(get(a, "/v1/kv/eph/a").status, 404);
    assert_eq!(get(a, "/v1/kv/eph/b").status, 200);
    assert!(get(a, "/v1/kv/eph/?recurse").index() > idx);
}

#[test]
fn ttl_sessions_expire_after_twice_their_ttl() {
    let cfg = Config {
        session_ttl_min: Duration::from_millis(500),
        ..Config::default()
    };
    let c = TestServer::start_with(cfg).unwrap();
    let a = c.addr();
    let s = create(a, r#"{"TTL": "500ms", "LockDelay": "0s"}"#);
    assert_eq!(
        put(a, &format!("/v1/kv/ttl?acquire={s}"), b"x").text(),
        "true"
    );
    let idx = get(a, "/v1/kv/ttl").index();
    // A blocking query sees the release when the session runs out (TTL x 2 = 1s).
    let t = Instant::now();
    let r = get(a, &format!("/v1/kv/ttl?index={idx}&wait=5s"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(entry(&r).get("Session").is_none());
    assert_eq!(get(a, &format!("/v1/session/info/{s}")).text(), "[]");
}

#[test]
fn invalidate_session_through_the_library() {
    let c = TestServer::start();
    let a = c.addr();
    let s = create(a, r#"{"LockDelay": "0s"}"#);
    put(a, &format!("/v1/kv/held?acquire={s}"), b"x");
    assert_eq!(c.sessions().len(), 1);
    c.invalidate_session(&s);
    assert!(c.sessions().is_empty());
    assert!(c.get("held").unwrap().session.is_none());
}
