//! KV reads: `GET /v1/kv/<k>`, `?recurse`, `?raw`, `?keys`, read headers, routing.

use crate::common::*;

#[test]
fn single_get_shape_and_headers() {
    let c = TestServer::start();
    let a = c.addr();
    assert_eq!(
        put(a, "/v1/kv/kiln/hostgroups/web/config?flags=42", b"hello").text(),
        "true"
    );
    let r = get(a, "/v1/kv/kiln/hostgroups/web/config");
    assert_eq!(r.status, 200);
    r.assert_read_meta();
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    // Field order and names as Consul writes them; no Session unless held.
    let idx = r.index();
    assert_eq!(
        r.text(),
        format!(
            r#"[{{"LockIndex":0,"Key":"kiln/hostgroups/web/config","Flags":42,"Value":"{}","CreateIndex":{idx},"ModifyIndex":{idx}}}]"#,
            b64(b"hello")
        )
    );
    // A single key's X-Consul-Index is its ModifyIndex, even after unrelated writes.
    put(a, "/v1/kv/other", b"x");
    assert_eq!(get(a, "/v1/kv/kiln/hostgroups/web/config").index(), idx);
    // Headers go out in Go's canonical form, as Consul's do.
    assert!(
        r.headers.iter().any(|(k, _)| k == "X-Consul-Knownleader"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("leader"));
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("allow"));
    assert_eq!(r.header("Vary"), Some("Accept-Encoding"));
}

#[test]
fn empty_value_is_null() {
    let c = TestServer::start();
    let a = c.addr();
    assert_eq!(put(a, "/v1/kv/empty", b"").status, 200);
    let e = entry(&get(a, "/v1/kv/empty"));
    assert!(e["Value"].is_null(), "{e}");
    let raw = get(a, "/v1/kv/empty?raw");
    assert_eq!(raw.status, 200);
    assert_eq!(raw.header("Content-Length"), Some("0"));
    assert!(raw.body.is_empty());
}

#[test]
fn missing_key_is_404_with_index_and_empty_body() {
    let c = TestServer::start();
    let a = c.addr();
    // Nothing written yet: the index is still not 0.
    let r = get(a, "/v1/kv/nope");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert!(!r.has_header("Content-Type"));
    r.assert_read_meta();
    assert_eq!(r.index(), 1);
    // After writes elsewhere: the KV table's index.
    put(a, "/v1/kv/x", b"1");
    let i = put(a, "/v1/kv/y", b"2");
    assert_eq!(i.status, 200);
    let r = get(a, "/v1/kv/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.index(), c.index());
}

#[test]
fn raw_returns_bare_value_as_text_plain() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/cfg", b"{\"a\": 1}\n");
    let r = get(a, "/v1/kv/cfg?raw");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{\"a\": 1}\n");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    r.assert_read_meta();
    // Missing with ?raw: still 404.
    let r = get(a, "/v1/kv/none?raw");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
}

#[test]
fn recurse_lists_prefix_sorted_with_highest_index() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/kiln/b", b"2");
    put(a, "/v1/kv/kiln/a/z", b"1");
    put(a, "/v1/kv/kiln/a", b"0");
    put(a, "/v1/kv/kilnx", b"not under kiln/");
    let last = c.index();
    put(a, "/v1/kv/zzz", b"later, elsewhere");
    let r = get(a, "/v1/kv/kiln/?recurse");
    assert_eq!(r.status, 200);
    r.assert_read_meta();
    let v = r.json();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["kiln/a", "kiln/a/z", "kiln/b"]);
    // The index is the highest ModifyIndex under the prefix: kilnx and zzz are not under it.
    let max = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ModifyIndex"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(r.index(), max);
    assert!(max < last);
    // Values are base64 in recursive reads too.
    assert_eq!(unb64(v[1]["Value"].as_str().unwrap()), b"1");
    // `?recurse=` with a value, and a prefix that is not a "directory", work the same.
    let r2 = get(a, "/v1/kv/kiln?recurse=true");
    assert_eq!(r2.json().as_array().unwrap().len(), 4);
}

#[test]
fn recurse_miss_is_404_with_index() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/a", b"1");
    let r = get(a, "/v1/kv/nothing/here/?recurse");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    r.assert_read_meta();
    // Nothing ever under the prefix: the KV table's index.
    assert_eq!(r.index(), c.index());
}

#[test]
fn recurse_on_empty_store_is_404_with_index_1() {
    let c = TestServer::start();
    let r = get(c.addr(), "/v1/kv/?recurse");
    assert_eq!(r.status, 404);
    assert_eq!(r.index(), 1);
}

#[test]
fn raw_is_ignored_with_recurse() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/p/k", b"v");
    let r = get(a, "/v1/kv/p/?recurse&raw");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json()[0]["Key"], "p/k");
}

