//! Consul: one recursive read per declared prefix (`GET /v1/kv/<prefix>?recurse`), the ACL
//! token in `X-Consul-Token` (read from a file, never from the command line), and the status
//! report written with check-and-set. A 404 on a prefix is "nothing there"; a 403 is a hard
//! error naming the prefix (Consul filters what a token may not read instead of refusing,
//! so a 403 means the token itself is unknown, or the servers set
//! `acl.enable_key_list_policy` and the token lacks `list` on the prefix).

use std::time::{Duration, Instant};

use base64::Engine;

use super::DynamicSource;
use kiln_apply::dynamic::DynamicError;
use kiln_apply::http::{excerpt, sensitive, Http, TlsFiles, Verdict};
use kiln_apply::log::Log;
use kiln_apply::secret::Secret;
use kiln_apply::template::Values;

const NAME: &str = "consul";

/// Keys under a prefix and their values (`None`: the key holds no value).
pub type Kv = Vec<(String, Option<Vec<u8>>)>;

/// The Consul source of one apply.
pub struct Consul {
    http: Http,
    token: Option<Secret>,
    prefixes: Vec<String>,
}

impl Consul {
    /// A client for `addr`. `tls`: the only roots trusted for https, and the client
    /// certificate for an agent with `verify_incoming`.
    pub fn new(
        addr: &str,
        token: Option<Secret>,
        tls: TlsFiles<'_>,
        prefixes: Vec<String>,
        request_timeout: Duration,
    ) -> Result<Consul, DynamicError> {
        Ok(Consul {
            http: Http::new(NAME, addr, tls, request_timeout)?,
            token,
            prefixes,
        })
    }

    fn token_header(&self) -> Result<Option<reqwest::header::HeaderValue>, DynamicError> {
        self.token
            .as_ref()
            .map(|t| sensitive(t.expose_str().trim()))
            .transpose()
    }

