//! Groups and users, with the target's own shadow tools (`groupadd`, `useradd`, `usermod`, run
//! contained in the target when it is not `/`), and `authorized_keys`. The root's `/etc/passwd`
//! and `/etc/group` decide what exists: an existing account with the same spec is left alone,
//! so a rerun after a crash is a no-op.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use kiln_signing::{Group, User};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::passwd::{Accounts, PasswdEntry, DB_LIMIT};
use super::process::Program;
use super::{ApplyError, Ctx};
use crate::fsroot::{Kind, Meta, Root};

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// A shadow tool invocation on the root: the root's own tool, contained in it unless the root
/// is `/`. Not the host's with `--root`: that one chroots into the root and may run its code
/// there (NSS modules named by its nsswitch.conf, nscd, sss_cache) uncontained.
fn shadow(root: &Path, tool: &str, args: Vec<String>) -> Program {
    let mut argv = vec![tool.to_string()];
    argv.extend(args);
    Program::new(&argv, TOOL_TIMEOUT).in_root(root)
}

/// Attempts of a shadow tool that found the account files locked.
const LOCK_ATTEMPTS: u32 = 5;

/// Lock files the shadow tools create next to the account files.
const SHADOW_LOCKS: &[&str] = &[
    "/etc/passwd.lock",
    "/etc/shadow.lock",
    "/etc/group.lock",
    "/etc/gshadow.lock",
    "/etc/subuid.lock",
    "/etc/subgid.lock",
];

fn run_tool(ctx: &Ctx, step: &'static str, what: &str, program: Program) -> Result<(), ApplyError> {
    ctx.log.info(&format!("  {}", program.display()));
    let mut attempt = 1;
    loop {
        let done = program.run().map_err(|e| {
            ApplyError::step(step, what, format!("running {}: {e}", program.argv[0]))
        })?;
        if done.success() {
            return Ok(());
        }
        // Locked: a tool killed with us in a crash may still be dying (not yet reaped), or
        // left its lock file behind. Clear locks whose owner is gone, then try again. (The
        // exit status for it differs between tools: groupadd 10, usermod 1.)
        if done.output.contains("cannot lock") && attempt < LOCK_ATTEMPTS {
            recover_locks(ctx, step)?;
            std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
            attempt += 1;
            continue;
        }
        return Err(ApplyError::step(
            step,
            what,
            format!(
                "{} failed ({}): {}",
                program.argv[0],
                done.describe(program.timeout),
                done.last_line()
            ),
        ));
    }
}

