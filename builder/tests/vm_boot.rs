//! End to end, as a fleet runs it: `kiln build` a hostgroup with static files, a unit and
//! dynamic templates (Consul and Vault), `kiln bake` it onto the bootable bookworm base
//! (kernel, systemd, cloud-init) with kiln-firstboot and the trusted key, start a real OpenBao
//! and the Consul test server on 127.0.0.1, and boot the image with qemu-system-x86_64 (TCG,
//! direct kernel boot) and a NoCloud seed made by `cloud-localds` from `kiln cloud-init`'s
//! user-data. The guest reaches the host only through QEMU user networking with
//! `restrict=on` and `guestfwd` to the loopback services (10.0.2.100:80 the bundle's HTTP
//! server, :8500 Consul, :8200 OpenBao).
//!
//! 1. First boot (cloud-init runcmd, bundle by URL): the serial console says the apply
//!    succeeded, Consul holds the node's report, `kiln rollout wait` returns 0, and after the
//!    power-off `debugfs` shows the applied files and the rendered secret file 0600; the
//!    wrapped secret_id is nowhere on the disk but in cloud-init's own 0600 copies.
//! 2. A second boot of the same disk (re-provisioned: a new instance-id, so cloud-init runs
//!    kiln-firstboot again) does not re-apply: "already applied", the report and the state
//!    file untouched.
//! 3. A fresh copy of the image booted with a tampered bundle through kiln-firstboot.service
//!    (`kiln cloud-init --via systemd`) fails visibly (the unit fails on the console), reports
//!    the failure to Consul, and `kiln rollout wait` exits 3 at once.
//!
//! Boot times are printed as `MEASURE` lines (kernel+systemd, cloud-init, kiln-firstboot's own
//! steps): `cargo test --release -p kiln-builder --test integration vm_boot:: -- --nocapture`.
//! Needs root, KILN_TEST_BOOTABLE_BASE (tests/support/base-image.sh bootable), KILN_TEST_BAO,
//! qemu-system-x86_64, cloud-localds and debugfs; under CI a missing one is a failure.

use crate::bao;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use consul_test_server::TestServer;
use serde_json::{json, Value};

/// Longest one boot may take (TCG reached cloud-init's runcmd in 97-173 s on these machines).
const BOOT_TIMEOUT: Duration = Duration::from_secs(540);
const HOSTGROUP: &str = "vmtest";
const GREETING: &str = "hello from consul";
const PASSWORD: &str = "pw-from-openbao-4f2c9a";

const CONFIG: &str = r#"files:
  /etc/motd: {content: "baked by kiln for the VM test\n"}
  # No fsck in this base; the root is the whole virtio disk.
  /etc/fstab: {content: "/dev/vda / ext4 rw,errors=remount-ro 0 0\n"}
  # NoCloud only, and only the modules the first boot needs (about 20 s less under TCG).
  /etc/cloud/cloud.cfg.d/90-kiln-vm.cfg:
    content: |
      datasource_list: [ NoCloud, None ]
      cloud_init_modules: [ seed_random, write_files, set_hostname, update_hostname ]
      cloud_config_modules: [ runcmd ]
      cloud_final_modules: [ scripts-user, final-message, power-state-change ]
  /etc/app/greeting.conf:
    content: "greeting={{ consul(\"kiln/apps/vmtest/greeting\") }}\n"
    template: dynamic
  /etc/app/secret.conf:
    content: "password={{ vault(\"secret/data/vmtest/db\", \"password\") }}\n"
    template: dynamic
units:
  vmtest-app.service:
    content: |
      [Unit]
      Description=The VM test's app (needs its rendered configuration)
      ConditionPathExists=/etc/app/secret.conf
      [Service]
      Type=oneshot
      RemainAfterExit=yes
      ExecStart=/bin/sh -c 'echo "VMTEST-APP: started, $(cat /etc/app/greeting.conf)" > /dev/console'
      [Install]
      WantedBy=multi-user.target
services:
  vmtest-app.service: {state: running}
dynamic:
  consul: {prefixes: [kiln/apps/vmtest/]}
  vault:
    role: vmtest
    kv: [secret/data/vmtest/db]
"#;

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A tool the test needs: missing fails in CI, else skips.
fn need_tool(t: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
        .unwrap_or(false);
    if !found {
        if in_ci() {
            panic!("{t} is not installed; .ci/run installs it");
        }
        eprintln!("skipped: {t} is not installed");
    }
    found
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving files by path (the bundle's object store).
struct Files {
    port: u16,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Files {
    fn start() -> Files {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f, lg) = (files.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (f, lg) = (f.clone(), lg.clone());
                std::thread::spawn(move || serve(conn, &f, &lg));
            }
        });
        Files { port, files, log }
    }

    fn put(&self, path: &str, bytes: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), bytes);
    }
}

