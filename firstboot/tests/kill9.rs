//! The crash test: kill -9 at no fewer than 50 random points during an apply, then rerun the
//! same command: the final tree equals a clean apply's every time, and the rerun exits 0.
//!
//! Real SIGKILLs after a random delay in [0, the clean apply's duration), from a fixed seed; a
//! kill that comes after the process already exited is not counted and another is drawn. Most
//! points hit a small synthetic root with a few hundred files (nested directories, blobs shared
//! by several paths, a file replaced, a file left as it is, symlinks, absent paths, directories);
//! a handful hit a copy of the debootstrapped base (KILN_TEST_BASE) with a group, a user, a
//! command, a unit and its enabled service, so the shadow tools, `systemctl --root` and the
//! commands phase are interrupted too. The journal left by each kill says which phase it landed
//! in; the tally is printed (`cargo test --test integration kill9:: -- --nocapture`).
//!
//! Compared: every path with its type, mode, owner, content or link target, except
//! /var/lib/kiln/state.json, of which only result, version and sha256 are (its times differ),
//! and the day of the last password change in /etc/shadow (a run may cross midnight); the
//! journal and staging area must be gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use kiln_signing::{Group, ServiceState};

/// One test at a time: copying the base dirties 175 MB that the other test's syncfs would wait
/// for, which makes its timing, and so its kill points, meaningless.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Kill points on the synthetic root, and on copies of the base (each costs a copy of it);
/// KILN_KILL9_POINTS and KILN_KILL9_BASE_POINTS ask for more.
const MINI_POINTS: usize = 50;
const BASE_POINTS: usize = 4;

fn points(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, |n: usize| n.max(default))
}

/// Deterministic randomness (xorshift64*), so a failure replays with the same delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, d).
    fn below(&mut self, d: Duration) -> Duration {
        let ns = d.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % ns)
    }
}

/// Files, directories, symlinks and absent paths: what any root can take.
fn paths_spec(s: &mut Spec) {
    s.dir("/srv/app", "0755", "root", "root")
        .dir("/srv/app/private", "0750", "root", "daemon")
        .dir("/opt/tools", "2775", "daemon", "daemon");
    // New directories of the manifest holding files: staged as whole trees and renamed into
    // place by the directories phase (a1/b1 exists before, so its files go one by one).
    for a in 0..7 {
        s.dir(&format!("/srv/app/a{a}"), "0755", "root", "root");
        for b in 0..3 {
            let mode = if b == 2 { "0750" } else { "0755" };
            s.dir(&format!("/srv/app/a{a}/b{b}"), mode, "root", "daemon");
        }
    }
    let shared = noise(99, 3000);
    for i in 0..300u64 {
        let path = format!("/srv/app/a{}/b{}/f{i:03}.dat", i % 7, i % 3);
        let (mode, owner) = match i % 5 {
            0 => ("0600", "daemon"),
            1 => ("0640", "root"),
            _ => ("0644", "root"),
        };
        if i % 10 == 0 {
            // One blob, several paths: copied, not moved.
            s.file(&path, &shared, mode, owner, "root");
        } else {
            s.file(
                &path,
                &noise(i + 1, 500 + (i as usize * 37) % 9000),
                mode,
                owner,
                "root",
            );
        }
    }
    s.file(
        "/srv/app/private/secret",
        b"s3cret\n",
        "0400",
        "daemon",
        "daemon",
    )
    .file_hooks(
        "/etc/app.conf",
        b"[app]\nlisten = 8080\n",
        "0644",
        "root",
        "root",
        &["app.service"],
        &[],
    )
    // Both exist before: one gets new content, one has it already (only its mode changes).
    .file("/etc/hostname", b"kill9\n", "0644", "root", "root")
    .file("/etc/motd", b"same\n", "0644", "root", "root")
    .file(
        "/opt/tools/big.bin",
        &noise(5, 400_000),
        "4755",
        "root",
        "root",
    )
    .symlink("/srv/current", "app")
    .symlink("/etc/app-link.conf", "/etc/app.conf")
    .symlink("/srv/app/a0/latest", "b0/f000.dat")
    .absent("/srv/old")
    .absent("/srv/old/file")
    .absent("/etc/obsolete.conf")
    .absent("/var/cache/never-there");
}

fn mini_spec() -> Spec {
    let mut s = Spec::new("kill9", 3);
    paths_spec(&mut s);
    s
}

