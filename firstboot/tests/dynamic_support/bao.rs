//! OpenBao for tests, with std and reqwest only (the builder's tests include this file too):
//! a real dev server per test (KILN_TEST_BAO) configured through its HTTP API (AppRole,
//! policies, KV v2, PKI) with a file audit log, and a TCP proxy that can refuse connections or
//! slow them (a Vault "down" at a fixed address).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The `bao` binary: KILN_TEST_BAO. Unset: the test fails in CI, else is skipped (None).
pub fn bao_bin() -> Option<PathBuf> {
    match std::env::var_os("KILN_TEST_BAO") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            if in_ci() {
                panic!("KILN_TEST_BAO is not set and CI=true: the dynamic tests need a real OpenBao (tests/support/openbao.sh)");
            }
            eprintln!("note: KILN_TEST_BAO is not set: skipping this OpenBao test (bash tests/support/openbao.sh prints the path)");
            None
        }
    }
}

pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn http_with_ca(pem: &[u8]) -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(pem).unwrap())
        .build()
        .unwrap()
}

/// A port `p` with `p + 1` free too (OpenBao's dev server binds both).
fn two_free_ports() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// A real OpenBao dev server on 127.0.0.1, root token `root`, killed on drop.
pub struct Bao {
    child: Child,
    pub addr: String,
    /// With [`Bao::start_with_client_tls`]: a second listener, https, that requires a client
    /// certificate of the given CA (`tls_require_and_verify_client_cert`).
    pub mtls_addr: Option<String>,
    pub dir: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bao {
    /// Starts one (None: skipped, see [`bao_bin`]).
    pub fn start() -> Option<Bao> {
        Self::start_with(false)
    }

    /// With `tls`, it serves https with a certificate of its own CA, `<dir>/vault-ca.pem`.
    pub fn start_with(tls: bool) -> Option<Bao> {
        Self::start_opts(tls, None)
    }

    /// Also listens on `mtls_addr`: https with `cert`/`key`, refusing clients without a
    /// certificate of `client_ca` (the dev listener stays plain http, for setting it up).
    pub fn start_with_client_tls(cert: &Path, key: &Path, client_ca: &Path) -> Option<Bao> {
        Self::start_opts(false, Some((cert, key, client_ca)))
    }

    fn start_opts(tls: bool, mtls: Option<(&Path, &Path, &Path)>) -> Option<Bao> {
        let bin = bao_bin()?;
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = two_free_ports();
            let mtls_port = mtls.map(|_| loop {
                let p = two_free_ports();
                if p.abs_diff(port) > 1 {
                    break p;
                }
            });
            let out = std::fs::File::create(dir.path().join("bao.log")).unwrap();
            // Every request to a file, one JSON line each (OpenBao allows audit devices only in
            // its configuration, not through the API).
            let audit_hcl = dir.path().join("audit.hcl");
            std::fs::write(
                &audit_hcl,
                format!(
                    "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    dir.path().join("audit.log").display()
                ),
            )
            .unwrap();
            if let (Some((cert, key, ca)), Some(p)) = (mtls, mtls_port) {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&audit_hcl)
                    .unwrap();
                write!(
                    f,
                    "listener \"tcp\" {{\n  address = \"127.0.0.1:{p}\"\n  tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n  tls_client_ca_file = \"{}\"\n  tls_require_and_verify_client_cert = true\n}}\n",
                    cert.display(),
                    key.display(),
                    ca.display()
                )
                .unwrap();
            }
            let mut extra = vec![format!("-config={}", audit_hcl.display())];
            if tls {
                extra.push("-dev-tls".to_string());
                extra.push(format!("-dev-tls-cert-dir={}", dir.path().display()));
            }
            let mut child = Command::new(&bin)
                .args([
                    "server",
                    "-dev",
                    "-dev-root-token-id=root",
                    &format!("-dev-listen-address=127.0.0.1:{port}"),
                ])
                .args(&extra)
                .env("HOME", dir.path())
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("starting bao");
            let mut http = http();
            let addr = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
            let t = Instant::now();
            let mut up = false;
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if tls {
                    match std::fs::read(dir.path().join("vault-ca.pem")) {
                        Ok(pem) if !pem.is_empty() => http = http_with_ca(&pem),
                        _ => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
                if let Ok(r) = http.get(format!("{addr}/v1/sys/health")).send() {
                    if r.status().as_u16() == 200 {
                        up = true;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "bao did not come up on {port}, retrying:\n{}",
                    std::fs::read_to_string(dir.path().join("bao.log")).unwrap_or_default()
                );
                continue;
            }
            return Some(Bao {
                child,
                addr,
                mtls_addr: mtls_port.map(|p| format!("https://127.0.0.1:{p}")),
                dir,
                http,
            });
        }
        panic!("could not start OpenBao");
    }

    /// An API call; returns the status and the JSON body (Null when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.addr);
        let mut r = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(t) = token {
            r = r.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A call as root that must succeed.
    pub fn root(&self, method: &str, path: &str, body: Value) -> Value {
        let (s, v) = self.call(method, path, Some(body), Some("root"));
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    /// AppRole `role` with `policy` (HCL); returns its role_id.
    pub fn approle(&self, role: &str, policy: &str) -> String {
        let (s, _) = self.call("GET", "sys/auth", None, Some("root"));
        assert_eq!(s, 200);
        let (_, auths) = self.call("GET", "sys/auth", None, Some("root"));
        if auths.get("approle/").is_none() {
            self.root("POST", "sys/auth/approle", json!({"type": "approle"}));
        }
        self.set_policy(role, policy);
        self.root(
            "POST",
            &format!("auth/approle/role/{role}"),
            json!({"token_policies": [role], "token_ttl": "1h", "token_max_ttl": "4h",
                   "secret_id_num_uses": 1, "secret_id_ttl": "10m"}),
        );
        let v = self.root(
            "GET",
            &format!("auth/approle/role/{role}/role-id"),
            Value::Null,
        );
        v["data"]["role_id"].as_str().unwrap().to_string()
    }

    pub fn set_policy(&self, name: &str, policy: &str) {
        self.root(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": policy }),
        );
    }

    /// A response-wrapped secret_id for `role` (what cloud-init hands over). With `secret_id`,
    /// the secret_id is that value (custom-secret-id), so a test knows it.
    pub fn wrapped_secret_id(&self, role: &str, secret_id: Option<&str>) -> String {
        let (path, body) = match secret_id {
            Some(s) => (
                format!("auth/approle/role/{role}/custom-secret-id"),
                json!({ "secret_id": s }).to_string(),
            ),
            None => (format!("auth/approle/role/{role}/secret-id"), String::new()),
        };
        let resp = self
            .http
            .post(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root")
            .header("X-Vault-Wrap-TTL", "5m")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
        v["wrap_info"]["token"].as_str().unwrap().to_string()
    }

    /// A PKI mount `pki` with an EC root and a role allowing subdomains of `domain`.
    pub fn pki(&self, role: &str, domain: &str) {
        self.root(
            "POST",
            "sys/mounts/pki",
            json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
        );
        self.root(
            "POST",
            "pki/root/generate/internal",
            json!({"common_name": "Kiln Test Root", "ttl": "87600h", "key_type": "ec", "key_bits": 256}),
        );
        self.root(
            "POST",
            &format!("pki/roles/{role}"),
            json!({"allowed_domains": [domain], "allow_subdomains": true, "max_ttl": "72h",
                   "key_type": "ec", "key_bits": 256}),
        );
    }

    pub fn kv_put(&self, path: &str, data: Value) {
        self.root(
            "POST",
            &format!("secret/data/{path}"),
            json!({ "data": data }),
        );
    }

    pub fn kv_get(&self, path: &str) -> Option<Value> {
        let (s, v) = self.call("GET", &format!("secret/data/{path}"), None, Some("root"));
        (s == 200).then(|| v["data"]["data"].clone())
    }

    pub fn seal(&self) {
        self.root("PUT", "sys/seal", Value::Null);
    }

    /// The dev server's unseal key, from what it printed at start.
    fn unseal_key(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default();
        log.lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .expect("the dev server prints its unseal key")
            .trim()
            .to_string()
    }

    pub fn unseal(&self) {
        let (s, v) = self.call(
            "PUT",
            "sys/unseal",
            Some(json!({ "key": self.unseal_key() })),
            None,
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["sealed"], false, "{v}");
    }

    /// The requests in the audit log (operation and path), in order, without those made with
    /// the root token (the test's own setup) and the server's own.
    pub fn audited(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "request")
            .filter(|v| v["auth"]["policies"] != json!(["root"]))
            .filter(|v| v["request"]["path"] != "sys/audit/test")
            .map(|v| {
                format!(
                    "{} {}",
                    v["request"]["operation"].as_str().unwrap_or(""),
                    v["request"]["path"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// The audited requests after the first `mark` (a length of [`audited`](Self::audited)).
    pub fn audited_since(&self, mark: usize) -> Vec<String> {
        self.audited().split_off(mark)
    }
}

/// A TCP proxy in front of `target`: `down()` refuses new connections and cuts open ones,
/// `up()` listens again on the same port, `delay()` holds each new connection's first bytes.
pub struct Proxy {
    pub port: u16,
    target: String,
    listening: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    delay_ms: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `target` (`127.0.0.1:PORT`), listening unless `down`.
    pub fn new(target: &str, down: bool) -> Proxy {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut p = Proxy {
            port,
            target: target.to_string(),
            listening: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
            delay_ms: Arc::new(AtomicU64::new(0)),
            thread: None,
        };
        if !down {
            p.up();
        }
        p
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn up(&mut self) {
        if self.listening.load(Ordering::SeqCst) {
            return;
        }
        let listener = {
            let t = Instant::now();
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) if t.elapsed() < Duration::from_secs(5) => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("proxy cannot listen on {} again: {e}", self.port),
                }
            }
        };
        self.stop.store(false, Ordering::SeqCst);
        self.listening.store(true, Ordering::SeqCst);
        let (stop, conns, delay, target) = (
            self.stop.clone(),
            self.conns.clone(),
            self.delay_ms.clone(),
            self.target.clone(),
        );
        self.thread = Some(std::thread::spawn(move || {
            for c in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = c else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                conns.lock().unwrap().push(server.try_clone().unwrap());
                let d = delay.load(Ordering::SeqCst);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), 0);
                pipe(server, client, d);
            }
        }));
    }

    pub fn down(&mut self) {
        if !self.listening.swap(false, Ordering::SeqCst) {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, delay_ms: u64) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut first = true;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if first && delay_ms > 0 {
                std::thread::sleep(Duration::from_millis(delay_ms));
            }
            first = false;
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
