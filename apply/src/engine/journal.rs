//! The apply journal, `<root>/var/lib/kiln/journal`: one JSON record per line, each appended
//! and fsynced before the step it announces is taken as done. After a crash or power loss the
//! same command reads it back and resumes: finished phases are skipped, the interrupted phase
//! is redone (its steps are idempotent), finished commands are not run again, and files whose
//! content changed still get their services restarted. A torn last line is dropped.

use std::fs::File;
use std::io::{self, Write};
use std::time::Duration;

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

use crate::fsroot::Root;
use crate::state::STATE_DIR;

/// The journal's path inside the root.
pub const JOURNAL: &str = "/var/lib/kiln/journal";
/// A journal larger than this is refused (command outputs are bounded, so it cannot be ours).
const JOURNAL_LIMIT: u64 = 256 << 20;

/// One line of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// First line: which bundle this journal is applying.
    Begin {
        sha256: String,
        hostgroup: String,
        version: u64,
        started_at: String,
    },
    /// A phase finished.
    Done {
        phase: String,
        seconds: f64,
        summary: String,
    },
    /// A file with restart/reload hooks is about to get new content.
    Changed { path: String },
    /// A command is about to run (a crash before its `Command` record reruns it).
    Started { command: String },
    /// A phase is about to write without syncing each file (dpkg `--force-unsafe-io`); a
    /// `Synced` record follows once one `syncfs` made it all durable. A rerun that finds the
    /// first without the second cannot trust what the phase wrote (after a power loss, files
    /// dpkg recorded as installed may be empty) and redoes it whole.
    Unsynced { phase: String },
    /// What the phase wrote since its `Unsynced` record is on disk.
    Synced { phase: String },
    /// A command finished (successfully, or it was skipped).
    Command {
        name: String,
        status: String,
        exit_code: Option<i32>,
        seconds: f64,
        output: String,
        truncated: bool,
    },
}

/// An open journal for one bundle.
#[derive(Debug)]
pub struct Journal {
    file: File,
    records: Vec<Record>,
    /// Started from the records of an interrupted run of the same bundle.
    resumed: bool,
}

/// What an existing journal is about.
#[derive(Debug, Clone)]
pub struct Existing {
    pub sha256: String,
    pub hostgroup: String,
    pub version: u64,
    pub started_at: String,
}

/// Reads the journal of `root`, if any: its first record and all records. Unparsable lines end
/// it (a write torn by a crash).
pub fn read(root: &Root) -> io::Result<Option<(Existing, Vec<Record>)>> {
    let Some(text) = root.read_text(JOURNAL, JOURNAL_LIMIT)? else {
        return Ok(None);
    };
    let mut records = Vec::new();
    for line in text.lines() {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => records.push(r),
            Err(_) => break,
        }
    }
    match records.first() {
        Some(Record::Begin {
            sha256,
            hostgroup,
            version,
            started_at,
        }) => Ok(Some((
            Existing {
                sha256: sha256.clone(),
                hostgroup: hostgroup.clone(),
                version: *version,
                started_at: started_at.clone(),
            },
            records,
        ))),
        // A journal without a readable first line: nothing of it can be trusted, start over.
        _ => Ok(None),
    }
}

