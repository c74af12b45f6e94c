//! The Consul HTTP API: routing as Go's `http.ServeMux` does it, Consul's `wrap`
//! (common headers, error mapping, 405 + `Allow`), and the endpoints.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::acl::{self, Authz};
use crate::control::TokenSource;
use crate::server::Shared;
use crate::store::{Change, Entry, Session, Store};
use crate::util::{
    go_quote, parse_go_duration, parse_go_uint, percent_decode, query_decode, query_escape,
};

/// Consul's `DefaultQueryTime`.
pub const DEFAULT_QUERY_TIME: Duration = Duration::from_secs(300);
/// Consul's `MaxQueryTime`.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(600);
/// Consul's `maxTxnOps`.
pub const MAX_TXN_OPS: usize = 128;
const LEADER: &str = "127.0.0.1:8300";

/// A parsed request.
pub(crate) struct Req {
    pub method: String,
    pub raw_path: String,
    pub path: String,
    pub raw_query: String,
    pub query: Vec<(String, String)>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub content_length: Option<u64>,
}

impl Req {
    /// Go's `url.ParseQuery`; `None` where Go reports an error (bad escape, `;`).
    pub fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        for part in raw.split('&') {
            if part.is_empty() {
                continue;
            }
            if part.contains(';') {
                return None;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            out.push((query_decode(k)?, query_decode(v)?));
        }
        Some(out)
    }
    pub fn has(&self, k: &str) -> bool {
        self.query.iter().any(|(n, _)| n == k)
    }
    /// Go's `Values.Get`: the first value, "" if absent.
    pub fn get(&self, k: &str) -> &str {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Consul's token precedence: `?token=`, `X-Consul-Token`, `Authorization: Bearer`.
    pub fn token(&self) -> (String, Option<TokenSource>) {
        let q = self.get("token");
        if !q.is_empty() {
            return (q.to_string(), Some(TokenSource::Query));
        }
        let h = self.header("x-consul-token");
        if !h.is_empty() {
            return (h.to_string(), Some(TokenSource::Header));
        }
        let a = self.header("authorization");
        if !a.is_empty() {
            let parts: Vec<&str> = a.split(' ').collect();
            if parts.len() > 1 && parts[0].eq_ignore_ascii_case("bearer") {
                let value = parts[1..].join(" ");
                let tok = value
                    .trim()
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                if !tok.is_empty() {
                    return (tok, Some(TokenSource::Bearer));
                }
            }
        }
        (String::new(), None)
    }

    /// Whether the request carries any token at all (for the request log).
    pub fn token_present(&self) -> bool {
        self.has("token") || self.headers.contains_key("x-consul-token") || {
            let a = self.header("authorization");
            a.len() > 7 && a[..7].eq_ignore_ascii_case("bearer ")
        }
    }
}

/// A response under construction.
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl Resp {
    pub fn empty(status: u16) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
    /// A plain-text body; Go's server sniffs it as `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Resp {
        let body: String = body.into();
        let mut r = Resp::empty(status);
        if !body.is_empty() {
            r.headers
                .push(("content-type", "text/plain; charset=utf-8".into()));
        }
        r.body = Bytes::from(body);
        r
    }
    pub fn json<T: Serialize + ?Sized>(req: &Req, v: &T) -> Resp {
        let mut r = Resp::empty(200);
        r.headers.push(("content-type", "application/json".into()));
        r.body = Bytes::from(to_json(req, v));
        r
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Resp {
        self.headers.push((name, value.into()));
        self
    }
}

/// `marshalJSON`: compact, or indented by 4 spaces plus a newline with `?pretty`;
/// `<`, `>`, `&`, U+2028 and U+2029 escaped as Go's `encoding/json` escapes them.
fn to_json<T: Serialize + ?Sized>(req: &Req, v: &T) -> Vec<u8> {
    go_escape(to_json_raw(req, v))
}

fn go_escape(b: Vec<u8>) -> Vec<u8> {
    // These bytes and sequences only ever occur inside JSON strings.
    let s = String::from_utf8(b).expect("utf-8 JSON");
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return s.into_bytes();
    }
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .into_bytes()
}

fn to_json_raw<T: Serialize + ?Sized>(req: &Req, v: &T) -> Vec<u8> {
    if req.has("pretty") {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        v.serialize(&mut ser).expect("json");
        out.push(b'\n');
        out
    } else {
        serde_json::to_vec(v).expect("json")
    }
}

/// An error, mapped to a status the way Consul's `wrap` maps it.
pub(crate) enum ApiErr {
    /// `HTTPError{StatusCode, Reason}` and the handlers' direct `WriteHeader` + text.
    Http(u16, String),
    /// ACL errors: 403 with the error text.
    Forbidden(String),
    /// Any other error: 500 with its text.
    Internal(String),
    MethodNotAllowed(String, &'static [&'static str]),
}

impl From<acl::Denied> for ApiErr {
    fn from(d: acl::Denied) -> ApiErr {
        ApiErr::Forbidden(d.to_string())
    }
}

type ApiResult = Result<Resp, ApiErr>;

/// The endpoints this server has, as registered with Consul's mux.
struct Route {
    pattern: &'static str,
    methods: &'static [&'static str],
}

const ROUTES: &[Route] = &[
    Route {
        pattern: "/v1/kv/",
        methods: &["GET", "PUT", "DELETE"],
    },
    Route {
        pattern: "/v1/txn",
        methods: &["PUT"],
    },
    Route {
        pattern: "/v1/session/create",
        methods: &["PUT"],
    },
    Route {
        pattern: "/v1/session/destroy/",
        methods: &["PUT"],
    },
    Route {
        pattern: "/v1/session/renew/",
        methods: &["PUT"],
    },
    Route {
        pattern: "/v1/session/info/",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/session/node/",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/session/list",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/status/leader",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/status/peers",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/agent/self",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/agent/services",
        methods: &["GET"],
    },
    Route {
        pattern: "/v1/agent/service/register",
        methods: &["PUT"],
    },
    Route {
        pattern: "/v1/agent/service/deregister/",
        methods: &["PUT"],
    },
];

