//! Getting the bundle: a local file, or an http(s) URL downloaded into a file (never into memory
//! whole) with retries, exponential backoff and an overall deadline. The whole file's sha256 is
//! computed on the way, for `--sha256` and to name the staging area.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
#[cfg(feature = "http")]
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kiln_signing::{exit, HashingWriter};
use thiserror::Error;

use kiln_apply::log::Log;
use kiln_apply::retry::Backoff;

/// First pause between attempts; doubles each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a connection may take to open (the deadline may cut it shorter).
#[cfg(feature = "http")]
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

impl Source {
    /// `http://` and `https://` are URLs, `file://` and anything else a path.
    pub fn parse(s: &str) -> Source {
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Source::Url(s.to_string())
        } else if let Some(p) = s.strip_prefix("file://") {
            Source::Path(PathBuf::from(p))
        } else {
            Source::Path(PathBuf::from(s))
        }
    }
}

/// Why the bundle could not be had.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("fetching {url} failed after {attempts} attempt(s) within the {deadline:?} deadline: {last}")]
    Deadline {
        url: String,
        attempts: u32,
        deadline: Duration,
        last: String,
    },
    #[error("fetching {url}: {status} (not retried)")]
    Refused { url: String, status: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("bundle sha256 is {actual}, --sha256 pins {expected}")]
    DigestMismatch { expected: String, actual: String },
}

impl FetchError {
    pub fn exit_code(&self) -> i32 {
        match self {
            FetchError::DigestMismatch { .. } => exit::DIGEST_MISMATCH,
            FetchError::Io { .. } => exit::FAILURE,
            _ => exit::FETCH,
        }
    }
}

/// sha256 (hex) and size of a whole file, read from the start; the file is rewound after.
pub fn hash_file(file: &mut File) -> io::Result<(String, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut w = HashingWriter::new(io::sink());
    io::copy(file, &mut w)?;
    let size = w.count();
    let (digest, _) = w.finish();
    file.seek(SeekFrom::Start(0))?;
    Ok((digest, size))
}

/// [`hash_file`] with positioned reads: the file's offset (shared with its clones) is left
/// alone, so the file can be read through another handle meanwhile.
pub fn hash_file_at(file: &mut File) -> io::Result<(String, u64)> {
    use std::os::unix::fs::FileExt;
    let mut w = HashingWriter::new(io::sink());
    let mut buf = vec![0u8; 1 << 20];
    let mut at: u64 = 0;
    loop {
        let n = match file.read_at(&mut buf, at) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        io::Write::write_all(&mut w, &buf[..n])?;
        at += n as u64;
    }
    let size = w.count();
    let (digest, _) = w.finish();
    Ok((digest, size))
}

