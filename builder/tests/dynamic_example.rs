//! The shipped example's dynamic values, end to end: `kiln build` of web and db records what
//! each dynamic template reads; their dynamic part (templates and sources, as built) is applied
//! by kiln-firstboot to small roots, against the project's Consul test server and a real
//! OpenBao (KILN_TEST_BAO), set up as a fleet would be (an AppRole per hostgroup, KV v2, PKI).
//! It checks the values in place (the app version, the one database password web and db share,
//! web's certificate) and measures the requests each boot makes and the dynamic step's time
//! (printed as `MEASURE` lines: `cargo test -p kiln-builder --test integration dynamic_example:: -- --nocapture`).

use crate::bao;

use std::path::Path;
use std::process::Output;

use crate::bao::Bao;
use crate::support::*;
use consul_test_server::TestServer;
use kiln_signing::{Blob, Manifest, SigningKey};

/// The built manifest and the blobs of its templates.
fn built(bundle: &Path) -> (Manifest, Vec<(String, Vec<u8>)>) {
    let json = sh(&format!(
        "zstd -dc {} | tar -xO kiln/manifest.json",
        bundle.display()
    ));
    assert!(json.status.success());
    let m: Manifest = serde_json::from_slice(&json.stdout).unwrap();
    let mut blobs = Vec::new();
    for t in &m.templates {
        let out = sh(&format!(
            "zstd -dc {} | tar -xO blobs/{}",
            bundle.display(),
            t.digest
        ));
        assert!(out.status.success());
        blobs.push((t.digest.clone(), out.stdout));
    }
    (m, blobs)
}

/// A bundle with only the dynamic part of `m` (its templates and sources, unchanged), signed
/// by `key`: what the dynamic step of a real boot of that hostgroup does, without packages and
/// services a small root cannot take.
fn dynamic_only(m: &Manifest, blobs: &[(String, Vec<u8>)], key: &SigningKey, out: &Path) {
    let mut d = m.clone();
    // Built with the tests' fixed SOURCE_DATE_EPOCH: valid from now on instead.
    let now = std::time::SystemTime::now();
    d.created =
        humantime::format_rfc3339_seconds(now - std::time::Duration::from_secs(3600)).to_string();
    d.expires =
        humantime::format_rfc3339_seconds(now + std::time::Duration::from_secs(86400)).to_string();
    d.entries.clear();
    d.users.clear();
    d.groups.clear();
    d.packages.clear();
    d.services.clear();
    d.commands.clear();
    let mut list: Vec<Blob> = blobs
        .iter()
        .map(|(digest, b)| Blob {
            digest: digest.clone(),
            size: b.len() as u64,
        })
        .collect();
    list.sort();
    list.dedup();
    d.blobs = list;
    let bytes = kiln_signing::write_bundle(Vec::new(), &d, key, &mut |b, w| {
        std::io::Write::write_all(w, &blobs.iter().find(|(d, _)| *d == b.digest).unwrap().1)
    })
    .unwrap();
    std::fs::write(out, bytes).unwrap();
}

