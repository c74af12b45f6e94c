//! A manifest's entries, held in memory or read one at a time from a spool file.
//!
//! [`open_spooled`](crate::open_spooled) parses the manifest's `entries` array straight into
//! the spool file that holds the manifest's bytes (after them), one line each, so that no
//! more than one entry is ever in memory: a host applies a bundle of a million paths in the
//! memory of a small one. Everything that goes through the entries (validation, each phase
//! of an apply) iterates the [`EntryList`] again instead of holding them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::BundleError;
use crate::manifest::{Entry, EntryKind};

/// Bytes read from or written to the spool at a time.
const BUFFER: usize = 64 * 1024;

/// A manifest's entries: in memory (a bundle read with [`open`](crate::open), a manifest
/// being built) or in a spool file (a bundle read with [`open_spooled`](crate::open_spooled)).
#[derive(Debug)]
pub enum EntryList {
    Mem(Vec<Entry>),
    Spool(EntrySpool),
}

/// Entries one line each in a file, from byte `start` to `end`, in manifest order.
#[derive(Debug)]
pub struct EntrySpool {
    file: File,
    start: u64,
    end: u64,
    count: usize,
}

impl EntrySpool {
    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl EntryList {
    pub fn len(&self) -> usize {
        match self {
            EntryList::Mem(v) => v.len(),
            EntryList::Spool(s) => s.count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in manifest order (sorted by path). A spooled entry is read and parsed
    /// again on each pass; an error reading the spool ends the pass with that error.
    pub fn iter(&self) -> Entries<'_> {
        match self {
            EntryList::Mem(v) => Entries::Mem(v.iter()),
            EntryList::Spool(s) => Entries::Spool {
                reader: BufReader::with_capacity(
                    BUFFER,
                    At {
                        file: &s.file,
                        pos: s.start,
                        end: s.end,
                    },
                ),
                line: String::new(),
                left: s.count,
            },
        }
    }
}

/// An iteration over an [`EntryList`].
pub enum Entries<'a> {
    Mem(std::slice::Iter<'a, Entry>),
    Spool {
        reader: BufReader<At<'a>>,
        line: String,
        left: usize,
    },
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Cow<'a, Entry>, BundleError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Entries::Mem(it) => it.next().map(|e| Ok(Cow::Borrowed(e))),
            Entries::Spool { reader, line, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                line.clear();
                let read = match reader.read_line(line) {
                    Ok(0) => Err(spool_err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "it ends before its last entry",
                    ))),
                    Ok(_) => serde_json::from_str::<Record>(line.trim_end_matches('\n'))
                        .map(|r| Cow::Owned(r.into_entry()))
                        .map_err(|e| spool_err(io::Error::new(io::ErrorKind::InvalidData, e))),
                    Err(e) => Err(spool_err(e)),
                };
                if read.is_err() {
                    *left = 0;
                }
                Some(read)
            }
        }
    }
}

fn spool_err(e: io::Error) -> BundleError {
    BundleError::Io(io::Error::new(
        e.kind(),
        format!("reading the manifest's entries from their spool file: {e}"),
    ))
}

/// Reads `file` from `pos` to `end` without moving the file's own offset, so that several
/// passes (and the manifest reader) may read it at once.
pub struct At<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes `file` from `pos` on, without moving the file's own offset.
struct WriteAt {
    file: File,
    pos: u64,
}

impl Write for WriteAt {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One entry in the spool: JSON in arrays rather than the manifest's flattened objects, which
/// serde parses through a buffer of its own, several times slower.
#[derive(Deserialize)]
enum Record {
    F(
        String,
        String,
        String,
        String,
        String,
        u64,
        Vec<String>,
        Vec<String>,
    ),
    D(String, String, String, String),
    S(String, String),
    A(String),
}

/// [`Record`] written from a borrowed entry (the same JSON).
#[derive(Serialize)]
enum RecordRef<'a> {
    F(
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        u64,
        &'a [String],
        &'a [String],
    ),
    D(&'a str, &'a str, &'a str, &'a str),
    S(&'a str, &'a str),
    A(&'a str),
}

impl Record {
    fn into_entry(self) -> Entry {
        let (path, kind) = match self {
            Record::F(path, mode, owner, group, digest, size, restart, reload) => (
                path,
                EntryKind::File {
                    mode,
                    owner,
                    group,
                    digest,
                    size,
                    restart,
                    reload,
                },
            ),
            Record::D(path, mode, owner, group) => {
                (path, EntryKind::Directory { mode, owner, group })
            }
            Record::S(path, target) => (path, EntryKind::Symlink { target }),
            Record::A(path) => (path, EntryKind::Absent),
        };
        Entry { path, kind }
    }
}

impl<'a> RecordRef<'a> {
    fn of(e: &'a Entry) -> RecordRef<'a> {
        let p = e.path.as_str();
        match &e.kind {
            EntryKind::File {
                mode,
                owner,
                group,
                digest,
                size,
                restart,
                reload,
            } => RecordRef::F(p, mode, owner, group, digest, *size, restart, reload),
            EntryKind::Directory { mode, owner, group } => RecordRef::D(p, mode, owner, group),
            EntryKind::Symlink { target } => RecordRef::S(p, target),
            EntryKind::Absent => RecordRef::A(p),
        }
    }
}

/// Appends entries to a spool file, from byte `start` on.
struct SpoolWriter {
    out: BufWriter<WriteAt>,
    start: u64,
    count: usize,
    /// The first write error (serde's error type cannot carry it).
    failed: Option<io::Error>,
}

impl SpoolWriter {
    fn push(&mut self, e: &Entry) {
        if self.failed.is_some() {
            return;
        }
        let wrote = serde_json::to_writer(&mut self.out, &RecordRef::of(e))
            .map_err(io::Error::other)
            .and_then(|()| self.out.write_all(b"\n"));
        match wrote {
            Ok(()) => self.count += 1,
            Err(e) => self.failed = Some(e),
        }
    }

