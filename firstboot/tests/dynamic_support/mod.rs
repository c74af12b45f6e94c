//! Support for the dynamic-step tests: a real OpenBao dev server per test (KILN_TEST_BAO),
//! configured through its HTTP API (AppRole, policy, KV v2, PKI, audit log), a TCP proxy that
//! can refuse connections or slow them (a Vault "down" at a fixed address), bundles with dynamic
//! templates, and checks that no partial file and no secret is left anywhere.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln_signing::{ConsulSources, Dynamic, Generate, Pki, Template, VaultSources};
use serde_json::{json, Value};

use crate::common::{self, Spec};

pub mod bao;
pub use bao::*;

/// Adds a dynamic template to a bundle spec.
pub fn template(
    s: &mut Spec,
    path: &str,
    text: &str,
    mode: &str,
    consul: &[&str],
    vault: &[&str],
    restart: &[&str],
) {
    let digest = s.blob(text.as_bytes());
    s.m.templates.push(Template {
        path: path.into(),
        digest,
        mode: mode.into(),
        owner: "root".into(),
        group: "root".into(),
        consul: consul.iter().map(|x| x.to_string()).collect(),
        vault: vault.iter().map(|x| x.to_string()).collect(),
        vars: Default::default(),
        restart: restart.iter().map(|x| x.to_string()).collect(),
        reload: vec![],
    });
    s.m.templates.sort_by(|a, b| a.path.cmp(&b.path));
}

/// The app's environment file, as the example's web hostgroup has it.
pub const APP_ENV: &str = "VERSION={{ consul(\"kiln/apps/web/version\") }}\nLOG={{ consul_or(\"kiln/apps/web/log_level\", \"info\") }}\nDB_PASSWORD={{ vault(\"secret/data/db/app\", \"password\") }}\nAPI_KEY={{ vault(\"secret/data/web/app\", \"api_key\") }}\n";

/// A bundle for hostgroup `web` reading Consul only: /etc/app/version.
pub fn consul_only_spec() -> Spec {
    let mut s = Spec::new("web", 1);
    s.file("/etc/app/static.conf", b"static\n", "0644", "root", "root");
    template(
        &mut s,
        "/etc/app/version",
        "{{ consul(\"kiln/apps/web/version\") }}\n",
        "0644",
        &["kiln/apps/web/version"],
        &[],
        &[],
    );
    template(
        &mut s,
        "/etc/app/tree.conf",
        "{% for k, v in consul_tree(\"kiln/apps/web/env/\")|items %}{{ k }}={{ v }}\n{% endfor %}",
        "0644",
        &["kiln/apps/web/env/"],
        &[],
        &[],
    );
    s.m.dynamic = Some(Dynamic {
        consul: Some(ConsulSources {
            prefixes: vec!["kiln/apps/web/".into()],
        }),
        vault: None,
    });
    s
}

/// The web hostgroup's dynamic part: Consul, a KV v2 read, a generated password, a certificate.
pub fn web_spec(version: u64) -> Spec {
    let mut s = Spec::new("web", version);
    s.file("/etc/app/static.conf", b"static\n", "0644", "root", "root");
    template(
        &mut s,
        "/etc/app/app.env",
        APP_ENV,
        "0600",
        &["kiln/apps/web/log_level", "kiln/apps/web/version"],
        &["secret/data/db/app#password", "secret/data/web/app#api_key"],
        &[],
    );
    template(
        &mut s,
        "/etc/ssl/kiln/web.crt",
        "{{ pki_cert(\"certificate\") }}\n{{ pki_cert(\"ca_chain\") }}\n",
        "0644",
        &[],
        &["pki/issue/web#ca_chain", "pki/issue/web#certificate"],
        &[],
    );
    template(
        &mut s,
        "/etc/ssl/kiln/web.key",
        "{{ pki_cert(\"private_key\") }}\n",
        "0600",
        &[],
        &["pki/issue/web#private_key"],
        &[],
    );
    s.m.dynamic = Some(Dynamic {
        consul: Some(ConsulSources {
            prefixes: vec!["kiln/apps/web/".into()],
        }),
        vault: Some(VaultSources {
            role: "web".into(),
            auth_mount: "approle".into(),
            role_id: None,
            kv: vec!["secret/data/web/app".into()],
            generate: vec![Generate {
                path: "secret/data/db/app".into(),
                field: "password".into(),
                length: 32,
                charset: kiln_signing::Charset::Alnum,
            }],
            pki: Some(Pki {
                mount: "pki".into(),
                role: "web".into(),
                common_name: "{{ hostname }}.web.example.internal".into(),
                alt_names: vec!["www.example.internal".into()],
                ip_sans: vec!["10.0.0.5".into()],
                ttl: "24h".into(),
            }),
        }),
    });
    s
}

