//! Running the server: listening (and refusing connections on demand), connections,
//! fault injection, the request log, and the test controls.
//!
//! # HTTP test controls (outside the Consul API; never faulted, never logged)
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /_test/requests` | the request log, a JSON array of [`RequestRecord`] |
//! | `DELETE /_test/requests` | clears the log |
//! | `GET /_test/faults` | active faults, `[{"id": N, ...fault}]` |
//! | `POST /_test/faults` | adds a [`Fault`], e.g. `{"kind":"status","status":503,"count":2,"path_prefix":"/v1/kv/"}`; answers `{"id": N}` |
//! | `DELETE /_test/faults` | removes all faults |
//! | `POST /_test/down?ms=N` | answers, then refuses connections for N ms |
//! | `GET /_test/kv` | every entry, Consul's JSON form with values |
//! | `POST /_test/seed` | writes seed data (see [`crate::parse_seed`]) |
//! | `PUT /_test/acl` | replaces the ACL config (JSON [`AclConfig`], or `null` to disable) |
//! | `GET /_test/status` | `{"index", "connections", "requests", "listening", "tls_handshake_errors"}` |
//! | `POST /_test/snapshot` | keeps the state as it is now; answers `{"id": N, "index": I}` |
//! | `POST /_test/restore?id=N` | puts snapshot N back: the data and the index go back to it |

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::acl::AclConfig;
use crate::api::{self, Req, Resp, Service};
use crate::control::{Control, Fault, FaultKind, RequestRecord};
use crate::store::{Entry, Session, Store};
use crate::{Config, SeedEntry};

/// The largest request body read (bigger ones are answered 413 without a handler).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) enum Cmd {
    Stop(oneshot::Sender<()>),
    Start(oneshot::Sender<io::Result<()>>),
    Shutdown,
}

pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// The raft index, announced after every write that changed something.
    pub notify: watch::Sender<u64>,
    pub acl: RwLock<Option<AclConfig>>,
    pub config: Config,
    pub ctl: Mutex<Control>,
    pub services: Mutex<BTreeMap<String, Service>>,
    pub node_id: String,
    started: Instant,
    addr: SocketAddr,
    /// Bumped to close every open connection (refusing, shutting down).
    kill: watch::Sender<u64>,
    cmd: mpsc::UnboundedSender<Cmd>,
    connections: AtomicU64,
    listening: AtomicBool,
    /// HTTPS: the TLS acceptor, and why handshakes failed (a client without a certificate).
    tls: Option<tokio_rustls::TlsAcceptor>,
    tls_errors: Mutex<Vec<String>>,
    snapshots: Mutex<Vec<Store>>,
}

impl Shared {
    pub fn acl_config(&self) -> Option<AclConfig> {
        self.acl.read().unwrap().clone()
    }

    /// Runs one write at the next index; if it changed anything, the index moves and
    /// blocking queries are woken.
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Store, u64) -> Result<T, E>) -> Result<T, E> {
        let (r, changed, idx) = {
            let mut st = self.store.lock().unwrap();
            let idx = st.next_index();
            let r = f(&mut st, idx);
            let changed = st.finish(idx);
            (r, changed, st.raft_index)
        };
        if changed {
            self.notify.send_replace(idx);
        }
        r
    }

    pub fn service_check_ids(&self) -> Vec<String> {
        self.services
            .lock()
            .unwrap()
            .values()
            .flat_map(|s| s.check_ids.clone())
            .collect()
    }

    fn seed(&self, entries: &[SeedEntry]) {
        for e in entries {
            let _ = self.write(|st, idx| -> Result<(), ()> {
                st.kvs_set(idx, Entry::new(&e.key, &e.value, e.flags), false);
                Ok(())
            });
        }
    }
}

/// Starts a server on the current tokio runtime (which must have IO and time enabled).
///
/// Refuses any listen address that is not loopback.
pub async fn start(config: Config) -> io::Result<Handle> {
    if !config.listen.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "refusing to listen on {}: only loopback addresses are allowed",
                config.listen
            ),
        ));
    }
    let mut config = config;
    if let Some(acl) = config.acl.as_mut() {
        acl.normalize()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    let tls = config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
    let listener = bind(config.listen)?;
    let addr = listener.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let store = Store::new(config.initial_index);
    let (notify, _) = watch::channel(store.raft_index);
    let (kill, _) = watch::channel(0u64);
    let seed = std::mem::take(&mut config.seed);
    let sh = Arc::new(Shared {
        store: Mutex::new(store),
        notify,
        acl: RwLock::new(config.acl.clone()),
        config,
        ctl: Mutex::new(Control::default()),
        services: Mutex::new(BTreeMap::new()),
        node_id: crate::util::uuid4(),
        started: Instant::now(),
        addr,
        kill,
        cmd: cmd_tx,
        connections: AtomicU64::new(0),
        listening: AtomicBool::new(true),
        tls,
        tls_errors: Mutex::new(Vec::new()),
        snapshots: Mutex::new(Vec::new()),
    });
    sh.seed(&seed);
    let listener_task = tokio::spawn(listen_loop(sh.clone(), listener, cmd_rx));
    let sweeper = tokio::spawn(session_sweeper(sh.clone()));
    Ok(Handle {
        controller: Controller { sh },
        listener_task: Some(listener_task),
        sweeper: Some(sweeper),
    })
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn listen_loop(sh: Arc<Shared>, listener: TcpListener, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut listener = Some(listener);
    loop {
        let cmd = match &listener {
            Some(l) => tokio::select! {
                acc = l.accept() => {
                    match acc {
                        Ok((stream, _)) => spawn_connection(&sh, stream),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                    continue;
                }
                cmd = rx.recv() => cmd,
            },
            None => rx.recv().await,
        };
        match cmd {
            None | Some(Cmd::Shutdown) => {
                drop(listener.take());
                sh.listening.store(false, Ordering::SeqCst);
                sh.kill.send_modify(|e| *e += 1);
                return;
            }
            Some(Cmd::Stop(ack)) => {
                drop(listener.take());
                sh.listening.store(false, Ordering::SeqCst);
                sh.kill.send_modify(|e| *e += 1);
                let _ = ack.send(());
            }
            Some(Cmd::Start(ack)) => {
                if listener.is_none() {
                    match bind(sh.addr) {
                        Ok(l) => {
                            listener = Some(l);
                            sh.listening.store(true, Ordering::SeqCst);
                            let _ = ack.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = ack.send(Err(e));
                        }
                    }
                } else {
                    let _ = ack.send(Ok(()));
                }
            }
        }
    }
}

fn spawn_connection(sh: &Arc<Shared>, stream: TcpStream) {
    sh.connections.fetch_add(1, Ordering::SeqCst);
    let _ = stream.set_nodelay(true);
    let mut kill = sh.kill.subscribe();
    let sh = sh.clone();
    tokio::spawn(async move {
        let Some(acceptor) = sh.tls.clone() else {
            return serve_http(sh, stream, kill).await;
        };
        let handshake = tokio::select! {
            r = acceptor.accept(stream) => r,
            _ = kill.changed() => return,
        };
        match handshake {
            Ok(tls) => serve_http(sh, tls, kill).await,
            // Go's server logs "http: TLS handshake error" and closes; so do we.
            Err(e) => sh.tls_errors.lock().unwrap().push(e.to_string()),
        }
    });
}

async fn serve_http<I>(sh: Arc<Shared>, io: I, mut kill: watch::Receiver<u64>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let sh = sh.clone();
        async move { serve(sh, req).await }
    });
    let conn = http1::Builder::new()
        .title_case_headers(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.changed() => {}
    }
}

/// Invalidates TTL sessions whose time ran out (each its own write, as in Consul).
async fn session_sweeper(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let expired = sh.store.lock().unwrap().expired_sessions(now);
        for id in expired {
            let _ = sh.write(|st, idx| -> Result<(), ()> {
                st.session_destroy(idx, &id, now);
                Ok(())
            });
        }
    }
}

fn to_hyper(r: Resp) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(r.status);
    for (k, v) in &r.headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(r.body)).expect("response")
}

async fn serve(
    sh: Arc<Shared>,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, io::Error> {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let content_length = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Ok(to_hyper(Resp::text(413, "http: request body too large"))),
    };

    if raw_path.starts_with("/_test/") || raw_path == "/_test" {
        return Ok(to_hyper(
            test_control(&sh, &method, &raw_path, &raw_query, &body).await,
        ));
    }

    let query = Req::parse_query(&raw_query);
    let path = api::decode_path(&raw_path);
    let mut req = Req {
        method,
        raw_path,
        path: path.clone().unwrap_or_default(),
        raw_query,
        query: query.clone().unwrap_or_default(),
        headers: parts.headers,
        body,
        content_length,
    };
    let (_, token_source) = req.token();
    let seq = {
        let mut ctl = sh.ctl.lock().unwrap();
        ctl.next_seq += 1;
        let seq = ctl.next_seq;
        ctl.log.push(RequestRecord {
            seq,
            method: req.method.clone(),
            path: req.raw_path.clone(),
            query: req.raw_query.clone(),
            token_present: req.token_present(),
            token_source,
            body_size: req.body.len() as u64,
            status: None,
            fault: None,
            at_ms: arrived.duration_since(sh.started).as_millis() as u64,
            duration_ms: None,
        });
        seq
    };
    let finish = |status: Option<u16>, fault: Option<String>| {
        let mut ctl = sh.ctl.lock().unwrap();
        if let Some(r) = ctl.log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = status;
            if fault.is_some() {
                r.fault = fault;
            }
            r.duration_ms = Some(arrived.elapsed().as_millis() as u64);
        }
    };

    let fault = sh
        .ctl
        .lock()
        .unwrap()
        .take_fault(&req.method, &req.raw_path);
    let mut fault_label = None;
    if let Some(f) = fault {
        fault_label = Some(f.label());
        match f.kind {
            FaultKind::Delay { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await
            }
            FaultKind::Status { status, body } => {
                let r = Resp::text(
                    status,
                    body.unwrap_or_else(|| "consul-test-server: injected fault".into()),
                );
                finish(Some(status), fault_label);
                return Ok(to_hyper(r));
            }
            FaultKind::Garbage { body } => {
                let idx = sh.store.lock().unwrap().raft_index;
                let r = Resp::empty(200)
                    .header("content-type", "application/json")
                    .header("vary", "Accept-Encoding")
                    .header("x-consul-index", idx.to_string())
                    .header("x-consul-knownleader", "true")
                    .header("x-consul-lastcontact", "0");
                let r = Resp {
                    body: Bytes::from(
                        body.unwrap_or_else(|| "[{\"LockIndex\":0,\"Key\":\"gar".into()),
                    ),
                    ..r
                };
                finish(Some(200), fault_label);
                return Ok(to_hyper(r));
            }
            FaultKind::Drop => {
                finish(None, fault_label);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "injected fault: drop",
                ));
            }
        }
    }

    let resp = match (path, query) {
        (None, _) => Resp::text(400, "400 Bad Request: invalid URL escape"),
        // Consul's wrap: url.ParseQuery failed.
        (_, None) => Resp::empty(500),
        (Some(p), Some(_)) => {
            req.path = p;
            api::handle(&sh, req).await
        }
    };
    finish(Some(resp.status), fault_label);
    Ok(to_hyper(resp))
}

fn json_resp<T: serde::Serialize>(v: &T) -> Resp {
    Resp::empty(200)
        .header("content-type", "application/json")
        .with_body(serde_json::to_vec(v).expect("json"))
}

impl Resp {
    fn with_body(mut self, b: Vec<u8>) -> Resp {
        self.body = Bytes::from(b);
        self
    }
}

async fn test_control(
    sh: &Arc<Shared>,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Resp {
    let c = Controller { sh: sh.clone() };
    let bad = |m: String| Resp::text(400, m);
    match (method, path) {
        ("GET", "/_test/requests") => json_resp(&c.requests()),
        ("DELETE", "/_test/requests") => {
            c.clear_requests();
            json_resp(&true)
        }
        ("GET", "/_test/faults") => {
            let faults: Vec<serde_json::Value> = sh
                .ctl
                .lock()
                .unwrap()
                .faults
                .iter()
                .map(|(id, f)| {
                    let mut v = serde_json::to_value(f).expect("json");
                    v["id"] = (*id).into();
                    v
                })
                .collect();
            json_resp(&faults)
        }
        ("POST" | "PUT", "/_test/faults") => match serde_json::from_slice::<Fault>(body) {
            Ok(f) => json_resp(&serde_json::json!({ "id": c.add_fault(f) })),
            Err(e) => bad(format!("bad fault: {e}")),
        },
        ("DELETE", "/_test/faults") => {
            c.clear_faults();
            json_resp(&true)
        }
        ("POST" | "PUT", "/_test/down") => {
            let ms = Req::parse_query(query).and_then(|q| {
                q.into_iter()
                    .find(|(k, _)| k == "ms")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
            });
            let Some(ms) = ms.filter(|m| *m > 0 && *m <= 600_000) else {
                return bad("need ?ms=N (1..600000)".into());
            };
            let c2 = c.clone();
            tokio::spawn(async move {
                // Let this answer go out first.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = c2.down_for(Duration::from_millis(ms)).await;
            });
            json_resp(&true)
        }
        ("GET", "/_test/kv") => {
            let entries = c.entries();
            let out: Vec<_> = entries.iter().map(|e| e.to_json(true)).collect();
            json_resp(&out)
        }
        ("POST" | "PUT", "/_test/seed") => match std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(crate::parse_seed)
        {
            Ok(entries) => {
                sh.seed(&entries);
                json_resp(&true)
            }
            Err(e) => bad(e),
        },
        ("PUT" | "POST", "/_test/acl") => {
            let text = String::from_utf8_lossy(body);
            if text.trim() == "null" {
                c.set_acl(None);
                return json_resp(&true);
            }
            match AclConfig::from_json(&text) {
                Ok(a) => {
                    c.set_acl(Some(a));
                    json_resp(&true)
                }
                Err(e) => bad(e),
            }
        }
        ("GET", "/_test/status") => json_resp(&serde_json::json!({
            "index": c.index(),
            "connections": c.connections(),
            "requests": c.requests().len(),
            "listening": sh.listening.load(Ordering::SeqCst),
            "tls_handshake_errors": c.tls_handshake_errors().len(),
        })),
        ("POST" | "PUT", "/_test/snapshot") => {
            let snap = c.snapshot();
            let mut all = sh.snapshots.lock().unwrap();
            all.push(snap.store);
            json_resp(&serde_json::json!({ "id": all.len(), "index": snap.index }))
        }
        ("POST" | "PUT", "/_test/restore") => {
            let id = Req::parse_query(query).and_then(|q| {
                q.into_iter()
                    .find(|(k, _)| k == "id")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
            });
            let store = id.and_then(|i| {
                let all = sh.snapshots.lock().unwrap();
                i.checked_sub(1).and_then(|i| all.get(i).cloned())
            });
            let Some(store) = store else {
                return bad("need ?id=N of a snapshot taken with POST /_test/snapshot".into());
            };
            let index = store.raft_index;
            c.restore(&Snapshot { store, index });
            json_resp(&serde_json::json!({ "index": index }))
        }
        _ => Resp::text(404, format!("no test control {method} {path}")),
    }
}

/// The controls of a running server: data, faults, the request log, listening.
/// Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Controller {
    sh: Arc<Shared>,
}

impl Controller {
    /// The bound address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.sh.addr
    }
    /// `http://127.0.0.1:PORT` (`https://` with TLS), what a Consul client's address setting
    /// takes.
    pub fn url(&self) -> String {
        let scheme = if self.sh.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.sh.addr)
    }
    /// Why TLS handshakes failed so far (a client without a certificate the CA signed, with
    /// `verify_incoming`), oldest first. Such clients never got to send a request.
    pub fn tls_handshake_errors(&self) -> Vec<String> {
        self.sh.tls_errors.lock().unwrap().clone()
    }

    // ---------------------------------------------------------------- faults

    /// Adds a fault rule; rules are tried in the order added. Returns its ID.
    pub fn add_fault(&self, f: Fault) -> u64 {
        self.sh.ctl.lock().unwrap().add_fault(f)
    }
    pub fn remove_fault(&self, id: u64) {
        self.sh.ctl.lock().unwrap().faults.retain(|(i, _)| *i != id);
    }
    pub fn clear_faults(&self) {
        self.sh.ctl.lock().unwrap().faults.clear();
    }
    /// The rules still active (with their remaining counts).
    pub fn faults(&self) -> Vec<Fault> {
        self.sh
            .ctl
            .lock()
            .unwrap()
            .faults
            .iter()
            .map(|(_, f)| f.clone())
            .collect()
    }

    // ---------------------------------------------------------------- request log

    /// Every Consul API request since start (or the last clear), in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.sh.ctl.lock().unwrap().log.clone()
    }
    pub fn clear_requests(&self) {
        self.sh.ctl.lock().unwrap().log.clear();
    }
    /// How many logged requests have this method (`None`: any) and a path starting with `path_prefix`.
    pub fn count_requests(&self, method: Option<&str>, path_prefix: &str) -> usize {
        self.sh
            .ctl
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| {
                method.is_none_or(|m| r.method.eq_ignore_ascii_case(m))
                    && r.path.starts_with(path_prefix)
            })
            .count()
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.sh.connections.load(Ordering::SeqCst)
    }

    // ---------------------------------------------------------------- data

    /// The current raft index.
    pub fn index(&self) -> u64 {
        self.sh.store.lock().unwrap().raft_index
    }
    /// The whole state as it is now (data, sessions, index), for [`Controller::restore`].
    pub fn snapshot(&self) -> Snapshot {
        let store = self.sh.store.lock().unwrap().clone();
        Snapshot {
            index: store.raft_index,
            store,
        }
    }
    /// Puts a snapshot back, as when the servers are rebuilt from an older snapshot: the data
    /// and the raft index go back to the snapshot's (an `X-Consul-Index` lower than clients
    /// saw), and later writes continue from there. Blocking queries in flight return at
    /// once with the restored data, as Consul abandons them on a restore.
    pub fn restore(&self, snapshot: &Snapshot) {
        let index = {
            let mut st = self.sh.store.lock().unwrap();
            *st = snapshot.store.clone();
            st.raft_index
        };
        self.sh.notify.send_replace(index);
    }
    /// Writes a key as a plain `PUT` would (no ACL check). Returns the index after.
    pub fn put(&self, key: &str, value: &[u8]) -> u64 {
        self.put_flags(key, value, 0)
    }
    pub fn put_flags(&self, key: &str, value: &[u8], flags: u64) -> u64 {
        let _ = self.sh.write(|st, idx| -> Result<(), ()> {
            st.kvs_set(idx, Entry::new(key, value, flags), false);
            Ok(())
        });
        self.index()
    }
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.sh.store.lock().unwrap().kvs_get(key).1.cloned()
    }
    pub fn delete(&self, key: &str) {
        let _ = self.sh.write(|st, idx| -> Result<(), ()> {
            st.kvs_delete(idx, key);
            Ok(())
        });
    }
    pub fn delete_tree(&self, prefix: &str) {
        let _ = self.sh.write(|st, idx| -> Result<(), ()> {
            st.kvs_delete_tree(idx, prefix);
            Ok(())
        });
    }
    /// All entries, sorted by key.
    pub fn entries(&self) -> Vec<Entry> {
        self.sh.store.lock().unwrap().all_entries()
    }
    /// Entries under a prefix, sorted by key.
    pub fn list(&self, prefix: &str) -> Vec<Entry> {
        self.sh
            .store
            .lock()
            .unwrap()
            .kvs_list(prefix)
            .1
            .into_iter()
            .cloned()
            .collect()
    }
    pub fn seed(&self, entries: &[SeedEntry]) {
        self.sh.seed(entries)
    }
    pub fn seed_json(&self, json: &str) -> Result<(), String> {
        self.sh.seed(&crate::parse_seed(json)?);
        Ok(())
    }

    // ---------------------------------------------------------------- ACL, sessions, services

    /// Turns ACLs on (with this config) or off.
    pub fn set_acl(&self, acl: Option<AclConfig>) {
        let acl = acl.map(|mut a| {
            a.normalize().expect("invalid ACL config");
            a
        });
        *self.sh.acl.write().unwrap() = acl;
    }
    pub fn sessions(&self) -> Vec<Session> {
        self.sh.store.lock().unwrap().sessions()
    }
    /// Invalidates a session now, as a TTL expiry would (locks released or deleted).
    pub fn invalidate_session(&self, id: &str) {
        let now = Instant::now();
        let _ = self.sh.write(|st, idx| -> Result<(), ()> {
            st.session_destroy(idx, id, now);
            Ok(())
        });
    }
    /// Services registered through `/v1/agent/service/register`.
    pub fn services(&self) -> Vec<Service> {
        self.sh.services.lock().unwrap().values().cloned().collect()
    }

    // ---------------------------------------------------------------- listening

    /// Whether the server currently accepts connections.
    pub fn is_listening(&self) -> bool {
        self.sh.listening.load(Ordering::SeqCst)
    }
    /// Closes the listening socket and every open connection: connections are refused
    /// until [`Controller::resume_listening`]. Returns once that is so.
    pub async fn stop_listening(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sh.cmd.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }
    /// Listens again on the same address.
    pub async fn resume_listening(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sh
            .cmd
            .send(Cmd::Start(tx))
            .map_err(|_| io::Error::other("server is shut down"))?;
        rx.await
            .map_err(|_| io::Error::other("server is shut down"))?
    }
    /// Refuses connections for `d`, then listens again.
    pub async fn down_for(&self, d: Duration) -> io::Result<()> {
        self.stop_listening().await;
        tokio::time::sleep(d).await;
        self.resume_listening().await
    }
    /// [`Controller::stop_listening`] for code outside any tokio runtime.
    pub fn stop_listening_blocking(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sh.cmd.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
    }
    /// [`Controller::resume_listening`] for code outside any tokio runtime.
    pub fn resume_listening_blocking(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sh
            .cmd
            .send(Cmd::Start(tx))
            .map_err(|_| io::Error::other("server is shut down"))?;
        rx.blocking_recv()
            .map_err(|_| io::Error::other("server is shut down"))?
    }
    /// Refuses connections now and for `d`, listening again afterwards in the
    /// background. Returns once connections are refused. Outside any tokio runtime.
    pub fn down_for_blocking(&self, d: Duration) {
        self.stop_listening_blocking();
        let c = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let _ = c.resume_listening_blocking();
        });
    }
}

