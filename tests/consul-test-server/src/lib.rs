//! A Consul-compatible HTTP test server for Kiln's tests (never shipped).
//!
//! Consul itself cannot be installed where Kiln's tests run, so this crate implements
//! the part of Consul's HTTP API that Kiln uses — KV (single, `?recurse`, `?raw`,
//! `?keys`, blocking queries, check-and-set, sessions and locks), `/v1/txn`,
//! `/v1/status/leader`, `/v1/agent/service/register` — following Consul's own code
//! (`agent/kvs_endpoint.go`, `agent/http.go`, `agent/consul/state/kvs.go`, ...) and the
//! Consul KV HTTP API (https://developer.hashicorp.com/consul/api-docs/kv). Client code is written
//! against real Consul; this server is meant to answer exactly as Consul would.
//!
//! Outside the Consul API it offers test controls: fault injection (status codes,
//! garbage JSON, delays, dropped connections, refusing connections for a while), a
//! request log, seeding, and switching ACLs on — through the library
//! ([`Controller`]) or over HTTP under `/_test/` (see [`server`]).
//!
//! From blocking test code:
//!
//! ```no_run
//! use consul_test_server::{Fault, TestServer};
//! let consul = TestServer::start();
//! consul.put("kiln/hostgroups/web/config", b"{}");
//! consul.add_fault(Fault::status(503).path_prefix("/v1/kv/").times(2));
//! let url = consul.url(); // http://127.0.0.1:PORT
//! # let _ = url;
//! assert_eq!(consul.requests().len(), 0);
//! ```

pub mod acl;
mod api;
pub mod control;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;

use std::net::SocketAddr;

pub use acl::{AclConfig, DefaultPolicy, Policy, Rules, Token};
pub use api::Service;
pub use control::{Fault, FaultKind, RequestRecord, TokenSource};
pub use server::Snapshot;
pub use server::{start, Controller, Handle, TestServer};
pub use store::{Entry as KvEntry, Session};
pub use tls::{TestPki, TlsConfig};

/// Consul's default `kv_max_value_size` (512 KiB).
pub const KV_MAX_VALUE_SIZE: u64 = 512 * 1024;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen; must be a loopback address. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// ACLs: `None` (the default) means ACLs are disabled and tokens are ignored.
    pub acl: Option<AclConfig>,
    /// Entries written at start, one index each, in order.
    pub seed: Vec<SeedEntry>,
    pub datacenter: String,
    /// The agent's node name (sessions default to it).
    pub node_name: String,
    pub kv_max_value_size: u64,
    pub txn_max_req_len: u64,
    /// The index before the first write (a real cluster's first KV write never has
    /// index 1). The first write takes `initial_index + 1`.
    pub initial_index: u64,
    /// Consul's `session_ttl_min` (default 10s): the shortest session TTL accepted.
    pub session_ttl_min: std::time::Duration,
    /// HTTPS instead of HTTP (Consul's `tls` settings); `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            acl: None,
            seed: Vec::new(),
            datacenter: "dc1".into(),
            node_name: "consul-test-server".into(),
            kv_max_value_size: KV_MAX_VALUE_SIZE,
            txn_max_req_len: KV_MAX_VALUE_SIZE,
            initial_index: 10,
            session_ttl_min: std::time::Duration::from_secs(10),
            tls: None,
        }
    }
}

impl Config {
    pub fn with_acl(mut self, acl: AclConfig) -> Config {
        self.acl = Some(acl);
        self
    }
    /// Adds seed entries from JSON (see [`parse_seed`]).
    pub fn with_seed_json(mut self, json: &str) -> Result<Config, String> {
        self.seed.extend(parse_seed(json)?);
        Ok(self)
    }
    pub fn with_tls(mut self, tls: TlsConfig) -> Config {
        self.tls = Some(tls);
        self
    }
    pub fn with_seed(mut self, key: &str, value: &[u8]) -> Config {
        self.seed.push(SeedEntry {
            key: key.into(),
            value: value.to_vec(),
            flags: 0,
        });
        self
    }
}

/// One entry to write at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
}

/// Parses seed data. Two forms are accepted:
///
/// * `consul kv export` output: `[{"key": "a/b", "flags": 0, "value": "<base64>"}, ...]`
/// * an object of keys to UTF-8 values: `{"a/b": "text", "a/c": "{\"json\": true}"}`
pub fn parse_seed(json: &str) -> Result<Vec<SeedEntry>, String> {
    use base64::Engine;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("seed: {e}"))?;
    let mut out = Vec::new();
    match v {
        serde_json::Value::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                let o = it
                    .as_object()
                    .ok_or_else(|| format!("seed: item {i} is not an object"))?;
                let get = |n: &str| {
                    o.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v)
                };
                let key = get("key")
                    .and_then(|k| k.as_str())
                    .ok_or_else(|| format!("seed: item {i} has no string \"key\""))?
                    .to_string();
                let value = match get("value") {
                    None | Some(serde_json::Value::Null) => Vec::new(),
                    Some(serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| format!("seed: item {i} ({key}): value is not base64: {e}"))?,
                    Some(_) => {
                        return Err(format!(
                            "seed: item {i} ({key}): value must be a base64 string"
                        ))
                    }
                };
                let flags = match get("flags") {
                    None | Some(serde_json::Value::Null) => 0,
                    Some(f) => f
                        .as_u64()
                        .ok_or_else(|| format!("seed: item {i} ({key}): bad flags"))?,
                };
                out.push(SeedEntry { key, value, flags });
            }
        }
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("seed: value of {k:?} must be a string"))?;
                out.push(SeedEntry {
                    key: k,
                    value: s.as_bytes().to_vec(),
                    flags: 0,
                });
            }
        }
        _ => return Err("seed: expected an array (consul kv export) or an object".into()),
    }
    for e in &out {
        if e.key.is_empty() || e.key.contains("..") {
            return Err(format!("seed: invalid key {:?}", e.key));
        }
    }
    Ok(out)
}
