//! KV writes: `PUT` (flags, cas), `DELETE` (recurse, cas), the global index, tombstones.

use crate::common::*;

#[test]
fn put_answers_true_and_takes_the_next_index() {
    let c = TestServer::start();
    let a = c.addr();
    let before = c.index();
    let r = put(a, "/v1/kv/k", b"v1");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "true");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    // Writes carry no X-Consul-Index.
    assert!(!r.has_header("X-Consul-Index"));
    let e = entry(&get(a, "/v1/kv/k"));
    assert_eq!(e["CreateIndex"], before + 1);
    assert_eq!(e["ModifyIndex"], before + 1);
    put(a, "/v1/kv/k", b"v2");
    let e = entry(&get(a, "/v1/kv/k"));
    assert_eq!(e["CreateIndex"], before + 1);
    assert_eq!(e["ModifyIndex"], before + 2);
}

#[test]
fn identical_put_does_not_bump_modify_index() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/status?flags=3", b"same");
    let m = modify_index(a, "status");
    let global = c.index();
    let r = put(a, "/v1/kv/status?flags=3", b"same");
    assert_eq!(r.text(), "true");
    assert_eq!(modify_index(a, "status"), m);
    assert_eq!(c.index(), global);
    // Same value with other flags is a change.
    put(a, "/v1/kv/status?flags=4", b"same");
    assert_eq!(modify_index(a, "status"), global + 1);
    // ... and so is the same flags with another value.
    put(a, "/v1/kv/status?flags=4", b"other");
    assert_eq!(modify_index(a, "status"), global + 2);
}

#[test]
fn flags_are_stored_and_bad_flags_fail() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/f?flags=18446744073709551615", b"x");
    assert_eq!(entry(&get(a, "/v1/kv/f"))["Flags"], u64::MAX);
    let r = put(a, "/v1/kv/f?flags=abc", b"x");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("invalid syntax"), "{}", r.text());
}

#[test]
fn cas_zero_creates_only_if_absent() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(a, "/v1/kv/nodes/web/h1?cas=0", b"first");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let idx = c.index();
    let r = put(a, "/v1/kv/nodes/web/h1?cas=0", b"second");
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    assert_eq!(get(a, "/v1/kv/nodes/web/h1?raw").text(), "first");
    // A failed check-and-set changes nothing, the index included.
    assert_eq!(c.index(), idx);
}

#[test]
fn cas_n_writes_only_on_matching_modify_index() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/k", b"a");
    let m = modify_index(a, "k");
    let r = put(a, &format!("/v1/kv/k?cas={}", m + 100), b"b");
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    let r = put(a, &format!("/v1/kv/k?cas={m}"), b"b");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(get(a, "/v1/kv/k?raw").text(), "b");
    // The old index no longer matches.
    let r = put(a, &format!("/v1/kv/k?cas={m}"), b"c");
    assert_eq!(r.text(), "false");
    // cas=N on a missing key fails.
    let r = put(a, "/v1/kv/missing?cas=5", b"x");
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    assert_eq!(get(a, "/v1/kv/missing").status, 404);
    // A bad cas value is an error.
    assert_eq!(put(a, "/v1/kv/k?cas=x", b"c").status, 500);
}

#[test]
fn value_size_limit_is_512_kib() {
    let c = TestServer::start();
    let a = c.addr();
    let max = vec![b'a'; 512 * 1024];
    let r = put(a, "/v1/kv/big", &max);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(a, "/v1/kv/big?raw").body.len(), 512 * 1024);
    let over = vec![b'a'; 512 * 1024 + 1];
    let idx = c.index();
    let r = put(a, "/v1/kv/big2", &over);
    assert_eq!(r.status, 413);
    assert!(
        r.text()
            .starts_with("Request body(524289 bytes) too large, max size: 524288 bytes."),
        "{}",
        r.text()
    );
    assert_eq!(get(a, "/v1/kv/big2").status, 404);
    assert_eq!(c.index(), idx);
}

