//! What the target root says about itself, for the checks before anything changes: its base
//! (os-release `ID`, `VERSION_ID`, dpkg architecture), its hostgroup and its minimum version.
//! Every file is read through the confined [`Root`], so a planted symlink cannot point a check
//! at a file outside the root.

use std::path::Path;

use kiln_signing::BaseIdentity;

use crate::fsroot::Root;
use kiln_signing::debian::parse_dpkg_status as parse_status;

const SMALL: u64 = 64 << 10;

/// Reads `ID` and `VERSION_ID` from `/etc/os-release`, else `/usr/lib/os-release`. A missing
/// `ID` is `linux`, a missing `VERSION_ID` empty (os-release(5)).
pub fn os_release(root: &Root) -> Result<(String, String), String> {
    let text = match root.read_text("/etc/os-release", SMALL) {
        Ok(Some(t)) => t,
        Ok(None) => match root.read_text("/usr/lib/os-release", SMALL) {
            Ok(Some(t)) => t,
            Ok(None) => return Err("no /etc/os-release or /usr/lib/os-release".into()),
            Err(e) => return Err(format!("/usr/lib/os-release: {e}")),
        },
        Err(e) => return Err(format!("/etc/os-release: {e}")),
    };
    Ok(kiln_signing::debian::parse_os_release(&text))
}

/// The dpkg architecture of the root, as `dpkg --print-architecture` would say: the first line
/// of `/var/lib/dpkg/arch` if present, else the architecture of the installed `dpkg` package,
/// else (only when the root is `/`) the running kernel's machine.
pub fn dpkg_arch(root: &Root) -> Result<String, String> {
    if let Ok(Some(t)) = root.read_text("/var/lib/dpkg/arch", SMALL) {
        if let Some(first) = t.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Ok(first.to_string());
        }
    }
    match root.read_text("/var/lib/dpkg/status", 256 << 20) {
        Ok(Some(t)) => {
            if let Some((_, arch)) = parse_status(&t).get("dpkg") {
                if !arch.is_empty() {
                    return Ok(arch.clone());
                }
            }
        }
        Ok(None) => {}
        Err(e) => return Err(format!("/var/lib/dpkg/status: {e}")),
    }
    if root.path() == Path::new("/") {
        let machine = nix::sys::utsname::uname()
            .map_err(|e| format!("uname: {e}"))?
            .machine()
            .to_string_lossy()
            .into_owned();
        return Ok(deb_arch(&machine).to_string());
    }
    Err("no dpkg in the root (no /var/lib/dpkg/arch, no dpkg in /var/lib/dpkg/status)".into())
}

/// Kernel machine name to Debian architecture.
pub fn deb_arch(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "i686" | "i586" | "i386" => "i386",
        "armv7l" => "armhf",
        "ppc64le" => "ppc64el",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The root's base identity, or why it cannot be told (a wrong-base refusal).
pub fn base_identity(root: &Root) -> Result<BaseIdentity, String> {
    let (id, version_id) = os_release(root)?;
    let arch = dpkg_arch(root)?;
    Ok(BaseIdentity {
        id,
        version_id,
        arch,
    })
}

/// `<root>/etc/kiln/hostgroup`, trimmed, if present and not empty.
pub fn hostgroup(root: &Root) -> Result<Option<String>, String> {
    match root.read_text("/etc/kiln/hostgroup", SMALL) {
        Ok(t) => Ok(t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) => Err(format!("/etc/kiln/hostgroup: {e}")),
    }
}

/// `<root>/etc/kiln/min-version`, if present.
pub fn min_version(root: &Root) -> Result<Option<u64>, String> {
    match root.read_text("/etc/kiln/min-version", SMALL) {
        Ok(None) => Ok(None),
        Ok(Some(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(None);
            }
            t.parse()
                .map(Some)
                .map_err(|_| format!("/etc/kiln/min-version: {t:?} is not a version number"))
        }
        Err(e) => Err(format!("/etc/kiln/min-version: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_and_arch_of_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("usr/lib")).unwrap();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("var/lib/dpkg")).unwrap();
        std::fs::write(
            d.join("usr/lib/os-release"),
            "PRETTY_NAME=\"Debian\"\nID=debian\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", d.join("etc/os-release")).unwrap();
        std::fs::write(
            d.join("var/lib/dpkg/status"),
            "Package: dpkg\nStatus: install ok installed\nVersion: 1.21\nArchitecture: arm64\n",
        )
        .unwrap();
        let root = Root::open(d).unwrap();
        let b = base_identity(&root).unwrap();
        assert_eq!(
            (b.id.as_str(), b.version_id.as_str(), b.arch.as_str()),
            ("debian", "12", "arm64")
        );
        std::fs::write(d.join("var/lib/dpkg/arch"), "amd64\ni386\n").unwrap();
        assert_eq!(dpkg_arch(&root).unwrap(), "amd64");
        assert_eq!(hostgroup(&root).unwrap(), None);
        std::fs::create_dir_all(d.join("etc/kiln")).unwrap();
        std::fs::write(d.join("etc/kiln/hostgroup"), "web\n").unwrap();
        std::fs::write(d.join("etc/kiln/min-version"), "7\n").unwrap();
        assert_eq!(hostgroup(&root).unwrap().as_deref(), Some("web"));
        assert_eq!(min_version(&root).unwrap(), Some(7));
        std::fs::write(d.join("etc/kiln/min-version"), "seven\n").unwrap();
        assert!(min_version(&root).is_err());
    }

    #[test]
    fn machine_names() {
        assert_eq!(deb_arch("x86_64"), "amd64");
        assert_eq!(deb_arch("aarch64"), "arm64");
    }
}
