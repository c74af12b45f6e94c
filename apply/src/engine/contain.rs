//! Containment of what the engine runs inside a target root other than `/` (the bundle's
//! commands, dpkg and its maintainer scripts, mkhomedir_helper): their own mount, PID, network,
//! IPC, UTS and cgroup namespaces; the target as `/` by pivot_root with the old root unmounted
//! (a second chroot leads nowhere); a private /proc with /proc/sys and the like read-only; a
//! minimal /dev on a tmpfs; /sys hidden; no network; a reduced capability set (no
//! CAP_SYS_ADMIN, CAP_MKNOD, CAP_SYS_MODULE, CAP_DAC_READ_SEARCH, ...) and no_new_privs.
//!
//! Three processes: A (the child the caller waits for, in the caller's PID namespace) unshares
//! and forks B, the new PID namespace's init, which sets up the mounts, forks C (the program)
//! and reaps; when C ends, B kills whatever C left behind, counts it, reports on a pipe and
//! exits, and the kernel ends the namespace. All of it runs between fork and exec: only system
//! calls on data prepared beforehand (no allocation, no locks).

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::sys::stat::{lstat, makedev, mknod, umask, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, fork, mkdir, pivot_root, symlinkat, ForkResult, Pid};

/// The capabilities a contained program keeps: those Docker grants a container by default,
/// less CAP_MKNOD (no device cgroup here limits which devices a node could open). Enough for
/// dpkg and maintainer scripts (chown, setuid to a system user, setcap on a binary).
const KEEP_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL (only its own PID namespace is visible)
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW (its own network namespace)
    18, // CAP_SYS_CHROOT (a chroot inside leads nowhere once the old root is gone)
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// /proc entries that would reach the kernel as a whole: mounted read-only over themselves.
const PROC_READ_ONLY: &[&CStr] = &[
    c"/proc/sys",
    c"/proc/sysrq-trigger",
    c"/proc/irq",
    c"/proc/bus",
    c"/proc/fs",
];

/// The device nodes of /dev: name, major, minor (the kernel's fixed numbers).
const DEVICES: &[(&CStr, u64, u64)] = &[
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
    (c"/dev/tty", 5, 0),
];

const LINKS: &[(&CStr, &CStr)] = &[
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
];

/// Where the setup stopped, as reported on the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Stage {
    Unshare = 1,
    Fork,
    Private,
    Bind,
    PivotRoot,
    Dev,
    Proc,
    Sys,
    Capabilities,
    NoNewPrivs,
}

impl Stage {
    const ALL: [Stage; 10] = [
        Stage::Unshare,
        Stage::Fork,
        Stage::Private,
        Stage::Bind,
        Stage::PivotRoot,
        Stage::Dev,
        Stage::Proc,
        Stage::Sys,
        Stage::Capabilities,
        Stage::NoNewPrivs,
    ];

    fn what(self) -> &'static str {
        match self {
            Stage::Unshare => "new namespaces (unshare)",
            Stage::Fork => "the namespace's init (fork)",
            Stage::Private => "making mounts private",
            Stage::Bind => "binding the root",
            Stage::PivotRoot => "pivot_root into the root",
            Stage::Dev => "a minimal /dev",
            Stage::Proc => "a private /proc",
            Stage::Sys => "hiding /sys",
            Stage::Capabilities => "dropping capabilities",
            Stage::NoNewPrivs => "no_new_privs",
        }
    }
}

/// Record tags on the report pipe (four i32 each).
const REPORT_FAILED: i32 = 1;
const REPORT_ENDED: i32 = 2;

/// How a contained run ended, from its init's report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// The program's exit code; `None` if a signal ended it or no report came (killed).
    pub code: Option<i32>,
    /// Whether the init reported at all (not when the whole namespace was killed).
    pub reported: bool,
    /// Processes the program left running, killed when it ended.
    pub left_running: u32,
}

/// One contained run: the root to enter and the pipe its init reports on.
pub struct Contained {
    root: CString,
    report_r: Option<std::fs::File>,
    report_w: Option<OwnedFd>,
}

