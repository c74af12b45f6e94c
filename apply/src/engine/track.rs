//! On `/` (a real first boot) the bundle's commands and dpkg run as the system's own programs,
//! uncontained, but what they start is tracked: each runs in a cgroup v2 of its own below
//! kiln-firstboot's, and whatever is still in it when the program ends is counted and killed
//! (a daemon must be a systemd unit, started by systemd, not left behind by a command). Without
//! a writable cgroup v2 hierarchy the program's process group stands in, which a `setsid`
//! escapes; the log says which is in use.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::libc;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One tracked run: its cgroup when one could be made (else the process group only).
pub struct Tracked {
    cgroup: Option<PathBuf>,
    procs: Option<OwnedFd>,
    /// Why there is no cgroup (for the log).
    pub fallback: Option<String>,
}

/// The cgroup v2 directory this process is in, from /proc/self/mountinfo and /proc/self/cgroup.
fn own_cgroup() -> io::Result<PathBuf> {
    let mut cgroup = String::new();
    std::fs::File::open("/proc/self/cgroup")?.read_to_string(&mut cgroup)?;
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::other("no cgroup v2 line in /proc/self/cgroup"))?
        .to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let (left, right) = match line.split_once(" - ") {
            Some(p) => p,
            None => continue,
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(mroot), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let Some(rel) = Path::new(&path).strip_prefix(mroot).ok() else {
            continue;
        };
        return Ok(Path::new(point).join(rel));
    }
    Err(io::Error::other("no cgroup v2 hierarchy mounted"))
}

impl Tracked {
    /// A new cgroup below this process's own; on any failure, a `Tracked` with `fallback` set.
    pub fn new() -> Tracked {
        let made = (|| -> io::Result<(PathBuf, OwnedFd)> {
            let parent = own_cgroup()?;
            let dir = parent.join(format!(
                "kiln-firstboot-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
            match open(
                &dir.join("cgroup.procs"),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => Ok((dir, fd)),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    Err(e.into())
                }
            }
        })();
        match made {
            Ok((dir, fd)) => Tracked {
                cgroup: Some(dir),
                procs: Some(fd),
                fallback: None,
            },
            Err(e) => Tracked {
                cgroup: None,
                procs: None,
                fallback: Some(e.to_string()),
            },
        }
    }

    /// The `pre_exec` hook: the child moves itself into the cgroup before it execs. Should
    /// the move fail, the program still runs; its process group is looked at in any case.
    pub fn hook(&self) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
        let fd = self.procs.as_ref().map_or(-1, |f| f.as_raw_fd());
        move || {
            if fd >= 0 {
                // SAFETY: write(2) of a static buffer; "0" is the writing process itself.
                unsafe {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                }
            }
            Ok(())
        }
    }

    /// After the program ended (and was reaped): kills what is left of it and says how many
    /// processes that was (only its process group left: at least 1, the count unknown).
    pub fn end(mut self, pgid: Pid) -> u32 {
        self.procs = None;
        let dir = self.cgroup.take();
        let procs = dir.as_ref().map(|d| d.join("cgroup.procs"));
        let list = || -> Vec<i32> {
            procs
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        };
        // Counted before anything is killed: a killed member may be gone (reaped by init)
        // before the cgroup is read.
        let left = list();
        // The process group outlives its leader while any member lives.
        let group_left = killpg(pgid, None).is_ok();
        if group_left {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let count = u32::try_from(left.len())
            .unwrap_or(u32::MAX)
            .max(u32::from(group_left));
        let Some(dir) = dir else {
            return count;
        };
        if !left.is_empty() || !list().is_empty() {
            // cgroup.kill (Linux 5.14) kills every member at once, forks racing included;
            // before it, kill them one by one until none is left.
            if std::fs::write(dir.join("cgroup.kill"), b"1").is_err() {
                for _ in 0..50 {
                    let now = list();
                    if now.is_empty() {
                        break;
                    }
                    for pid in now {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // The cgroup can go once its members are gone (reaped by their parents or init).
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&dir).is_err() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        count
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(dir) = self.cgroup.take() {
            self.procs = None;
            let _ = std::fs::remove_dir(dir);
        }
    }
}