    /// Every key under `prefix` and its value (`None` when it holds none). Missing: empty.
    pub fn read_prefix(
        &self,
        prefix: &str,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<Kv, DynamicError> {
        let url = format!("{}?recurse", self.http.url(&format!("kv/{prefix}")));
        let token = self.token_header()?;
        self.http.call(
            &format!("reading prefix {prefix}"),
            deadline,
            log,
            &|c| {
                let r = c.get(&url);
                match &token {
                    Some(t) => r.header("X-Consul-Token", t.clone()),
                    None => r,
                }
            },
            |status, body| match status {
                200 => match parse_kv(prefix, body) {
                    Ok(v) => Verdict::Done(v),
                    Err(why) => Verdict::Retry(why),
                },
                404 => Verdict::Done(Vec::new()),
                403 => Verdict::Fail(DynamicError::Refused {
                    source_name: NAME.into(),
                    detail: format!(
                        "reading prefix {prefix}: HTTP 403{}: the ACL token (--consul-token-file) may not read it",
                        excerpt(body)
                    ),
                }),
                s => Verdict::Fail(DynamicError::Refused {
                    source_name: NAME.into(),
                    detail: format!("reading prefix {prefix}: HTTP {s}{}", excerpt(body)),
                }),
            },
        )
    }

    /// The ModifyIndex of `key`, or 0 when it does not exist.
    fn modify_index(
        &self,
        key: &str,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<u64, DynamicError> {
        let url = self.http.url(&format!("kv/{key}"));
        let token = self.token_header()?;
        self.http.call(
            &format!("reading {key}"),
            deadline,
            log,
            &|c| {
                let r = c.get(&url);
                match &token {
                    Some(t) => r.header("X-Consul-Token", t.clone()),
                    None => r,
                }
            },
            |status, body| match status {
                200 => match serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get(0)?.get("ModifyIndex")?.as_u64())
                {
                    Some(i) => Verdict::Done(i),
                    None => Verdict::Retry(format!("{key}: the answer is not Consul's KV JSON")),
                },
                404 => Verdict::Done(0),
                s => Verdict::Fail(DynamicError::Refused {
                    source_name: NAME.into(),
                    detail: format!("reading {key}: HTTP {s}{}", excerpt(body)),
                }),
            },
        )
    }

    /// Writes `value` at `key` with check-and-set: created if absent (`cas=0`), else replaced
    /// at the index just read; a concurrent change makes it read and try again.
    pub fn put_cas(
        &self,
        key: &str,
        value: &[u8],
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<(), DynamicError> {
        let token = self.token_header()?;
        let mut index = 0;
        for _ in 0..5 {
            let url = format!("{}?cas={index}", self.http.url(&format!("kv/{key}")));
            let written = self.http.call(
                &format!("writing {key}"),
                deadline,
                log,
                &|c| {
                    let r = c.put(&url).body(value.to_vec());
                    match &token {
                        Some(t) => r.header("X-Consul-Token", t.clone()),
                        None => r,
                    }
                },
                |status, body| match (status, std::str::from_utf8(body).map(str::trim)) {
                    (200, Ok("true")) => Verdict::Done(true),
                    (200, Ok("false")) => Verdict::Done(false),
                    (200, _) => Verdict::Retry(format!(
                        "writing {key}: the answer is neither true nor false"
                    )),
                    (s, _) => Verdict::Fail(DynamicError::Refused {
                        source_name: NAME.into(),
                        detail: format!("writing {key}: HTTP {s}{}", excerpt(body)),
                    }),
                },
            )?;
            if written {
                return Ok(());
            }
            index = self.modify_index(key, deadline, log)?;
        }
        Err(DynamicError::Refused {
            source_name: NAME.into(),
            detail: format!("writing {key}: check-and-set lost 5 times in a row"),
        })
    }
}

/// Consul's KV JSON: `[{"Key": ..., "Value": base64 | null, ...}]`, keys outside the prefix
/// ignored (they cannot be asked for anyway).
fn parse_kv(prefix: &str, body: &[u8]) -> Result<Kv, String> {
    let bad =
        |why: &str| format!("reading prefix {prefix}: the answer is not Consul's KV JSON ({why})");
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let items = v.as_array().ok_or_else(|| bad("not a list"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let key = item
            .get("Key")
            .and_then(|k| k.as_str())
            .ok_or_else(|| bad("an entry without Key"))?;
        let value = match item.get("Value") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(b64)) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| bad("a Value that is not base64"))?,
            ),
            Some(_) => return Err(bad("a Value that is not a string")),
        };
        if key.starts_with(prefix) {
            out.push((key.to_string(), value));
        }
    }
    Ok(out)
}