/// Handles one Consul API request (everything but `/_test/`).
pub(crate) async fn handle(sh: &Arc<Shared>, req: Req) -> Resp {
    // http.ServeMux: clean the path (keeping a trailing slash), redirect if it changed.
    // KV keys containing ".." are left for the KV endpoint to refuse with 400.
    let kv_dotdot = req.path.starts_with("/v1/kv/") && req.path.contains("..");
    let cleaned = crate::util::clean_path(&req.raw_path);
    if cleaned != req.raw_path && !kv_dotdot {
        return redirect(&req, &cleaned);
    }
    let route = ROUTES
        .iter()
        .filter(|r| {
            if r.pattern.ends_with('/') {
                req.path.starts_with(r.pattern)
            } else {
                req.path == r.pattern
            }
        })
        .max_by_key(|r| r.pattern.len());
    let Some(route) = route else {
        // "/v1/kv" etc.: the mux redirects to the subtree pattern.
        if let Some(r) = ROUTES
            .iter()
            .find(|r| r.pattern.ends_with('/') && r.pattern.trim_end_matches('/') == req.path)
        {
            return redirect(&req, r.pattern);
        }
        if req.path == "/" {
            return Resp::text(200, "Consul Agent");
        }
        return Resp::empty(404);
    };
    wrap(sh, route, req).await
}

fn redirect(req: &Req, path: &str) -> Resp {
    let mut loc = path.to_string();
    if !req.raw_query.is_empty() {
        loc.push('?');
        loc.push_str(&req.raw_query);
    }
    let mut r = Resp::empty(301).header("location", loc.clone());
    if req.method == "GET" || req.method == "HEAD" {
        r.headers
            .push(("content-type", "text/html; charset=utf-8".into()));
        r.body = Bytes::from(format!("<a href=\"{loc}\">Moved Permanently</a>.\n\n"));
    }
    r
}

/// Consul's `wrap`: common headers, query validation, method check, error mapping.
async fn wrap(sh: &Arc<Shared>, route: &Route, req: Req) -> Resp {
    let policy = sh
        .acl_config()
        .map(|c| c.default_policy.as_str())
        .unwrap_or("allow");
    let mut resp = if req.method == "OPTIONS" {
        let mut allow = vec!["OPTIONS"];
        allow.extend_from_slice(route.methods);
        Resp::empty(200).header("allow", allow.join(","))
    } else if !route.methods.contains(&req.method.as_str()) {
        error_resp(ApiErr::MethodNotAllowed(req.method.clone(), route.methods))
    } else {
        match dispatch(sh, route.pattern, &req).await {
            Ok(r) => r,
            Err(e) => error_resp(e),
        }
    };
    // gziphandler always varies on Accept-Encoding; Consul sets the ACL default policy.
    resp.headers.push(("vary", "Accept-Encoding".into()));
    resp.headers
        .push(("x-consul-default-acl-policy", policy.into()));
    resp
}

fn error_resp(e: ApiErr) -> Resp {
    match e {
        ApiErr::Http(code, msg) => Resp::text(code, msg),
        ApiErr::Forbidden(msg) => Resp::text(403, msg),
        ApiErr::Internal(msg) => Resp::text(500, msg),
        ApiErr::MethodNotAllowed(m, methods) => {
            let mut allow = vec!["OPTIONS"];
            allow.extend_from_slice(methods);
            Resp::text(405, format!("method {m} not allowed")).header("allow", allow.join(","))
        }
    }
}

async fn dispatch(sh: &Arc<Shared>, pattern: &str, req: &Req) -> ApiResult {
    match pattern {
        "/v1/kv/" => kv_endpoint(sh, req).await,
        "/v1/txn" => txn(sh, req),
        "/v1/session/create" => session_create(sh, req),
        "/v1/session/destroy/" => session_destroy(sh, req),
        "/v1/session/renew/" => session_renew(sh, req),
        "/v1/session/info/" | "/v1/session/node/" | "/v1/session/list" => {
            session_read(sh, req, pattern)
        }
        "/v1/status/leader" => {
            dc_check(sh, &QueryOpts::dc_only(req))?;
            Ok(Resp::json(req, LEADER))
        }
        "/v1/status/peers" => {
            dc_check(sh, &QueryOpts::dc_only(req))?;
            Ok(Resp::json(req, &[LEADER]))
        }
        "/v1/agent/self" => agent_self(sh, req),
        "/v1/agent/services" => agent_services(sh, req),
        "/v1/agent/service/register" => service_register(sh, req),
        "/v1/agent/service/deregister/" => service_deregister(sh, req),
        _ => Ok(Resp::empty(404)),
    }
}

// -------------------------------------------------------------------- query options

/// Consul's `QueryOptions` as `parse` fills them.
pub(crate) struct QueryOpts {
    dc: String,
    token: String,
    stale: bool,
    consistent: bool,
    /// `?wait`, nanoseconds, if given.
    wait: Option<i128>,
    min_index: u64,
}

impl QueryOpts {
    fn dc_only(req: &Req) -> QueryOpts {
        QueryOpts {
            dc: req.get("dc").to_string(),
            token: req.token().0,
            stale: false,
            consistent: false,
            wait: None,
            min_index: 0,
        }
    }