fn serve(mut c: TcpStream, files: &Mutex<HashMap<String, Vec<u8>>>, log: &Mutex<Vec<String>>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.lock().unwrap().push(format!("{method} {path}"));
    let body = files.lock().unwrap().get(path).cloned();
    let _ = match body {
        Some(b) if method == "GET" => c
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            )
            .and_then(|()| c.write_all(&b)),
        _ => c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

/// One boot's serial console, each line with the host's seconds since qemu started.
struct Boot {
    name: String,
    lines: Vec<(f64, String)>,
    seconds: f64,
    log: PathBuf,
}

impl Boot {
    fn text(&self) -> String {
        self.lines.iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    fn has(&self, s: &str) -> bool {
        self.lines.iter().any(|(_, l)| l.contains(s))
    }

    /// The first line containing `s`: (host seconds, line).
    fn find(&self, s: &str) -> Option<&(f64, String)> {
        self.lines.iter().find(|(_, l)| l.contains(s))
    }

    fn tail(&self, n: usize) -> String {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..]
            .iter()
            .map(|(t, l)| format!("{t:7.1} {l}\n"))
            .collect()
    }

    /// The `[  89.199179]` uptime journald puts before a line it forwards to the console.
    fn bracket(&self, s: &str) -> Option<f64> {
        let (_, l) = self.find(s)?;
        let l = l.trim_start().strip_prefix('[')?;
        l.split(']').next()?.trim().parse().ok()
    }

    /// Guest uptime printed on a line containing `s`: cloud-init's `Up N seconds` or the
    /// marker's `uptime=N`.
    fn uptime(&self, s: &str) -> Option<f64> {
        let (_, l) = self.find(s)?;
        if let Some(i) = l.find("uptime=") {
            return l[i + 7..]
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?
                .parse()
                .ok();
        }
        let i = l.find(" Up ")?;
        l[i + 4..].split_whitespace().next()?.parse().ok()
    }
}

/// ANSI escapes and carriage returns out.
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

struct Vm<'a> {
    dir: &'a Path,
    kernel: PathBuf,
    initrd: PathBuf,
    /// guestfwd: 10.0.2.100:<guest port> -> 127.0.0.1:<host port>
    fwd: Vec<(u16, u16)>,
    /// Guest memory in MiB.
    memory: u32,
}

impl Vm<'_> {
    /// Boots `disk` with `seed` until the guest powers off (or the timeout: qemu is killed and
    /// the console's tail printed).
    fn boot(&self, name: &str, disk: &Path, seed: &Path) -> Boot {
        // `guestfwd=...-tcp:HOST:PORT` connects once, when qemu starts, and carries a single
        // connection for the VM's life (a server that closes an idle connection, as OpenBao
        // does after 10 s, leaves the guest nothing). `-cmd:` runs a command per guest
        // connection: a relay to the service on 127.0.0.1.
        let relay = repo_root().join("tests/support/guestfwd-relay.py");
        let fwd: String = self
            .fwd
            .iter()
            .map(|(g, h)| {
                format!(
                    ",guestfwd=tcp:10.0.2.100:{g}-cmd:python3 {} 127.0.0.1 {h}",
                    relay.display()
                )
            })
            .collect();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max,svm=off",
            "-m",
            &self.memory.to_string(),
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&self.kernel)
        .arg("-initrd")
        .arg(&self.initrd)
        .args(["-append", "root=/dev/vda rw console=ttyS0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-netdev")
        .arg(format!("user,id=n0,restrict=on{fwd}"))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        eprintln!("[vm] boot {name}: {cmd:?}");
        let start = Instant::now();
        let mut child = cmd.spawn().expect("starting qemu-system-x86_64");
        let lines: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
        let log = self.dir.join(format!("serial-{name}.log"));
        let mut logf = std::fs::File::create(&log).unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let l2 = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = match out.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = logf.write_all(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let text = clean(&String::from_utf8_lossy(&line[..line.len() - 1]));
                    l2.lock()
                        .unwrap()
                        .push((start.elapsed().as_secs_f64(), text));
                }
            }
            if !buf.is_empty() {
                let text = clean(&String::from_utf8_lossy(&buf));
                l2.lock()
                    .unwrap()
                    .push((start.elapsed().as_secs_f64(), text));
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = reader.join();
        let qemu_err = err_reader.join().unwrap_or_default();
        let boot = Boot {
            name: name.to_string(),
            lines: std::mem::take(&mut *lines.lock().unwrap()),
            seconds: start.elapsed().as_secs_f64(),
            log,
        };
        match status {
            None => panic!(
                "boot {name}: no power-off within {}s; qemu killed. Serial console (last lines):\n{}",
                BOOT_TIMEOUT.as_secs(),
                boot.tail(60)
            ),
            Some(st) if !st.success() => panic!(
                "boot {name}: qemu exited {st}: {qemu_err}\nSerial console (last lines):\n{}",
                boot.tail(60)
            ),
            Some(_) => {}
        }
        eprintln!(
            "[vm] boot {name}: powered off after {:.1}s ({} console lines, {})",
            boot.seconds,
            boot.lines.len(),
            boot.log.display()
        );
        boot
    }
}

