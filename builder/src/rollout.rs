//! `kiln rollout`: follow a rolling replacement through the reports kiln-firstboot writes to
//! Consul at `kiln/nodes/<hostgroup>/<hostname>` (JSON: hostgroup, hostname, version,
//! bundle_sha256, result `success`|`failure`, exit_code, started_at, finished_at, steps, error).
//!
//! `wait` uses Consul blocking queries on the prefix (`?recurse&index=N&wait=D`, the index from
//! the previous answer's `X-Consul-Index`), so it sends one request per change (or per `wait`),
//! never a busy poll. Written against Consul's HTTP API (https://developer.hashicorp.com/consul/api-docs/kv):
//! a 404 on the prefix is "no reports yet" and still carries an index; an index that goes
//! backwards (a restored snapshot) restarts from 0; errors are retried with backoff until the
//! timeout, except those no retry can change ([`Final`]): a 4xx such as a 403, Consul's 500
//! `invalid key name`, a TLS certificate refused either way.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine;
use kiln_apply::http::{chain, tls_refusal};
use kiln_apply::retry::Backoff;
use serde::{Deserialize, Serialize};

/// `kiln rollout wait`: a node of the version reported failure.
pub const EXIT_NODE_FAILED: i32 = 3;
/// `kiln rollout wait`: the timeout passed before enough nodes succeeded.
pub const EXIT_TIMEOUT: i32 = 4;

/// One node's report, as kiln-firstboot writes it (one type for both sides).
pub use kiln_apply::report::NodeReport;

/// An error that will be the same however often the request is sent: `wait` stops at once.
#[derive(Debug)]
pub struct Final(pub String);

impl std::fmt::Display for Final {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Final {}

/// The TLS side of the client (`kiln rollout`'s files, read).
#[derive(Default)]
pub struct Tls<'a> {
    /// PEM CA certificates: the only roots trusted (else the system's).
    pub ca_pem: Option<&'a [u8]>,
    /// PEM client certificate (chain) and key, for an agent with `verify_incoming`.
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// A Consul KV client for the reports.
pub struct Consul {
    client: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
    /// Requests sent (each attempt).
    pub requests: u32,
}

/// One read of the prefix.
pub struct Reports {
    pub nodes: Vec<NodeReport>,
    /// `X-Consul-Index` of the answer.
    pub index: u64,
}

impl Consul {
    /// A client for `addr`: an `http(s)://` URL, or `host:port` read as Consul's own tools
    /// read it (`http_ssl`: `$CONSUL_HTTP_SSL`).
    pub fn new(
        addr: &str,
        http_ssl: Option<&str>,
        token: Option<String>,
        tls: Tls<'_>,
    ) -> Result<Consul> {
        let addr = kiln_apply::dynamic::consul_url(addr, http_ssl).map_err(|e| anyhow!(e))?;
        let client = kiln_apply::http::client(
            concat!("kiln/", env!("CARGO_PKG_VERSION")),
            kiln_apply::http::TlsFiles {
                ca: tls.ca_pem,
                client: tls.client,
            },
            Duration::from_secs(10),
            0,
        )
        .map_err(|e| anyhow!("Consul {e}"))?;
        Ok(Consul {
            client,
            base: addr.trim_end_matches('/').to_string(),
            token,
            requests: 0,
        })
    }

