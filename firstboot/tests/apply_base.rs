//! The real binary applying bundles to copies of a debootstrapped Debian bookworm root
//! (KILN_TEST_BASE): accounts with the root's shadow tools, an offline dpkg install, files,
//! directories, symlinks, absent paths, units enabled with `systemctl --root`, commands; then
//! a rerun that changes nothing, a root of another release, a failing command, and a crash
//! (kill -9) in the middle that a rerun finishes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use kiln_signing::{exit, Group, Package, ServiceState, Template};

const UNIT: &[u8] = b"[Unit]\nDescription=kiln test service\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";
const KEY_LINE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl web@example";

/// A tiny .deb made with dpkg-deb; its postinst records what policy-rc.d answered.
fn hello_deb(work: &Path) -> Vec<u8> {
    deb_with_postinst(
        work,
        "kiln-hello",
        "1.0-1",
        "all",
        Some("#!/bin/sh\nset -e\nrc=0\n/usr/sbin/policy-rc.d kiln-hello start || rc=$?\necho \"policy-rc.d=$rc\" > /var/tmp/kiln-hello-postinst\n"),
    )
}

fn full_spec(work: &Path) -> Spec {
    let mut s = Spec::new("web", 7);
    s.m.groups.push(Group {
        name: "webadm".into(),
        gid: Some(2500),
        system: false,
    });
    let mut web = user("web");
    web.uid = Some(2501);
    web.group = Some("webadm".into());
    web.groups = vec!["adm".into()];
    web.home = Some("/srv/web".into());
    web.shell = Some("/bin/bash".into());
    web.comment = Some("Web content".into());
    web.create_home = true;
    web.authorized_keys = vec![KEY_LINE.into()];
    let mut svc = user("svc");
    svc.system = true;
    svc.shell = Some("/usr/sbin/nologin".into());
    s.m.users.extend([web, svc]);
    let deb = hello_deb(work);
    let digest = s.blob(&deb);
    s.m.packages.push(Package {
        name: "kiln-hello".into(),
        version: Some("1.0-1".into()),
        arch: Some("all".into()),
        digest: Some(digest),
        size: Some(deb.len() as u64),
    });
    s.m.packages.push(Package {
        name: "unresolved-pkg".into(),
        version: None,
        arch: None,
        digest: None,
        size: None,
    });
    s.dir("/srv/web/htdocs", "2750", "web", "webadm")
        .file(
            "/srv/web/htdocs/index.html",
            b"<h1>kiln</h1>\n",
            "0640",
            "web",
            "webadm",
        )
        .file("/etc/motd", b"Built by kiln.\n", "0644", "root", "root")
        .file(
            "/usr/local/bin/hello",
            b"#!/bin/sh\necho hello\n",
            "4755",
            "root",
            "root",
        )
        .file_hooks(
            "/etc/systemd/system/hello.service",
            UNIT,
            "0644",
            "root",
            "root",
            &["hello.service"],
            &[],
        )
        .file(
            "/opt/app/deep/er/config.ini",
            b"[app]\n",
            "0600",
            "svc",
            "svc",
        )
        .symlink("/etc/hello.conf", "/srv/web/htdocs/index.html")
        .symlink("/srv/current", "web")
        .absent("/etc/issue.net")
        .absent("/var/cache/kiln-none")
        .service("hello.service", ServiceState::Running, true)
        .service("e2scrub_reap.service", ServiceState::Dead, false)
        .command(
            "hello",
            &[
                "sh",
                "-c",
                "echo hello from $KILN_HOSTGROUP $KILN_VERSION; id -u web",
            ],
            30,
            None,
        )
        .command("once", &["touch", "/var/tmp/never"], 30, Some("/etc/motd"));
    s
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn applies_everything_to_a_debian_root_then_a_rerun_changes_nothing() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    let sha = full_spec(work.path()).write(&key, &bundle);
    assert!(
        r.join("etc/issue.net").exists(),
        "the base should have /etc/issue.net"
    );

    let out = apply(r, trust.path(), &bundle, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("kiln-firstboot: verifying web-7.kiln"),
        "{err}"
    );
    assert!(
        err.contains("package unresolved-pkg was not resolved"),
        "{err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["state"]["sha256"], sha.as_str());

    // Accounts, as the root itself sees them.
    let (web_uid, webadm_gid) = (uid_in(r, "web"), gid_in(r, "webadm"));
    assert_eq!((web_uid, webadm_gid), (2501, 2500));
    let svc_uid = uid_in(r, "svc");
    let svc_gid = gid_in(r, "svc");
    assert!(svc_uid < 1000, "svc is a system user: {svc_uid}");
    let getent = Command::new("chroot")
        .arg(r)
        .args(["getent", "passwd", "web"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&getent.stdout),
        "web:x:2501:2500:Web content:/srv/web:/bin/bash\n"
    );
    let groups = Command::new("chroot")
        .arg(r)
        .args(["id", "-nG", "web"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&groups.stdout).trim(), "webadm adm");
    let ak = r.join("srv/web/.ssh/authorized_keys");
    assert_eq!(
        std::fs::read_to_string(&ak).unwrap(),
        format!("{KEY_LINE}\n")
    );
    assert_eq!(mode(&ak), 0o600);
    assert_eq!(owner(&ak), (web_uid, webadm_gid));
    assert_eq!(mode(&r.join("srv/web/.ssh")), 0o700);
    assert_eq!(owner(&r.join("srv/web/.ssh")), (web_uid, webadm_gid));

    // The package, installed offline with no service started.
    let dpkg = Command::new("chroot")
        .arg(r)
        .args(["dpkg-query", "-W", "-f=${Status} ${Version}", "kiln-hello"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dpkg.stdout),
        "install ok installed 1.0-1"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("var/tmp/kiln-hello-postinst")).unwrap(),
        "policy-rc.d=101\n"
    );
    assert!(
        !r.join("usr/sbin/policy-rc.d").exists(),
        "our policy-rc.d must be gone"
    );

    // Paths: bytes, modes (setuid/setgid only where asked), owners.
    assert_eq!(
        std::fs::read(r.join("srv/web/htdocs/index.html")).unwrap(),
        b"<h1>kiln</h1>\n"
    );
    assert_eq!(mode(&r.join("srv/web/htdocs/index.html")), 0o640);
    assert_eq!(
        owner(&r.join("srv/web/htdocs/index.html")),
        (web_uid, webadm_gid)
    );
    assert_eq!(mode(&r.join("srv/web/htdocs")), 0o2750);
    assert_eq!(owner(&r.join("srv/web/htdocs")), (web_uid, webadm_gid));
    assert_eq!(
        std::fs::read(r.join("etc/motd")).unwrap(),
        b"Built by kiln.\n"
    );
    assert_eq!(mode(&r.join("etc/motd")), 0o644);
    assert_eq!(mode(&r.join("usr/local/bin/hello")), 0o4755);
    assert_eq!(owner(&r.join("usr/local/bin/hello")), (0, 0));
    assert_eq!(
        std::fs::read(r.join("opt/app/deep/er/config.ini")).unwrap(),
        b"[app]\n"
    );
    assert_eq!(
        owner(&r.join("opt/app/deep/er/config.ini")),
        (svc_uid, svc_gid)
    );
    assert_eq!(
        mode(&r.join("opt/app/deep")),
        0o755,
        "missing parents are made 0755"
    );
    assert_eq!(
        std::fs::read_link(r.join("etc/hello.conf")).unwrap(),
        Path::new("/srv/web/htdocs/index.html")
    );
    assert_eq!(
        std::fs::read_link(r.join("srv/current")).unwrap(),
        Path::new("web")
    );
    assert!(!r.join("etc/issue.net").exists());

    // Units, as systemctl sees them offline.
    let is_enabled = |name: &str| {
        let o = Command::new("systemctl")
            .arg("--root")
            .arg(r)
            .args(["is-enabled", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(is_enabled("hello.service"), "enabled");
    assert_eq!(is_enabled("e2scrub_reap.service"), "disabled");

    // Commands and the state file.
    let state = read_state(r);
    assert_eq!(state["result"], "success");
    assert_eq!(state["hostgroup"], "web");
    assert_eq!(state["version"], 7);
    assert_eq!(state["sha256"], sha.as_str());
    assert_eq!(state["commands"][0]["name"], "hello");
    assert_eq!(state["commands"][0]["output"], "hello from web 7\n2501\n");
    assert_eq!(state["commands"][1]["status"], "skipped");
    assert!(!r.join("var/tmp/never").exists());
    let steps: Vec<&str> = state["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "fetch",
            "verify",
            "stage",
            "groups",
            "users",
            "packages",
            "directories",
            "files",
            "symlinks",
            "absent",
            "services",
            "commands",
            "dynamic",
            "runtime",
            "health"
        ]
    );
    assert_eq!(mode(&r.join("var/lib/kiln/state.json")), 0o600);
    assert!(!r.join("var/lib/kiln/journal").exists());
    assert!(!r.join("var/lib/kiln/staging").exists());

    // Status agrees.
    let st = run(&["status", "--root", r.to_str().unwrap()]);
    assert_eq!(st.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&st.stdout).starts_with("applied: web version 7"));

    // A second run: nothing changes, and it says so.
    let before = tree_hash(r);
    let again = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stderr(&again).contains(&format!("already applied: web version 7 (sha256 {sha})")),
        "{}",
        stderr(&again)
    );
    assert_eq!(tree_hash(r), before);
}

