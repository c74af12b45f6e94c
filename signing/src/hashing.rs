//! sha256 helpers: a one-shot hex digest and `Read`/`Write` adaptors that hash what passes
//! through them, so a stream is hashed while it is copied rather than read twice.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes` (the form blob digests take).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex sha256 of everything `r` gives, and how many bytes that was.
pub fn sha256_reader(r: impl Read) -> io::Result<(String, u64)> {
    let mut r = HashingReader::new(r);
    io::copy(&mut r, &mut io::sink())?;
    let n = r.count();
    Ok((r.finish().0, n))
}

/// [`sha256_reader`] of the file at `path`.
pub fn sha256_file(path: &std::path::Path) -> io::Result<(String, u64)> {
    sha256_reader(std::fs::File::open(path)?)
}

/// A reader that hashes every byte it returns and counts them.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hex sha256 of everything read, and the inner reader.
    pub fn finish(self) -> (String, R) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let done = buf.get(..n).unwrap_or(&[]);
        self.hasher.update(done);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes every byte the inner writer accepted and counts them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hex sha256 of everything written, and the inner writer.
    pub fn finish(self) -> (String, W) {
        (hex::encode(self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or(&[]));
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digests_agree() {
        assert_eq!(sha256_hex(b""), EMPTY);
        let data = vec![9u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.count(), 100_000);
        let (hr, _) = r.finish();
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (hw, out) = w.finish();
        assert_eq!(hr, sha256_hex(&data));
        assert_eq!(hw, hr);
        assert_eq!(out, data);
    }
}
