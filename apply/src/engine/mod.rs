//! The apply engine: takes a bundle whose manifest is verified and applies it to a root
//! filesystem, crash-safely. Used by `kiln-firstboot apply` (on `/` at first boot) and by
//! `kiln bake` (on an image's root).
//!
//! Order: manifest checks; blobs streamed into `<root>/var/lib/kiln/staging/<sha256>/` and each
//! checked (nothing else changes until all are good; the files of a directory the root lacks
//! are staged in a private copy of it, which the directories phase renames into place whole); conflicts with the root looked for; then,
//! journaled phase by phase: groups, users, packages, directories, files, symlinks, absent,
//! services (enable/disable), commands, dynamic (Consul and Vault into the dynamic templates,
//! see [`dynamic`]), runtime (live systems only); finally the state file, the Consul
//! report (when Consul is configured), and the journal and staging area are removed.

pub(crate) mod accounts;
pub(crate) mod commands;
pub(crate) mod conflicts;
pub(crate) mod contain;
pub mod dynamic;
pub(crate) mod entries;
pub mod health;
pub mod journal;
pub(crate) mod packages;
pub(crate) mod passwd;
pub(crate) mod process;
pub(crate) mod services;
pub(crate) mod track;

use nix::libc;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use kiln_signing::{exit, BundleError, Entry, EntryKind, EntryList, Manifest, VerifiedBundle};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::fsroot::{self, Root};
use crate::log::Log;
use crate::state::{now_rfc3339, CommandResult, Outcome, State, Step};
use entries::Action;
use journal::{secs, Journal, Record};
use passwd::Accounts;

/// How the state file marks a phase finished by an earlier run (a crash, or `kiln bake`).
pub const EARLIER_RUN: &str = "earlier run: ";

/// Where blobs are staged, one directory per bundle digest.
pub const STAGING_DIR: &str = "/var/lib/kiln/staging";

/// The phases, in order, as named in the journal, the log and the state file.
pub const PHASES: &[&str] = &[
    "groups",
    "users",
    "packages",
    "directories",
    "files",
    "symlinks",
    "absent",
    "services",
    "commands",
    "dynamic",
    "runtime",
    "health",
];

/// How to apply.
pub struct ApplyOptions<'a> {
    /// sha256 of the whole bundle file: names the staging directory, ties the journal and the
    /// state file to this bundle.
    pub bundle_sha256: String,
    /// Where the bundle came from (path or URL), for the log and the state file.
    pub source: String,
    /// Whether the root is the running system (start/stop/restart services). `None`: it is when
    /// the root is `/` and systemd runs.
    pub live: Option<bool>,
    /// Verify everything and say what would change, changing nothing.
    pub dry_run: bool,
    /// Apply even though another bundle was applied (or half-applied) to this root.
    pub force: bool,
    /// Stop before the dynamic phase (`kiln bake`): every phase up to the commands is applied
    /// and journaled, the staged blobs are removed, and no state file is written, so that
    /// `kiln-firstboot apply` of the same bundle at the first boot resumes there: it renders
    /// the dynamic templates, starts the services, writes the state and reports to Consul.
    pub stop_before_dynamic: bool,
    /// Steps the caller took before the engine (fetch, verify), recorded first in the state
    /// file and the Consul report.
    pub steps_before: Vec<Step>,
    /// Start, stop and restart services with `systemctl --no-block` (queue the jobs, do not
    /// wait): for kiln-firstboot.service, which runs during boot ordered before the services
    /// the bundle starts, where waiting on their start jobs would deadlock.
    pub no_block: bool,
    pub log: &'a dyn Log,
}

/// What an apply did (or, in a dry run, would do).
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// The state file as written (in a dry run: as it would be, not written).
    pub state: State,
    /// The root already had this bundle applied: nothing was done.
    pub already_applied: bool,
    /// Dry run: one line per change it would make.
    pub plan: Vec<String>,
    /// Stopped before the dynamic phase ([`ApplyOptions::stop_before_dynamic`]): the journal
    /// waits for the first boot; no state file was written.
    pub deferred: bool,
}

/// Why an apply stopped. [`exit_code`](Self::exit_code) maps each kind to the process exit code.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The manifest breaks a rule the engine relies on (duplicate path, `..`, a name that could
    /// be taken for an option...). Nothing changed.
    #[error("manifest refused: {0}")]
    Invalid(String),
    /// The bundle itself is bad (a blob's digest or size, the archive). Nothing changed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Another bundle is applied, or half-applied, on this root.
    #[error("{0}")]
    OtherBundle(String),
    /// Another kiln-firstboot is applying to this root right now.
    #[error("another kiln-firstboot is applying to {0}")]
    Busy(String),
    /// The root conflicts with the bundle: found before any change, so none was made.
    #[error("the root conflicts with the bundle (nothing was changed):\n  {}", .0.join("\n  "))]
    Conflicts(Vec<String>),
    /// A step failed.
    #[error("{step}: {what}: {message}")]
    Step {
        step: &'static str,
        what: String,
        message: String,
    },
    /// A program (a command of the bundle, dpkg, systemctl) failed; its output is kept.
    #[error("{step}: {what} failed ({status})")]
    Tool {
        step: &'static str,
        what: String,
        status: String,
        output: String,
    },
    #[error("staging blobs in {path}: {source}")]
    Staging { path: String, source: io::Error },
    #[error("journal: {0}")]
    Journal(io::Error),
    #[error("writing the state file: {0}")]
    State(io::Error),
    /// A health check did not pass within its deadline (the bundle is applied).
    #[error("unhealthy: {0}")]
    Unhealthy(String),
    /// The dynamic step: a source unreachable or refusing, a missing value, a template.
    // Not a `#[source]`: the message already holds it, and a chain would print it twice.
    #[error("dynamic: {0}")]
    Dynamic(crate::engine::dynamic::DynamicError),
}

impl From<crate::engine::dynamic::DynamicError> for ApplyError {
    fn from(e: crate::engine::dynamic::DynamicError) -> Self {
        ApplyError::Dynamic(e)
    }
}

