//! `kiln-firstboot apply`: fetch, pin check, "already applied?", signature and trust, host
//! policy (expiry, hostgroup, minimum version, base), then the apply engine. Every refusal
//! happens before the root changes and has its own exit code.

use std::fs::File;
use std::io::BufReader;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use kiln_signing::{exit, BundleError, Limits, Policy, TrustStore};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde_json::json;

use super::Exit;
use crate::fetch::{self, Source};
use kiln_apply::cli::ApplyArgs;
use kiln_apply::engine::{self, ApplyOptions, STAGING_DIR};
use kiln_apply::fsroot::Root;
use kiln_apply::host;
use kiln_apply::log::Log;
use kiln_apply::state::{now_rfc3339, Outcome, State, Step};

pub fn run(args: ApplyArgs, log: &dyn Log) -> Result<i32> {
    let source = Source::parse(&args.bundle);
    let shown = match &source {
        Source::Path(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.bundle.clone()),
        Source::Url(u) => u.clone(),
    };
    if let Some(pin) = &args.sha256 {
        if kiln_signing::spec::sha256_hex_any_case(pin).is_none() {
            return Err(Exit {
                code: exit::USAGE,
                message: format!("--sha256 {pin:?} is not 64 hex digits"),
            }
            .into());
        }
    }
    let root = Root::open(&args.root)
        .with_context(|| format!("opening the root {}", args.root.display()))?;
    // Where Consul and Vault are: read first, so that a refusal is reported too.
    let conf =
        kiln_apply::conf::load(&root, args.dynamic.config.as_ref()).map_err(|message| Exit {
            code: exit::USAGE,
            message,
        })?;
    let dynamic =
        kiln_apply::conf::dynamic_config(&args.dynamic, &conf).map_err(|message| Exit {
            code: exit::USAGE,
            message,
        })?;
    let mut tidy = Tidy {
        root: &root,
        created: 0,
    };
    let started = Instant::now();
    let mut seen = Seen {
        started_at: now_rfc3339(),
        ..Seen::default()
    };
    let outcome = apply_bundle(
        &args, &source, &shown, &root, &mut tidy, &dynamic, &mut seen, log,
    );
    tidy.run();
    if let Ok(code) = &outcome {
        log.info(&format!(
            "timings: {}; total {:.2}s (exit {code})",
            seen.timings(),
            started.elapsed().as_secs_f64()
        ));
    }
    match outcome {
        Ok(code) => Ok(code),
        Err(err) => {
            let failure_state = err
                .downcast_ref::<engine::ApplyFailure>()
                .and_then(|f| f.state.as_deref());
            // The engine reports the failures it writes a state for; a refusal (bad pin,
            // signature, expiry, wrong hostgroup or base, a fetch that failed, a corrupt
            // bundle) is reported here, so a rollout sees it at once.
            if failure_state.is_none() && !args.dry_run {
                report_refusal(&args, &root, &dynamic, &seen, &err, log);
            }
            // Every step that ran, the failed one last (the engine's state lists them).
            if let Some(state) = failure_state {
                seen.steps = state
                    .steps
                    .iter()
                    .filter(|s| !s.summary.starts_with(engine::EARLIER_RUN))
                    .cloned()
                    .collect();
            }
            log.info(&format!(
                "timings: {}; total {:.2}s (exit {})",
                seen.timings(),
                started.elapsed().as_secs_f64(),
                super::exit_code_of(&err)
            ));
            if args.json {
                let state = err
                    .downcast_ref::<engine::ApplyFailure>()
                    .and_then(|f| f.state.as_deref());
                print_json(&json!({
                    "outcome": if state.is_some() { "failed" } else { "refused" },
                    "exit_code": super::exit_code_of(&err),
                    "bundle": args.bundle,
                    "error": format!("{err:#}"),
                    "state": state,
                }));
            }
            // "refusing" only when nothing was changed; a failure after changes (the engine
            // wrote a state file for it) says so, and a rerun continues it.
            let failed_after_changes = failure_state.is_some();
            Err(err.context(if args.dry_run {
                format!("dry run of {shown}")
            } else if failed_after_changes {
                format!("failed applying {shown} (the root was changed: rerun to continue)")
            } else {
                format!("refusing {shown}")
            }))
        }
    }
}

