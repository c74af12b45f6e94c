//! Reads and verifies a bundle as one stream of small adaptors: the source, a zstd decoder with
//! a capped window, a strict ustar reader, and per blob a reader that hashes as it goes and
//! fails at the end of a blob whose sha256 differs. Memory stays flat whatever the bundle size,
//! and nothing is trusted before the signature and the trust store say so.

use std::fmt;
use std::io::{self, BufReader, Chain, Cursor, Read};

use sha2::{Digest, Sha256};

use crate::entries::{EntryList, EntrySpool};
use crate::error::BundleError;
use crate::keys::PublicKey;
use crate::limits::Limits;
use crate::manifest::{Blob, Manifest, FORMAT_VERSION};
use crate::sshsig::{self, NAMESPACE};
use crate::trust::TrustStore;
use crate::validate::validate_entries;

pub use crate::hashing::{sha256_hex, HashingReader, HashingWriter};
pub use crate::policy::{check_policy, read_os_release, BaseIdentity, Policy};

/// Name of the first archive member.
pub const MANIFEST_NAME: &str = "kiln/manifest.json";
/// Name of the second archive member.
pub const SIGNATURE_NAME: &str = "kiln/manifest.json.sig";

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The longest zstd frame header (magic, descriptor, window, dictionary id, content size).
const FRAME_HEADER_MAX: usize = 18;
const BLOCK: usize = 512;
/// Zero bytes tolerated after the end-of-archive marker (a tar record's padding).
const MAX_TRAILING_ZEROS: u64 = 64 * 1024;

fn corrupt(msg: impl Into<String>) -> BundleError {
    BundleError::Corrupt(msg.into())
}

/// An error of the bundle's source itself (a failing disk or connection), kept apart from
/// decoding errors so that it is reported as I/O, not as a corrupt bundle.
#[derive(Debug)]
struct SourceError(io::Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

struct Source<R>(R);

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), SourceError(e))),
                ok => return ok,
            }
        }
    }
}

/// Source errors become `Io`; every other error while decoding means a corrupt bundle.
fn classify(e: io::Error) -> BundleError {
    if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
        let kind = e.kind();
        return match e.into_inner().map(|b| b.downcast::<SourceError>()) {
            Some(Ok(se)) => BundleError::Io(se.0),
            Some(Err(other)) => BundleError::Io(io::Error::new(kind, other)),
            None => BundleError::Io(io::Error::from(kind)),
        };
    }
    corrupt(format!("zstd: {e}"))
}

type Decoder<R> =
    zstd::stream::read::Decoder<'static, BufReader<Chain<Cursor<Vec<u8>>, Source<R>>>>;

/// Checks the zstd frame header before any decoding: magic, content checksum present, no
/// dictionary, reserved bits clear, and a window within the limit.
fn check_frame_header(h: &[u8], limits: &Limits) -> Result<(), BundleError> {
    if h.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(corrupt("not a zstd stream (bad magic)"));
    }
    let fhd = *h
        .get(4)
        .ok_or_else(|| corrupt("truncated zstd frame header"))?;
    if fhd & 0x18 != 0 {
        return Err(corrupt("zstd frame header has reserved bits set"));
    }
    if fhd & 0x04 == 0 {
        return Err(corrupt("zstd frame has no content checksum"));
    }
    if fhd & 0x03 != 0 {
        return Err(corrupt("zstd frame needs a dictionary"));
    }
    let max = 1u64.checked_shl(limits.window_log_max).unwrap_or(u64::MAX);
    let single_segment = fhd & 0x20 != 0;
    let window = if single_segment {
        // The window is the content size, stored right after the descriptor.
        let len = [1, 2, 4, 8][usize::from(fhd >> 6)];
        let field = h
            .get(5..5 + len)
            .ok_or_else(|| corrupt("truncated zstd frame header"))?;
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(field);
        let size = u64::from_le_bytes(le);
        if len == 2 {
            size + 256
        } else {
            size
        }
    } else {
        let wd = *h
            .get(5)
            .ok_or_else(|| corrupt("truncated zstd frame header"))?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        base + (base / 8) * u64::from(wd & 7)
    };
    if window > max {
        return Err(BundleError::Limit(format!(
            "zstd window of {window} bytes is larger than the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// One ustar header, as far as kiln cares.
struct TarHeader {
    name: String,
    typeflag: u8,
    size: u64,
}

fn type_name(t: u8) -> String {
    match t {
        b'0' | 0 => "regular file".into(),
        b'1' => "hard link".into(),
        b'2' => "symlink".into(),
        b'3' => "character device".into(),
        b'4' => "block device".into(),
        b'5' => "directory".into(),
        b'6' => "FIFO".into(),
        b'7' => "contiguous file".into(),
        b'x' => "pax extended header".into(),
        b'g' => "pax global header".into(),
        b'L' => "GNU long name".into(),
        b'K' => "GNU long link name".into(),
        other => format!("type {:?}", char::from(other)),
    }
}

/// NUL-terminated field; everything after the terminator must be NUL too.
fn c_field<'a>(field: &'a [u8], what: &str) -> Result<&'a [u8], BundleError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (value, rest) = field.split_at(end);
    if rest.iter().any(|&b| b != 0) {
        return Err(corrupt(format!(
            "tar header {what} has bytes after its terminator"
        )));
    }
    Ok(value)
}

/// An octal numeric field: optional leading spaces, digits, then NUL/space padding.
fn octal(field: &[u8], what: &str) -> Result<u64, BundleError> {
    let bad = || corrupt(format!("tar header {what} field is not octal"));
    let s = field.iter().skip_while(|&&b| b == b' ');
    let digits: Vec<u8> = s
        .clone()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    let rest = s.skip(digits.len());
    if digits.is_empty() || digits.len() > 21 || !rest.clone().all(|&b| b == 0 || b == b' ') {
        return Err(bad());
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if d > b'7' {
            return Err(bad());
        }
        acc.checked_mul(8)
            .and_then(|a| a.checked_add(u64::from(d - b'0')))
            .ok_or_else(bad)
    })
}

fn parse_header(b: &[u8; BLOCK]) -> Result<TarHeader, BundleError> {
    let stored = octal(&b[148..156], "checksum")?;
    let sum: u64 = b
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(x)
            }
        })
        .sum();
    if sum != stored {
        return Err(corrupt("tar header checksum mismatch"));
    }
    let typeflag = b[156];
    if &b[257..263] != b"ustar\0" || &b[263..265] != b"00" {
        return Err(corrupt(format!(
            "tar header is not ustar ({})",
            type_name(typeflag)
        )));
    }
    let name = c_field(&b[0..100], "name")?;
    let prefix = c_field(&b[345..500], "prefix")?;
    let mut full = Vec::new();
    if !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    let size = octal(&b[124..136], "size")?;
    Ok(TarHeader {
        name: String::from_utf8_lossy(&full).into_owned(),
        typeflag,
        size,
    })
}

/// The decompressed tar stream, read strictly one member at a time.
struct Tar<R> {
    z: Decoder<R>,
}

