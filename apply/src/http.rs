//! The HTTP side shared by the Consul and Vault sources: one blocking client per source (rustls
//! with ring; the system's roots, or only a given CA; a client certificate for servers that
//! verify clients), and a call that retries connection errors, timeouts, 408, 429, 5xx and
//! unreadable answers with exponential backoff and jitter, never past the step's deadline.
//! What can never succeed is not retried: a TLS certificate refused either way, and Consul's
//! 500 `invalid key name`. Each attempt is counted (the "requests per boot" figure).

use std::cell::Cell;
use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};

use crate::engine::dynamic::DynamicError;
use crate::log::Log;
use crate::retry::Backoff;
use crate::secret::Secret;

/// First pause between attempts; doubles each time up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest answer read (a whole Consul prefix, a certificate).
const MAX_BODY: u64 = 32 << 20;

/// The TLS side of one source's client, as PEM.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// CA certificates: the only roots trusted for https (else the system's).
    pub ca: Option<&'a [u8]>,
    /// A client certificate (chain) and its private key, presented to servers that verify
    /// clients (Consul's `verify_incoming`, Vault's `tls_require_and_verify_client_cert`).
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// What a caller makes of an answer.
pub enum Verdict<T> {
    Done(T),
    /// Worth another attempt (an unreadable body); the reason is shown if the deadline passes.
    Retry(String),
    Fail(DynamicError),
}

/// One source's client.
pub struct Http {
    client: Client,
    base: String,
    source: &'static str,
    request_timeout: Duration,
    requests: Cell<u32>,
}

impl Http {
    /// A client for `addr` (`http(s)://host:port`). With `tls.ca`, only those roots are
    /// trusted; with `tls.client`, that certificate is presented when the server asks.
    pub fn new(
        source: &'static str,
        addr: &str,
        tls: TlsFiles<'_>,
        request_timeout: Duration,
    ) -> Result<Http, DynamicError> {
        let lower = addr.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://"))
            || addr.contains(['?', '#', ' '])
        {
            return Err(DynamicError::Config(format!(
                "{source} address {addr:?} is not an http:// or https:// URL"
            )));
        }
        let client = client(
            concat!("kiln-firstboot/", env!("CARGO_PKG_VERSION")),
            tls,
            request_timeout,
            0,
        )
        .map_err(|e| DynamicError::Config(format!("{source} {e}")))?;
        Ok(Http {
            client,
            base: addr.trim_end_matches('/').to_string(),
            source,
            request_timeout,
            requests: Cell::new(0),
        })
    }

    /// Requests sent so far (every attempt counts).
    pub fn requests(&self) -> u32 {
        self.requests.get()
    }

    /// `<addr>/v1/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends what `build` makes until `parse` is satisfied, a final answer comes, or the
    /// deadline passes. `what` names the request in messages (`GET kiln/apps/web/`); it never
    /// holds a value.
    pub fn call<T>(
        &self,
        what: &str,
        deadline: Instant,
        log: &dyn Log,
        build: &dyn Fn(&Client) -> RequestBuilder,
        mut parse: impl FnMut(u16, &[u8]) -> Verdict<T>,
    ) -> Result<T, DynamicError> {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempts = 0u32;
        let mut last = String::from("no time left before the first attempt");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DynamicError::Unreachable {
                    source_name: self.source.into(),
                    detail: format!(
                        "{what}: {attempts} attempt(s) before the deadline, last: {last}"
                    ),
                });
            }
            attempts += 1;
            self.requests.set(self.requests.get() + 1);
            let timeout = left.min(self.request_timeout);
            last = match build(&self.client).timeout(timeout).send() {
                Err(e) if tls_refusal(&e) => {
                    return Err(DynamicError::Refused {
                        source_name: self.source.into(),
                        detail: format!(
                            "{what}: TLS: {} (a certificate refused is not retried: check the CA and client certificate files)",
                            chain(&e)
                        ),
                    })
                }
                Err(e) => chain(&e),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let mut body = Vec::new();
                    match resp.take(MAX_BODY + 1).read_to_end(&mut body) {
                        Err(e) => format!("reading the answer: {}", chain(&e)),
                        Ok(_) if body.len() as u64 > MAX_BODY => {
                            return Err(DynamicError::Refused {
                                source_name: self.source.into(),
                                detail: format!("{what}: answer larger than {MAX_BODY} bytes"),
                            })
                        }
                        Ok(_) if status == 500 && body.starts_with(INVALID_KEY_NAME) => {
                            return Err(DynamicError::Refused {
                                source_name: self.source.into(),
                                detail: format!(
                                    "{what}: HTTP 500{}: this Consul refuses the key name, which no retry can change",
                                    excerpt(&body)
                                ),
                            })
                        }
                        Ok(_) if status == 408 || status == 429 || status >= 500 => {
                            format!("HTTP {status}{}", excerpt(&body))
                        }
                        Ok(_) => match parse(status, &body) {
                            Verdict::Done(t) => return Ok(t),
                            Verdict::Fail(e) => return Err(e),
                            Verdict::Retry(why) => why,
                        },
                    }
                }
            };
            let Some(pause) = backoff.next(deadline) else {
                continue;
            };
            log.info(&format!(
                "{}: {what}: {last}; retrying in {:.1}s ({:.0}s left)",
                self.source,
                pause.as_secs_f64(),
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
            ));
            std::thread::sleep(pause);
        }
    }
}

