//! Reads and verifies a bundle as one stream of small adaptors: the source, a zstd decoder with
//! a capped window, a strict ustar reader, and per blob a reader that hashes as it goes and
//! fails at the end of a blob whose sha256 differs. Memory stays flat whatever the bundle size,
//! and nothing is trusted before the signature and the trust store say so.

use std::fmt;
use std::io::{self, BufReader, Chain, Cursor, Read};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::BundleError;
use crate::keys::PublicKey;
use crate::manifest::{Blob, Manifest, FORMAT_VERSION};
use crate::sshsig::{self, NAMESPACE};
use crate::trust::TrustStore;
use crate::validate::validate_manifest;

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

/// Hard caps on what a bundle may make the reader do (endless data, decompression bombs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `kiln/manifest.json` (16 MiB).
    pub max_manifest_bytes: u64,
    /// Largest `kiln/manifest.json.sig` (8 KiB).
    pub max_signature_bytes: u64,
    /// Most entries plus templates, and most blobs (1 000 000).
    pub max_entries: usize,
    /// Largest single blob (4 GiB).
    pub max_blob_bytes: u64,
    /// Largest sum of blob sizes (64 GiB).
    pub max_total_bytes: u64,
    /// Largest zstd window, as a power of two (23 = 8 MiB).
    pub window_log_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 16 << 20,
            max_signature_bytes: 8 << 10,
            max_entries: 1_000_000,
            max_blob_bytes: 4 << 30,
            max_total_bytes: 64 << 30,
            window_log_max: 23,
        }
    }
}

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

type Decoder<R> = zstd::stream::read::Decoder<'static, BufReader<Chain<Cursor<Vec<u8>>, Source<R>>>>;

/// Checks the zstd frame header before any decoding: magic, content checksum present, no
/// dictionary, reserved bits clear, and a window within the limit.
fn check_frame_header(h: &[u8], limits: &Limits) -> Result<(), BundleError> {
    if h.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(corrupt("not a zstd stream (bad magic)"));
    }
    let fhd = *h.get(4).ok_or_else(|| corrupt("truncated zstd frame header"))?;
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
        let field = h.get(5..5 + len).ok_or_else(|| corrupt("truncated zstd frame header"))?;
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(field);
        let size = u64::from_le_bytes(le);
        if len == 2 {
            size + 256
        } else {
            size
        }
    } else {
        let wd = *h.get(5).ok_or_else(|| corrupt("truncated zstd frame header"))?;
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
        return Err(corrupt(format!("tar header {what} has bytes after its terminator")));
    }
    Ok(value)
}

/// An octal numeric field: optional leading spaces, digits, then NUL/space padding.
fn octal(field: &[u8], what: &str) -> Result<u64, BundleError> {
    let bad = || corrupt(format!("tar header {what} field is not octal"));
    let s = field.iter().skip_while(|&&b| b == b' ');
    let digits: Vec<u8> = s.clone().take_while(|b| b.is_ascii_digit()).copied().collect();
    let rest = s.skip(digits.len());
    if digits.is_empty() || digits.len() > 21 || !rest.clone().all(|&b| b == 0 || b == b' ') {
        return Err(bad());
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if d > b'7' {
            return Err(bad());
        }
        acc.checked_mul(8).and_then(|a| a.checked_add(u64::from(d - b'0'))).ok_or_else(bad)
    })
}

fn parse_header(b: &[u8; BLOCK]) -> Result<TarHeader, BundleError> {
    let stored = octal(&b[148..156], "checksum")?;
    let sum: u64 = b
        .iter()
        .enumerate()
        .map(|(i, &x)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(x) })
        .sum();
    if sum != stored {
        return Err(corrupt("tar header checksum mismatch"));
    }
    let typeflag = b[156];
    if &b[257..263] != b"ustar\0" || &b[263..265] != b"00" {
        return Err(corrupt(format!("tar header is not ustar ({})", type_name(typeflag))));
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
    Ok(TarHeader { name: String::from_utf8_lossy(&full).into_owned(), typeflag, size })
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
            return Err(corrupt(format!("expected member {name}, found {:?}", h.name)));
        }
        Ok(h)
    }

    /// A whole small member (manifest, signature) of at most `max` bytes.
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

