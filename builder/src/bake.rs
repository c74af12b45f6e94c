//! `kiln bake`: a bundle applied ahead of time to a copy of its base, written as a root
//! filesystem tar, a raw ext4 image (`mkfs.ext4 -d`, no mounting) or a qcow2 (`qemu-img
//! convert`). The bundle is applied by the same engine kiln-firstboot runs at first boot
//! (`kiln_apply::apply`, on an offline root: no service is started), and the image gets
//! kiln-firstboot itself, the trusted keys and kiln-firstboot.service. The engine stops before its
//! dynamic phase and leaves its journal: the first boot's kiln-firstboot, given the same bundle,
//! verifies it and finishes what only the host can do (dynamic templates, starting services, the
//! state file and the Consul report).

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use kiln_signing::{BundleError, Limits, Manifest, Policy, TrustStore};
use serde::Serialize;

use crate::base::{self, BaseInfo, BaseSpec};
use crate::config::Config;

/// Where kiln-firstboot is installed in the image.
pub const FIRSTBOOT_PATH: &str = "usr/local/sbin/kiln-firstboot";
/// Where the trusted keys go (kiln-firstboot's default `--trust`).
pub const TRUST_PATH: &str = "etc/kiln/trust";

/// Output format of `kiln bake`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A tar archive of the root filesystem (numeric owners, xattrs).
    Tar,
    /// A raw ext4 filesystem image (mkfs.ext4 -d).
    Raw,
    /// A qcow2 image of that ext4 filesystem (qemu-img convert).
    Qcow2,
}

/// What to bake.
pub struct BakeOptions<'a> {
    pub bundle: &'a Path,
    pub base: &'a BaseSpec,
    pub config: Option<&'a Config>,
    pub cache: &'a Path,
    pub trust_path: &'a Path,
    pub trust: &'a TrustStore,
    pub out: &'a Path,
    pub format: Format,
    /// Image size in bytes (raw and qcow2); default: what the root needs plus a margin.
    pub size: Option<u64>,
    /// The kiln-firstboot binary to install.
    pub firstboot: &'a Path,
    /// Keep the work directory (the applied root) for inspection.
    pub keep_workdir: bool,
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// What `kiln bake` did, with the time of each step.
#[derive(Debug, Serialize)]
pub struct Baked {
    pub out: PathBuf,
    pub format: Format,
    pub bytes: u64,
    pub hostgroup: String,
    pub version: u64,
    pub base: String,
    pub copy_seconds: f64,
    pub apply_seconds: f64,
    pub write_seconds: f64,
    pub total_seconds: f64,
    pub apply_summary: Vec<String>,
}

/// Engine progress lines, forwarded.
struct Forward<'a>(&'a (dyn Fn(&str) + Sync));

impl kiln_apply::log::Log for Forward<'_> {
    fn info(&self, msg: &str) {
        (self.0)(msg)
    }
}

/// Parses `2G`, `512M`, `1.5G`, `1073741824` (K, M, G, T are powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size {s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(format!("size {s:?} must be positive"));
    }
    Ok((n * mult as f64) as u64)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what} failed ({}):\n  {}",
            out.status,
            lines[lines.len().saturating_sub(20)..].join("\n  ")
        );
    }
    Ok(())
}

/// Bytes used under `dir` (du), for the default image size.
fn used_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-B1", "--apparent-size", "-x"])
        .arg(dir)
        .output()
        .context("running du")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("du -s {}: {text}", dir.display()))
}

/// Checks that the base is the one the bundle was built for: os-release, architecture and,
/// when the bundle carries resolved packages, the exact installed package set.
pub fn check_base(m: &Manifest, base: &BaseInfo) -> Result<(), BundleError> {
    if base.id != m.base.id || base.version_id != m.base.version_id || base.arch != m.base.arch {
        return Err(BundleError::WrongBase {
            bundle: format!("{} {} {}", m.base.id, m.base.version_id, m.base.arch),
            root: format!("{} {} {}", base.id, base.version_id, base.arch),
        });
    }
    if let Some(d) = &m.base.packages_digest {
        if *d != base.packages_digest {
            return Err(BundleError::WrongBase {
                bundle: format!(
                    "{} {} {} with package set {d}",
                    m.base.id, m.base.version_id, m.base.arch
                ),
                root: format!(
                    "{} {} {} with package set {}",
                    base.id, base.version_id, base.arch, base.packages_digest
                ),
            });
        }
    }
    Ok(())
}