/// A small root: Debian 12 amd64 as the example's base says, the accounts its templates use.
fn mini_root(hostname: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kiln-dyn-example-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    for sub in ["etc", "usr/lib", "var/lib/dpkg"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(d.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    std::fs::write(d.join("var/lib/dpkg/arch"), "amd64\n").unwrap();
    std::fs::write(
        d.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:2100:2100::/home/app:/usr/sbin/nologin\npostgres:x:105:110::/var/lib/postgresql:/bin/bash\n",
    )
    .unwrap();
    std::fs::write(
        d.join("etc/group"),
        "root:x:0:\napp:x:2100:\npostgres:x:110:\n",
    )
    .unwrap();
    std::fs::write(d.join("etc/hostname"), format!("{hostname}\n")).unwrap();
    dir
}

fn firstboot(args: &[&str]) -> Output {
    let bin = firstboot_bin().expect("kiln-firstboot");
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    eprintln!(
        "$ kiln-firstboot {}\n--- exit {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Boot {
    root: tempfile::TempDir,
    vault: Vec<String>,
    consul_reads: usize,
    state: serde_json::Value,
}

#[allow(clippy::too_many_arguments)]
fn boot(
    hostname: &str,
    bundle: &Path,
    trust: &Path,
    consul: &TestServer,
    bao: &Bao,
    role: &str,
    role_id: &str,
    creds: &Path,
) -> Boot {
    let root = mini_root(hostname);
    let rid = creds.join(format!("{hostname}.role_id"));
    std::fs::write(&rid, role_id).unwrap();
    let wrapped = creds.join(format!("{hostname}.wrapped"));
    std::fs::write(&wrapped, bao.wrapped_secret_id(role, None)).unwrap();
    let mark = bao.audited().len();
    let kv_before = consul
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v1/kv/kiln/apps/"))
        .count();
    let out = firstboot(&[
        "apply",
        "--root",
        root.path().to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--consul-addr",
        &consul.url(),
        "--vault-addr",
        &bao.addr,
        "--vault-role-id-file",
        rid.to_str().unwrap(),
        "--wrapped-secret-id-file",
        wrapped.to_str().unwrap(),
        "--dynamic-deadline",
        "60s",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("var/lib/kiln/state.json")).unwrap(),
    )
    .unwrap();
    let consul_reads = consul
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v1/kv/kiln/apps/"))
        .count()
        - kv_before;
    Boot {
        root,
        vault: bao.audited_since(mark),
        consul_reads,
        state,
    }
}

fn dynamic_seconds(state: &serde_json::Value) -> f64 {
    state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "dynamic")
        .unwrap()["seconds"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_example_hostgroups_get_real_dynamic_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config(dir.path());
    let (key, _) = key_and_trust(dir.path());
    let out = dir.path().join("out");
    ok(&kiln(&[
        "build",
        "web",
        "db",
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "7",
    ]));

    // What the builder recorded.
    let (web, web_blobs) = built(&out.join("web-7.kiln"));
    let (db, db_blobs) = built(&out.join("db-7.kiln"));
    let t = |m: &Manifest, p: &str| m.templates.iter().find(|t| t.path == p).cloned().unwrap();
    let env = t(&web, "/etc/app/app.env");
    assert_eq!(
        env.consul,
        ["kiln/apps/web/log_level", "kiln/apps/web/version"]
    );
    assert_eq!(env.vault, ["secret/data/db/app#password"]);
    assert_eq!((env.mode.as_str(), env.owner.as_str()), ("0600", "app"));
    assert_eq!(
        t(&web, "/etc/ssl/kiln/web.key").vault,
        ["pki/issue/web#private_key"]
    );
    assert_eq!(t(&web, "/etc/ssl/kiln/web.key").mode, "0600");
    assert_eq!(t(&web, "/etc/ssl/kiln/web.crt").mode, "0644");
    assert_eq!(t(&web, "/etc/ssl/kiln/web.crt").reload, ["nginx.service"]);
    let pw = t(&db, "/etc/app-db/app.password");
    assert_eq!(pw.vault, ["secret/data/db/app#password"]);
    assert_eq!((pw.mode.as_str(), pw.owner.as_str()), ("0600", "postgres"));
    let wd = web.dynamic.as_ref().unwrap();
    assert_eq!(wd.consul.as_ref().unwrap().prefixes, ["kiln/apps/web/"]);
    assert_eq!(wd.vault.as_ref().unwrap().role, "web");
    assert_eq!(
        db.dynamic.as_ref().unwrap().vault.as_ref().unwrap().role,
        "db"
    );
    // No template text is rendered into the bundle: the secrets never are in it.
    assert!(web.entries.iter().all(|e| e.path != "/etc/app/app.env"));

    // The fleet's side.
    let Some(bao) = bao::bao_bin().and_then(|_| Bao::start()) else {
        return;
    };
    if !need_root() {
        return;
    }
    let db_policy = r#"path "secret/data/db/app" { capabilities = ["read", "create", "update"] }"#;
    let web_policy = r#"
path "secret/data/db/app" { capabilities = ["read", "create", "update"] }
path "pki/issue/web" { capabilities = ["update"] }
"#;
    let db_role_id = bao.approle("db", db_policy);
    let web_role_id = bao.approle("web", web_policy);
    bao.pki("web", "example.invalid");
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"1.4.2");

    let signer = SigningKey::from_seed(&[0x42; 32], "dynamic-example@kiln-test");
    let trust = dir.path().join("fb-trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::write(
        trust.join("k.pub"),
        format!("{}\n", signer.public().to_openssh()),
    )
    .unwrap();
    let web_bundle = dir.path().join("web-dynamic.kiln");
    let db_bundle = dir.path().join("db-dynamic.kiln");
    dynamic_only(&web, &web_blobs, &signer, &web_bundle);
    dynamic_only(&db, &db_blobs, &signer, &db_bundle);
    let creds = tempfile::tempdir().unwrap();

    // db boots first: it creates the password. Then two web hosts.
    let db1 = boot(
        "db-1",
        &db_bundle,
        &trust,
        &consul,
        &bao,
        "db",
        &db_role_id,
        creds.path(),
    );
    let web1 = boot(
        "web-1",
        &web_bundle,
        &trust,
        &consul,
        &bao,
        "web",
        &web_role_id,
        creds.path(),
    );
    let web2 = boot(
        "web-2",
        &web_bundle,
        &trust,
        &consul,
        &bao,
        "web",
        &web_role_id,
        creds.path(),
    );

    let password = bao.kv_get("db/app").unwrap()["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(password.len(), 32);
    assert_eq!(
        std::fs::read_to_string(db1.root.path().join("etc/app-db/app.password")).unwrap(),
        format!("{password}\n")
    );
    for w in [&web1, &web2] {
        let env = std::fs::read_to_string(w.root.path().join("etc/app/app.env")).unwrap();
        assert!(env.contains("APP_VERSION=1.4.2\n"), "{env}");
        assert!(env.contains("APP_LOG_LEVEL=info\n"), "{env}");
        assert!(
            env.contains(&format!("DATABASE_PASSWORD={password}\n")),
            "{env}"
        );
        let crt = std::fs::read_to_string(w.root.path().join("etc/ssl/kiln/web.crt")).unwrap();
        assert_eq!(crt.matches("BEGIN CERTIFICATE").count(), 2);
        let key = std::fs::read_to_string(w.root.path().join("etc/ssl/kiln/web.key")).unwrap();
        assert!(key.contains("PRIVATE KEY"));
    }

    // Requests per boot.
    assert_eq!(
        db1.vault,
        [
            "update sys/wrapping/lookup",
            "update sys/wrapping/unwrap",
            "update auth/approle/login",
            "read secret/data/db/app",
            "create secret/data/db/app",
            "update auth/token/revoke-self",
        ]
    );
    assert_eq!(db1.consul_reads, 0);
    for w in [&web1, &web2] {
        assert_eq!(
            w.vault,
            [
                "update sys/wrapping/lookup",
                "update sys/wrapping/unwrap",
                "update auth/approle/login",
                "read secret/data/db/app",
                "update pki/issue/web",
                "update auth/token/revoke-self",
            ]
        );
        assert_eq!(w.consul_reads, 1);
        assert_eq!(w.state["dynamic"]["vault_requests"], 6);
        // One prefix read and the report.
        assert_eq!(w.state["dynamic"]["consul_requests"], 2);
    }
    for (name, b) in [
        ("db (first to boot)", &db1),
        ("web", &web1),
        ("web (second host)", &web2),
    ] {
        eprintln!(
            "MEASURE {name}: consul {} prefix read(s) + 1 report write, vault {} request(s) [{}], dynamic step {:.3}s",
            b.consul_reads,
            b.vault.len(),
            b.vault.join(", "),
            dynamic_seconds(&b.state)
        );
    }
    let reports: Vec<String> = consul
        .list("kiln/nodes/")
        .iter()
        .map(|e| e.key.clone())
        .collect();
    assert_eq!(
        reports,
        [
            "kiln/nodes/db/db-1",
            "kiln/nodes/web/web-1",
            "kiln/nodes/web/web-2"
        ]
    );
}