fn prepare_mini(root: &Path) {
    std::fs::write(root.join("etc/hostname"), b"before\n").unwrap();
    std::fs::write(root.join("etc/motd"), b"same\n").unwrap();
    std::fs::set_permissions(
        root.join("etc/motd"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("srv/old")).unwrap();
    std::fs::write(root.join("srv/old/file"), b"old\n").unwrap();
    std::fs::write(root.join("etc/obsolete.conf"), b"old\n").unwrap();
    std::fs::create_dir_all(root.join("srv/app/a1/b1")).unwrap();
    std::fs::write(root.join("srv/app/a1/b1/f001.dat"), b"stale content\n").unwrap();
}

const UNIT: &[u8] = b"[Unit]\nDescription=kill9 test service\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

fn base_spec() -> Spec {
    let mut s = Spec::new("kill9", 4);
    paths_spec(&mut s);
    s.m.groups.push(Group {
        name: "k9grp".into(),
        gid: Some(2600),
        system: false,
    });
    let mut u = user("k9user");
    u.uid = Some(2601);
    u.group = Some("k9grp".into());
    u.home = Some("/home/k9user".into());
    u.shell = Some("/bin/bash".into());
    u.create_home = true;
    s.m.users.push(u);
    s.file("/srv/app/owned.txt", b"owned\n", "0640", "k9user", "k9grp")
        .file_hooks(
            "/etc/systemd/system/app.service",
            UNIT,
            "0644",
            "root",
            "root",
            &["app.service"],
            &[],
        )
        .service("app.service", ServiceState::Running, true)
        .command(
            "record",
            &["sh", "-c", "id -u k9user > /var/tmp/kill9-ran"],
            30,
            None,
        )
        .command(
            "once",
            &["touch", "/var/tmp/kill9-created"],
            30,
            Some("/var/tmp/kill9-created"),
        );
    s
}

/// The tree minus the state file, and the state file's outcome.
fn snapshot(root: &Path) -> (Vec<String>, (String, u64, String)) {
    let listing = tree_listing(root)
        .into_iter()
        .filter(|l| !l.starts_with("var/lib/kiln/state.json "))
        .map(|l| {
            let path = l.split(' ').next().unwrap_or_default();
            // Path, mode and owner still count.
            let keep: Vec<&str> = l.split(' ').take(3).collect();
            if path == "etc/shadow" || path == "etc/shadow-" {
                // The date of the last password change is the day useradd ran: a run that
                // crosses midnight (UTC) must not look like a difference.
                let text = std::fs::read_to_string(root.join(path)).unwrap();
                let days: String = text
                    .lines()
                    .map(|l| {
                        let mut f: Vec<&str> = l.split(':').collect();
                        if f.len() > 2 {
                            f[2] = "<day>";
                        }
                        f.join(":") + "\n"
                    })
                    .collect();
                format!("{} file {}", keep.join(" "), sha256_hex(days.as_bytes()))
            } else {
                l
            }
        })
        .collect();
    let st = read_state(root);
    let outcome = (
        st["result"].as_str().unwrap_or_default().to_string(),
        st["version"].as_u64().unwrap_or_default(),
        st["sha256"].as_str().unwrap_or_default().to_string(),
    );
    (listing, outcome)
}

fn apply_cmd(root: &Path, trust: &Path, bundle: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["apply", "--root"])
        .arg(root)
        .arg("--trust")
        .arg(trust)
        .arg("--bundle")
        .arg(bundle)
        .env_remove("CI")
        .stdin(Stdio::null());
    c
}

/// Runs an apply to its end; panics with its output unless it exits 0. Returns its stderr.
fn apply_ok(root: &Path, trust: &Path, bundle: &Path, what: &str) -> String {
    let out = apply_cmd(root, trust, bundle).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Where a killed apply stopped, as the root shows it: the first phase its journal does not
/// list as done, or the step before the journal or after the state file.
fn landed_in(root: &Path) -> String {
    let kiln = root.join("var/lib/kiln");
    if let Ok(text) = std::fs::read_to_string(kiln.join("journal")) {
        let done: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["record"] == "done")
            .filter_map(|r| r["phase"].as_str().map(str::to_string))
            .collect();
        if kiln.join("state.json").exists() {
            return "cleanup (state written)".into();
        }
        return kiln_apply::engine::PHASES
            .iter()
            .find(|p| !done.iter().any(|d| d == *p))
            .map(|p| p.to_string())
            .unwrap_or_else(|| "state".into());
    }
    if kiln.join("state.json").exists() {
        "cleanup (state written)".into()
    } else if kiln.join("staging").exists() {
        "stage".into()
    } else {
        "fetch/verify".into()
    }
}

