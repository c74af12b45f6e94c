//! The manifest's paths: directories, files, symlinks, absent. Each step is idempotent (content,
//! target, mode and owner already right: nothing is written) and goes through [`Root`], so a
//! symlink in the base or made by an earlier entry never carries a write out of the root.

use nix::libc;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use kiln_signing::{Entry, EntryKind};
use nix::errno::Errno;
use nix::fcntl::{self, OFlag};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::journal::Journal;
use super::passwd::Accounts;
use super::{ApplyError, Ctx};
use crate::fsroot::{self, Kind, Meta, Parent, ParentCache, Root};
use kiln_signing::spec::parse_mode;

/// What applying one entry does to the current root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    /// Content (files) or target (symlinks) differs.
    Replace,
    /// Only mode or owner differ.
    Metadata,
    Remove,
    Unchanged,
}

/// Looks at what is at `e.path` now and says what applying `e` would do, or why it cannot
/// be applied (a conflict found before anything changes). Hashes file content only with `hash`.
pub fn plan_entry(
    root: &Root,
    e: &Entry,
    ids: Option<(u32, u32)>,
    absent: &BTreeSet<String>,
    hash: bool,
) -> Result<Action, String> {
    let parent = match root.parent(&e.path, false) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Ok(if matches!(e.kind, EntryKind::Absent) {
                Action::Unchanged
            } else {
                Action::Create
            })
        }
        Err(err) if fsroot::is_missing(&err) => {
            return Ok(if matches!(e.kind, EntryKind::Absent) {
                Action::Unchanged
            } else {
                Action::Create
            })
        }
        Err(err) => return Err(err.to_string()),
    };
    let meta = parent.lstat().map_err(|err| err.to_string())?;
    let Some(meta) = meta else {
        return Ok(if matches!(e.kind, EntryKind::Absent) {
            Action::Unchanged
        } else {
            Action::Create
        });
    };
    let wants_meta = |mode: &str| -> Result<bool, String> {
        let mode = parse_mode(mode)?;
        Ok(match ids {
            Some((uid, gid)) => meta.mode != mode || meta.uid != uid || meta.gid != gid,
            None => true,
        })
    };
    match &e.kind {
        EntryKind::Directory { mode, .. } => match meta.kind {
            Kind::Dir => Ok(if wants_meta(mode)? {
                Action::Metadata
            } else {
                Action::Unchanged
            }),
            Kind::Symlink => match root.open_dir(&e.path) {
                Ok(fd) => {
                    let m = fsroot::fmeta(fd.as_fd()).map_err(|err| err.to_string())?;
                    let mode = parse_mode(mode)?;
                    Ok(match ids {
                        Some((uid, gid)) if m.mode == mode && m.uid == uid && m.gid == gid => {
                            Action::Unchanged
                        }
                        _ => Action::Metadata,
                    })
                }
                Err(_) => Err("is a symlink that does not lead to a directory".into()),
            },
            _ => Err("exists and is not a directory (refusing to replace it)".into()),
        },
        EntryKind::File {
            mode, digest, size, ..
        } => match meta.kind {
            Kind::Dir => Err("is a directory (refusing to replace it with a file)".into()),
            Kind::File if hash => {
                // Other hard links: the apply replaces it (see `apply_files`).
                if meta.nlink == 1
                    && meta.size == *size
                    && same_content(&parent, digest).map_err(|err| err.to_string())?
                {
                    Ok(if wants_meta(mode)? {
                        Action::Metadata
                    } else {
                        Action::Unchanged
                    })
                } else {
                    Ok(Action::Replace)
                }
            }
            _ => Ok(Action::Replace),
        },
        EntryKind::Symlink { target } => match meta.kind {
            Kind::Dir => Err("is a directory (refusing to replace it with a symlink)".into()),
            Kind::Symlink
                if parent
                    .readlink()
                    .map(|t| t == target.as_str())
                    .unwrap_or(false) =>
            {
                Ok(Action::Unchanged)
            }
            _ => Ok(Action::Replace),
        },
        EntryKind::Absent => {
            if meta.kind == Kind::Dir {
                let children = list_dir(&parent).map_err(|err| err.to_string())?;
                let uncovered: Vec<String> = children
                    .into_iter()
                    .filter(|c| !absent.contains(format!("{}/{c}", e.path).as_str()))
                    .collect();
                if !uncovered.is_empty() {
                    return Err(format!(
                        "is a non-empty directory (holds {}{}); `absent` removes only files, symlinks and empty directories",
                        uncovered.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                        if uncovered.len() > 3 { ", ..." } else { "" }
                    ));
                }
            }
            Ok(Action::Remove)
        }
    }
}

