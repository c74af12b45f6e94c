//! `PUT /v1/txn`: verbs, the success and rollback shapes, atomicity, limits.

use crate::common::*;

use serde_json::{json, Value};

fn txn(a: std::net::SocketAddr, ops: &Value) -> Resp {
    put(a, "/v1/txn", ops.to_string().as_bytes())
}

fn kv(verb: &str, key: &str) -> Value {
    json!({"KV": {"Verb": verb, "Key": key}})
}

#[test]
fn set_and_get_success_shape() {
    let c = TestServer::start();
    let a = c.addr();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64(b"A"), "Flags": 5}},
        {"KV": {"Verb": "set", "Key": "t/b", "Value": b64(b"B")}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
    ]);
    let r = txn(a, &ops);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v = r.json();
    assert!(v["Errors"].is_null());
    let res = v["Results"].as_array().unwrap();
    assert_eq!(res.len(), 3);
    // One index for the whole transaction.
    let idx = res[0]["KV"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(res[1]["KV"]["ModifyIndex"], idx);
    assert_eq!(c.index(), idx);
    // Writes answer without their value; gets with it.
    assert!(res[0]["KV"]["Value"].is_null());
    assert_eq!(res[0]["KV"]["Flags"], 5);
    assert_eq!(res[2]["KV"]["Value"], b64(b"A"));
    assert_eq!(res[2]["KV"]["Key"], "t/a");
    // Exactly the two top-level members for a write transaction.
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert_eq!(get(a, "/v1/kv/t/b?raw").text(), "B");
}

#[test]
fn rollback_is_409_and_changes_nothing() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/x", b"old");
    let m = modify_index(a, "x");
    let idx = c.index();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "y", "Value": b64(b"new")}},
        {"KV": {"Verb": "cas", "Key": "x", "Value": b64(b"new"), "Index": m + 7}},
        {"KV": {"Verb": "delete", "Key": "x"}},
        {"KV": {"Verb": "check-not-exists", "Key": "x"}},
    ]);
    let r = txn(a, &ops);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v = r.json();
    assert!(v["Results"].is_null(), "{v}");
    assert_eq!(
        v["Errors"],
        json!([{"OpIndex": 1, "What": "failed to set key \"x\", index is stale"}]),
        "{v}"
    );
    // Nothing applied: y not created, x not deleted, no index moved.
    assert_eq!(get(a, "/v1/kv/y").status, 404);
    assert_eq!(get(a, "/v1/kv/x?raw").text(), "old");
    assert_eq!(c.index(), idx);
}

#[test]
fn every_error_is_reported() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/here", b"1");
    let ops = json!([
        kv("get", "missing"),
        kv("check-not-exists", "here"),
        {"KV": {"Verb": "check-index", "Key": "here", "Index": 1}},
        {"KV": {"Verb": "delete-cas", "Key": "here", "Index": 1}},
        kv("frobnicate", "here"),
    ]);
    let r = txn(a, &ops);
    assert_eq!(r.status, 409);
    let errs = r.json()["Errors"].clone();
    let m = modify_index(a, "here");
    assert_eq!(
        errs,
        json!([
            {"OpIndex": 0, "What": "key \"missing\" doesn't exist"},
            {"OpIndex": 1, "What": "key \"here\" exists"},
            {"OpIndex": 2, "What": format!("failed index check for key \"here\", current modify index {m} != 1")},
            {"OpIndex": 3, "What": "failed to delete key \"here\", index is stale"},
            {"OpIndex": 4, "What": "unknown KV verb \"frobnicate\""},
        ])
    );
}

#[test]
fn check_index_cas_delete_cas_delete_tree_and_get_tree() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/d/a", b"1");
    put(a, "/v1/kv/d/b", b"2");
    put(a, "/v1/kv/e", b"3");
    let ma = modify_index(a, "d/a");
    let me = modify_index(a, "e");
    let ops = json!([
        {"KV": {"Verb": "check-index", "Key": "d/a", "Index": ma}},
        {"KV": {"Verb": "cas", "Key": "d/a", "Value": b64(b"1b"), "Index": ma}},
        {"KV": {"Verb": "cas", "Key": "new", "Value": b64(b"n"), "Index": 0}},
        {"KV": {"Verb": "check-not-exists", "Key": "nothing"}},
        {"KV": {"Verb": "delete-cas", "Key": "e", "Index": me}},
        {"KV": {"Verb": "get-tree", "Key": "d/"}},
    ]);
    let r = txn(a, &ops);
    assert_eq!(r.status, 200, "{}", r.text());
    let res = r.json()["Results"].as_array().unwrap().clone();
    // check-index (entry), cas, cas; check-not-exists and delete-cas give none; get-tree 2.
    assert_eq!(res.len(), 5, "{res:?}");
    assert_eq!(res[0]["KV"]["ModifyIndex"], ma);
    assert!(res[0]["KV"]["Value"].is_null());
    assert_eq!(res[3]["KV"]["Key"], "d/a");
    assert_eq!(res[3]["KV"]["Value"], b64(b"1b"));
    assert_eq!(res[4]["KV"]["Key"], "d/b");
    assert_eq!(get(a, "/v1/kv/e").status, 404);
    assert_eq!(get(a, "/v1/kv/new?raw").text(), "n");

    let r = txn(a, &json!([kv("delete-tree", "d/")]));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"Results": [], "Errors": null}));
    assert_eq!(get(a, "/v1/kv/d/?recurse").status, 404);
}

