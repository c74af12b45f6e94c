//! `GET /v1/status/leader` and `PUT /v1/agent/service/register`.

use crate::common::*;

#[test]
fn status_leader_is_a_json_string() {
    let c = TestServer::start();
    let r = get(c.addr(), "/v1/status/leader");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "\"127.0.0.1:8300\"");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!("127.0.0.1:8300"));
    let r = get(c.addr(), "/v1/status/peers");
    assert_eq!(r.json(), serde_json::json!(["127.0.0.1:8300"]));
}

#[test]
fn service_register_answers_200_empty() {
    let c = TestServer::start();
    let a = c.addr();
    let body = br#"{"Name": "kiln-firstboot", "ID": "kiln-firstboot-web-01", "Port": 9100,
                    "Tags": ["web", "v2"], "Check": {"TTL": "30s"}}"#;
    let r = put(a, "/v1/agent/service/register", body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Length"), Some("0"));
    let svcs = c.services();
    assert_eq!(svcs.len(), 1);
    assert_eq!(svcs[0].id, "kiln-firstboot-web-01");
    assert_eq!(svcs[0].name, "kiln-firstboot");
    assert_eq!(svcs[0].port, 9100);
    assert_eq!(svcs[0].tags, ["web", "v2"]);
    let r = get(a, "/v1/agent/services");
    assert_eq!(
        r.json()["kiln-firstboot-web-01"]["Service"],
        "kiln-firstboot"
    );
    // Without an ID the name is the ID; re-registering replaces.
    assert_eq!(
        put(a, "/v1/agent/service/register", br#"{"Name": "plain"}"#).status,
        200
    );
    assert_eq!(
        put(
            a,
            "/v1/agent/service/register",
            br#"{"Name": "plain", "Port": 1}"#
        )
        .status,
        200
    );
    assert_eq!(c.services().len(), 2);
    assert_eq!(
        put(a, "/v1/agent/service/deregister/plain", b"").status,
        200
    );
    assert_eq!(c.services().len(), 1);
}

#[test]
fn service_register_refusals() {
    let c = TestServer::start();
    let a = c.addr();
    let r = put(
        a,
        "/v1/agent/service/register",
        br#"{"ID": "x", "Port": 1}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Missing service name");
    let r = put(a, "/v1/agent/service/register", b"{oops");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Request decode failed: "));
    let r = put(
        a,
        "/v1/agent/service/register",
        br#"{"Name": "s", "Check": {"HTTP": "http://127.0.0.1/"}}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks");
    let r = put(
        a,
        "/v1/agent/service/register",
        br#"{"Name": "s", "Check": {}}"#,
    );
    assert_eq!(r.status, 400);
    let r = get(a, "/v1/agent/service/register");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("OPTIONS,PUT"));
    assert!(c.services().is_empty());
}