/// The policy the web role needs: read its KV, create-if-absent the shared password, issue.
pub const WEB_POLICY: &str = r#"
path "secret/data/web/app" { capabilities = ["read"] }
path "secret/data/db/app" { capabilities = ["read", "create", "update"] }
path "pki/issue/web" { capabilities = ["update"] }
"#;

/// OpenBao set up for the web bundle: AppRole web, its policy, KV, PKI.
pub struct WebVault {
    pub bao: Bao,
    pub role_id: String,
    pub api_key: String,
}

pub fn web_vault() -> Option<WebVault> {
    let bao = Bao::start()?;
    let role_id = bao.approle("web", WEB_POLICY);
    let api_key = "api-key-d41d8cd98f00b204e9800998ecf8427e".to_string();
    bao.kv_put("web/app", json!({ "api_key": api_key }));
    bao.pki("web", "example.internal");
    Some(WebVault {
        bao,
        role_id,
        api_key,
    })
}

/// A host: its root, where cloud-init would put the credentials, and the flags to apply.
pub struct Host {
    pub root: tempfile::TempDir,
    pub creds: tempfile::TempDir,
    pub args: Vec<String>,
    /// Environment variables of the run (Consul's are cleared otherwise).
    pub env: Vec<(String, String)>,
}

impl Host {
    /// A mini root (see common::mini_root) named `hostname`.
    pub fn new(hostname: &str) -> Option<Host> {
        let root = common::mini_root()?;
        std::fs::write(root.path().join("etc/hostname"), format!("{hostname}\n")).unwrap();
        Some(Host {
            root,
            creds: tempfile::tempdir().unwrap(),
            args: Vec::new(),
            env: Vec::new(),
        })
    }

    pub fn cred(&self, name: &str, value: &str) -> String {
        let p = self.creds.path().join(name);
        std::fs::write(&p, value).unwrap();
        p.to_str().unwrap().to_string()
    }

    pub fn flag(&mut self, name: &str, value: &str) -> &mut Host {
        self.args.push(format!("--{name}"));
        self.args.push(value.to_string());
        self
    }

    /// Applies `bundle` with the flags given so far and `extra`.
    pub fn apply(&self, trust: &Path, bundle: &Path, extra: &[&str]) -> std::process::Output {
        let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        common::apply_env(self.root.path(), trust, bundle, &all, &env)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    pub fn state(&self) -> Value {
        common::read_state(self.root.path())
    }
}

/// No rendered file of `spec` exists in `root`, and no temporary of ours anywhere under it
/// (outside kiln's own /var/lib/kiln).
pub fn assert_no_rendered_file(root: &Path, spec: &Spec) {
    for t in &spec.m.templates {
        let p = root.join(t.path.trim_start_matches('/'));
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} exists after a failed dynamic step",
            p.display()
        );
    }
    let temps: Vec<String> = common::tree_listing(root)
        .into_iter()
        .filter(|l| l.contains("kiln-tmp") && !l.starts_with("var/lib/kiln"))
        .collect();
    assert!(temps.is_empty(), "temporaries left: {temps:?}");
}

/// Every file under `dir`, read whole (for grepping).
pub fn all_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                todo.push(p);
            } else if md.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