    /// Reads every report under `kiln/nodes/<hostgroup>/`. With `index`, a blocking query:
    /// Consul answers when something under the prefix changed past `index`, or after `wait`.
    pub fn read(&mut self, hostgroup: &str, index: Option<(u64, Duration)>) -> Result<Reports> {
        let prefix = format!("kiln/nodes/{hostgroup}/");
        let mut url = format!("{}/v1/kv/{prefix}?recurse", self.base);
        // Consul adds up to wait/16 of jitter; leave room for it and the network.
        let mut timeout = Duration::from_secs(30);
        if let Some((i, wait)) = index {
            url.push_str(&format!("&index={i}&wait={}ms", wait.as_millis().max(1)));
            timeout = wait + wait / 16 + Duration::from_secs(15);
        }
        let mut req = self.client.get(&url).timeout(timeout);
        if let Some(t) = &self.token {
            let mut v = reqwest::header::HeaderValue::from_str(t)
                .map_err(|_| anyhow!("the Consul token holds characters a header cannot"))?;
            v.set_sensitive(true);
            req = req.header("X-Consul-Token", v);
        }
        self.requests += 1;
        let resp = req.send().map_err(|e| {
            if tls_refusal(&e) {
                anyhow!(Final(format!(
                    "GET {prefix}: TLS: {} (a certificate refused is not retried: check the CA and client certificate files)",
                    chain(&e)
                )))
            } else {
                anyhow!("GET {prefix}: {}", chain(&e))
            }
        })?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = Vec::new();
        resp.take(64 << 20)
            .read_to_end(&mut body)
            .map_err(|e| anyhow!("GET {prefix}: reading the answer: {e}"))?;
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let nodes = match status {
            200 => parse(&prefix, &body)?,
            404 => Vec::new(),
            403 => bail!(Final(format!(
                "GET {prefix}: HTTP 403 (the ACL token may not read it; with acl.enable_key_list_policy it needs list on the prefix): {text}"
            ))),
            500 if text.starts_with("invalid key name") => bail!(Final(format!(
                "GET {prefix}: HTTP 500: {text}: this Consul refuses the key name, which no retry can change"
            ))),
            s @ 400..=499 if s != 408 && s != 429 => {
                bail!(Final(format!("GET {prefix}: HTTP {s}: {text}")))
            }
            s => bail!("GET {prefix}: HTTP {s}: {text}"),
        };
        let index = index
            .ok_or_else(|| anyhow!("GET {prefix}: no X-Consul-Index header (is this Consul?)"))?;
        Ok(Reports { nodes, index })
    }
}

#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
}