type Fresh<'a> = &'a dyn Fn() -> (tempfile::TempDir, PathBuf);

struct Case<'a> {
    name: &'a str,
    bundle: &'a Path,
    trust: &'a Path,
    /// A fresh root as the bundle finds it.
    fresh: Fresh<'a>,
}

/// A clean apply (to `first`, a fresh root), then `points` kills each followed by a rerun, each
/// compared with the clean tree. Returns the tally of phases the kills landed in.
fn kill_points(
    case: &Case,
    first: (tempfile::TempDir, PathBuf),
    points: usize,
    rng: &mut Rng,
) -> BTreeMap<String, usize> {
    // Every root is kept until the end: on ext4 without a journal (this CI machine's), inodes
    // freed in the last 30 s are skipped one by one when allocating, so deleting each root
    // right away would make every later apply (and copy of the base) crawl.
    let mut roots = Vec::new();
    let (keep, clean_root) = first;
    roots.push(keep);
    let t = Instant::now();
    let log = apply_ok(&clean_root, case.trust, case.bundle, "clean apply");
    let mut bound = t.elapsed();
    let clean = snapshot(&clean_root);
    assert_eq!(clean.1 .0, "success");
    assert!(!clean_root.join("var/lib/kiln/journal").exists());
    assert!(!clean_root.join("var/lib/kiln/staging").exists());
    // A second clean apply: the first may have paid for a cold cache; the shorter is the bound.
    {
        let (dir, root) = (case.fresh)();
        roots.push(dir);
        let t = Instant::now();
        apply_ok(&root, case.trust, case.bundle, "second clean apply");
        bound = bound.min(t.elapsed());
        assert_eq!(snapshot(&root), clean, "two clean applies differ");
    }
    eprintln!(
        "{}: clean apply {:.3}s, {} paths in the tree; {}",
        case.name,
        bound.as_secs_f64(),
        clean.0.len(),
        log.lines()
            .find(|l| l.contains("timings:"))
            .unwrap_or_default()
    );

    // Staging is most of a clean apply now, the phases after it a few hundredths of a second:
    // every other kill is drawn from a short window starting where the staging ended in the
    // clean apply (its own timings), moved later each time such a kill still lands in the
    // staging (a loaded machine stages slower) and earlier when it comes after the end.
    let mut after = staging_end(&log).unwrap_or(bound / 2).min(bound);
    let mut tally = BTreeMap::new();
    let (mut kills, mut late) = (0, 0);
    while kills < points {
        assert!(
            late < 5 * points,
            "{}: most kills came after the end",
            case.name
        );
        let late_window = kills % 2 == 1;
        let delay = if late_window {
            after + rng.below(bound / 4)
        } else {
            rng.below(bound)
        };
        let (dir, root) = (case.fresh)();
        roots.push(dir);
        let mut child = apply_cmd(&root, case.trust, case.bundle)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_some() {
            // The machine is faster now than when measured (syncfs waits for whatever else is
            // being written to the filesystem): draw from a shorter range.
            late += 1;
            if late_window {
                after = after.mul_f64(0.8);
            } else {
                bound = bound.mul_f64(0.8);
            }
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.code().is_some() {
            // It exited on its own between the check and the kill.
            late += 1;
            continue;
        }
        kills += 1;
        let phase = landed_in(&root);
        if late_window && (phase == "stage" || phase == "fetch/verify") {
            after += bound / 8;
        }
        *tally.entry(phase.clone()).or_insert(0) += 1;
        apply_ok(
            &root,
            case.trust,
            case.bundle,
            &format!(
                "{} kill {kills} after {:.3}s (in {phase}): rerun",
                case.name,
                delay.as_secs_f64()
            ),
        );
        let got = snapshot(&root);
        if got != clean {
            let added: Vec<_> = got.0.iter().filter(|l| !clean.0.contains(l)).collect();
            let missing: Vec<_> = clean.0.iter().filter(|l| !got.0.contains(l)).collect();
            // The lines of small text files that differ, both ways.
            let mut diff = String::new();
            for l in &added {
                let path = l.split(' ').next().unwrap_or_default();
                let (Ok(a), Ok(b)) = (
                    std::fs::read_to_string(root.join(path)),
                    std::fs::read_to_string(clean_root.join(path)),
                ) else {
                    continue;
                };
                if a.len() + b.len() > 1 << 16 {
                    continue;
                }
                for x in a.lines().filter(|x| !b.lines().any(|y| y == *x)) {
                    diff += &format!("  /{path} after the crash: {x}\n");
                }
                for y in b.lines().filter(|y| !a.lines().any(|x| x == *y)) {
                    diff += &format!("  /{path} clean:           {y}\n");
                }
            }
            panic!(
                "{} kill {kills} after {:.3}s (in {phase}): the rerun's tree differs from a clean apply's\n\
                 state {:?} vs {:?}\nonly after the crash: {added:#?}\nonly in the clean tree: {missing:#?}\n{diff}",
                case.name,
                delay.as_secs_f64(),
                got.1,
                clean.1
            );
        }
    }
    eprintln!(
        "{}: {kills} kills ({late} drawn after the apply had ended, redrawn), every rerun equal to the clean apply; landed in: {tally:?}",
        case.name
    );
    tally
}

/// When the staging ended in an apply whose output is `log` (the sum of its `fetch`, `verify`
/// and `stage` timings), if it says.
fn staging_end(log: &str) -> Option<Duration> {
    let line = log.lines().find(|l| l.contains("timings:"))?;
    let mut total = 0.0;
    for part in line.split("timings:").nth(1)?.split(',') {
        let mut words = part.split_whitespace();
        let (Some(name), Some(secs)) = (words.next(), words.next()) else {
            continue;
        };
        if ["fetch", "verify", "stage"].contains(&name) {
            total += secs.trim_end_matches('s').parse::<f64>().ok()?;
        }
    }
    Some(Duration::from_secs_f64(total))
}

#[test]
fn kill_9_at_random_points_then_a_rerun_gives_the_clean_tree() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fresh = || {
        let dir = mini_root()?;
        prepare_mini(dir.path());
        let p = dir.path().to_path_buf();
        Some((dir, p))
    };
    let Some(first) = fresh() else { return };
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("kill9-3.kiln");
    mini_spec().write(&key, &bundle);
    let case = Case {
        name: "synthetic root",
        bundle: &bundle,
        trust: trust.path(),
        fresh: &|| fresh().unwrap(),
    };
    let tally = kill_points(
        &case,
        first,
        points("KILN_KILL9_POINTS", MINI_POINTS),
        &mut Rng(0x6b69_6c6e_2d39_0001),
    );
    // The files phase changes the most; a spread that never reached it would test little.
    assert!(
        tally.contains_key("files"),
        "no kill landed in files: {tally:?}"
    );
}

