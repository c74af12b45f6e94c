//! Vault faults during the dynamic step, against a real OpenBao (KILN_TEST_BAO), reached
//! through a TCP proxy the test can take down: down at start then up (succeeds), down past the
//! deadline (exit 20), slow, sealed (503), a reused wrapped secret_id, a token wrapping
//! something else, a 403 on a path, a missing field. After each failure: no rendered file,
//! state.json and the Consul report say failed, and a rerun once the fault is gone succeeds;
//! after a failure that came after the login, the rerun reuses the kept token instead of
//! needing a new secret_id.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::*;
use crate::dynamic_support::*;
use consul_test_server::TestServer;
use serde_json::json;

struct Case {
    v: WebVault,
    proxy: Proxy,
    consul: TestServer,
    trust: tempfile::TempDir,
    _work: tempfile::TempDir,
    bundle: std::path::PathBuf,
    spec: common::Spec,
    host: Host,
    wrapped_file: String,
}

/// The web bundle, OpenBao behind a proxy (down if `down`), a host with fresh credentials.
fn case(deadline: &str, down: bool) -> Option<Case> {
    let v = web_vault()?;
    let proxy = Proxy::new(v.bao.addr.trim_start_matches("http://"), down);
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"3.0");
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-1.kiln");
    let mut spec = web_spec(1);
    spec.write(&key, &bundle);
    let mut host = Host::new("web-1")?;
    let role_id = host.cred("role_id", &v.role_id);
    let wrapped_file = host.cred("wrapped", &v.bao.wrapped_secret_id("web", None));
    host.flag("consul-addr", &consul.url())
        .flag("vault-addr", &proxy.url())
        .flag("vault-role-id-file", &role_id)
        .flag("wrapped-secret-id-file", &wrapped_file)
        .flag("dynamic-deadline", deadline);
    Some(Case {
        v,
        proxy,
        consul,
        trust,
        _work: work,
        bundle,
        spec,
        host,
        wrapped_file,
    })
}

impl Case {
    fn apply(&self) -> std::process::Output {
        self.host.apply(self.trust.path(), &self.bundle, &[])
    }

    fn failed(&self, out: &std::process::Output, says: &str) {
        assert_eq!(out.status.code(), Some(20), "{}", out_text(out));
        assert!(
            stderr(out).contains(says),
            "{says:?} not in:\n{}",
            stderr(out)
        );
        assert_no_rendered_file(self.host.root.path(), &self.spec);
        let state = self.host.state();
        assert_eq!(state["result"], "failure");
        assert_eq!(state["exit_code"], 20);
        assert!(state["error"].as_str().unwrap().contains(says));
        let report: serde_json::Value = serde_json::from_slice(
            &self
                .consul
                .get("kiln/nodes/web/web-1")
                .expect("a report")
                .value,
        )
        .unwrap();
        assert_eq!(report["result"], "failure");
        assert!(report["error"].as_str().unwrap().contains(says));
    }

    fn succeeds(&self) -> std::process::Output {
        let out = self.apply();
        assert_eq!(out.status.code(), Some(0), "{}", out_text(&out));
        let env = std::fs::read_to_string(self.host.path("/etc/app/app.env")).unwrap();
        assert!(env.starts_with("VERSION=3.0\n"), "{env}");
        assert!(env.contains(&format!("API_KEY={}\n", self.v.api_key)));
        assert!(self.host.path("/etc/ssl/kiln/web.key").exists());
        assert!(!self.host.path("/run/kiln/vault-token").exists());
        assert_eq!(self.host.state()["result"], "success");
        out
    }

    fn fresh_secret_id(&self) {
        std::fs::write(
            &self.wrapped_file,
            self.v.bao.wrapped_secret_id("web", None),
        )
        .unwrap();
    }
}

#[test]
fn vault_down_at_start_and_up_before_the_deadline_succeeds() {
    let Some(mut c) = case("30s", true) else {
        return;
    };
    let mut proxy = std::mem::replace(&mut c.proxy, Proxy::new("127.0.0.1:1", true));
    let up = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        proxy.up();
        proxy
    });
    let t = Instant::now();
    let out = c.succeeds();
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert!(
        stderr(&out).contains("vault: sys/wrapping/lookup"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("retrying in"));
    drop(up.join().unwrap());
}