pub fn bake(o: &BakeOptions) -> Result<Baked> {
    let t_all = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!("kiln bake needs root (the image keeps the base's owners, device nodes and the accounts the bundle adds)");
    }
    let tools: &[&str] = match o.format {
        Format::Tar => &["tar"],
        Format::Raw => &["mkfs.ext4"],
        Format::Qcow2 => &["mkfs.ext4", "qemu-img"],
    };
    for t in tools {
        if base::which(t).is_none() {
            bail!(
                "{t} is not installed ({})",
                if *t == "qemu-img" {
                    "apt-get install qemu-utils"
                } else {
                    "apt-get install e2fsprogs tar"
                }
            );
        }
    }
    if !o.firstboot.is_file() {
        bail!(
            "kiln-firstboot binary {} not found (--firstboot PATH)",
            o.firstboot.display()
        );
    }

    // 1. The bundle: signature and trust, expiry, and the base it targets.
    let (sha256, _) = kiln_signing::sha256_file(o.bundle)
        .with_context(|| format!("reading {}", o.bundle.display()))?;
    let file = File::open(o.bundle).with_context(|| format!("opening {}", o.bundle.display()))?;
    let bundle = kiln_signing::open_spooled(
        BufReader::with_capacity(1 << 20, file),
        o.trust,
        &Limits::default(),
        tempfile::tempfile()?,
    )
    .with_context(|| format!("verifying {}", o.bundle.display()))?;
    let m = bundle.manifest.clone();
    let base = BaseInfo::open(o.base, o.config, o.cache)?;
    let policy = Policy {
        now: SystemTime::now(),
        hostgroup: None,
        min_version: None,
        base: None,
    };
    kiln_signing::check_policy(&m, &policy)
        .with_context(|| format!("refusing {}", o.bundle.display()))?;
    check_base(&m, &base)
        .with_context(|| format!("refusing {} for base {}", o.bundle.display(), base.source))?;
    (o.progress)(&format!(
        "baking {} version {} onto base {} ({} {} {}) as {:?}",
        m.hostgroup, m.version, base.source, base.id, base.version_id, base.arch, o.format
    ));

    // 2. A copy of the base, beside the output (same filesystem, for the final rename).
    let out_dir = o
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".kiln-bake-")
        .tempdir_in(out_dir)
        .context("creating the work directory")?;
    let root = work.path().join("root");
    fs::create_dir(&root)?;
    let t = Instant::now();
    match o.base {
        BaseSpec::Tar(tar) => run(
            Command::new("tar")
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
                .arg(tar)
                .arg("-C")
                .arg(&root),
            "tar -x of the base",
        )?,
        _ => run(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(format!("{}/.", base.root.display()))
                .arg(&root),
            "copying the base",
        )?,
    }
    let copy_seconds = t.elapsed().as_secs_f64();
    (o.progress)(&format!("copied the base ({copy_seconds:.1}s)"));
    // A tar base was read only partly before; check the extracted root is the same base.
    if matches!(o.base, BaseSpec::Tar(_)) {
        check_base(&m, &BaseInfo::open_dir(&root)?)?;
    }

    // 3. The engine, on the offline root.
    let t = Instant::now();
    let fwd = |msg: &str| (o.progress)(&format!("  {msg}"));
    let log = Forward(&fwd);
    // Everything up to the dynamic phase: the first boot's kiln-firstboot, given the same
    // bundle, resumes from the journal (dynamic templates, services, state, Consul report).
    let opts = kiln_apply::ApplyOptions {
        bundle_sha256: sha256.clone(),
        source: o.bundle.display().to_string(),
        live: Some(false),
        dry_run: false,
        force: false,
        stop_before_dynamic: true,
        steps_before: Vec::new(),
        no_block: false,
        log: &log,
    };
    let report = kiln_apply::apply(bundle, &root, &opts).map_err(|f| {
        let code = f.exit_code();
        anyhow!(crate::Exit {
            code,
            message: format!("applying {} to the image failed: {f}", o.bundle.display())
        })
    })?;
    let apply_seconds = t.elapsed().as_secs_f64();
    let apply_summary: Vec<String> = report
        .state
        .steps
        .iter()
        .map(|s| format!("{}: {} ({:.2}s)", s.name, s.summary, s.seconds))
        .collect();

    // 4. kiln-firstboot and the trusted keys, for the first boot.
    install_firstboot(&root, o.firstboot, o.trust_path, &m)?;

    // 5. The output, written beside and renamed into place.
    let t = Instant::now();
    let tmp_out = out_dir.join(format!(
        ".{}.tmp-{}",
        o.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into()),
        std::process::id()
    ));
    let result = write_output(o, &root, work.path(), &tmp_out);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp_out);
        return Err(e);
    }
    fs::rename(&tmp_out, o.out)
        .with_context(|| format!("renaming {} to {}", tmp_out.display(), o.out.display()))?;
    let write_seconds = t.elapsed().as_secs_f64();
    let bytes = fs::metadata(o.out)?.len();
    (o.progress)(&format!(
        "wrote {} ({bytes} bytes, {write_seconds:.1}s)",
        o.out.display()
    ));
    if o.keep_workdir {
        let kept = work.keep();
        (o.progress)(&format!(
            "kept the applied root in {}",
            kept.join("root").display()
        ));
    }
    Ok(Baked {
        out: o.out.to_path_buf(),
        format: o.format,
        bytes,
        hostgroup: m.hostgroup.clone(),
        version: m.version,
        base: base.source.clone(),
        copy_seconds,
        apply_seconds,
        write_seconds,
        total_seconds: t_all.elapsed().as_secs_f64(),
        apply_summary,
    })
}

