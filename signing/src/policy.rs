//! The host-side checks on a verified manifest: freshness (freeze defence), hostgroup and
//! base image (wrong-software defence) and minimum version (rollback defence).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::BundleError;
use crate::manifest::Manifest;
use crate::validate::parse_time;

/// How far in the future `created` may be before the host clock is suspected.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What this host accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The current time (injectable for tests and for `--now`).
    pub now: SystemTime,
    /// The hostgroup this host belongs to, if it knows.
    pub hostgroup: Option<String>,
    /// The lowest bundle version this host accepts.
    pub min_version: Option<u64>,
    /// The base image of the target root, from its os-release and dpkg.
    pub base: Option<BaseIdentity>,
}

/// The identity of a root filesystem: os-release `ID`, `VERSION_ID` and the dpkg architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseIdentity {
    pub id: String,
    pub version_id: String,
    pub arch: String,
}

/// Checks a verified manifest against the host's policy. Each refusal is its own variant.
pub fn check_policy(manifest: &Manifest, policy: &Policy) -> Result<(), BundleError> {
    let expires = parse_time("expires", &manifest.expires)?;
    let created = parse_time("created", &manifest.created)?;
    let now = policy.now;
    if now > expires {
        return Err(BundleError::Expired {
            expires: manifest.expires.clone(),
            now: format_time(now),
        });
    }
    if created > now.checked_add(CLOCK_SKEW).unwrap_or(now) {
        return Err(BundleError::NotYetValid {
            created: manifest.created.clone(),
            now: format_time(now),
        });
    }
    if let Some(expected) = &policy.hostgroup {
        if *expected != manifest.hostgroup {
            return Err(BundleError::WrongHostgroup {
                expected: expected.clone(),
                found: manifest.hostgroup.clone(),
            });
        }
    }
    if let Some(root) = &policy.base {
        let b = &manifest.base;
        if root.id != b.id || root.version_id != b.version_id || root.arch != b.arch {
            return Err(BundleError::WrongBase {
                bundle: format!("{} {} {}", b.id, b.version_id, b.arch),
                root: format!("{} {} {}", root.id, root.version_id, root.arch),
            });
        }
    }
    if let Some(minimum) = policy.min_version {
        if manifest.version < minimum {
            return Err(BundleError::Rollback {
                version: manifest.version,
                minimum,
            });
        }
    }
    Ok(())
}

/// RFC 3339 UTC for messages; never panics, whatever the clock says.
fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_secs() < 253_402_300_800 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("{t:?}"),
    }
}

/// Reads `ID` and `VERSION_ID` (quotes stripped) of the root filesystem at `root`, from
/// `etc/os-release` or else `usr/lib/os-release`, never following a symlink out of `root`.
/// A missing `ID` is `linux` and a missing `VERSION_ID` is empty, as os-release(5) says
/// (Debian testing has no `VERSION_ID`).
pub fn read_os_release(root: &Path) -> Result<(String, String), io::Error> {
    let path = os_release_path(root)?;
    let text = std::fs::read_to_string(&path)?;
    Ok(crate::debian::parse_os_release(&text))
}

fn os_release_path(root: &Path) -> io::Result<PathBuf> {
    let usr_lib = root.join("usr/lib/os-release");
    let etc = root.join("etc/os-release");
    no_symlink(root, &["etc"])?;
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(&etc)?;
            if target != Path::new("../usr/lib/os-release")
                && target != Path::new("/usr/lib/os-release")
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is a symlink to {}, expected ../usr/lib/os-release",
                        etc.display(),
                        target.display()
                    ),
                ));
            }
        }
        Ok(m) if m.file_type().is_file() => return Ok(etc),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a regular file", etc.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    no_symlink(root, &["usr", "usr/lib", "usr/lib/os-release"])?;
    Ok(usr_lib)
}