/// Names in the directory at `parent`'s last component (not following it).
fn list_dir(parent: &Parent) -> io::Result<Vec<String>> {
    let fd = parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut dir = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for ent in dir.iter() {
        let ent = ent?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    Ok(out)
}

/// Whether the regular file at `parent`'s last component has this sha256.
fn same_content(parent: &Parent, digest: &str) -> io::Result<bool> {
    let fd = parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    if fsroot::fmeta(fd.as_fd())?.kind != Kind::File {
        return Ok(false);
    }
    let (have, _) = kiln_signing::sha256_reader(std::fs::File::from(fd))?;
    Ok(have == digest)
}

/// Resolves an entry's owner and group against the root's accounts.
pub fn ids(accounts: &Accounts, owner: &str, group: &str) -> Result<(u32, u32), String> {
    let uid = accounts
        .uid(owner)
        .ok_or_else(|| format!("owner {owner:?} does not exist in the root"))?;
    let gid = accounts
        .gid(group)
        .ok_or_else(|| format!("group {group:?} does not exist in the root"))?;
    Ok((uid, gid))
}

fn entry_ids(
    ctx: &Ctx,
    accounts: &Accounts,
    e: &Entry,
    owner: &str,
    group: &str,
) -> Result<(u32, u32), ApplyError> {
    let _ = ctx;
    ids(accounts, owner, group).map_err(|m| ApplyError::step("entries", &e.path, m))
}

/// Makes `path` a directory with this mode and owner (creating missing parents 0755 root).
/// An existing directory (or a symlink that leads to one, inside the root) gets the metadata.
/// Returns whether anything changed.
pub fn ensure_dir(root: &Root, path: &str, mode: u32, uid: u32, gid: u32) -> io::Result<bool> {
    ensure_dir_batched(root, path, mode, uid, gid, None)
}

/// [`ensure_dir`]; with `batch`, a new directory's filesystem is noted there, for the caller to
/// `syncfs` once when it has made them all, instead of an fsync of its parent now (a hundred
/// fsyncs would each wait for the staged blobs being written back).
pub fn ensure_dir_batched(
    root: &Root,
    path: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    batch: Option<&mut ParentCache>,
) -> io::Result<bool> {
    let parent = root
        .parent(path, true)?
        .ok_or_else(|| io::Error::other("parent missing"))?;
    let (fd, created) = match parent.lstat()? {
        None => {
            let created = parent.mkdir()?;
            if created {
                match batch {
                    Some(b) => b.note_filesystem(parent.dir.as_fd())?,
                    None => nix::unistd::fsync(&parent.dir)?,
                }
            }
            (
                parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?,
                created,
            )
        }
        Some(m) if m.kind == Kind::Dir => (
            parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_DIRECTORY)?,
            false,
        ),
        Some(m) if m.kind == Kind::Symlink => match root.open_dir(path) {
            Ok(fd) => (fd, false),
            Err(_) => {
                return Err(io::Error::other(
                    "is a symlink that does not lead to a directory",
                ))
            }
        },
        Some(_) => {
            return Err(io::Error::other(
                "exists and is not a directory (refusing to replace it)",
            ))
        }
    };
    let have = fsroot::fmeta(fd.as_fd())?;
    if created || !same_meta(&have, mode, uid, gid) {
        fsroot::set_owner_mode(fd.as_fd(), uid, gid, mode)?;
        return Ok(true);
    }
    Ok(created)
}

fn same_meta(m: &Meta, mode: u32, uid: u32, gid: u32) -> bool {
    m.mode == mode && m.uid == uid && m.gid == gid
}