impl DynamicSource for Consul {
    fn name(&self) -> &'static str {
        NAME
    }

    fn fetch(
        &mut self,
        values: &mut Values,
        _redactor: &mut kiln_apply::secret::Redactor,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<(), DynamicError> {
        for prefix in self.prefixes.clone() {
            let t = Instant::now();
            let kv = self.read_prefix(&prefix, deadline, log)?;
            log.info(&format!(
                "consul: {prefix}: {} key(s) ({:.3}s)",
                kv.len(),
                t.elapsed().as_secs_f64()
            ));
            values.consul_prefixes.push(prefix);
            values.consul.extend(kv);
        }
        Ok(())
    }

    fn report(
        &mut self,
        key: &str,
        body: &[u8],
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<(), DynamicError> {
        self.put_cas(key, body, deadline, log)
    }

    fn requests(&self) -> u32 {
        self.http.requests()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consul_test_server::{AclConfig, Config, DefaultPolicy, Fault, Policy, TestServer};

    fn deadline(secs: u64) -> Instant {
        Instant::now() + Duration::from_secs(secs)
    }

    fn client(url: &str, token: Option<&str>) -> Consul {
        Consul::new(
            url,
            token.map(Secret::new),
            TlsFiles::default(),
            vec!["kiln/apps/web/".into()],
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[test]
    fn one_recursive_request_per_prefix() {
        let consul = TestServer::start();
        consul.put("kiln/apps/web/version", b"1.2.3");
        consul.put("kiln/apps/web/env/A", b"");
        consul.put("kiln/apps/webby/x", b"no");
        let mut c = client(&consul.url(), None);
        let mut v = Values::default();
        c.fetch(
            &mut v,
            &mut Default::default(),
            deadline(5),
            &kiln_apply::log::Quiet,
        )
        .unwrap();
        assert_eq!(
            v.consul.get("kiln/apps/web/version").unwrap().as_deref(),
            Some(&b"1.2.3"[..])
        );
        assert!(v.consul.contains_key("kiln/apps/web/env/A"));
        assert!(!v.consul.contains_key("kiln/apps/webby/x"));
        assert_eq!(consul.count_requests(Some("GET"), "/v1/kv/"), 1);
        assert_eq!(consul.requests()[0].query, "recurse");
        assert_eq!(c.requests(), 1);
    }

    #[test]
    fn a_missing_prefix_is_empty_and_a_403_names_the_prefix() {
        let consul = TestServer::start_with(
            Config::default().with_acl(
                AclConfig::new("root", DefaultPolicy::Deny)
                    .with_token("boot", &[("kiln/", Policy::Read)]),
            ),
        )
        .unwrap();
        let c = client(&consul.url(), Some("boot\n"));
        assert!(c
            .read_prefix("kiln/apps/web/", deadline(5), &kiln_apply::log::Quiet)
            .unwrap()
            .is_empty());
        assert!(consul.requests()[0].token_present);
        let c = client(&consul.url(), Some("wrong-token"));
        let e = c
            .read_prefix("kiln/apps/web/", deadline(5), &kiln_apply::log::Quiet)
            .unwrap_err();
        assert!(matches!(e, DynamicError::Refused { .. }), "{e}");
        assert!(
            e.to_string().contains("kiln/apps/web/") && e.to_string().contains("403"),
            "{e}"
        );
        assert!(!e.to_string().contains("wrong-token"));
    }

    #[test]
    fn errors_and_garbage_are_retried_within_the_deadline() {
        let consul = TestServer::start();
        consul.put("kiln/apps/web/version", b"2");
        consul.add_fault(Fault::status(503).path_prefix("/v1/kv/").times(1));
        consul.add_fault(Fault::garbage().method("GET").times(1));
        consul.add_fault(Fault::drop_connection().times(1));
        let c = client(&consul.url(), None);
        let kv = c
            .read_prefix("kiln/apps/web/", deadline(10), &kiln_apply::log::Quiet)
            .unwrap();
        assert_eq!(kv.len(), 1);
        assert_eq!(c.http.requests(), 4);
        // Garbage for ever: the deadline ends it, naming what was wrong.
        consul.add_fault(Fault::garbage().method("GET"));
        let t = Instant::now();
        let e = c
            .read_prefix("kiln/apps/web/", deadline(1), &kiln_apply::log::Quiet)
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(matches!(e, DynamicError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("not Consul's KV JSON"), "{e}");
    }

    #[test]
    fn the_report_is_written_with_check_and_set() {
        let consul = TestServer::start();
        let c = client(&consul.url(), None);
        c.put_cas(
            "kiln/nodes/web/h1",
            b"{\"a\":1}",
            deadline(5),
            &kiln_apply::log::Quiet,
        )
        .unwrap();
        assert_eq!(consul.requests()[0].query, "cas=0");
        // It exists now: cas=0 answers false, then the index is read and used.
        c.put_cas(
            "kiln/nodes/web/h1",
            b"{\"a\":2}",
            deadline(5),
            &kiln_apply::log::Quiet,
        )
        .unwrap();
        assert_eq!(consul.get("kiln/nodes/web/h1").unwrap().value, b"{\"a\":2}");
        let q: Vec<String> = consul
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.query))
            .collect();
        assert_eq!(q.len(), 4, "{q:?}");
        assert!(q[3].starts_with("PUT cas=") && q[3] != "PUT cas=0", "{q:?}");
    }
}
