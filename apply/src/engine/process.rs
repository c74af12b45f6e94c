//! Running external programs (shadow tools, dpkg, systemctl, the bundle's commands) with a
//! timeout, a fixed environment, and their combined stdout+stderr kept, bounded to the last
//! 64 KiB, so a chatty or hung program can neither fill memory nor block the apply. A program
//! run in a root other than `/` is contained ([`super::contain`]): it cannot reach the host,
//! and nothing it starts outlives it. One run in `/` is tracked ([`super::track`]): what it
//! leaves running is killed when it ends.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How much of a program's output is kept (the end of it).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// The PATH programs run with, whatever the caller's environment.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Time a program gets between SIGTERM and SIGKILL when its timeout expires.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// How a program ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The last [`OUTPUT_LIMIT`] bytes of stdout and stderr, interleaved, lossily UTF-8.
    pub output: String,
    /// True when earlier output was dropped to keep the limit.
    pub truncated: bool,
    pub duration: Duration,
    /// Processes it left running when it ended, which were killed (contained and tracked runs).
    pub left_running: u32,
    /// A tracked run that had only its process group to go by: why no cgroup was possible.
    pub untracked: Option<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// "exit status 3", "killed by signal 9", "timed out after 30s".
    pub fn describe(&self, timeout: Duration) -> String {
        if self.timed_out {
            format!("timed out after {}s", timeout.as_secs())
        } else {
            match self.code {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_string(),
            }
        }
    }

    /// The last line of output, for one-line error messages.
    pub fn last_line(&self) -> &str {
        self.output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
    }
}

/// A program to run: argv, optionally contained in a root, with extra environment.
#[derive(Debug, Clone)]
pub struct Program {
    pub argv: Vec<String>,
    /// The root it runs contained in (its `/`); `None`: the host's `/`, uncontained.
    pub root: Option<std::path::PathBuf>,
    /// In `/`: what it leaves running is killed when it ends ([`super::track`]).
    pub track: bool,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// What it reads on stdin (else /dev/null).
    pub stdin: Option<Arc<std::os::fd::OwnedFd>>,
}

impl Program {
    pub fn new<S: AsRef<str>>(argv: &[S], timeout: Duration) -> Program {
        Program {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            root: None,
            track: false,
            env: Vec::new(),
            timeout,
            stdin: None,
        }
    }

    /// Gives it this open file as its stdin.
    pub fn stdin(mut self, fd: std::os::fd::OwnedFd) -> Program {
        self.stdin = Some(Arc::new(fd));
        self
    }

    /// Runs it inside `root`, contained, unless `root` is `/` (then tracked).
    pub fn in_root(mut self, root: &Path) -> Program {
        if root != Path::new("/") {
            self.root = Some(root.to_path_buf());
        } else {
            self.track = true;
        }
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Program {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The command line as a person would type it, for logs.
    pub fn display(&self) -> String {
        let mut words = Vec::new();
        if let Some(root) = &self.root {
            words.push(format!("(contained in {})", root.display()));
        }
        words.extend(self.argv.iter().map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        }));
        words.join(" ")
    }

    /// Runs the program to completion or timeout. Errors only when it cannot be started.
    pub fn run(&self) -> io::Result<Finished> {
        let (first, rest) = self
            .argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command line"))?;
        let mut cmd = Command::new(first);
        cmd.args(rest);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // One pipe for both streams keeps their interleaving; O_CLOEXEC keeps it out of the child
        // except as its stdout and stderr.
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let reader = std::fs::File::from(reader);
        let writer = std::fs::File::from(writer);
        let stdin = match &self.stdin {
            Some(fd) => Stdio::from(fd.try_clone()?),
            None => Stdio::null(),
        };
        cmd.stdin(stdin)
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .current_dir("/")
            // Its own process group, so a timeout kills what it spawned too.
            .process_group(0);
        // If kiln-firstboot dies (kill -9, power loss aside), the program dies with it rather
        // than running on beside the rerun that recovers from the journal.
        let parent = nix::unistd::getpid().as_raw();
        // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Killed between fork and prctl: the signal was missed, so do not run at all.
                if nix::libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut contained = match &self.root {
            Some(root) => {
                let c = super::contain::Contained::new(root)?;
                // SAFETY: the hook makes system calls only, on data prepared here.
                unsafe {
                    cmd.pre_exec(c.hook());
                }
                Some(c)
            }
            None => None,
        };
        let tracked = (self.track && self.root.is_none()).then(super::track::Tracked::new);
        if let Some(t) = &tracked {
            // SAFETY: the hook makes one write(2) on a descriptor opened here.
            unsafe {
                cmd.pre_exec(t.hook());
            }
        }
        let start = Instant::now();
        let spawned = cmd.spawn();
        if let Some(c) = &mut contained {
            c.spawned();
            if let Err(e) = &spawned {
                // Which step of the setup failed, when one did (else: exec's own error).
                c.finish()?;
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
        }
        let mut child = spawned?;
        drop(cmd); // closes our copies of the pipe's write end
        let buf = Arc::new(Mutex::new(Tail::default()));
        let reader_thread = {
            let buf = Arc::clone(&buf);
            thread::spawn(move || drain(reader, &buf))
        };
        let (status, timed_out) = wait_with_timeout(&mut child, self.timeout)?;
        let mut untracked = None;
        let mut left_running = 0;
        if let Some(t) = tracked {
            untracked = t.fallback.clone();
            left_running = t.end(Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX)));
        }
        // A daemonized grandchild may keep the pipe open: wait a little, then take what we have.
        let until = Instant::now() + Duration::from_secs(2);
        while !reader_thread.is_finished() && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        if reader_thread.is_finished() {
            let _ = reader_thread.join();
        }
        let tail = buf.lock().map(|t| t.clone()).unwrap_or_default();
        let (code, left_running) = match &mut contained {
            // The program's own status, from the namespace's init (the child waited for here
            // is the process that set the namespaces up).
            Some(c) => {
                let report = c.finish()?;
                if report.reported || timed_out {
                    (report.code, report.left_running)
                } else {
                    (None, 0)
                }
            }
            None => (status.code(), left_running),
        };
        Ok(Finished {
            code,
            left_running,
            untracked,
            timed_out,
            output: String::from_utf8_lossy(&tail.bytes.iter().copied().collect::<Vec<u8>>())
                .into_owned(),
            truncated: tail.dropped,
            duration: start.elapsed(),
        })
    }
}

