//! ACLs: token precedence, unknown tokens, denials, filtering of recursive and keys reads.

use crate::common::*;

use serde_json::json;

const ACL: &str = r#"{
  "default_policy": "deny",
  "management_token": "root",
  "anonymous": {"key_prefix": {"public/": "read"}},
  "tokens": [
    {"secret": "reader", "accessor": "11111111-2222-3333-4444-555555555555",
     "key_prefix": {"kiln/": "read", "kiln/secret/": "deny"}},
    {"secret": "writer", "key_prefix": {"kiln/": "write", "kiln/nodes/locked/": "read"}, "session": "write"},
    {"secret": "nothing", "key_prefix": {"unrelated/": "read"}}
  ]
}"#;

fn server() -> TestServer {
    let c = TestServer::start_with(Config::default().with_acl(AclConfig::from_json(ACL).unwrap()))
        .unwrap();
    for (k, v) in [
        ("kiln/a", "1"),
        ("kiln/b", "2"),
        ("kiln/secret/x", "3"),
        ("public/p", "4"),
    ] {
        c.put(k, v.as_bytes());
    }
    c
}

#[test]
fn token_precedence_query_then_header_then_bearer() {
    let c = server();
    let a = c.addr();
    // ?token= wins over the header.
    let r = request(
        a,
        "GET",
        "/v1/kv/kiln/a?token=reader",
        &[("X-Consul-Token", "nothing")],
        b"",
    );
    assert_eq!(r.status, 200);
    // The header wins over Authorization.
    let r = request(
        a,
        "GET",
        "/v1/kv/kiln/a",
        &[
            ("X-Consul-Token", "reader"),
            ("Authorization", "Bearer nothing"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = request(
        a,
        "GET",
        "/v1/kv/kiln/a",
        &[
            ("X-Consul-Token", "nothing"),
            ("Authorization", "Bearer reader"),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    // Bearer alone works; the scheme is case-insensitive; other schemes are not tokens.
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/kv/kiln/a",
            &[("Authorization", "Bearer reader")],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/kv/kiln/a",
            &[("Authorization", "bearer reader")],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/kv/kiln/a",
            &[("Authorization", "Basic reader")],
            b""
        )
        .status,
        403
    );
    // An empty ?token= falls through to the header.
    assert_eq!(
        request(
            a,
            "GET",
            "/v1/kv/kiln/a?token=",
            &[("X-Consul-Token", "reader")],
            b""
        )
        .status,
        200
    );
    // The request log says where the token came from, never what it was.
    let log = c.requests();
    assert_eq!(
        log[0].token_source,
        Some(consul_test_server::TokenSource::Query)
    );
    assert_eq!(
        log[1].token_source,
        Some(consul_test_server::TokenSource::Header)
    );
    assert_eq!(
        log[3].token_source,
        Some(consul_test_server::TokenSource::Bearer)
    );
    assert_eq!(log.len(), 7);
    assert!(
        !log[5].token_present,
        "an Authorization: Basic header is no token"
    );
    assert!(log
        .iter()
        .enumerate()
        .all(|(i, r)| i == 5 || r.token_present));
}

#[test]
fn unknown_token_is_403_acl_not_found() {
    let c = server();
    let a = c.addr();
    for r in [
        get_tok(a, "/v1/kv/kiln/a", "who-is-this"),
        get_tok(a, "/v1/kv/kiln/?recurse", "who-is-this"),
        put_tok(a, "/v1/kv/kiln/a", "who-is-this", b"x"),
        put_tok(a, "/v1/txn", "who-is-this", b"[]"),
        put_tok(a, "/v1/session/create", "who-is-this", b""),
    ] {
        assert_eq!(r.status, 403);
        assert_eq!(r.text(), "ACL not found");
        assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    }
}

#[test]
fn denied_reads_and_writes_are_403_permission_denied() {
    let c = server();
    let a = c.addr();
    let r = get_tok(a, "/v1/kv/kiln/secret/x", "reader");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        "Permission denied: token with AccessorID '11111111-2222-3333-4444-555555555555' lacks permission 'key:read' on \"kiln/secret/x\""
    );
    // Denied even when the key does not exist.
    assert_eq!(get_tok(a, "/v1/kv/kiln/secret/none", "reader").status, 403);
    let r = put_tok(a, "/v1/kv/kiln/a", "reader", b"x");
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("Permission denied"), "{}", r.text());
    assert!(r.text().contains("'key:write'"));
    // Anonymous (no token): the anonymous token's rules.
    assert_eq!(get(a, "/v1/kv/public/p").status, 200);
    let r = get(a, "/v1/kv/kiln/a");
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        "Permission denied: anonymous token lacks permission 'key:read' on \"kiln/a\""
    );
    // The default policy shows in every answer.
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("deny"));
    // The management token may do anything.
    assert_eq!(put_tok(a, "/v1/kv/anything", "root", b"x").text(), "true");
    // Longest prefix wins: writer may write kiln/ but only read kiln/nodes/locked/.
    assert_eq!(
        put_tok(a, "/v1/kv/kiln/nodes/web/h1", "writer", b"x").text(),
        "true"
    );
    assert_eq!(
        put_tok(a, "/v1/kv/kiln/nodes/locked/h1", "writer", b"x").status,
        403
    );
}