    /// `s.parse`: dc, token, consistency, wait and index.
    fn parse(req: &Req) -> Result<QueryOpts, ApiErr> {
        let mut o = QueryOpts::dc_only(req);
        o.stale = req.has("stale");
        o.consistent = req.has("consistent");
        if o.stale && o.consistent {
            return Err(ApiErr::Http(
                400,
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        let wait = req.get("wait");
        if !wait.is_empty() {
            o.wait = Some(
                parse_go_duration(wait)
                    .map_err(|_| ApiErr::Http(400, "Invalid wait time".into()))?,
            );
        }
        let idx = req.get("index");
        if !idx.is_empty() {
            o.min_index =
                parse_go_uint(idx).map_err(|_| ApiErr::Http(400, "Invalid index".into()))?;
        }
        Ok(o)
    }

    fn consistency(&self) -> &'static str {
        if self.consistent {
            "consistent"
        } else if self.stale {
            "stale"
        } else {
            "leader"
        }
    }
}

/// Forwarding to another datacenter fails: there is only this one.
fn dc_check(sh: &Shared, o: &QueryOpts) -> Result<(), ApiErr> {
    if !o.dc.is_empty() && o.dc != sh.config.datacenter {
        return Err(ApiErr::Internal("No path to datacenter".into()));
    }
    Ok(())
}

fn resolve(sh: &Shared, token: &str) -> Result<Authz, ApiErr> {
    let cfg = sh.acl_config();
    acl::resolve(cfg.as_ref(), token).map_err(|_| ApiErr::Forbidden("ACL not found".into()))
}

/// `KVS.List` and `KVS.ListKeys` with `acl.enable_key_list_policy`: the token needs `list` on
/// the prefix before anything is read (and before a blocking query waits); what it may not
/// read below is still filtered out afterwards.
fn key_list_check(sh: &Shared, authz: &Authz, prefix: &str) -> Result<(), ApiErr> {
    let on = sh
        .acl
        .read()
        .unwrap()
        .as_ref()
        .is_some_and(|c| c.enable_key_list_policy);
    if on && !authz.key_list(prefix) {
        return Err(authz.deny_key("list", prefix).into());
    }
    Ok(())
}

/// `setMeta`: the read headers.
fn set_meta(mut r: Resp, index: u64, o: &QueryOpts, filtered: bool, authz: &Authz) -> Resp {
    r.headers.push(("x-consul-index", index.max(1).to_string()));
    r.headers.push(("x-consul-knownleader", "true".into()));
    r.headers.push(("x-consul-lastcontact", "0".into()));
    r.headers
        .push(("x-consul-effective-consistency", o.consistency().into()));
    r.headers
        .push(("x-consul-query-backend", "blocking-query".into()));
    // maskResultsFilteredByACLs: never told to the anonymous token.
    if filtered && !authz.is_anonymous() {
        r.headers
            .push(("x-consul-results-filtered-by-acls", "true".into()));
    }
    r
}

/// `rpcQueryTimeout`: default 5m, at most 10m, plus up to 1/16 of jitter.
fn query_timeout(wait: Option<i128>) -> Duration {
    let mut t = match wait {
        Some(ns) if ns > 0 => Duration::from_nanos(ns.min(u64::MAX as i128) as u64),
        _ => DEFAULT_QUERY_TIME,
    };
    if t > MAX_QUERY_TIME {
        t = MAX_QUERY_TIME;
    }
    t + crate::util::random_stagger(t / 16)
}

/// Consul's `blockingQuery`: runs `run` at once when `index` is 0 (or absent); else
/// until its index exceeds `index`, re-running it when a write touches what
/// `relevant` selects, and answering the last result when the wait runs out.
async fn blocking<T>(
    sh: &Shared,
    o: &QueryOpts,
    relevant: impl Fn(&Change) -> bool,
    run: impl Fn(&Store) -> Result<(u64, T), ApiErr>,
) -> Result<(u64, T), ApiErr> {
    let fix = |(i, t): (u64, T)| (i.max(1), t);
    if o.min_index == 0 {
        let st = sh.store.lock().unwrap();
        return run(&st).map(fix);
    }
    let deadline = tokio::time::Instant::now() + query_timeout(o.wait);
    let mut rx = sh.notify.subscribe();
    let (mut seen, mut result) = {
        let st = sh.store.lock().unwrap();
        (st.raft_index, run(&st).map(fix)?)
    };
    loop {
        if result.0 > o.min_index {
            return Ok(result);
        }
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(result);
                    }
                    let st = sh.store.lock().unwrap();
                    if st.raft_index < seen {
                        // A restore: Consul abandons blocking queries, which answer at
                        // once with what is there now (a lower index).
                        return run(&st).map(fix);
                    }
                    let touched = st.changed_since(seen, &relevant);
                    seen = st.raft_index;
                    if touched {
                        result = run(&st).map(fix)?;
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(result),
            }
        }
    }
}

// -------------------------------------------------------------------- KV

async fn kv_endpoint(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::parse(req)?;
    let key = req.path.strip_prefix("/v1/kv/").unwrap_or("").to_string();
    if key.contains("..") {
        return Err(ApiErr::Http(
            400,
            "key contains path traversal sequence".into(),
        ));
    }
    match req.method.as_str() {
        "GET" if req.has("keys") => kv_keys(sh, req, &o, &key).await,
        "GET" => kv_get(sh, req, &o, &key).await,
        "PUT" => kv_put(sh, req, &o, &key),
        _ => kv_delete(sh, req, &o, &key),
    }
}

async fn kv_get(sh: &Arc<Shared>, req: &Req, o: &QueryOpts, key: &str) -> ApiResult {
    let recurse = req.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiErr::Http(400, "Missing key name".into()));
    }
    dc_check(sh, o)?;
    let authz = resolve(sh, &o.token)?;
    if recurse {
        key_list_check(sh, &authz, key)?;
        let (index, (entries, filtered)) = blocking(
            sh,
            o,
            |c| c.touches_prefix(key),
            |st| {
                let (idx, all) = st.kvs_list(key);
                let total = all.len();
                let entries: Vec<Entry> = all
                    .into_iter()
                    .filter(|e| authz.key_read(&e.key))
                    .cloned()
                    .collect();
                let filtered = entries.len() != total;
                Ok((idx, (entries, filtered)))
            },
        )
        .await?;
        if entries.is_empty() {
            return Ok(set_meta(Resp::empty(404), index, o, filtered, &authz));
        }
        let out: Vec<_> = entries.iter().map(|e| e.to_json(true)).collect();
        return Ok(set_meta(Resp::json(req, &out), index, o, filtered, &authz));
    }
    let (index, entry) = blocking(
        sh,
        o,
        |c| c.touches_key(key),
        |st| {
            let (idx, e) = st.kvs_get(key);
            if !authz.key_read(key) {
                return Err(authz.deny_key("read", key).into());
            }
            Ok(match e {
                Some(e) => (e.modify_index, Some(e.clone())),
                None => (idx, None),
            })
        },
    )
    .await?;
    let Some(e) = entry else {
        return Ok(set_meta(Resp::empty(404), index, o, false, &authz));
    };
    if req.has("raw") {
        let mut r = Resp::empty(200);
        r.headers.push(("content-type", "text/plain".into()));
        r.headers.push(("x-content-type-options", "nosniff".into()));
        r.headers
            .push(("content-security-policy", "sandbox".into()));
        r.body = Bytes::from(e.value);
        return Ok(set_meta(r, index, o, false, &authz));
    }
    Ok(set_meta(
        Resp::json(req, &[e.to_json(true)]),
        index,
        o,
        false,
        &authz,
    ))
}