/// A NoCloud seed (cloud-localds) for `user_data` plus the test's power-off.
fn seed(dir: &Path, name: &str, user_data: &Path, hostname: &str) -> PathBuf {
    let mut ud = std::fs::read_to_string(user_data).unwrap();
    // Test only: power off once cloud-init is done, so the test needs no timeout.
    ud.push_str("power_state:\n  mode: poweroff\n  delay: now\n  message: kiln vm test done\n  timeout: 30\n  condition: true\n");
    let udp = dir.join(format!("user-data-{name}"));
    std::fs::write(&udp, ud).unwrap();
    let md = dir.join(format!("meta-data-{name}"));
    std::fs::write(
        &md,
        format!("instance-id: {name}\nlocal-hostname: {hostname}\n"),
    )
    .unwrap();
    let img = dir.join(format!("seed-{name}.img"));
    let o = Command::new("cloud-localds")
        .arg(&img)
        .arg(&udp)
        .arg(&md)
        .output()
        .unwrap();
    assert!(o.status.success(), "cloud-localds: {}", stderr(&o));
    img
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

/// `Mode:  0600` of a path in the image.
fn mode(image: &Path, path: &str) -> String {
    let s = debugfs(image, &format!("stat {path}"));
    s.split("Mode:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

fn rollout_wait(consul: &str, version: &str, count: &str, timeout: &str) -> (i32, String, f64) {
    let t = Instant::now();
    let o = kiln(&[
        "rollout",
        "wait",
        HOSTGROUP,
        "--version",
        version,
        "--count",
        count,
        "--timeout",
        timeout,
        "--consul-addr",
        consul,
    ]);
    (
        o.status.code().unwrap_or(-1),
        stderr(&o),
        t.elapsed().as_secs_f64(),
    )
}

/// `kiln-firstboot: timings: fetch 0.05s, verify 0.01s, ...; total 1.23s (exit 0)` as
/// (name, seconds) pairs and the total.
fn firstboot_timings(boot: &Boot) -> Option<(Vec<(String, f64)>, f64)> {
    let (_, l) = boot.find("kiln-firstboot: timings: ")?;
    let rest = &l[l.find("timings: ")? + 9..];
    let (steps, total) = rest.split_once("; total ")?;
    let total: f64 = total.split('s').next()?.parse().ok()?;
    let steps = steps
        .split(", ")
        .filter_map(|s| {
            let (n, v) = s.rsplit_once(' ')?;
            Some((n.to_string(), v.trim_end_matches('s').parse().ok()?))
        })
        .collect();
    Some((steps, total))
}

/// The boot split: kernel+systemd (to cloud-init's first stage), cloud-init (to runcmd),
/// kiln-firstboot (its own steps), the rest to power-off.
fn measure(boot: &Boot) {
    let init_local = boot.uptime("running 'init-local'");
    let init = boot.uptime("running 'init' at");
    let final_ = boot.uptime("running 'modules:final'");
    // runcmd: the script's markers; kiln-firstboot.service: its first and last lines, which
    // journald forwards to the console with the uptime in brackets.
    let start = boot
        .uptime("KILN-FIRSTBOOT: start")
        .or_else(|| boot.bracket("]: kiln-firstboot: "));
    let end = boot
        .uptime("KILN-FIRSTBOOT: OK")
        .or_else(|| boot.uptime("KILN-FIRSTBOOT: FAILED"))
        .or_else(|| boot.bracket("kiln-firstboot: timings: "));
    let host_start = boot
        .find("KILN-FIRSTBOOT: start")
        .or_else(|| boot.find("]: kiln-firstboot: "))
        .map(|(t, _)| *t);
    let host_end = boot
        .find("KILN-FIRSTBOOT: OK")
        .or_else(|| boot.find("KILN-FIRSTBOOT: FAILED"))
        .or_else(|| boot.find("kiln-firstboot: timings: "))
        .map(|(t, _)| *t);
    let f = |v: Option<f64>| v.map(|v| format!("{v:.1}s")).unwrap_or("?".into());
    let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}s", b - a),
        _ => "?".into(),
    };
    eprintln!(
        "MEASURE boot {}: host wall {:.1}s from qemu start to power-off; guest uptime at: cloud-init init-local {}, init {}, modules:final {}, kiln-firstboot start {}, end {}",
        boot.name, boot.seconds, f(init_local), f(init), f(final_), f(start), f(end)
    );
    eprintln!(
        "MEASURE boot {}: kernel+systemd (to cloud-init init-local) {}; cloud-init (init-local to kiln-firstboot) {}; kiln-firstboot {} (host wall {}); after it to power-off {:.1}s (host)",
        boot.name,
        f(init_local),
        d(init_local, start),
        d(start, end),
        d(host_start, host_end),
        host_end.map(|e| boot.seconds - e).unwrap_or(f64::NAN),
    );
    if let Some((steps, total)) = firstboot_timings(boot) {
        let s: Vec<String> = steps.iter().map(|(n, v)| format!("{n} {v:.2}s")).collect();
        eprintln!(
            "MEASURE boot {}: kiln-firstboot's own steps: {}; total {total:.2}s",
            boot.name,
            s.join(", ")
        );
    }
}

/// The newest kernel of a bootable root and its initrd (for QEMU's direct kernel boot).
fn kernel_of(base: &str) -> (PathBuf, PathBuf) {
    let kernel = std::fs::read_dir(Path::new(base).join("boot"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        })
        .max()
        .expect("a kernel in the bootable base's /boot");
    let initrd = kernel.with_file_name(
        kernel
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace("vmlinuz-", "initrd.img-"),
    );
    (kernel, initrd)
}

/// The work directory, removed at the end unless KILN_VM_KEEP is set.
fn keep_if_asked(tmp: tempfile::TempDir) -> Option<tempfile::TempDir> {
    if std::env::var_os("KILN_VM_KEEP").is_some() {
        eprintln!("[vm] keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    }
}

/// One VM at a time: two TCG guests on this machine's two cores would each take twice as long.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_baked_image_boots_applies_once_reports_and_refuses_a_tampered_bundle() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(base) = need("KILN_TEST_BOOTABLE_BASE") else {
        return;
    };
    if !need_root()
        || !["qemu-system-x86_64", "cloud-localds", "debugfs"]
            .iter()
            .all(|t| need_tool(t))
    {
        return;
    }
    let Some(firstboot) = firstboot_bin() else {
        return;
    };
    let Some(bao) = bao::Bao::start() else {
        return;
    };
    let t_all = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("kiln-vm-")
        .tempdir_in(
            std::env::var_os("KILN_VM_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .unwrap();
    let dir = tmp.path().to_path_buf();
    // KILN_VM_KEEP=1: the work directory (consoles, disks, journals) stays, even on a failure.
    let _tmp = keep_if_asked(tmp);
    eprintln!("[vm] work directory {}", dir.display());

    // 1. Build and bake.
    let (key, trust) = key_and_trust(&dir);
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("hostgroups")).unwrap();
    std::fs::write(config.join("hostgroups/default.yaml"), CONFIG).unwrap();
    std::fs::write(config.join("hostgroups/vmtest.yaml"), "vars: {}\n").unwrap();
    let out = dir.join("out");
    ok(&kiln(&[
        "build",
        HOSTGROUP,
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "1",
        "--expires",
        "3650d",
    ]));
    let bundle = out.join("vmtest-1.kiln");
    let t = Instant::now();
    let baked = dir.join("baked.img");
    let o = kiln(&[
        "bake",
        bundle.to_str().unwrap(),
        "--base",
        &base,
        "--out",
        baked.to_str().unwrap(),
        "--format",
        "raw",
        "--trust",
        trust.to_str().unwrap(),
        "--firstboot",
        firstboot.to_str().unwrap(),
    ]);
    ok(&o);
    eprintln!("MEASURE kiln bake (raw) {:.1}s", t.elapsed().as_secs_f64());
    // Baked up to the dynamic phase: the rendered files do not exist yet.
    assert_eq!(debugfs(&baked, "cat /etc/app/secret.conf"), "");
    assert_eq!(debugfs(&baked, "cat /var/lib/kiln/state.json"), "");
    let (kernel, initrd) = kernel_of(&base);

    // 2. The services on 127.0.0.1: OpenBao, the Consul test server, the bundle's HTTP server.
    let consul = TestServer::start();
    consul.put("kiln/apps/vmtest/greeting", GREETING.as_bytes());
    bao.root("POST", "sys/auth/approle", json!({"type": "approle"}));
    bao.set_policy(
        HOSTGROUP,
        "path \"secret/data/vmtest/*\" { capabilities = [\"read\"] }",
    );
    bao.root(
        "POST",
        "auth/approle/role/vmtest",
        json!({"token_policies": [HOSTGROUP], "token_ttl": "1h", "secret_id_num_uses": 1, "secret_id_ttl": "60m"}),
    );
    let role_id = bao.root("GET", "auth/approle/role/vmtest/role-id", Value::Null)["data"]
        ["role_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("role-id"), format!("{role_id}\n")).unwrap();
    bao.kv_put("vmtest/db", json!({ "password": PASSWORD }));
    let wrapped = |name: &str| -> (PathBuf, String) {
        // Boots under TCG take minutes: a wrapping TTL of 30m, not 5m.
        let resp = bao::http()
            .post(format!(
                "{}/v1/auth/approle/role/vmtest/secret-id",
                bao.addr
            ))
            .header("X-Vault-Token", "root")
            .header("X-Vault-Wrap-TTL", "30m")
            .send()
            .unwrap();
        let v: Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
        let token = v["wrap_info"]["token"].as_str().unwrap().to_string();
        let p = dir.join(format!("wrapped-{name}"));
        std::fs::write(&p, format!("{token}\n")).unwrap();
        (p, token)
    };
    let files = Files::start();
    files.put("/bundles/vmtest-1.kiln", std::fs::read(&bundle).unwrap());
    let bao_port: u16 = bao.addr.rsplit(':').next().unwrap().parse().unwrap();
    let vm = Vm {
        dir: &dir,
        kernel,
        initrd,
        fwd: vec![
            (80, files.port),
            (8500, consul.addr().port()),
            (8200, bao_port),
        ],
        memory: 1024,
    };
    let cloud_init = |name: &str, extra: &[&str], wrapped: &Path| -> PathBuf {
        let ud = dir.join(format!("kiln-user-data-{name}"));
        let mut args = vec![
            "cloud-init",
            HOSTGROUP,
            "--consul-addr",
            "http://10.0.2.100:8500",
            "--vault-addr",
            "http://10.0.2.100:8200",
        ];
        let (w, r) = (
            wrapped.to_str().unwrap().to_string(),
            dir.join("role-id").to_str().unwrap().to_string(),
        );
        args.extend_from_slice(&["--wrapped-secret-id-file", &w, "--vault-role-id-file", &r]);
        args.extend_from_slice(extra);
        let ud_s = ud.to_str().unwrap().to_string();
        args.extend_from_slice(&["--out", &ud_s]);
        ok(&kiln(&args));
        let o = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&ud)
            .output()
            .unwrap();
        assert!(o.status.success(), "cloud-init schema: {}", stderr(&o));
        ud
    };
    let bundle_s = bundle.to_str().unwrap().to_string();

    // 3. First boot: cloud-init runcmd, the bundle by URL.
    let disk = dir.join("disk-1.img");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&baked)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(st.success());
    let (w1, token1) = wrapped("1");
    let ud1 = cloud_init(
        "1",
        &[
            "--bundle-url",
            "http://10.0.2.100/bundles/vmtest-1.kiln",
            "--bundle-file",
            &bundle_s,
        ],
        &w1,
    );
    let b1 = vm.boot("1", &disk, &seed(&dir, "vm-e2e-1", &ud1, "vm-e2e-1"));
    measure(&b1);
    assert!(
        b1.has("KILN-FIRSTBOOT: OK hostgroup=vmtest"),
        "no success line on the console:\n{}",
        b1.tail(80)
    );
    assert!(
        b1.has("kiln-firstboot: applied vmtest version 1"),
        "{}",
        b1.tail(80)
    );
    assert!(
        b1.has("dynamic: 2 template(s) for vm-e2e-1, 2 changed"),
        "{}",
        b1.tail(80)
    );
    assert!(
        b1.has("VMTEST-APP: started, greeting=hello from consul"),
        "{}",
        b1.tail(80)
    );
    assert!(
        !b1.text().contains(PASSWORD),
        "the secret value reached the console"
    );
    assert!(
        !b1.text().contains(&token1),
        "the wrapping token reached the console"
    );
    assert_eq!(
        files.log.lock().unwrap().as_slice(),
        ["GET /bundles/vmtest-1.kiln"]
    );
    // Consul holds the node's report; `kiln rollout wait` sees it.
    let entry = consul
        .get("kiln/nodes/vmtest/vm-e2e-1")
        .expect("the node's report in Consul");
    let report: Value = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(report["result"], "success", "{report}");
    assert_eq!(report["version"], 1);
    assert_eq!(report["hostname"], "vm-e2e-1");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        steps.starts_with(&["fetch", "verify", "stage"])
            && steps.ends_with(&["dynamic", "runtime", "health"]),
        "{steps:?}"
    );
    let report_index = entry.modify_index;
    let (code, err, took) = rollout_wait(&consul.url(), "1", "1", "30s");
    assert_eq!(code, 0, "{err}");
    assert!(took < 10.0, "{took}");
    // The disk, after the power-off.
    assert_eq!(
        debugfs(&disk, "cat /etc/app/greeting.conf"),
        format!("greeting={GREETING}\n")
    );
    assert_eq!(
        debugfs(&disk, "cat /etc/app/secret.conf"),
        format!("password={PASSWORD}\n")
    );
    assert_eq!(mode(&disk, "/etc/app/secret.conf"), "0600");
    assert!(debugfs(&disk, "stat /etc/app/secret.conf").contains("User:     0   Group:     0"));
    assert_eq!(
        debugfs(&disk, "cat /etc/motd"),
        "baked by kiln for the VM test\n"
    );
    let state1 = debugfs(&disk, "cat /var/lib/kiln/state.json");
    let state: Value = serde_json::from_str(&state1).expect("state.json");
    assert_eq!(state["result"], "success");
    assert_eq!(state["hostname"], "vm-e2e-1");
    assert_eq!(debugfs(&disk, "cat /var/lib/kiln/journal"), "");
    // The wrapped secret_id: written to /run (tmpfs), so not on the disk there; cloud-init's
    // own copies of the user-data are 0600 root; no other file on the disk holds it.
    assert_eq!(debugfs(&disk, "stat /run/kiln/wrapped-secret-id"), "");
    let dump = dir.join("dump-1");
    std::fs::create_dir_all(&dump).unwrap();
    for d in [
        "/var/lib/cloud",
        "/var/log",
        "/etc",
        "/var/lib/kiln",
        "/root",
        "/tmp",
    ] {
        debugfs(&disk, &format!("rdump {d} {}", dump.display()));
    }
    let mut holders = Vec::new();
    let walk = sh(&format!("grep -rlF '{token1}' {} || true", dump.display()));
    for f in String::from_utf8_lossy(&walk.stdout).lines() {
        let rel = f.strip_prefix(dump.to_str().unwrap()).unwrap().to_string();
        // rdump puts each dumped directory's contents under its last component.
        let guest = ["cloud", "log", "etc", "kiln", "root", "tmp"]
            .iter()
            .find_map(|top| {
                let p = format!("/{top}/");
                rel.starts_with(&p).then(|| match *top {
                    "cloud" => format!("/var/lib{rel}"),
                    "log" => format!("/var{rel}"),
                    "kiln" => format!("/var/lib{rel}"),
                    _ => rel.clone(),
                })
            })
            .unwrap_or(rel.clone());
        holders.push((guest.clone(), mode(&disk, &guest)));
    }
    eprintln!("[vm] files on the disk holding the wrapping token: {holders:?}");
    for (path, m) in &holders {
        assert!(
            m == "0600" || m == "0400",
            "{path} holds the wrapping token with mode {m} (world-readable?)"
        );
        assert!(
            path.starts_with("/var/lib/cloud/"),
            "{path} holds the wrapping token"
        );
    }

    // 4. Second boot of the same disk (re-provisioned, a new instance-id: cloud-init runs
    //    kiln-firstboot again): already applied, nothing re-applied, nothing re-reported.
    let (w2, _) = wrapped("2");
    let ud2 = cloud_init(
        "2",
        &[
            "--bundle-url",
            "http://10.0.2.100/bundles/vmtest-1.kiln",
            "--bundle-file",
            &bundle_s,
        ],
        &w2,
    );
    let b2 = vm.boot("2", &disk, &seed(&dir, "vm-e2e-1-again", &ud2, "vm-e2e-1"));
    measure(&b2);
    assert!(
        b2.has("kiln-firstboot: already applied: vmtest version 1"),
        "{}",
        b2.tail(80)
    );
    assert!(
        b2.has("KILN-FIRSTBOOT: OK hostgroup=vmtest"),
        "{}",
        b2.tail(80)
    );
    assert!(!b2.has("dynamic:"), "re-applied:\n{}", b2.tail(80));
    assert_eq!(debugfs(&disk, "cat /var/lib/kiln/state.json"), state1);
    assert_eq!(
        consul
            .get("kiln/nodes/vmtest/vm-e2e-1")
            .unwrap()
            .modify_index,
        report_index
    );

    // 5. A fresh copy of the image, a tampered bundle (one byte of the signed manifest
    //    changed), started by kiln-firstboot.service: refused, visibly, and reported.
    let tampered = tamper(&bundle, &dir.join("out-tampered"));
    files.put(
        "/bundles/vmtest-1.kiln.tampered",
        std::fs::read(&tampered).unwrap(),
    );
    let disk3 = dir.join("disk-3.img");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&baked)
        .arg(&disk3)
        .status()
        .unwrap();
    assert!(st.success());
    let (w3, _) = wrapped("3");
    let ud3 = cloud_init(
        "3",
        &[
            "--via",
            "systemd",
            "--bundle-url",
            "http://10.0.2.100/bundles/vmtest-1.kiln.tampered",
            "--bundle-file",
            tampered.to_str().unwrap(),
        ],
        &w3,
    );
    let b3 = vm.boot("3", &disk3, &seed(&dir, "vm-e2e-3", &ud3, "vm-e2e-3"));
    measure(&b3);
    assert!(
        // systemd shortens the unit's description to the console's width. It prints no status
        // line once the boot has reached its target (a race under emulation), so the refusal
        // kiln-firstboot itself writes to the console counts just as well.
        b3.has("[FAILED] Failed to start kiln-first")
            || (b3.has("kiln-firstboot: error: refusing") && b3.has("signature invalid")),
        "the unit's failure is not on the console:\n{}",
        b3.tail(80)
    );
    assert!(
        b3.has("kiln-firstboot: error: refusing http://10.0.2.100/bundles/vmtest-1.kiln.tampered"),
        "{}",
        b3.tail(80)
    );
    assert!(b3.has("caused by: signature invalid"), "{}", b3.tail(80));
    // The unit's own line, whatever systemd prints.
    assert!(
        b3.has("KILN-FIRSTBOOT: FAILED exit=10 hostgroup=vmtest"),
        "{}",
        b3.tail(80)
    );
    assert!(!b3.has("VMTEST-APP: started"), "{}", b3.tail(80));
    let r3: Value = serde_json::from_slice(
        &consul
            .get("kiln/nodes/vmtest/vm-e2e-3")
            .expect("the refusal reported to Consul")
            .value,
    )
    .unwrap();
    assert_eq!(r3["result"], "failure", "{r3}");
    assert_eq!(r3["exit_code"], 10, "{r3}");
    let (code, err, took) = rollout_wait(&consul.url(), "1", "5", "120s");
    assert_eq!(code, 3, "{err}");
    assert!(took < 10.0, "rollout wait took {took}s");
    assert!(err.contains("vm-e2e-3"), "{err}");
    assert_eq!(debugfs(&disk3, "cat /etc/app/secret.conf"), "");
    assert_eq!(debugfs(&disk3, "cat /var/lib/kiln/state.json"), "");

    // 6. Version 2 adds health checks, one of which cannot pass (nothing listens on port 9):
    //    applied, but unhealthy: exit 23 on the console, the report says which check failed,
    //    and `kiln rollout wait` stops at once with 3.
    std::fs::write(
        config.join("hostgroups/vmtest.yaml"),
        "checks:\n  app: {unit: vmtest-app.service}\n  nothing-listens: {tcp: \"127.0.0.1:9\", deadline: 5s}\n",
    )
    .unwrap();
    ok(&kiln(&[
        "build",
        HOSTGROUP,
        "--config",
        config.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--version",
        "2",
        "--expires",
        "3650d",
    ]));
    let bundle2 = out.join("vmtest-2.kiln");
    let baked2 = dir.join("baked-2.img");
    ok(&kiln(&[
        "bake",
        bundle2.to_str().unwrap(),
        "--base",
        &base,
        "--out",
        baked2.to_str().unwrap(),
        "--format",
        "raw",
        "--trust",
        trust.to_str().unwrap(),
        "--firstboot",
        firstboot.to_str().unwrap(),
    ]));
    files.put("/bundles/vmtest-2.kiln", std::fs::read(&bundle2).unwrap());
    let (w4, _) = wrapped("4");
    let ud4 = cloud_init(
        "4",
        &[
            "--bundle-url",
            "http://10.0.2.100/bundles/vmtest-2.kiln",
            "--bundle-file",
            bundle2.to_str().unwrap(),
        ],
        &w4,
    );
    let b4 = vm.boot("4", &baked2, &seed(&dir, "vm-e2e-4", &ud4, "vm-e2e-4"));
    measure(&b4);
    assert!(
        b4.has("KILN-FIRSTBOOT: FAILED exit=23 hostgroup=vmtest"),
        "{}",
        b4.tail(80)
    );
    assert!(b4.has("VMTEST-APP: started"), "{}", b4.tail(80));
    let r4: Value = serde_json::from_slice(
        &consul
            .get("kiln/nodes/vmtest/vm-e2e-4")
            .expect("the unhealthy node's report")
            .value,
    )
    .unwrap();
    assert_eq!(r4["result"], "failure", "{r4}");
    assert_eq!(r4["exit_code"], 23, "{r4}");
    assert_eq!(r4["health"]["status"], "unhealthy", "{r4}");
    let checks = r4["health"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{r4}");
    assert_eq!(
        (&checks[0]["name"], &checks[0]["passed"]),
        (&json!("app"), &json!(true)),
        "{r4}"
    );
    assert_eq!(
        (&checks[1]["name"], &checks[1]["passed"]),
        (&json!("nothing-listens"), &json!(false)),
        "{r4}"
    );
    assert!(
        checks[1]["detail"].as_str().unwrap().contains("refused"),
        "{r4}"
    );
    assert!(
        r4["error"].as_str().unwrap().contains("nothing-listens"),
        "{r4}"
    );
    let (code, err, took) = rollout_wait(&consul.url(), "2", "1", "120s");
    assert_eq!(code, 3, "{err}");
    assert!(took < 10.0, "rollout wait took {took}s");
    assert!(err.contains("vm-e2e-4"), "{err}");
    let state4: Value =
        serde_json::from_str(&debugfs(&baked2, "cat /var/lib/kiln/state.json")).unwrap();
    assert_eq!(state4["exit_code"], 23, "{state4}");
    assert_eq!(state4["health"]["status"], "unhealthy", "{state4}");

    eprintln!(
        "MEASURE vm_boot test total {:.1}s",
        t_all.elapsed().as_secs_f64()
    );
}