#[test]
fn recursive_reads_filter_instead_of_refusing() {
    let c = server();
    let a = c.addr();
    let r = get_tok(a, "/v1/kv/kiln/?recurse", "reader");
    assert_eq!(r.status, 200);
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["kiln/a", "kiln/b"]);
    assert_eq!(r.header("X-Consul-Results-Filtered-By-Acls"), Some("true"));
    // The index still counts what was filtered out.
    let full = get_tok(a, "/v1/kv/kiln/?recurse", "root");
    assert_eq!(full.json().as_array().unwrap().len(), 3);
    assert_eq!(r.index(), full.index());
    // All filtered out: 404, not 403, with an index.
    let r = get_tok(a, "/v1/kv/kiln/secret/?recurse", "reader");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    r.assert_read_meta();
    let r = get_tok(a, "/v1/kv/kiln/?recurse", "nothing");
    assert_eq!(r.status, 404);
    // Anonymous: filtered, and never told so.
    let r = get(a, "/v1/kv/?recurse");
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert!(!r.has_header("X-Consul-Results-Filtered-By-Acls"));
}

#[test]
fn keys_reads_filter_too() {
    let c = server();
    let a = c.addr();
    let r = get_tok(a, "/v1/kv/kiln/?keys", "reader");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!(["kiln/a", "kiln/b"]));
    let r = get_tok(a, "/v1/kv/kiln/?keys&separator=/", "reader");
    assert_eq!(r.json(), json!(["kiln/a", "kiln/b"]));
    let r = get_tok(a, "/v1/kv/kiln/secret/?keys", "reader");
    assert_eq!(r.status, 404);
    r.assert_read_meta();
}

#[test]
fn recursive_delete_needs_write_on_everything_below() {
    let c = server();
    let a = c.addr();
    c.put("kiln/nodes/locked/h", b"x");
    let r = request(
        a,
        "DELETE",
        "/v1/kv/kiln/?recurse",
        &[("X-Consul-Token", "writer")],
        b"",
    );
    assert_eq!(r.status, 403);
    assert!(c.get("kiln/a").is_some());
    let r = request(
        a,
        "DELETE",
        "/v1/kv/kiln/nodes/web/?recurse",
        &[("X-Consul-Token", "writer")],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn txn_denials_roll_back_and_reads_are_filtered() {
    let c = server();
    let a = c.addr();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "kiln/ok", "Value": b64(b"1")}},
        {"KV": {"Verb": "set", "Key": "kiln/nodes/locked/x", "Value": b64(b"1")}},
    ]);
    let r = put_tok(a, "/v1/txn", "writer", ops.to_string().as_bytes());
    assert_eq!(r.status, 409);
    let v = r.json();
    assert!(v["Results"].is_null());
    assert_eq!(v["Errors"][0]["OpIndex"], 1);
    assert!(
        v["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .starts_with("Permission denied"),
        "{v}"
    );
    assert!(c.get("kiln/ok").is_none());
    // get-tree leaves out what the token may not read.
    let r = put_tok(
        a,
        "/v1/txn",
        "reader",
        json!([{"KV": {"Verb": "get-tree", "Key": "kiln/"}}])
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Results"].as_array().unwrap().len(), 2);
}

#[test]
fn sessions_need_session_write() {
    let c = server();
    let a = c.addr();
    let r = put_tok(a, "/v1/session/create", "reader", b"");
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("Permission denied"));
    let r = put_tok(a, "/v1/session/create", "writer", b"");
    assert_eq!(r.status, 200);
}