async fn kv_keys(sh: &Arc<Shared>, req: &Req, o: &QueryOpts, prefix: &str) -> ApiResult {
    let mut sep = String::new();
    if req.has("seperator") {
        sep = req.get("seperator").to_string();
    }
    if req.has("separator") {
        sep = req.get("separator").to_string();
    }
    dc_check(sh, o)?;
    let authz = resolve(sh, &o.token)?;
    key_list_check(sh, &authz, prefix)?;
    let (index, (keys, filtered)) = blocking(
        sh,
        o,
        |c| c.touches_prefix(prefix),
        |st| {
            let (idx, all) = st.kvs_list(prefix);
            let total = all.len();
            let entries: Vec<&Entry> = all.into_iter().filter(|e| authz.key_read(&e.key)).collect();
            let filtered = entries.len() != total;
            let mut keys: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            for e in entries {
                if sep.is_empty() {
                    keys.push(e.key.clone());
                    continue;
                }
                let after = &e.key[prefix.len()..];
                match after.find(sep.as_str()) {
                    Some(i) => {
                        let k = e.key[..prefix.len() + i + sep.len()].to_string();
                        if seen.insert(k.clone()) {
                            keys.push(k);
                        }
                    }
                    None => keys.push(e.key.clone()),
                }
            }
            Ok((idx, (keys, filtered)))
        },
    )
    .await?;
    if keys.is_empty() && !prefix.is_empty() {
        return Ok(set_meta(Resp::empty(404), index, o, filtered, &authz));
    }
    Ok(set_meta(Resp::json(req, &keys), index, o, filtered, &authz))
}

/// `conflictingFlags`: answers 400 with Go's `url.Values.Encode()` of the query.
fn conflicting(req: &Req, flags: &[&str]) -> Result<(), ApiErr> {
    if flags.iter().filter(|f| req.has(f)).count() > 1 {
        let mut pairs: Vec<&(String, String)> = req.query.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let enc: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
            .collect();
        return Err(ApiErr::Http(
            400,
            format!("Conflicting flags: {}\n", enc.join("&")),
        ));
    }
    Ok(())
}

enum KvOp {
    Set,
    Cas(u64),
    Lock(String),
    Unlock(String),
}

fn kv_put(sh: &Arc<Shared>, req: &Req, o: &QueryOpts, key: &str) -> ApiResult {
    if key.is_empty() {
        return Err(ApiErr::Http(400, "Missing key name".into()));
    }
    conflicting(req, &["cas", "acquire", "release"])?;
    let mut flags = 0;
    if req.has("flags") {
        flags = parse_go_uint(req.get("flags")).map_err(ApiErr::Internal)?;
    }
    let mut op = KvOp::Set;
    if req.has("cas") {
        op = KvOp::Cas(parse_go_uint(req.get("cas")).map_err(ApiErr::Internal)?);
    }
    if req.has("acquire") {
        op = KvOp::Lock(req.get("acquire").to_string());
    }
    if req.has("release") {
        op = KvOp::Unlock(req.get("release").to_string());
    }
    let max = sh.config.kv_max_value_size;
    let len = req
        .content_length
        .unwrap_or(req.body.len() as u64)
        .max(req.body.len() as u64);
    if len > max {
        return Err(ApiErr::Http(
            413,
            format!(
                "Request body({len} bytes) too large, max size: {max} bytes. See {}.",
                "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"
            ),
        ));
    }
    dc_check(sh, o)?;
    let authz = resolve(sh, &o.token)?;
    if !authz.key_write(key) {
        return Err(authz.deny_key("write", key).into());
    }
    let mut entry = Entry::new(key, &req.body, flags);
    let now = Instant::now();
    let result = sh.write(|st, idx| -> Result<bool, ApiErr> {
        match &op {
            KvOp::Set => {
                st.kvs_set(idx, entry.clone(), false);
                Ok(true)
            }
            KvOp::Cas(c) => Ok(st.kvs_set_cas(idx, entry.clone(), *c).is_some()),
            KvOp::Lock(s) => {
                if st.lock_delay_until(key, now).is_some() {
                    return Ok(false);
                }
                entry.session = Some(s.clone());
                st.kvs_lock(idx, entry.clone())
                    .map(|r| r.is_some())
                    .map_err(ApiErr::Internal)
            }
            KvOp::Unlock(s) => {
                entry.session = Some(s.clone());
                st.kvs_unlock(idx, entry.clone())
                    .map(|r| r.is_some())
                    .map_err(ApiErr::Internal)
            }
        }
    })?;
    Ok(Resp::json(req, &result))
}

fn kv_delete(sh: &Arc<Shared>, req: &Req, o: &QueryOpts, key: &str) -> ApiResult {
    conflicting(req, &["recurse", "cas"])?;
    let recurse = req.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiErr::Http(400, "Missing key name".into()));
    }
    let mut cas = None;
    if req.has("cas") {
        cas = Some(parse_go_uint(req.get("cas")).map_err(ApiErr::Internal)?);
    }
    dc_check(sh, o)?;
    let authz = resolve(sh, &o.token)?;
    let allowed = if recurse && cas.is_none() {
        authz.key_write_prefix(key)
    } else {
        authz.key_write(key)
    };
    if !allowed {
        return Err(authz.deny_key("write", key).into());
    }
    let result = sh.write(|st, idx| -> Result<bool, ApiErr> {
        Ok(match cas {
            Some(c) => st.kvs_delete_cas(idx, c, key),
            None if recurse => {
                st.kvs_delete_tree(idx, key);
                true
            }
            None => {
                st.kvs_delete(idx, key);
                true
            }
        })
    })?;
    Ok(Resp::json(req, &result))
}

// -------------------------------------------------------------------- txn

struct TxnKvOp {
    verb: String,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "set" | "delete" | "delete-cas" | "delete-tree" | "cas" | "lock" | "unlock"
    )
}

/// Field lookup with Go's case-insensitive JSON matching (exact match preferred).
fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn get_string(m: &serde_json::Map<String, Value>, name: &str, ctx: &str) -> Result<String, String> {
    match field(m, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {ctx}.{name} of type string",
            json_type(v)
        )),
    }
}

fn get_u64(m: &serde_json::Map<String, Value>, name: &str, ctx: &str) -> Result<u64, String> {
    match field(m, name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64().unwrap()),
        Some(Value::Number(n)) => Err(format!(
            "json: cannot unmarshal number {n} into Go struct field {ctx}.{name} of type uint64"
        )),
        Some(v) => Err(format!(
            "json: cannot unmarshal {} into Go struct field {ctx}.{name} of type uint64",
            json_type(v)
        )),
    }
}

