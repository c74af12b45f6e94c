//! The report a host writes to Consul when its apply ends (`kiln/nodes/<hostgroup>/<hostname>`,
//! in the state file's terms) and `kiln rollout` reads: one type for both sides, so what a
//! host writes is what rollout reads. Reading is lenient: a field a newer kiln-firstboot adds
//! is ignored, one an older one lacks takes its default.

use serde::{Deserialize, Serialize};

use crate::state::{Health, State};

/// One node's report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeReport {
    #[serde(default)]
    pub hostgroup: String,
    #[serde(default)]
    pub hostname: String,
    /// 0 when the node refused its bundle before it could read a version (bad pin,
    /// signature, a fetch that failed).
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub bundle_sha256: String,
    /// `success` or `failure` (a reader shows anything else as it is and counts it as
    /// neither).
    pub result: String,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub finished_at: String,
    #[serde(default)]
    pub steps: Vec<ReportStep>,
    #[serde(default)]
    pub error: Option<String>,
    /// `healthy` or `unhealthy` with each check, when the bundle has checks and they ran (an
    /// unhealthy node's `result` is `failure` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The kiln-firstboot version that wrote it.
    #[serde(default)]
    pub firstboot: String,
    /// Where the reader found it (`kiln/nodes/web/web-01`); never written by a host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// The report's ModifyIndex in Consul, for the reader; never written by a host.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub modify_index: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A step and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportStep {
    pub name: String,
    pub seconds: f64,
}

impl NodeReport {
    /// The report of an apply that ended with `state`, on the host named `hostname`.
    pub fn of(state: &State, hostname: &str) -> NodeReport {
        NodeReport {
            hostgroup: state.hostgroup.clone(),
            hostname: hostname.to_string(),
            version: state.version,
            bundle_sha256: state.sha256.clone(),
            result: state.result.as_str().to_string(),
            exit_code: state.exit_code,
            started_at: state.started_at.clone(),
            finished_at: state.applied_at.clone(),
            steps: state
                .steps
                .iter()
                .map(|s| ReportStep {
                    name: s.name.clone(),
                    seconds: s.seconds,
                })
                .collect(),
            error: state.error.clone(),
            health: state.health.clone(),
            firstboot: env!("CARGO_PKG_VERSION").to_string(),
            key: String::new(),
            modify_index: 0,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.result == "success"
    }

    pub fn failed(&self) -> bool {
        self.result == "failure"
    }
}

/// The report's key: `kiln/nodes/<hostgroup>/<hostname>`.
pub fn report_key(hostgroup: &str, hostname: &str) -> String {
    format!("kiln/nodes/{hostgroup}/{hostname}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CheckResult, Outcome, Step};

    fn state() -> State {
        State {
            result: Outcome::Failure,
            hostgroup: "web".into(),
            version: 7,
            sha256: "ab".repeat(32),
            source: "/srv/web.kiln".into(),
            signer: "SHA256:x".into(),
            started_at: "2026-12-05T10:00:00Z".into(),
            applied_at: "2026-12-05T10:00:09Z".into(),
            error: Some("health: check http failed".into()),
            exit_code: 24,
            steps: vec![Step {
                name: "files".into(),
                seconds: 0.5,
                summary: "3 written".into(),
            }],
            commands: vec![],
            warnings: vec![],
            hostname: Some("web-1".into()),
            dynamic: None,
            health: Some(Health {
                status: "unhealthy".into(),
                checks: vec![CheckResult {
                    name: "http".into(),
                    passed: false,
                    seconds: 30.0,
                    tries: 30,
                    detail: Some("status 502".into()),
                }],
            }),
        }
    }

    /// The bytes a host writes (a change here is a change of the format every fleet's rollout
    /// reads), and that rollout reads back exactly what was written.
    #[test]
    fn what_a_host_writes_is_what_rollout_reads() {
        let r = NodeReport::of(&state(), "web-1");
        let bytes = serde_json::to_string(&r).unwrap();
        let want = format!(
            concat!(
                r#"{{"hostgroup":"web","hostname":"web-1","version":7,"bundle_sha256":"{}","#,
                r#""result":"failure","exit_code":24,"started_at":"2026-12-05T10:00:00Z","#,
                r#""finished_at":"2026-12-05T10:00:09Z","steps":[{{"name":"files","seconds":0.5}}],"#,
                r#""error":"health: check http failed","health":{{"status":"unhealthy","checks":"#,
                r#"[{{"name":"http","passed":false,"seconds":30.0,"tries":30,"detail":"status 502"}}]}},"#,
                r#""firstboot":"{}"}}"#
            ),
            "ab".repeat(32),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(bytes, want);
        let back: NodeReport = serde_json::from_str(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.failed() && !back.succeeded());
    }

    #[test]
    fn reports_of_other_versions_are_read() {
        // A newer host's field is ignored; an older host's missing ones take defaults.
        let newer = r#"{"result":"success","version":8,"hostname":"h","shiny":{"a":1}}"#;
        let r: NodeReport = serde_json::from_str(newer).unwrap();
        assert!(r.succeeded());
        assert_eq!((r.version, r.hostname.as_str()), (8, "h"));
        let older = r#"{"result":"success","health":{"status":"healthy","checks":[{"name":"x"}]}}"#;
        let r: NodeReport = serde_json::from_str(older).unwrap();
        assert_eq!(r.health.unwrap().checks[0].name, "x");
        assert!(serde_json::from_str::<NodeReport>(r#"{"version":1}"#).is_err());
    }
}