impl Contained {
    pub fn new(root: &Path) -> io::Result<Contained> {
        let root = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("root path has a NUL byte"))?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Contained {
            root,
            report_r: Some(std::fs::File::from(r)),
            report_w: Some(w),
        })
    }

    /// The `pre_exec` hook that does it all (run after the caller's own hooks).
    pub fn hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let root = self.root.clone();
        let report = self.report_w.as_ref().map_or(-1, |w| w.as_raw_fd());
        move || enter(&root, report)
    }

    /// After spawning: the caller's copy of the pipe's write end goes, so reading ends when
    /// the contained processes are gone.
    pub fn spawned(&mut self) {
        self.report_w = None;
    }

    /// Reads the report (call once the child was waited for). `Err` names the setup step
    /// that failed, when one did.
    pub fn finish(&mut self) -> io::Result<Report> {
        self.report_w = None;
        let mut bytes = Vec::new();
        if let Some(mut r) = self.report_r.take() {
            r.read_to_end(&mut bytes)?;
        }
        let mut report = Report::default();
        for rec in bytes.chunks_exact(16) {
            let word = |i: usize| i32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().unwrap());
            match word(0) {
                REPORT_FAILED => {
                    let what = Stage::ALL
                        .iter()
                        .find(|s| **s as i32 == word(1))
                        .map_or("setup", |s| s.what());
                    return Err(io::Error::other(format!(
                        "containing it: {what}: {}",
                        io::Error::from_raw_os_error(word(2))
                    )));
                }
                REPORT_ENDED => {
                    report.reported = true;
                    report.code = (word(1) == 0).then_some(word(2));
                    report.left_running = u32::try_from(word(3)).unwrap_or(0);
                }
                _ => {}
            }
        }
        Ok(report)
    }
}

fn send(fd: RawFd, rec: [i32; 4]) {
    let mut buf = [0u8; 16];
    for (i, w) in rec.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    // SAFETY: a plain write(2) of a stack buffer.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
    }
}

/// Reports the failed step on the pipe and returns the error for std to pass on.
fn fail(report: RawFd, stage: Stage, e: Errno) -> io::Error {
    send(report, [REPORT_FAILED, stage as i32, e as i32, 0]);
    io::Error::from(e)
}