/// Writes `bytes` to `parent`'s last component unless it already holds exactly that (then
/// only mode and owner are fixed, unless other hard links share its inode: then it is
/// replaced too). Returns whether the content changed.
pub fn write_bytes(
    parent: &Parent,
    bytes: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<bool> {
    let digest = kiln_signing::sha256_hex(bytes);
    if let Some(m) = parent.lstat()? {
        if m.kind == Kind::File
            && m.nlink == 1
            && m.size == bytes.len() as u64
            && same_content(parent, &digest)?
        {
            fix_meta(parent, mode, uid, gid)?;
            return Ok(false);
        }
    }
    parent.write_atomic(mode, uid, gid, |f| f.write_all(bytes), || Ok(()))?;
    Ok(true)
}

/// Sets mode and owner of the regular file at `parent`'s last component if they differ.
fn fix_meta(parent: &Parent, mode: u32, uid: u32, gid: u32) -> io::Result<bool> {
    let fd = parent.open_nofollow(OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
    let have = fsroot::fmeta(fd.as_fd())?;
    if have.kind != Kind::File {
        return Err(io::Error::other("changed type while being applied"));
    }
    if have.nlink != 1 {
        // Its callers replace such a file instead; one linked since must not be changed either.
        return Err(io::Error::other(
            "got another hard link while being applied",
        ));
    }
    if same_meta(&have, mode, uid, gid) {
        return Ok(false);
    }
    fsroot::set_owner_mode(fd.as_fd(), uid, gid, mode)?;
    Ok(true)
}

/// Counts of what a phase did, for the log and the state file.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub changed: usize,
    pub unchanged: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} changed, {} unchanged", self.changed, self.unchanged)
    }
}

pub fn apply_directories(ctx: &Ctx) -> Result<Counts, ApplyError> {
    let accounts =
        Accounts::load(ctx.root).map_err(|e| ApplyError::step("directories", "/etc/passwd", e))?;
    let mut counts = Counts::default();
    let mut batch = ParentCache::new(ctx.root);
    let mut trees = ctx.trees.borrow_mut();
    let Trees {
        dirs,
        placed: placed_files,
        ..
    } = &mut *trees;
    let blobs_dir = format!("{}/blobs", ctx.staging);
    let staging = if dirs.is_empty() {
        None
    } else {
        Some(
            ctx.root
                .open_dir(&blobs_dir)
                .map_err(|x| ApplyError::step("directories", &blobs_dir, x))?,
        )
    };
    for (i, e) in ctx.entries().enumerate() {
        let e = e?;
        let EntryKind::Directory { mode, owner, group } = &e.kind else {
            continue;
        };
        let (uid, gid) = entry_ids(ctx, &accounts, &e, owner, group)?;
        let mode = parse_mode(mode).map_err(|m| ApplyError::step("directories", &e.path, m))?;
        if let (Some(staging), Some(tree)) = (&staging, dirs.get(&i)) {
            let placed = place_tree(
                ctx.root,
                staging,
                &accounts,
                (i, &e.path),
                tree,
                (uid, gid, mode),
                &mut batch,
            )
            .map_err(|err| ApplyError::step("directories", &e.path, err))?;
            if placed {
                placed_files.extend(&tree.files);
                counts.changed += 1;
                continue;
            }
        }
        let changed = ensure_dir_batched(ctx.root, &e.path, mode, uid, gid, Some(&mut batch))
            .map_err(|err| ApplyError::step("directories", &e.path, err))?;
        if changed {
            counts.changed += 1;
        } else {
            counts.unchanged += 1;
        }
    }
    placed_files.sort_unstable();
    batch
        .sync()
        .map_err(|x| ApplyError::step("directories", "syncfs", x))?;
    Ok(counts)
}