/// The bundle with one byte of its signed manifest changed (same length): the signature no
/// longer matches (kiln-firstboot: exit 10).
fn tamper(bundle: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tar = sh(&format!("zstd -dc {}", bundle.display()));
    assert!(tar.status.success());
    let mut t = tar.stdout;
    let needle = b"\"/etc/motd\"";
    let i = t
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the manifest's /etc/motd");
    t[i + needle.len() - 2] = b'D'; // /etc/motd -> /etc/motD
    let raw = dir.join("tampered.tar");
    std::fs::write(&raw, &t).unwrap();
    let out = dir.join("vmtest-1.kiln.tampered");
    let o = sh(&format!(
        "zstd -q -3 -c {} > {}",
        raw.display(),
        out.display()
    ));
    assert!(o.status.success());
    out
}

/// A response-wrapped secret_id for `role`, as the deploy pipeline hands cloud-init (a wrapping
/// TTL of 30m: boots under TCG take minutes), written to `dir/wrapped-<name>`.
fn wrapped_secret_id(bao: &bao::Bao, role: &str, dir: &Path, name: &str) -> PathBuf {
    let resp = bao::http()
        .post(format!(
            "{}/v1/auth/approle/role/{role}/secret-id",
            bao.addr
        ))
        .header("X-Vault-Token", "root")
        .header("X-Vault-Wrap-TTL", "30m")
        .send()
        .unwrap();
    let v: Value = serde_json::from_str(&resp.text().unwrap()).unwrap();
    let p = dir.join(format!("wrapped-{name}"));
    std::fs::write(
        &p,
        format!("{}\n", v["wrap_info"]["token"].as_str().unwrap()),
    )
    .unwrap();
    p
}