/// Reads the zstd frame header, the manifest and the signature, checking nothing but form
/// and limits.
fn read_head<R: Read>(mut src: R, limits: &Limits) -> Result<(Tar<R>, Vec<u8>, Vec<u8>), BundleError> {
    let mut peek = vec![0u8; FRAME_HEADER_MAX];
    let mut got = 0;
    while got < peek.len() {
        match src.read(&mut peek[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::Io(e)),
        }
    }
    peek.truncate(got);
    check_frame_header(&peek, limits)?;

    let mut z = zstd::stream::read::Decoder::new(Cursor::new(peek).chain(Source(src)))?
        .single_frame();
    z.window_log_max(limits.window_log_max).map_err(|e| {
        BundleError::Limit(format!("window_log_max {}: {e}", limits.window_log_max))
    })?;
    let mut tar = Tar { z };
    let manifest = tar.small_member(MANIFEST_NAME, limits.max_manifest_bytes)?;
    let signature = tar.small_member(SIGNATURE_NAME, limits.max_signature_bytes)?;
    Ok((tar, manifest, signature))
}

/// Parses and structurally validates signed manifest bytes.
fn parse_manifest(bytes: &[u8], limits: &Limits) -> Result<Manifest, BundleError> {
    // Look at the format first, so a newer manifest gets a clear message rather than a
    // complaint about a field this version does not know.
    #[derive(Deserialize)]
    struct FormatOnly {
        format: u32,
    }
    let f: FormatOnly = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("manifest does not parse: {e}")))?;
    if f.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "manifest format {} is not supported (this kiln reads format {FORMAT_VERSION})",
            f.format
        )));
    }
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("manifest does not parse: {e}")))?;
    if m.to_canonical_json() != bytes {
        return Err(corrupt("manifest is not in canonical form"));
    }
    validate_manifest(&m, limits)?;
    Ok(m)
}

/// Opens a bundle: checks the zstd header, reads the manifest and its signature, verifies the
/// signature and that its key is trusted (before the manifest is even parsed), then parses and
/// validates the manifest. The blobs are checked by [`VerifiedBundle::for_each_blob`].
pub fn open<R: Read>(src: R, trust: &TrustStore, limits: &Limits) -> Result<VerifiedBundle<R>, BundleError> {
    let (tar, manifest_bytes, signature) = read_head(src, limits)?;
    let mut signer = sshsig::verify(&signature, NAMESPACE, &manifest_bytes)?;
    trust.check(&signer)?;
    if let Some(known) = trust.trusted().find(|k| **k == signer) {
        signer.comment = known.comment.clone();
    }
    let manifest = parse_manifest(&manifest_bytes, limits)?;
    Ok(VerifiedBundle { manifest, manifest_bytes, signature, signer, tar })
}

/// Reads and validates the manifest without checking who signed it (for `kiln inspect`).
/// Returns the manifest, its bytes and the signature bytes; nothing here is trusted.
pub fn read_manifest_unverified<R: Read>(
    src: R,
    limits: &Limits,
) -> Result<(Manifest, Vec<u8>, Vec<u8>), BundleError> {
    let (_tar, bytes, signature) = read_head(src, limits)?;
    let manifest = parse_manifest(&bytes, limits)?;
    Ok((manifest, bytes, signature))
}

/// A bundle whose manifest is signed by a trusted key and structurally valid. Its blobs are
/// still unread: consume it with [`for_each_blob`](Self::for_each_blob) or
/// [`verify_blobs`](Self::verify_blobs) before trusting any of them.
pub struct VerifiedBundle<R> {
    pub manifest: Manifest,
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
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match self.tar.read_some(&mut buf[..want]) {
            Ok(0) => {
                let e = corrupt(format!("truncated: bundle ends inside blob {}", self.digest));
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