/// Whether unit `name`'s file in `root` (or its template's, for `name@instance.service`) turns
/// the default dependencies off: a unit of early boot, ordered before sysinit.target.
fn early_boot_unit(root: &Path, name: &str) -> bool {
    let template = name.split_once('@').and_then(|(prefix, rest)| {
        rest.rsplit_once('.')
            .map(|(_, ty)| format!("{prefix}@.{ty}"))
    });
    let files = [Some(name.to_string()), template].into_iter().flatten();
    for file in files {
        for dir in [
            "etc/systemd/system",
            "usr/lib/systemd/system",
            "lib/systemd/system",
        ] {
            let Ok(bytes) = crate::base::read_in_root(root, &format!("/{dir}/{file}"), 1 << 20)
            else {
                continue;
            };
            return String::from_utf8_lossy(&bytes).lines().any(|l| {
                let l = l.trim();
                l.strip_prefix("DefaultDependencies")
                    .map(|r| r.trim_start())
                    .and_then(|r| r.strip_prefix('='))
                    .is_some_and(|v| matches!(v.trim(), "no" | "false" | "0" | "off"))
            });
        }
    }
    false
}

/// `kiln-firstboot.service`, the alternative to cloud-init's runcmd (`kiln cloud-init --via
/// systemd` writes `/etc/kiln/firstboot.env`, which it needs): once, during boot, after the
/// network and cloud-init's write_files and before the services the bundle runs; skipped once
/// an apply succeeded (`kiln-firstboot status` exits 0); its output in the journal and on the
/// console.
///
/// Early-boot units (`DefaultDependencies=no` in the root's unit file: systemd-journald,
/// systemd-sysctl, ...) are not ordered after it: they run before sysinit.target, which the
/// network and cloud-init come after, so `Before=` on them would be an ordering cycle (systemd
/// then drops journald's start job at boot).
pub fn firstboot_unit(m: &Manifest, root: &Path) -> String {
    let mut before: Vec<&str> = m
        .services
        .iter()
        .filter(|s| s.state == kiln_signing::ServiceState::Running)
        .map(|s| s.name.as_str())
        .filter(|name| !early_boot_unit(root, name))
        .collect();
    before.sort_unstable();
    before.dedup();
    let before = if before.is_empty() {
        String::new()
    } else {
        format!(
            "# The services the bundle runs start after it.\nBefore={}\n",
            before.join(" ")
        )
    };
    format!(
        "# Installed by kiln bake ({hostgroup} version {version}). Runs kiln-firstboot once at first boot,\n\
         # when /etc/kiln/firstboot.env names the bundle (kiln cloud-init --via systemd writes it).\n\
         [Unit]\n\
         Description=Kiln first boot: verify the {hostgroup} bundle and finish applying it\n\
         ConditionPathExists=/etc/kiln/firstboot.env\n\
         Wants=network-online.target\n\
         After=network-online.target cloud-init.service\n\
         Before=multi-user.target\n\
         {before}\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         EnvironmentFile=/etc/kiln/firstboot.env\n\
         # Once: skipped after an apply succeeded; a failed or interrupted one is retried at the next boot.\n\
         ExecCondition=/bin/sh -c '! /{FIRSTBOOT_PATH} status >/dev/null 2>&1'\n\
         # One loud line on the console either way, as kiln cloud-init's runcmd writes (systemd's\n\
         # own [FAILED] line is not printed once a getty owns the console).\n\
         ExecStart=/bin/sh -c '/{FIRSTBOOT_PATH} apply --no-block; rc=$$?; if [ $$rc -eq 0 ]; then m=OK; else m=\"FAILED exit=$$rc\"; fi; echo \"KILN-FIRSTBOOT: $$m hostgroup={hostgroup} uptime=$$(cut -d\" \" -f1 /proc/uptime)\" >/dev/console; exit $$rc'\n\
         StandardOutput=journal+console\n\
         StandardError=journal+console\n\
         TimeoutStartSec=30min\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        hostgroup = m.hostgroup,
        version = m.version,
    )
}