/// Checks a `--sha256` pin (case-insensitive hex).
pub fn check_pin(expected: Option<&str>, actual: &str) -> Result<(), FetchError> {
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(actual) => Err(FetchError::DigestMismatch {
            expected: e.to_ascii_lowercase(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Downloads `url` into `dest` (truncated on each attempt), retrying connection errors, 5xx,
/// 408 and 429 with exponential backoff until `deadline` passes. Other 4xx are final. Returns
/// the sha256 and size of what was written; `dest` is rewound.
pub fn download(
    url: &str,
    dest: &mut File,
    deadline: Duration,
    log: &dyn Log,
) -> Result<(String, u64), FetchError> {
    let start = Instant::now();
    // A deadline too far to represent is no deadline at all (a day is plenty).
    let end = start
        .checked_add(deadline)
        .unwrap_or(start + Duration::from_secs(86_400));
    let client = client().map_err(|status| FetchError::Refused {
        url: url.into(),
        status,
    })?;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = end.saturating_duration_since(Instant::now());
        let last = match attempt(&client, url, dest, left) {
            Ok(done) => {
                log.info(&format!(
                    "downloaded {} bytes from {url} ({:.2}s)",
                    done.1,
                    start.elapsed().as_secs_f64()
                ));
                return Ok(done);
            }
            Err(Attempt::Final(status)) => {
                return Err(FetchError::Refused {
                    url: url.into(),
                    status,
                })
            }
            Err(Attempt::Io(what, source)) => return Err(FetchError::Io { what, source }),
            Err(Attempt::Retry(why)) => why,
        };
        let Some(pause) = backoff.next(end) else {
            return Err(FetchError::Deadline {
                url: url.into(),
                attempts,
                deadline,
                last,
            });
        };
        log.info(&format!(
            "fetch attempt {attempts} failed: {last}; retrying in {:.1}s",
            pause.as_secs_f64()
        ));
        std::thread::sleep(pause);
        if Instant::now() >= end {
            return Err(FetchError::Deadline {
                url: url.into(),
                attempts,
                deadline,
                last,
            });
        }
    }
}

#[cfg_attr(not(feature = "http"), allow(dead_code))]
enum Attempt {
    Retry(String),
    Final(String),
    Io(String, io::Error),
}

#[cfg(feature = "http")]
type Client = reqwest::blocking::Client;

#[cfg(feature = "http")]
fn client() -> Result<Client, String> {
    kiln_apply::http::client(
        concat!("kiln-firstboot/", env!("CARGO_PKG_VERSION")),
        kiln_apply::http::TlsFiles::default(),
        CONNECT_TIMEOUT,
        // reqwest's own default: a bundle URL may be a redirect to where it is stored.
        10,
    )
}

#[cfg(not(feature = "http"))]
struct Client;

#[cfg(not(feature = "http"))]
fn client() -> Result<Client, String> {
    Err("this kiln-firstboot was built without the `http` feature: give --bundle a path".into())
}

#[cfg(not(feature = "http"))]
fn attempt(_: &Client, _: &str, _: &mut File, _: Duration) -> Result<(String, u64), Attempt> {
    Err(Attempt::Final("built without HTTP support".into()))
}

#[cfg(feature = "http")]
fn attempt(
    client: &Client,
    url: &str,
    dest: &mut File,
    left: Duration,
) -> Result<(String, u64), Attempt> {
    let dest_io =
        |what: &str, e: io::Error| Attempt::Io(format!("writing the download ({what})"), e);
    let response = client
        .get(url)
        .timeout(left.max(Duration::from_millis(1)))
        .send()
        .map_err(|e| Attempt::Retry(kiln_apply::http::chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let code = status.as_u16();
        let text = format!("HTTP {status}");
        return Err(
            if (400..500).contains(&code) && code != 408 && code != 429 {
                Attempt::Final(text)
            } else {
                Attempt::Retry(text)
            },
        );
    }
    dest.set_len(0).map_err(|e| dest_io("truncate", e))?;
    dest.seek(SeekFrom::Start(0))
        .map_err(|e| dest_io("seek", e))?;
    let mut w = HashingWriter::new(&mut *dest);
    let mut body = response;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Attempt::Retry(format!("reading the body: {e}"))),
        };
        w.write_all(&buf[..n]).map_err(|e| dest_io("write", e))?;
    }
    let size = w.count();
    let (digest, _) = w.finish();
    dest.sync_all().map_err(|e| dest_io("fsync", e))?;
    dest.seek(SeekFrom::Start(0))
        .map_err(|e| dest_io("seek", e))?;
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("https://x/b.kiln"),
            Source::Url("https://x/b.kiln".into())
        );
        assert_eq!(
            Source::parse("HTTP://x/b.kiln"),
            Source::Url("HTTP://x/b.kiln".into())
        );
        assert_eq!(
            Source::parse("file:///tmp/b.kiln"),
            Source::Path("/tmp/b.kiln".into())
        );
        assert_eq!(
            Source::parse("web-7.kiln"),
            Source::Path("web-7.kiln".into())
        );
        assert_eq!(Source::parse("h"), Source::Path("h".into()));
    }

    #[test]
    fn pins() {
        let d = "ab".repeat(32);
        assert!(check_pin(None, &d).is_ok());
        assert!(check_pin(Some(&d.to_uppercase()), &d).is_ok());
        let e = check_pin(Some(&"cd".repeat(32)), &d).unwrap_err();
        assert_eq!(e.exit_code(), exit::DIGEST_MISMATCH);
    }
}
