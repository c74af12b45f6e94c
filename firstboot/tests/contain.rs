//! Issue 11: what runs in a root other than `/` (commands, dpkg's maintainer scripts) runs
//! contained. A signed bundle whose commands try to get out (the double-chroot escape, an
//! inherited descriptor of an outside directory, a device node of the root, `mount`,
//! writing /proc/sys, a TCP connection to a port the test listens on, `setsid sleep 300 &`) or
//! look around (capabilities, /sys, /dev) is applied with `--root` to a copy of the
//! debootstrapped base: the apply succeeds, nothing outside the root changes, no connection
//! arrives, no process is left, no mount either. And a file of the root hard-linked to one
//! outside: the apply replaces it, never chowns or chmods the shared inode.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::*;

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", name.to_string_lossy()));
            }
        }
    }
    found
}

/// Kills what a failing run may have left, so a failure does not leave `sleep 300` behind.
fn kill_marked(marker: &str) {
    for p in processes_with(marker) {
        if let Some(pid) = p.split(':').next().and_then(|n| n.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Mount points at or below `dir`, as this (the host's) mount namespace sees them.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(&dir))
        .collect()
}

#[test]
fn commands_under_root_cannot_reach_the_host_and_leave_nothing_running() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let outside = outside_dir();
    let o = outside.path().to_str().unwrap().to_string();
    std::fs::write(outside.path().join("host-marker"), b"host\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let marker = format!("kiln-contain-marker-{}", std::process::id());
    std::fs::write(r.join("kiln-inside-marker"), b"").unwrap();

    // A descriptor of an outside directory that whoever starts kiln-firstboot leaks to it.
    let leaked = nix::fcntl::open(
        outside.path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    let leaked_fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);

    // A device node of the root outside /dev (a copy of /dev/null will do).
    nix::sys::stat::mknod(
        &r.join("var/tmp/kiln-device"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();

    let mut s = Spec::new("web", 7);
    s.command(
        "device",
        &["sh", "-c", "echo x > /var/tmp/kiln-device && echo DEVICE-OPENED; true"],
        30,
        None,
    )
    .command(
        "fd",
        &[
            "sh",
            "-c",
            &format!("cd /proc/self/fd/{leaked_fd} && echo > escaped-by-fd && echo FD-ESCAPE; true"),
        ],
        30,
        None,
    )
    .command(
        "escape",
        &[
            "perl",
            "-e",
            &format!(
                r#"mkdir "/e"; chroot "/e" or die "chroot: $!"; chdir ".." for 1..64;
                   chroot "." or die "chroot: $!";
                   print "IN-ROOT\n" if -e "/kiln-inside-marker";
                   print "SAW-HOST\n" if -e "{o}/host-marker";
                   open(F, ">", "{o}/escaped") and print "WROTE-OUTSIDE\n";"#
            ),
        ],
        30,
        None,
    )
    .command(
        "mount",
        &[
            "sh",
            "-c",
            "mkdir -p /mnt/t; mount -t tmpfs none /mnt/t && echo MOUNTED; true",
        ],
        30,
        None,
    )
    .command(
        "sysctl",
        &[
            "sh",
            "-c",
            "[ -e /proc/sys/vm ] || mount -t proc proc /proc; \
             cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness && echo SYSCTL-WRITTEN; \
             echo 1 > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ; true",
        ],
        30,
        None,
    )
    .command(
        "network",
        &[
            "bash",
            "-c",
            &format!("echo hello > /dev/tcp/127.0.0.1/{port} && echo CONNECTED; true"),
        ],
        30,
        None,
    )
    .command(
        "look",
        &[
            "sh",
            "-c",
            "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; echo sys: $(ls -A /sys); \
             echo dev: $(ls /dev); head -c 4 /dev/urandom | wc -c; echo pid $$; echo fds: $(ls /proc/self/fd)",
        ],
        30,
        None,
    )
    .command(
        "daemon",
        &[
            "sh",
            "-c",
            &format!(
                "setsid sh -c 'sleep 300; : {marker}' </dev/null >/dev/null 2>&1 & echo started"
            ),
        ],
        30,
        None,
    );
    let bundle = work.path().join("web-7.kiln");
    s.write(&key, &bundle);

    let out = apply(r, trust.path(), &bundle, &[]);
    let left = processes_with(&marker);
    kill_marked(&marker);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let state = read_state(r);
    eprintln!("commands: {:#}", state["commands"]);
    let output = |name: &str| {
        state["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no command {name} in {state}"))["output"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // The escape ends in the root: the host's file is not seen, nothing is written outside.
    let escape = output("escape");
    assert_eq!(
        escape, "IN-ROOT\n",
        "the escape ran to its end, in the root"
    );
    assert!(!escape.contains("SAW-HOST"), "{escape}");
    assert!(!escape.contains("WROTE-OUTSIDE"), "{escape}");
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["host-marker"],
        "something was written outside the root"
    );
    assert!(!output("fd").contains("FD-ESCAPE"), "{}", output("fd"));
    assert!(
        !output("device").contains("DEVICE-OPENED"),
        "{}",
        output("device")
    );
    drop(leaked);
    assert!(!output("mount").contains("MOUNTED"), "{}", output("mount"));
    let sysctl = output("sysctl");
    assert!(!sysctl.contains("SYSCTL-WRITTEN"), "{sysctl}");
    assert!(!sysctl.contains("SYSRQ"), "{sysctl}");
    assert!(
        !output("network").contains("CONNECTED"),
        "{}",
        output("network")
    );
    assert!(
        listener.accept().is_err(),
        "a contained command connected to the host's 127.0.0.1:{port}"
    );
    // Docker's default capabilities less CAP_MKNOD, in every set; nothing in /sys; the
    // minimal /dev; the shell is the second process of its PID namespace (after its init).
    assert_eq!(
        output("look"),
        "CapEff:\t00000000a00425fb\nCapBnd:\t00000000a00425fb\nNoNewPrivs:\t1\nsys:\n\
         dev: fd full null pts random shm stderr stdin stdout tty urandom zero\n4\npid 2\nfds: 0 1 2 3\n"
    );
    assert_eq!(output("daemon"), "started\n");
    assert!(left.is_empty(), "left running after the apply: {left:?}");
    // The setsid shell, and its sleep when it had started it already.
    let warnings = state["warnings"].to_string();
    let said =
        |n: u32| format!("command daemon left {n} process(es) running when it ended: killed");
    assert!(
        warnings.contains(&said(1)) || warnings.contains(&said(2)),
        "{warnings}"
    );
    let err = stderr(&out);
    assert!(err.contains(&said(1)) || err.contains(&said(2)), "{err}");
    assert_eq!(
        mounts_under(r),
        Vec::<String>::new(),
        "mounts left on the host"
    );
}

/// A command that is not found in the root fails the apply as before (exit 21, the reason in
/// the error), and a timeout still ends a contained command and all it started.
#[test]
fn a_contained_command_that_cannot_run_or_times_out_fails_the_apply() {
    let Some(root) = base_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    let marker = format!("kiln-contain-timeout-{}", std::process::id());
    let mut s = Spec::new("web", 7);
    s.command("missing", &["/usr/bin/kiln-no-such-program"], 10, None);
    let bundle = work.path().join("missing.kiln");
    s.write(&key, &bundle);
    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(kiln_signing::exit::APPLY));
    let err = stderr(&out);
    assert!(
        err.contains("cannot run /usr/bin/kiln-no-such-program: No such file or directory"),
        "{err}"
    );

    let mut s = Spec::new("web", 8);
    s.command(
        "slow",
        &[
            "sh",
            "-c",
            &format!("trap '' TERM; setsid sh -c 'sleep 300; : {marker}' & sleep 300"),
        ],
        1,
        None,
    );
    let bundle = work.path().join("slow.kiln");
    s.write(&key, &bundle);
    let out = apply(r, trust.path(), &bundle, &["--force"]);
    let left = processes_with(&marker);
    kill_marked(&marker);
    assert_eq!(out.status.code(), Some(kiln_signing::exit::APPLY));
    assert!(
        stderr(&out).contains("timed out after 1s"),
        "{}",
        stderr(&out)
    );
    assert!(left.is_empty(), "left running after the apply: {left:?}");
    assert_eq!(
        mounts_under(r),
        Vec::<String>::new(),
        "mounts left on the host"
    );
}

/// A file of the root that is a hard link to a file outside it, with the bundle's bytes but
/// another owner and mode: the apply gives the root's path a new inode with the bundle's owner
/// and mode; the outside file keeps its own.
#[test]
fn a_hard_linked_file_is_replaced_not_chowned_through_the_link() {
    let Some(root) = mini_root() else { return };
    let r = root.path();
    let key = release_key();
    let trust = trust_dir(&[&key], &[]);
    let work = tempfile::tempdir().unwrap();
    // Same filesystem as the root (a hard link cannot cross one).
    let outside = tempfile::Builder::new()
        .prefix("kiln-outside-")
        .tempdir_in(r.parent().unwrap())
        .unwrap();
    let secret = outside.path().join("shadow");
    std::fs::write(&secret, b"same bytes\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::hard_link(&secret, r.join("etc/linked")).unwrap();
    std::fs::hard_link(&secret, r.join("etc/linked-other")).unwrap();

    let mut s = Spec::new("web", 7);
    s.file("/etc/linked", b"same bytes\n", "0644", "daemon", "daemon")
        .file(
            "/etc/linked-other",
            b"other bytes\n",
            "0644",
            "root",
            "root",
        );
    let bundle = work.path().join("web-7.kiln");
    s.write(&key, &bundle);
    let out = apply(r, trust.path(), &bundle, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(plan.contains("replace file /etc/linked\n"), "{plan}");
    let out = apply(r, trust.path(), &bundle, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let outside_md = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        outside_md.mode() & 0o7777,
        0o600,
        "mode changed through the link"
    );
    assert_eq!(
        (outside_md.uid(), outside_md.gid()),
        (0, 0),
        "owner changed through the link"
    );
    assert_eq!(std::fs::read(&secret).unwrap(), b"same bytes\n");
    let md = std::fs::metadata(r.join("etc/linked")).unwrap();
    assert_ne!(md.ino(), outside_md.ino(), "still the shared inode");
    assert_eq!(md.nlink(), 1);
    assert_eq!(md.mode() & 0o7777, 0o644);
    assert_eq!((md.uid(), md.gid()), (1, 1));
    assert_eq!(
        std::fs::read(r.join("etc/linked")).unwrap(),
        b"same bytes\n"
    );
    assert_eq!(
        std::fs::read(r.join("etc/linked-other")).unwrap(),
        b"other bytes\n"
    );
    assert_eq!(
        outside_md.nlink(),
        1,
        "both root paths got inodes of their own"
    );
}
