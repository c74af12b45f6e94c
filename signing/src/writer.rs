//! Writes a bundle: zstd(tar(manifest, signature, blobs in manifest order)), with every
//! header field and compression parameter pinned so the same inputs give the same bytes.

use std::io::{self, Write};

use tar::{EntryType, Header};
use zstd::zstd_safe::CParameter;

use crate::error::BundleError;
use crate::keys::SigningKey;
use crate::limits::Limits;
use crate::manifest::{Blob, Manifest};
use crate::reader::{MANIFEST_NAME, SIGNATURE_NAME};
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
/// default [`Limits`]; it may be as large as a host reads through a spool file
/// ([`Limits::max_spooled_manifest_bytes`]).
pub fn write_bundle<W: Write>(
    out: W,
    manifest: &Manifest,
    key: &SigningKey,
    write_blob: &mut dyn FnMut(&Blob, &mut dyn Write) -> io::Result<()>,
) -> Result<W, BundleError> {
    let limits = Limits::default();
    validate_manifest(manifest, &limits)?;
    let json = manifest.to_canonical_json();
    if json.len() as u64 > limits.max_spooled_manifest_bytes {
        return Err(BundleError::Limit(format!(
            "manifest is {} bytes, more than the limit {}",
            json.len(),
            limits.max_spooled_manifest_bytes
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
        let mut w = ExactWriter {
            inner: &mut z,
            left: blob.size,
            overrun: false,
        };
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
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob is longer than its size",
            ));
        }
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.write(&buf[..n])?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::process::{Command, Stdio};

    #[test]
    fn same_inputs_same_bytes() {
        let a = sample_bundle();
        let b = sample_bundle();
        assert_eq!(a, b);
        // However the callback chunks and flushes its writes, the bytes are the same.
        let blobs = sample_blobs();
        let c = write_bundle(Vec::new(), &sample_manifest(), &signer(), &mut |blob, w| {
            for chunk in blobs[&blob.digest].chunks(7) {
                w.write_all(chunk)?;
                w.flush()?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(a, c);
        // A different key gives a different signature, hence different bytes.
        assert_ne!(a, bundle_of(&sample_manifest(), &blobs, &other_key()));
    }

    #[test]
    fn frame_and_tar_headers_are_pinned() {
        let bundle = sample_bundle();
        // Magic, then descriptor: checksum flag only; then window descriptor for 2^21.
        assert_eq!(bundle[..4], [0x28, 0xB5, 0x2F, 0xFD]);
        assert_eq!(bundle[4], 0x04);
        assert_eq!(bundle[5], ((ZSTD_WINDOW_LOG - 10) << 3) as u8);

        let tar_bytes = decompress(&bundle);
        assert_eq!(tar_bytes.len() % 512, 0);
        assert!(tar_bytes[tar_bytes.len() - 1024..].iter().all(|&b| b == 0));
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let m = sample_manifest();
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert!(h.as_ustar().is_some());
            assert_eq!(h.mode().unwrap(), 0o644);
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            assert_eq!(h.username_bytes(), Some(&b""[..]));
            assert_eq!(h.groupname_bytes(), Some(&b""[..]));
            assert_eq!(h.entry_type(), EntryType::Regular);
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        let mut want = vec![MANIFEST_NAME.to_string(), SIGNATURE_NAME.to_string()];
        want.extend(m.blobs.iter().map(|b| format!("blobs/{}", b.digest)));
        assert_eq!(names, want);
    }

    /// The design promises `zstd -dc web-7.kiln | tar -xO kiln/manifest.json` shows the manifest.
    #[test]
    fn standard_tools_read_the_manifest() {
        if !std::path::Path::new("/usr/bin/zstd").exists() {
            eprintln!("no /usr/bin/zstd; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-7.kiln");
        std::fs::write(&path, sample_bundle()).unwrap();
        let mut zstd = Command::new("/usr/bin/zstd")
            .arg("-dc")
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("tar")
            .args(["-xO", MANIFEST_NAME])
            .stdin(zstd.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(zstd.wait().unwrap().success());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, sample_manifest().to_canonical_json());
    }

    /// The design promises a person can check a bundle's signature with ssh-keygen alone,
    /// here with a key ssh-keygen made and a trust directory holding its `.pub`.
    #[test]
    fn ssh_keygen_verifies_a_bundle_made_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("kiln_ed25519");
        let kp = key_path.to_str().unwrap();
        let made = Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", kp])
            .status()
            .unwrap();
        assert!(made.success());
        let key =
            SigningKey::from_openssh_private(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        let bundle = bundle_of(&sample_manifest(), &sample_blobs(), &key);

        let trust_dir = dir.path().join("trust");
        std::fs::create_dir(&trust_dir).unwrap();
        std::fs::copy(format!("{kp}.pub"), trust_dir.join("ci.pub")).unwrap();
        let trust = crate::trust::TrustStore::load(&trust_dir).unwrap();
        let verified = crate::reader::open(&bundle[..], &trust, &Default::default()).unwrap();
        assert_eq!(verified.signer.comment, "ci");
        let (manifest, sig) = (verified.manifest_bytes.clone(), verified.signature.clone());
        verified.verify_blobs().unwrap();

        let allowed = dir.path().join("allowed_signers");
        let public = std::fs::read_to_string(format!("{kp}.pub")).unwrap();
        std::fs::write(&allowed, format!("kiln {public}")).unwrap();
        let sig_path = dir.path().join("manifest.json.sig");
        std::fs::write(&sig_path, sig).unwrap();
        let mut child = Command::new("/usr/bin/ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&allowed)
            .args(["-I", "kiln", "-n", NAMESPACE, "-s"])
            .arg(&sig_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&manifest).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn blob_writer_must_give_exactly_the_size() {
        let m = sample_manifest();
        let blobs = sample_blobs();
        let short = write_bundle(Vec::new(), &m, &signer(), &mut |b, w| {
            let data = &blobs[&b.digest];
            w.write_all(&data[..data.len().saturating_sub(1)])
        });
        assert!(
            matches!(short, Err(BundleError::Corrupt(ref s)) if s.contains("gave")),
            "{short:?}"
        );
        let long = write_bundle(Vec::new(), &m, &signer(), &mut |b, w| {
            w.write_all(&blobs[&b.digest])?;
            w.write_all(b"x")
        });
        assert!(
            matches!(long, Err(BundleError::Corrupt(ref s)) if s.contains("more than")),
            "{long:?}"
        );
        let failing = write_bundle(Vec::new(), &m, &signer(), &mut |_, _| {
            Err(io::Error::other("disk on fire"))
        });
        assert!(matches!(failing, Err(BundleError::Io(ref e)) if e.to_string() == "disk on fire"));
    }

    #[test]
    fn invalid_manifests_are_not_written() {
        let blobs = sample_blobs();
        let mut m = sample_manifest();
        m.entries[1].path = "/etc/../motd".into();
        let mut out = Vec::new();
        let res = write_bundle(&mut out, &m, &signer(), &mut |b, w| {
            w.write_all(&blobs[&b.digest])
        });
        assert!(matches!(res, Err(BundleError::Corrupt(_))));
        assert!(out.is_empty(), "nothing may be written before validation");

        let mut m = sample_manifest();
        m.blobs.reverse();
        let res = write_bundle(Vec::new(), &m, &signer(), &mut |b, w| {
            w.write_all(&blobs[&b.digest])
        });
        assert!(matches!(res, Err(BundleError::Corrupt(ref s)) if s.contains("sorted")));
    }
}