#[test]
fn the_engine_is_idempotent_when_forced_to_reapply() {
    // Applying the same content again as a new bundle (forced) rewrites nothing: every step
    // finds the root already as the bundle wants it.
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let mut s = full_spec(work.path());
    s.m.commands.clear();
    let b7 = work.path().join("web-7.kiln");
    s.write(&key, &b7);
    assert_eq!(apply(r, trust.path(), &b7, &[]).status.code(), Some(0));
    let motd_ino = std::fs::metadata(r.join("etc/motd")).unwrap().ino();
    s.m.version = 8;
    let b8 = work.path().join("web-8.kiln");
    s.write(&key, &b8);
    let out = apply(r, trust.path(), &b8, &["--force"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("files: 0 changed, 5 unchanged"), "{err}");
    assert!(
        err.contains("users: 0 created or changed, 2 unchanged"),
        "{err}"
    );
    assert!(err.contains("packages: 1 already installed"), "{err}");
    assert!(err.contains("services: 0 changed, 2 unchanged"), "{err}");
    assert_eq!(
        std::fs::metadata(r.join("etc/motd")).unwrap().ino(),
        motd_ino,
        "an unchanged file is not rewritten"
    );
}

#[test]
fn a_root_of_another_release_or_architecture_is_refused_with_15() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    Spec::new("web", 7)
        .file("/etc/motd", b"x\n", "0644", "root", "root")
        .write(&key, &bundle);

    let os_release = r.join("usr/lib/os-release");
    let text = std::fs::read_to_string(&os_release).unwrap();
    std::fs::write(
        &os_release,
        text.replace("VERSION_ID=\"12\"", "VERSION_ID=\"11\""),
    )
    .unwrap();
    let before = tree_hash(r);
    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(exit::WRONG_BASE));
    assert!(
        stderr(&out).contains("this root is debian 11"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree_hash(r), before);
    std::fs::write(&os_release, text).unwrap();

    let mut other_arch = Spec::new("web", 7);
    other_arch.m.base.arch = "riscv64".into();
    other_arch.file("/etc/motd", b"x\n", "0644", "root", "root");
    let b2 = work.path().join("riscv.kiln");
    other_arch.write(&key, &b2);
    let before = tree_hash(r);
    assert_eq!(
        apply(r, trust.path(), &b2, &[]).status.code(),
        Some(exit::WRONG_BASE)
    );
    assert_eq!(tree_hash(r), before);
}