#[test]
fn read_only_transactions_carry_query_meta() {
    let c = TestServer::start();
    let a = c.addr();
    put(a, "/v1/kv/r", b"1");
    let r = txn(a, &json!([kv("get", "r")]));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    let v = r.json();
    assert_eq!(v["Results"][0]["KV"]["Key"], "r");
    assert!(v["Errors"].is_null());
    assert_eq!(v["KnownLeader"], true);
    // Read-only transactions never move the index.
    let idx = c.index();
    txn(a, &json!([kv("get-tree", "")]));
    assert_eq!(c.index(), idx);
}

#[test]
fn limits_and_decoding() {
    let c = TestServer::start();
    let a = c.addr();
    let ops: Vec<Value> = (0..128)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("n/{i}"), "Value": b64(b"x")}}))
        .collect();
    let r = txn(a, &Value::Array(ops.clone()));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.list("n/").len(), 128);
    let mut more = ops;
    more.push(json!({"KV": {"Verb": "set", "Key": "n/x", "Value": b64(b"x")}}));
    let r = txn(a, &Value::Array(more));
    assert_eq!(r.status, 413);
    assert_eq!(
        r.text(),
        "Transaction contains too many operations (129 > 128)"
    );

    let r = put(a, "/v1/txn", b"{\"not\": \"a list\"}");
    assert_eq!(r.status, 400);
    assert!(
        r.text().starts_with("Failed to parse body: "),
        "{}",
        r.text()
    );
    let r = txn(
        a,
        &json!([{"KV": {"Verb": "set", "Key": "k", "Value": "***not base64***"}}]),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Failed to parse body: "));
    let r = txn(
        a,
        &json!([{"KV": {"Verb": "set", "Key": "k", "Flags": "7"}}]),
    );
    assert_eq!(r.status, 400);

    // Field names match case-insensitively, as Go's JSON decoding does.
    let r = txn(
        a,
        &json!([{"kv": {"verb": "set", "key": "lower", "value": b64(b"v")}}]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(a, "/v1/kv/lower?raw").text(), "v");

    // An empty key is refused before anything runs.
    let r = txn(a, &json!([kv("get", "")]));
    assert_eq!(r.status, 409);
    assert_eq!(
        r.json()["Errors"],
        json!([{"OpIndex": 0, "What": "Must provide key"}])
    );

    // A value over the KV limit is 413.
    let big = b64(&vec![0u8; 512 * 1024 + 1]);
    let r = txn(
        a,
        &json!([{"KV": {"Verb": "set", "Key": "big", "Value": big}}]),
    );
    assert_eq!(r.status, 413);
}

#[test]
fn status_report_with_cas_through_txn_and_kv() {
    // kiln-firstboot's pattern: create the report with cas=0, update it with cas=ModifyIndex.
    let c = TestServer::start();
    let a = c.addr();
    let key = "kiln/nodes/web/web-01";
    assert_eq!(
        put(
            a,
            &format!("/v1/kv/{key}?cas=0"),
            b"{\"state\":\"booting\"}"
        )
        .text(),
        "true"
    );
    let m = modify_index(a, key);
    let r = txn(
        a,
        &json!([{"KV": {"Verb": "cas", "Key": key, "Value": b64(b"{\"state\":\"done\"}"), "Index": m}}]),
    );
    assert_eq!(r.status, 200);
    let m2 = r.json()["Results"][0]["KV"]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert!(m2 > m);
    assert_eq!(modify_index(a, key), m2);
    // A second writer with the old index loses, with 200 false.
    assert_eq!(
        put(a, &format!("/v1/kv/{key}?cas={m}"), b"late").text(),
        "false"
    );
}