#[test]
fn kill_9_on_the_debian_base_with_accounts_units_and_commands() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The clean apply gets a full copy of the base; the kill points a quick one.
    let Some(first) = base_root() else { return };
    prepare_mini(first.path());
    let first_path = first.path().to_path_buf();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("kill9-4.kiln");
    let mut spec = base_spec();
    assert!(
        spec.m.entries.iter().all(|e| !e.path.starts_with("/usr/")),
        "quick_base_copy shares /usr's files with the cached base: the bundle must not write there"
    );
    spec.write(&key, &bundle);
    let case = Case {
        name: "debian base",
        bundle: &bundle,
        trust: trust.path(),
        fresh: &|| {
            let (dir, p) = quick_base_copy();
            prepare_mini(&p);
            (dir, p)
        },
    };
    kill_points(
        &case,
        (first, first_path),
        points("KILN_KILL9_BASE_POINTS", BASE_POINTS),
        &mut Rng(0x6b69_6c6e_2d39_0002),
    );
}

/// A copy of the base in a fraction of the time: /usr (two thirds of it, and nothing the
/// bundle, the shadow tools or systemctl write) as hard links, the rest copied. Files are
/// only ever replaced by rename there, never written in place, so the cached base is safe;
/// the clean apply, on a full copy, is what every rerun's tree is compared with.
fn quick_base_copy() -> (tempfile::TempDir, PathBuf) {
    let base = PathBuf::from(std::env::var_os("KILN_TEST_BASE").expect("KILN_TEST_BASE"));
    let dir = tempfile::Builder::new()
        .prefix("kiln-kill9-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut others = Vec::new();
    for e in std::fs::read_dir(&base).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "usr" {
            others.push(e.path());
        }
    }
    let st = Command::new("cp")
        .arg("-a")
        .args(&others)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "cp -a of the base failed");
    let st = Command::new("cp")
        .arg("-al")
        .arg(base.join("usr"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "cp -al of the base's /usr failed");
    let st = Command::new("chmod")
        .arg("--reference")
        .arg(&base)
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let p = dir.path().to_path_buf();
    (dir, p)
}