/// Consul's KV JSON into reports, sorted by key. A value that is not a report is shown as a
/// node with result `unreadable` (counted neither as success nor failure).
pub fn parse(prefix: &str, body: &[u8]) -> Result<Vec<NodeReport>> {
    let entries: Vec<KvEntry> = serde_json::from_slice(body)
        .map_err(|e| anyhow!("GET {prefix}: the answer is not Consul's KV JSON: {e}"))?;
    let mut out = Vec::new();
    for e in entries {
        let rest = e.key.strip_prefix(prefix).unwrap_or(&e.key);
        if rest.is_empty() || rest.contains('/') {
            continue; // the prefix itself, or something deeper: not a node's report
        }
        let raw = e
            .value
            .as_deref()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .unwrap_or_default();
        let mut r = serde_json::from_slice::<NodeReport>(&raw).unwrap_or_else(|_| NodeReport {
            key: String::new(),
            hostname: String::new(),
            hostgroup: String::new(),
            version: 0,
            bundle_sha256: String::new(),
            result: "unreadable".into(),
            exit_code: 0,
            started_at: String::new(),
            finished_at: String::new(),
            error: Some("the value is not a kiln-firstboot report".into()),
            steps: Vec::new(),
            health: None,
            firstboot: String::new(),
            modify_index: 0,
        });
        r.key = e.key.clone();
        if r.hostname.is_empty() {
            r.hostname = rest.to_string();
        }
        r.modify_index = e.modify_index;
        out.push(r);
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Counts per version and result.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Counts {
    pub success: usize,
    pub failure: usize,
    pub other: usize,
}

pub fn by_version(nodes: &[NodeReport]) -> BTreeMap<u64, Counts> {
    let mut m: BTreeMap<u64, Counts> = BTreeMap::new();
    for n in nodes {
        let c = m.entry(n.version).or_default();
        if n.succeeded() {
            c.success += 1;
        } else if n.failed() {
            c.failure += 1;
        } else {
            c.other += 1;
        }
    }
    m
}

/// Where a rollout of `version` stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// At least `count` nodes of the version succeeded.
    Done(Vec<NodeReport>),
    /// A node of the version, or one that refused its bundle before reading a version
    /// (version 0), reported failure.
    Failed(Vec<NodeReport>),
    /// Not yet: this many succeeded.
    Waiting(usize),
}

pub fn verdict(nodes: &[NodeReport], version: u64, count: usize) -> Verdict {
    let failed: Vec<NodeReport> = nodes
        .iter()
        .filter(|n| n.failed() && (n.version == version || n.version == 0))
        .cloned()
        .collect();
    if !failed.is_empty() {
        return Verdict::Failed(failed);
    }
    let ok: Vec<NodeReport> = nodes
        .iter()
        .filter(|n| n.succeeded() && n.version == version)
        .cloned()
        .collect();
    if ok.len() >= count {
        Verdict::Done(ok)
    } else {
        Verdict::Waiting(ok.len())
    }
}

/// How a wait ended.
pub struct Waited {
    pub verdict: Verdict,
    pub nodes: Vec<NodeReport>,
    pub requests: u32,
    pub seconds: f64,
    /// The last error when the timeout passed while Consul could not be read.
    pub last_error: Option<String>,
}

/// Blocks until `count` nodes of `version` report success, one reports failure, or `timeout`
/// passes. `progress` gets a line whenever the counts change. A [`Final`] error (a 403, a
/// certificate refused) ends it at once: waiting cannot change it.
pub fn wait(
    consul: &mut Consul,
    hostgroup: &str,
    version: u64,
    count: usize,
    timeout: Duration,
    max_wait: Duration,
    progress: &dyn Fn(&str),
) -> Result<Waited> {
    let start = Instant::now();
    let end = start + timeout;
    let mut index: u64 = 0;
    let mut nodes: Vec<NodeReport> = Vec::new();
    let first = Duration::from_millis(500);
    let mut backoff = Backoff::new(first, Duration::from_secs(10));
    let mut last_error: Option<String> = None;
    let mut last_line = String::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let n = match verdict(&nodes, version, count) {
                Verdict::Waiting(n) => n,
                _ => 0,
            };
            return Ok(Waited {
                verdict: Verdict::Waiting(n),
                nodes,
                requests: consul.requests,
                seconds: start.elapsed().as_secs_f64(),
                last_error,
            });
        }
        // The first read returns at once; the next ones block on the index it gave.
        let q = (index > 0).then(|| (index, max_wait.min(left).max(Duration::from_millis(1))));
        match consul.read(hostgroup, q) {
            Ok(r) => {
                last_error = None;
                backoff.reset(first);
                // An index that goes backwards (a restored snapshot, another cluster) restarts.
                index = if r.index < index { 0 } else { r.index.max(1) };
                nodes = r.nodes;
                let v = verdict(&nodes, version, count);
                let line = summary_line(&nodes, version, count);
                if line != last_line {
                    progress(&line);
                    last_line = line;
                }
                if !matches!(v, Verdict::Waiting(_)) {
                    return Ok(Waited {
                        verdict: v,
                        nodes,
                        requests: consul.requests,
                        seconds: start.elapsed().as_secs_f64(),
                        last_error: None,
                    });
                }
            }
            Err(e) if e.downcast_ref::<Final>().is_some() => return Err(e),
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(&msg) {
                    progress(&format!("reading Consul: {msg}; retrying"));
                }
                last_error = Some(msg);
                if let Some(pause) = backoff.next(end) {
                    std::thread::sleep(pause);
                }
            }
        }
    }
}

/// `version 7: 2/3 succeeded, 0 failed; other versions: 6: 4 ok`
pub fn summary_line(nodes: &[NodeReport], version: u64, count: usize) -> String {
    let counts = by_version(nodes);
    let mine = counts.get(&version).cloned().unwrap_or_default();
    let unknown = counts.get(&0).map(|c| c.failure).unwrap_or(0);
    let others: Vec<String> = counts
        .iter()
        .filter(|(v, _)| **v != version && **v != 0)
        .map(|(v, c)| format!("{v}: {} ok, {} failed", c.success, c.failure))
        .collect();
    format!(
        "version {version}: {}/{count} succeeded, {} failed{}{}",
        mine.success,
        mine.failure,
        if unknown > 0 {
            format!(", {unknown} refused before reading a version")
        } else {
            String::new()
        },
        if others.is_empty() {
            String::new()
        } else {
            format!("; other versions: {}", others.join(", "))
        }
    )
}