/// Files, in three passes so that a batch of up to [`FILES_BATCH`] files costs two `syncfs`
/// rather than two fsyncs per file (the entries are read one at a time; only a batch is held):
///
/// 1. what changes: a file with the right size and sha256 already is left alone (mode and owner
///    fixed); the paths with restart/reload hooks among the others are journaled, in one record
///    batch, before anything of their batch is renamed (so a crash after a rename still
///    restarts them);
/// 2. the new content beside its target, not yet visible: the last file (in manifest order)
///    that uses a blob takes it from the staging area as it is (owner and mode set on it, then
///    renamed in pass 3: staging is on the root's filesystem, the rename costs nothing); the
///    others get a copy at the temporary name in their target's directory, its digest checked
///    again;
/// 3. `syncfs` (every byte and inode of pass 2 on disk), every rename, `syncfs` again.
///
/// Files staged in their new directory's tree (see [`Trees`]) are already in place when this
/// phase starts (the directories phase renamed the tree); they are counted, not looked at.
///
/// The invariant that makes a kill -9 (or a power loss) anywhere recoverable by rerunning the
/// same command: nothing appears at a target path but a complete file, with its owner and
/// mode, whose bytes were checked against the manifest (a rename of a file, or of a whole new
/// directory whose every file is), and a phase is journaled as done only after a `syncfs` made
/// all it wrote durable. A rerun stages every blob again, redoes the unfinished phase and finds
/// what the interrupted run completed unchanged (by size and sha256).
///
/// A crash anywhere leaves each target either as it was or complete; the rerun stages the blobs
/// again, finds the renamed files unchanged and redoes the others. Blobs that templates or
/// packages read are always copied, never moved. A target on another filesystem than the
/// staging area (EXDEV) gets a copy, written and synced the slow way.
pub fn apply_files(ctx: &Ctx, journal: &mut Journal) -> Result<Counts, ApplyError> {
    let accounts =
        Accounts::load(ctx.root).map_err(|e| ApplyError::step("files", "/etc/passwd", e))?;
    let mut counts = Counts::default();
    // How many file entries, from the current one on, still use each blob: the last user of
    // a blob takes the staged file itself (when it changes) rather than a copy.
    let mut users: HashMap<BlobKey, u32> = HashMap::new();
    for e in ctx.entries() {
        if let EntryKind::File { digest, .. } = &e?.kind {
            *users.entry(blob_key(digest)).or_default() += 1;
        }
    }
    let pinned = pinned_blobs(ctx);
    let trees = ctx.trees.borrow();
    let blobs_dir = format!("{}/blobs", ctx.staging);
    let mut batch = FilesBatch {
        trees: &trees,
        staging: None,
        parents: ParentCache::new(ctx.root),
        todo: Vec::new(),
    };
    for (j, e) in ctx.entries().enumerate() {
        let e = e?;
        let EntryKind::File {
            mode,
            owner,
            group,
            digest,
            size,
            restart,
            reload,
        } = &e.kind
        else {
            continue;
        };
        let last_user = match users.get_mut(&blob_key(digest)) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if trees.placed.binary_search(&index(j)).is_ok() {
            // Written, checked and renamed into place with its new directory this run.
            counts.changed += 1;
            continue;
        }
        let err = |m: String| ApplyError::step("files", &e.path, m);
        let (uid, gid) = entry_ids(ctx, &accounts, &e, owner, group)?;
        let mode = parse_mode(mode).map_err(err)?;
        let parent = batch.parents.get(&e.path).map_err(|x| err(x.to_string()))?;
        match parent.lstat().map_err(|x| err(x.to_string()))? {
            Some(m) if m.kind == Kind::Dir => {
                return Err(err(
                    "is a directory (refusing to replace it with a file)".into()
                ))
            }
            // A file with other hard links is replaced (pass 2 and 3), never fixed in place.
            Some(m)
                if m.kind == Kind::File
                    && m.nlink == 1
                    && m.size == *size
                    && same_content(parent, digest).map_err(|x| err(x.to_string()))? =>
            {
                fix_meta(parent, mode, uid, gid).map_err(|x| err(x.to_string()))?;
                counts.unchanged += 1;
                continue;
            }
            _ => {}
        }
        if batch.staging.is_none() {
            let staging = ctx
                .root
                .open_dir(&blobs_dir)
                .map_err(|x| ApplyError::step("files", &blobs_dir, x))?;
            batch
                .parents
                .note_filesystem(staging.as_fd())
                .map_err(|x| ApplyError::step("files", &blobs_dir, x))?;
            batch.staging = Some(staging);
        }
        batch.todo.push(Todo {
            staged: last_user && !pinned.contains(digest.as_str()),
            path: e.path.clone(),
            digest: digest.clone(),
            size: *size,
            mode,
            uid,
            gid,
            hooks: !restart.is_empty() || !reload.is_empty(),
        });
        if batch.todo.len() >= FILES_BATCH {
            counts.changed += batch.write(journal)?;
        }
    }
    counts.changed += batch.write(journal)?;
    Ok(counts)
}

/// Files written per batch by the files phase (passes 2 and 3, two `syncfs`): what it holds
/// in memory at most, whatever the number of files.
const FILES_BATCH: usize = 16 * 1024;

/// A file the files phase writes.
struct Todo {
    path: String,
    digest: String,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    hooks: bool,
    /// Pass 2 renames the staged blob itself (else: a temporary copy).
    staged: bool,
}

/// The files of the files phase that change, up to [`FILES_BATCH`] at a time.
struct FilesBatch<'c, 'a> {
    trees: &'c Trees,
    /// The staging area's blobs directory, opened at the first file that changes.
    staging: Option<OwnedFd>,
    /// The target's directory, for all three passes (and the filesystems `syncfs` flushes).
    parents: ParentCache<'a>,
    todo: Vec<Todo>,
}

