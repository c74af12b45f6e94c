//! Dynamic templates reading `vars` and the host's facts, as a user sees them: `kiln build`
//! records only the vars a template reads, `kiln inspect` and `kiln render` show them, and
//! `kiln-firstboot apply --root` renders them with the facts of the root (its machine-id,
//! cloud-init's instance data) and a Consul value; a fact the host lacks fails the apply (exit
//! 20) naming the template, the fact and why, unless the template guards it.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::*;
use consul_test_server::TestServer;

const SITE: &str = "# {{ hostname }} ({{ hostgroup }})\n\
server_name {{ vars.site.name }};\n\
listen {{ vars.site.port }};\n\
# instance {{ host.instance_id }} in {{ host.availability_zone }} ({{ host.region }}, {{ host.cloud_name }})\n\
# machine {{ host.machine_id }}, {{ host.hostname }} at {{ host.primary_ip }}\n\
# app {{ consul(\"kiln/apps/app/version\") }}\n";

const GUARDED: &str = "instance {{ host.instance_id | default(\"unknown\") }}\n\
{% if host.region is defined %}region {{ host.region }}\n{% endif %}\
{{ vars.motd | default(\"no motd\") }}\n";

const MACHINE_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn config(dir: &Path) -> PathBuf {
    let cfg = dir.join("config");
    std::fs::create_dir_all(cfg.join("hostgroups")).unwrap();
    std::fs::create_dir_all(cfg.join("files")).unwrap();
    std::fs::write(
        cfg.join("hostgroups/default.yaml"),
        "vars:\n  site: {name: www.example.invalid, port: 8080}\n  unrelated: {token_hint: not-for-templates}\n",
    )
    .unwrap();
    std::fs::write(cfg.join("files/site.conf.j2"), SITE).unwrap();
    std::fs::write(cfg.join("files/guarded.j2"), GUARDED).unwrap();
    std::fs::write(
        cfg.join("hostgroups/app.yaml"),
        "dynamic:\n  consul:\n    prefixes: [kiln/apps/app/]\nfiles:\n  /etc/site.conf:\n    from: site.conf.j2\n    template: dynamic\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("hostgroups/edge.yaml"),
        "files:\n  /etc/motd:\n    from: guarded.j2\n    template: dynamic\n",
    )
    .unwrap();
    cfg
}