impl ApplyError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ApplyError::Invalid(_) => exit::CORRUPT,
            ApplyError::Bundle(e) => e.exit_code(),
            ApplyError::OtherBundle(_) | ApplyError::Busy(_) => exit::FAILURE,
            ApplyError::Conflicts(_) => exit::CONFLICT,
            ApplyError::Dynamic(e) => e.exit_code(),
            ApplyError::Unhealthy(_) => exit::UNHEALTHY,
            _ => exit::APPLY,
        }
    }

    pub(crate) fn step(step: &'static str, what: &str, message: impl fmt::Display) -> ApplyError {
        ApplyError::Step {
            step,
            what: what.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn journal(e: io::Error) -> ApplyError {
        ApplyError::Journal(e)
    }
}

/// An apply that did not succeed: the error, and the state file written for it (when the apply
/// had begun changing the root; refusals before any change write none).
#[derive(Debug)]
pub struct ApplyFailure {
    pub error: ApplyError,
    pub state: Option<Box<State>>,
}

impl ApplyFailure {
    pub fn exit_code(&self) -> i32 {
        self.error.exit_code()
    }
}

impl fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ApplyFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl From<ApplyError> for ApplyFailure {
    fn from(error: ApplyError) -> Self {
        ApplyFailure { error, state: None }
    }
}

/// What the phases share (a [`crate::engine::dynamic::Sources`] sees it through its methods).
pub struct Ctx<'a> {
    pub(crate) root: &'a Root,
    /// The manifest, its `blobs` list left empty (the bundle's reader has it; staging is done
    /// with it). Entries, packages and templates name their blobs by digest.
    pub(crate) manifest: &'a Manifest,
    /// The manifest's entries (the manifest's own list is empty): a spooled bundle's are read
    /// again on each pass, one at a time, so an apply's memory does not grow with them.
    pub(crate) entries: &'a EntryList,
    pub(crate) log: &'a dyn Log,
    pub(crate) live: bool,
    /// In-root path of this bundle's staging directory.
    pub(crate) staging: String,
    pub(crate) warnings: RefCell<Vec<String>>,
    /// Where Consul and Vault are and who reads them; `None`: the dynamic step is skipped
    /// (`kiln bake`).
    pub(crate) dynamic: Option<crate::engine::dynamic::Setup<'a>>,
    /// Filled by the dynamic step, for the state file.
    pub(crate) dynamic_summary: RefCell<Option<crate::state::DynamicSummary>>,
    /// `systemctl --no-block` for start/stop/restart ([`ApplyOptions::no_block`]).
    pub(crate) no_block: bool,
    /// Filled by the health step, for the state file and the report.
    pub(crate) health: RefCell<Option<crate::state::Health>>,
    /// Files staged in their new directory's tree (see [`entries::Trees`]): planned by the
    /// staging, placed by the directories phase.
    pub(crate) trees: RefCell<entries::Trees>,
}

impl<'a> Ctx<'a> {
    /// The root being applied to.
    pub fn root(&self) -> &'a Root {
        self.root
    }

    /// The bundle's manifest (its blob list left empty).
    pub fn manifest(&self) -> &'a Manifest {
        self.manifest
    }

    pub fn log(&self) -> &'a dyn Log {
        self.log
    }

    /// The manifest's entries, in order (sorted by path), one pass.
    pub(crate) fn entries(&self) -> impl Iterator<Item = Result<Cow<'a, Entry>, ApplyError>> {
        self.entries.iter().map(|e| e.map_err(ApplyError::Bundle))
    }

    /// In-root path of a staged blob.
    pub fn staged_blob(&self, digest: &str) -> String {
        format!("{}/blobs/{}", self.staging, entries::staged_name(digest))
    }

    /// Logs a warning and keeps it for the state file.
    pub fn warn(&self, msg: &str) {
        self.log.warn(msg);
        self.warnings.borrow_mut().push(msg.to_string());
    }
}

/// In-root path of the staging directory of a bundle.
pub fn staging_dir(bundle_sha256: &str) -> String {
    format!("{STAGING_DIR}/{bundle_sha256}")
}