/// `convertOps`: decodes `api.TxnOps`.
fn txn_decode(body: &[u8]) -> Result<Vec<TxnKvOp>, ApiErr> {
    let bad = |m: String| ApiErr::Http(400, format!("Failed to parse body: {m}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Value::Array(items) = v else {
        return Err(bad(format!(
            "json: cannot unmarshal {} into Go value of type api.TxnOps",
            json_type(&v)
        )));
    };
    if items.len() > MAX_TXN_OPS {
        return Err(ApiErr::Http(
            413,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                items.len()
            ),
        ));
    }
    let mut ops = Vec::new();
    for it in &items {
        let Value::Object(m) = it else {
            if it.is_null() {
                continue;
            }
            return Err(bad(format!(
                "json: cannot unmarshal {} into Go value of type api.TxnOp",
                json_type(it)
            )));
        };
        for other in ["Node", "Service", "Check"] {
            if field(m, other).is_some_and(|v| !v.is_null()) {
                return Err(ApiErr::Internal(format!(
                    "consul-test-server: {other} operations in transactions are not supported"
                )));
            }
        }
        let kv = match field(m, "KV") {
            None | Some(Value::Null) => continue,
            Some(Value::Object(kv)) => kv,
            Some(v) => {
                return Err(bad(format!(
                    "json: cannot unmarshal {} into Go struct field TxnOp.KV of type api.KVTxnOp",
                    json_type(v)
                )))
            }
        };
        let ctx = "TxnOp.KV";
        let value = match field(kv, "Value") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| bad(format!("{e}")))?
            }
            Some(v) => {
                return Err(bad(format!(
                    "json: cannot unmarshal {} into Go struct field {ctx}.Value of type []uint8",
                    json_type(v)
                )))
            }
        };
        ops.push(TxnKvOp {
            verb: get_string(kv, "Verb", ctx).map_err(bad)?,
            key: get_string(kv, "Key", ctx).map_err(bad)?,
            value,
            flags: get_u64(kv, "Flags", ctx).map_err(bad)?,
            index: get_u64(kv, "Index", ctx).map_err(bad)?,
            session: get_string(kv, "Session", ctx).map_err(bad)?,
        });
    }
    Ok(ops)
}

#[derive(Serialize)]
struct TxnError {
    #[serde(rename = "OpIndex")]
    op_index: usize,
    #[serde(rename = "What")]
    what: String,
}

#[derive(Serialize)]
struct TxnResultOut<'a> {
    #[serde(rename = "KV")]
    kv: crate::store::DirEntryOut<'a>,
}

/// `Txn.Apply` / `Txn.Read`'s `preCheck` (through `kvsPreApply`) for each op.
fn txn_precheck(sh: &Shared, authz: &Authz, ops: &[TxnKvOp]) -> Vec<TxnError> {
    let now = Instant::now();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let err = |what: String| TxnError { op_index: i, what };
        if op.key.is_empty() && op.verb != "delete-tree" {
            errors.push(err("Must provide key".into()));
            continue;
        }
        let denied = match op.verb.as_str() {
            "delete-tree" => {
                (!authz.key_write_prefix(&op.key)).then(|| authz.deny_key("write", &op.key))
            }
            "get" | "get-tree" => None,
            "check-session" | "check-index" => {
                (!authz.key_read(&op.key)).then(|| authz.deny_key("read", &op.key))
            }
            _ => (!authz.key_write(&op.key)).then(|| authz.deny_key("write", &op.key)),
        };
        if let Some(d) = denied {
            errors.push(err(d.to_string()));
            continue;
        }
        if op.verb == "lock"
            && sh
                .store
                .lock()
                .unwrap()
                .lock_delay_until(&op.key, now)
                .is_some()
        {
            errors.push(err(format!(
                "failed to lock key {} due to lock delay",
                go_quote(&op.key)
            )));
        }
    }
    errors
}

/// `txnKVS`: one op; `Ok` carries its result entries (value kept for reads only).
fn txn_op(st: &mut Store, idx: u64, op: &TxnKvOp) -> Result<Vec<(Entry, bool)>, String> {
    let q = go_quote(&op.key);
    let mut entry = Entry::new(&op.key, &op.value, op.flags);
    if !op.session.is_empty() {
        entry.session = Some(op.session.clone());
    }
    let one = |e: Entry| Ok(vec![(e, false)]);
    match op.verb.as_str() {
        "set" => one(st.kvs_set(idx, entry, false)),
        "cas" => match st.kvs_set_cas(idx, entry, op.index) {
            Some(e) => one(e),
            None => Err(format!("failed to set key {q}, index is stale")),
        },
        "lock" => match st.kvs_lock(idx, entry)? {
            Some(e) => one(e),
            None => Err(format!("failed to lock key {q}, lock is already held")),
        },
        "unlock" => match st.kvs_unlock(idx, entry)? {
            Some(e) => one(e),
            None => Err(format!(
                "failed to unlock key {q}, lock isn't held, or is held by another session"
            )),
        },
        "get" => match st.kvs_get(&op.key).1 {
            Some(e) => Ok(vec![(e.clone(), true)]),
            None => Err(format!("key {q} doesn't exist")),
        },
        "get-tree" => Ok(st
            .kvs_list(&op.key)
            .1
            .into_iter()
            .map(|e| (e.clone(), true))
            .collect()),
        "check-session" => one(st.kvs_check_session(&op.key, &op.session)?),
        "check-index" => one(st.kvs_check_index(&op.key, op.index)?),
        "check-not-exists" => match st.kvs_get(&op.key).1 {
            Some(_) => Err(format!("key {q} exists")),
            None => Ok(vec![]),
        },
        "delete" => {
            st.kvs_delete(idx, &op.key);
            Ok(vec![])
        }
        "delete-cas" => {
            if st.kvs_delete_cas(idx, op.index, &op.key) {
                Ok(vec![])
            } else {
                Err(format!("failed to delete key {q}, index is stale"))
            }
        }
        "delete-tree" => {
            st.kvs_delete_tree(idx, &op.key);
            Ok(vec![])
        }
        other => Err(format!("unknown KV verb {}", go_quote(other))),
    }
}