impl<R: Read> Tar<R> {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        loop {
            match self.z.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
                Ok(n) => return Ok(n),
            }
        }
    }

    fn read_full(&mut self, mut buf: &mut [u8], what: &str) -> Result<(), BundleError> {
        while !buf.is_empty() {
            let n = self.read_some(buf)?;
            if n == 0 {
                return Err(corrupt(format!("truncated: bundle ends inside {what}")));
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// The next member's header, or `None` at the end-of-archive marker (two zero blocks).
    fn next_header(&mut self) -> Result<Option<TarHeader>, BundleError> {
        let mut block = [0u8; BLOCK];
        self.read_full(&mut block, "a tar header (no end-of-archive marker)")?;
        if block.iter().all(|&b| b == 0) {
            self.read_full(&mut block, "the end-of-archive marker")?;
            if block.iter().any(|&b| b != 0) {
                return Err(corrupt("data after a zero tar block"));
            }
            return Ok(None);
        }
        parse_header(&block).map(Some)
    }

    /// The next member, which must be a regular file called `name` (a header that is not
    /// there is truncation).
    fn expect(&mut self, name: &str) -> Result<TarHeader, BundleError> {
        let h = self
            .next_header()?
            .ok_or_else(|| corrupt(format!("archive ends where {name} was expected")))?;
        if !matches!(h.typeflag, b'0' | 0) {
            return Err(corrupt(format!(
                "member {:?} is a {}, only regular files are allowed (expected {name})",
                h.name,
                type_name(h.typeflag)
            )));
        }
        if h.name != name {
            return Err(corrupt(format!(
                "expected member {name}, found {:?}",
                h.name
            )));
        }
        Ok(h)
    }

    /// A whole small member (the signature) of at most `max` bytes.
    fn small_member(&mut self, name: &str, max: u64) -> Result<Vec<u8>, BundleError> {
        let h = self.expect(name)?;
        if h.size > max {
            return Err(BundleError::Limit(format!(
                "{name} is {} bytes, more than the limit {max}",
                h.size
            )));
        }
        let len = usize::try_from(h.size).map_err(|_| BundleError::Limit(name.into()))?;
        let mut data = vec![0u8; len];
        self.read_full(&mut data, name)?;
        self.padding(h.size, name)?;
        Ok(data)
    }

    /// The manifest member (at most `max` bytes), hashed as it is read: kept in pieces in
    /// memory, or written to `spool` when one is given.
    fn manifest_member(
        &mut self,
        max: u64,
        spool: Option<std::fs::File>,
    ) -> Result<ManifestBytes, BundleError> {
        use sha2::Sha512;
        let h = self.expect(MANIFEST_NAME)?;
        if h.size > max {
            return Err(BundleError::Limit(format!(
                "{MANIFEST_NAME} is {} bytes, more than the limit {max}",
                h.size
            )));
        }
        let len = usize::try_from(h.size).map_err(|_| BundleError::Limit(MANIFEST_NAME.into()))?;
        let mut hash = Sha512::new();
        let mut left = len;
        let store = match spool {
            None => {
                let mut pieces = std::collections::VecDeque::new();
                while left > 0 {
                    let mut piece = vec![0u8; left.min(MANIFEST_PIECE)];
                    self.read_full(&mut piece, MANIFEST_NAME)?;
                    hash.update(&piece);
                    left -= piece.len();
                    pieces.push_back(piece);
                }
                Store::Pieces(pieces)
            }
            Some(file) => {
                use std::io::Write;
                let spool_err = |e: io::Error| {
                    BundleError::Io(io::Error::new(
                        e.kind(),
                        format!("writing the manifest to its spool file: {e}"),
                    ))
                };
                file.set_len(0).map_err(spool_err)?;
                let mut out = io::BufWriter::with_capacity(MANIFEST_PIECE, &file);
                let mut piece = vec![0u8; len.min(MANIFEST_PIECE)];
                while left > 0 {
                    let piece = &mut piece[..left.min(MANIFEST_PIECE)];
                    self.read_full(piece, MANIFEST_NAME)?;
                    hash.update(&*piece);
                    out.write_all(piece).map_err(spool_err)?;
                    left -= piece.len();
                }
                out.flush().map_err(spool_err)?;
                drop(out);
                Store::Spool(file, h.size)
            }
        };
        self.padding(h.size, MANIFEST_NAME)?;
        Ok(ManifestBytes {
            store,
            sha512: hash.finalize().into(),
        })
    }

    /// The zero padding after a member of `size` bytes.
    fn padding(&mut self, size: u64, name: &str) -> Result<(), BundleError> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            let mut pad = [0u8; BLOCK];
            let pad = &mut pad[rem..];
            self.read_full(pad, name)?;
            if pad.iter().any(|&b| b != 0) {
                return Err(corrupt(format!("non-zero padding after {name}")));
            }
        }
        Ok(())
    }

    /// After the end-of-archive marker: only zero padding, then the end of the zstd frame
    /// (which checks its checksum), then the end of the source.
    fn finish(&mut self) -> Result<(), BundleError> {
        let mut buf = [0u8; 8192];
        let mut zeros = 0u64;
        loop {
            let n = self.read_some(&mut buf)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(corrupt("data after the end of the tar archive"));
            }
            zeros += n as u64;
            if zeros > MAX_TRAILING_ZEROS {
                return Err(corrupt("too much padding after the end of the tar archive"));
            }
        }
        let mut one = [0u8; 1];
        loop {
            match self.z.get_mut().read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(corrupt("data after the end of the zstd frame")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e)),
            }
        }
    }
}

/// The start of a bundle: the stream positioned at the first blob, and the two small members.
struct Head<R> {
    tar: Tar<R>,
    manifest: ManifestBytes,
    signature: Vec<u8>,
}

/// Bytes of the manifest read at a time: the pieces it is kept in until it is parsed.
const MANIFEST_PIECE: usize = 64 * 1024;

/// The manifest member as read: in pieces, so that parsing can free each as it goes (the
/// parsed manifest and its bytes are never both whole in memory), or in a spool file (none of
/// its bytes stay in memory), with the SHA-512 that the signature covers.
struct ManifestBytes {
    store: Store,
    sha512: [u8; 64],
}

enum Store {
    Pieces(std::collections::VecDeque<Vec<u8>>),
    /// The file and the manifest's length in it (the entries are spooled after it).
    Spool(std::fs::File, u64),
}

fn spool_read_err(e: io::Error) -> BundleError {
    BundleError::Io(io::Error::new(
        e.kind(),
        format!("reading the manifest back from its spool file: {e}"),
    ))
}

impl ManifestBytes {
    /// The bytes, whole (only the in-memory form is ever asked for them).
    fn to_vec(&self) -> Result<Vec<u8>, BundleError> {
        let mut out = Vec::new();
        self.reader()?
            .read_to_end(&mut out)
            .map_err(spool_read_err)?;
        Ok(out)
    }

    /// The number after the `"format":` key, found without parsing the JSON: in valid JSON
    /// that byte sequence is a key (a `"` inside a string is escaped), and the manifest has
    /// one such key, at the top level. `None` when it is missing or not a number.
    fn declared_format(&self) -> Result<Option<u64>, BundleError> {
        const KEY: &[u8] = b"\"format\":";
        let mut bytes = BufReader::with_capacity(MANIFEST_PIECE, self.reader()?).bytes();
        let mut matched = 0;
        for b in bytes.by_ref() {
            let b = b.map_err(spool_read_err)?;
            if b == KEY[matched] {
                matched += 1;
                if matched == KEY.len() {
                    break;
                }
            } else {
                // KEY's only `"` besides its first byte is the one before `:`.
                matched = usize::from(b == b'"');
            }
        }
        if matched != KEY.len() {
            return Ok(None);
        }
        let mut n: u64 = 0;
        let mut digits = 0;
        for b in bytes {
            let b = b.map_err(spool_read_err)?;
            if !b.is_ascii_digit() {
                break;
            }
            let Some(next) = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
            else {
                return Ok(None);
            };
            n = next;
            digits += 1;
        }
        Ok((digits > 0).then_some(n))
    }

