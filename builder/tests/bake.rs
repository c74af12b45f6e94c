//! `kiln bake` onto the real debootstrapped base (KILN_TEST_BASE): a bundle with a package, a
//! user, files, a symlink, a removal, a unit and services, baked as tar, raw ext4 and qcow2. The
//! raw image passes `e2fsck -fn` and `debugfs` shows the applied files; refusals for another
//! base, an untrusted key and an image too small; commands that try to reach the build host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

const CONFIG: &str = r#"packages:
  nginx: {}
files:
  /etc/motd: {content: "baked by kiln\n"}
  /etc/nginx/sites-available/app.conf:
    content: "server { listen 8080; root /srv/app; }\n"
    reload: [nginx.service]
  /etc/nginx/sites-enabled/app.conf: {symlink: /etc/nginx/sites-available/app.conf}
  /etc/nginx/sites-enabled/default: {state: absent}
directories:
  /srv/app: {owner: deploy, group: deploy}
users:
  deploy: {uid: 2500}
units:
  kiln-hello.service: {content: "[Unit]\nDescription=hello\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"}
services:
  nginx.service: {state: running}
  kiln-hello.service: {state: running}
"#;

struct Setup {
    _t: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    trust: PathBuf,
    firstboot: PathBuf,
}

fn setup(base: &str) -> Option<Setup> {
    setup_with(base, CONFIG)
}

fn setup_with(base: &str, default_yaml: &str) -> Option<Setup> {
    let firstboot = firstboot_bin()?;
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let (key, trust) = key_and_trust(&dir);
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("hostgroups")).unwrap();
    std::fs::write(config.join("hostgroups/default.yaml"), default_yaml).unwrap();
    std::fs::write(config.join("hostgroups/app.yaml"), "vars: {}\n").unwrap();
    let out = dir.join("out");
    let cache = test_cache();
    ok(&kiln(&[
        "build",
        "app",
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "4",
        "--expires",
        "3650d",
        "--base",
        base,
        "--cache",
        cache.to_str().unwrap(),
    ]));
    Some(Setup {
        bundle: out.join("app-4.kiln"),
        trust,
        firstboot,
        dir,
        _t: t,
    })
}

fn bake(s: &Setup, base: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "bake",
        s.bundle.to_str().unwrap(),
        "--base",
        base,
        "--out",
        out.to_str().unwrap(),
        "--trust",
        s.trust.to_str().unwrap(),
        "--firstboot",
        s.firstboot.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    kiln(&args)
}

