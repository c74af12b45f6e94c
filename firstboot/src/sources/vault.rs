//! Vault (or OpenBao): AppRole login with a response-wrapped secret_id, KV v2 reads, values
//! generated once if absent (check-and-set), a PKI certificate for the host, and the token
//! revoked when the step is done.
//!
//! Login: the wrapping token cloud-init handed over is looked up first
//! (`sys/wrapping/lookup`, unauthenticated, does not consume it) and its creation path must be
//! `auth/<mount>/role/<role>/secret-id`: a token wrapping anything else is refused before it
//! is unwrapped. It is unwrapped once; a token already unwrapped is refused with a message
//! that says what that may mean. The login's client token is kept in `<root>/run/kiln/
//! vault-token` (0600, tmpfs, gone at reboot) until the step succeeds, so a rerun after a
//! fault that came later (a 403 on a path, a sealed Vault) does not need a new secret_id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kiln_signing::{Generate, VaultSources};
use serde_json::{json, Map, Value};

use super::DynamicSource;
use kiln_apply::dynamic::DynamicError;
use kiln_apply::fsroot::{Kind, Root};
use kiln_apply::http::{excerpt, sensitive, Http, TlsFiles, Verdict};
use kiln_apply::log::Log;
use kiln_apply::secret::{Redactor, Secret};
use kiln_apply::template::Values;

const NAME: &str = "vault";
/// Where the client token waits for a rerun (inside the root; tmpfs on a live system).
pub const TOKEN_CACHE: &str = "/run/kiln/vault-token";

/// The Vault source of one apply.
pub struct Vault<'a> {
    http: Http,
    sources: VaultSources,
    role_id: Option<Secret>,
    wrapped: Option<Secret>,
    token: Option<Secret>,
    token_from_cache: bool,
    /// The PKI common name, rendered for this host.
    common_name: String,
    root: Option<&'a Root>,
}

fn refused(detail: String) -> DynamicError {
    DynamicError::Refused {
        source_name: NAME.into(),
        detail,
    }
}

fn errors_of(body: &[u8]) -> String {
    excerpt(body)
}