#[test]
fn empty_key_and_dotdot_are_400() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(a, "/v1/kv/", b"x");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Missing key name");
    for bad in [
        "/v1/kv/a/../b",
        "/v1/kv/a/..",
        "/v1/kv/a..b",
        "/v1/kv/%2e%2e/x",
    ] {
        let r = put(a, bad, b"x");
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains("traversal"), "{bad}: {}", r.text());
        assert_eq!(get(a, bad).status, 400, "{bad}");
    }
    assert!(c.entries().is_empty());
    let r = delete(a, "/v1/kv/");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Missing key name");
}

#[test]
fn conflicting_flags_are_400() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(a, "/v1/kv/k?cas=0&acquire=abc", b"x");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Conflicting flags: acquire=abc&cas=0\n");
    let r = delete(a, "/v1/kv/k?recurse&cas=1");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Conflicting flags: "));
}

#[test]
fn delete_single_recurse_and_cas() {
    let c = TestServer::start();
    let a = c.addr();
    for k in ["t/a", "t/b", "t/c/d", "u"] {
        put(a, &format!("/v1/kv/{k}"), b"x");
    }
    let r = delete(a, "/v1/kv/t/a");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(get(a, "/v1/kv/t/a").status, 404);
    // Deleting what is not there: true, and nothing moves.
    let idx = c.index();
    assert_eq!(delete(a, "/v1/kv/t/a").text(), "true");
    assert_eq!(c.index(), idx);
    // delete with cas: stale answers false, current deletes.
    let m = modify_index(a, "t/b");
    let r = delete(a, &format!("/v1/kv/t/b?cas={}", m - 1));
    assert_eq!((r.status, r.text().as_str()), (200, "false"));
    assert_eq!(get(a, "/v1/kv/t/b").status, 200);
    assert_eq!(delete(a, &format!("/v1/kv/t/b?cas={m}")).text(), "true");
    assert_eq!(get(a, "/v1/kv/t/b").status, 404);
    // delete-cas of a missing key is true (nothing to delete).
    assert_eq!(delete(a, "/v1/kv/t/b?cas=1").text(), "true");
    // recurse deletes the subtree only.
    assert_eq!(delete(a, "/v1/kv/t/?recurse").text(), "true");
    assert_eq!(get(a, "/v1/kv/t/?recurse").status, 404);
    assert_eq!(get(a, "/v1/kv/u").status, 200);
    // recurse with an empty key deletes everything.
    assert_eq!(delete(a, "/v1/kv/?recurse").text(), "true");
    assert!(c.entries().is_empty());
}

#[test]
fn tombstones_keep_a_prefix_index_from_going_back() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/p/a", b"1");
    put(a, "/v1/kv/p/b", b"2");
    let before = get(a, "/v1/kv/p/?recurse").index();
    delete(a, "/v1/kv/p/b");
    let del_idx = c.index();
    put(a, "/v1/kv/elsewhere", b"x");
    let r = get(a, "/v1/kv/p/?recurse");
    assert_eq!(r.status, 200);
    // The deleted key's tombstone holds the prefix index at the delete, not p/a's index.
    assert_eq!(r.index(), del_idx);
    assert!(r.index() > before);
    // A prefix whose only key was deleted: 404, index from the tombstone.
    let r = get(a, "/v1/kv/p/b?recurse");
    assert_eq!(r.status, 404);
    assert_eq!(r.index(), del_idx);
    // keys uses the same index.
    assert_eq!(get(a, "/v1/kv/p/?keys").index(), del_idx);
    // A recursive delete leaves one tombstone on its prefix.
    delete(a, "/v1/kv/p/?recurse");
    let tree_idx = c.index();
    put(a, "/v1/kv/later", b"x");
    let r = get(a, "/v1/kv/p/?recurse");
    assert_eq!((r.status, r.index()), (404, tree_idx));
}

#[test]
fn one_global_index_across_keys() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/x", b"1");
    let i1 = modify_index(a, "x");
    put(a, "/v1/kv/y", b"1");
    let i2 = modify_index(a, "y");
    delete(a, "/v1/kv/x");
    put(a, "/v1/kv/z", b"1");
    let i3 = modify_index(a, "z");
    assert_eq!((i2, i3), (i1 + 1, i1 + 3));
    // The root listing's index is the table index.
    assert_eq!(get(a, "/v1/kv/?recurse").index(), i3);
}
