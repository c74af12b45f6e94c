//! Writes a bundle: zstd(tar(manifest, signature, blobs in manifest order)), with every
//! header field and compression parameter pinned so the same inputs give the same bytes.

use std::io::{self, Write};

use tar::{EntryType, Header};
use zstd::zstd_safe::CParameter;

use crate::error::BundleError;
use crate::keys::SigningKey;
use crate::manifest::{Blob, Manifest};
use crate::reader::{Limits, MANIFEST_NAME, SIGNATURE_NAME};
use crate::sshsig::{self, NAMESPACE};
use crate::validate::validate_manifest;

/// zstd level of every bundle. Changing it changes every bundle's bytes.
pub const ZSTD_LEVEL: i32 = 3;
/// zstd window log of every bundle (2 MiB window), well under the reader's limit.
pub const ZSTD_WINDOW_LOG: u32 = 21;

const BLOCK: usize = 512;

/// Writes a signed bundle of `manifest` to `out` and returns `out` once the zstd frame is
/// finished. `write_blob` writes each blob's bytes (in `manifest.blobs` order); it must write
/// exactly `blob.size` bytes. The manifest is validated first as the reader would, with the
/// default [`Limits`].
pub fn write_bundle<W: Write>(
    out: W,
    manifest: &Manifest,
    key: &SigningKey,
    write_blob: &mut dyn FnMut(&Blob, &mut dyn Write) -> io::Result<()>,
) -> Result<W, BundleError> {
    let limits = Limits::default();
    validate_manifest(manifest, &limits)?;
    let json = manifest.to_canonical_json();
    if json.len() as u64 > limits.max_manifest_bytes {
        return Err(BundleError::Limit(format!(
            "manifest is {} bytes, more than the limit {}",
            json.len(),
            limits.max_manifest_bytes
        )));
    }
    let sig = sshsig::sign(key, NAMESPACE, &json);

    let mut z = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    z.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
    z.include_checksum(true)?;

    write_header(&mut z, MANIFEST_NAME, json.len() as u64)?;
    z.write_all(&json)?;
    write_padding(&mut z, json.len() as u64)?;
    write_header(&mut z, SIGNATURE_NAME, sig.len() as u64)?;
    z.write_all(sig.as_bytes())?;
    write_padding(&mut z, sig.len() as u64)?;

    for blob in &manifest.blobs {
        write_header(&mut z, &format!("blobs/{}", blob.digest), blob.size)?;
        let mut w = ExactWriter { inner: &mut z, left: blob.size, overrun: false };
        let res = write_blob(blob, &mut w);
        let (left, overrun) = (w.left, w.overrun);
        if overrun {
            return Err(BundleError::Corrupt(format!(
                "blob {}: the writer gave more than its {} bytes",
                blob.digest, blob.size
            )));
        }
        res?;
        if left != 0 {
            return Err(BundleError::Corrupt(format!(
                "blob {}: the writer gave {} bytes, the manifest says {}",
                blob.digest,
                blob.size - left,
                blob.size
            )));
        }
        write_padding(&mut z, blob.size)?;
    }
    // End of archive: two zero blocks.
    z.write_all(&[0; 2 * BLOCK])?;
    Ok(z.finish()?)
}

/// A ustar header with everything but name and size fixed.
fn write_header(out: &mut impl Write, name: &str, size: u64) -> Result<(), BundleError> {
    let mut h = Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    out.write_all(h.as_bytes())?;
    Ok(())
}

fn write_padding(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0; BLOCK][rem..])?;
    }
    Ok(())
}

/// Passes at most `left` bytes to the archive and refuses more. `flush` is swallowed: a zstd
/// flush would end a block early and make the output depend on the caller's flushes.
struct ExactWriter<'a, W: Write> {
    inner: &'a mut W,
    left: u64,
    overrun: bool,
}

impl<W: Write> Write for ExactWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            self.overrun = true;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "blob is longer than its size"));
        }
        let n = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.write(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