#[test]
fn keys_with_and_without_separator() {
    let c = TestServer::start();
    let a = c.addr();
    for k in [
        "foo",
        "foo/bar",
        "foo/bar/baz",
        "foo/bar/zip",
        "foo/bar/zip/zam",
        "foo/bar/zip/zorp",
        "some/other",
    ] {
        put(a, &format!("/v1/kv/{k}"), b"x");
    }
    let r = get(a, "/v1/kv/foo?keys");
    assert_eq!(r.status, 200);
    r.assert_read_meta();
    assert_eq!(
        r.json(),
        serde_json::json!([
            "foo",
            "foo/bar",
            "foo/bar/baz",
            "foo/bar/zip",
            "foo/bar/zip/zam",
            "foo/bar/zip/zorp"
        ])
    );
    // Cut after the first separator past the prefix, deduplicated, in key order.
    let r = get(a, "/v1/kv/foo/bar/?keys&separator=/");
    assert_eq!(
        r.json(),
        serde_json::json!(["foo/bar/baz", "foo/bar/zip", "foo/bar/zip/"])
    );
    let idx_sep = r.index();
    assert_eq!(idx_sep, modify_index(a, "foo/bar/zip/zorp"));
    let r = get(a, "/v1/kv/?keys&separator=/");
    assert_eq!(r.json(), serde_json::json!(["foo", "foo/", "some/"]));
    // Consul's historic spelling is accepted too.
    let r = get(a, "/v1/kv/?keys&seperator=/");
    assert_eq!(r.json(), serde_json::json!(["foo", "foo/", "some/"]));
}

#[test]
fn keys_miss_is_404_but_root_is_empty_list() {
    let c = TestServer::start();
    let a = c.addr();
    let r = get(a, "/v1/kv/?keys");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "[]");
    r.assert_read_meta();
    let r = get(a, "/v1/kv/missing/?keys");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    r.assert_read_meta();
}

#[test]
fn get_without_key_is_400_missing_key_name() {
    let c = TestServer::start();
    let r = get(c.addr(), "/v1/kv/");
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Missing key name");
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
}

#[test]
fn wrong_method_is_405_with_allow() {
    let c = TestServer::start();
    let a = c.addr();
    let r = request(a, "POST", "/v1/kv/a", &[], b"x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET,PUT,DELETE"));
    assert_eq!(r.text(), "method POST not allowed");
    let r = request(a, "PATCH", "/v1/kv/a", &[], b"");
    assert_eq!(r.status, 405);
    let r = request(a, "OPTIONS", "/v1/kv/a", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET,PUT,DELETE"));
    let r = get(a, "/v1/txn");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("OPTIONS,PUT"));
    let r = put(a, "/v1/status/leader", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET"));
}

#[test]
fn mux_routing_like_consul() {
    let c = TestServer::start();
    let a = c.addr();
    // /v1/kv without the slash: the mux redirects.
    let r = get(a, "/v1/kv?recurse");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/v1/kv/?recurse"));
    // Empty path segments are collapsed by a redirect.
    let r = get(a, "/v1/kv/a//b");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("Location"), Some("/v1/kv/a/b"));
    // Unknown endpoints: 404, empty.
    let r = get(a, "/v1/nope");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    // Percent-encoded keys are decoded.
    put(a, "/v1/kv/a%2Fb%2Dc", b"v");
    assert_eq!(entry(&get(a, "/v1/kv/a/b-c"))["Key"], "a/b-c");
    // JSON escapes <, > and & as Go's encoding/json does.
    put(a, "/v1/kv/q%26a", b"v");
    assert!(get(a, "/v1/kv/q%26a")
        .text()
        .contains(r#""Key":"q\u0026a""#));
}

#[test]
fn pretty_and_stale_consistent() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/k", b"v");
    let r = get(a, "/v1/kv/k?pretty");
    assert!(
        r.text().starts_with("[\n    {\n        \"LockIndex\": 0,"),
        "{}",
        r.text()
    );
    assert!(r.text().ends_with("]\n"));
    let r = get(a, "/v1/kv/k?stale");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("stale"));
    let r = get(a, "/v1/kv/k?stale&consistent");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
    let r = get(a, "/v1/kv/k?dc=elsewhere");
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "No path to datacenter");
    assert_eq!(get(a, "/v1/kv/k?dc=dc1").status, 200);
}

#[test]
fn seeded_data_is_served() {
    let export = format!(
        r#"[{{"key":"kiln/a","flags":7,"value":"{}"}},{{"key":"kiln/b","flags":0,"value":null}}]"#,
        b64(b"A")
    );
    let c = TestServer::start_with(Config::default().with_seed_json(&export).unwrap()).unwrap();
    let a = c.addr();
    let e = entry(&get(a, "/v1/kv/kiln/a"));
    assert_eq!(e["Flags"], 7);
    assert_eq!(unb64(e["Value"].as_str().unwrap()), b"A");
    // One index per seeded key, after the initial index.
    assert_eq!(e["ModifyIndex"], 11);
    assert_eq!(entry(&get(a, "/v1/kv/kiln/b"))["ModifyIndex"], 12);
    let c2 = TestServer::start_with(
        Config::default()
            .with_seed_json(r#"{"x/y": "text"}"#)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(get(c2.addr(), "/v1/kv/x/y?raw").text(), "text");
}