/// The state of a server at one point ([`Controller::snapshot`]).
#[derive(Clone)]
pub struct Snapshot {
    store: Store,
    /// The raft index when it was taken.
    pub index: u64,
}

/// A server started with [`start`]; shuts it down when dropped.
pub struct Handle {
    controller: Controller,
    listener_task: Option<tokio::task::JoinHandle<()>>,
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }
    /// Stops listening, closes every connection and waits for that.
    pub async fn shutdown(mut self) {
        let _ = self.controller.sh.cmd.send(Cmd::Shutdown);
        if let Some(t) = self.listener_task.take() {
            let _ = t.await;
        }
        if let Some(t) = self.sweeper.take() {
            t.abort();
        }
    }
}

impl Deref for Handle {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.controller.sh.cmd.send(Cmd::Shutdown);
        if let Some(t) = self.sweeper.take() {
            t.abort();
        }
    }
}

/// A server on its own thread and runtime, for blocking test code. Shuts down on drop.
pub struct TestServer {
    controller: Controller,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with the default [`Config`] (127.0.0.1, a free port, no ACLs).
    /// Panics if it cannot.
    pub fn start() -> TestServer {
        TestServer::start_with(Config::default()).expect("start consul-test-server")
    }

    pub fn start_with(config: Config) -> io::Result<TestServer> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("consul-test-server".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match start(config).await {
                        Ok(h) => {
                            let _ = ready_tx.send(Ok(h.controller()));
                            let _ = stop_rx.await;
                            h.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })?;
        let controller = ready_rx
            .recv()
            .map_err(|_| io::Error::other("server thread died"))??;
        Ok(TestServer {
            controller,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Refuses connections (and closes open ones) until [`TestServer::resume_listening`].
    pub fn stop_listening(&self) {
        self.controller.stop_listening_blocking()
    }
    pub fn resume_listening(&self) -> io::Result<()> {
        self.controller.resume_listening_blocking()
    }
    /// Refuses connections for `d` (returns at once; listening resumes by itself).
    pub fn down_for(&self, d: Duration) {
        self.controller.down_for_blocking(d)
    }
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }
    /// Shuts down and waits for the server thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }
    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Deref for TestServer {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}