#[test]
fn a_failing_command_fails_the_apply_with_21_and_its_output_is_kept() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    let mut s = Spec::new("web", 7);
    s.file("/etc/motd", b"x\n", "0644", "root", "root")
        .command("fine", &["true"], 10, None)
        .command(
            "boom",
            &["sh", "-c", "echo preparing; echo boom >&2; exit 3"],
            10,
            None,
        )
        .command("never", &["touch", "/var/tmp/never"], 10, None);
    s.write(&key, &bundle);
    let out = apply(r, trust.path(), &bundle, &["--json"]);
    assert_eq!(out.status.code(), Some(exit::APPLY));
    let err = stderr(&out);
    assert!(
        err.contains("commands: command boom failed (exit status 3)"),
        "{err}"
    );
    // The root was changed: a failure, not a refusal.
    assert!(
        err.contains("error: failed applying web-7.kiln (the root was changed: rerun to continue)"),
        "{err}"
    );
    assert!(!err.contains("refusing"), "{err}");
    let state = read_state(r);
    assert_eq!(state["result"], "failure");
    assert_eq!(state["exit_code"], 21);
    assert_eq!(state["commands"][1]["name"], "boom");
    assert_eq!(state["commands"][1]["status"], "failed");
    assert_eq!(state["commands"][1]["exit_code"], 3);
    assert_eq!(state["commands"][1]["output"], "preparing\nboom\n");
    assert!(state["error"].as_str().unwrap().contains("boom"));
    assert!(!r.join("var/tmp/never").exists());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["exit_code"], 21);
    // The journal stays for a rerun; status says it failed.
    assert!(r.join("var/lib/kiln/journal").exists());
    assert_eq!(
        run(&["status", "--root", r.to_str().unwrap()])
            .status
            .code(),
        Some(exit::APPLY)
    );

    // A command past its timeout fails the same way.
    let mut s = Spec::new("web", 8);
    s.command("slow", &["sleep", "30"], 1, None);
    let b2 = work.path().join("slow.kiln");
    s.write(&key, &b2);
    let t = Instant::now();
    let out = apply(r, trust.path(), &b2, &["--force"]);
    assert_eq!(out.status.code(), Some(exit::APPLY));
    assert!(
        stderr(&out).contains("timed out after 1s"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(read_state(r)["commands"][0]["status"], "timed_out");
}

/// Starts `kiln-firstboot apply` of `bundle` on `root`, SIGKILLs it as soon as `marker` (a path
/// in the root that the bundle creates mid-apply) exists, and returns what it had written to
/// stderr.
fn kill_apply_at(root: &Path, trust: &Path, bundle: &Path, marker: &str) -> String {
    let mut child = Command::new(bin())
        .arg("apply")
        .arg("--root")
        .arg(root)
        .arg("--trust")
        .arg(trust)
        .arg("--bundle")
        .arg(bundle)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !root.join(marker).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the apply never reached {marker}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    child.wait().unwrap();
    err
}

/// kill -9 in the middle of an apply (here: while its second command runs), then the same
/// command again: it resumes from the journal, does not rerun the finished command, and ends
/// with the same root a clean run gives.
#[test]
fn a_crash_in_the_middle_is_finished_by_rerunning_the_same_command() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    let mut s = Spec::new("web", 7);
    s.file("/etc/motd", b"crash test\n", "0644", "root", "root")
        .file("/srv/a/b.txt", b"b\n", "0600", "root", "root")
        .command(
            "count",
            &["sh", "-c", "echo run >> /var/tmp/count"],
            10,
            None,
        )
        .command(
            "hang-once",
            &[
                "sh",
                "-c",
                "[ -e /var/tmp/hung ] && exit 0; touch /var/tmp/hung; sleep 60",
            ],
            120,
            None,
        );
    s.write(&key, &bundle);

    kill_apply_at(r, trust.path(), &bundle, "var/tmp/hung");
    // The orphaned `sleep` holds nothing of ours; let it be.
    assert!(r.join("var/lib/kiln/journal").exists());
    assert!(!r.join("var/lib/kiln/state.json").exists());
    assert_eq!(
        run(&["status", "--root", r.to_str().unwrap()])
            .status
            .code(),
        Some(exit::APPLY)
    );

    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("resuming an interrupted apply"), "{err}");
    assert!(err.contains("files: done in an earlier run"), "{err}");
    assert_eq!(
        std::fs::read_to_string(r.join("var/tmp/count")).unwrap(),
        "run\n",
        "a finished command is not rerun"
    );
    assert_eq!(std::fs::read(r.join("etc/motd")).unwrap(), b"crash test\n");
    assert_eq!(read_state(r)["result"], "success");
    assert!(!r.join("var/lib/kiln/journal").exists());
    assert!(!r.join("var/lib/kiln/staging").exists());
}