/// Closes every descriptor from 3 up but `keep` (std's exec-error pipe among them: A and B
/// never exec, and the caller's spawn waits for that pipe to close).
fn close_others(keep: RawFd) {
    let ranges = [(3, keep - 1), (keep + 1, i32::MAX)];
    for (lo, hi) in ranges {
        if lo > hi || lo < 0 {
            continue;
        }
        // SAFETY: close_range(2) on descriptors this process owns and no longer uses.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi as u32, 0u32) };
        if r != 0 {
            for fd in lo..hi.min(65_536) {
                // SAFETY: as above, one at a time on kernels before 5.9.
                unsafe {
                    libc::close(fd);
                }
            }
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (std's exec-error pipe already is).
fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC (Linux 5.11) only sets a flag.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        for fd in first as i32..65_536 {
            // SAFETY: fcntl(2) on a descriptor number; EBADF for those not open.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
}

fn is_dir(path: &CStr) -> bool {
    lstat(path).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Runs in the forked child (A); returns only in C, which then execs the program.
fn enter(root: &CStr, report: RawFd) -> io::Result<()> {
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|e| fail(report, Stage::Unshare, e))?;
    // SAFETY: this process is already a single-threaded fork; only system calls follow.
    match unsafe { fork() }.map_err(|e| fail(report, Stage::Fork, e))? {
        ForkResult::Parent { child } => outer(child, report),
        ForkResult::Child => {}
    }
    // B: init of the new PID namespace. It dies with A (and so does the namespace).
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let old_umask = umask(Mode::empty());
    setup_root(root).map_err(|(stage, e)| fail(report, stage, e))?;
    // SAFETY: as above.
    match unsafe { fork() }.map_err(|e| fail(report, Stage::Fork, e))? {
        ForkResult::Parent { child } => init(child, report),
        ForkResult::Child => {}
    }
    // C: the program, once it has given up what it must not have: no descriptor but its stdio
    // crosses exec (one inherited from whoever started kiln-firstboot could lead outside).
    cloexec_from(3);
    umask(old_umask);
    drop_capabilities().map_err(|e| fail(report, Stage::Capabilities, e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail(report, Stage::NoNewPrivs, e))?;
    Ok(())
}

/// A: waits for B, then exits. The SIGTERM a timeout sends the process group is for the
/// program; A outlives it so B can still report.
fn outer(child: Pid, report: RawFd) -> ! {
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    close_others(report);
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(..)) => break 125,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break 125,
        }
    };
    // SAFETY: _exit(2) ends this fork without running the parent's exit handlers.
    unsafe { libc::_exit(code) }
}

/// B, after forking C: reaps until C ends, kills what is left, counts it, reports, exits.
fn init(program: Pid, report: RawFd) -> ! {
    close_others(report);
    let all = Pid::from_raw(-1);
    let (kind, value) = loop {
        match waitpid(all, None) {
            Ok(WaitStatus::Exited(p, c)) if p == program => break (0, c),
            Ok(WaitStatus::Signaled(p, s, _)) if p == program => break (1, s as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break (1, 0),
        }
    };
    // kill(-1) from a namespace's init reaches every other process in it.
    let _ = kill(all, Signal::SIGKILL);
    let mut left = 0;
    loop {
        match waitpid(all, None) {
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => left += 1,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    send(report, [REPORT_ENDED, kind, value, left]);
    // SAFETY: as in `outer`.
    unsafe { libc::_exit(0) }
}

/// B: the root as `/` of a private mount namespace, with /dev, /proc and /sys set up.
fn setup_root(root: &CStr) -> Result<(), (Stage, Errno)> {
    let none: Option<&CStr> = None;
    mount(
        none,
        c"/",
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )
    .map_err(|e| (Stage::Private, e))?;
    // Recursive: mounts the root has below it (a separate /boot of an image) stay in view.
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .map_err(|e| (Stage::Bind, e))?;
    // Device nodes of the root (a base may have some outside /dev; nothing contained can make
    // one) open nothing: nodev, with the flags the mount had (a bind remount sets them all).
    // SAFETY: statvfs(3) into a zeroed struct: statfs(2) and a copy of its flags (the C
    // libraries read /proc/mounts only on kernels before 2.6.36).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `root` is a valid C string.
    if unsafe { libc::statvfs(root.as_ptr(), &mut st) } != 0 {
        return Err((Stage::Bind, Errno::last()));
    }
    let had = st.f_flag as u64;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV;
    for (bit, flag) in [
        (1, MsFlags::MS_RDONLY), // ST_RDONLY
        (2, MsFlags::MS_NOSUID), // ST_NOSUID
        (8, MsFlags::MS_NOEXEC), // ST_NOEXEC
        (1024, MsFlags::MS_NOATIME),
        (2048, MsFlags::MS_NODIRATIME),
        (4096, MsFlags::MS_RELATIME),
    ] {
        if had & bit != 0 {
            flags |= flag;
        }
    }
    mount(none, root, none, flags, none).map_err(|e| (Stage::Bind, e))?;
    chdir(root).map_err(|e| (Stage::PivotRoot, e))?;
    // pivot_root(".", ".") stacks the old root on the new one; unmounting it leaves nothing of
    // the host reachable, not even by a second chroot.
    pivot_root(c".", c".").map_err(|e| (Stage::PivotRoot, e))?;
    umount2(c".", MntFlags::MNT_DETACH).map_err(|e| (Stage::PivotRoot, e))?;
    chdir(c"/").map_err(|e| (Stage::PivotRoot, e))?;
    setup_dev().map_err(|e| (Stage::Dev, e))?;
    setup_proc().map_err(|e| (Stage::Proc, e))?;
    if is_dir(c"/sys") {
        mount(
            Some(c"tmpfs"),
            c"/sys",
            Some(c"tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(c"mode=0555,size=4k"),
        )
        .map_err(|e| (Stage::Sys, e))?;
    }
    Ok(())
}

/// A tmpfs on /dev (when the root has the directory) with null, zero, full, random, urandom,
/// tty, the fd links, and empty pts and shm directories.
fn setup_dev() -> nix::Result<()> {
    if !is_dir(c"/dev") {
        return Ok(());
    }
    mount(
        Some(c"tmpfs"),
        c"/dev",
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(c"mode=0755,size=4m"),
    )?;
    for (path, major, minor) in DEVICES {
        mknod(
            *path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )?;
    }
    for (target, link) in LINKS {
        symlinkat(*target, nix::fcntl::AT_FDCWD, *link)?;
    }
    mkdir(c"/dev/pts", Mode::from_bits_truncate(0o755))?;
    mkdir(c"/dev/shm", Mode::from_bits_truncate(0o1777))?;
    Ok(())
}

/// proc of the new PID namespace on /proc (when the root has the directory), the parts that
/// act on the whole kernel read-only.
fn setup_proc() -> nix::Result<()> {
    if !is_dir(c"/proc") {
        return Ok(());
    }
    let none: Option<&CStr> = None;
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some(c"proc"), c"/proc", Some(c"proc"), locked, none)?;
    for path in PROC_READ_ONLY {
        match mount(Some(*path), *path, none, MsFlags::MS_BIND, none) {
            Err(Errno::ENOENT) => continue,
            r => r?,
        }
        mount(
            none,
            *path,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
            none,
        )?;
    }
    Ok(())
}

/// C: every capability but [`KEEP_CAPS`] out of the bounding, effective, permitted,
/// inheritable and ambient sets, so an exec as root gets no more.
fn drop_capabilities() -> nix::Result<()> {
    let mut keep: u64 = 0;
    for c in KEEP_CAPS {
        keep |= 1 << c;
    }
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(2) with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            match Errno::last() {
                Errno::EINVAL => break, // past the kernel's last capability
                e => return Err(e),
            }
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let word = |half: u32| Data {
        effective: half,
        permitted: half,
        inheritable: half,
    };
    let data = [word(keep as u32), word((keep >> 32) as u32)];
    // SAFETY: capset(2) with a v3 header and its two data words.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r != 0 {
        return Err(Errno::last());
    }
    // SAFETY: prctl(2) with integer arguments; EINVAL before Linux 4.3 (no ambient set).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    Ok(())
}
