//! Structural validation of a manifest, shared by the writer (so a builder cannot write a
//! bundle the reader refuses) and the reader (after the signature is checked). It enforces the
//! mix-and-match and size defences: every blob listed once, referenced, and within limits.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use crate::error::BundleError;
use crate::manifest::{EntryKind, Manifest, FORMAT_VERSION};
use crate::reader::Limits;

/// Longest target path accepted (Linux PATH_MAX, less the NUL).
const MAX_PATH: usize = 4095;
/// Longest path component accepted (Linux NAME_MAX).
const MAX_NAME: usize = 255;

fn corrupt(msg: impl Into<String>) -> BundleError {
    BundleError::Corrupt(msg.into())
}

/// Checks everything about a manifest that does not depend on the host: format, times,
/// paths, modes, digests, blob list and limits.
pub fn validate_manifest(m: &Manifest, limits: &Limits) -> Result<(), BundleError> {
    if m.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "manifest format {} is not supported (this kiln reads format {FORMAT_VERSION})",
            m.format
        )));
    }
    parse_time("created", &m.created)?;
    parse_time("expires", &m.expires)?;
    if let Some(d) = &m.base.packages_digest {
        check_digest("base packages_digest", d)?;
    }

    let paths = m.entries.len().saturating_add(m.templates.len());
    if paths > limits.max_entries {
        return Err(BundleError::Limit(format!(
            "{paths} entries and templates, more than the limit {}",
            limits.max_entries
        )));
    }
    if m.blobs.len() > limits.max_entries {
        return Err(BundleError::Limit(format!(
            "{} blobs, more than the limit {}",
            m.blobs.len(),
            limits.max_entries
        )));
    }

    // Blobs: valid digests, strictly ascending (so each is listed once), within the limits.
    let mut sizes: HashMap<&str, u64> = HashMap::with_capacity(m.blobs.len());
    let mut total: u64 = 0;
    for (i, blob) in m.blobs.iter().enumerate() {
        check_digest("blob", &blob.digest)?;
        if let Some(prev) = i.checked_sub(1).and_then(|p| m.blobs.get(p)) {
            if prev.digest >= blob.digest {
                return Err(corrupt(format!(
                    "blob list not strictly sorted at {} (after {})",
                    blob.digest, prev.digest
                )));
            }
        }
        if blob.size > limits.max_blob_bytes {
            return Err(BundleError::Limit(format!(
                "blob {} is {} bytes, more than the limit {}",
                blob.digest, blob.size, limits.max_blob_bytes
            )));
        }
        total = total
            .checked_add(blob.size)
            .filter(|t| *t <= limits.max_total_bytes)
            .ok_or_else(|| {
                BundleError::Limit(format!(
                    "blobs total more than the limit of {} bytes",
                    limits.max_total_bytes
                ))
            })?;
        sizes.insert(&blob.digest, blob.size);
    }

    let mut referenced: HashSet<&str> = HashSet::with_capacity(m.blobs.len());
    let mut reference = |what: &dyn Fn() -> String, digest: &str, size: Option<u64>| {
        let (listed_digest, listed) = sizes.get_key_value(digest).ok_or_else(|| {
            corrupt(format!(
                "{}: blob {digest:?} is not in the blob list",
                what()
            ))
        })?;
        if let Some(size) = size {
            if size != *listed {
                return Err(corrupt(format!(
                    "{}: size {size} differs from blob {digest} size {listed}",
                    what()
                )));
            }
        }
        referenced.insert(*listed_digest);
        Ok(())
    };

    let mut seen: HashSet<&str> = HashSet::with_capacity(paths);
    for e in &m.entries {
        check_path(&e.path)?;
        if !seen.insert(&e.path) {
            return Err(corrupt(format!("duplicate path {:?}", e.path)));
        }
        match &e.kind {
            EntryKind::File {
                mode, digest, size, ..
            } => {
                check_mode(&e.path, mode)?;
                reference(&|| format!("file {:?}", e.path), digest, Some(*size))?;
            }
            EntryKind::Directory { mode, .. } => check_mode(&e.path, mode)?,
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.contains('\0') {
                    return Err(corrupt(format!(
                        "symlink {:?}: empty target or NUL",
                        e.path
                    )));
                }
            }
            EntryKind::Absent => {}
        }
    }
    for t in &m.templates {
        check_path(&t.path)?;
        if !seen.insert(&t.path) {
            return Err(corrupt(format!("duplicate path {:?} (template)", t.path)));
        }
        check_mode(&t.path, &t.mode)?;
        reference(&|| format!("template {:?}", t.path), &t.digest, None)?;
    }
    crate::dynamic::check(m).map_err(corrupt)?;
    for p in &m.packages {
        match (&p.digest, p.size) {
            (Some(d), size) => reference(&|| format!("package {:?}", p.name), d, size)?,
            (None, Some(_)) => {
                return Err(corrupt(format!(
                    "package {:?} has a size but no digest",
                    p.name
                )))
            }
            (None, None) => {}
        }
    }
    if let Some(b) = m
        .blobs
        .iter()
        .find(|b| !referenced.contains(b.digest.as_str()))
    {
        return Err(corrupt(format!(
            "blob {} is listed but nothing uses it",
            b.digest
        )));
    }
    Ok(())
}