fn root(dir: &Path, name: &str, instance_data: Option<&str>) -> PathBuf {
    let r = dir.join(name);
    for sub in ["etc", "usr/lib", "var/lib/dpkg"] {
        std::fs::create_dir_all(r.join(sub)).unwrap();
    }
    std::fs::write(r.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    std::fs::write(r.join("var/lib/dpkg/arch"), "amd64\n").unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(r.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(r.join("etc/hostname"), "app-1\n").unwrap();
    std::fs::write(r.join("etc/machine-id"), format!("{MACHINE_ID}\n")).unwrap();
    if let Some(data) = instance_data {
        std::fs::create_dir_all(r.join("run/cloud-init")).unwrap();
        std::fs::write(r.join("run/cloud-init/instance-data.json"), data).unwrap();
    }
    r
}

fn apply(firstboot: &Path, root: &Path, bundle: &Path, trust: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "apply",
        "--root",
        root.to_str().unwrap(),
        "--trust",
        trust.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--primary-ip",
        "192.0.2.10",
        "--dynamic-deadline",
        "20s",
    ];
    args.extend_from_slice(extra);
    let out = std::process::Command::new(firstboot)
        .args(&args)
        .output()
        .unwrap();
    eprintln!(
        "$ kiln-firstboot {}\n--- exit {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const INSTANCE_DATA: &str = r#"{"v1": {"instance_id": "i-0abc123", "availability_zone": "eu-west-1b", "region": "eu-west-1", "cloud_name": "aws", "local_hostname": "ignored"}, "ds": {}}"#;

#[test]
fn dynamic_templates_read_vars_and_host_facts() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = config(dir.path());
    let (key, trust) = key_and_trust(dir.path());
    let out = dir.path().join("out");
    ok(&kiln(&[
        "build",
        "app",
        "edge",
        "--config",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "1",
    ]));
    let app = out.join("app-1.kiln");
    let edge = out.join("edge-1.kiln");

    // Only the vars the template reads are in the signed manifest.
    let m = manifest(&app);
    assert_eq!(
        m["templates"][0]["vars"],
        serde_json::json!({"site": {"name": "www.example.invalid", "port": 8080}})
    );
    assert!(!m.to_string().contains("not-for-templates"));
    // edge reads vars.motd only through default(): nothing recorded, the manifest's shape
    // is the one of a template without vars.
    assert!(manifest(&edge)["templates"][0].get("vars").is_none());

    let inspect = ok(&kiln(&["inspect", app.to_str().unwrap()]));
    assert!(
        inspect.contains("/etc/site.conf  reads consul kiln/apps/app/version, vars.site"),
        "{inspect}"
    );
    let render = ok(&kiln(&["render", "app", "--config", cfg.to_str().unwrap()]));
    assert!(
        render.contains(
            "    reads: [vars.site.name, vars.site.port, host.instance_id, host.availability_zone, host.region, host.cloud_name, host.machine_id, host.hostname, host.primary_ip, \"consul kiln/apps/app/version\"]"
        ),
        "{render}"
    );

    let Some(fb) = firstboot_bin() else { return };
    if !need_root() {
        return;
    }
    let consul = TestServer::start();
    consul.put("kiln/apps/app/version", b"2.7.1");
    let addr = consul.url();

    // Every fact there: the bytes, exactly.
    let r = root(dir.path(), "root-ok", Some(INSTANCE_DATA));
    let o = apply(&fb, &r, &app, &trust, &["--consul-addr", &addr]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/site.conf")).unwrap(),
        format!(
            "# app-1 (app)\nserver_name www.example.invalid;\nlisten 8080;\n# instance i-0abc123 in eu-west-1b (eu-west-1, aws)\n# machine {MACHINE_ID}, app-1 at 192.0.2.10\n# app 2.7.1\n"
        )
    );

    // No instance data (not a cloud, or cloud-init has not run): the unguarded read fails the
    // apply, names the template, the fact and why, and writes nothing.
    let r = root(dir.path(), "root-no-cloud", None);
    let o = apply(&fb, &r, &app, &trust, &["--consul-addr", &addr]);
    assert_eq!(o.status.code(), Some(20));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "template /etc/site.conf: host.instance_id is not available on this host ({}/run/cloud-init/instance-data.json does not exist (cloud-init wrote no instance data)), and the template reads it unguarded (test it with `is defined`, or give it a `default(...)`)",
            r.display()
        )),
        "{err}"
    );
    assert!(!r.join("etc/site.conf").exists());

    // Instance data without a zone: that fact is named.
    let r = root(
        dir.path(),
        "root-no-zone",
        Some(r#"{"v1": {"instance_id": "i-1", "region": "r", "cloud_name": "nocloud"}}"#),
    );
    let o = apply(&fb, &r, &app, &trust, &["--consul-addr", &addr]);
    assert_eq!(o.status.code(), Some(20));
    assert!(
        stderr(&o).contains(&format!(
            "host.availability_zone is not available on this host ({}/run/cloud-init/instance-data.json has no v1.availability_zone)",
            r.display()
        )),
        "{}",
        stderr(&o)
    );

    // Guarded reads: without instance data, and with it.
    let r = root(dir.path(), "edge-no-cloud", None);
    assert_eq!(apply(&fb, &r, &edge, &trust, &[]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/motd")).unwrap(),
        "instance unknown\nno motd\n"
    );
    let r = root(dir.path(), "edge-cloud", Some(INSTANCE_DATA));
    assert_eq!(apply(&fb, &r, &edge, &trust, &[]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/motd")).unwrap(),
        "instance i-0abc123\nregion eu-west-1\nno motd\n"
    );
}