/// Where bake installs kiln-firstboot.service, and the symlink that enables it.
pub const UNIT_PATH: &str = "etc/systemd/system/kiln-firstboot.service";
const UNIT_WANTS: &str = "etc/systemd/system/multi-user.target.wants/kiln-firstboot.service";

/// kiln-firstboot (0755), the trusted keys (kiln-firstboot's default --trust), the image's
/// hostgroup (kiln-firstboot refuses a bundle for another one) and kiln-firstboot.service.
fn install_firstboot(root: &Path, firstboot: &Path, trust: &Path, m: &Manifest) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join(FIRSTBOOT_PATH);
    fs::create_dir_all(bin.parent().expect("has a parent"))?;
    reject_symlink(root, &bin)?;
    fs::copy(firstboot, &bin)
        .with_context(|| format!("installing {} as /{FIRSTBOOT_PATH}", firstboot.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let dest = root.join(TRUST_PATH);
    reject_symlink(root, &dest)?;
    if dest.exists() {
        fs::remove_dir_all(&dest).or_else(|_| fs::remove_file(&dest))?;
    }
    fs::create_dir_all(dest.parent().expect("has a parent"))?;
    if trust.is_dir() {
        fs::create_dir_all(&dest)?;
        for e in fs::read_dir(trust)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".pub") || name == "revoked_keys") && e.path().is_file() {
                fs::copy(e.path(), dest.join(&name))?;
                fs::set_permissions(dest.join(&name), fs::Permissions::from_mode(0o644))?;
            }
        }
    } else {
        fs::copy(trust, &dest)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
    }
    let hg = root.join("etc/kiln/hostgroup");
    reject_symlink(root, &hg)?;
    fs::write(&hg, format!("{}\n", m.hostgroup))?;
    let unit = root.join(UNIT_PATH);
    reject_symlink(root, &unit)?;
    fs::create_dir_all(unit.parent().expect("has a parent"))?;
    fs::write(&unit, firstboot_unit(m, root))?;
    fs::set_permissions(&unit, fs::Permissions::from_mode(0o644))?;
    let wants = root.join(UNIT_WANTS);
    reject_symlink(root, wants.parent().expect("has a parent"))?;
    fs::create_dir_all(wants.parent().expect("has a parent"))?;
    if fs::symlink_metadata(&wants).is_ok() {
        fs::remove_file(&wants)?;
    }
    std::os::unix::fs::symlink(format!("/{UNIT_PATH}"), &wants)?;
    Ok(())
}