    /// Reads the bytes from the start without consuming them.
    fn reader(&self) -> Result<Box<dyn Read + '_>, BundleError> {
        match &self.store {
            Store::Pieces(pieces) => Ok(Box::new(Pieces {
                pieces: pieces.iter().map(|p| p.as_slice()).collect(),
                pos: 0,
            })),
            Store::Spool(file, _) => {
                use std::io::Seek;
                let mut f = file;
                f.seek(io::SeekFrom::Start(0)).map_err(spool_read_err)?;
                Ok(Box::new(f))
            }
        }
    }

    /// Reads the bytes from the start, dropping each piece once it is read.
    fn into_reader(self) -> Result<Box<dyn Read>, BundleError> {
        match self.store {
            Store::Pieces(pieces) => Ok(Box::new(Pieces { pieces, pos: 0 })),
            Store::Spool(mut file, _) => {
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(0)).map_err(spool_read_err)?;
                Ok(Box::new(file))
            }
        }
    }
}

/// A reader over a queue of pieces, taking them from the front.
struct Pieces<P> {
    pieces: std::collections::VecDeque<P>,
    /// Bytes of the front piece already read.
    pos: usize,
}

impl<P: AsRef<[u8]>> Read for Pieces<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(front) = self.pieces.front() {
            let rest = &front.as_ref()[self.pos..];
            if rest.is_empty() {
                self.pieces.pop_front();
                self.pos = 0;
                continue;
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Reads the zstd frame header, the manifest and the signature, checking nothing but form
/// and limits.
fn read_head<R: Read>(
    mut src: R,
    limits: &Limits,
    spool: Option<std::fs::File>,
) -> Result<Head<R>, BundleError> {
    let mut peek = vec![0u8; FRAME_HEADER_MAX];
    let mut got = 0;
    while got < peek.len() {
        match src.read(&mut peek[got..]) {
            Ok(0) => break,
            Ok(n) => got = (got + n).min(peek.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::Io(e)),
        }
    }
    peek.truncate(got);
    check_frame_header(&peek, limits)?;

    let mut z =
        zstd::stream::read::Decoder::new(Cursor::new(peek).chain(Source(src)))?.single_frame();
    z.window_log_max(limits.window_log_max).map_err(|e| {
        BundleError::Limit(format!("window_log_max {}: {e}", limits.window_log_max))
    })?;
    let mut tar = Tar { z };
    let max = if spool.is_some() {
        limits.max_spooled_manifest_bytes
    } else {
        limits.max_manifest_bytes
    };
    let manifest = tar.manifest_member(max, spool)?;
    let signature = tar.small_member(SIGNATURE_NAME, limits.max_signature_bytes)?;
    Ok(Head {
        tar,
        manifest,
        signature,
    })
}

/// Parses and structurally validates signed manifest bytes, freeing them as they are parsed.
/// Spooled bytes are parsed with the entries going to the spool file (after the bytes), one
/// at a time: the manifest comes back without them, and they come back as a spool.
fn parse_manifest(
    bytes: ManifestBytes,
    limits: &Limits,
) -> Result<(Manifest, Option<EntrySpool>), BundleError> {
    // Look at the format first, so a newer manifest gets a clear message rather than a
    // complaint about a field this version does not know.
    if let Some(format) = bytes.declared_format()? {
        if format != u64::from(FORMAT_VERSION) {
            return Err(corrupt(format!(
                "manifest format {format} is not supported (this kiln reads format {FORMAT_VERSION})"
            )));
        }
    }
    let sha512 = bytes.sha512;
    let spool = match &bytes.store {
        Store::Spool(file, len) => Some((file.try_clone().map_err(spool_read_err)?, *len)),
        Store::Pieces(_) => None,
    };
    // The entries are appended after the manifest's bytes while those are read.
    let len = spool.as_ref().map_or(u64::MAX, |(_, len)| *len);
    let reader = BufReader::with_capacity(MANIFEST_PIECE, bytes.into_reader()?.take(len));
    let (m, entries) = crate::entries::parse_entries(spool, || {
        serde_json::from_reader::<_, Manifest<crate::entries::Streamed>>(reader)
    })?
    .map_err(|e| corrupt(format!("manifest does not parse: {e}")))?;
    let mut m = m.with_entries(Vec::new());
    if m.canonical_sha512_with(&mut entries.iter())? != sha512 {
        return Err(corrupt("manifest is not in canonical form"));
    }
    validate_entries(&m, &entries, limits)?;
    Ok(match entries {
        EntryList::Spool(spool) => (m, Some(spool)),
        EntryList::Mem(v) => {
            m.entries = v;
            (m, None)
        }
    })
}

/// Opens a bundle: checks the zstd header, reads the manifest and its signature, verifies the
/// signature and that its key is trusted (before the manifest is even parsed), then parses and
/// validates the manifest. The blobs are checked by [`VerifiedBundle::for_each_blob`].
pub fn open<R: Read>(
    src: R,
    trust: &TrustStore,
    limits: &Limits,
) -> Result<VerifiedBundle<R>, BundleError> {
    open_with(src, trust, limits, true, None)
}

/// [`open`] for a small machine: the manifest's bytes are not kept
/// ([`VerifiedBundle::manifest_bytes`] is empty) and are freed piece by piece as they are
/// parsed, so the peak is the parsed manifest rather than it plus its bytes (about a third
/// less for a bundle of many small files). What is checked, and in what order, is the same.
pub fn open_lean<R: Read>(
    src: R,
    trust: &TrustStore,
    limits: &Limits,
) -> Result<VerifiedBundle<R>, BundleError> {
    open_with(src, trust, limits, false, None)
}

/// [`open_lean`] for a manifest of any size up to
/// [`Limits::max_spooled_manifest_bytes`]: its bytes go to `spool` (an empty file opened for
/// reading and writing, best an unnamed one on a disk, not a tmpfs) as they are read and
/// hashed, and are parsed from there, so none of them are held in memory. What is checked,
/// and in what order, is the same.
pub fn open_spooled<R: Read>(
    src: R,
    trust: &TrustStore,
    limits: &Limits,
    spool: std::fs::File,
) -> Result<VerifiedBundle<R>, BundleError> {
    open_with(src, trust, limits, false, Some(spool))
}

fn open_with<R: Read>(
    src: R,
    trust: &TrustStore,
    limits: &Limits,
    keep_bytes: bool,
    spool: Option<std::fs::File>,
) -> Result<VerifiedBundle<R>, BundleError> {
    let Head {
        tar,
        manifest,
        signature,
    } = read_head(src, limits, spool)?;
    let mut signer = sshsig::verify_sha512(&signature, NAMESPACE, &manifest.sha512)?;
    trust.check(&signer)?;
    if let Some(known) = trust.trusted().find(|k| **k == signer) {
        signer.comment = known.comment.clone();
    }
    let manifest_bytes = if keep_bytes {
        manifest.to_vec()?
    } else {
        Vec::new()
    };
    let (manifest, spooled_entries) = parse_manifest(manifest, limits)?;
    Ok(VerifiedBundle {
        manifest,
        spooled_entries,
        manifest_bytes,
        signature,
        signer,
        tar,
    })
}

/// Reads and validates the manifest without checking who signed it (for `kiln inspect`).
/// Returns the manifest, its bytes and the signature bytes; nothing here is trusted.
pub fn read_manifest_unverified<R: Read>(
    src: R,
    limits: &Limits,
) -> Result<(Manifest, Vec<u8>, Vec<u8>), BundleError> {
    let Head {
        manifest: bytes,
        signature,
        ..
    } = read_head(src, limits, None)?;
    let kept = bytes.to_vec()?;
    let (manifest, _) = parse_manifest(bytes, limits)?;
    Ok((manifest, kept, signature))
}

/// A bundle whose manifest is signed by a trusted key and structurally valid. Its blobs are
/// still unread: consume it with [`for_each_blob`](Self::for_each_blob) or
/// [`verify_blobs`](Self::verify_blobs) before trusting any of them.
pub struct VerifiedBundle<R> {
    /// The manifest; from [`open_spooled`] without its entries, which are in
    /// [`spooled_entries`](Self::spooled_entries).
    pub manifest: Manifest,
    /// From [`open_spooled`]: the manifest's entries, in its spool file.
    pub spooled_entries: Option<EntrySpool>,
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    /// The key that signed the manifest (with its comment from the trust store).
    pub signer: PublicKey,
    tar: Tar<R>,
}

impl<R> fmt::Debug for VerifiedBundle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBundle")
            .field("hostgroup", &self.manifest.hostgroup)
            .field("version", &self.manifest.version)
            .field("blobs", &self.manifest.blobs.len())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl<R: Read> VerifiedBundle<R> {
    /// Hands each blob, in manifest order, to `f` with a reader that hashes what it returns
    /// and fails with `InvalidData` at the end of a blob whose sha256 is wrong. What `f` does
    /// not read is read and checked anyway. Afterwards the archive and the zstd frame must end
    /// exactly (checksum verified, nothing appended). A damaged bundle gives
    /// `BundleError::Corrupt` even when `f` returned the reader's error.
    ///
    /// `f` sees a blob's bytes before they are known to be good: write them to a staging area
    /// and use them only after this returns `Ok`.
    pub fn for_each_blob<E: From<BundleError>>(
        mut self,
        mut f: impl FnMut(&Blob, &mut dyn Read) -> Result<(), E>,
    ) -> Result<(), E> {
        let tar = &mut self.tar;
        for blob in &self.manifest.blobs {
            let name = format!("blobs/{}", blob.digest);
            let h = tar.expect(&name)?;
            if h.size != blob.size {
                return Err(corrupt(format!(
                    "{name} is {} bytes in the archive, {} in the manifest",
                    h.size, blob.size
                ))
                .into());
            }
            let mut r = BlobReader {
                tar: &mut *tar,
                digest: &blob.digest,
                left: blob.size,
                hasher: Some(Sha256::new()),
                failure: None,
            };
            if let Err(e) = f(blob, &mut r) {
                return Err(r.failure.take().map(E::from).unwrap_or(e));
            }
            r.drain()?;
            tar.padding(blob.size, &name)?;
        }
        if let Some(h) = tar.next_header()? {
            return Err(corrupt(format!(
                "unexpected member {:?} ({}) after the last blob",
                h.name,
                type_name(h.typeflag)
            ))
            .into());
        }
        tar.finish()?;
        Ok(())
    }

    /// Reads every blob and checks it, keeping nothing.
    pub fn verify_blobs(self) -> Result<(), BundleError> {
        self.for_each_blob(|_, r| {
            io::copy(r, &mut io::sink())?;
            Ok::<(), BundleError>(())
        })
    }
}

/// One blob's bytes: at most its size, hashed as they are read, checked at its end.
struct BlobReader<'a, R> {
    tar: &'a mut Tar<R>,
    digest: &'a str,
    left: u64,
    hasher: Option<Sha256>,
    /// The first thing that went wrong; reported in place of the callback's own error.
    failure: Option<BundleError>,
}

impl<R: Read> BlobReader<'_, R> {
    fn fail(&mut self, e: BundleError) -> io::Error {
        let kind = match &e {
            BundleError::Io(io) => io.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        let err = io::Error::new(kind, e.to_string());
        self.failure.get_or_insert(e);
        err
    }

    fn check_digest(&mut self) {
        if let Some(h) = self.hasher.take() {
            let got = hex::encode(h.finalize());
            if got != self.digest {
                self.failure.get_or_insert(corrupt(format!(
                    "blob {}: content has sha256 {got}",
                    self.digest
                )));
            }
        }
    }

    /// Reads what the callback left and checks the digest.
    fn drain(&mut self) -> Result<(), BundleError> {
        let mut buf = [0u8; 16 * 1024];
        while self.failure.is_none() {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.check_digest();
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Read> Read for BlobReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
        if self.left == 0 {
            self.check_digest();
            return match &self.failure {
                Some(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
                None => Ok(0),
            };
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match self.tar.read_some(&mut buf[..want]) {
            Ok(0) => {
                let e = corrupt(format!(
                    "truncated: bundle ends inside blob {}",
                    self.digest
                ));
                Err(self.fail(e))
            }
            Ok(n) => {
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::manifest::{Entry, EntryKind};
    use crate::policy::{check_policy, Policy};
    use crate::testutil::*;
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use tar::EntryType;

    fn trust() -> TrustStore {
        TrustStore::from_keys(vec![signer().public()], vec![])
    }

    fn verify_all(bytes: &[u8]) -> Result<(), BundleError> {
        verify_with(bytes, &Limits::default())
    }

    fn verify_with(bytes: &[u8], limits: &Limits) -> Result<(), BundleError> {
        open(bytes, &trust(), limits)?.verify_blobs()
    }

    #[track_caller]
    fn expect_corrupt(res: Result<(), BundleError>, want: &str) {
        match res {
            Err(BundleError::Corrupt(msg)) => {
                assert!(
                    msg.contains(want),
                    "Corrupt({msg:?}) does not mention {want:?}"
                )
            }
            other => panic!("expected Corrupt({want}), got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_limit(res: Result<(), BundleError>, want: &str) {
        match res {
            Err(BundleError::Limit(msg)) => {
                assert!(
                    msg.contains(want),
                    "Limit({msg:?}) does not mention {want:?}"
                )
            }
            other => panic!("expected Limit({want}), got {other:?}"),
        }
    }

    /// A hand-made tar whose manifest lists `blobs` and is signed by the trusted key.
    fn signed_head(blobs: &[Vec<u8>]) -> RawTar {
        let mut t = RawTar::default();
        t.head(&manifest_for(blobs), &signer());
        t
    }

    fn four_blobs() -> Vec<Vec<u8>> {
        vec![
            b"motd\n".to_vec(),
            noise(3, 100),
            b"tmpl".to_vec(),
            noise(4, 50),
        ]
    }

    /// The blobs of `four_blobs`, in manifest (digest) order.
    fn in_order(blobs: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let by_digest: BTreeMap<String, Vec<u8>> =
            blobs.iter().map(|b| (sha256_hex(b), b.clone())).collect();
        by_digest.into_values().collect()
    }

    #[test]
    fn lean_open_reads_a_manifest_of_many_pieces_like_open() {
        let blobs: Vec<Vec<u8>> = (0..3000)
            .map(|i| noise(i, 16 + (i as usize % 50)))
            .collect();
        let manifest = manifest_for(&blobs);
        let by_digest: BTreeMap<String, Vec<u8>> =
            blobs.iter().map(|b| (sha256_hex(b), b.clone())).collect();
        let bundle = bundle_of(&manifest, &by_digest, &signer());
        let json = manifest.to_canonical_json();
        assert!(json.len() > 4 * MANIFEST_PIECE, "{} bytes", json.len());
        let full = open(&bundle[..], &trust(), &Limits::default()).unwrap();
        assert_eq!(full.manifest_bytes, json);
        let lean = open_lean(&bundle[..], &trust(), &Limits::default()).unwrap();
        assert!(lean.manifest_bytes.is_empty());
        assert_eq!(lean.manifest, manifest);
        assert_eq!(lean.signer, full.signer);
        lean.verify_blobs().unwrap();

        // The same refusal: a signature over other bytes than the manifest's.
        let mut other = manifest.clone();
        other.version += 1;
        let sig = sshsig::sign(&signer(), NAMESPACE, &json);
        let forged = RawTar::default()
            .file(MANIFEST_NAME, &other.to_canonical_json())
            .file(SIGNATURE_NAME, sig.as_bytes())
            .finish();
        assert!(matches!(
            open_lean(&forged[..], &trust(), &Limits::default()),
            Err(BundleError::BadSignature(_))
        ));
    }

    #[test]
    fn declared_format_is_found_across_pieces() {
        let of = |text: &str, at: usize| {
            let b = text.as_bytes();
            ManifestBytes {
                store: Store::Pieces([b[..at].to_vec(), b[at..].to_vec()].into()),
                sha512: [0; 64],
            }
            .declared_format()
            .unwrap()
        };
        let text = r#"{"a":"x\"format\":9","b":"\"\"format","format":12,"z":1}"#;
        for at in 0..text.len() {
            assert_eq!(of(text, at), Some(12), "split at {at}");
        }
        assert_eq!(of(r#"{"formats":1}"#, 3), None);
        assert_eq!(of(r#"{""format":7}"#, 3), Some(7));
        assert_eq!(of(r#"{"format":"1"}"#, 3), None);
        assert_eq!(of(r#"{"format":99999999999999999999999}"#, 3), None);
    }

    #[test]
    fn pieces_read_in_any_buffer_size() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let pieces = ManifestBytes {
            store: Store::Pieces(
                data.chunks(97)
                    .map(<[u8]>::to_vec)
                    .chain([vec![]])
                    .collect(),
            ),
            sha512: [0; 64],
        };
        for size in [1, 7, 97, 98, 4096] {
            let mut out = Vec::new();
            let mut r = pieces.reader().unwrap();
            let mut buf = vec![0u8; size];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, data, "buffer of {size}");
        }
        assert_eq!(pieces.to_vec().unwrap(), data);
        let mut all = Vec::new();
        pieces.into_reader().unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
    }

    /// A manifest larger than the in-memory cap: refused by the readers that hold its bytes,
    /// read through a spool file by `open_spooled` (whose cap is its own), and the same
    /// manifest comes out.
    #[test]
    fn spooled_manifest_has_its_own_cap() {
        let mut m = sample_manifest();
        for i in 0..400 {
            m.entries.push(Entry {
                path: format!("/srv/many/l{i:04}"),
                kind: EntryKind::Symlink {
                    target: "x".repeat(4000),
                },
            });
        }
        m.entries.sort_by(|a, b| a.path.cmp(&b.path));
        let bundle = bundle_of(&m, &sample_blobs(), &signer());
        let size = m.to_canonical_json().len() as u64;
        let limits = Limits {
            max_manifest_bytes: size - 1,
            max_spooled_manifest_bytes: size,
            ..Limits::default()
        };
        let e = open_lean(&bundle[..], &trust(), &limits).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "manifest.json is {size} bytes, more than the limit"
            )),
            "{e}"
        );
        let spool = tempfile::tempfile().unwrap();
        let mut b =
            open_spooled(&bundle[..], &trust(), &limits, spool.try_clone().unwrap()).unwrap();
        let mut without_entries = m.clone();
        without_entries.entries.clear();
        assert_eq!(b.manifest, without_entries);
        let entries = crate::EntryList::Spool(b.spooled_entries.take().unwrap());
        let back: Vec<_> = entries.iter().map(|e| e.unwrap().into_owned()).collect();
        assert_eq!(
            back, m.entries,
            "the entries are in the spool, after the bytes"
        );
        assert!(b.manifest_bytes.is_empty());
        b.verify_blobs().unwrap();
        let mut head = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&spool, &mut head, 0).unwrap();
        assert_eq!(head, m.to_canonical_json(), "the bytes went to the spool");
        let tight = Limits {
            max_spooled_manifest_bytes: size - 1,
            ..limits
        };
        let e =
            open_spooled(&bundle[..], &trust(), &tight, tempfile::tempfile().unwrap()).unwrap_err();
        assert!(matches!(e, BundleError::Limit(_)), "{e}");
    }

    #[test]
    fn round_trip() {
        let bundle = sample_bundle();
        let b = open(&bundle[..], &trust(), &Limits::default()).unwrap();
        assert_eq!(b.manifest, sample_manifest());
        assert_eq!(b.manifest_bytes, sample_manifest().to_canonical_json());
        assert_eq!(b.signer, signer().public());
        assert_eq!(b.signer.comment, "release@kiln");
        let mut got = BTreeMap::new();
        b.for_each_blob(|blob, r| {
            let mut data = Vec::new();
            r.read_to_end(&mut data)?;
            assert_eq!(data.len() as u64, blob.size);
            got.insert(blob.digest.clone(), data);
            Ok::<(), BundleError>(())
        })
        .unwrap();
        assert_eq!(got, sample_blobs());
        verify_all(&bundle).unwrap();
        // The hand-written tar path agrees with the writer.
        let blobs = four_blobs();
        let mut t = signed_head(&blobs);
        for b in in_order(&blobs) {
            t.blob(&b);
        }
        verify_all(&t.finish()).unwrap();
    }

    #[test]
    fn callback_reads_part_and_the_rest_is_checked() {
        let bundle = sample_bundle();
        let mut seen = 0;
        open(&bundle[..], &trust(), &Limits::default())
            .unwrap()
            .for_each_blob(|_, r| {
                let mut two = [0u8; 2];
                let _ = r.read(&mut two)?;
                seen += 1;
                Ok::<(), BundleError>(())
            })
            .unwrap();
        assert_eq!(seen, sample_manifest().blobs.len());
    }

    #[derive(Debug)]
    enum AppError {
        Bundle(BundleError),
        Mine(&'static str),
    }

    impl From<BundleError> for AppError {
        fn from(e: BundleError) -> Self {
            AppError::Bundle(e)
        }
    }

    impl From<io::Error> for AppError {
        fn from(_: io::Error) -> Self {
            AppError::Mine("io")
        }
    }

    #[test]
    fn wrong_blob_content_fails_at_its_end() {
        let blobs = four_blobs();
        let ordered = in_order(&blobs);
        let mut t = signed_head(&blobs);
        // Same size and name, one byte different.
        let mut bad = ordered[0].clone();
        bad[0] ^= 1;
        t.file(&format!("blobs/{}", sha256_hex(&ordered[0])), &bad);
        for b in &ordered[1..] {
            t.blob(b);
        }
        let bytes = t.finish();

        // The reader hands out the bytes but fails with InvalidData at EOF...
        let mut kinds = Vec::new();
        let res = open(&bytes[..], &trust(), &Limits::default())
            .unwrap()
            .for_each_blob(|_, r| {
                let mut data = Vec::new();
                let e = r.read_to_end(&mut data).unwrap_err();
                kinds.push(e.kind());
                assert!(e.to_string().contains("content has sha256"), "{e}");
                Err(AppError::from(e))
            });
        assert_eq!(kinds, vec![io::ErrorKind::InvalidData]);
        // ...and the caller gets Corrupt, not its own wrapping of the io error.
        match res {
            Err(AppError::Bundle(BundleError::Corrupt(msg))) => assert!(msg.contains("sha256")),
            other => panic!("{other:?}"),
        }
        // A callback that reads nothing still gets the refusal.
        let res = open(&bytes[..], &trust(), &Limits::default())
            .unwrap()
            .for_each_blob(|_, _| Ok::<(), AppError>(()));
        assert!(matches!(
            res,
            Err(AppError::Bundle(BundleError::Corrupt(_)))
        ));
        expect_corrupt(verify_all(&bytes), "content has sha256");
        // The callback's own error passes through when the bundle is fine.
        let res = open(&sample_bundle()[..], &trust(), &Limits::default())
            .unwrap()
            .for_each_blob(|_, _| Err(AppError::Mine("disk full")));
        assert!(matches!(res, Err(AppError::Mine("disk full"))));
    }

    /// A bundle of about 2 KB for the exhaustive damage tests (each case costs a signature
    /// check, which is slow in debug builds).
    fn small_bundle() -> Vec<u8> {
        let blobs = vec![
            b"motd\n".to_vec(),
            noise(5, 300),
            b"tmpl".to_vec(),
            noise(6, 100),
        ];
        let map = blobs.iter().map(|b| (sha256_hex(b), b.clone())).collect();
        bundle_of(&manifest_for(&blobs), &map, &signer())
    }

    /// A damaged bundle that verifies must decode to exactly the original bytes. zstd's
    /// compressed form is not canonical: a match offset changed to point at other identical
    /// bytes (tar headers are mostly zeros) decodes to the same stream and the same checksum.
    /// Such a change alters nothing the bundle says, so it is the one acceptable outcome.
    #[track_caller]
    fn assert_same_content(damaged: &[u8], original: &[u8], what: &str) {
        let d = zstd::stream::decode_all(damaged).unwrap_or_default();
        assert!(
            d == decompress(original),
            "{what}: accepted with different content"
        );
    }

    /// Flips one byte at every position `i` with `i % 2 == parity` (two tests, so the two
    /// halves run in parallel), cycling through three flip patterns.
    fn flip_every_byte(parity: usize) {
        let bundle = small_bundle();
        assert!(
            (1500..3000).contains(&bundle.len()),
            "fixture is {} bytes",
            bundle.len()
        );
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in (parity..bundle.len()).step_by(2) {
            let flip = [0x01u8, 0x80, 0xff][(i / 2) % 3];
            let mut b = bundle.clone();
            b[i] ^= flip;
            let kind = match verify_all(&b) {
                Ok(()) => {
                    assert_same_content(&b, &bundle, &format!("flip {flip:#x} at {i}"));
                    "same content"
                }
                Err(BundleError::Corrupt(_)) => "corrupt",
                Err(BundleError::Limit(_)) => "limit",
                Err(BundleError::BadSignature(_)) => "signature",
                Err(other) => panic!("flip at {i}: unexpected {other:?}"),
            };
            *counts.entry(kind).or_default() += 1;
        }
        eprintln!("{} byte bundle: {counts:?}", bundle.len());
    }

    #[test]
    fn every_flipped_byte_is_refused_even() {
        flip_every_byte(0);
    }

    #[test]
    fn every_flipped_byte_is_refused_odd() {
        flip_every_byte(1);
    }

    /// Spread positions of a larger bundle, all three patterns, reading blobs via callback.
    #[test]
    fn flipped_bytes_in_a_larger_bundle_are_refused() {
        let bundle = sample_bundle();
        let step = (bundle.len() / 100).max(1);
        for i in (0..bundle.len()).step_by(step).chain([bundle.len() - 1]) {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bundle.clone();
                b[i] ^= flip;
                let res = open(&b[..], &trust(), &Limits::default()).and_then(|v| {
                    v.for_each_blob(|_, r| {
                        io::copy(r, &mut io::sink())?;
                        Ok::<(), BundleError>(())
                    })
                });
                match res {
                    Ok(()) => assert_same_content(&b, &bundle, &format!("flip {flip:#x} at {i}")),
                    Err(
                        BundleError::Corrupt(_)
                        | BundleError::Limit(_)
                        | BundleError::BadSignature(_),
                    ) => {}
                    Err(other) => panic!("flip {flip:#x} at {i}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bundle = small_bundle();
        for len in 0..bundle.len() {
            expect_corrupt(verify_all(&bundle[..len]), "");
        }
        // Truncating the tar inside an intact zstd frame is refused as well.
        let tar_bytes = decompress(&bundle);
        for len in (0..tar_bytes.len())
            .step_by(97)
            .chain([tar_bytes.len() - 512, tar_bytes.len() - 1])
        {
            expect_corrupt(verify_all(&compress(&tar_bytes[..len], 3, 19, false)), "");
        }
    }

    #[test]
    fn appended_bytes_are_refused() {
        let bundle = sample_bundle();
        let skippable = [0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        let empty_frame = compress(b"", 3, 19, false);
        for tail in [
            &[0u8][..],
            b"\n",
            b"garbage",
            &skippable,
            &empty_frame,
            &bundle,
        ] {
            let mut b = bundle.clone();
            b.extend_from_slice(tail);
            expect_corrupt(verify_all(&b), "after the end of the zstd frame");
        }
        // Inside the frame: a member after the last blob, or data after the end marker.
        let mut tar_bytes = decompress(&bundle);
        let end = tar_bytes.len() - 1024;
        let mut extra = tar_bytes[..end].to_vec();
        let mut t = RawTar {
            out: std::mem::take(&mut extra),
        };
        t.file("blobs/extra", b"x");
        expect_corrupt(verify_all(&t.finish()), "after the last blob");
        tar_bytes.extend_from_slice(b"trailing");
        expect_corrupt(
            verify_all(&compress(&tar_bytes, 3, 19, false)),
            "after the end of the tar",
        );
        // A tar record's zero padding is fine (GNU tar pads to 10 KiB).
        let mut padded = decompress(&bundle);
        padded.resize(padded.len().div_ceil(10240) * 10240, 0);
        verify_all(&compress(&padded, 3, 19, false)).unwrap();
    }

    #[test]
    fn untrusted_and_revoked_keys() {
        let stranger = bundle_of(&sample_manifest(), &sample_blobs(), &other_key());
        match open(&stranger[..], &trust(), &Limits::default()) {
            Err(BundleError::UntrustedKey { fingerprint }) => {
                assert_eq!(fingerprint, other_key().public().fingerprint())
            }
            other => panic!("{other:?}"),
        }
        let revoked = TrustStore::from_keys(vec![signer().public()], vec![signer().public()]);
        match open(&sample_bundle()[..], &revoked, &Limits::default()) {
            Err(BundleError::RevokedKey { fingerprint }) => {
                assert_eq!(fingerprint, signer().public().fingerprint())
            }
            other => panic!("{other:?}"),
        }
        // kiln inspect can still read it, trusting nothing.
        let (m, bytes, sig) = read_manifest_unverified(&stranger[..], &Limits::default()).unwrap();
        assert_eq!(m, sample_manifest());
        assert_eq!(
            sshsig::verify(&sig, NAMESPACE, &bytes).unwrap(),
            other_key().public()
        );
    }

    #[test]
    fn signature_must_match_the_manifest() {
        let m = sample_manifest();
        let json = m.to_canonical_json();
        let mut other = m.clone();
        other.version = 8;
        // A valid signature of a different manifest.
        let sig = sshsig::sign(&signer(), NAMESPACE, &other.to_canonical_json());
        let mut t = RawTar::default();
        t.file(MANIFEST_NAME, &json)
            .file(SIGNATURE_NAME, sig.as_bytes());
        let res = open(&t.finish()[..], &trust(), &Limits::default()).map(|_| ());
        assert!(matches!(res, Err(BundleError::BadSignature(_))), "{res:?}");
        // A signature for another namespace.
        let sig = sshsig::sign(&signer(), "git", &json);
        let mut t = RawTar::default();
        t.file(MANIFEST_NAME, &json)
            .file(SIGNATURE_NAME, sig.as_bytes());
        let res = open(&t.finish()[..], &trust(), &Limits::default()).map(|_| ());
        assert!(matches!(res, Err(BundleError::BadSignature(ref s)) if s.contains("namespace")));
    }

    #[test]
    fn expired_bundle_is_refused_by_policy() {
        let bundle = sample_bundle();
        let b = open(&bundle[..], &trust(), &Limits::default()).unwrap();
        let policy = Policy {
            now: humantime::parse_rfc3339("2031-01-01T00:00:00Z").unwrap(),
            hostgroup: Some("web".into()),
            min_version: None,
            base: None,
        };
        assert!(matches!(
            check_policy(&b.manifest, &policy),
            Err(BundleError::Expired { .. })
        ));
    }

    #[test]
    fn only_regular_files_are_members() {
        let blobs = four_blobs();
        let ordered = in_order(&blobs);
        let first = format!("blobs/{}", sha256_hex(&ordered[0]));
        let cases: Vec<(EntryType, Option<&str>, &str)> = vec![
            (EntryType::Symlink, Some("/etc/shadow"), "symlink"),
            (EntryType::Link, Some("kiln/manifest.json"), "hard link"),
            (EntryType::Char, None, "character device"),
            (EntryType::Block, None, "block device"),
            (EntryType::Fifo, None, "FIFO"),
            (EntryType::Directory, None, "directory"),
            (EntryType::XHeader, None, "pax extended header"),
            (EntryType::GNULongName, None, "GNU long name"),
        ];
        for (kind, link, want) in cases {
            let mut t = signed_head(&blobs);
            t.member(first.as_bytes(), kind, 0, &[], link);
            expect_corrupt(verify_all(&t.finish()), want);
        }
        // The same at the manifest's place.
        let mut t = RawTar::default();
        t.member(
            MANIFEST_NAME.as_bytes(),
            EntryType::Symlink,
            0,
            &[],
            Some("/etc/passwd"),
        );
        expect_corrupt(verify_all(&t.finish()), "symlink");
    }

    #[test]
    fn members_must_be_exactly_what_the_manifest_lists() {
        let blobs = four_blobs();
        let ordered = in_order(&blobs);

        // An unlisted blob among the listed ones.
        let mut t = signed_head(&blobs);
        t.blob(&ordered[0]).blob(b"not in the manifest");
        for b in &ordered[1..] {
            t.blob(b);
        }
        expect_corrupt(verify_all(&t.finish()), "expected member blobs/");

        // A blob whose header size differs from the manifest (content self-consistent).
        let mut t = signed_head(&blobs);
        let mut longer = ordered[0].clone();
        longer.push(b'!');
        t.file(&format!("blobs/{}", sha256_hex(&ordered[0])), &longer);
        expect_corrupt(verify_all(&t.finish()), "in the archive");

        // The same blob twice.
        let mut t = signed_head(&blobs);
        t.blob(&ordered[0]).blob(&ordered[0]);
        expect_corrupt(verify_all(&t.finish()), "expected member");
        let mut t = signed_head(&blobs);
        for b in &ordered {
            t.blob(b);
        }
        t.blob(&ordered[3]);
        expect_corrupt(verify_all(&t.finish()), "after the last blob");

        // Out of order.
        let mut t = signed_head(&blobs);
        for b in ordered.iter().rev() {
            t.blob(b);
        }
        expect_corrupt(verify_all(&t.finish()), "expected member");

        // A blob missing at the end.
        let mut t = signed_head(&blobs);
        for b in &ordered[..3] {
            t.blob(b);
        }
        expect_corrupt(verify_all(&t.finish()), "archive ends where");

        // Path tricks in member names.
        for name in ["../x", "/etc/passwd", "blobs/../kiln/manifest.json"] {
            let mut t = signed_head(&blobs);
            t.member(name.as_bytes(), EntryType::Regular, 1, b"x", None);
            expect_corrupt(verify_all(&t.finish()), "expected member");
        }
        let mut t = RawTar::default();
        t.member(b"../kiln/manifest.json", EntryType::Regular, 2, b"{}", None);
        expect_corrupt(
            verify_all(&t.finish()),
            "expected member kiln/manifest.json",
        );

        // Signature before manifest.
        let m = manifest_for(&blobs);
        let json = m.to_canonical_json();
        let mut t = RawTar::default();
        t.file(
            SIGNATURE_NAME,
            sshsig::sign(&signer(), NAMESPACE, &json).as_bytes(),
        )
        .file(MANIFEST_NAME, &json);
        expect_corrupt(
            verify_all(&t.finish()),
            "expected member kiln/manifest.json",
        );

        // Non-zero padding after a member.
        let mut t = signed_head(&blobs);
        t.blob(&ordered[0]);
        let last = t.out.len() - 1;
        t.out[last] = 1;
        expect_corrupt(verify_all(&t.finish()), "padding");

        // A header with a bad checksum.
        let mut t = signed_head(&blobs);
        let at = t.out.len();
        t.blob(&ordered[0]);
        t.out[at + 100] ^= 1; // mode field
        expect_corrupt(verify_all(&t.finish()), "checksum");
    }

    #[test]
    fn signed_but_invalid_manifests_are_refused() {
        let blobs = four_blobs();
        let ordered = in_order(&blobs);
        let with = |edit: &dyn Fn(&mut Manifest)| {
            let mut m = manifest_for(&blobs);
            edit(&mut m);
            let mut t = RawTar::default();
            t.head(&m, &signer());
            for b in &ordered {
                t.blob(b);
            }
            verify_all(&t.finish())
        };
        expect_corrupt(
            with(&|m| m.entries[1].path = "/etc/../etc/shadow".into()),
            "has a \".\" or \"..\" component",
        );
        expect_corrupt(
            with(&|m| m.entries[1].path = "etc/motd".into()),
            "not absolute",
        );
        expect_corrupt(
            with(&|m| {
                let dup = m.entries[1].clone();
                m.entries.insert(1, dup)
            }),
            "duplicate path",
        );
        expect_corrupt(
            with(&|m| m.templates[0].path = "/etc/motd".into()),
            "duplicate path",
        );
        expect_corrupt(
            with(&|m| {
                m.entries.push(Entry {
                    path: "/x".into(),
                    kind: EntryKind::Directory {
                        mode: "rwx".into(),
                        owner: "r".into(),
                        group: "r".into(),
                    },
                })
            }),
            "mode",
        );
        expect_corrupt(
            with(&|m| {
                if let EntryKind::File { size, .. } = &mut m.entries[1].kind {
                    *size += 1;
                }
            }),
            "differs from blob",
        );
        expect_corrupt(
            with(&|m| {
                if let EntryKind::File { digest, .. } = &mut m.entries[1].kind {
                    *digest = "0".repeat(64);
                }
            }),
            "not in the blob list",
        );
        expect_corrupt(with(&|m| m.packages.clear()), "nothing uses it");
        expect_corrupt(with(&|m| m.blobs.swap(0, 1)), "sorted");
        expect_corrupt(
            with(&|m| m.blobs[0].digest = m.blobs[0].digest.to_uppercase()),
            "lowercase hex",
        );
        expect_corrupt(with(&|m| m.expires = "2030-01-01".into()), "RFC 3339");
        expect_corrupt(with(&|m| m.format = 2), "format 2 is not supported");
    }

    #[test]
    fn a_newer_format_with_fields_this_version_does_not_know_says_so() {
        let blobs = four_blobs();
        let json = String::from_utf8(manifest_for(&blobs).to_canonical_json()).unwrap();
        let newer = json.replace("\"format\":1", "\"format\":2").replacen(
            '{',
            "{\"aaa_new\":{\"x\":1},",
            1,
        );
        assert_ne!(newer, json);
        let mut t = RawTar::default();
        t.head_bytes(newer.as_bytes(), &signer());
        for b in in_order(&blobs) {
            t.blob(&b);
        }
        for res in [
            verify_all(&t.finish()),
            open_lean(&t.finish()[..], &trust(), &Limits::default()).map(|_| ()),
        ] {
            expect_corrupt(res, "manifest format 2 is not supported");
        }
    }

    #[test]
    fn manifest_bytes_must_be_canonical() {
        let blobs = four_blobs();
        let ordered = in_order(&blobs);
        let m = manifest_for(&blobs);
        let canonical = m.to_canonical_json();
        let value: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let mut unknown = value.clone();
        unknown["extra"] = serde_json::json!(true);
        let unknown = serde_json::to_vec(&unknown).unwrap();
        let mut nested = value.clone();
        nested["entries"][1]["setuid"] = serde_json::json!(true);
        let nested = serde_json::to_vec(&nested).unwrap();
        let mut no_newline = canonical.clone();
        no_newline.pop();
        for (json, want) in [
            (pretty, "canonical"),
            (unknown, "unknown field"),
            (nested, ""),
            (no_newline, "canonical"),
            (b"[]".to_vec(), "does not parse"),
            (b"not json".to_vec(), "does not parse"),
        ] {
            let mut t = RawTar::default();
            t.head_bytes(&json, &signer());
            for b in &ordered {
                t.blob(b);
            }
            expect_corrupt(verify_all(&t.finish()), want);
        }
    }

    #[test]
    fn limits_are_enforced() {
        let bundle = sample_bundle();
        let d = Limits::default;
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    max_manifest_bytes: 100,
                    ..d()
                },
            ),
            "manifest.json is",
        );
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    max_signature_bytes: 100,
                    ..d()
                },
            ),
            "sig is",
        );
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    max_entries: 3,
                    ..d()
                },
            ),
            "entries",
        );
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    max_blob_bytes: 500,
                    ..d()
                },
            ),
            "blob",
        );
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    max_total_bytes: 1000,
                    ..d()
                },
            ),
            "total",
        );
        expect_limit(
            verify_with(
                &bundle,
                &Limits {
                    window_log_max: 20,
                    ..d()
                },
            ),
            "window",
        );
        verify_with(
            &bundle,
            &Limits {
                window_log_max: 21,
                ..d()
            },
        )
        .unwrap();
        let limits = Limits {
            max_manifest_bytes: 100,
            ..d()
        };
        assert!(matches!(
            read_manifest_unverified(&bundle[..], &limits),
            Err(BundleError::Limit(_))
        ));
    }

    #[test]
    fn not_a_proper_zstd_frame() {
        let tar_bytes = decompress(&sample_bundle());
        expect_corrupt(verify_all(b""), "bad magic");
        expect_corrupt(verify_all(&tar_bytes), "bad magic");
        // No content checksum.
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        z.include_checksum(false).unwrap();
        z.write_all(&tar_bytes).unwrap();
        expect_corrupt(verify_all(&z.finish().unwrap()), "no content checksum");
        // A skippable frame in front.
        let mut b = vec![0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0];
        b.extend_from_slice(&sample_bundle());
        expect_corrupt(verify_all(&b), "bad magic");
        // Two frames, each half of the tar.
        let mut b = compress(&tar_bytes[..1024], 3, 19, false);
        b.extend(compress(&tar_bytes[1024..], 3, 19, false));
        expect_corrupt(verify_all(&b), "");
    }

    /// A frame needing a 128 MiB window (long-distance matching over a large input) is
    /// refused from its header, before a decoder exists; the decoder would refuse it too.
    #[test]
    fn large_window_is_refused() {
        let chunk = noise(9, 1 << 20);
        let mut big = chunk.clone();
        big.resize(9 << 20, 0);
        big.extend_from_slice(&chunk);
        let blobs = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), big];
        let m = manifest_for(&blobs);
        let map = blobs.iter().map(|b| (sha256_hex(b), b.clone())).collect();
        let tar_bytes = decompress(&bundle_of(&m, &map, &signer()));
        let wide = compress(&tar_bytes, 3, 27, true);
        assert_eq!(wide[5] >> 3, 27 - 10, "window descriptor");
        // Far smaller than its content: the repeat 9 MiB back was found.
        assert!(wide.len() < (3 << 20), "{}", wide.len());
        expect_limit(verify_all(&wide), "window");
        let err = read_manifest_unverified(&wide[..], &Limits::default()).unwrap_err();
        assert!(matches!(err, BundleError::Limit(_)));