/// Applies a verified bundle to `root`. See the module documentation for the order; a rerun
/// after a crash, with the same bundle, finishes the job.
///
/// The caller has opened the bundle with [`kiln_signing::open`] (signature, trust) and checked
/// the host's policy with [`kiln_signing::check_policy`] (expiry, hostgroup, version, base);
/// the engine checks the manifest's shape again and every blob as it stages it.
pub fn apply<R: Read>(
    bundle: VerifiedBundle<R>,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyFailure> {
    apply_with(bundle, root, opts, None)
}

/// [`apply`], with the dynamic sources of the host: the dynamic step renders the bundle's
/// templates from Consul and Vault, and the result is reported to Consul. Without them
/// (`None`, as `kiln bake` applies an image offline) the templates are skipped with a warning.
pub fn apply_with<R: Read>(
    bundle: VerifiedBundle<R>,
    root: &Path,
    opts: &ApplyOptions,
    dynamic: Option<crate::engine::dynamic::Setup<'_>>,
) -> Result<ApplyReport, ApplyFailure> {
    // The engine keeps the manifest but its blob list, which stays with the bundle's reader
    // (the one user of it), and its entries, which it reads from the bundle's spool (or
    // takes, from a bundle read into memory).
    let mut bundle = bundle;
    bundle.manifest_bytes = Vec::new();
    let entry_list = match bundle.spooled_entries.take() {
        Some(spool) => EntryList::Spool(spool),
        None => EntryList::Mem(std::mem::take(&mut bundle.manifest.entries)),
    };
    // The reader's validation, made again: the engine relies on every rule of it (no path
    // under the state directory, no name that could be taken for an option, entries sorted)
    // whoever handed it the manifest.
    kiln_signing::validate_entries(
        &bundle.manifest,
        &entry_list,
        &kiln_signing::Limits::default(),
    )
    .map_err(|e| match e {
        BundleError::Corrupt(m) | BundleError::Limit(m) => ApplyError::Invalid(m),
        // Reading the entries' spool back failed: the host's disk, not the bundle.
        e @ BundleError::Io(_) => ApplyError::Bundle(e),
        other => ApplyError::Invalid(other.to_string()),
    })?;
    let blob_count = bundle.manifest.blobs.len();
    let m = bundle.manifest.head();
    let signer = format!("{} {}", bundle.signer.fingerprint(), bundle.signer.comment)
        .trim()
        .to_string();
    if !kiln_signing::spec::is_sha256_hex(&opts.bundle_sha256) {
        return Err(ApplyError::Invalid(format!(
            "bundle sha256 {:?} is not 64 lowercase hex digits",
            opts.bundle_sha256
        ))
        .into());
    }
    let root_fs =
        Root::open(root).map_err(|e| ApplyError::step("root", &root.display().to_string(), e))?;
    let _lock = lock(&root_fs)?;
    let live = opts
        .live
        .unwrap_or_else(|| services::is_live(root_fs.path()));
    let ctx = Ctx {
        root: &root_fs,
        manifest: &m,
        entries: &entry_list,
        log: opts.log,
        live,
        staging: staging_dir(&opts.bundle_sha256),
        warnings: RefCell::new(Vec::new()),
        dynamic,
        dynamic_summary: RefCell::new(None),
        no_block: opts.no_block,
        health: RefCell::new(None),
        trees: RefCell::new(entries::Trees::default()),
    };
    let started_at = now_rfc3339();
    let mut state = State {
        result: Outcome::Success,
        hostgroup: m.hostgroup.clone(),
        version: m.version,
        sha256: opts.bundle_sha256.clone(),
        source: opts.source.clone(),
        signer,
        started_at: started_at.clone(),
        applied_at: String::new(),
        error: None,
        exit_code: exit::OK,
        steps: Vec::new(),
        commands: Vec::new(),
        warnings: Vec::new(),
        hostname: None,
        dynamic: None,
        health: None,
    };

    // Already applied (this bundle: nothing to do; another: refused unless forced).
    let previous = State::read(&root_fs)
        .map_err(|e| ApplyError::step("state", crate::state::STATE_FILE, e))?;
    if let Some(prev) = previous.as_ref().filter(|p| p.result == Outcome::Success) {
        if prev.sha256 == opts.bundle_sha256 {
            opts.log
                .info(&format!("already applied: {}", prev.describe()));
            cleanup_after_success(&ctx, &opts.bundle_sha256);
            return Ok(ApplyReport {
                state: prev.clone(),
                already_applied: true,
                plan: Vec::new(),
                deferred: false,
            });
        }
        if !opts.force {
            return Err(ApplyError::OtherBundle(format!(
                "this root already has {} applied (at {}); a host applies one bundle: replace it with a new VM, or pass --force",
                prev.describe(),
                prev.applied_at
            ))
            .into());
        }
    }
    let existing = journal::read(&root_fs).map_err(ApplyError::Journal)?;
    let resume = match existing {
        Some((j, records)) if j.sha256 == opts.bundle_sha256 => records,
        Some((j, _)) if !opts.force => {
            return Err(ApplyError::OtherBundle(format!(
                "an apply of another bundle ({} version {}, sha256 {}, started {}) did not finish on this root; \
                 rerun that bundle to finish it, or pass --force to apply this one over it",
                j.hostgroup, j.version, j.sha256, j.started_at
            ))
            .into())
        }
        _ => Vec::new(),
    };

    if !m.templates.is_empty() && dynamic.is_none() && !opts.stop_before_dynamic {
        opts.log.info(&format!(
            "{} dynamic template(s): no dynamic sources given (an offline apply), they will be skipped",
            m.templates.len()
        ));
    }

    if opts.dry_run {
        let t = Instant::now();
        // Every blob is checked; the packages' are kept (outside the root) for their checks.
        let mut debs = conflicts::DebCopies::new(&ctx);
        bundle.for_each_blob(|blob, reader| -> Result<(), ApplyError> {
            debs.take(&blob.digest, reader)
                .map_err(|e| ApplyError::step("dry run", &blob.digest, e))?;
            Ok(())
        })?;
        opts.log.info(&format!(
            "verified {} blobs ({:.2}s)",
            blob_count,
            t.elapsed().as_secs_f64()
        ));
        let plan = plan(&ctx, true, &debs.into_debs())?;
        state.applied_at = now_rfc3339();
        state.warnings = ctx.warnings.borrow().clone();
        return Ok(ApplyReport {
            state,
            already_applied: false,
            plan,
            deferred: false,
        });
    }

    // Stage every blob; on any failure remove what was staged and refuse: nothing else changed.
    let t = Instant::now();
    let created = match stage(&ctx, bundle) {
        Ok(created) => created,
        Err((e, created)) => {
            remove_staging(&ctx, created);
            return Err(e.into());
        }
    };
    opts.log.info(&format!(
        "staged and verified {} blobs ({:.2}s)",
        blob_count,
        t.elapsed().as_secs_f64()
    ));
    let stage_secs = secs(t.elapsed());

    // Conflicts with the root, before any change.
    if resume.is_empty() {
        let conflicts = match preflight(&ctx) {
            Ok(c) => c,
            Err(e) => {
                remove_staging(&ctx, created);
                return Err(e.into());
            }
        };
        if !conflicts.is_empty() {
            remove_staging(&ctx, created);
            return Err(ApplyError::Conflicts(conflicts).into());
        }
    }

    let begin = Record::Begin {
        sha256: opts.bundle_sha256.clone(),
        hostgroup: m.hostgroup.clone(),
        version: m.version,
        started_at: started_at.clone(),
    };
    let resumed = !resume.is_empty();
    let mut journal = match Journal::start(&root_fs, begin, resume) {
        Ok(j) => j,
        Err(e) => {
            remove_staging(&ctx, created);
            return Err(ApplyError::Journal(e).into());
        }
    };
    if resumed {
        let done: Vec<&str> = PHASES
            .iter()
            .copied()
            .filter(|p| journal.done(p).is_some())
            .collect();
        opts.log.info(&format!(
            "resuming an interrupted apply (phases done: {})",
            if done.is_empty() {
                "none".to_string()
            } else {
                done.join(", ")
            }
        ));
        if let Some(Record::Begin { started_at, .. }) = journal.records().first() {
            state.started_at = started_at.clone();
        }
    }
    state.steps.extend(opts.steps_before.iter().cloned());
    state.steps.push(Step {
        name: "stage".into(),
        seconds: stage_secs,
        summary: format!("{} blobs", blob_count),
    });

    let mut commands = Vec::new();
    let stop = opts.stop_before_dynamic.then_some("dynamic");
    let result = run_phases(&ctx, &mut journal, &mut state.steps, &mut commands, stop);
    state.commands = commands;
    if stop.is_some() && result.is_ok() {
        // The first boot finishes: keep the journal, drop the blobs (it stages them again
        // from the bundle it is given, checking every byte).
        if let Err(e) = root_fs.remove_tree(&ctx.staging) {
            opts.log.warn(&format!(
                "could not remove {}: {e}",
                root_fs.display(&ctx.staging).display()
            ));
        }
        state.applied_at = now_rfc3339();
        state.warnings = ctx.warnings.borrow().clone();
        opts.log.info(&format!(
            "applied {} up to the dynamic phase; the first boot finishes it (dynamic, runtime, state, report)",
            state.describe()
        ));
        return Ok(ApplyReport {
            state,
            already_applied: false,
            plan: Vec::new(),
            deferred: true,
        });
    }
    state.applied_at = now_rfc3339();
    state.dynamic = ctx.dynamic_summary.borrow().clone();
    state.health = ctx.health.borrow().clone();
    if let Some(setup) = dynamic {
        state.hostname = crate::engine::dynamic::hostname(setup.config, &root_fs).ok();
    }
    if let Err(error) = &result {
        state.result = Outcome::Failure;
        state.exit_code = error.exit_code();
        state.error = Some(error_text(error));
    }
    // The report to Consul, before the state file so that the state file says how it went.
    if let Some(setup) = dynamic {
        if let Some(r) = setup.sources.report(&root_fs, &state, opts.log) {
            let d = state.dynamic.get_or_insert_with(Default::default);
            d.consul_requests += r.requests;
            match r.result {
                Ok(at) => {
                    opts.log.info(&format!("reported the result to {at}"));
                    d.report = Some(at);
                }
                Err(e) => {
                    d.report = Some(format!("failed: {e}"));
                    ctx.warn(&format!("could not report the result: {e}"));
                }
            }
        }
    }
    state.warnings = ctx.warnings.borrow().clone();
    match result {
        Ok(()) => {
            state.write(&root_fs).map_err(ApplyError::State)?;
            cleanup_after_success(&ctx, &opts.bundle_sha256);
            opts.log.info(&format!("applied {}", state.describe()));
            Ok(ApplyReport {
                state,
                already_applied: false,
                plan: Vec::new(),
                deferred: false,
            })
        }
        Err(error) => {
            if let Err(e) = state.write(&root_fs) {
                opts.log
                    .warn(&format!("could not write the state file: {e}"));
            }
            Err(ApplyFailure {
                error,
                state: Some(Box::new(state)),
            })
        }
    }
}

/// The error and, for a failed program, the end of its output.
fn error_text(e: &ApplyError) -> String {
    match e {
        ApplyError::Tool { output, .. } if !output.trim().is_empty() => {
            let tail: Vec<&str> = output.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{e}:\n{}", tail.join("\n"))
        }
        _ => e.to_string(),
    }
}

fn run_phases(
    ctx: &Ctx,
    journal: &mut Journal,
    steps: &mut Vec<Step>,
    commands: &mut Vec<CommandResult>,
    stop_before: Option<&str>,
) -> Result<(), ApplyError> {
    for &phase in PHASES {
        if Some(phase) == stop_before {
            break;
        }
        if let Some((seconds, summary)) = journal.done(phase) {
            ctx.log
                .info(&format!("{phase}: done in an earlier run ({summary})"));
            steps.push(Step {
                name: phase.into(),
                seconds,
                summary: format!("{EARLIER_RUN}{summary}"),
            });
            if phase == "commands" {
                for c in &ctx.manifest.commands {
                    if let Some(Record::Command {
                        name,
                        status,
                        exit_code,
                        seconds,
                        output,
                        truncated,
                    }) = journal.command_result(&c.name)
                    {
                        commands.push(CommandResult {
                            name: name.clone(),
                            status: status.clone(),
                            exit_code: *exit_code,
                            seconds: *seconds,
                            output: output.clone(),
                            truncated: *truncated,
                        });
                    }
                }
            }
            continue;
        }
        let t = Instant::now();
        let summary = match run_phase(ctx, journal, commands, phase) {
            Ok(summary) => summary,
            Err(e) => {
                // The failed phase is listed too (state file, report, timings line), with
                // the first line of its error.
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default();
                steps.push(Step {
                    name: phase.into(),
                    seconds: secs(t.elapsed()),
                    summary: format!("failed: {first}"),
                });
                return Err(e);
            }
        };
        let took = t.elapsed();
        ctx.log
            .info(&format!("{phase}: {summary} ({:.2}s)", took.as_secs_f64()));
        journal
            .finish_phase(phase, took, &summary)
            .map_err(ApplyError::Journal)?;
        steps.push(Step {
            name: phase.into(),
            seconds: secs(took),
            summary,
        });
    }
    Ok(())
}

/// One phase; returns its summary line.
fn run_phase(
    ctx: &Ctx,
    journal: &mut Journal,
    commands: &mut Vec<CommandResult>,
    phase: &str,
) -> Result<String, ApplyError> {
    Ok(match phase {
        "groups" => {
            if ctx.manifest.groups.is_empty() {
                "none".to_string()
            } else {
                let n = accounts::apply_groups(ctx)?;
                format!("{n} created, {} present", ctx.manifest.groups.len() - n)
            }
        }
        "users" => {
            if ctx.manifest.users.is_empty() {
                "none".to_string()
            } else {
                let n = accounts::apply_users(ctx)?;
                format!(
                    "{n} created or changed, {} unchanged",
                    ctx.manifest.users.len() - n
                )
            }
        }
        "packages" => {
            let summary = if ctx.manifest.packages.is_empty() {
                "none".to_string()
            } else {
                packages::apply_packages(ctx, journal)?
            };
            check_system_accounts(ctx)?;
            summary
        }
        "directories" => entries::apply_directories(ctx)?.to_string(),
        "files" => entries::apply_files(ctx, journal)?.to_string(),
        "symlinks" => entries::apply_symlinks(ctx)?.to_string(),
        "absent" => entries::apply_absent(ctx)?.to_string(),
        "services" => {
            if ctx.manifest.services.is_empty() {
                "none".to_string()
            } else {
                services::apply_enablement(ctx)?
            }
        }
        "commands" => {
            let r = commands::apply_commands(ctx, journal, commands);
            r?
        }
        "dynamic" => match ctx.dynamic {
            _ if ctx.manifest.templates.is_empty() && ctx.manifest.dynamic.is_none() => {
                "none".to_string()
            }
            Some(setup) => crate::engine::dynamic::run_phase(ctx, setup, journal)?,
            None => {
                ctx.warn(&format!(
                        "{} dynamic template(s) not rendered: no dynamic sources given (an offline apply)",
                        ctx.manifest.templates.len()
                    ));
                format!(
                    "{} template(s) skipped (offline)",
                    ctx.manifest.templates.len()
                )
            }
        },
        "runtime" => {
            if ctx.live {
                let changed: BTreeSet<String> =
                    journal.changed_paths().map(str::to_string).collect();
                services::apply_runtime(ctx, &changed)?
            } else {
                "offline root: services not started".to_string()
            }
        }
        "health" => health::run_checks(ctx)?,
        other => unreachable!("phase {other} is not in PHASES"),
    })
}

/// Holds an exclusive flock on the root directory for the whole apply (released on drop).
struct Lock {
    _fd: std::os::fd::OwnedFd,
}

fn lock(root: &Root) -> Result<Lock, ApplyError> {
    // Close-on-exec: a command that leaves a daemon behind must not take the lock with it.
    let fd = fsroot::dup_cloexec(root.fd())
        .map_err(|e| ApplyError::step("lock", &root.path().display().to_string(), e))?;
    // A run killed right after forking a program leaves the child holding a copy of the
    // locked descriptor until it execs (close-on-exec) or dies with its parent, a few
    // milliseconds later: a rerun that comes at once waits that long before calling it busy.
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    loop {
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Lock { _fd: fd });
        }
        if Instant::now() >= deadline {
            return Err(ApplyError::Busy(root.path().display().to_string()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Bytes handed to the staging writer at a time, and how many such pieces may wait for it.
const PIECE: usize = 128 * 1024;
const PIECES_QUEUED: usize = 16;

/// A piece of a blob for the staging writer.
struct Piece {
    /// On a blob's first piece: the file to create, relative to the blobs directory.
    name: Option<String>,
    data: Vec<u8>,
    /// On a blob's last piece: `Some`, with the owner and mode the file is to get (uid, gid,
    /// mode) when known now.
    last: Option<Option<entries::OwnerMode>>,
}

/// Streams every blob into the staging directory; the signing reader checks each digest and
/// size as it arrives and the archive's end. Returns how many directories it created (for
/// cleanup), or the error and that count.
///
/// Two threads: this one decompresses and hashes, a writer creates and writes the files (the
/// kernel's half of the work, as large as the other), with at most [`PIECES_QUEUED`] pieces
/// of [`PIECE`] bytes between them. A blob only one file uses gets that file's owner and mode
/// already (when its owner exists now; the files phase checks, and sets what is missing).
fn stage<R: Read>(ctx: &Ctx, bundle: VerifiedBundle<R>) -> Result<usize, (ApplyError, usize)> {
    let blobs_dir = format!("{}/blobs", ctx.staging);
    let staging_err = |e: io::Error| ApplyError::Staging {
        path: ctx.root.display(&blobs_dir).display().to_string(),
        source: e,
    };
    let (dir, created) = ctx
        .root
        .mkdir_p_counted(&blobs_dir)
        .map_err(|e| (staging_err(e), 0))?;
    // Root's alone: blobs get their final owner and mode here before they are renamed into
    // place, and no one else may reach them meanwhile.
    nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(0o700))
        .map_err(|e| (staging_err(e.into()), created))?;
    let trees = entries::plan_staging(ctx).map_err(|e| (e, created))?;
    if created == 0 {
        // Trees an interrupted run left: each is staged again from scratch, with no file
        // that is not this run's.
        for &i in trees.dirs.keys() {
            let tree = format!("{blobs_dir}/{}", entries::tree_name(i));
            ctx.root
                .remove_tree(&tree)
                .map_err(|e| (staging_err(e), created))?;
        }
    }
    let (read, wrote) = std::thread::scope(|s| {
        let (pieces, queue) = std::sync::mpsc::sync_channel::<Piece>(PIECES_QUEUED);
        let (spare, spares) = std::sync::mpsc::channel::<Vec<u8>>();
        let dir = &dir;
        let writer = s.spawn(move || write_staged(dir, queue, spare));

        let read = bundle.for_each_blob(|blob, reader| -> Result<(), ApplyError> {
            let meta = trees.meta(&blob.digest);
            let mut name = Some(trees.staged_name(&blob.digest));
            loop {
                let mut data = spares.try_recv().unwrap_or_default();
                data.clear();
                // The reader's own failure (digest, truncation) is reported by for_each_blob.
                let n = (&mut *reader)
                    .take(PIECE as u64)
                    .read_to_end(&mut data)
                    .map_err(staging_err)?;
                let last = n < PIECE;
                let piece = Piece {
                    name: name.take(),
                    data,
                    last: last.then_some(meta),
                };
                if pieces.send(piece).is_err() {
                    // The writer stopped on an error, which it returns.
                    return Err(staging_err(io::Error::other("the staging writer stopped")));
                }
                if last {
                    return Ok(());
                }
            }
        });
        drop(pieces);
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the staging writer panicked")));
        (read, wrote)
    });
    *ctx.trees.borrow_mut() = trees;
    match (read, wrote) {
        (Ok(()), Ok(())) => Ok(created),
        // A bad bundle is the error, whatever the writer made of it.
        (Err(e @ ApplyError::Bundle(_)), _) => Err((e, created)),
        (_, Err(e)) => Err((staging_err(e), created)),
        (Err(e), Ok(())) => Err((e, created)),
    }
}

/// The staging writer: creates each blob's file (its fan-out directory too), writes its
/// pieces, sets owner and mode. Stops at the first error.
fn write_staged(
    dir: &std::os::fd::OwnedFd,
    queue: std::sync::mpsc::Receiver<Piece>,
    spare: std::sync::mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    use std::os::fd::AsFd;
    let create = |name: &str| {
        nix::fcntl::openat(
            dir,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    };
    let mut file: Option<std::fs::File> = None;
    let mut writeback = Writeback::new(dir.as_fd());
    for p in queue {
        if let Some(name) = &p.name {
            let fd = match create(name) {
                Err(nix::errno::Errno::ENOENT) => {
                    if let Some((sub, _)) = name.split_once('/') {
                        match nix::sys::stat::mkdirat(dir, sub, Mode::from_bits_truncate(0o700)) {
                            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    create(name)?
                }
                other => other?,
            };
            file = Some(std::fs::File::from(fd));
        }
        let f = file
            .as_mut()
            .ok_or_else(|| io::Error::other("a blob's piece came before its name"))?;
        f.write_all(&p.data)?;
        writeback.wrote(p.data.len());
        if let Some(meta) = p.last {
            if let Some((uid, gid, mode)) = meta {
                fsroot::set_owner_mode(f.as_fd(), uid, gid, mode)?;
            }
            file = None;
        }
        let _ = spare.send(p.data);
    }
    writeback.finish();
    Ok(())
}

/// Bytes staged between two background writebacks.
const WRITEBACK_EVERY: usize = 32 << 20;

/// Writes the staged blobs to disk while the apply goes on: every [`WRITEBACK_EVERY`] bytes
/// staged (and once more when staging ends), a `syncfs` in a thread of its own, not waited for,
/// one at a time. It only moves work earlier, to where the disk would otherwise idle; the files
/// phase's own `syncfs` before its renames is what guarantees the bytes are on disk, and finds
/// little left to write.
struct Writeback {
    fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    bytes: usize,
}

impl Writeback {
    fn new(fd: std::os::fd::BorrowedFd) -> Writeback {
        Writeback {
            fd: fd.try_clone_to_owned().ok().map(std::sync::Arc::new),
            running: Default::default(),
            bytes: 0,
        }
    }

    fn wrote(&mut self, n: usize) {
        self.bytes += n;
        if self.bytes >= WRITEBACK_EVERY {
            self.kick();
        }
    }

    /// The last writeback, when every blob is staged: started even if one is running, which
    /// may have begun before the last bytes were written.
    fn finish(mut self) {
        self.running = Default::default();
        self.kick();
    }

    /// Starts a background `syncfs` unless one is running.
    fn kick(&mut self) {
        use std::sync::atomic::Ordering;
        let Some(fd) = &self.fd else { return };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.bytes = 0;
        let (fd, running) = (fd.clone(), self.running.clone());
        let spawned = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                let _ = nix::unistd::syncfs(&*fd);
                running.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.running.store(false, Ordering::Release);
        }
    }
}

/// Removes this bundle's staging directory, then the parents that staging created, if empty.
fn remove_staging(ctx: &Ctx, created: usize) {
    if let Err(e) = ctx.root.remove_tree(&ctx.staging) {
        ctx.log.warn(&format!(
            "could not remove {}: {e}",
            ctx.root.display(&ctx.staging).display()
        ));
    }
    // `created` counts the components of <staging>/blobs this run made; remove_tree took the
    // last two (<sha256>/blobs), the others are its parents, innermost first.
    let mut path = ctx.staging.clone();
    for _ in 2..created {
        if let Some(i) = path.rfind('/') {
            path.truncate(i);
            if path.is_empty() || path.len() < "/var/lib".len() {
                break;
            }
            if let Ok(Some(p)) = ctx.root.parent(&path, false) {
                let _ = p.remove(fsroot::Kind::Dir);
            }
        }
    }
}

/// After success (or finding the bundle already applied): the journal and the whole staging
/// area go (any other staging left there belongs to an interrupted run of another bundle; the
/// lock guarantees no apply is using it).
fn cleanup_after_success(ctx: &Ctx, sha256: &str) {
    tidy(ctx.root, sha256, ctx.log);
}

/// Removes what a crash between writing the state file and cleaning up may have left of the
/// applied bundle `sha256`: its journal and the staging area. A journal of another bundle (an
/// interrupted `--force`) is left alone, with its staging.
fn tidy(root: &Root, sha256: &str, log: &dyn Log) {
    let other_pending = match journal::read(root) {
        Ok(Some((j, _))) if j.sha256 == sha256 => {
            if let Err(e) = journal::remove(root) {
                log.warn(&format!("could not remove the journal: {e}"));
            }
            false
        }
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(e) => {
            log.warn(&format!("could not read the journal: {e}"));
            true
        }
    };
    let dir = if other_pending {
        staging_dir(sha256)
    } else {
        STAGING_DIR.to_string()
    };
    if let Err(e) = root.remove_tree(&dir) {
        log.warn(&format!(
            "could not remove {}: {e}",
            root.display(&dir).display()
        ));
    }
}

/// For a root whose state file says `sha256` is applied: takes the lock and tidies leftovers of
/// a crash after the state was written (see [`apply`]; `kiln-firstboot` calls this when it finds
/// the bundle already applied). Busy or unreadable: nothing is done.
pub fn tidy_applied(root: &Path, sha256: &str, log: &dyn Log) {
    let Ok(root) = Root::open(root) else { return };
    let Ok(_lock) = lock(&root) else { return };
    tidy(&root, sha256, log);
}

/// Every owner and group an entry or a dynamic template names must exist in the root, be
/// created by the bundle, or be one of its `system_accounts` (made by its packages; checked
/// once they are installed, see [`check_system_accounts`]). Users and groups are created before
/// packages, so a user's groups may not be system accounts.
fn check_owners(ctx: &Ctx, have: &Accounts) -> Result<Vec<String>, ApplyError> {
    let m = ctx.manifest;
    let system: HashSet<&str> = m.system_accounts.iter().map(String::as_str).collect();
    let users: HashSet<&str> = m.users.iter().map(|u| u.name.as_str()).collect();
    let groups: HashSet<&str> = m
        .groups
        .iter()
        .map(|g| g.name.as_str())
        // useradd makes a group of the user's name when none is given.
        .chain(
            m.users
                .iter()
                .filter(|u| u.group.is_none())
                .map(|u| u.name.as_str()),
        )
        .collect();
    let mut out = Vec::new();
    let mut check = |path: &str, owner: &str, group: &str| {
        if have.uid(owner).is_none() && !users.contains(owner) && !system.contains(owner) {
            out.push(format!(
                "{path}: owner {owner:?} exists neither in the root nor in the bundle"
            ));
        }
        if have.gid(group).is_none() && !groups.contains(group) && !system.contains(group) {
            out.push(format!(
                "{path}: group {group:?} exists neither in the root nor in the bundle"
            ));
        }
    };
    for e in ctx.entries() {
        let e = e?;
        if let EntryKind::File { owner, group, .. } | EntryKind::Directory { owner, group, .. } =
            &e.kind
        {
            check(&e.path, owner, group);
        }
    }
    for t in &m.templates {
        check(&t.path, &t.owner, &t.group);
    }
    for u in &m.users {
        for g in u.group.iter().chain(&u.groups) {
            if have.gid(g).is_some() || groups.contains(g.as_str()) {
                continue;
            }
            if system.contains(g.as_str()) {
                out.push(format!(
                    "user {}: group {g:?} is made by a package (system_accounts), but users are created before packages",
                    u.name
                ));
            } else {
                out.push(format!(
                    "user {}: group {g:?} exists neither in the root nor in the bundle",
                    u.name
                ));
            }
        }
    }
    Ok(out)
}

/// After the packages phase: every system account the bundle's files are owned by exists now,
/// as the user or group it is used as (the packages' maintainer scripts made it).
fn check_system_accounts(ctx: &Ctx) -> Result<(), ApplyError> {
    let m = ctx.manifest;
    if m.system_accounts.is_empty() {
        return Ok(());
    }
    let have =
        Accounts::load(ctx.root).map_err(|e| ApplyError::step("packages", "/etc/passwd", e))?;
    // Which of them the entries and templates use as an owner, and which as a group.
    let mut as_user: HashSet<&str> = HashSet::new();
    let mut as_group: HashSet<&str> = HashSet::new();
    let mut note = |owner: &str, group: &str| {
        if let Some(a) = m.system_accounts.iter().find(|a| *a == owner) {
            as_user.insert(a);
        }
        if let Some(a) = m.system_accounts.iter().find(|a| *a == group) {
            as_group.insert(a);
        }
    };
    for e in ctx.entries() {
        let e = e?;
        if let EntryKind::File { owner, group, .. } | EntryKind::Directory { owner, group, .. } =
            &e.kind
        {
            note(owner, group);
        }
    }
    for t in &m.templates {
        note(&t.owner, &t.group);
    }
    let mut missing: Vec<String> = Vec::new();
    for a in &m.system_accounts {
        let used_as_user = as_user.contains(a.as_str());
        let used_as_group = as_group.contains(a.as_str());
        let user_ok = !used_as_user || have.uid(a).is_some();
        let group_ok = !used_as_group || have.gid(a).is_some();
        // Named but owning nothing: it must still exist in some form.
        let named_ok =
            used_as_user || used_as_group || have.uid(a).is_some() || have.gid(a).is_some();
        if !user_ok {
            missing.push(format!("user {a:?}"));
        } else if !group_ok {
            missing.push(format!("group {a:?}"));
        } else if !named_ok {
            missing.push(format!("account {a:?}"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let installed: Vec<&str> = m
        .packages
        .iter()
        .filter(|p| p.digest.is_some())
        .map(|p| p.name.as_str())
        .collect();
    let set = if installed.is_empty() {
        "the bundle carries no packages (was it built without --base?)".to_string()
    } else {
        const SHOWN: usize = 12;
        let mut s = installed[..installed.len().min(SHOWN)].join(", ");
        if installed.len() > SHOWN {
            s.push_str(&format!(", and {} more", installed.len() - SHOWN));
        }
        format!("its packages ({s}) did not create it")
    };
    Err(ApplyError::step(
        "packages",
        "system_accounts",
        format!(
            "{} named in system_accounts does not exist after the packages phase: {set}",
            missing.join(", ")
        ),
    ))
}

/// Conflicts between the bundle and the root, found read-only before anything changes.
fn preflight(ctx: &Ctx) -> Result<Vec<String>, ApplyError> {
    let have =
        Accounts::load(ctx.root).map_err(|e| ApplyError::step("preflight", "/etc/passwd", e))?;
    let mut out = check_owners(ctx, &have)?;
    if let Err(e) = accounts::plan_groups(&have, &ctx.manifest.groups) {
        out.push(e);
    }
    if let Err(e) = accounts::plan_users(&have, &ctx.manifest.users) {
        out.push(e);
    }
    let absent = absent_paths(ctx)?;
    for e in ctx.entries() {
        let e = e?;
        if let Err(why) = entries::plan_entry(ctx.root, &e, None, &absent, false) {
            out.push(format!("{}: {why}", e.path));
        }
    }
    out.extend(conflicts::find(ctx, &have, &conflicts::Debs::Staged)?);
    Ok(out)
}

/// The paths the bundle makes absent, sorted (few: held in memory).
pub(crate) fn absent_paths(ctx: &Ctx) -> Result<BTreeSet<String>, ApplyError> {
    let mut out = BTreeSet::new();
    for e in ctx.entries() {
        let e = e?;
        if matches!(e.kind, EntryKind::Absent) {
            out.insert(e.into_owned().path);
        }
    }
    Ok(out)
}

/// Dry run: what applying would change, one line each; conflicts are errors.
fn plan(ctx: &Ctx, hash: bool, debs: &conflicts::Debs) -> Result<Vec<String>, ApplyError> {
    let have = Accounts::load(ctx.root).map_err(|e| ApplyError::step("plan", "/etc/passwd", e))?;
    let mut conflicts = check_owners(ctx, &have)?;
    let mut out = Vec::new();
    match accounts::plan_groups(&have, &ctx.manifest.groups) {
        Ok(v) => out.extend(v),
        Err(e) => conflicts.push(e),
    }
    match accounts::plan_users(&have, &ctx.manifest.users) {
        Ok(v) => out.extend(v),
        Err(e) => conflicts.push(e),
    }
    let installed = packages::installed(ctx)?;
    for p in packages::todo(&installed, &ctx.manifest.packages) {
        out.push(
            format!(
                "install package {} {}",
                p.name,
                p.version.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        );
    }
    for p in ctx.manifest.packages.iter().filter(|p| p.digest.is_none()) {
        out.push(format!(
            "skip package {} (not resolved at build time)",
            p.name
        ));
    }
    for a in &ctx.manifest.system_accounts {
        if have.uid(a).is_none() && have.gid(a).is_none() {
            out.push(format!(
                "expect system account {a} from the packages (checked once they are installed)"
            ));
        }
    }
    let absent = absent_paths(ctx)?;
    // In the order the phases apply them: directories, files, symlinks (one pass each over
    // the entries, which are sorted by path), absent (deepest first).
    let mut plan_one = |e: &Entry| {
        let ids = match &e.kind {
            EntryKind::File { owner, group, .. } | EntryKind::Directory { owner, group, .. } => {
                entries::ids(&have, owner, group).ok()
            }
            _ => None,
        };
        let kind = match &e.kind {
            EntryKind::File { .. } => "file",
            EntryKind::Directory { .. } => "directory",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::Absent => "absent",
        };
        match entries::plan_entry(ctx.root, e, ids, &absent, hash) {
            Ok(Action::Unchanged) => {}
            Ok(Action::Create) => out.push(format!("create {kind} {}", e.path)),
            Ok(Action::Replace) => out.push(format!("replace {kind} {}", e.path)),
            Ok(Action::Metadata) => out.push(format!("set mode/owner of {}", e.path)),
            Ok(Action::Remove) => out.push(format!("remove {}", e.path)),
            Err(why) => conflicts.push(format!("{}: {why}", e.path)),
        }
    };
    let in_phase: [fn(&EntryKind) -> bool; 3] = [
        |k| matches!(k, EntryKind::Directory { .. }),
        |k| matches!(k, EntryKind::File { .. }),
        |k| matches!(k, EntryKind::Symlink { .. }),
    ];
    for wanted in in_phase {
        for e in ctx.entries() {
            let e = e?;
            if wanted(&e.kind) {
                plan_one(&e);
            }
        }
    }
    for path in absent.iter().rev() {
        plan_one(&Entry {
            path: path.clone(),
            kind: EntryKind::Absent,
        });
    }
    conflicts.extend(conflicts::find(ctx, &have, debs)?);
    for s in &ctx.manifest.services {
        match services::enablement(ctx, &s.name) {
            Ok(now) => {
                let enabled = matches!(
                    now.as_str(),
                    "enabled" | "enabled-runtime" | "static" | "indirect" | "generated" | "alias"
                );
                if s.enabled && !enabled {
                    out.push(format!("enable {} (now {now})", s.name));
                } else if !s.enabled && now == "enabled" {
                    out.push(format!("disable {}", s.name));
                }
            }
            Err(e) => out.push(format!(
                "enable/disable {}: cannot ask systemctl ({e})",
                s.name
            )),
        }
    }
    for t in &ctx.manifest.templates {
        let mut reads: Vec<String> = t.consul.iter().map(|k| format!("consul {k}")).collect();
        reads.extend(t.vault.iter().map(|v| format!("vault {v}")));
        out.push(format!(
            "render dynamic template {} ({})",
            t.path,
            if reads.is_empty() {
                "reads nothing".to_string()
            } else {
                format!("reads {}", reads.join(", "))
            }
        ));
    }
    for c in &ctx.manifest.commands {
        let skip = match &c.creates {
            Some(p) => ctx.root.exists(p).unwrap_or(false),
            None => false,
        };
        if !skip {
            out.push(format!("run command {}", c.name));
        }
    }
    if ctx.live {
        for s in &ctx.manifest.services {
            out.push(format!(
                "{} {}",
                if s.state == kiln_signing::ServiceState::Running {
                    "start"
                } else {
                    "stop"
                },
                s.name
            ));
        }
    }
    if ctx.live && !ctx.manifest.checks.is_empty() {
        out.push(format!(
            "run {} health check(s): {}",
            ctx.manifest.checks.len(),
            ctx.manifest
                .checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::Conflicts(conflicts));
    }
    Ok(out)
}