fn debugfs(image: &Path, request: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bake_writes_tar_raw_and_qcow2_images_of_the_applied_root() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    if !need_root() {
        return;
    }
    let Some(s) = setup(&base) else { return };
    let mut times = Vec::new();

    // tar
    let tar = s.dir.join("img/app.tar");
    let o = bake(&s, &base, &tar, &["--format", "tar"]);
    let r: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    times.push(format!("tar {:.1}s", r["total_seconds"].as_f64().unwrap()));
    let list = String::from_utf8_lossy(
        &Command::new("tar")
            .arg("-tvf")
            .arg(&tar)
            .arg("./srv/app/")
            .arg("./usr/local/sbin/kiln-firstboot")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        list.contains("2500/2500") && list.contains("./srv/app/"),
        "{list}"
    );
    assert!(
        list.contains("-rwxr-xr-x 0/0") && list.contains("./usr/local/sbin/kiln-firstboot"),
        "{list}"
    );
    let motd = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("./etc/motd")
        .output()
        .unwrap();
    assert_eq!(motd.stdout, b"baked by kiln\n");

    // raw: a clean ext4 with the applied files, the package installed, kiln-firstboot and the keys.
    let raw = s.dir.join("img/app.raw");
    let o = bake(&s, &base, &raw, &["--format", "raw"]);
    let r: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    times.push(format!("raw {:.1}s", r["total_seconds"].as_f64().unwrap()));
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        stderr(&fsck)
    );
    assert_eq!(debugfs(&raw, "cat /etc/motd"), "baked by kiln\n");
    assert_eq!(
        debugfs(&raw, "cat /etc/nginx/sites-available/app.conf"),
        "server { listen 8080; root /srv/app; }\n"
    );
    assert!(debugfs(&raw, "stat /etc/nginx/sites-enabled/app.conf")
        .contains("Fast link dest: \"/etc/nginx/sites-available/app.conf\""));
    assert!(debugfs(&raw, "ls /etc/nginx/sites-enabled").contains("app.conf"));
    assert!(!debugfs(&raw, "ls /etc/nginx/sites-enabled").contains("default"));
    assert!(debugfs(&raw, "stat /srv/app").contains("User:  2500   Group:  2500"));
    assert!(debugfs(&raw, "cat /etc/passwd").contains("deploy:x:2500:"));
    let wants = debugfs(&raw, "ls /etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.contains("kiln-hello.service") && wants.contains("nginx.service"),
        "{wants}"
    );
    let status = debugfs(&raw, "cat /var/lib/dpkg/status");
    assert!(
        status.contains("Package: nginx\nStatus: install ok installed\n"),
        "nginx not installed in the image"
    );
    assert!(debugfs(&raw, "stat /usr/local/sbin/kiln-firstboot").contains("Mode:  0755"));
    assert_eq!(
        debugfs(&raw, "cat /etc/kiln/trust/key.pub"),
        std::fs::read_to_string(s.trust.join("key.pub")).unwrap()
    );
    assert_eq!(debugfs(&raw, "cat /etc/kiln/hostgroup"), "app\n");
    // The engine stopped before the dynamic phase: no state yet, the journal waits for the first
    // boot (which verifies the same bundle again and finishes), the staged blobs are gone.
    assert_eq!(debugfs(&raw, "cat /var/lib/kiln/state.json"), "");
    assert!(debugfs(&raw, "cat /var/lib/kiln/journal").contains("\"commands\""));
    assert!(!debugfs(&raw, "ls -l /var/lib/kiln/staging").contains("blobs"));
    let unit = debugfs(&raw, "cat /etc/systemd/system/kiln-firstboot.service");
    assert!(
        unit.contains("Before=kiln-hello.service nginx.service")
            && unit.contains(
                "ExecStart=/bin/sh -c '/usr/local/sbin/kiln-firstboot apply --no-block; rc=$$?;"
            ),
        "{unit}"
    );
    assert!(debugfs(
        &raw,
        "stat /etc/systemd/system/multi-user.target.wants/kiln-firstboot.service"
    )
    .contains("Fast link dest: \"/etc/systemd/system/kiln-firstboot.service\""));
    assert!(!debugfs(&raw, "ls /usr/sbin").contains("policy-rc.d"));

    // qcow2: what qemu-img reads back is the same kind of image.
    let qcow2 = s.dir.join("img/app.qcow2");
    let o = bake(&s, &base, &qcow2, &["--format", "qcow2", "--size", "1G"]);
    let r: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    times.push(format!(
        "qcow2 {:.1}s",
        r["total_seconds"].as_f64().unwrap()
    ));
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow2)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 1u64 << 30);
    let back = s.dir.join("img/back.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow2)
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(Command::new("e2fsck")
        .arg("-fn")
        .arg(&back)
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(debugfs(&back, "cat /etc/motd"), "baked by kiln\n");
    eprintln!("bake times: {}", times.join(", "));
    // Nothing left beside the outputs.
    let left: Vec<String> = std::fs::read_dir(s.dir.join("img"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");
}

#[test]
fn bake_refuses_another_base_an_untrusted_key_and_a_too_small_image() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    if !need_root() {
        return;
    }
    let Some(s) = setup(&base) else { return };
    // Another package set: the bundle's debs were resolved against a different dpkg status.
    let other = s.dir.join("other-base");
    mini_base(&base, &other);
    let status = std::fs::read_to_string(other.join("var/lib/dpkg/status")).unwrap();
    let cut = status.find("\n\nPackage: ").unwrap();
    std::fs::write(other.join("var/lib/dpkg/status"), &status[cut + 2..]).unwrap();
    let out = s.dir.join("img/x.tar");
    let o = bake(&s, other.to_str().unwrap(), &out, &[]);
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    assert!(stderr(&o).contains("with package set"), "{}", stderr(&o));
    // Another release.
    let os = std::fs::read_to_string(other.join("usr/lib/os-release"))
        .unwrap()
        .replace("VERSION_ID=\"12\"", "VERSION_ID=\"13\"");
    std::fs::write(other.join("usr/lib/os-release"), os).unwrap();
    let o = bake(&s, other.to_str().unwrap(), &out, &[]);
    assert_eq!(o.status.code(), Some(15), "{}", stderr(&o));
    // A key the trust store does not have.
    let t2 = s.dir.join("other-key");
    std::fs::create_dir_all(&t2).unwrap();
    let (_, other_trust) = key_and_trust(&t2);
    let o = kiln(&[
        "bake",
        s.bundle.to_str().unwrap(),
        "--base",
        &base,
        "--out",
        out.to_str().unwrap(),
        "--trust",
        other_trust.to_str().unwrap(),
        "--firstboot",
        s.firstboot.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    // An image too small for the root: mkfs.ext4's complaint, and no output.
    let raw = s.dir.join("img/small.raw");
    let o = bake(&s, &base, &raw, &["--format", "raw", "--size", "64M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("mkfs.ext4 -d") && stderr(&o).contains("raise --size"),
        "{}",
        stderr(&o)
    );
    assert!(!raw.exists() && !out.exists());
    let left: Vec<String> = std::fs::read_dir(s.dir.join("img"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 11: commands a bake runs cannot reach the build host (the double-chroot escape, a
/// connection to a port the test listens on on 127.0.0.1) and leave nothing running.
#[test]
fn bake_runs_commands_contained() {
    let Some(base) = need("KILN_TEST_BASE") else {
        return;
    };
    if !need_root() {
        return;
    }
    let outside = tempfile::Builder::new()
        .prefix("kiln-bake-outside-")
        .tempdir_in("/tmp")
        .unwrap();
    let o = outside.path().display().to_string();
    std::fs::write(outside.path().join("host-marker"), b"host\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = format!("kiln-bake-marker-{}", std::process::id());
    let config = format!(
        r#"commands:
  daemon:
    run: "setsid sh -c 'sleep 300; : {marker}' </dev/null >/dev/null 2>&1 & echo started"
  network:
    run: ["bash", "-c", "echo hi > /dev/tcp/127.0.0.1/{port} || exit 0; echo CONNECTED; exit 1"]
  escape:
    run: ["perl", "-e", 'mkdir "/e"; chroot "/e" or die; chdir ".." for 1..64; chroot "." or die; open(F, ">", "{o}/escaped") or die "not written: $!"; print F "out\n"']
"#
    );
    let Some(s) = setup_with(&base, &config) else {
        return;
    };
    let tar = s.dir.join("img/app.tar");
    let out = bake(&s, &base, &tar, &["--format", "tar"]);
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                left.push(pid);
            }
        }
    }
    // The daemon is killed, the connection refused; the escape ends in the root, where its
    // "outside" directory does not exist, so perl dies (exit 2) and the bake fails as it does
    // for any failed command.
    assert_eq!(out.status.code(), Some(21), "{}", stderr(&out));
    let err = stderr(&out);
    // (kiln bake prints the error only: the command's output stays in the image's journal.)
    assert!(
        err.contains("commands: command escape failed (exit status 2)"),
        "{err}"
    );
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["host-marker"], "the bake wrote outside its root");
    assert!(
        listener.accept().is_err(),
        "a command reached 127.0.0.1:{port}"
    );
    assert!(left.is_empty(), "left running after the bake: {left:?}");
}
