//! Paths of a target root, always resolved inside it. Every lookup starts from a directory fd of
//! the root and uses openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), or, on kernels without
//! openat2 (before 5.6), a component-by-component O_NOFOLLOW walk that resolves symlinks the same
//! way: an absolute symlink or `..` never climbs above the root. Final components are then handled
//! with the `*at` calls on the parent's fd and never followed, so no write leaves the root.

use nix::libc;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode, SFlag};
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};

/// Symlinks followed in one lookup before giving up, as the kernel does (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// A target root directory, held open.
#[derive(Debug)]
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
    openat2: AtomicBool,
}

/// What is at a path, as `lstat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Device, fifo or socket: never created by Kiln, never written to.
    Other,
}

/// The metadata the engine compares: type, permission bits, owner, size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Hard links to the inode: over 1, it may be shared with a file outside the root, so its
    /// content, owner and mode are never changed in place.
    pub nlink: u64,
}

/// The directory holding a path (resolved inside the root) and the path's last component.
#[derive(Debug)]
pub struct Parent {
    pub dir: OwnedFd,
    pub name: String,
}

impl Root {
    /// Opens `path` as the root every lookup is confined to.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // `//`, `/.` or a symlink to `/` is the running system too: spell it `/`, which is what
        // decides chroot, `--root` and live service handling.
        let is_slash = match (stat::fstat(&fd), stat::stat("/")) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        // The path is given to tools that run from `/` (`useradd --root`, chroot, `systemctl
        // --root`): a relative one would name another directory there, so it is made absolute
        // before anything is done with it.
        let path = if is_slash {
            PathBuf::from("/")
        } else if path.is_relative() {
            std::fs::canonicalize(path)?
        } else {
            path.to_path_buf()
        };
        Ok(Root {
            path,
            fd,
            openat2: AtomicBool::new(true),
        })
    }

    /// The root as given on the command line (for messages and for tools run with `--root`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Use the portable walk even where openat2 exists (tests of the fallback).
    pub fn disable_openat2(&self) {
        self.openat2.store(false, Ordering::Relaxed);
    }

    /// The host path of an in-root path, for messages and for external tools only; never for
    /// opening a file to write.
    pub fn display(&self, path: &str) -> PathBuf {
        self.path.join(path.trim_start_matches('/'))
    }

    /// Opens `path` (absolute inside the root) with every symlink, including the last component,
    /// resolved inside the root.
    pub fn open_at(&self, path: &str, flags: OFlag) -> io::Result<OwnedFd> {
        let flags = flags | OFlag::O_CLOEXEC;
        let rel = relative(path);
        if self.openat2.load(Ordering::Relaxed) {
            let how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            // EAGAIN: a concurrent rename somewhere on the system; the kernel asks for a retry.
            for _ in 0..16 {
                match fcntl::openat2(self.fd(), rel, how) {
                    Err(Errno::EAGAIN) => continue,
                    // ENOSYS: a kernel before 5.6. EPERM may be a seccomp filter (some container
                    // runtimes) that does not know openat2: probe once, fall back for good.
                    Err(Errno::ENOSYS) => break,
                    Err(Errno::EPERM) if !self.openat2_works() => break,
                    other => return other.map_err(io::Error::from),
                }
            }
            self.openat2.store(false, Ordering::Relaxed);
        }
        self.walk(rel, flags)
    }

    fn openat2_works(&self) -> bool {
        fcntl::openat2(
            self.fd(),
            ".",
            OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC),
        )
        .is_ok()
    }

    /// The directory at `path`, opened for reading (and fsync), symlinks resolved in the root.
    pub fn open_dir(&self, path: &str) -> io::Result<OwnedFd> {
        self.open_at(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
    }

    /// A file of the root opened for reading, symlinks resolved in the root. Refuses anything but
    /// a regular file, so a fifo or device cannot block or feed the reader.
    pub fn open_read(&self, path: &str) -> io::Result<File> {
        let fd = self.open_at(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
        let st = stat::fstat(&fd)?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            return Err(io::Error::other(format!("{path} is not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// Reads a small text file of the root (at most `limit` bytes); `Ok(None)` if it is missing.
    pub fn read_text(&self, path: &str, limit: u64) -> io::Result<Option<String>> {
        let file = match self.open_read(path) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = Vec::new();
        file.take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(io::Error::other(format!(
                "{path} is larger than {limit} bytes"
            )));
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| io::Error::other(format!("{path} is not UTF-8")))
    }

    /// Whether something exists at `path` (symlinks followed inside the root).
    pub fn exists(&self, path: &str) -> io::Result<bool> {
        match self.open_at(path, OFlag::O_PATH) {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The parent directory of `path` and its last component. With `create`, missing parent
    /// directories are made (0755, owned by the caller, i.e. root), each through the same
    /// confined lookup. `Ok(None)` when the parent is missing and `create` is false.
    pub fn parent(&self, path: &str, create: bool) -> io::Result<Option<Parent>> {
        let (dir, name) = split(path)?;
        let dir = if create {
            self.mkdir_p(dir)?
        } else {
            match self.open_dir(dir) {
                Ok(fd) => fd,
                Err(e) if is_missing(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        Ok(Some(Parent {
            dir,
            name: name.to_string(),
        }))
    }

    /// Opens the directory `path`, creating missing components (0755) inside the root.
    pub fn mkdir_p(&self, path: &str) -> io::Result<OwnedFd> {
        self.mkdir_p_counted(path).map(|(fd, _)| fd)
    }

    /// [`mkdir_p`](Self::mkdir_p), also saying how many trailing components it created (so a
    /// caller that gives up can remove exactly those).
    pub fn mkdir_p_counted(&self, path: &str) -> io::Result<(OwnedFd, usize)> {
        match self.open_dir(path) {
            Ok(fd) => return Ok((fd, 0)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let comps: Vec<&str> = components(path).collect();
        let mut cur = self.open_dir("/")?;
        let mut made = false;
        let mut count = 0;
        for (i, comp) in comps.iter().enumerate() {
            if !made {
                let prefix = comps[..=i].join("/");
                match self.open_dir(&prefix) {
                    Ok(fd) => {
                        cur = fd;
                        continue;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            match stat::mkdirat(&cur, *comp, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    return Err(io::Error::other(format!(
                        "/{} exists but does not resolve to a directory (a dangling symlink?)",
                        comps[..=i].join("/")
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            let fd = fcntl::openat(
                &cur,
                *comp,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            // mkdirat's mode went through the umask.
            stat::fchmod(&fd, Mode::from_bits_truncate(0o755))?;
            unistd::fsync(&cur)?;
            cur = fd;
            made = true;
            count += 1;
        }
        Ok((cur, count))
    }

    /// Removes the directory tree at `path` (kiln's own staging area), never following a
    /// symlink: links are removed, not their targets. Missing: nothing to do.
    pub fn remove_tree(&self, path: &str) -> io::Result<()> {
        let Some(parent) = self.parent(path, false)? else {
            return Ok(());
        };
        match parent.lstat()? {
            None => Ok(()),
            Some(m) if m.kind == Kind::Dir => {
                let fd = parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
                empty_dir(fd, 0)?;
                parent.remove(Kind::Dir)
            }
            Some(m) => parent.remove(m.kind),
        }
    }

    /// The portable equivalent of openat2(RESOLVE_IN_ROOT): walk one component at a time with
    /// O_NOFOLLOW, reading each symlink and splicing its target into the rest of the path (an
    /// absolute target restarts at the root; `..` never goes above it).
    fn walk(&self, rel: &str, flags: OFlag) -> io::Result<OwnedFd> {
        let mut todo: Vec<String> = components(rel).rev().map(str::to_string).collect();
        // Directories walked so far, each an O_PATH fd; empty means "at the root".
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        while let Some(comp) = todo.pop() {
            if comp == "." {
                continue;
            }
            if comp == ".." {
                stack.pop();
                continue;
            }
            let cur = stack.last().map(|f| f.as_fd()).unwrap_or(self.fd());
            let last = todo.iter().all(|c| c == ".");
            match stat::fstatat(cur, comp.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if kind_of(st.st_mode) == Kind::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::from(Errno::ELOOP));
                    }
                    let target = fcntl::readlinkat(cur, comp.as_str())?.into_vec();
                    let target = String::from_utf8(target).map_err(|_| {
                        io::Error::other(format!("symlink {comp} has a non-UTF-8 target"))
                    })?;
                    if target.starts_with('/') {
                        stack.clear();
                    }
                    todo.extend(components(&target).rev().map(str::to_string));
                    continue;
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            if last {
                return Ok(fcntl::openat(
                    cur,
                    comp.as_str(),
                    flags | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o600),
                )?);
            }
            let fd = fcntl::openat(
                cur,
                comp.as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            stack.push(fd);
        }
        // The path named a directory already walked (the root itself, or ending in `..`).
        let cur = stack.last().map(|f| f.as_fd()).unwrap_or(self.fd());
        Ok(fcntl::openat(cur, ".", flags, Mode::empty())?)
    }
}

impl Parent {
    /// `lstat` of the last component; `None` if it does not exist.
    pub fn lstat(&self) -> io::Result<Option<Meta>> {
        lstat_at(self.dir.as_fd(), &self.name)
    }

    /// `lstat` of another name in the same directory.
    pub fn lstat_name(&self, name: &str) -> io::Result<Option<Meta>> {
        lstat_at(self.dir.as_fd(), name)
    }

    /// The target of the symlink at the last component.
    pub fn readlink(&self) -> io::Result<OsString> {
        Ok(fcntl::readlinkat(&self.dir, self.name.as_str())?)
    }

    /// Opens the last component without following it (O_NOFOLLOW).
    pub fn open_nofollow(&self, flags: OFlag) -> io::Result<OwnedFd> {
        Ok(fcntl::openat(
            &self.dir,
            self.name.as_str(),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
            Mode::empty(),
        )?)
    }

    /// A name in the same directory for writing before an atomic rename. Fixed for a given name,
    /// so a temporary left by a crash is reused, not accumulated.
    pub fn temp_name(&self) -> String {
        if self.name.len() <= 200 {
            format!(".{}.kiln-tmp", self.name)
        } else {
            format!(
                ".kiln-tmp.{}",
                &kiln_signing::sha256_hex(self.name.as_bytes())[..16]
            )
        }
    }

    /// Removes a leftover temporary of ours, whatever it is (never a directory's content).
    pub fn remove_temp(&self, tmp: &str) -> io::Result<()> {
        match unistd::unlinkat(&self.dir, tmp, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                match unistd::unlinkat(&self.dir, tmp, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a new regular file atomically: a temporary in the same directory (created with
    /// O_EXCL|O_NOFOLLOW), owner then mode set on it, fsync, `before_rename`, rename over the last
    /// component, fsync of the directory. Returns what `write` returned.
    pub fn write_atomic<T>(
        &self,
        mode: u32,
        uid: u32,
        gid: u32,
        write: impl FnOnce(&mut File) -> io::Result<T>,
        before_rename: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<T> {
        let tmp = self.temp_name();
        self.remove_temp(&tmp)?;
        let fd = fcntl::openat(
            &self.dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut file = File::from(fd);
        let result = (|| {
            let out = write(&mut file)?;
            file.flush()?;
            set_owner_mode(file.as_fd(), uid, gid, mode)?;
            file.sync_all()?;
            before_rename()?;
            fcntl::renameat(&self.dir, tmp.as_str(), &self.dir, self.name.as_str())?;
            unistd::fsync(&self.dir)?;
            Ok(out)
        })();
        if result.is_err() {
            let _ = self.remove_temp(&tmp);
        }
        result
    }

    /// Writes a new regular file at [`temp_name`](Self::temp_name) (created with
    /// O_EXCL|O_NOFOLLOW; a leftover of a crash is removed first), owner then mode set on it,
    /// not synced: the caller makes it durable (one `syncfs` for many) before renaming it over
    /// the last component. Removed again if anything fails.
    pub fn write_temp<T>(
        &self,
        mode: u32,
        uid: u32,
        gid: u32,
        write: impl FnOnce(&mut File) -> io::Result<T>,
    ) -> io::Result<T> {
        let tmp = self.temp_name();
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode0 = Mode::from_bits_truncate(0o600);
        let fd = match fcntl::openat(&self.dir, tmp.as_str(), flags, mode0) {
            Err(Errno::EEXIST) => {
                self.remove_temp(&tmp)?;
                fcntl::openat(&self.dir, tmp.as_str(), flags, mode0)?
            }
            other => other?,
        };
        let mut file = File::from(fd);
        let result = (|| {
            let out = write(&mut file)?;
            file.flush()?;
            set_owner_mode(file.as_fd(), uid, gid, mode)?;
            Ok(out)
        })();
        if result.is_err() {
            let _ = self.remove_temp(&tmp);
        }
        result
    }

    /// Renames the temporary of [`write_temp`](Self::write_temp) over the last component.
    pub fn rename_temp(&self) -> io::Result<()> {
        let tmp = self.temp_name();
        Ok(fcntl::renameat(
            &self.dir,
            tmp.as_str(),
            &self.dir,
            self.name.as_str(),
        )?)
    }

    /// Replaces the last component by a symlink to `target`, atomically.
    pub fn symlink_atomic(&self, target: &str) -> io::Result<()> {
        let tmp = self.temp_name();
        self.remove_temp(&tmp)?;
        unistd::symlinkat(target, &self.dir, tmp.as_str())?;
        // Symlinks made by root are owned by root already; nothing else to set.
        if let Err(e) = fcntl::renameat(&self.dir, tmp.as_str(), &self.dir, self.name.as_str()) {
            let _ = self.remove_temp(&tmp);
            return Err(e.into());
        }
        unistd::fsync(&self.dir)?;
        Ok(())
    }

    /// Makes the last component a directory (mode set exactly, owner set); `Ok(false)` if it was
    /// already there.
    pub fn mkdir(&self) -> io::Result<bool> {
        match stat::mkdirat(
            &self.dir,
            self.name.as_str(),
            Mode::from_bits_truncate(0o700),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the last component: a file or symlink, or an empty directory.
    pub fn remove(&self, kind: Kind) -> io::Result<()> {
        let flag = if kind == Kind::Dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unistd::unlinkat(&self.dir, self.name.as_str(), flag)?;
        unistd::fsync(&self.dir)?;
        Ok(())
    }
}

/// Parent directories for a run of paths in manifest (sorted) order: the directory of the last
/// path is kept open, so the files of one directory resolve it once. Missing parents are made
/// (as [`Root::parent`] with `create`). Remembers one directory of each filesystem it opened, so
/// [`sync`](Self::sync) can flush every filesystem written through it with one `syncfs` each.
///
/// Only for a phase that creates no symlink or directory in the paths it resolves (the files
/// phase): a cached directory is the one a fresh lookup would find.
pub struct ParentCache<'r> {
    root: &'r Root,
    /// In-root path of `last`'s directory.
    dir: String,
    last: Option<Parent>,
    /// One open directory per filesystem (st_dev) seen.
    filesystems: Vec<(u64, OwnedFd)>,
}

impl<'r> ParentCache<'r> {
    pub fn new(root: &'r Root) -> ParentCache<'r> {
        ParentCache {
            root,
            dir: String::new(),
            last: None,
            filesystems: Vec::new(),
        }
    }

    /// The parent of `path`, its directories created if missing.
    pub fn get(&mut self, path: &str) -> io::Result<&Parent> {
        let (dir, name) = split(path)?;
        if self.last.is_none() || self.dir != dir {
            let fd = self.root.mkdir_p(dir)?;
            self.note_filesystem(fd.as_fd())?;
            self.dir = dir.to_string();
            self.last = Some(Parent {
                dir: fd,
                name: String::new(),
            });
        }
        let parent = self.last.as_mut().expect("set above");
        parent.name.clear();
        parent.name.push_str(name);
        Ok(parent)
    }

    /// Counts `fd`'s filesystem among those [`sync`](Self::sync) flushes.
    pub fn note_filesystem(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let dev = stat::fstat(fd)?.st_dev;
        if !self.filesystems.iter().any(|(d, _)| *d == dev) {
            self.filesystems.push((dev, dup_cloexec(fd)?));
        }
        Ok(())
    }

    /// `syncfs(2)` of every filesystem seen: everything written to them so far is durable.
    pub fn sync(&self) -> io::Result<()> {
        for (_, fd) in &self.filesystems {
            unistd::syncfs(fd)?;
        }
        Ok(())
    }
}

fn empty_dir(fd: OwnedFd, depth: usize) -> io::Result<()> {
    if depth > 32 {
        return Err(io::Error::other("directory tree too deep to remove"));
    }
    let dirfd = dup_cloexec(fd.as_fd())?;
    let mut dir = nix::dir::Dir::from_fd(fd)?;
    let mut names = Vec::new();
    for ent in dir.iter() {
        let name = ent?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    for name in names {
        let st = match stat::fstatat(&dirfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if kind_of(st.st_mode) == Kind::Dir {
            let child = fcntl::openat(
                &dirfd,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            empty_dir(child, depth + 1)?;
            unistd::unlinkat(&dirfd, name.as_c_str(), UnlinkatFlags::RemoveDir)?;
        } else {
            unistd::unlinkat(&dirfd, name.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(())
}

/// A duplicate that is closed on exec (`dup` would leak it, and any lock on it, into the
/// programs the engine runs).
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let raw = fcntl::fcntl(fd, fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `renameat2(RENAME_NOREPLACE)`: fails with EEXIST rather than replace what is at the new
/// name (an empty directory, for `renameat`). A raw system call: not every libc has a wrapper.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    let from = CString::new(from).map_err(io::Error::other)?;
    let to = CString::new(to).map_err(io::Error::other)?;
    // SAFETY: both names are NUL-terminated and outlive the call; the descriptors are open.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets owner, then mode (chown clears setuid/setgid, so the mode comes second), on an open fd.
pub fn set_owner_mode(fd: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    unistd::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    stat::fchmod(fd, Mode::from_bits_truncate(mode & 0o7777))?;
    Ok(())
}

/// `fstat` of an open fd as [`Meta`].
pub fn fmeta(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    Ok(meta_of(&stat::fstat(fd)?))
}

/// `lstat` of `name` in `dir`; `None` if missing.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<Meta>> {
    match stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(meta_of(&st))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn meta_of(st: &stat::FileStat) -> Meta {
    Meta {
        kind: kind_of(st.st_mode),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime: st.st_mtime,
        nlink: st.st_nlink,
    }
}

fn kind_of(mode: libc::mode_t) -> Kind {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Whether an error means "no such path" (a missing component, or one that is not a directory).
pub fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// `/a/b` -> `a/b`; `/` -> `.`.
fn relative(path: &str) -> &str {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        "."
    } else {
        rel
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// `/a/b/c` -> (`/a/b`, `c`). The last component must be a real name.
fn split(path: &str) -> io::Result<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(io::Error::other(format!("{path:?} has no last component")));
    }
    Ok((if dir.is_empty() { "/" } else { dir }, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn roots() -> Vec<(tempfile::TempDir, Root)> {
        [true, false]
            .into_iter()
            .map(|openat2| {
                let dir = tempfile::tempdir().unwrap();
                let root = Root::open(dir.path()).unwrap();
                if !openat2 {
                    root.disable_openat2();
                }
                (dir, root)
            })
            .collect()
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside() {
        let outside = tempfile::tempdir().unwrap();
        for (dir, root) in roots() {
            let d = dir.path();
            std::fs::create_dir_all(d.join("etc")).unwrap();
            symlink(outside.path(), d.join("etc/evil")).unwrap();
            symlink("../../../../..", d.join("etc/up")).unwrap();
            symlink("/", d.join("etc/pivot")).unwrap();
            // The link's target as seen inside the root must exist (mkdir -p does not create
            // through a dangling link either).
            let inside_target = d.join(outside.path().strip_prefix("/").unwrap());
            std::fs::create_dir_all(&inside_target).unwrap();
            // Through the absolute link: lands at <root>/<outside path>, created inside the root.
            let p = root.parent("/etc/evil/x", true).unwrap().unwrap();
            p.write_atomic(0o644, 0, 0, |f| f.write_all(b"hi"), || Ok(()))
                .unwrap();
            let inside = d.join(outside.path().strip_prefix("/").unwrap()).join("x");
            assert_eq!(std::fs::read(&inside).unwrap(), b"hi");
            let p = root.parent("/etc/up/y", true).unwrap().unwrap();
            p.write_atomic(0o644, 0, 0, |f| f.write_all(b"up"), || Ok(()))
                .unwrap();
            assert_eq!(std::fs::read(d.join("y")).unwrap(), b"up");
            let p = root.parent("/etc/pivot/etc/z", true).unwrap().unwrap();
            p.write_atomic(0o600, 0, 0, |f| f.write_all(b"z"), || Ok(()))
                .unwrap();
            assert_eq!(std::fs::read(d.join("etc/z")).unwrap(), b"z");
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        }
    }

    #[test]
    fn last_component_is_never_followed_for_writes() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        for (dir, root) in roots() {
            let d = dir.path();
            symlink(&target, d.join("link")).unwrap();
            let p = root.parent("/link", true).unwrap().unwrap();
            assert_eq!(p.lstat().unwrap().unwrap().kind, Kind::Symlink);
            p.write_atomic(0o644, 0, 0, |f| f.write_all(b"new"), || Ok(()))
                .unwrap();
            assert_eq!(std::fs::read(d.join("link")).unwrap(), b"new");
            assert!(!std::fs::symlink_metadata(d.join("link"))
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        }
    }

    #[test]
    fn dangling_symlink_parent_is_an_error_not_an_escape() {
        let outside = tempfile::tempdir().unwrap();
        let gone = outside.path().join("gone");
        for (dir, root) in roots() {
            symlink(&gone, dir.path().join("dangling")).unwrap();
            let err = root.parent("/dangling/file", true).unwrap_err();
            assert!(err.to_string().contains("dangling"), "{err}");
            assert!(!gone.exists());
        }
    }

    #[test]
    fn symlink_loops_fail() {
        for (dir, root) in roots() {
            symlink("b", dir.path().join("a")).unwrap();
            symlink("a", dir.path().join("b")).unwrap();
            let err = root.open_dir("/a").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        }
    }

    #[test]
    fn read_text_follows_relative_links_and_refuses_fifos() {
        for (dir, root) in roots() {
            let d = dir.path();
            std::fs::create_dir_all(d.join("usr/lib")).unwrap();
            std::fs::create_dir_all(d.join("etc")).unwrap();
            std::fs::write(d.join("usr/lib/os-release"), "ID=debian\n").unwrap();
            symlink("../usr/lib/os-release", d.join("etc/os-release")).unwrap();
            assert_eq!(
                root.read_text("/etc/os-release", 100).unwrap().unwrap(),
                "ID=debian\n"
            );
            assert_eq!(root.read_text("/etc/missing", 100).unwrap(), None);
            assert!(root.read_text("/etc/os-release", 3).is_err());
            nix::unistd::mkfifo(&d.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
            assert!(root.read_text("/fifo", 100).is_err());
        }
    }

    #[test]
    fn split_paths() {
        assert_eq!(split("/a/b").unwrap(), ("/a", "b"));
        assert_eq!(split("/a").unwrap(), ("/", "a"));
        assert!(split("/").is_err());
        assert!(split("/a/..").is_err());
    }
}