fn txn(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let max_len = sh.config.txn_max_req_len.max(sh.config.kv_max_value_size);
    let len = req.content_length.unwrap_or(0).max(req.body.len() as u64);
    if len > max_len {
        return Err(ApiErr::Http(
            413,
            format!(
                "Request body({len} bytes) too large, max size: {max_len} bytes. See {}.",
                "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"
            ),
        ));
    }
    let ops = txn_decode(&req.body)?;
    for op in &ops {
        if op.value.len() as u64 > sh.config.kv_max_value_size {
            return Err(ApiErr::Http(
                413,
                format!(
                    "Value for key {} is too large ({} > {} bytes)",
                    go_quote(&op.key),
                    op.value.len(),
                    sh.config.kv_max_value_size
                ),
            ));
        }
    }
    let writes = ops.iter().filter(|o| is_write(&o.verb)).count();
    let read_only = writes == 0;
    let o = if read_only {
        QueryOpts::parse(req)?
    } else {
        QueryOpts::dc_only(req)
    };
    dc_check(sh, &o)?;
    let authz = resolve(sh, &o.token)?;

    let mut errors = txn_precheck(sh, &authz, &ops);
    let mut results: Vec<(Entry, bool)> = Vec::new();
    if errors.is_empty() {
        if read_only {
            let mut st = sh.store.lock().unwrap();
            let snap = st.kv_snapshot();
            let idx = st.next_index();
            for (i, op) in ops.iter().enumerate() {
                match txn_op(&mut st, idx, op) {
                    Ok(r) => results.extend(r),
                    Err(what) => errors.push(TxnError { op_index: i, what }),
                }
            }
            st.kv_restore(snap);
        } else {
            sh.write(|st, idx| -> Result<(), ApiErr> {
                let snap = st.kv_snapshot();
                for (i, op) in ops.iter().enumerate() {
                    match txn_op(st, idx, op) {
                        Ok(r) => results.extend(r),
                        Err(what) => errors.push(TxnError { op_index: i, what }),
                    }
                }
                if !errors.is_empty() {
                    st.kv_restore(snap);
                }
                Ok(())
            })?;
        }
    }
    let total = results.len();
    results.retain(|(e, _)| authz.key_read(&e.key));
    let filtered = total != results.len() && !authz.is_anonymous();

    let conflict = !errors.is_empty();
    let res_json: Option<Vec<TxnResultOut>> = (!conflict).then(|| {
        results
            .iter()
            .map(|(e, with_value)| TxnResultOut {
                kv: e.to_json(*with_value),
            })
            .collect()
    });
    let err_json = conflict.then_some(&errors);
    let mut r = if read_only {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct ReadOut<'a> {
            results: Option<Vec<TxnResultOut<'a>>>,
            errors: Option<&'a Vec<TxnError>>,
            index: u64,
            last_contact: u64,
            known_leader: bool,
            consistency_level: &'a str,
            not_modified: bool,
            backend: u64,
            #[serde(rename = "ResultsFilteredByACLs")]
            results_filtered_by_acls: bool,
        }
        let out = ReadOut {
            results: res_json,
            errors: err_json,
            index: 0,
            last_contact: 0,
            known_leader: true,
            consistency_level: "",
            not_modified: false,
            backend: 0,
            results_filtered_by_acls: filtered,
        };
        Resp::json(req, &out)
            .header("x-consul-lastcontact", "0")
            .header("x-consul-knownleader", "true")
    } else {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct WriteOut<'a> {
            results: Option<Vec<TxnResultOut<'a>>>,
            errors: Option<&'a Vec<TxnError>>,
        }
        Resp::json(
            req,
            &WriteOut {
                results: res_json,
                errors: err_json,
            },
        )
    };
    if conflict {
        r.status = 409;
    }
    Ok(r)
}

// -------------------------------------------------------------------- sessions

fn decode_object(req: &Req) -> Result<Option<serde_json::Map<String, Value>>, String> {
    if req.body.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&req.body).map_err(|e| e.to_string())?;
    match v {
        Value::Object(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type structs.Session",
            json_type(&other)
        )),
    }
}

fn string_list(v: Option<&Value>, what: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(vec![])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "'{what}[]' expected type 'string', got '{}'",
                    json_type(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(format!(
            "'{what}': source data must be an array or slice, got {}",
            json_type(other)
        )),
    }
}

fn session_create(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::dc_only(req);
    let mut s = Session {
        id: String::new(),
        name: String::new(),
        node: sh.config.node_name.clone(),
        lock_delay: 15_000_000_000,
        behavior: "release".into(),
        ttl: String::new(),
        node_checks: vec!["serfHealth".into()],
        service_checks: None,
        create_index: 0,
        modify_index: 0,
        expires: None,
        ttl_duration: None,
    };
    let bad = |e: String| ApiErr::Http(400, format!("Request decode failed: {e}"));
    if let Some(m) = decode_object(req).map_err(bad)? {
        let ctx = "Session";
        if field(&m, "Name").is_some() {
            s.name = get_string(&m, "Name", ctx).map_err(bad)?;
        }
        if field(&m, "Node").is_some() {
            s.node = get_string(&m, "Node", ctx).map_err(bad)?;
        }
        if field(&m, "Behavior").is_some() {
            s.behavior = get_string(&m, "Behavior", ctx).map_err(bad)?;
        }
        if field(&m, "TTL").is_some() {
            s.ttl = get_string(&m, "TTL", ctx).map_err(bad)?;
        }
        // FixupLockDelay: a string is a Go duration, a number nanoseconds; either,
        // when below 1000ns, is taken as seconds.
        match field(&m, "LockDelay") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => {
                let mut ns = parse_go_duration(d).map_err(bad)?;
                if ns < 1000 {
                    ns *= 1_000_000_000;
                }
                s.lock_delay = ns as i64;
            }
            Some(Value::Number(n)) => {
                let mut ns = n.as_f64().unwrap_or(0.0) as i64;
                if ns < 1000 {
                    ns *= 1_000_000_000;
                }
                s.lock_delay = ns;
            }
            Some(v) => {
                return Err(bad(format!(
                    "'LockDelay' expected type 'time.Duration', got '{}'",
                    json_type(v)
                )))
            }
        }
        // FixupChecks: naming checks at all replaces the default serfHealth check.
        let checks = string_list(field(&m, "Checks"), "Checks").map_err(bad)?;
        let node_checks = string_list(field(&m, "NodeChecks"), "NodeChecks").map_err(bad)?;
        if checks.is_some() || node_checks.is_some() {
            let mut all = node_checks.unwrap_or_default();
            for c in checks.unwrap_or_default() {
                if !all.contains(&c) {
                    all.push(c);
                }
            }
            s.node_checks = all;
        }
        match field(&m, "ServiceChecks") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => s.service_checks = Some(a.clone()),
            Some(v) => {
                return Err(bad(format!(
                    "'ServiceChecks': source data must be an array or slice, got {}",
                    json_type(v)
                )))
            }
        }
    }
    dc_check(sh, &o)?;
    let authz = resolve(sh, &o.token)?;
    // Session.Apply's checks.
    if s.node.is_empty() {
        return Err(ApiErr::Internal("Must provide Node".into()));
    }
    if !authz.session_write() {
        return Err(authz.deny_session("write", &s.node).into());
    }
    match s.behavior.as_str() {
        "" => s.behavior = "release".into(),
        "release" | "delete" => {}
        other => {
            return Err(ApiErr::Internal(format!(
                "Invalid Behavior setting '{other}'"
            )))
        }
    }
    if !s.ttl.is_empty() {
        let ns = parse_go_duration(&s.ttl)
            .map_err(|e| ApiErr::Internal(format!("Session TTL '{}' invalid: {e}", s.ttl)))?;
        let min = sh.config.session_ttl_min.as_nanos() as i128;
        if ns != 0 && (ns < min || ns > 86_400_000_000_000) {
            return Err(ApiErr::Internal(format!(
                "Invalid Session TTL '{ns}', must be between [{}=24h0m0s]",
                go_duration_string(sh.config.session_ttl_min)
            )));
        }
        if ns > 0 {
            s.ttl_duration = Some(Duration::from_nanos(ns as u64));
        }
    }
    // The state store: the node and its checks must be registered.
    if s.node != sh.config.node_name {
        return Err(ApiErr::Internal(
            "failed inserting session: Missing node registration".into(),
        ));
    }
    for c in &s.node_checks {
        if c != "serfHealth" {
            return Err(ApiErr::Internal(format!(
                "failed inserting session: Missing check '{c}' registration"
            )));
        }
    }
    if let Some(sc) = &s.service_checks {
        let known = sh.service_check_ids();
        for c in sc {
            let id = c
                .as_object()
                .and_then(|m| field(m, "ID"))
                .and_then(|v| v.as_str())
                .unwrap_or("");
            if !known.iter().any(|k| k == id) {
                return Err(ApiErr::Internal(format!(
                    "failed inserting session: Missing check '{id}' registration"
                )));
            }
        }
    }
    s.id = crate::util::uuid4();
    if let Some(ttl) = s.ttl_duration {
        s.expires = Some(Instant::now() + ttl * crate::store::SESSION_TTL_MULTIPLIER);
    }
    let id = s.id.clone();
    sh.write(|st, idx| -> Result<(), ApiErr> {
        st.session_create(idx, s.clone());
        Ok(())
    })?;
    #[derive(Serialize)]
    struct Created {
        #[serde(rename = "ID")]
        id: String,
    }
    Ok(Resp::json(req, &Created { id }))
}