impl<'a> Vault<'a> {
    /// A client for `addr` reading what `sources` declares. `root`: where the token waits
    /// for a rerun (`None`: never kept).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        addr: &str,
        tls: TlsFiles<'_>,
        sources: VaultSources,
        role_id: Option<Secret>,
        wrapped: Option<Secret>,
        common_name: String,
        root: Option<&'a Root>,
        request_timeout: Duration,
    ) -> Result<Vault<'a>, DynamicError> {
        Ok(Vault {
            http: Http::new(NAME, addr, tls, request_timeout)?,
            sources,
            role_id,
            wrapped,
            token: None,
            token_from_cache: false,
            common_name,
            root,
        })
    }

    fn token_header(&self) -> Result<reqwest::header::HeaderValue, DynamicError> {
        match &self.token {
            Some(t) => sensitive(t.expose_str()),
            None => Err(DynamicError::Config("vault: not logged in".into())),
        }
    }

    fn cached_token(&self) -> Option<Secret> {
        let root = self.root?;
        match root.read_text(TOKEN_CACHE, 4096) {
            Ok(Some(t)) if !t.trim().is_empty() => Some(Secret::new(t.trim().as_bytes().to_vec())),
            _ => None,
        }
    }

    fn save_token(&self, log: &dyn Log) {
        let (Some(root), Some(token)) = (self.root, &self.token) else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            let dir = root.mkdir_p("/run/kiln")?;
            kiln_apply::fsroot::set_owner_mode(std::os::fd::AsFd::as_fd(&dir), 0, 0, 0o700)?;
            let parent = root
                .parent(TOKEN_CACHE, true)?
                .ok_or_else(|| std::io::Error::other("no /run/kiln"))?;
            parent.write_atomic(
                0o600,
                0,
                0,
                |f| std::io::Write::write_all(f, token.expose()),
                || Ok(()),
            )
        })();
        if let Err(e) = result {
            log.warn(&format!(
                "vault: could not keep the token for a rerun in {TOKEN_CACHE}: {e}"
            ));
        }
    }

    fn forget_token(&self) {
        if let Some(root) = self.root {
            if let Ok(Some(p)) = root.parent(TOKEN_CACHE, false) {
                if let Ok(Some(_)) = p.lstat() {
                    let _ = p.remove(Kind::File);
                }
            }
        }
    }

    /// The AppRole paths that make a secret_id for the declared role (generated or given):
    /// what the wrapping token must have been created by.
    fn expected_creation_paths(&self) -> [String; 2] {
        let base = format!(
            "auth/{}/role/{}",
            self.sources.auth_mount, self.sources.role
        );
        [
            format!("{base}/secret-id"),
            format!("{base}/custom-secret-id"),
        ]
    }

    /// Lookup, unwrap (once), login.
    fn login(&mut self, deadline: Instant, log: &dyn Log) -> Result<(), DynamicError> {
        let wrapped = self.wrapped.clone().ok_or_else(|| {
            DynamicError::Config(
                "vault: no wrapped secret_id (--wrapped-secret-id-file, or wrapped-secret-id-file in the firstboot config)".into(),
            )
        })?;
        let role_id = match (&self.role_id, &self.sources.role_id) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => Secret::new(r.as_bytes().to_vec()),
            (None, None) => {
                return Err(DynamicError::Config(
                    "vault: no role_id (--vault-role-id-file, or role_id in the hostgroup's dynamic.vault)".into(),
                ))
            }
        };
        let wt = wrapped.expose_str().trim().to_string();
        let want = self.expected_creation_paths();

        // 1. Lookup: what does the token wrap? (Does not consume it.)
        let url = self.http.url("sys/wrapping/lookup");
        let body = serde_json::to_vec(&json!({ "token": wt })).unwrap_or_default();
        let creation_path = self.http.call(
            "sys/wrapping/lookup",
            deadline,
            log,
            &|c| c.post(&url).body(body.clone()),
            |status, body| match status {
                200 => match serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("data")?.get("creation_path")?.as_str().map(str::to_string))
                {
                    Some(p) => Verdict::Done(p),
                    None => Verdict::Retry("sys/wrapping/lookup: the answer has no data.creation_path".into()),
                },
                400 | 403 | 404 => Verdict::Fail(refused(format!(
                    "the wrapped secret_id is not valid (HTTP {status}{}): it was already unwrapped, or it expired. \
                     Wrapping tokens are single-use: if kiln-firstboot did not unwrap it, someone else did; \
                     treat the secret_id as compromised and hand the host a fresh one",
                    errors_of(body)
                ))),
                s => Verdict::Fail(refused(format!("sys/wrapping/lookup: HTTP {s}{}", errors_of(body)))),
            },
        )?;
        if !want.contains(&creation_path) {
            return Err(refused(format!(
                "the wrapping token was created by {creation_path:?}, not {:?}: refusing to unwrap it",
                want[0]
            )));
        }

        // 2. Unwrap, once.
        let url = self.http.url("sys/wrapping/unwrap");
        let header = sensitive(&wt)?;
        let secret_id = self.http.call(
            "sys/wrapping/unwrap",
            deadline,
            log,
            &|c| c.post(&url).header("X-Vault-Token", header.clone()),
            |status, body| match status {
                200 => match serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("data")?.get("secret_id")?.as_str().map(|s| Secret::new(s.as_bytes().to_vec())))
                {
                    Some(s) => Verdict::Done(s),
                    // The token is spent now: retrying could only fail.
                    None => Verdict::Fail(refused("sys/wrapping/unwrap: the answer has no data.secret_id".into())),
                },
                400 | 403 | 404 => Verdict::Fail(refused(format!(
                    "unwrapping the secret_id failed (HTTP {status}{}): the wrapping token was used already (a reused token)",
                    errors_of(body)
                ))),
                s => Verdict::Fail(refused(format!("sys/wrapping/unwrap: HTTP {s}{}", errors_of(body)))),
            },
        )?;

        // 3. Login.
        let url = self
            .http
            .url(&format!("auth/{}/login", self.sources.auth_mount));
        let body = Secret::new(
            serde_json::to_vec(&json!({
                "role_id": role_id.expose_str().trim(),
                "secret_id": secret_id.expose_str(),
            }))
            .unwrap_or_default(),
        );
        let token = self.http.call(
            &format!("auth/{}/login", self.sources.auth_mount),
            deadline,
            log,
            &|c| c.post(&url).body(body.expose().to_vec()),
            |status, body| match status {
                200 => match serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                    v.get("auth")?
                        .get("client_token")?
                        .as_str()
                        .map(|s| Secret::new(s.as_bytes().to_vec()))
                }) {
                    Some(t) => Verdict::Done(t),
                    None => Verdict::Retry("login: the answer has no auth.client_token".into()),
                },
                s => Verdict::Fail(refused(format!(
                    "AppRole login as {} refused (HTTP {s}{}): check the role_id",
                    self.sources.role,
                    errors_of(body)
                ))),
            },
        )?;
        self.token = Some(token);
        self.token_from_cache = false;
        self.save_token(log);
        log.info(&format!(
            "vault: logged in as AppRole {}",
            self.sources.role
        ));
        Ok(())
    }

    /// A call with the client token; a 403 with a token kept from an earlier run (expired,
    /// revoked) logs in again once.
    fn authed<T>(
        &mut self,
        what: &str,
        deadline: Instant,
        log: &dyn Log,
        build: &dyn Fn(
            &reqwest::blocking::Client,
            reqwest::header::HeaderValue,
        ) -> reqwest::blocking::RequestBuilder,
        mut parse: impl FnMut(u16, &[u8]) -> Verdict<T>,
    ) -> Result<T, DynamicError> {
        loop {
            let header = self.token_header()?;
            let retry_login = self.token_from_cache;
            let mut stale = false;
            let r = self.http.call(
                what,
                deadline,
                log,
                &|c| build(c, header.clone()),
                |s, b| {
                    if s == 403 && retry_login {
                        stale = true;
                        return Verdict::Fail(refused(String::new()));
                    }
                    parse(s, b)
                },
            );
            if stale {
                log.info("vault: the token kept from an earlier run is refused; logging in again");
                self.forget_token();
                self.token = None;
                self.token_from_cache = false;
                self.login(deadline, log)?;
                continue;
            }
            return r;
        }
    }

    /// A KV v2 path: its current version (0: none) and data (`None`: it does not exist).
    fn read_kv(
        &mut self,
        path: &str,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<(u64, Option<Map<String, Value>>), DynamicError> {
        let url = self.http.url(path);
        self.authed(
            &format!("reading {path}"),
            deadline,
            log,
            &|c, h| c.get(&url).header("X-Vault-Token", h),
            |status, body| {
                let v: Option<Value> = serde_json::from_slice(body).ok();
                let version = v
                    .as_ref()
                    .and_then(|v| v.get("data")?.get("metadata")?.get("version")?.as_u64())
                    .unwrap_or(0);
                match status {
                    200 => match v.as_ref().and_then(|v| v.get("data")?.get("data")) {
                        Some(Value::Object(m)) => Verdict::Done((version, Some(m.clone()))),
                        // A deleted latest version.
                        Some(Value::Null) => Verdict::Done((version, None)),
                        _ => {
                            Verdict::Retry(format!("reading {path}: the answer is not KV v2 JSON"))
                        }
                    },
                    404 => Verdict::Done((version, None)),
                    403 => Verdict::Fail(refused(format!(
                        "reading {path}: HTTP 403{}: the AppRole's policy may not read it",
                        errors_of(body)
                    ))),
                    s => Verdict::Fail(refused(format!(
                        "reading {path}: HTTP {s}{}",
                        errors_of(body)
                    ))),
                }
            },
        )
    }

    /// Writes `data` at `path` if its version is still `cas`; `false` when another host won.
    fn write_kv_cas(
        &mut self,
        path: &str,
        cas: u64,
        data: &Map<String, Value>,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<bool, DynamicError> {
        let url = self.http.url(path);
        let body = Secret::new(
            serde_json::to_vec(&json!({ "options": { "cas": cas }, "data": data }))
                .unwrap_or_default(),
        );
        self.authed(
            &format!("writing {path} (check-and-set {cas})"),
            deadline,
            log,
            &|c, h| {
                c.post(&url)
                    .header("X-Vault-Token", h)
                    .body(body.expose().to_vec())
            },
            |status, body| match status {
                200 | 204 => Verdict::Done(true),
                // "check-and-set parameter did not match the current version"
                400 if excerpt(body).contains("check-and-set") => Verdict::Done(false),
                403 => Verdict::Fail(refused(format!(
                    "writing {path}: HTTP 403{}: the AppRole's policy may not create or update it",
                    errors_of(body)
                ))),
                s => Verdict::Fail(refused(format!(
                    "writing {path}: HTTP {s}{}",
                    errors_of(body)
                ))),
            },
        )
    }

    /// Makes sure `g.field` exists at `g.path`: the first host creates it, with check-and-set;
    /// a host that loses the race reads the winner's value.
    fn generate(
        &mut self,
        g: &Generate,
        current: &mut (u64, Option<Map<String, Value>>),
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<bool, DynamicError> {
        for _ in 0..5 {
            if current.1.as_ref().is_some_and(|m| m.contains_key(&g.field)) {
                return Ok(false);
            }
            let value = random_value(g)?;
            let mut data = current.1.clone().unwrap_or_default();
            data.insert(
                g.field.clone(),
                Value::String(value.expose_str().to_string()),
            );
            if self.write_kv_cas(&g.path, current.0, &data, deadline, log)? {
                log.info(&format!(
                    "vault: generated {}#{} ({} {} characters), first host of the group to need it",
                    g.path,
                    g.field,
                    g.length,
                    g.charset.as_str()
                ));
                current.1 = Some(data);
                return Ok(true);
            }
            log.info(&format!(
                "vault: {} changed meanwhile (another host?); reading it again",
                g.path
            ));
            *current = self.read_kv(&g.path, deadline, log)?;
        }
        Err(refused(format!(
            "generating {}#{}: check-and-set lost 5 times in a row",
            g.path, g.field
        )))
    }

    /// Issues the host's certificate.
    fn issue(
        &mut self,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<Option<BTreeMap<String, Secret>>, DynamicError> {
        let Some(pki) = self.sources.pki.clone() else {
            return Ok(None);
        };
        let path = format!("{}/issue/{}", pki.mount, pki.role);
        let url = self.http.url(&path);
        let mut req = json!({ "common_name": self.common_name, "ttl": pki.ttl });
        if !pki.alt_names.is_empty() {
            req["alt_names"] = Value::String(pki.alt_names.join(","));
        }
        if !pki.ip_sans.is_empty() {
            req["ip_sans"] = Value::String(pki.ip_sans.join(","));
        }
        let body = serde_json::to_vec(&req).unwrap_or_default();
        let cn = self.common_name.clone();
        let issued = self.authed(
            &format!("{path} for {cn}"),
            deadline,
            log,
            &|c, h| c.post(&url).header("X-Vault-Token", h).body(body.clone()),
            |status, body| match status {
                200 => match serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("data").cloned())
                {
                    Some(Value::Object(d))
                        if d.get("certificate").is_some_and(Value::is_string) =>
                    {
                        let mut out = BTreeMap::new();
                        for (k, v) in d {
                            let text = match v {
                                Value::String(s) => s,
                                Value::Array(items) => items
                                    .iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join("\n"),
                                Value::Null => continue,
                                other => other.to_string(),
                            };
                            out.insert(k, Secret::new(text.into_bytes()));
                        }
                        Verdict::Done(out)
                    }
                    _ => Verdict::Retry(format!("{path}: the answer has no data.certificate")),
                },
                s => Verdict::Fail(refused(format!(
                    "{path} for {cn}: HTTP {s}{}",
                    errors_of(body)
                ))),
            },
        )?;
        Ok(Some(issued))
    }
}

/// A random value of `g.length` characters from `g.charset` (rejection sampling: unbiased).
pub fn random_value(g: &Generate) -> Result<Secret, DynamicError> {
    let alphabet = g.charset.alphabet();
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = Vec::with_capacity(g.length as usize);
    let mut buf = [0u8; 64];
    while out.len() < g.length as usize {
        getrandom::fill(&mut buf)
            .map_err(|e| DynamicError::Config(format!("no randomness from the OS: {e}")))?;
        for &b in &buf {
            if (b as usize) < limit && out.len() < g.length as usize {
                out.push(alphabet[b as usize % n]);
            }
        }
    }
    let s = Secret::new(out.clone());
    for b in out.iter_mut() {
        *b = 0;
    }
    Ok(s)
}

impl DynamicSource for Vault<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn connect(&mut self, deadline: Instant, log: &dyn Log) -> Result<(), DynamicError> {
        if let Some(t) = self.cached_token() {
            log.info(&format!(
                "vault: using the token an earlier, unfinished run kept in {TOKEN_CACHE}"
            ));
            self.token = Some(t);
            self.token_from_cache = true;
            return Ok(());
        }
        self.login(deadline, log)
    }

    fn fetch(
        &mut self,
        values: &mut Values,
        redactor: &mut Redactor,
        deadline: Instant,
        log: &dyn Log,
    ) -> Result<(), DynamicError> {
        if let Some(t) = &self.token {
            redactor.add(t);
        }
        let paths: BTreeSet<String> = self
            .sources
            .kv
            .iter()
            .cloned()
            .chain(self.sources.generate.iter().map(|g| g.path.clone()))
            .collect();
        for path in paths {
            let t = Instant::now();
            let mut current = self.read_kv(&path, deadline, log)?;
            let mut generated = 0;
            for g in self
                .sources
                .generate
                .clone()
                .iter()
                .filter(|g| g.path == path)
            {
                if self.generate(g, &mut current, deadline, log)? {
                    generated += 1;
                }
            }
            let mut fields = BTreeMap::new();
            for (k, v) in current.1.unwrap_or_default() {
                let text = match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let s = Secret::new(text.into_bytes());
                redactor.add(&s);
                fields.insert(k, s);
            }
            log.info(&format!(
                "vault: {path}: {} field(s){} ({:.3}s)",
                fields.len(),
                if generated > 0 {
                    format!(", {generated} generated")
                } else {
                    String::new()
                },
                t.elapsed().as_secs_f64()
            ));
            values.vault_paths.insert(path.clone());
            if !fields.is_empty() {
                values.vault.insert(path, fields);
            }
        }
        if self.sources.pki.is_some() {
            let t = Instant::now();
            let issued = self.issue(deadline, log)?;
            if let Some(m) = &issued {
                if let Some(k) = m.get("private_key") {
                    redactor.add(k);
                }
                log.info(&format!(
                    "vault: issued a certificate for {} (serial {}) ({:.3}s)",
                    self.common_name,
                    m.get("serial_number")
                        .map(|s| s.expose_str())
                        .unwrap_or("?"),
                    t.elapsed().as_secs_f64()
                ));
            }
            values.pki = issued;
        }
        Ok(())
    }

    /// Revokes the token (nothing after first boot needs it) and forgets the kept copy.
    fn finish(&mut self, deadline: Instant, log: &dyn Log) -> Result<(), DynamicError> {
        self.forget_token();
        if self.token.is_none() {
            return Ok(());
        }
        let url = self.http.url("auth/token/revoke-self");
        let header = self.token_header()?;
        let r = self.http.call(
            "auth/token/revoke-self",
            deadline,
            log,
            &|c| c.post(&url).header("X-Vault-Token", header.clone()),
            |status, body| match status {
                200 | 204 => Verdict::Done(()),
                s => Verdict::Fail(refused(format!(
                    "revoking the token: HTTP {s}{}",
                    errors_of(body)
                ))),
            },
        );
        self.token = None;
        r
    }

    fn requests(&self) -> u32 {
        self.http.requests()
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted HTTP server: the answers OpenBao gives in the cases that are hard to
    //! provoke in a real one (garbage, a lost race). The real OpenBao is in tests/dynamic_*.rs.
    use super::*;
    use kiln_signing::Charset;
    use std::io::{BufRead, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    type Script = Box<dyn FnMut(&str, &str, &str) -> (u16, String) + Send>;

    /// Serves one answer per connection from `script(method, path, body)`; logs the requests.
    fn mock(mut script: Script) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut len = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let mut parts = line.split_whitespace();
                let (m, p) = (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                );
                log2.lock().unwrap().push(format!("{m} {p}"));
                let (status, text) = script(&m, &p, &String::from_utf8_lossy(&body));
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (url, log)
    }

    fn sources() -> VaultSources {
        VaultSources {
            role: "web".into(),
            auth_mount: "approle".into(),
            role_id: Some("rid".into()),
            kv: vec!["secret/data/db/app".into()],
            generate: vec![],
            pki: None,
        }
    }

    fn vault(url: &str, s: VaultSources) -> Vault<'static> {
        Vault::new(
            url,
            TlsFiles::default(),
            s,
            None,
            Some(Secret::new("wrap-token-xyz")),
            "h.example.internal".into(),
            None,
            Duration::from_secs(2),
        )
        .unwrap()
    }

    fn login_script(
        creation_path: &'static str,
    ) -> impl FnMut(&str, &str, &str) -> Option<(u16, String)> {
        move |_m, p, _b| match p {
            "/v1/sys/wrapping/lookup" => Some((
                200,
                format!("{{\"data\":{{\"creation_path\":\"{creation_path}\"}}}}"),
            )),
            "/v1/sys/wrapping/unwrap" => {
                Some((200, "{\"data\":{\"secret_id\":\"sid-secret\"}}".into()))
            }
            "/v1/auth/approle/login" => {
                Some((200, "{\"auth\":{\"client_token\":\"tok-secret\"}}".into()))
            }
            _ => None,
        }
    }

    #[test]
    fn a_token_wrapping_something_else_is_not_unwrapped() {
        let mut l = login_script("auth/approle/role/db/secret-id");
        let (url, log) = mock(Box::new(move |m, p, b| {
            l(m, p, b).unwrap_or((404, "{}".into()))
        }));
        let mut v = vault(&url, sources());
        let e = v
            .connect(
                Instant::now() + Duration::from_secs(5),
                &kiln_apply::log::Quiet,
            )
            .unwrap_err();
        assert!(e.to_string().contains("refusing to unwrap"), "{e}");
        assert_eq!(*log.lock().unwrap(), ["POST /v1/sys/wrapping/lookup"]);
    }

    #[test]
    fn a_reused_wrapping_token_is_a_clear_error() {
        let (url, _) = mock(Box::new(|_, _, _| {
            (
                400,
                "{\"errors\":[\"wrapping token is not valid or does not exist\"]}".into(),
            )
        }));
        let mut v = vault(&url, sources());
        let e = v
            .connect(
                Instant::now() + Duration::from_secs(5),
                &kiln_apply::log::Quiet,
            )
            .unwrap_err();
        assert!(matches!(e, DynamicError::Refused { .. }));
        assert!(e.to_string().contains("already unwrapped"), "{e}");
        assert!(!e.to_string().contains("wrap-token-xyz"));
    }

    #[test]
    fn sealed_then_garbage_then_good_is_retried_and_a_lost_race_reads_the_winner() {
        let mut l = login_script("auth/approle/role/web/secret-id");
        let mut n = 0;
        let (url, log) = mock(Box::new(move |m, p, b| {
            if let Some(r) = l(m, p, b) {
                return r;
            }
            n += 1;
            match (m, n) {
                (_, 1) => (503, "{\"errors\":[\"Vault is sealed\"]}".into()),
                (_, 2) => (200, "<html>proxy</html>".into()),
                ("GET", 3) => (404, "{\"data\":{\"metadata\":{\"version\":0}}}".into()),
                ("POST", 4) => (400, "{\"errors\":[\"check-and-set parameter did not match the current version\"]}".into()),
                ("GET", _) => (200, "{\"data\":{\"data\":{\"password\":\"winner-pw-1\"},\"metadata\":{\"version\":1}}}".into()),
                _ => (500, "{}".into()),
            }
        }));
        let mut s = sources();
        s.generate = vec![Generate {
            path: "secret/data/db/app".into(),
            field: "password".into(),
            length: 16,
            charset: Charset::Alnum,
        }];
        let mut v = vault(&url, s);
        let d = Instant::now() + Duration::from_secs(10);
        v.connect(d, &kiln_apply::log::Quiet).unwrap();
        let mut values = Values::default();
        let mut r = Redactor::default();
        v.fetch(&mut values, &mut r, d, &kiln_apply::log::Quiet)
            .unwrap();
        assert_eq!(
            values.vault["secret/data/db/app"]["password"].expose_str(),
            "winner-pw-1"
        );
        assert_eq!(
            r.scrub("x winner-pw-1 tok-secret"),
            "x <redacted> <redacted>"
        );
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 3 + 5, "{log:?}");
    }

    #[test]
    fn random_values_have_the_length_and_alphabet() {
        for charset in [Charset::Alnum, Charset::Hex, Charset::Base64url] {
            let g = Generate {
                path: "secret/data/x".into(),
                field: "f".into(),
                length: 40,
                charset,
            };
            let a = random_value(&g).unwrap();
            let b = random_value(&g).unwrap();
            assert_eq!(a.len(), 40);
            assert!(a.expose().iter().all(|c| charset.alphabet().contains(c)));
            assert!(a != b);
        }
    }
}