/// Fails if any of `root/<rel>` is a symlink (a missing one is left to the read to report).
fn no_symlink(root: &Path, rels: &[&str]) -> io::Result<()> {
    for rel in rels {
        let p = root.join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            if m.file_type().is_symlink() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is a symlink; refusing to follow it", p.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::sample_manifest;

    fn t(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn policy(now: &str) -> Policy {
        Policy {
            now: t(now),
            hostgroup: None,
            min_version: None,
            base: None,
        }
    }

    #[test]
    fn times() {
        let m = sample_manifest(); // created 2024-01-01, expires 2030-01-01
        assert!(check_policy(&m, &policy("2025-01-01T00:00:00Z")).is_ok());
        assert!(check_policy(&m, &policy("2030-01-01T00:00:00Z")).is_ok());
        assert!(matches!(
            check_policy(&m, &policy("2030-01-01T00:00:01Z")),
            Err(BundleError::Expired { ref expires, ref now })
                if expires == "2030-01-01T00:00:00Z" && now == "2030-01-01T00:00:01Z"
        ));
        assert!(check_policy(&m, &policy("2023-12-31T23:55:00Z")).is_ok());
        assert!(matches!(
            check_policy(&m, &policy("2023-12-31T23:54:59Z")),
            Err(BundleError::NotYetValid { .. })
        ));
        // A clock before 1970 is refused, not a panic.
        let mut p = policy("2025-01-01T00:00:00Z");
        p.now = UNIX_EPOCH - Duration::from_secs(10);
        assert!(matches!(
            check_policy(&m, &p),
            Err(BundleError::NotYetValid { .. })
        ));
        let mut bad = m.clone();
        bad.expires = "soon".into();
        assert!(matches!(
            check_policy(&bad, &p),
            Err(BundleError::Corrupt(_))
        ));
    }

    #[test]
    fn hostgroup_base_and_rollback() {
        let m = sample_manifest(); // web, version 7, debian 12 amd64
        let mut p = policy("2025-01-01T00:00:00Z");
        p.hostgroup = Some("web".into());
        p.min_version = Some(7);
        p.base = Some(BaseIdentity {
            id: "debian".into(),
            version_id: "12".into(),
            arch: "amd64".into(),
        });
        assert!(check_policy(&m, &p).is_ok());

        let mut q = p.clone();
        q.hostgroup = Some("db".into());
        assert!(
            matches!(check_policy(&m, &q), Err(BundleError::WrongHostgroup { ref expected, ref found }) if expected == "db" && found == "web")
        );

        let mut q = p.clone();
        q.min_version = Some(8);
        assert!(matches!(
            check_policy(&m, &q),
            Err(BundleError::Rollback {
                version: 7,
                minimum: 8
            })
        ));

        for (id, ver, arch) in [
            ("ubuntu", "12", "amd64"),
            ("debian", "11", "amd64"),
            ("debian", "12", "arm64"),
        ] {
            let mut q = p.clone();
            q.base = Some(BaseIdentity {
                id: id.into(),
                version_id: ver.into(),
                arch: arch.into(),
            });
            match check_policy(&m, &q) {
                Err(BundleError::WrongBase { bundle, root }) => {
                    assert_eq!(bundle, "debian 12 amd64");
                    assert_eq!(root, format!("{id} {ver} {arch}"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn os_release() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(
            root.join("usr/lib/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .unwrap();
        // No etc/os-release: fall back to usr/lib.
        assert_eq!(
            read_os_release(root).unwrap(),
            ("debian".into(), "12".into())
        );
        // Debian's relative symlink.
        std::os::unix::fs::symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        assert_eq!(
            read_os_release(root).unwrap(),
            ("debian".into(), "12".into())
        );
        // An absolute symlink is read inside the root, not on the host.
        std::fs::remove_file(root.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
        assert_eq!(
            read_os_release(root).unwrap(),
            ("debian".into(), "12".into())
        );
        // Anything else is refused.
        std::fs::remove_file(root.join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("etc/os-release")).unwrap();
        assert_eq!(
            read_os_release(root).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A regular etc/os-release wins, with single quotes and no VERSION_ID.
        std::fs::remove_file(root.join("etc/os-release")).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "ID='debian'\n# VERSION_ID=13\n",
        )
        .unwrap();
        assert_eq!(read_os_release(root).unwrap(), ("debian".into(), "".into()));
        assert!(read_os_release(&root.join("missing")).is_err());
    }
}