#[test]
fn without_acls_tokens_are_ignored() {
    let c = TestServer::start();
    let a = c.addr();
    assert_eq!(
        put_tok(a, "/v1/kv/k", "any-token-at-all", b"x").text(),
        "true"
    );
    let r = get_tok(a, "/v1/kv/k", "another");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-Default-Acl-Policy"), Some("allow"));
}

#[test]
fn acls_can_be_switched_on_through_the_library() {
    let c = TestServer::start();
    let a = c.addr();
    c.put("kiln/a", b"1");
    c.set_acl(Some(
        AclConfig::new("root", DefaultPolicy::Deny).with_token("ro", &[("kiln/", Policy::Read)]),
    ));
    assert_eq!(get_tok(a, "/v1/kv/kiln/a", "ro").status, 200);
    assert_eq!(put_tok(a, "/v1/kv/kiln/a", "ro", b"x").status, 403);
    assert_eq!(get_tok(a, "/v1/kv/kiln/a", "bogus").text(), "ACL not found");
    c.set_acl(None);
    assert_eq!(put_tok(a, "/v1/kv/kiln/a", "ro", b"x").status, 200);
}

/// `acl.enable_key_list_policy`: `?recurse` and `?keys` need `list` on the prefix (a `read`
/// rule is not enough), and the 403 names the prefix; single-key reads still need `read` only.
/// Off, the same token reads the prefix (filtered, as before).
#[test]
fn key_list_policy_needs_list_on_the_prefix() {
    let acl = |on: bool| {
        AclConfig::from_json(
            r#"{"default_policy": "deny", "management_token": "root",
                "tokens": [
                  {"secret": "reader", "accessor": "11111111-2222-3333-4444-555555555555",
                   "key_prefix": {"kiln/": "read"}},
                  {"secret": "lister", "key_prefix": {"kiln/": "read", "kiln/apps/": "list",
                                                      "kiln/apps/web/secret/": "deny"}},
                  {"secret": "writer", "key_prefix": {"kiln/": "write"}}]}"#,
        )
        .unwrap()
        .with_key_list_policy(on)
    };
    let c = TestServer::start_with(Config::default().with_acl(acl(true))).unwrap();
    c.put("kiln/apps/web/version", b"1");
    c.put("kiln/apps/web/secret/x", b"2");
    let a = c.addr();

    for target in [
        "/v1/kv/kiln/apps/web/?recurse",
        "/v1/kv/kiln/apps/web/?keys",
    ] {
        let r = get_tok(a, target, "reader");
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        assert_eq!(
            r.text(),
            "Permission denied: token with AccessorID '11111111-2222-3333-4444-555555555555' \
             lacks permission 'key:list' on \"kiln/apps/web/\""
        );
        // A blocking query is refused at once too, not after its wait.
        let t = std::time::Instant::now();
        let r = get_tok(a, &format!("{target}&index=1000&wait=5s"), "reader");
        assert_eq!(r.status, 403);
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
    // `read` still reads single keys.
    assert_eq!(
        get_tok(a, "/v1/kv/kiln/apps/web/version", "reader").status,
        200
    );

    // `list` on a parent prefix lists; what the token may not read is still filtered out.
    let r = get_tok(a, "/v1/kv/kiln/apps/web/?recurse", "lister");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["kiln/apps/web/version"]);
    let r = get_tok(a, "/v1/kv/kiln/apps/?keys&separator=/", "lister");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!(["kiln/apps/web/"]));
    // But not above the `list` rule.
    assert_eq!(get_tok(a, "/v1/kv/kiln/?recurse", "lister").status, 403);
    // `write` implies `list`; the management token may do anything.
    assert_eq!(get_tok(a, "/v1/kv/kiln/?recurse", "writer").status, 200);
    assert_eq!(get_tok(a, "/v1/kv/?recurse", "root").status, 200);
    // The anonymous token is held to the same rule.
    let r = get(a, "/v1/kv/kiln/apps/web/?recurse");
    assert_eq!(r.status, 403);
    assert!(r
        .text()
        .starts_with("Permission denied: anonymous token lacks permission 'key:list'"));

    // The policy off (Consul's default): `read` is enough for recursive reads.
    c.set_acl(Some(acl(false)));
    let r = get_tok(a, "/v1/kv/kiln/apps/web/?recurse", "reader");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().unwrap().len(), 2);
}
