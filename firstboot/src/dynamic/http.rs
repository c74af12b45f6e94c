//! The HTTP side shared by the Consul and Vault sources: one blocking client per source (rustls
//! with ring; the system's roots, or only a given CA), and a call that retries connection
//! errors, timeouts, 408, 429, 5xx and unreadable answers with exponential backoff and jitter,
//! never past the step's deadline. Each attempt is counted (the "requests per boot" figure).

use std::cell::Cell;
use std::io::Read;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};

use super::DynamicError;
use crate::log::Log;

/// First pause between attempts; doubles each time up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest answer read (a whole Consul prefix, a certificate).
const MAX_BODY: u64 = 32 << 20;

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
    /// A client for `addr` (`http(s)://host:port`). With `ca_pem`, only those roots are trusted.
    pub fn new(
        source: &'static str,
        addr: &str,
        ca_pem: Option<&[u8]>,
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
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = Client::builder()
            .connect_timeout(request_timeout)
            .user_agent(concat!("kiln-firstboot/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                DynamicError::Config(format!("{source} CA: not PEM certificates: {e}"))
            })?;
            if certs.is_empty() {
                return Err(DynamicError::Config(format!(
                    "{source} CA: no certificate in the file"
                )));
            }
            b = b.tls_certs_only(certs);
        }
        let client = b
            .build()
            .map_err(|e| DynamicError::Config(format!("{source} HTTP client: {}", chain(&e))))?;
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
        let mut backoff = FIRST_BACKOFF;
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
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                continue;
            }
            let pause = jitter(backoff).min(left);
            log.info(&format!(
                "{}: {what}: {last}; retrying in {:.1}s ({:.0}s left)",
                self.source,
                pause.as_secs_f64(),
                left.as_secs_f64()
            ));
            std::thread::sleep(pause);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// `d/2 + random(0..d/2)`: spreads the retries of a fleet booting at once.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = match getrandom::fill(&mut b) {
        Ok(()) => u32::from_le_bytes(b) as f64 / u32::MAX as f64,
        Err(_) => 0.5,
    };
    d / 2 + d.mul_f64(0.5 * r)
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