/// Go's `time.Duration.String()` for whole seconds and up (what session limits use).
fn go_duration_string(d: Duration) -> String {
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    if secs == 0 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = if ms > 0 {
        format!(".{:03}", ms).trim_end_matches('0').to_string()
    } else {
        String::new()
    };
    if h > 0 {
        format!("{h}h{m}m{s}{frac}s")
    } else if m > 0 {
        format!("{m}m{s}{frac}s")
    } else {
        format!("{s}{frac}s")
    }
}

fn session_id(req: &Req, prefix: &str) -> Result<String, ApiErr> {
    let id = req.path.strip_prefix(prefix).unwrap_or("");
    if id.is_empty() {
        return Err(ApiErr::Http(400, "Missing session".into()));
    }
    Ok(id.to_string())
}

fn session_destroy(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::dc_only(req);
    let id = session_id(req, "/v1/session/destroy/")?;
    dc_check(sh, &o)?;
    let authz = resolve(sh, &o.token)?;
    let node = sh
        .store
        .lock()
        .unwrap()
        .session(&id)
        .map(|s| s.node.clone());
    if let Some(node) = node {
        if !authz.session_write() {
            return Err(authz.deny_session("write", &node).into());
        }
    }
    let now = Instant::now();
    sh.write(|st, idx| -> Result<(), ApiErr> {
        st.session_destroy(idx, &id, now);
        Ok(())
    })?;
    Ok(Resp::json(req, &true))
}

fn session_renew(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::parse(req)?;
    let id = session_id(req, "/v1/session/renew/")?;
    dc_check(sh, &o)?;
    let authz = resolve(sh, &o.token)?;
    let renewed = {
        let mut st = sh.store.lock().unwrap();
        match st.session(&id) {
            None => None,
            Some(s) => {
                if !authz.session_write() {
                    return Err(authz.deny_session("write", &s.node.clone()).into());
                }
                st.session_renew(&id, Instant::now())
            }
        }
    };
    match renewed {
        None => Err(ApiErr::Http(404, format!("Session id '{id}' not found"))),
        Some(s) => Ok(Resp::json(req, &[s.to_json()])),
    }
}

fn session_read(sh: &Arc<Shared>, req: &Req, pattern: &str) -> ApiResult {
    let o = QueryOpts::parse(req)?;
    let arg = req.path.strip_prefix(pattern).unwrap_or("").to_string();
    if pattern != "/v1/session/list" && arg.is_empty() {
        let what = if pattern == "/v1/session/node/" {
            "Missing node name"
        } else {
            "Missing session"
        };
        return Err(ApiErr::Http(400, what.into()));
    }
    dc_check(sh, &o)?;
    let authz = resolve(sh, &o.token)?;
    let (index, sessions) = {
        let st = sh.store.lock().unwrap();
        let all = st.sessions();
        let sel: Vec<Session> = all
            .into_iter()
            .filter(|s| match pattern {
                "/v1/session/info/" => s.id == arg,
                "/v1/session/node/" => s.node == arg,
                _ => true,
            })
            .filter(|_| authz.session_read())
            .collect();
        (st.sessions_index(), sel)
    };
    let out: Vec<_> = sessions.iter().map(|s| s.to_json()).collect();
    Ok(set_meta(Resp::json(req, &out), index, &o, false, &authz))
}

// -------------------------------------------------------------------- agent

fn agent_self(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::dc_only(req);
    resolve(sh, &o.token)?;
    let v = serde_json::json!({
        "Config": {
            "Datacenter": sh.config.datacenter,
            "NodeName": sh.config.node_name,
            "NodeID": sh.node_id,
            "Server": true,
            "Revision": "consul-test-server",
            "Version": "1.22.0",
        },
        "Member": {
            "Name": sh.config.node_name,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Status": 1,
        },
    });
    Ok(Resp::json(req, &v))
}