impl Journal {
    /// Starts a journal (or resumes `records` of the same bundle), rewriting it compactly so a
    /// torn line never sits in the middle.
    pub fn start(root: &Root, begin: Record, resume: Vec<Record>) -> io::Result<Journal> {
        let resumed = !resume.is_empty();
        let records = if resume.is_empty() {
            vec![begin]
        } else {
            resume
        };
        let mut text = Vec::new();
        for r in &records {
            serde_json::to_writer(&mut text, r).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        root.mkdir_p(STATE_DIR)?;
        let parent = root
            .parent(JOURNAL, true)?
            .ok_or_else(|| io::Error::other("no state directory"))?;
        parent.write_atomic(0o600, 0, 0, |f| f.write_all(&text), || Ok(()))?;
        let fd = parent.open_nofollow(OFlag::O_WRONLY | OFlag::O_APPEND)?;
        Ok(Journal {
            file: File::from(fd),
            records,
            resumed,
        })
    }

    fn append(&mut self, r: Record) -> io::Result<()> {
        self.append_all(vec![r])
    }

    /// Appends records with one write and one fsync.
    fn append_all(&mut self, rs: Vec<Record>) -> io::Result<()> {
        if rs.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for r in &rs {
            serde_json::to_writer(&mut text, r).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        self.file.write_all(&text)?;
        self.file.sync_data()?;
        self.records.extend(rs);
        Ok(())
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Whether this run resumes an interrupted one (which may have left temporaries behind).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// The `Done` record of a phase, if it finished in this or an earlier run.
    pub fn done(&self, phase: &str) -> Option<(f64, String)> {
        self.records.iter().find_map(|r| match r {
            Record::Done {
                phase: p,
                seconds,
                summary,
            } if p == phase => Some((*seconds, summary.clone())),
            _ => None,
        })
    }

    pub fn finish_phase(&mut self, phase: &str, took: Duration, summary: &str) -> io::Result<()> {
        self.append(Record::Done {
            phase: phase.into(),
            seconds: secs(took),
            summary: summary.into(),
        })
    }

    /// Records that `path` is about to change content (before the rename that changes it).
    pub fn changed(&mut self, path: &str) -> io::Result<()> {
        if self.changed_paths().any(|p| p == path) {
            return Ok(());
        }
        self.append(Record::Changed { path: path.into() })
    }

    /// [`changed`](Self::changed) for many paths at once: one write, one fsync.
    pub fn changed_all<'p>(&mut self, paths: impl IntoIterator<Item = &'p str>) -> io::Result<()> {
        let known: std::collections::HashSet<&str> = self.changed_paths().collect();
        let mut new: Vec<&str> = paths.into_iter().filter(|p| !known.contains(p)).collect();
        new.sort_unstable();
        new.dedup();
        let rs = new
            .into_iter()
            .map(|p| Record::Changed { path: p.into() })
            .collect();
        self.append_all(rs)
    }

    pub fn changed_paths(&self) -> impl Iterator<Item = &str> {
        self.records.iter().filter_map(|r| match r {
            Record::Changed { path } => Some(path.as_str()),
            _ => None,
        })
    }

    /// Records that `phase` starts writing without per-file syncs (see [`Record::Unsynced`]).
    pub fn unsynced(&mut self, phase: &str) -> io::Result<()> {
        self.append(Record::Unsynced {
            phase: phase.into(),
        })
    }

    /// Records that what `phase` wrote is durable now.
    pub fn synced(&mut self, phase: &str) -> io::Result<()> {
        self.append(Record::Synced {
            phase: phase.into(),
        })
    }

    /// Whether an earlier run of `phase` wrote without syncing and was interrupted before
    /// it synced.
    pub fn left_unsynced(&self, phase: &str) -> bool {
        let mut open = false;
        for r in &self.records {
            match r {
                Record::Unsynced { phase: p } if p == phase => open = true,
                Record::Synced { phase: p } if p == phase => open = false,
                _ => {}
            }
        }
        open
    }

    pub fn command_started(&mut self, name: &str) -> io::Result<()> {
        self.append(Record::Started {
            command: name.into(),
        })
    }

    /// Whether a command was started by an earlier run that did not record its end.
    pub fn command_interrupted(&self, name: &str) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r, Record::Started { command } if command == name))
            && self.command_result(name).is_none()
    }

    pub fn command_result(&self, name: &str) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| matches!(r, Record::Command { name: n, .. } if n == name))
    }

    pub fn command_done(&mut self, r: Record) -> io::Result<()> {
        self.append(r)
    }
}

/// Removes the journal (after the state file records success).
pub fn remove(root: &Root) -> io::Result<()> {
    if let Some(p) = root.parent(JOURNAL, false)? {
        if p.lstat()?.is_some() {
            p.remove(crate::fsroot::Kind::File)?;
        }
    }
    Ok(())
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