impl FilesBatch<'_, '_> {
    /// Passes 2 and 3 for the batch (see [`apply_files`]); returns how many files it wrote.
    fn write(&mut self, journal: &mut Journal) -> Result<usize, ApplyError> {
        let todo = std::mem::take(&mut self.todo);
        let Some(staging) = &self.staging else {
            return Ok(0);
        };
        if todo.is_empty() {
            return Ok(0);
        }
        let (trees, parents) = (self.trees, &mut self.parents);
        journal
            .changed_all(todo.iter().filter(|t| t.hooks).map(|t| t.path.as_str()))
            .map_err(ApplyError::journal)?;

        // Pass 2.
        let mut written = 0;
        let prepared = (|| {
            for t in &todo {
                let err = |m: String| ApplyError::step("files", &t.path, m);
                let parent = parents.get(&t.path).map_err(|x| err(x.to_string()))?;
                if t.staged {
                    if journal.resumed() {
                        // A copy an interrupted run left here, when this path was not the
                        // last user.
                        parent
                            .remove_temp(&parent.temp_name())
                            .map_err(|x| err(x.to_string()))?;
                    }
                    prepare_staged(staging, trees, &t.digest, t.size, t.mode, t.uid, t.gid)
                        .map_err(|x| err(format!("staged blob {}: {x}", t.digest)))?;
                } else {
                    let mut src = open_staged(staging, trees, &t.digest)
                        .map_err(|x| err(format!("opening staged blob {}: {x}", t.digest)))?;
                    parent
                        .write_temp(t.mode, t.uid, t.gid, |f| {
                            copy_verified(&mut src, f, &t.digest, t.size)
                        })
                        .map_err(|x| err(x.to_string()))?;
                }
                written += 1;
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            // Leave no temporary behind (the staged blobs are staging's, removed with it).
            for t in todo[..written].iter().filter(|t| !t.staged) {
                if let Ok(p) = parents.get(&t.path) {
                    let _ = p.remove_temp(&p.temp_name());
                }
            }
            return Err(e);
        }

        // Pass 3.
        parents
            .sync()
            .map_err(|x| ApplyError::step("files", "syncfs", x))?;
        for t in &todo {
            let err = |m: String| ApplyError::step("files", &t.path, m);
            let parent = parents.get(&t.path).map_err(|x| err(x.to_string()))?;
            if !t.staged {
                parent.rename_temp().map_err(|x| err(x.to_string()))?;
            } else {
                let staged = trees.staged_name(&t.digest);
                match fcntl::renameat(staging, staged.as_str(), &parent.dir, parent.name.as_str()) {
                    Ok(()) => {}
                    Err(Errno::EXDEV) => {
                        let mut src = open_staged(staging, trees, &t.digest)
                            .map_err(|x| err(format!("opening staged blob {}: {x}", t.digest)))?;
                        parent
                            .write_atomic(
                                t.mode,
                                t.uid,
                                t.gid,
                                |f| copy_verified(&mut src, f, &t.digest, t.size),
                                || Ok(()),
                            )
                            .map_err(|x| err(x.to_string()))?;
                    }
                    Err(x) => return Err(err(x.to_string())),
                }
            }
        }
        parents
            .sync()
            .map_err(|x| ApplyError::step("files", "syncfs", x))?;
        Ok(todo.len())
    }
}

/// A blob's file in the staging area, relative to its `blobs` directory: fanned out by the
/// digest's first two hex digits, so no directory holds more than a few hundred of a large
/// bundle's files (creating, finding and renaming them away stays cheap).
pub fn staged_name(digest: &str) -> String {
    match digest.get(..2) {
        Some(fan) => format!("{fan}/{digest}"),
        None => digest.to_string(),
    }
}

/// A blob in the engine's maps: its digest's 32 bytes rather than its 64 hex digits (a key
/// of 32 bytes instead of a string of 88: the maps are per distinct blob, the largest of an
/// apply's memory). The manifest's digests are validated 64 lowercase hex digits.
pub type BlobKey = [u8; 32];

pub fn blob_key(digest: &str) -> BlobKey {
    let mut key = [0u8; 32];
    // Validated before the engine sees them; anything else would only share a key.
    let _ = hex::decode_to_slice(digest, &mut key);
    key
}

/// An entry's index in the manifest, as kept in the engine's sets (at most
/// [`kiln_signing::Limits::max_entries`], far below `u32::MAX`).
pub fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The owner and mode a staged file was given: (uid, gid, mode).
pub type OwnerMode = (u32, u32, u32);

/// How the blobs are staged, planned for the root as it is when staging begins.
///
/// A blob that only one file uses (and no template or package), whose owner and group exist
/// in the root now, is given that file's owner and mode as it is written; the files phase
/// checks them again before the rename.
///
/// Such a file, in a directory of the manifest that does not exist in the root yet, is
/// staged straight into a private copy of that directory, which the directories phase then
/// renames into place whole: one rename for the directory instead of one per file. The
/// directory gets a tree, `t<i>` in the blobs directory (`i`: the directory entry's index in
/// the manifest), and each of its files without restart/reload hooks is staged there under
/// its own name. The directories phase checks the owners again, gives the tree the
/// directory's owner and mode and renames it to the (still missing) directory with
/// `RENAME_NOREPLACE`; the files phase then leaves those files alone. A tree that cannot be
/// placed (the directory appeared meanwhile, an owner changed) is only a staging place: the
/// files phase renames its files one by one, as it does every other staged blob.
#[derive(Debug, Default)]
pub struct Trees {
    /// Blobs with an owner and mode of their own, and where each is staged.
    pub blobs: HashMap<BlobKey, Staged>,
    /// The names of the files staged in trees, one after the other ([`Staged::name`]).
    names: String,
    /// Index of a directory entry -> its tree.
    pub dirs: HashMap<usize, Tree>,
    /// File entries the directories phase placed (in a tree it renamed into place) this run,
    /// sorted once it is done.
    pub placed: Vec<u32>,
}

/// A blob one file uses: the owner and mode it is staged with and, when it is staged in a
/// tree, where.
#[derive(Debug, Clone, Copy)]
pub struct Staged {
    /// Always `Some` once planned.
    pub meta: Option<OwnerMode>,
    /// The tree's directory entry index, `u32::MAX` when the blob is staged by its digest.
    tree: u32,
    /// Offset and length of the file's name in [`Trees::names`].
    name: (u32, u16),
}

/// The files staged in a directory's tree.
#[derive(Debug, Default)]
pub struct Tree {
    /// The file entries' indexes in the manifest, ascending.
    pub files: Vec<u32>,
    /// The owners and groups they name and the ids those had when they were staged, each
    /// pair once (the accounts may change before the tree is placed).
    pub owners: Vec<(String, String, u32, u32)>,
}

impl Trees {
    /// The name of a staged blob in the blobs directory (in a tree, or by its digest).
    pub fn staged_name(&self, digest: &str) -> String {
        match self.blobs.get(&blob_key(digest)) {
            Some(b) if b.tree != u32::MAX => {
                let (at, len) = (b.name.0 as usize, usize::from(b.name.1));
                let name = self.names.get(at..at + len).unwrap_or_default();
                format!("{}/{name}", tree_name(b.tree as usize))
            }
            _ => staged_name(digest),
        }
    }

    /// The owner and mode to give a blob as it is staged, when it has its own.
    pub fn meta(&self, digest: &str) -> Option<OwnerMode> {
        self.blobs.get(&blob_key(digest)).and_then(|b| b.meta)
    }
}

/// The name of directory entry `i`'s tree in the blobs directory.
pub fn tree_name(i: usize) -> String {
    format!("t{i}")
}

/// Plans the staging (see [`Trees`]) for the root as it is now.
pub fn plan_staging(ctx: &Ctx) -> Result<Trees, ApplyError> {
    let mut trees = Trees::default();
    let Ok(accounts) = Accounts::load(ctx.root) else {
        return Ok(trees);
    };
    let pinned = pinned_blobs(ctx);
    // Blobs one file uses, with its owner and mode (`None`: more than one, or no such owner,
    // dropped after: one table, never two).
    for e in ctx.entries() {
        let e = e?;
        let EntryKind::File {
            mode,
            owner,
            group,
            digest,
            ..
        } = &e.kind
        else {
            continue;
        };
        let key = blob_key(digest);
        if let Some(b) = trees.blobs.get_mut(&key) {
            b.meta = None;
            continue;
        }
        let meta = match (ids(&accounts, owner, group), parse_mode(mode)) {
            (Ok((uid, gid)), Ok(mode)) if !pinned.contains(digest.as_str()) => {
                Some((uid, gid, mode))
            }
            _ => None,
        };
        let staged = Staged {
            meta,
            tree: u32::MAX,
            name: (0, 0),
        };
        trees.blobs.insert(key, staged);
    }
    trees.blobs.retain(|_, b| b.meta.is_some());
    if trees.blobs.is_empty() {
        return Ok(trees);
    }
    let missing = |path: &str| match ctx.root.parent(path, false) {
        Ok(Some(p)) => matches!(p.lstat(), Ok(None)),
        Ok(None) => true,
        Err(e) => fsroot::is_missing(&e),
    };
    // The directories of the manifest missing from the root, by path.
    let mut new_dirs: HashMap<String, usize> = HashMap::new();
    for (i, e) in ctx.entries().enumerate() {
        let e = e?;
        if matches!(e.kind, EntryKind::Directory { .. }) && missing(&e.path) {
            new_dirs.insert(e.into_owned().path, i);
        }
    }
    if new_dirs.is_empty() {
        return Ok(trees);
    }
    for (j, e) in ctx.entries().enumerate() {
        let e = e?;
        let EntryKind::File {
            digest,
            restart,
            reload,
            owner,
            group,
            ..
        } = &e.kind
        else {
            continue;
        };
        let Some(staged) = trees.blobs.get_mut(&blob_key(digest)) else {
            continue;
        };
        let Some((dir, name)) = e.path.rsplit_once('/') else {
            continue;
        };
        let Some(&i) = new_dirs.get(dir) else {
            continue;
        };
        let (Ok(at), Ok(len)) = (u32::try_from(trees.names.len()), u16::try_from(name.len()))
        else {
            continue;
        };
        if !restart.is_empty() || !reload.is_empty() || name.is_empty() {
            continue;
        }
        let Some((uid, gid, _)) = staged.meta else {
            continue;
        };
        trees.names.push_str(name);
        staged.tree = index(i);
        staged.name = (at, len);
        let tree = trees.dirs.entry(i).or_default();
        tree.files.push(index(j));
        if !tree
            .owners
            .iter()
            .any(|(o, g, _, _)| o == owner && g == group)
        {
            tree.owners.push((owner.clone(), group.clone(), uid, gid));
        }
    }
    Ok(trees)
}

/// Renames directory entry `i`'s tree into place at `path` if the directory is still missing
/// and every file staged in the tree has the owner and mode the files phase would give it now;
/// the directory gets its own owner and mode (`dir_meta`) first. Returns whether it did.
fn place_tree(
    root: &Root,
    staging: &OwnedFd,
    accounts: &Accounts,
    (i, path): (usize, &str),
    tree: &Tree,
    (uid, gid, mode): OwnerMode,
    batch: &mut ParentCache,
) -> io::Result<bool> {
    for (owner, group, u, g) in &tree.owners {
        match ids(accounts, owner, group) {
            Ok(now) if now == (*u, *g) => {}
            _ => return Ok(false),
        }
    }
    let parent = root
        .parent(path, true)?
        .ok_or_else(|| io::Error::other("parent missing"))?;
    if parent.lstat()?.is_some() {
        return Ok(false);
    }
    let name = tree_name(i);
    let fd = match fcntl::openat(
        staging,
        name.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    fsroot::set_owner_mode(fd.as_fd(), uid, gid, mode)?;
    drop(fd);
    match fsroot::rename_noreplace(staging.as_fd(), &name, parent.dir.as_fd(), &parent.name) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(false),
        Err(e) => return Err(e),
    }
    batch.note_filesystem(parent.dir.as_fd())?;
    Ok(true)
}

/// Blobs that templates and packages read from the staging area after the files phase (or
/// again on a rerun): never moved out of it.
fn pinned_blobs<'m>(ctx: &Ctx<'m>) -> HashSet<&'m str> {
    ctx.manifest
        .templates
        .iter()
        .map(|t| t.digest.as_str())
        .chain(
            ctx.manifest
                .packages
                .iter()
                .filter_map(|p| p.digest.as_deref()),
        )
        .collect()
}