    fn finish(self) -> io::Result<EntrySpool> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let w = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(EntrySpool {
            end: w.pos,
            file: w.file,
            start: self.start,
            count: self.count,
        })
    }
}

/// Where [`Streamed`] puts the entries it parses.
enum Sink {
    Spool(SpoolWriter),
    Mem(Vec<Entry>),
}

thread_local! {
    /// Where [`Streamed`] puts the entries it parses (a deserializer has no other way to be
    /// handed a destination).
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Stands for a manifest's entries while they are parsed into an [`EntryList`]
/// ([`parse_entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Streamed;

impl<'de> Deserialize<'de> for Streamed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Streamed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Streamed, A::Error> {
                while let Some(e) = seq.next_element::<Entry>()? {
                    SINK.with(|s| match s.borrow_mut().as_mut() {
                        Some(Sink::Spool(w)) => {
                            w.push(&e);
                            Ok(())
                        }
                        Some(Sink::Mem(v)) => {
                            v.push(e);
                            Ok(())
                        }
                        None => Err(A::Error::custom("entries parsed with nowhere to go")),
                    })?;
                }
                Ok(Streamed)
            }
        }
        d.deserialize_seq(Each)
    }
}

/// Parses what `parse` parses with every [`Streamed`] in it putting its entries in an
/// [`EntryList`]: written to `spool` (a file, from the given byte on) one at a time, or, with
/// `None`, collected in memory. The result of `parse` is kept when it failed (its error says
/// where); a failure to write the spool is an I/O error.
pub(crate) fn parse_entries<T, E>(
    spool: Option<(File, u64)>,
    parse: impl FnOnce() -> Result<T, E>,
) -> Result<Result<(T, EntryList), E>, BundleError> {
    let sink = match spool {
        Some((file, start)) => Sink::Spool(SpoolWriter {
            out: BufWriter::with_capacity(BUFFER, WriteAt { file, pos: start }),
            start,
            count: 0,
            failed: None,
        }),
        None => Sink::Mem(Vec::new()),
    };
    SINK.with(|s| *s.borrow_mut() = Some(sink));
    let parsed = parse();
    let list = match SINK.with(|s| s.borrow_mut().take()) {
        Some(Sink::Spool(writer)) => EntryList::Spool(writer.finish().map_err(|e| {
            BundleError::Io(io::Error::new(
                e.kind(),
                format!("writing the manifest's entries to their spool file: {e}"),
            ))
        })?),
        Some(Sink::Mem(v)) => EntryList::Mem(v),
        None => {
            return Err(BundleError::Io(io::Error::other(
                "the manifest's entries went missing while parsing",
            )))
        }
    };
    Ok(parsed.map(|t| (t, list)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::sample_manifest;

    #[test]
    fn entries_come_back_from_the_spool_as_they_went_in() {
        let m = sample_manifest();
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"manifest bytes", 0).unwrap();
        let json = serde_json::to_vec(&m.entries).unwrap();
        let (streamed, list) = parse_entries(Some((file, 14)), || {
            serde_json::from_slice::<Streamed>(&json)
        })
        .unwrap()
        .unwrap();
        assert_eq!(streamed, Streamed);
        assert!(matches!(list, EntryList::Spool(_)));
        assert_eq!(list.len(), m.entries.len());
        let back: Vec<Entry> = list.iter().map(|e| e.unwrap().into_owned()).collect();
        assert_eq!(back, m.entries);
        // Two passes at once, each from the start.
        let mut a = list.iter();
        a.next();
        assert_eq!(list.iter().count(), m.entries.len());
        assert_eq!(a.count(), m.entries.len() - 1);
        let (_, in_memory) = parse_entries(None, || serde_json::from_slice::<Streamed>(&json))
            .unwrap()
            .unwrap();
        let EntryList::Mem(v) = in_memory else {
            unreachable!()
        };
        assert_eq!(v, m.entries);
        // The bytes before the entries are left alone.
        let EntryList::Spool(s) = &list else {
            unreachable!()
        };
        let mut head = [0u8; 14];
        s.file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"manifest bytes");
    }

    #[test]
    fn a_damaged_spool_ends_the_pass_with_an_error() {
        let m = sample_manifest();
        let json = serde_json::to_vec(&m.entries).unwrap();
        let (_, list) = parse_entries(Some((tempfile::tempfile().unwrap(), 0)), || {
            serde_json::from_slice::<Streamed>(&json)
        })
        .unwrap()
        .unwrap();
        let EntryList::Spool(spool) = &list else {
            unreachable!()
        };
        spool.file.write_all_at(b"x", 0).unwrap();
        let mut it = list.iter();
        let err = it.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("spool file"), "{err}");
        assert!(it.next().is_none(), "the pass ends at the error");
    }
}