/// What is known of the bundle so far, and how long each step took: for the timings line and
/// the report of a refusal.
#[derive(Default)]
struct Seen {
    started_at: String,
    sha256: Option<String>,
    hostgroup: Option<String>,
    version: Option<u64>,
    steps: Vec<Step>,
}

impl Seen {
    fn step(&mut self, name: &str, t: Instant, summary: String) {
        self.steps.push(Step {
            name: name.into(),
            seconds: (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            summary,
        });
    }

    /// `fetch 0.21s, verify 0.05s, ...`
    fn timings(&self) -> String {
        if self.steps.is_empty() {
            return "none".into();
        }
        self.steps
            .iter()
            .map(|s| format!("{} {:.2}s", s.name, s.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reports a refusal to Consul (`kiln/nodes/<hostgroup>/<hostname>`, result `failure`), when
/// Consul is configured and the hostgroup is known (flag, `/etc/kiln/hostgroup` or the
/// verified manifest). Never changes the exit code.
fn report_refusal(
    args: &ApplyArgs,
    root: &Root,
    dynamic: &kiln_apply::DynamicConfig,
    seen: &Seen,
    err: &anyhow::Error,
    log: &dyn Log,
) {
    if dynamic.consul_addr.is_none() {
        return;
    }
    let hostgroup = seen
        .hostgroup
        .clone()
        .or_else(|| args.hostgroup.clone())
        .or_else(|| host::hostgroup(root).ok().flatten());
    let Some(hostgroup) = hostgroup else {
        log.warn(
            "could not report the refusal to Consul: the hostgroup is unknown (pass --hostgroup)",
        );
        return;
    };
    let state = State {
        result: Outcome::Failure,
        hostgroup,
        version: seen.version.unwrap_or(0),
        sha256: seen.sha256.clone().unwrap_or_default(),
        source: args.bundle.clone(),
        signer: String::new(),
        started_at: seen.started_at.clone(),
        applied_at: now_rfc3339(),
        error: Some(format!("{err:#}")),
        exit_code: super::exit_code_of(err),
        steps: seen.steps.clone(),
        commands: Vec::new(),
        warnings: Vec::new(),
        hostname: None,
        dynamic: None,
        health: None,
    };
    let sources = crate::sources::Hosted { config: dynamic };
    if let Some(r) = kiln_apply::Sources::report(&sources, root, &state, log) {
        match r.result {
            Ok(at) => log.info(&format!("reported the refusal to {at}")),
            Err(e) => log.warn(&format!("could not report the refusal: {e}")),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_bundle(
    args: &ApplyArgs,
    source: &Source,
    shown: &str,
    root: &Root,
    tidy: &mut Tidy,
    dynamic: &kiln_apply::DynamicConfig,
    seen: &mut Seen,
    log: &dyn Log,
) -> Result<i32> {
    // 1. Fetch and pin. A local file is hashed in a thread of its own while the signature is
    // checked (both only read it; nothing depends on the signature until the digest is known).
    let t_fetch = Instant::now();
    let (file, digest) = match source {
        Source::Path(p) => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let mut g = f
                .try_clone()
                .with_context(|| format!("reading {}", p.display()))?;
            let hashing = std::thread::Builder::new()
                .name("hash".into())
                .spawn(move || fetch::hash_file_at(&mut g))
                .context("starting a thread")?;
            (f, Digest::Hashing(hashing))
        }
        Source::Url(url) => {
            log.info(&format!(
                "fetching {url} (deadline {})",
                humantime::format_duration(args.deadline)
            ));
            let mut f = if args.dry_run {
                anonymous_file(Path::new(&std::env::temp_dir()), None, "download")
                    .context("creating a temporary file for the download")?
            } else {
                let (dir, created) = root
                    .mkdir_p_counted(STAGING_DIR)
                    .with_context(|| format!("creating {}", root.display(STAGING_DIR).display()))?;
                tidy.created = created;
                anonymous_file(Path::new(STAGING_DIR), Some(&dir), "download")
                    .context("creating the download file in the staging area")?
            };
            let (sha, size) = fetch::download(url, &mut f, args.deadline, log)?;
            (f, Digest::Known(sha, size))
        }
    };

    // The manifest is spooled to an unnamed file as it is read and hashed, and parsed from
    // there: in the staging area (on the root's disk, not in memory), or for a dry run (which
    // leaves the root alone) in the temporary directory. A root where the staging area cannot
    // be made (read-only, say, when the bundle turns out to be applied already) spools to the
    // temporary directory too: applying would fail later, with its own message.
    let in_tmp = || anonymous_file(Path::new(&std::env::temp_dir()), None, "manifest");
    let spool = if args.dry_run {
        in_tmp()
    } else {
        match root.mkdir_p_counted(STAGING_DIR) {
            Ok((dir, created)) => {
                tidy.created = tidy.created.max(created);
                anonymous_file(Path::new(STAGING_DIR), Some(&dir), "manifest")
            }
            Err(e) => {
                log.info(&format!(
                    "spooling the manifest to {}: cannot create {}: {e}",
                    std::env::temp_dir().display(),
                    root.display(STAGING_DIR).display()
                ));
                in_tmp()
            }
        }
    }
    .context("creating the manifest's spool file")?;

    // 3 (begun). Signature and trust: reads the manifest at the start of the file.
    let t = Instant::now();
    let opened = (|| -> Result<kiln_signing::VerifiedBundle<BufReader<File>>> {
        let trust = TrustStore::load(&args.trust)
            .with_context(|| format!("loading trusted keys from {}", args.trust.display()))?;
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0))
            .context("rewinding the bundle")?;
        Ok(kiln_signing::open_spooled(
            BufReader::with_capacity(1 << 20, file),
            &trust,
            &Limits::default(),
            spool,
        )?)
    })();

    let (sha256, size) = match digest {
        Digest::Known(sha, size) => (sha, size),
        Digest::Hashing(h) => {
            let read = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")));
            match &source {
                Source::Path(p) => read.with_context(|| format!("reading {}", p.display()))?,
                Source::Url(_) => read.context("reading the download")?,
            }
        }
    };
    seen.sha256 = Some(sha256.clone());
    seen.step(
        "fetch",
        t_fetch,
        match source {
            Source::Path(_) => format!("{size} bytes read"),
            Source::Url(_) => format!("{size} bytes downloaded"),
        },
    );
    fetch::check_pin(args.sha256.as_deref(), &sha256)?;
    if args.sha256.is_some() {
        log.info(&format!("sha256 {sha256} matches the pin"));
    }

    // 2. Already applied? (Whatever the signature check found: an applied bundle may have
    // expired since, or its key left the trust store.)
    let previous = State::read(root).context("reading the state file")?;
    if let Some(prev) = previous
        .as_ref()
        .filter(|p| p.result == Outcome::Success && p.sha256 == sha256)
    {
        log.info(&format!("already applied: {}", prev.describe()));
        if !args.dry_run {
            engine::tidy_applied(&args.root, &sha256, log);
        }
        if args.json {
            print_json(
                &json!({"outcome": "already_applied", "exit_code": 0, "bundle": args.bundle, "state": prev}),
            );
        }
        return Ok(exit::OK);
    }

    // 3. Signature and trust, then the host's policy.
    log.info(&format!(
        "verifying {shown} ({size} bytes, sha256 {sha256})"
    ));
    let bundle = opened?;
    let m = &bundle.manifest;
    seen.hostgroup = Some(m.hostgroup.clone());
    seen.version = Some(m.version);
    let comment = &bundle.signer.comment;
    log.info(&format!(
        "signature good: {} version {}, signed by {}{}",
        m.hostgroup,
        m.version,
        bundle.signer.fingerprint(),
        if comment.is_empty() {
            String::new()
        } else {
            format!(" ({comment})")
        }
    ));
    let base = host::base_identity(root).map_err(|why| BundleError::WrongBase {
        bundle: format!("{} {} {}", m.base.id, m.base.version_id, m.base.arch),
        root: format!("unknown ({why})"),
    })?;
    let hostgroup = match &args.hostgroup {
        Some(h) => Some(h.clone()),
        None => host::hostgroup(root).map_err(|e| anyhow::anyhow!(e))?,
    };
    let applied = previous
        .as_ref()
        .filter(|p| p.result == Outcome::Success)
        .map(|p| p.version);
    let min_version = [
        args.min_version,
        host::min_version(root).map_err(|e| anyhow::anyhow!(e))?,
        applied,
    ]
    .into_iter()
    .flatten()
    .max();
    let policy = Policy {
        now: SystemTime::now(),
        hostgroup: hostgroup.clone(),
        min_version,
        base: Some(base.clone()),
    };
    kiln_signing::check_policy(m, &policy)?;
    log.info(&format!(
        "checks passed: expires {}, hostgroup {}, version {} >= {}, base {} {} {} ({:.2}s)",
        m.expires,
        hostgroup
            .as_deref()
            .map(|h| format!("{h} (matches)"))
            .unwrap_or_else(|| format!("{} (not pinned on this host)", m.hostgroup)),
        m.version,
        min_version.unwrap_or(0),
        base.id,
        base.version_id,
        base.arch,
        t.elapsed().as_secs_f64()
    ));

    seen.step(
        "verify",
        t,
        "signature, expiry, hostgroup, version, base".into(),
    );

    // 4. The engine, with the host's dynamic sources.
    let opts = ApplyOptions {
        bundle_sha256: sha256.clone(),
        source: args.bundle.clone(),
        live: None,
        dry_run: args.dry_run,
        force: args.force,
        stop_before_dynamic: false,
        steps_before: seen.steps.clone(),
        no_block: args.no_block,
        log,
    };
    let sources = crate::sources::Hosted { config: dynamic };
    let setup = kiln_apply::dynamic::Setup {
        config: dynamic,
        sources: &sources,
    };
    let report = engine::apply_with(bundle, &args.root, &opts, Some(setup))?;
    // The engine's own steps (stage, each phase; those done in an earlier run, e.g. by
    // `kiln bake`, are marked so), for the timings line.
    if !report.already_applied {
        let earlier = |s: &Step| s.summary.starts_with(engine::EARLIER_RUN);
        let mine: Vec<Step> = report
            .state
            .steps
            .iter()
            .skip(seen.steps.len())
            .filter(|s| !earlier(s))
            .cloned()
            .collect();
        seen.steps.extend(mine);
    }
    if args.dry_run {
        if report.plan.is_empty() {
            log.info("dry run: nothing would change");
        } else {
            log.info(&format!(
                "dry run: {} change(s) would be made:",
                report.plan.len()
            ));
            for line in &report.plan {
                log.info(&format!("  {line}"));
            }
        }
    }
    if args.json {
        let outcome = if report.already_applied {
            "already_applied"
        } else if args.dry_run {
            "dry_run"
        } else {
            "applied"
        };
        print_json(&json!({
            "outcome": outcome,
            "exit_code": 0,
            "bundle": args.bundle,
            "state": report.state,
            "plan": report.plan,
        }));
    }
    Ok(exit::OK)
}

/// The bundle's sha256 and size: known (downloaded), or being computed.
enum Digest {
    Known(String, u64),
    Hashing(std::thread::JoinHandle<std::io::Result<(String, u64)>>),
}

fn print_json(v: &serde_json::Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("kiln-firstboot: cannot print the JSON report: {e}"),
    }
}

/// An unnamed file in `dir` (O_TMPFILE): a crash leaves nothing behind. Where the filesystem
/// cannot, a named file (`.kiln-<what>-<pid>`) unlinked at once.
fn anonymous_file(
    dir: &Path,
    dirfd: Option<&std::os::fd::OwnedFd>,
    what: &str,
) -> std::io::Result<File> {
    let owned;
    let dirfd = match dirfd {
        Some(fd) => fd.as_fd(),
        None => {
            owned = nix::fcntl::open(
                dir,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            owned.as_fd()
        }
    };
    match nix::fcntl::openat(
        dirfd,
        ".",
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(_) => {
            let name = format!(".kiln-{what}-{}", std::process::id());
            let fd = nix::fcntl::openat(
                dirfd,
                name.as_str(),
                OFlag::O_RDWR
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?;
            nix::unistd::unlinkat(
                dirfd,
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )?;
            Ok(File::from(fd))
        }
    }
}

/// Directories this command made for a download (staging and its parents): removed again when
/// empty, so a refused bundle leaves the root exactly as it was.
struct Tidy<'a> {
    root: &'a Root,
    created: usize,
}

impl Tidy<'_> {
    fn run(&self) {
        let mut path = STAGING_DIR.to_string();
        for _ in 0..self.created {
            if let Ok(Some(p)) = self.root.parent(&path, false) {
                if p.remove(kiln_apply::fsroot::Kind::Dir).is_err() {
                    return;
                }
            }
            match path.rfind('/') {
                Some(i) if i > 0 => path.truncate(i),
                _ => return,
            }
        }
    }
}