/// A staged blob, opened for reading without following a link.
fn open_staged(staging: &OwnedFd, trees: &Trees, digest: &str) -> io::Result<std::fs::File> {
    let fd = fcntl::openat(
        staging,
        trees.staged_name(digest).as_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Readies a staged blob to be renamed over its target: a regular file of the manifest's size
/// (this run wrote it and checked its sha256 as it arrived), with the target's owner and mode
/// (usually given while staging already).
fn prepare_staged(
    staging: &OwnedFd,
    trees: &Trees,
    digest: &str,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let m = fsroot::lstat_at(staging.as_fd(), &trees.staged_name(digest))?
        .ok_or_else(|| io::Error::other("missing from the staging area"))?;
    if m.kind != Kind::File || m.size != size {
        return Err(io::Error::other(
            "does not match the manifest (staging area corrupted?)",
        ));
    }
    if same_meta(&m, mode, uid, gid) {
        return Ok(());
    }
    let f = open_staged(staging, trees, digest)?;
    fsroot::set_owner_mode(f.as_fd(), uid, gid, mode)
}

/// Copies a staged blob, failing unless it has exactly `size` bytes and this sha256.
fn copy_verified(
    src: &mut impl Read,
    dst: &mut impl Write,
    digest: &str,
    size: u64,
) -> io::Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > size {
            return Err(io::Error::other(
                "staged blob is larger than the manifest says",
            ));
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    if total != size || hex::encode(hasher.finalize()) != digest {
        return Err(io::Error::other(
            "staged blob does not match its digest (staging area corrupted?)",
        ));
    }
    Ok(())
}

pub fn apply_symlinks(ctx: &Ctx) -> Result<Counts, ApplyError> {
    let mut counts = Counts::default();
    for e in ctx.entries() {
        let e = e?;
        let EntryKind::Symlink { target } = &e.kind else {
            continue;
        };
        let err = |m: String| ApplyError::step("symlinks", &e.path, m);
        let parent = ctx
            .root
            .parent(&e.path, true)
            .map_err(|x| err(x.to_string()))?
            .ok_or_else(|| err("parent missing".into()))?;
        match parent.lstat().map_err(|x| err(x.to_string()))? {
            Some(m) if m.kind == Kind::Dir => {
                return Err(err(
                    "is a directory (refusing to replace it with a symlink)".into(),
                ))
            }
            Some(m)
                if m.kind == Kind::Symlink
                    && parent
                        .readlink()
                        .map(|t| t == target.as_str())
                        .unwrap_or(false) =>
            {
                counts.unchanged += 1;
                continue;
            }
            _ => {}
        }
        parent
            .symlink_atomic(target)
            .map_err(|x| err(x.to_string()))?;
        counts.changed += 1;
    }
    Ok(counts)
}

/// Removes `absent` paths, deepest first, so a directory whose children are listed too empties
/// before it is removed. A non-empty directory is an error, never a recursive delete.
pub fn apply_absent(ctx: &Ctx) -> Result<Counts, ApplyError> {
    let mut counts = Counts::default();
    for path in super::absent_paths(ctx)?.iter().rev() {
        let err = |m: String| ApplyError::step("absent", path, m);
        let parent = match ctx.root.parent(path, false) {
            Ok(Some(p)) => p,
            Ok(None) => {
                counts.unchanged += 1;
                continue;
            }
            Err(x) if fsroot::is_missing(&x) => {
                counts.unchanged += 1;
                continue;
            }
            Err(x) => return Err(err(x.to_string())),
        };
        let Some(meta) = parent.lstat().map_err(|x| err(x.to_string()))? else {
            counts.unchanged += 1;
            continue;
        };
        match parent.remove(meta.kind) {
            Ok(()) => counts.changed += 1,
            Err(x) if x.raw_os_error() == Some(libc::ENOTEMPTY) || x.raw_os_error() == Some(libc::EEXIST) => {
                return Err(err("is a non-empty directory; `absent` removes only files, symlinks and empty directories".into()))
            }
            Err(x) => return Err(err(x.to_string())),
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_verified_refuses_wrong_bytes() {
        let data = b"hello";
        let digest = kiln_signing::sha256_hex(data);
        let mut out = Vec::new();
        copy_verified(&mut &data[..], &mut out, &digest, 5).unwrap();
        assert_eq!(out, data);
        assert!(copy_verified(&mut &b"hellO"[..], &mut Vec::new(), &digest, 5).is_err());
        assert!(copy_verified(&mut &b"hello!"[..], &mut Vec::new(), &digest, 5).is_err());
        assert!(copy_verified(&mut &b"hell"[..], &mut Vec::new(), &digest, 5).is_err());
    }
}