fn agent_services(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let o = QueryOpts::dc_only(req);
    resolve(sh, &o.token)?;
    let services = sh.services.lock().unwrap().clone();
    let mut out = serde_json::Map::new();
    for (id, s) in services {
        out.insert(id, s.to_agent_json(&sh.config.datacenter));
    }
    Ok(Resp::json(req, &Value::Object(out)))
}

/// A service registered through the agent API.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub port: u64,
    pub address: String,
    pub meta: serde_json::Map<String, Value>,
    /// The registration body as sent.
    pub definition: Value,
    pub check_ids: Vec<String>,
}

impl Service {
    fn to_agent_json(&self, dc: &str) -> Value {
        serde_json::json!({
            "ID": self.id,
            "Service": self.name,
            "Tags": self.tags,
            "Meta": self.meta,
            "Port": self.port,
            "Address": self.address,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false,
            "Datacenter": dc,
        })
    }
}

/// `CheckType.Validate`.
fn validate_check(c: &serde_json::Map<String, Value>) -> Result<(), String> {
    let has = |n: &str| {
        field(c, n).is_some_and(|v| !v.is_null() && v != "" && v != &Value::Array(vec![]))
    };
    let dur = |n: &str| -> Result<i128, String> {
        match field(c, n) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::String(s)) if s.is_empty() => Ok(0),
            Some(Value::String(s)) => parse_go_duration(s),
            Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0) as i128),
            Some(v) => Err(format!("'{n}' expected a duration, got '{}'", json_type(v))),
        }
    };
    let interval = dur("Interval")?;
    let ttl = dur("TTL")?;
    let interval_check = has("Args")
        || has("ScriptArgs")
        || has("HTTP")
        || has("TCP")
        || has("UDP")
        || has("GRPC")
        || has("H2PING")
        || has("OSService");
    let alias = has("AliasNode") || has("AliasService");
    if interval > 0 && ttl > 0 {
        return Err("Interval and TTL cannot both be specified".into());
    }
    if interval_check && interval <= 0 {
        return Err(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks".into(),
        );
    }
    if interval_check && alias {
        return Err("Interval cannot be set for Alias checks".into());
    }
    if alias && ttl > 0 {
        return Err("TTL must be not be set for Alias checks".into());
    }
    if !interval_check && !alias && ttl <= 0 {
        return Err(
            "one of Script, HTTP, TCP, UDP, H2PING, OSService, or TTL must be specified".into(),
        );
    }
    Ok(())
}

fn service_register(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let token = req.token().0;
    let bad = |e: String| ApiErr::Http(400, format!("Request decode failed: {e}"));
    let v: Value = if req.body.is_empty() {
        return Err(bad("EOF".into()));
    } else {
        serde_json::from_slice(&req.body).map_err(|e| bad(e.to_string()))?
    };
    let Value::Object(m) = &v else {
        return Err(bad(format!(
            "json: cannot unmarshal {} into Go value of type structs.ServiceDefinition",
            json_type(&v)
        )));
    };
    let ctx = "ServiceDefinition";
    let name = get_string(m, "Name", ctx).map_err(bad)?;
    let mut id = get_string(m, "ID", ctx).map_err(bad)?;
    let address = get_string(m, "Address", ctx).map_err(bad)?;
    let port = get_u64(m, "Port", ctx).map_err(bad)?;
    let tags = string_list(field(m, "Tags"), "Tags")
        .map_err(bad)?
        .unwrap_or_default();
    let meta = match field(m, "Meta") {
        Some(Value::Object(o)) => o.clone(),
        _ => serde_json::Map::new(),
    };
    if name.is_empty() {
        return Err(ApiErr::Http(400, "Missing service name".into()));
    }
    if id.is_empty() {
        id = name.clone();
    }
    if address == "0.0.0.0" || address == "::" || address == "[::]" {
        return Err(ApiErr::Http(400, "Invalid service address".into()));
    }
    let mut checks: Vec<&serde_json::Map<String, Value>> = Vec::new();
    match field(m, "Check") {
        None | Some(Value::Null) => {}
        Some(Value::Object(c)) => checks.push(c),
        Some(v) => {
            return Err(bad(format!(
                "'Check' expected a map, got '{}'",
                json_type(v)
            )))
        }
    }
    match field(m, "Checks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for c in a {
                match c {
                    Value::Object(c) => checks.push(c),
                    other => {
                        return Err(bad(format!(
                            "'Checks[]' expected a map, got '{}'",
                            json_type(other)
                        )))
                    }
                }
            }
        }
        Some(v) => {
            return Err(bad(format!(
                "'Checks' expected an array, got '{}'",
                json_type(v)
            )))
        }
    }
    let mut check_ids = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        validate_check(c).map_err(|e| ApiErr::Http(400, format!("Invalid check: {e}")))?;
        let cid = get_string(c, "CheckID", "CheckType").unwrap_or_default();
        let cid = if !cid.is_empty() {
            cid
        } else if checks.len() == 1 {
            format!("service:{id}")
        } else {
            format!("service:{id}:{}", i + 1)
        };
        check_ids.push(cid);
    }
    let authz = resolve(sh, &token)?;
    if !authz.service_write() {
        return Err(authz.deny_service("write", &name).into());
    }
    let svc = Service {
        id: id.clone(),
        name,
        tags,
        port,
        address,
        meta,
        definition: v.clone(),
        check_ids,
    };
    sh.services.lock().unwrap().insert(id, svc);
    Ok(Resp::empty(200))
}

fn service_deregister(sh: &Arc<Shared>, req: &Req) -> ApiResult {
    let token = req.token().0;
    let id = req
        .path
        .strip_prefix("/v1/agent/service/deregister/")
        .unwrap_or("")
        .to_string();
    if id.is_empty() {
        return Err(ApiErr::Http(400, "Missing service ID".into()));
    }
    let authz = resolve(sh, &token)?;
    let name = sh.services.lock().unwrap().get(&id).map(|s| s.name.clone());
    let Some(name) = name else {
        return Err(ApiErr::Http(404, format!("Unknown service ID {}. Ensure that the service ID is passed, not the service name.", go_quote(&id))));
    };
    if !authz.service_write() {
        return Err(authz.deny_service("write", &name).into());
    }
    sh.services.lock().unwrap().remove(&id);
    Ok(Resp::empty(200))
}

/// Decodes the request path; `None` on a malformed escape.
pub(crate) fn decode_path(raw: &str) -> Option<String> {
    percent_decode(raw)
}