        // Defence in depth: the decoder itself is capped.
        let mut z = zstd::stream::read::Decoder::new(&wide[..])
            .unwrap()
            .single_frame();
        z.window_log_max(Limits::default().window_log_max).unwrap();
        let e = io::copy(&mut z, &mut io::sink()).unwrap_err();
        assert!(matches!(classify(e), BundleError::Corrupt(_)));
    }

    /// A failing source is an I/O error, not a corrupt bundle.
    #[test]
    fn source_errors_are_io() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "peer went away",
                    ));
                }
                let n = self.0.read(buf)?;
                Ok(n)
            }
        }
        let bundle = sample_bundle();
        for cut in [0, 10, bundle.len() / 2, bundle.len() - 1] {
            let res = open(Failing(&bundle[..cut]), &trust(), &Limits::default())
                .and_then(|b| b.verify_blobs());
            match res {
                Err(BundleError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn key_rotation_with_revocation() {
        let old = SigningKey::from_seed(&[1; 32], "old");
        let store =
            TrustStore::from_keys(vec![old.public(), signer().public()], vec![old.public()]);
        let by_old = bundle_of(&sample_manifest(), &sample_blobs(), &old);
        assert!(matches!(
            open(&by_old[..], &store, &Limits::default()),
            Err(BundleError::RevokedKey { .. })
        ));
        open(&sample_bundle()[..], &store, &Limits::default())
            .unwrap()
            .verify_blobs()
            .unwrap();
    }
}