/// An RFC 3339 UTC time as the manifest writes it: `YYYY-MM-DDTHH:MM:SS[.frac]Z`.
pub(crate) fn parse_time(field: &str, value: &str) -> Result<SystemTime, BundleError> {
    let bad = || {
        corrupt(format!(
            "{field} {value:?} is not an RFC 3339 UTC time (…Z)"
        ))
    };
    let b = value.as_bytes();
    let shape_ok = b.len() >= 20
        && b.iter().enumerate().take(19).all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
        && match &b[19..] {
            [b'Z'] => true,
            [b'.', frac @ .., b'Z'] => {
                (1..=9).contains(&frac.len()) && frac.iter().all(u8::is_ascii_digit)
            }
            _ => false,
        };
    if !shape_ok {
        return Err(bad());
    }
    humantime::parse_rfc3339(value).map_err(|_| bad())
}

/// Absolute and normalized: no `.`/`..`/empty components, no trailing `/`, no NUL, not `/`.
pub(crate) fn check_path(path: &str) -> Result<(), BundleError> {
    let bad = |why: &str| corrupt(format!("path {path:?}: {why}"));
    let Some(rel) = path.strip_prefix('/') else {
        return Err(bad("not absolute"));
    };
    if rel.is_empty() {
        return Err(bad("the root itself cannot be an entry"));
    }
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if path.len() > MAX_PATH {
        return Err(bad("too long"));
    }
    for c in rel.split('/') {
        match c {
            "" => return Err(bad("empty component (// or trailing /)")),
            "." | ".." => return Err(bad("contains . or ..")),
            c if c.len() > MAX_NAME => return Err(bad("component too long")),
            _ => {}
        }
    }
    Ok(())
}

/// Three or four octal digits, e.g. `644` or `0755`.
pub(crate) fn check_mode(path: &str, mode: &str) -> Result<(), BundleError> {
    if (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        Ok(())
    } else {
        Err(corrupt(format!(
            "path {path:?}: mode {mode:?} is not 3-4 octal digits"
        )))
    }
}

/// 64 lowercase hex digits.
pub(crate) fn check_digest(what: &str, digest: &str) -> Result<(), BundleError> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(corrupt(format!(
            "{what} digest {digest:?} is not 64 lowercase hex digits"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in [
            "/etc",
            "/etc/nginx/nginx.conf",
            "/a b/.hidden",
            "/x/...",
            "/x/..y",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "etc",
            "./etc",
            "/etc/",
            "//etc",
            "/etc//x",
            "/etc/./x",
            "/etc/../x",
            "/..",
            "/.",
            "/a\0b",
        ] {
            assert!(
                matches!(check_path(bad), Err(BundleError::Corrupt(_))),
                "{bad:?}"
            );
        }
        assert!(check_path(&format!("/{}", "a".repeat(256))).is_err());
        assert!(check_path(&format!("/{}", "a/".repeat(2100))).is_err());
    }

    #[test]
    fn modes_digests_times() {
        for ok in ["644", "0644", "4755", "000"] {
            assert!(check_mode("/x", ok).is_ok());
        }
        for bad in ["", "64", "06444", "0o644", "0648", "rw-", "+644"] {
            assert!(check_mode("/x", bad).is_err(), "{bad}");
        }
        assert!(check_digest("b", &"a".repeat(64)).is_ok());
        assert!(check_digest("b", &"A".repeat(64)).is_err());
        assert!(check_digest("b", &"a".repeat(63)).is_err());
        assert!(check_digest("b", &"g".repeat(64)).is_err());
        assert!(parse_time("t", "2024-01-01T00:00:00Z").is_ok());
        assert!(parse_time("t", "2024-01-01T00:00:00.5Z").is_ok());
        for bad in [
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+00:00",
            "2024-01-01 00:00:00Z",
            "yesterday",
            "",
            "2024-01-01T00:00:00ZZ",
            "2024-13-01T00:00:00Z",
            "1969-01-01T00:00:00Z",
        ] {
            assert!(parse_time("t", bad).is_err(), "{bad}");
        }
    }
}