/// Regression: the lock on the root was a plain dup() of its fd, inherited by commands, so a
/// command that left a daemon behind held it and every later apply said "another
/// kiln-firstboot is applying".
#[test]
fn a_daemon_left_by_a_command_does_not_hold_the_lock() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let mut s = Spec::new("web", 1);
    s.command(
        "daemon",
        &["sh", "-c", "sleep 20 </dev/null >/dev/null 2>&1 &"],
        10,
        None,
    );
    let b1 = work.path().join("b1.kiln");
    s.write(&key, &b1);
    assert_eq!(apply(r, trust.path(), &b1, &[]).status.code(), Some(0));
    let mut s = Spec::new("web", 2);
    s.file("/etc/motd", b"two\n", "0644", "root", "root");
    let b2 = work.path().join("b2.kiln");
    s.write(&key, &b2);
    let out = apply(r, trust.path(), &b2, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A symlink made by the apply itself (here a command; a package's, on a baked image's first
/// boot) on the way to a dynamic template: the dynamic step looks again before it reads a value
/// and never writes through it.
#[test]
fn a_symlink_made_before_the_dynamic_step_stops_it_before_any_template_is_written() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let mut s = Spec::new("web", 7);
    s.command(
        "link",
        &[
            "sh",
            "-c",
            "mkdir -p /srv/appconf && ln -s /srv/appconf /etc/app",
        ],
        30,
        None,
    );
    let digest = s.blob(b"static text\n");
    s.m.templates.push(Template {
        path: "/etc/app/secret.conf".into(),
        digest,
        mode: "0600".into(),
        owner: "root".into(),
        group: "root".into(),
        consul: vec![],
        vault: vec![],
        vars: Default::default(),
        restart: vec![],
        reload: vec![],
    });
    let bundle = work.path().join("web-7.kiln");
    s.write(&key, &bundle);
    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(exit::APPLY));
    let err = stderr(&out);
    assert!(
        err.contains("dynamic: templates: dynamic template /etc/app/secret.conf: /etc/app is a symlink (-> /srv/appconf) in the root"),
        "{err}"
    );
    assert!(err.contains("error: failed applying web-7.kiln"), "{err}");
    assert!(std::fs::symlink_metadata(r.join("etc/app"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!r.join("srv/appconf/secret.conf").exists());
    assert_eq!(read_state(r)["result"], "failure");
}

/// A .deb whose postinst counts its runs and, the first time, hangs (so a test can kill the
/// apply while dpkg is inside the packages phase).
fn slow_deb(work: &Path) -> Vec<u8> {
    deb_with_postinst(
        work,
        "kiln-slow",
        "1.0-1",
        "all",
        Some("#!/bin/sh\nset -e\necho run >> /var/tmp/kiln-slow-runs\n[ -e /var/tmp/kiln-slow-hung ] && exit 0\ntouch /var/tmp/kiln-slow-hung\nsleep 60\n"),
    )
}

/// dpkg runs with --force-unsafe-io and the phase syncs once at its end; a crash in between
/// (here a kill -9 while a postinst runs) leaves the journal saying so, and the rerun reinstalls
/// every package of the bundle instead of trusting dpkg's database about files that a power
/// loss could have emptied.
#[test]
fn a_crash_inside_the_unsynced_packages_phase_reinstalls_the_bundles_packages() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("web-7.kiln");
    let mut s = Spec::new("web", 7);
    for (name, deb) in [
        ("kiln-hello", hello_deb(work.path())),
        ("kiln-slow", slow_deb(work.path())),
    ] {
        let digest = s.blob(&deb);
        s.m.packages.push(Package {
            name: name.into(),
            version: Some("1.0-1".into()),
            arch: Some("all".into()),
            digest: Some(digest),
            size: Some(deb.len() as u64),
        });
    }
    s.file("/etc/motd", b"after the packages\n", "0644", "root", "root");
    s.write(&key, &bundle);

    // dpkg and its postinst die with it (PR_SET_PDEATHSIG).
    let first = kill_apply_at(r, trust.path(), &bundle, "var/tmp/kiln-slow-hung");
    assert!(!first.contains("reinstalling"), "{first}");
    let journal = std::fs::read_to_string(r.join("var/lib/kiln/journal")).unwrap();
    assert!(journal.contains("unsynced"), "{journal}");

    let out = apply(r, trust.path(), &bundle, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "interrupted before the packages it installed were synced: reinstalling all of them"
        ),
        "{err}"
    );
    assert!(err.contains("packages: 2 installed"), "{err}");
    let runs = std::fs::read_to_string(r.join("var/tmp/kiln-slow-runs")).unwrap();
    assert!(runs.lines().count() >= 2, "postinst runs: {runs:?}");
    let status = std::fs::read_to_string(r.join("var/lib/dpkg/status")).unwrap();
    for p in ["kiln-hello", "kiln-slow"] {
        let stanza = status
            .split("\n\n")
            .find(|st| st.lines().any(|l| l == format!("Package: {p}")))
            .unwrap_or_else(|| panic!("{p} not in dpkg's status"));
        assert!(stanza.contains("Status: install ok installed"), "{stanza}");
    }
    assert_eq!(
        std::fs::read(r.join("etc/motd")).unwrap(),
        b"after the packages\n"
    );
    assert_eq!(read_state(r)["result"], "success");
    // A rerun after success: nothing again.
    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("already applied"));
}