/// The one HTTP(S) client setup of Kiln (kiln-firstboot's fetch and sources, `kiln rollout`):
/// rustls with ring (small, and built with any C compiler), the system's roots or only
/// `tls.ca`, and `tls.client` presented when the server asks; at most `redirects` redirects
/// followed (none for Consul and Vault, whose answers are never redirects; a few for a bundle
/// URL on a web server or object store). Errors name the file that is wrong (`CA: not PEM
/// certificates: ...`).
pub fn client(
    user_agent: &str,
    tls: TlsFiles<'_>,
    connect_timeout: Duration,
    redirects: usize,
) -> Result<Client, String> {
    // Installing twice is harmless (the first one stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = Client::builder()
        .connect_timeout(connect_timeout)
        .user_agent(user_agent)
        .redirect(match redirects {
            0 => reqwest::redirect::Policy::none(),
            n => reqwest::redirect::Policy::limited(n),
        });
    if let Some(pem) = tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("CA: not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("CA: no certificate in the file".into());
        }
        b = b.tls_certs_only(certs);
    }
    if let Some((cert, key)) = tls.client {
        // One buffer holding both, as reqwest reads an identity; it holds the key, so it is a
        // Secret (zeroed when dropped).
        let mut pem = Vec::with_capacity(cert.len() + key.len() + 1);
        pem.extend_from_slice(cert);
        pem.push(b'\n');
        pem.extend_from_slice(key);
        let pem = Secret::new(pem);
        let identity = reqwest::Identity::from_pem(pem.expose()).map_err(|e| {
            format!(
                "client certificate: {} (expected PEM certificates and a PEM private key)",
                chain(&e)
            )
        })?;
        b = b.identity(identity);
    }
    b.build().map_err(|e| format!("HTTP client: {}", chain(&e)))
}

/// How Consul (1.21.5 and later patch releases) answers a key name it will never accept:
/// 500 `invalid key name, keys should respect the "..." format`. A 500, yet final.
const INVALID_KEY_NAME: &[u8] = b"invalid key name";

/// A TLS handshake that failed on a certificate, ours or the server's: the server does not
/// trust our client certificate (or we sent none), or we do not trust its certificate.
/// Trying again cannot change that. (`kiln rollout` decides the same way with it.)
pub fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as A;
    // io::Error's source() skips the error it wraps (and hyper-rustls wraps tokio-rustls's
    // io::Error in another): look inside each, down to what it holds.
    fn rustls_error<'e>(mut e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
        loop {
            if let Some(t) = e.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        }
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = rustls_error(err) {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(
                        A::BadCertificate
                            | A::UnsupportedCertificate
                            | A::CertificateRevoked
                            | A::CertificateExpired
                            | A::CertificateUnknown
                            | A::UnknownCA
                            | A::CertificateRequired
                            | A::AccessDenied
                    )
            );
        }
        cur = err.source();
    }
    false
}

/// `": <first line of the body>"`, short and printable, for messages (error bodies are
/// plain text in Consul and `{"errors":[...]}` in Vault; neither echoes values).
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => match v.get("errors").and_then(|e| e.as_array()) {
            Some(errs) => errs
                .iter()
                .filter_map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            None => text.into_owned(),
        },
        Err(_) => text.into_owned(),
    };
    let line: String = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if line.trim().is_empty() {
        String::new()
    } else {
        format!(" ({})", line.trim())
    }
}

/// An error and its causes on one line ("error sending request: connection refused").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A header value that the client never prints.
pub fn sensitive(value: &str) -> Result<reqwest::header::HeaderValue, DynamicError> {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .map_err(|_| DynamicError::Config("a token holds characters a header cannot".into()))?;
    v.set_sensitive(true);
    Ok(v)
}