#[derive(Default, Clone)]
struct Tail {
    bytes: VecDeque<u8>,
    dropped: bool,
}

fn drain(mut reader: std::fs::File, buf: &Mutex<Tail>) {
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                if let Ok(mut t) = buf.lock() {
                    t.bytes.extend(&chunk[..n]);
                    let excess = t.bytes.len().saturating_sub(OUTPUT_LIMIT);
                    if excess > 0 {
                        t.bytes.drain(..excess);
                        t.dropped = true;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<(ExitStatus, bool)> {
    let now = Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(86_400));
    let mut sleep = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(sleep.min(deadline.saturating_duration_since(Instant::now())));
        sleep = (sleep * 2).min(Duration::from_millis(100));
    }
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = killpg(pgid, Signal::SIGTERM);
    let grace = Instant::now() + KILL_GRACE;
    while Instant::now() < grace {
        if let Some(status) = child.try_wait()? {
            let _ = killpg(pgid, Signal::SIGKILL);
            return Ok((status, true));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = child.wait().unwrap_or_else(|_| ExitStatus::from_raw(9));
    Ok((status, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_kept_and_bounded() {
        let p = Program::new(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(10),
        );
        let f = p.run().unwrap();
        assert_eq!(f.code, Some(3));
        assert!(!f.success());
        assert_eq!(f.output, "out\nerr\n");
        let p = Program::new(
            &["sh", "-c", "yes 0123456789 | head -c 200000; echo END"],
            Duration::from_secs(10),
        );
        let f = p.run().unwrap();
        assert!(f.success());
        assert!(f.truncated);
        assert_eq!(f.output.len(), OUTPUT_LIMIT);
        assert!(f.output.ends_with("END\n"));
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let p = Program::new(
            &["sh", "-c", "sleep 30 & sleep 30; echo never"],
            Duration::from_millis(300),
        );
        let start = Instant::now();
        let f = p.run().unwrap();
        assert!(f.timed_out);
        assert!(!f.success());
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(f.describe(Duration::from_secs(1)), "timed out after 1s");
    }

    /// Processes whose command line contains `marker`, killed; returns how many there were.
    fn kill_marked(marker: &str) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn what_a_tracked_run_in_slash_leaves_running_is_killed_and_counted() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("note: not root: skipping (cgroups)");
            return;
        }
        let marker = format!("kiln-track-test-{}", std::process::id());
        let script = format!(
            "setsid sh -c 'sleep 300; : {marker}' </dev/null >/dev/null 2>&1 & \
             sleep 301 </dev/null >/dev/null 2>&1 & echo started"
        );
        let p =
            Program::new(&["sh", "-c", &script], Duration::from_secs(10)).in_root(Path::new("/"));
        let f = p.run().unwrap();
        if let Some(why) = &f.untracked {
            kill_marked(&marker);
            eprintln!("note: no cgroup v2 to track with here ({why}): skipping");
            return;
        }
        assert!(f.success());
        assert_eq!(f.output, "started\n");
        // The setsid shell, and the sleep of each (`sleep 300` may not have started yet).
        assert!(f.left_running >= 2, "{f:?}");
        thread::sleep(Duration::from_millis(100));
        assert_eq!(kill_marked(&marker), 0, "left running after the run");
        let clean = Program::new(&["true"], Duration::from_secs(10))
            .in_root(Path::new("/"))
            .run()
            .unwrap();
        assert_eq!(clean.left_running, 0);
    }

    #[test]
    fn missing_program_is_an_error() {
        assert!(
            Program::new(&["/nonexistent/kiln-test"], Duration::from_secs(1))
                .run()
                .is_err()
        );
        assert!(Program::new::<&str>(&[], Duration::from_secs(1))
            .run()
            .is_err());
    }
}