/// What the guest's journal says of `unit` (or, with `None`, everything), from a disk after
/// its power-off: the journal directory dumped with debugfs and read with the host's journalctl.
fn guest_journal(disk: &Path, dump: &Path, unit: Option<&str>) -> String {
    if !dump.join("journal").exists() {
        std::fs::create_dir_all(dump).unwrap();
        debugfs(disk, &format!("rdump /var/log/journal {}", dump.display()));
    }
    let mut cmd = Command::new("journalctl");
    cmd.arg("-D")
        .arg(dump.join("journal"))
        .args(["--no-pager", "-o", "cat"]);
    if let Some(u) = unit {
        cmd.args(["-u", u]);
    }
    let o = cmd.output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shipped example as a fleet runs it: db and web built against the example's own base
/// (`kiln base build debian-12`), baked onto it, and booted under QEMU with user-data from
/// `kiln cloud-init`, against a real OpenBao and the Consul test server. db reaches a running
/// PostgreSQL in which the app role logs in with the password generated in Vault (its
/// app-db-role.service proves it over TCP); web then reads the same password, its version from
/// Consul and a certificate from Vault's PKI, and nginx starts with them. Both report success
/// and `kiln rollout wait` sees them.
#[test]
fn the_example_db_and_web_boot_from_baked_images_with_their_real_services() {
    let Some(cache) = need("KILN_TEST_KILN_CACHE") else {
        return;
    };
    if !need_root()
        || ![
            "qemu-system-x86_64",
            "cloud-localds",
            "debugfs",
            "journalctl",
        ]
        .iter()
        .all(|t| need_tool(t))
    {
        return;
    }
    let Some(firstboot) = firstboot_bin() else {
        return;
    };
    let Some(bao) = bao::Bao::start() else {
        return;
    };
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t_all = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("kiln-vm-example-")
        .tempdir_in(
            std::env::var_os("KILN_VM_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .unwrap();
    let dir = tmp.path().to_path_buf();
    // KILN_VM_KEEP=1: the work directory (consoles, disks, journals) stays, even on a failure.
    let _tmp = keep_if_asked(tmp);
    eprintln!("[vm] work directory {}", dir.display());
    let repo = repo_root();
    let repo_s = repo.to_str().unwrap();

    // 1. The README's commands: the base, the bundles against it, the images.
    let o = Command::new(KILN)
        .args([
            "base",
            "build",
            "debian-12",
            "--json",
            "--cache",
            &cache,
            "--config",
            repo_s,
        ])
        .output()
        .unwrap();
    let base_json: Value = serde_json::from_str(&ok(&o)).unwrap();
    let base = base_json["rootfs"].as_str().unwrap().to_string();
    let (key, trust) = key_and_trust(&dir);
    let out = dir.join("out");
    let o = Command::new(KILN)
        .args([
            "build",
            "db",
            "web",
            "--base",
            "debian-12",
            "--cache",
            &cache,
        ])
        .args(["--version", "7", "--config", repo_s])
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    ok(&o);
    let mut images = HashMap::new();
    for hg in ["db", "web"] {
        let t = Instant::now();
        let img = dir.join(format!("{hg}.img"));
        let o = Command::new(KILN)
            .arg("bake")
            .arg(out.join(format!("{hg}-7.kiln")))
            .args(["--base", "debian-12", "--cache", &cache, "--config", repo_s])
            .arg("--out")
            .arg(&img)
            .args(["--format", "raw", "--size", "4G"])
            .arg("--trust")
            .arg(&trust)
            .arg("--firstboot")
            .arg(&firstboot)
            .output()
            .unwrap();
        ok(&o);
        eprintln!(
            "MEASURE kiln bake {hg} (raw) {:.1}s",
            t.elapsed().as_secs_f64()
        );
        images.insert(hg, img);
    }
    let (kernel, initrd) = kernel_of(&base);

    // 2. The fleet's services on 127.0.0.1, set up as docs/dynamic.md says.
    let consul = TestServer::start();
    consul.put("kiln/apps/web/version", b"1.4.2");
    let mut role_ids = HashMap::new();
    for (role, policy) in [
        (
            "db",
            r#"path "secret/data/db/app" { capabilities = ["read", "create", "update"] }"#,
        ),
        (
            "web",
            r#"path "secret/data/db/app" { capabilities = ["read", "create", "update"] }
path "pki/issue/web" { capabilities = ["update"] }"#,
        ),
    ] {
        let id = bao.approle(role, policy);
        // Boots under TCG take minutes: secret_ids live an hour, not the helper's 10 minutes.
        bao.root(
            "POST",
            &format!("auth/approle/role/{role}"),
            json!({"token_policies": [role], "token_ttl": "1h", "secret_id_num_uses": 1, "secret_id_ttl": "60m"}),
        );
        let p = dir.join(format!("{role}.role-id"));
        std::fs::write(&p, format!("{id}\n")).unwrap();
        role_ids.insert(role, p);
    }
    bao.pki("web", "example.invalid");
    let files = Files::start();
    let bao_port: u16 = bao.addr.rsplit(':').next().unwrap().parse().unwrap();
    let vm = |memory: u32| Vm {
        dir: &dir,
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        fwd: vec![
            (80, files.port),
            (8500, consul.addr().port()),
            (8200, bao_port),
        ],
        memory,
    };

    // 3. Boot each: db first (it generates the password web reads). db is sized for its
    //    shared_buffers (2GB in hostgroups/db.yaml): 3 GiB.
    let mut password = String::new();
    for (hg, memory) in [("db", 3072), ("web", 1024)] {
        let bundle = out.join(format!("{hg}-7.kiln"));
        files.put(
            &format!("/bundles/{hg}-7.kiln"),
            std::fs::read(&bundle).unwrap(),
        );
        let wrapped = wrapped_secret_id(&bao, hg, &dir, hg);
        let ud = dir.join(format!("kiln-user-data-{hg}"));
        let o = Command::new(KILN)
            .args(["cloud-init", hg])
            .args(["--consul-addr", "http://10.0.2.100:8500"])
            .args(["--vault-addr", "http://10.0.2.100:8200"])
            .arg("--wrapped-secret-id-file")
            .arg(&wrapped)
            .arg("--vault-role-id-file")
            .arg(&role_ids[hg])
            .args([
                "--bundle-url",
                &format!("http://10.0.2.100/bundles/{hg}-7.kiln"),
            ])
            .arg("--bundle-file")
            .arg(&bundle)
            .arg("--out")
            .arg(&ud)
            .output()
            .unwrap();
        ok(&o);
        let o = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(&ud)
            .output()
            .unwrap();
        assert!(o.status.success(), "cloud-init schema: {}", stderr(&o));
        let disk = dir.join(format!("disk-{hg}.img"));
        let st = Command::new("cp")
            .args(["--sparse=always"])
            .arg(&images[hg])
            .arg(&disk)
            .status()
            .unwrap();
        assert!(st.success());
        let host = format!("{hg}-1");
        let b = vm(memory).boot(hg, &disk, &seed(&dir, &host, &ud, &host));
        measure(&b);
        let dump = dir.join(format!("journal-{hg}"));
        assert!(
            b.has(&format!("KILN-FIRSTBOOT: OK hostgroup={hg}")),
            "{hg}: no success line on the console:\n{}\nkiln-firstboot's journal:\n{}",
            b.tail(80),
            guest_journal(&disk, &dump, Some("cloud-final.service"))
        );
        let entry = consul
            .get(&format!("kiln/nodes/{hg}/{host}"))
            .unwrap_or_else(|| panic!("{hg}: no report in Consul"));
        let report: Value = serde_json::from_slice(&entry.value).unwrap();
        assert_eq!(report["result"], "success", "{report}");
        assert_eq!(report["version"], 7, "{report}");
        let o = kiln(&[
            "rollout",
            "wait",
            hg,
            "--version",
            "7",
            "--count",
            "1",
            "--timeout",
            "30s",
            "--consul-addr",
            &consul.url(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let state: Value =
            serde_json::from_str(&debugfs(&disk, "cat /var/lib/kiln/state.json")).unwrap();
        assert_eq!(state["result"], "success", "{state}");
        // Every check the bundle declares passed, and the report says so.
        let m: Value = serde_json::from_slice(
            &sh(&format!(
                "zstd -dc {} | tar -xO kiln/manifest.json",
                bundle.display()
            ))
            .stdout,
        )
        .unwrap();
        let declared: Vec<&str> = m["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(!declared.is_empty(), "{hg} declares no checks");
        assert_eq!(report["health"]["status"], "healthy", "{report}");
        let passed: Vec<&str> = report["health"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == true)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(passed, declared, "{report}");
        if password.is_empty() {
            password = bao.kv_get("db/app").unwrap()["password"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert!(
            !b.text().contains(&password),
            "{hg}: the password reached the console"
        );
        match hg {
            "db" => {
                assert_eq!(
                    debugfs(&disk, "cat /etc/app-db/app.password"),
                    format!("{password}\n")
                );
                assert_eq!(mode(&disk, "/etc/app-db/app.password"), "0600");
                let role = guest_journal(&disk, &dump, Some("app-db-role.service"));
                assert!(
                    role.contains("app logs in over 127.0.0.1 with its password"),
                    "app-db-role.service:\n{role}"
                );
                let pg = guest_journal(&disk, &dump, Some("postgresql@15-main.service"));
                assert!(pg.contains("Started"), "postgresql@15-main.service:\n{pg}");
            }
            _ => {
                let env = debugfs(&disk, "cat /etc/app/app.env");
                assert!(env.contains("APP_VERSION=1.4.2\n"), "{hg}: app.env");
                assert!(
                    env.contains(&format!("DATABASE_PASSWORD={password}\n")),
                    "{hg}: app.env has not db's password"
                );
                assert_eq!(mode(&disk, "/etc/ssl/kiln/web.key"), "0600");
                let nginx = guest_journal(&disk, &dump, Some("nginx.service"));
                assert!(nginx.contains("Started"), "nginx.service:\n{nginx}");
                assert!(!nginx.contains("emerg"), "nginx.service:\n{nginx}");
            }
        }
        let all = guest_journal(&disk, &dump, None);
        assert!(
            !all.contains(&password),
            "{hg}: the password reached the journal"
        );
        // A clean boot: no unit failed, no ordering cycle (kiln-firstboot.service is ordered
        // before the bundle's services but not before early-boot ones such as journald).
        let bad: Vec<&str> = all
            .lines()
            .filter(|l| {
                l.contains("Failed to start") || l.to_lowercase().contains("ordering cycle")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{hg}: the boot was not clean:\n{}",
            bad.join("\n")
        );
        assert!(!b.has("Ordering cycle"), "{hg}:\n{}", b.tail(80));
    }
    eprintln!(
        "MEASURE vm example test (db and web) total {:.1}s",
        t_all.elapsed().as_secs_f64()
    );
}
