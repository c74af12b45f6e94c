//! Fault injection and the request log: test controls outside the Consul API.

use serde::{Deserialize, Serialize};

/// What a fault does to a matching request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and a plain-text body instead of handling the request.
    Status {
        status: u16,
        #[serde(default)]
        body: Option<String>,
    },
    /// Answer 200 with Consul's read headers and a body that is not valid JSON.
    Garbage {
        #[serde(default)]
        body: Option<String>,
    },
    /// Hold the request this long, then handle it normally.
    Delay { delay_ms: u64 },
    /// Close the connection without answering.
    Drop,
}

/// A fault rule: which requests it applies to and how many times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Applies only to request paths starting with this (default: every Consul API path).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Applies only to this method.
    #[serde(default)]
    pub method: Option<String>,
    /// How many more requests it applies to; `None` until cleared.
    #[serde(default)]
    pub count: Option<u64>,
}

impl Fault {
    /// Answer `status` (e.g. 503) with a short plain-text body.
    pub fn status(status: u16) -> Fault {
        Fault::new(FaultKind::Status { status, body: None })
    }
    /// Answer 200 with a body that is not JSON.
    pub fn garbage() -> Fault {
        Fault::new(FaultKind::Garbage { body: None })
    }
    /// Hold requests `ms` milliseconds before handling them.
    pub fn delay_ms(ms: u64) -> Fault {
        Fault::new(FaultKind::Delay { delay_ms: ms })
    }
    /// Close the connection without an answer.
    pub fn drop_connection() -> Fault {
        Fault::new(FaultKind::Drop)
    }
    fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            path_prefix: None,
            method: None,
            count: None,
        }
    }
    /// The body a `status` or `garbage` fault answers with, e.g. Consul's own error text.
    pub fn body(mut self, text: &str) -> Fault {
        match &mut self.kind {
            FaultKind::Status { body, .. } | FaultKind::Garbage { body } => {
                *body = Some(text.to_string())
            }
            FaultKind::Delay { .. } | FaultKind::Drop => {}
        }
        self
    }
    /// Only for paths starting with `prefix`.
    pub fn path_prefix(mut self, prefix: &str) -> Fault {
        self.path_prefix = Some(prefix.to_string());
        self
    }
    /// Only for requests with this method.
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }
    /// Only for the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Fault {
        self.count = Some(n);
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if self.count == Some(0) {
            return false;
        }
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        true
    }

    pub(crate) fn label(&self) -> String {
        match &self.kind {
            FaultKind::Status { status, .. } => format!("status {status}"),
            FaultKind::Garbage { .. } => "garbage".into(),
            FaultKind::Delay { delay_ms } => format!("delay {delay_ms}ms"),
            FaultKind::Drop => "drop".into(),
        }
    }
}

/// Where a request's token came from, if it had one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    Query,
    Header,
    Bearer,
}

/// One logged Consul API request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// 1, 2, ... in arrival order since start (or since the last clear).
    pub seq: u64,
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// Whether the request carried a token (`?token=`, `X-Consul-Token` or `Authorization: Bearer`).
    pub token_present: bool,
    /// Which of those the server used (Consul's precedence).
    pub token_source: Option<TokenSource>,
    pub body_size: u64,
    /// The status answered; `None` while in flight (e.g. a blocking query) or when the
    /// connection was dropped by a fault.
    pub status: Option<u16>,
    /// The fault applied, if any (e.g. "status 503", "delay 200ms").
    pub fault: Option<String>,
    /// Milliseconds since the server started, at arrival.
    pub at_ms: u64,
    /// Milliseconds spent answering; `None` while in flight.
    pub duration_ms: Option<u64>,
}

impl RequestRecord {
    /// The query parameter `name`'s decoded value ("" for a bare flag), if present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .find_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let k = crate::util::query_decode(k)?;
                (k == name).then(|| crate::util::query_decode(v).unwrap_or_default())
            })
    }
}

#[derive(Default)]
pub(crate) struct Control {
    pub faults: Vec<(u64, Fault)>,
    pub next_fault_id: u64,
    pub log: Vec<RequestRecord>,
    pub next_seq: u64,
}

impl Control {
    pub fn add_fault(&mut self, f: Fault) -> u64 {
        self.next_fault_id += 1;
        self.faults.push((self.next_fault_id, f));
        self.next_fault_id
    }

    /// The first matching fault, consuming one of its uses.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let pos = self
            .faults
            .iter()
            .position(|(_, f)| f.matches(method, path))?;
        let f = &mut self.faults[pos].1;
        let out = f.clone();
        if let Some(c) = f.count.as_mut() {
            *c -= 1;
            if *c == 0 {
                self.faults.remove(pos);
            }
        }
        Some(out)
    }
}
