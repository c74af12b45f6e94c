//! A raw HTTP/1.1 client over `std::net::TcpStream`: one request per connection, so
//! tests see status, headers (as sent, names included) and body exactly.

#![allow(dead_code, unused_imports)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub use consul_test_server::{AclConfig, Config, DefaultPolicy, Fault, Policy, TestServer};

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
    /// `X-Consul-Index` as a number (panics if absent).
    pub fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
            .parse()
            .expect("numeric X-Consul-Index")
    }
    /// Asserts Consul's read headers: an index that is not 0, a known leader, no lag.
    pub fn assert_read_meta(&self) {
        assert!(self.index() >= 1, "X-Consul-Index must never be 0");
        assert_eq!(self.header("X-Consul-KnownLeader"), Some("true"));
        assert_eq!(self.header("X-Consul-LastContact"), Some("0"));
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    try_request(addr, method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "PUT" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw)))
    })
}

fn parse(raw: &[u8]) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let cl = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.clone());
    if let Some(cl) = cl {
        body.truncate(cl.parse().ok()?);
    } else if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let e = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..e]).ok()?.trim(), 16).ok()?;
        b = &b[e + 2..];
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

pub fn get(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "GET", target, &[], b"")
}
pub fn put(addr: SocketAddr, target: &str, body: &[u8]) -> Resp {
    request(addr, "PUT", target, &[], body)
}
pub fn delete(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "DELETE", target, &[], b"")
}
pub fn get_tok(addr: SocketAddr, target: &str, token: &str) -> Resp {
    request(addr, "GET", target, &[("X-Consul-Token", token)], b"")
}
pub fn put_tok(addr: SocketAddr, target: &str, token: &str, body: &[u8]) -> Resp {
    request(addr, "PUT", target, &[("X-Consul-Token", token)], body)
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// The one entry of a single-key GET.
pub fn entry(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v.as_array().map(|a| a.len()), Some(1), "{v}");
    v[0].clone()
}

/// ModifyIndex of a key (via the API).
pub fn modify_index(addr: SocketAddr, key: &str) -> u64 {
    entry(&get(addr, &format!("/v1/kv/{key}")))["ModifyIndex"]
        .as_u64()
        .unwrap()
}