/// The status table.
pub fn table(hostgroup: &str, nodes: &[NodeReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let counts = by_version(nodes);
    let _ = writeln!(out, "hostgroup {hostgroup}: {} node(s)", nodes.len());
    for (v, c) in counts.iter().rev() {
        let _ = writeln!(
            out,
            "  version {}: {} success, {} failure{}",
            if *v == 0 {
                "unknown".to_string()
            } else {
                v.to_string()
            },
            c.success,
            c.failure,
            if c.other > 0 {
                format!(", {} other", c.other)
            } else {
                String::new()
            }
        );
    }
    if nodes.is_empty() {
        return out;
    }
    let w = nodes
        .iter()
        .map(|n| n.hostname.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "{:w$}  {:>7}  {:8}  {:9}  {:>4}  {:20}  ERROR",
        "NODE", "VERSION", "RESULT", "HEALTH", "EXIT", "FINISHED"
    );
    for n in nodes {
        let err = n
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>();
        let _ = writeln!(
            out,
            "{:w$}  {:>7}  {:8}  {:9}  {:>4}  {:20}  {err}",
            n.hostname,
            if n.version == 0 {
                "-".to_string()
            } else {
                n.version.to_string()
            },
            n.result,
            n.health.as_ref().map(|h| h.status.as_str()).unwrap_or("-"),
            n.exit_code,
            n.finished_at
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, version: u64, result: &str) -> NodeReport {
        NodeReport {
            key: format!("kiln/nodes/web/{host}"),
            hostname: host.into(),
            hostgroup: "web".into(),
            version,
            bundle_sha256: String::new(),
            result: result.into(),
            exit_code: if result == "success" { 0 } else { 21 },
            started_at: String::new(),
            finished_at: String::new(),
            error: None,
            steps: Vec::new(),
            health: None,
            firstboot: String::new(),
            modify_index: 1,
        }
    }

    #[test]
    fn verdicts() {
        let n = vec![node("a", 7, "success"), node("b", 6, "failure")];
        assert_eq!(verdict(&n, 7, 2), Verdict::Waiting(1));
        assert!(matches!(verdict(&n, 7, 1), Verdict::Done(v) if v.len() == 1));
        // An old version's failure does not stop this rollout; an unknown version's does.
        let mut n2 = n.clone();
        n2.push(node("c", 0, "failure"));
        assert!(matches!(verdict(&n2, 7, 1), Verdict::Failed(v) if v[0].hostname == "c"));
        n2.push(node("d", 7, "failure"));
        assert!(matches!(verdict(&n2, 7, 1), Verdict::Failed(v) if v.len() == 2));
    }

    #[test]
    fn kv_json_is_parsed_and_odd_values_are_kept_visible() {
        let report = serde_json::json!({"hostgroup":"web","hostname":"web-1","version":7,
            "bundle_sha256":"ab","result":"success","exit_code":0,"started_at":"s","finished_at":"f",
            "steps":[{"name":"fetch","seconds":0.5}],"error":null,"firstboot":"0.1.0"});
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let body = serde_json::json!([
            {"Key":"kiln/nodes/web/web-1","Value": b64(&report.to_string()),"ModifyIndex":5},
            {"Key":"kiln/nodes/web/web-2","Value": b64("garbage"),"ModifyIndex":6},
            {"Key":"kiln/nodes/web/deeper/x","Value": null,"ModifyIndex":7}
        ]);
        let n = parse("kiln/nodes/web/", body.to_string().as_bytes()).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].version, 7);
        assert_eq!(n[0].modify_index, 5);
        assert_eq!(n[0].steps[0].name, "fetch");
        assert_eq!(n[1].result, "unreadable");
        assert_eq!(n[1].hostname, "web-2");
        let t = table("web", &n);
        assert!(t.contains("version 7: 1 success, 0 failure"), "{t}");
    }
}