/// Removes shadow lock files whose owner is gone: the PID they name is not running (or is a
/// zombie), or the file is older than this boot (a power loss; its PID may have been reused).
/// The tools run by the engine die with it, so after a crash their locks are stale.
pub fn clear_stale_locks(ctx: &Ctx) -> usize {
    let boot = boot_time();
    let mut removed = 0;
    for path in SHADOW_LOCKS {
        let Ok(Some(parent)) = ctx.root.parent(path, false) else {
            continue;
        };
        let Ok(Some(meta)) = parent.lstat() else {
            continue;
        };
        let pid = ctx
            .root
            .read_text(path, 64)
            .ok()
            .flatten()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let before_boot = boot.is_some_and(|b| meta.mtime < b);
        let owner_alive = pid.is_some_and(process_alive);
        if meta.kind == Kind::File && (before_boot || !owner_alive) {
            ctx.warn(&format!(
                "removing stale lock {path} (pid {}{})",
                pid.map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                if before_boot {
                    ", from before this boot"
                } else {
                    ", not running"
                }
            ));
            if parent.remove(Kind::File).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// A shadow tool killed while it held its locks (a crash of ours takes it down) may have
/// written some account files and not others: after removing its stale locks, `pwconv` and
/// `grpconv` add the shadow/gshadow entries it did not get to (they keep existing ones).
fn recover_locks(ctx: &Ctx, step: &'static str) -> Result<(), ApplyError> {
    if clear_stale_locks(ctx) == 0 {
        return Ok(());
    }
    for tool in ["pwconv", "grpconv"] {
        let program = shadow(ctx.root.path(), tool, Vec::new());
        ctx.log.info(&format!("  {}", program.display()));
        let done = program
            .run()
            .map_err(|e| ApplyError::step(step, tool, format!("running {tool}: {e}")))?;
        if !done.success() {
            return Err(ApplyError::step(
                step,
                tool,
                format!(
                    "failed ({}): {}",
                    done.describe(program.timeout),
                    done.last_line()
                ),
            ));
        }
    }
    Ok(())
}

/// The account files the shadow tools write, each with its backup (`passwd-`, ...).
const ACCOUNT_FILES: &[&str] = &["passwd", "shadow", "group", "gshadow", "subuid", "subgid"];

/// Marks a complete snapshot of the account files (written last).
const SNAPSHOT_DONE: &str = "complete";
/// Lists, one a line, the homes the phase's users should get that did not exist before it.
const SNAPSHOT_HOMES: &str = "new-homes";

/// Before a phase that runs shadow tools (groups, users), its starting point: the account files
/// and their backups as they are, kept in `<staging>/accounts/<phase>/` (complete once its
/// marker is written, fsynced before any tool runs). A rerun after a crash inside the phase puts
/// them back first: a tool killed half-way may have written /etc/group and not /etc/gshadow, or
/// left its lock and temporary files, and patching that up (pwconv, grpconv) gives files that
/// differ from a clean run's. Restored, the tools start over from the same state and end with
/// the same bytes, backups included. Homes the killed run made for new users are removed too
/// (a skel copy may have been cut short) and made again.
fn begin_accounts_phase(ctx: &Ctx, phase: &'static str) -> Result<(), ApplyError> {
    let dir = format!("{}/accounts/{phase}", ctx.staging);
    let err = |what: &str, e: io::Error| ApplyError::step(phase, what, e);
    if ctx
        .root
        .exists(&format!("{dir}/{SNAPSHOT_DONE}"))
        .map_err(|e| err(&dir, e))?
    {
        ctx.warn(&format!(
            "{phase}: an earlier run was interrupted in this phase: restoring the account files as they were before it"
        ));
        clear_stale_locks(ctx);
        clear_tool_leftovers(ctx).map_err(|e| err("/etc", e))?;
        for name in ACCOUNT_FILES
            .iter()
            .flat_map(|f| [f.to_string(), format!("{f}-")])
        {
            let target = format!("/etc/{name}");
            let parent = ctx
                .root
                .parent(&target, false)
                .map_err(|e| err(&target, e))?
                .ok_or_else(|| ApplyError::step(phase, &target, "/etc is missing"))?;
            match read_file(ctx.root, &format!("{dir}/{name}")).map_err(|e| err(&target, e))? {
                Some((bytes, m)) => {
                    super::entries::write_bytes(&parent, &bytes, m.mode, m.uid, m.gid)
                        .map_err(|e| err(&target, e))?;
                }
                None => {
                    if let Some(m) = parent.lstat().map_err(|e| err(&target, e))? {
                        parent.remove(m.kind).map_err(|e| err(&target, e))?;
                    }
                }
            }
        }
        if let Some(homes) = ctx
            .root
            .read_text(&format!("{dir}/{SNAPSHOT_HOMES}"), DB_LIMIT)
            .map_err(|e| err(&dir, e))?
        {
            for home in homes.lines().filter(|h| h.starts_with('/') && *h != "/") {
                ctx.root.remove_tree(home).map_err(|e| err(home, e))?;
            }
        }
        return Ok(());
    }
    // A snapshot without its marker was cut short before any tool ran: take it again.
    ctx.root.remove_tree(&dir).map_err(|e| err(&dir, e))?;
    let fd = ctx.root.mkdir_p(&dir).map_err(|e| err(&dir, e))?;
    let save = |name: &str, bytes: &[u8], m: Meta| -> io::Result<()> {
        let f = nix::fcntl::openat(
            &fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let mut f = std::fs::File::from(f);
        f.write_all(bytes)?;
        crate::fsroot::set_owner_mode(f.as_fd(), m.uid, m.gid, m.mode)?;
        f.sync_all()
    };
    for name in ACCOUNT_FILES
        .iter()
        .flat_map(|f| [f.to_string(), format!("{f}-")])
    {
        if let Some((bytes, m)) = read_file(ctx.root, &format!("/etc/{name}"))
            .map_err(|e| err(&format!("/etc/{name}"), e))?
        {
            save(&name, &bytes, m).map_err(|e| err(&format!("{dir}/{name}"), e))?;
        }
    }
    let mut homes = String::new();
    if phase == "users" {
        for u in ctx.manifest.users.iter().filter(|u| u.create_home) {
            let home = u
                .home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name));
            if !ctx.root.exists(&home).map_err(|e| err(&home, e))? {
                homes += &format!("{home}\n");
            }
        }
    }
    let root_meta = Meta {
        kind: Kind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        nlink: 1,
    };
    save(SNAPSHOT_HOMES, homes.as_bytes(), root_meta)
        .map_err(|e| err(&format!("{dir}/{SNAPSHOT_HOMES}"), e))?;
    nix::unistd::fsync(&fd).map_err(|e| err(&dir, e.into()))?;
    save(SNAPSHOT_DONE, b"", root_meta).map_err(|e| err(&dir, e))?;
    nix::unistd::fsync(&fd).map_err(|e| err(&dir, e.into()))?;
    Ok(())
}

/// A regular file of the root with its metadata; `None` if missing.
fn read_file(root: &Root, path: &str) -> io::Result<Option<(Vec<u8>, Meta)>> {
    let f = match root.open_read(path) {
        Ok(f) => f,
        Err(e) if crate::fsroot::is_missing(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let m = crate::fsroot::fmeta(f.as_fd())?;
    let mut bytes = Vec::new();
    f.take(DB_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > DB_LIMIT {
        return Err(io::Error::other(format!(
            "{path} is larger than {DB_LIMIT} bytes"
        )));
    }
    Ok(Some((bytes, m)))
}

/// What a shadow tool killed while it held the account files leaves besides its lock: the file
/// it links to the lock (`/etc/group.<pid>`, its pid gone) and a new version not yet renamed
/// into place (`/etc/group+`). Only called when no tool of ours runs (a rerun after a crash).
fn clear_tool_leftovers(ctx: &Ctx) -> io::Result<()> {
    let etc = ctx.root.open_dir("/etc")?;
    let mut dir = nix::dir::Dir::from_fd(etc)?;
    let mut stale = Vec::new();
    for ent in dir.iter() {
        let ent = ent?;
        let Ok(name) = ent.file_name().to_str() else {
            continue;
        };
        let Some((base, suffix)) = name.rsplit_once(['.', '+']) else {
            continue;
        };
        if !ACCOUNT_FILES.contains(&base) {
            continue;
        }
        let plus = name.len() == base.len() + 1 && name.ends_with('+');
        let dead_pid = name.as_bytes()[base.len()] == b'.'
            && !suffix.is_empty()
            && suffix.bytes().all(|b| b.is_ascii_digit())
            && suffix.parse().is_ok_and(|pid: u32| !process_alive(pid));
        if plus || dead_pid {
            stale.push(format!("/etc/{name}"));
        }
    }
    for path in stale {
        if let Some(parent) = ctx.root.parent(&path, false)? {
            if let Some(m) = parent.lstat()? {
                if m.kind != Kind::Dir {
                    ctx.warn(&format!(
                        "removing {path}, left by an interrupted shadow tool"
                    ));
                    parent.remove(m.kind)?;
                }
            }
        }
    }
    Ok(())
}

/// Whether a process runs (and is not a zombie), per /proc of this host.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesized command name.
        Ok(stat) => match stat.rfind(')').and_then(|i| stat.get(i + 1..)) {
            Some(rest) => !matches!(rest.split_whitespace().next(), Some("Z") | Some("X") | None),
            None => false,
        },
        Err(_) => false,
    }
}

/// This boot's start, seconds since the epoch (`btime` of /proc/stat).
fn boot_time() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
}

/// What would change for the groups of a manifest.
pub fn plan_groups(have: &Accounts, groups: &[Group]) -> Result<Vec<String>, String> {
    let mut todo = Vec::new();
    for g in groups {
        match have.group(&g.name) {
            Some(e) => {
                if let Some(gid) = g.gid {
                    if gid != e.gid {
                        return Err(format!(
                            "group {} exists with gid {}, the bundle wants {gid}",
                            g.name, e.gid
                        ));
                    }
                }
            }
            None => todo.push(format!("create group {}", g.name)),
        }
    }
    Ok(todo)
}

/// Creates the missing groups. Returns how many were created.
pub fn apply_groups(ctx: &Ctx) -> Result<usize, ApplyError> {
    begin_accounts_phase(ctx, "groups")?;
    recover_locks(ctx, "groups")?;
    let mut created = 0;
    for g in &ctx.manifest.groups {
        let have =
            Accounts::load(ctx.root).map_err(|e| ApplyError::step("groups", "/etc/group", e))?;
        if let Some(e) = have.group(&g.name) {
            if let Some(gid) = g.gid.filter(|gid| *gid != e.gid) {
                return Err(ApplyError::step(
                    "groups",
                    &g.name,
                    format!("exists with gid {}, the bundle wants {gid}", e.gid),
                ));
            }
            continue;
        }
        let mut args = Vec::new();
        if let Some(gid) = g.gid {
            args.extend(["--gid".to_string(), gid.to_string()]);
        }
        if g.system {
            args.push("--system".to_string());
        }
        args.push(g.name.clone());
        run_tool(
            ctx,
            "groups",
            &g.name,
            shadow(ctx.root.path(), "groupadd", args),
        )?;
        created += 1;
    }
    Ok(created)
}

/// The `usermod` arguments that bring an existing account to the spec (empty: nothing to do),
/// or an error for what must not be changed in place (the uid).
fn usermod_args(have: &Accounts, e: &PasswdEntry, u: &User) -> Result<Vec<String>, String> {
    if let Some(uid) = u.uid.filter(|uid| *uid != e.uid) {
        return Err(format!(
            "user {} exists with uid {}, the bundle wants {uid}",
            u.name, e.uid
        ));
    }
    let mut args = Vec::new();
    if let Some(group) = &u.group {
        if have.gid(group) != Some(e.gid) {
            args.extend(["--gid".to_string(), group.clone()]);
        }
    }
    if let Some(home) = u.home.as_ref().filter(|h| **h != e.home) {
        args.extend(["--home".to_string(), home.clone()]);
    }
    if let Some(shell) = u.shell.as_ref().filter(|s| **s != e.shell) {
        args.extend(["--shell".to_string(), shell.clone()]);
    }
    if let Some(comment) = u.comment.as_ref().filter(|c| **c != e.comment) {
        args.extend(["--comment".to_string(), comment.clone()]);
    }
    let member_of = have.memberships(&u.name);
    let primary = have
        .groups
        .iter()
        .find(|g| g.gid == e.gid)
        .map(|g| g.name.as_str());
    let missing: Vec<&str> = u
        .groups
        .iter()
        .map(String::as_str)
        .filter(|g| !member_of.contains(g) && Some(*g) != primary)
        .collect();
    if !missing.is_empty() {
        args.extend([
            "--append".to_string(),
            "--groups".to_string(),
            missing.join(","),
        ]);
    }
    Ok(args)
}

/// What would change for the users of a manifest.
pub fn plan_users(have: &Accounts, users: &[User]) -> Result<Vec<String>, String> {
    let mut todo = Vec::new();
    for u in users {
        match have.user(&u.name) {
            Some(e) => {
                let args = usermod_args(have, e, u)?;
                if !args.is_empty() {
                    todo.push(format!("usermod {} {}", args.join(" "), u.name));
                }
            }
            None => todo.push(format!("create user {}", u.name)),
        }
        if !u.authorized_keys.is_empty() {
            todo.push(format!(
                "authorized_keys of {} ({} keys)",
                u.name,
                u.authorized_keys.len()
            ));
        }
    }
    Ok(todo)
}

/// Creates or adjusts users, then writes their authorized_keys. Returns how many accounts
/// were created or changed.
pub fn apply_users(ctx: &Ctx) -> Result<usize, ApplyError> {
    begin_accounts_phase(ctx, "users")?;
    recover_locks(ctx, "users")?;
    let mut changed = 0;
    for u in &ctx.manifest.users {
        let have =
            Accounts::load(ctx.root).map_err(|e| ApplyError::step("users", "/etc/passwd", e))?;
        match have.user(&u.name) {
            Some(e) => {
                let args =
                    usermod_args(&have, e, u).map_err(|m| ApplyError::step("users", &u.name, m))?;
                if !args.is_empty() {
                    let mut args = args;
                    args.push(u.name.clone());
                    run_tool(
                        ctx,
                        "users",
                        &u.name,
                        shadow(ctx.root.path(), "usermod", args),
                    )?;
                    changed += 1;
                }
            }
            None => {
                run_tool(
                    ctx,
                    "users",
                    &u.name,
                    shadow(ctx.root.path(), "useradd", useradd_args(&have, u)),
                )?;
                changed += 1;
            }
        }
        if u.create_home {
            ensure_home(ctx, u)?;
        }
        if !u.authorized_keys.is_empty() {
            write_authorized_keys(ctx, u)?;
        }
    }
    Ok(changed)
}

/// A home that should exist but does not (useradd killed after writing /etc/passwd): made as
/// useradd would, with `mkhomedir_helper` (skel, the login.defs umask) when the root has it,
/// else as an empty 0700 directory of the user.
fn ensure_home(ctx: &Ctx, u: &User) -> Result<(), ApplyError> {
    let have = Accounts::load(ctx.root).map_err(|e| ApplyError::step("users", "/etc/passwd", e))?;
    let Some(e) = have.user(&u.name) else {
        return Ok(());
    };
    if !e.home.starts_with('/') || e.home == "/" {
        return Ok(());
    }
    let err = |x: io::Error| ApplyError::step("users", &format!("home of {}", u.name), x);
    if ctx.root.exists(&e.home).map_err(err)? {
        return Ok(());
    }
    ctx.warn(&format!(
        "home {} of {} is missing (interrupted useradd): making it",
        e.home, u.name
    ));
    if ctx.root.exists("/usr/sbin/mkhomedir_helper").map_err(err)? {
        let program = Program::new(&["mkhomedir_helper", u.name.as_str()], TOOL_TIMEOUT)
            .in_root(ctx.root.path());
        return run_tool(ctx, "users", &u.name, program);
    }
    super::entries::ensure_dir(ctx.root, &e.home, 0o700, e.uid, e.gid).map_err(err)?;
    Ok(())
}

fn useradd_args(have: &Accounts, u: &User) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(uid) = u.uid {
        args.extend(["--uid".to_string(), uid.to_string()]);
    }
    match &u.group {
        Some(group) => args.extend(["--gid".to_string(), group.clone()]),
        // useradd --user-group refuses when the group exists (e.g. declared in `groups`): join it.
        None if have.group(&u.name).is_some() => args.extend(["--gid".to_string(), u.name.clone()]),
        None => args.push("--user-group".to_string()),
    }
    if !u.groups.is_empty() {
        args.extend(["--groups".to_string(), u.groups.join(",")]);
    }
    if let Some(home) = &u.home {
        args.extend(["--home-dir".to_string(), home.clone()]);
    }
    if let Some(shell) = &u.shell {
        args.extend(["--shell".to_string(), shell.clone()]);
    }
    if let Some(comment) = &u.comment {
        args.extend(["--comment".to_string(), comment.clone()]);
    }
    if u.system {
        args.push("--system".to_string());
    }
    args.push(
        if u.create_home {
            "--create-home"
        } else {
            "--no-create-home"
        }
        .to_string(),
    );
    args.push(u.name.clone());
    args
}

/// `~/.ssh/authorized_keys`: 0600, in a 0700 `.ssh`, both owned by the user and its group.
fn write_authorized_keys(ctx: &Ctx, u: &User) -> Result<(), ApplyError> {
    let what = |p: &str| format!("{p} of {}", u.name);
    let have = Accounts::load(ctx.root).map_err(|e| ApplyError::step("users", "/etc/passwd", e))?;
    let e = have.user(&u.name).ok_or_else(|| {
        ApplyError::step("users", &u.name, "missing from /etc/passwd after useradd")
    })?;
    if !e.home.starts_with('/') || e.home == "/" || e.home.split('/').any(|c| c == "..") {
        return Err(ApplyError::step(
            "users",
            &u.name,
            format!("home {:?} cannot hold authorized_keys", e.home),
        ));
    }
    let ssh_dir = format!("{}/.ssh", e.home.trim_end_matches('/'));
    let keys_path = format!("{ssh_dir}/authorized_keys");
    let step_err = |p: &str, err: io::Error| ApplyError::step("users", &what(p), err);
    // The home itself: made (0700, the user's) only if useradd did not make it.
    if !ctx
        .root
        .exists(&e.home)
        .map_err(|err| step_err(&e.home, err))?
    {
        super::entries::ensure_dir(ctx.root, &e.home, 0o700, e.uid, e.gid)
            .map_err(|err| step_err(&e.home, err))?;
    }
    super::entries::ensure_dir(ctx.root, &ssh_dir, 0o700, e.uid, e.gid)
        .map_err(|err| step_err(&ssh_dir, err))?;
    let mut content = u.authorized_keys.join("\n");
    content.push('\n');
    let parent = ctx
        .root
        .parent(&keys_path, true)
        .map_err(|err| step_err(&keys_path, err))?
        .ok_or_else(|| ApplyError::step("users", &keys_path, "parent missing"))?;
    if let Some(m) = parent.lstat().map_err(|err| step_err(&keys_path, err))? {
        if m.kind == Kind::Dir {
            return Err(ApplyError::step("users", &keys_path, "is a directory"));
        }
    }
    super::entries::write_bytes(&parent, content.as_bytes(), 0o600, e.uid, e.gid)
        .map_err(|err| step_err(&keys_path, err))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::passwd::{parse_group, parse_passwd};

    #[test]
    fn liveness_of_lock_owners() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
        let boot = boot_time().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(boot > 0 && boot <= now);
    }

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            uid: None,
            group: None,
            groups: vec![],
            home: None,
            shell: None,
            comment: None,
            system: false,
            create_home: true,
            authorized_keys: vec![],
        }
    }

    #[test]
    fn same_spec_is_left_alone_and_differences_become_usermod() {
        let a = Accounts {
            users: parse_passwd("web:x:1000:1000:Web:/srv/web:/bin/sh\n"),
            groups: parse_group("web:x:1000:\nadm:x:4:web\nwww:x:33:\n"),
        };
        let mut u = user("web");
        u.group = Some("web".into());
        u.groups = vec!["adm".into(), "web".into()];
        u.shell = Some("/bin/sh".into());
        assert!(usermod_args(&a, a.user("web").unwrap(), &u)
            .unwrap()
            .is_empty());
        u.groups.push("www".into());
        u.shell = Some("/bin/bash".into());
        assert_eq!(
            usermod_args(&a, a.user("web").unwrap(), &u).unwrap(),
            ["--shell", "/bin/bash", "--append", "--groups", "www"]
        );
        u.uid = Some(7);
        assert!(usermod_args(&a, a.user("web").unwrap(), &u).is_err());
    }
}