/// Kiln writes these paths itself: none of them may be a symlink (which could lead outside).
fn reject_symlink(root: &Path, path: &Path) -> Result<()> {
    let mut p = root.to_path_buf();
    for c in path.strip_prefix(root).unwrap_or(path).components() {
        p.push(c);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{} is a symlink in the image; refusing to write through it",
                p.display()
            );
        }
    }
    Ok(())
}

fn write_output(o: &BakeOptions, root: &Path, work: &Path, tmp_out: &Path) -> Result<()> {
    match o.format {
        Format::Tar => run(
            Command::new("tar")
                .args([
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "--sort=name",
                    "-cf",
                ])
                .arg(tmp_out)
                .arg("-C")
                .arg(root)
                .arg("."),
            "tar -c of the image",
        ),
        Format::Raw => mkfs(o, root, tmp_out),
        Format::Qcow2 => {
            let raw = work.join("image.raw");
            mkfs(o, root, &raw)?;
            run(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(tmp_out),
                "qemu-img convert",
            )?;
            let _ = fs::remove_file(&raw);
            Ok(())
        }
    }
}

fn mkfs(o: &BakeOptions, root: &Path, image: &Path) -> Result<()> {
    let size = match o.size {
        Some(s) => s,
        None => {
            // The root, plus a third for the filesystem's own metadata and room to grow, plus
            // 256 MiB, rounded up to a MiB.
            let used = used_bytes(root)?;
            (used + used / 3 + (256 << 20)).div_ceil(1 << 20) << 20
        }
    };
    let f = File::create(image).with_context(|| format!("creating {}", image.display()))?;
    f.set_len(size)?;
    drop(f);
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "kiln-root", "-d"])
            .arg(root)
            .arg(image),
        &format!("mkfs.ext4 -d (image size {size} bytes; raise --size if the root does not fit)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("2X").is_err() && parse_size("G").is_err() && parse_size("-1G").is_err()
        );
    }

    /// Regression: the example's default.yaml runs systemd-journald and systemd-sysctl, and
    /// kiln-firstboot.service (after the network) was ordered before them: an ordering cycle
    /// through sysinit.target, and systemd dropped journald's start job at boot.
    #[test]
    fn early_boot_units_are_recognised_in_the_root() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&lib).unwrap();
        fs::create_dir_all(root.path().join("etc/systemd/system")).unwrap();
        fs::create_dir_all(root.path().join("lib")).unwrap();
        fs::write(
            lib.join("systemd-journald.service"),
            "[Unit]\nDescription=Journal\nDefaultDependencies=no\n",
        )
        .unwrap();
        fs::write(lib.join("nginx.service"), "[Unit]\nAfter=network.target\n").unwrap();
        fs::write(
            lib.join("getty@.service"),
            "[Unit]\nDefaultDependencies = false\n",
        )
        .unwrap();
        // A merged-/usr base: /lib is a symlink into /usr, resolved inside the root.
        std::os::unix::fs::symlink("../usr/lib/systemd", root.path().join("lib/systemd")).unwrap();
        assert!(early_boot_unit(root.path(), "systemd-journald.service"));
        assert!(early_boot_unit(root.path(), "getty@tty1.service"));
        assert!(!early_boot_unit(root.path(), "nginx.service"));
        assert!(!early_boot_unit(root.path(), "missing.service"));
    }
}