#[test]
fn vault_down_past_the_deadline_fails_with_20_then_succeeds_with_the_same_secret_id() {
    let Some(mut c) = case("3s", true) else {
        return;
    };
    let t = Instant::now();
    let out = c.apply();
    assert!(t.elapsed() < Duration::from_secs(20));
    c.failed(&out, "vault unreachable until the deadline");
    // Consul was read, but nothing is in place; the wrapping token was never used.
    c.proxy.up();
    c.succeeds();
}

#[test]
fn slow_vault_answers_are_waited_for() {
    let Some(c) = case("60s", false) else {
        return;
    };
    c.proxy.set_delay(700);
    let t = Instant::now();
    c.succeeds();
    assert!(t.elapsed() >= Duration::from_millis(700));
}

#[test]
fn a_sealed_vault_is_waited_for_then_fails_past_the_deadline() {
    let Some(c) = case("3s", false) else {
        return;
    };
    c.v.bao.seal();
    let out = c.apply();
    c.failed(&out, "Vault is sealed");
    // Unsealed while the rerun is waiting: it goes through.
    let mut c = c;
    let i = c.host.args.iter().position(|a| a == "3s").unwrap();
    c.host.args[i] = "60s".into();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            c.v.bao.unseal();
        });
        c.succeeds()
    });
    assert!(stderr(&out).contains("sealed"), "{}", stderr(&out));
}

#[test]
fn a_reused_wrapped_secret_id_is_a_clear_error() {
    let Some(c) = case("30s", false) else {
        return;
    };
    // Someone unwrapped it first.
    let wt = std::fs::read_to_string(&c.wrapped_file).unwrap();
    let (s, _) = c.v.bao.call("POST", "sys/wrapping/unwrap", None, Some(&wt));
    assert_eq!(s, 200);
    let out = c.apply();
    c.failed(&out, "already unwrapped");
    assert!(stderr(&out).contains("treat the secret_id as compromised"));
    assert!(!out_text(&out).contains(wt.trim()));
    c.fresh_secret_id();
    c.succeeds();
}

#[test]
fn a_token_wrapping_something_else_is_refused_without_unwrapping_it() {
    let Some(c) = case("30s", false) else {
        return;
    };
    let resp = http()
        .post(format!("{}/v1/sys/wrapping/wrap", c.v.bao.addr))
        .header("X-Vault-Token", "root")
        .header("X-Vault-Wrap-TTL", "5m")
        .body(json!({"secret_id": "not-from-approle"}).to_string())
        .send()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
    let wt = v["wrap_info"]["token"].as_str().unwrap().to_string();
    std::fs::write(&c.wrapped_file, &wt).unwrap();
    let mark = c.v.bao.audited().len();
    let out = c.apply();
    c.failed(&out, "refusing to unwrap it");
    assert_eq!(c.v.bao.audited_since(mark), ["update sys/wrapping/lookup"]);
    // Still unused: whoever it was meant for can still unwrap it.
    let (s, _) = c.v.bao.call("POST", "sys/wrapping/unwrap", None, Some(&wt));
    assert_eq!(s, 200);
    c.fresh_secret_id();
    c.succeeds();
}

#[test]
fn a_403_names_the_path_and_the_rerun_reuses_the_kept_token() {
    let Some(c) = case("30s", false) else {
        return;
    };
    c.v.bao.set_policy(
        "web",
        &WEB_POLICY.replace("path \"secret/data/web/app\"", "path \"secret/data/other\""),
    );
    let out = c.apply();
    c.failed(&out, "reading secret/data/web/app: HTTP 403");
    // The token waits for the rerun in the root's /run, readable by root only.
    let kept = c.host.path("/run/kiln/vault-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    c.v.bao.set_policy("web", WEB_POLICY);
    let mark = c.v.bao.audited().len();
    let out = c.succeeds();
    assert!(
        stderr(&out).contains("using the token an earlier"),
        "{}",
        stderr(&out)
    );
    let reqs = c.v.bao.audited_since(mark);
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains("wrapping") || r.contains("login")),
        "{reqs:?}"
    );
}

#[test]
fn a_missing_field_without_default_fails_with_its_name() {
    let Some(c) = case("30s", false) else {
        return;
    };
    c.v.bao.kv_put("web/app", json!({"other": "x"}));
    let out = c.apply();
    c.failed(&out, "secret/data/web/app#api_key does not exist");
    c.v.bao.kv_put("web/app", json!({"api_key": c.v.api_key}));
    c.succeeds();
}
