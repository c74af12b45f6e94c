//! `<root>/var/lib/kiln/state.json`: what the last apply did, written atomically when it ends
//! (success or failure) and read by `kiln-firstboot status`, by a rerun (to say "already
//! applied" and to refuse a rollback) and by monitoring.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::fsroot::Root;

/// Where the engine keeps its journal, staging area and state: no entry may touch it.
pub const STATE_DIR: &str = kiln_signing::spec::STATE_DIR;

/// The state file's path inside the root.
pub const STATE_FILE: &str = "/var/lib/kiln/state.json";
const STATE_LIMIT: u64 = 64 << 20;

/// How the last apply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// `success` or `failure`, as the state file and the report write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One phase of an apply and how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub seconds: f64,
    pub summary: String,
}

/// One of the bundle's commands and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub name: String,
    /// `ok`, `failed`, `timed_out` or `skipped`.
    pub status: String,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    /// The last 64 KiB of its stdout and stderr.
    pub output: String,
    /// Earlier output was dropped to keep the limit.
    pub truncated: bool,
}

/// The state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub result: Outcome,
    pub hostgroup: String,
    pub version: u64,
    /// sha256 of the whole bundle file.
    pub sha256: String,
    /// Where the bundle came from (path or URL).
    pub source: String,
    /// Fingerprint (and comment) of the key that signed it.
    pub signer: String,
    pub started_at: String,
    /// When the apply ended (RFC 3339 UTC).
    pub applied_at: String,
    pub error: Option<String>,
    pub exit_code: i32,
    pub steps: Vec<Step>,
    pub commands: Vec<CommandResult>,
    pub warnings: Vec<String>,
    /// The host's name, when the dynamic step knew it (the Consul report's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// What the dynamic step did: templates, requests per source, where the report went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSummary>,
    /// The health checks, when the bundle has any and they ran (live hosts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

impl State {
    /// Reads the root's state file; `None` if there is none.
    pub fn read(root: &Root) -> io::Result<Option<State>> {
        match root.read_text(STATE_FILE, STATE_LIMIT)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| io::Error::other(format!("{STATE_FILE} does not parse: {e}"))),
        }
    }

    /// Writes the state file atomically (temporary, fsync, rename, fsync of the directory).
    /// 0600: command output may say more than everyone should read.
    pub fn write(&self, root: &Root) -> io::Result<()> {
        let mut text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        text.push(b'\n');
        root.mkdir_p(STATE_DIR)?;
        let parent = root
            .parent(STATE_FILE, true)?
            .ok_or_else(|| io::Error::other("no state directory"))?;
        parent.write_atomic(0o600, 0, 0, |f| f.write_all(&text), || Ok(()))
    }

    /// "web version 7 (sha256 0123…)".
    pub fn describe(&self) -> String {
        format!(
            "{} version {} (sha256 {})",
            self.hostgroup, self.version, self.sha256
        )
    }
}

/// Now, RFC 3339 UTC, to the second. A clock outside 1970..9999 (humantime would panic) is
/// shown as what it is instead.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) if d.as_secs() < 253_402_300_800 => {
            humantime::format_rfc3339_seconds(now).to_string()
        }
        _ => format!("{now:?}"),
    }
}

/// What the dynamic step did, for the state file and the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicSummary {
    pub templates: usize,
    pub changed: usize,
    /// HTTP requests to Consul (the report included), every attempt counted.
    pub consul_requests: u32,
    /// HTTP requests to Vault, every attempt counted.
    pub vault_requests: u32,
    /// Where the result was reported (`consul kiln/nodes/web/web-1`), or why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// How the checks went, for the state file and the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` (every check passed) or `unhealthy`.
    pub status: String,
    #[serde(default)]
    pub checks: Vec<CheckResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    // Defaults: a report written by another kiln-firstboot is still read (crate::report).
    #[serde(default)]
    pub passed: bool,
    /// Seconds from the start of the health step to the pass (or to the deadline).
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub tries: u32,
    /// What the last try saw, when it failed (`connection refused`, `status 502`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
