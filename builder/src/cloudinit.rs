//! `kiln cloud-init`: the `#cloud-config` user-data that starts kiln-firstboot at a VM's first
//! boot with the bundle's pinned digest.
//!
//! What it holds, and nothing else:
//! - `write_files`: `/etc/kiln/firstboot.conf` (where Consul and Vault are, where the credentials
//!   lie: kiln-firstboot's config file), the CA certificates if given (0644), and the secrets:
//!   the response-wrapped secret_id and the Consul token, each 0600 root:root under `/run/kiln/`
//!   (tmpfs: never on disk; kiln-firstboot deletes the wrapped secret_id once it has logged in).
//!   With `--via systemd`, also `/etc/kiln/firstboot.env` for `kiln-firstboot.service`.
//! - `runcmd` (the default, `--via runcmd`): one `sh -c` script that runs kiln-firstboot, then
//!   writes one line on the console, `KILN-FIRSTBOOT: OK ...` or `KILN-FIRSTBOOT: FAILED exit=N
//!   ...`, also to the journal, and exits with kiln-firstboot's code (cloud-init then reports
//!   the boot as failed: `cloud-init status` exits 1).
//!
//! The bundle is never inlined: hosts fetch it by URL, or read it from the NoCloud seed disk
//! (`--bundle-file` alone). AWS caps user-data at 16 KB; the output is refused past that.

use std::fmt::Write;

/// AWS EC2's limit on user-data (before base64), the smallest of the common clouds.
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Where the secrets cloud-init hands over are written (tmpfs).
pub const WRAPPED_SECRET_ID_PATH: &str = "/run/kiln/wrapped-secret-id";
pub const CONSUL_TOKEN_PATH: &str = "/run/kiln/consul-token";
pub const CONSUL_CA_PATH: &str = "/etc/kiln/consul-ca.pem";
pub const VAULT_CA_PATH: &str = "/etc/kiln/vault-ca.pem";
pub const CONF_PATH: &str = "/etc/kiln/firstboot.conf";
pub const ENV_PATH: &str = "/etc/kiln/firstboot.env";
/// Where the seed disk is mounted (read-only) to read a bundle shipped on it.
pub const SEED_MOUNT: &str = "/run/kiln/seed";
/// The line the script writes on the console (and the test looks for).
pub const MARKER: &str = "KILN-FIRSTBOOT:";

/// Where the host gets the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// Downloaded by kiln-firstboot (http:// or https://).
    Url(String),
    /// A file on the NoCloud seed disk (label `cidata`), by its name there.
    Seed(String),
}

/// Who starts kiln-firstboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// cloud-init's runcmd (in cloud-final, after the boot's services started).
    Runcmd,
    /// kiln-firstboot.service, installed by `kiln bake`: during boot, before the services the
    /// bundle runs (it reads /etc/kiln/firstboot.env, written by cloud-init's write_files).
    Systemd,
}

/// Everything the user-data says.
#[derive(Debug, Clone)]
pub struct Spec {
    pub hostgroup: String,
    /// The bundle's version, when known (for the comment only).
    pub version: Option<u64>,
    pub source: BundleSource,
    pub sha256: String,
    pub via: Via,
    pub consul_addr: Option<String>,
    pub consul_ca_pem: Option<String>,
    pub consul_token: Option<String>,
    pub vault_addr: Option<String>,
    pub vault_ca_pem: Option<String>,
    pub vault_role_id: Option<String>,
    pub wrapped_secret_id: Option<String>,
    pub min_version: Option<u64>,
    /// kiln-firstboot's fetch deadline (`--deadline`), e.g. `10m`.
    pub deadline: Option<String>,
    /// kiln-firstboot's dynamic deadline, e.g. `5m`.
    pub dynamic_deadline: Option<String>,
    /// `kiln-firstboot`'s path in the image.
    pub firstboot: String,
}

/// A YAML double-quoted scalar (JSON's escaping is valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A POSIX shell single-quoted word.
fn shq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `text` as a YAML literal block scalar at `indent` spaces, keeping its final newline.
fn block(out: &mut String, indent: usize, text: &str) {
    let pad = " ".repeat(indent);
    out.push_str(if text.ends_with('\n') { "|\n" } else { "|-\n" });
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
}

/// Values that go into a line-based file or a shell word must be one line of printable text.
pub fn check_value(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.chars().any(|c| c.is_control()) {
        return Err(format!("{what} {v:?}: must be one line of printable text"));
    }
    Ok(())
}

fn check_url(what: &str, v: &str) -> Result<(), String> {
    check_value(what, v)?;
    let l = v.to_ascii_lowercase();
    if !(l.starts_with("http://") || l.starts_with("https://")) || v.contains([' ', '"', '\'']) {
        return Err(format!("{what} {v:?}: expected an http:// or https:// URL"));
    }
    Ok(())
}

/// Checks the spec: one-line values, URLs, a 64-hex digest, a seed file name without `/`.
pub fn check(s: &Spec) -> Result<(), String> {
    if !crate::config::check::is_hostgroup_name(&s.hostgroup) {
        return Err(format!("hostgroup {:?} is not a valid name", s.hostgroup));
    }
    if kiln_signing::spec::sha256_hex_any_case(&s.sha256).is_none() {
        return Err(format!("--sha256 {:?} is not 64 hex digits", s.sha256));
    }
    match &s.source {
        BundleSource::Url(u) => check_url("--bundle-url", u)?,
        BundleSource::Seed(name) => {
            check_value("bundle file name", name)?;
            if name.contains('/') || name.starts_with('.') || name.contains(['\'', ' ']) {
                return Err(format!(
                    "bundle file name {name:?}: the seed disk holds it at its top level, under a plain name"
                ));
            }
            if s.via == Via::Systemd {
                return Err("--via systemd needs --bundle-url: kiln-firstboot.service does not mount the seed disk".into());
            }
        }
    }
    for (what, v) in [
        ("--consul-addr", &s.consul_addr),
        ("--vault-addr", &s.vault_addr),
    ] {
        if let Some(v) = v {
            check_url(what, v)?;
        }
    }
    for (what, v) in [
        ("the wrapped secret_id", &s.wrapped_secret_id),
        ("the Consul token", &s.consul_token),
        ("--vault-role-id", &s.vault_role_id),
        ("--deadline", &s.deadline),
        ("--dynamic-deadline", &s.dynamic_deadline),
    ] {
        if let Some(v) = v {
            check_value(what, v)?;
        }
    }
    if s.wrapped_secret_id.is_some() && s.vault_addr.is_none() {
        return Err("a wrapped secret_id without --vault-addr: kiln-firstboot would not know where to unwrap it".into());
    }
    Ok(())
}

/// Checks that the VM is told where each dynamic source the bundle reads is: a bundle that
/// reads Consul or Vault with no address for it would fail at first boot (kiln-firstboot's
/// exit 20), on every VM, after the image was launched.
pub fn check_sources(m: &kiln_signing::Manifest, s: &Spec) -> Result<(), String> {
    let dynamic = m.dynamic.as_ref();
    let consul = dynamic.is_some_and(|d| d.consul.is_some())
        || m.templates.iter().any(|t| !t.consul.is_empty());
    let vault = dynamic.is_some_and(|d| d.vault.is_some())
        || m.templates.iter().any(|t| !t.vault.is_empty());
    let missing: Vec<&str> = [
        (
            consul && s.consul_addr.is_none(),
            "Consul (--consul-addr URL)",
        ),
        (vault && s.vault_addr.is_none(), "Vault (--vault-addr URL)"),
    ]
    .into_iter()
    .filter_map(|(missing, what)| missing.then_some(what))
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the bundle reads {} but no address is given: kiln-firstboot would fail at first boot (exit 20)",
        missing.join(" and ")
    ))
}

/// The kiln-firstboot command line (shell words).
fn firstboot_args(s: &Spec, bundle: &str) -> String {
    let mut a = format!(
        "{} apply --bundle {} --sha256 {} --hostgroup {}",
        shq(&s.firstboot),
        bundle,
        s.sha256.to_ascii_lowercase(),
        shq(&s.hostgroup)
    );
    if let Some(v) = s.min_version {
        let _ = write!(a, " --min-version {v}");
    }
    if let Some(d) = &s.deadline {
        let _ = write!(a, " --deadline {}", shq(d));
    }
    a
}

/// The runcmd script: runs kiln-firstboot, then one loud line on the console and the journal.
fn script(s: &Spec) -> String {
    let mut out = String::new();
    out.push_str("up() { cut -d' ' -f1 /proc/uptime; }\n");
    let _ = writeln!(
        out,
        "say() {{ p=$1; shift; echo \"{MARKER} $*\" >/dev/console 2>/dev/null; logger -t kiln-firstboot -p \"user.$p\" \"$*\" 2>/dev/null || true; }}"
    );
    let _ = writeln!(out, "echo \"{MARKER} start uptime=$(up)\"");
    let bundle = match &s.source {
        BundleSource::Url(u) => shq(u),
        BundleSource::Seed(name) => {
            // The NoCloud seed disk (ISO label cidata, vfat CIDATA), read-only, only for this.
            let _ = writeln!(out, "mkdir -p {SEED_MOUNT}");
            let _ = writeln!(
                out,
                "if ! mount -o ro LABEL=cidata {SEED_MOUNT} 2>/dev/null && ! mount -o ro LABEL=CIDATA {SEED_MOUNT}; then"
            );
            let _ = writeln!(
                out,
                "  say err FAILED exit=18 hostgroup={} reason=no-seed-disk uptime=$(up); exit 18",
                s.hostgroup
            );
            out.push_str("fi\n");
            shq(&format!("{SEED_MOUNT}/{name}"))
        }
    };
    let _ = writeln!(out, "{}", firstboot_args(s, &bundle));
    out.push_str("rc=$?\n");
    if matches!(s.source, BundleSource::Seed(_)) {
        let _ = writeln!(out, "umount {SEED_MOUNT} 2>/dev/null");
    }
    let _ = writeln!(
        out,
        "if [ \"$rc\" -eq 0 ]; then say info OK hostgroup={hg} uptime=$(up); else say err FAILED exit=$rc hostgroup={hg} uptime=$(up) see=\"kiln-firstboot status; /var/log/cloud-init-output.log\"; fi",
        hg = s.hostgroup
    );
    out.push_str("exit \"$rc\"\n");
    out
}

/// `/etc/kiln/firstboot.conf` (kiln-firstboot's config file).
fn conf(s: &Spec) -> String {
    let mut c =
        String::from("# Written by cloud-init (kiln cloud-init): where Consul and Vault are.\n");
    if let Some(a) = &s.consul_addr {
        let _ = writeln!(c, "consul-addr = {a}");
    }
    if s.consul_token.is_some() {
        let _ = writeln!(c, "consul-token-file = {CONSUL_TOKEN_PATH}");
    }
    if s.consul_ca_pem.is_some() {
        let _ = writeln!(c, "consul-ca = {CONSUL_CA_PATH}");
    }
    if let Some(a) = &s.vault_addr {
        let _ = writeln!(c, "vault-addr = {a}");
    }
    if s.vault_ca_pem.is_some() {
        let _ = writeln!(c, "vault-ca = {VAULT_CA_PATH}");
    }
    if s.vault_role_id.is_some() {
        let _ = writeln!(c, "vault-role-id-file = /etc/kiln/vault-role-id");
    }
    if s.wrapped_secret_id.is_some() {
        let _ = writeln!(c, "wrapped-secret-id-file = {WRAPPED_SECRET_ID_PATH}");
    }
    if let Some(d) = &s.dynamic_deadline {
        let _ = writeln!(c, "dynamic-deadline = {d}");
    }
    c
}

fn write_file(out: &mut String, path: &str, mode: &str, content: &str) {
    let _ = writeln!(out, "  - path: {path}");
    out.push_str("    owner: root:root\n");
    let _ = writeln!(out, "    permissions: '{mode}'");
    out.push_str("    content: ");
    block(out, 6, content);
}

/// The user-data. Call [`check`] first.
pub fn render(s: &Spec) -> String {
    let mut out = String::from("#cloud-config\n");
    let _ = writeln!(
        out,
        "# kiln cloud-init {}{}: kiln-firstboot applies the bundle once, at first boot ({}).",
        s.hostgroup,
        s.version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default(),
        match s.via {
            Via::Runcmd => "cloud-init runcmd",
            Via::Systemd => "kiln-firstboot.service",
        }
    );
    let _ = writeln!(out, "# Pinned bundle sha256: {}", s.sha256);
    out.push_str("write_files:\n");
    write_file(&mut out, CONF_PATH, "0644", &conf(s));
    if let Some(pem) = &s.consul_ca_pem {
        write_file(&mut out, CONSUL_CA_PATH, "0644", pem);
    }
    if let Some(pem) = &s.vault_ca_pem {
        write_file(&mut out, VAULT_CA_PATH, "0644", pem);
    }
    if let Some(r) = &s.vault_role_id {
        write_file(
            &mut out,
            "/etc/kiln/vault-role-id",
            "0600",
            &format!("{r}\n"),
        );
    }
    if let Some(t) = &s.consul_token {
        write_file(&mut out, CONSUL_TOKEN_PATH, "0600", &format!("{t}\n"));
    }
    if let Some(w) = &s.wrapped_secret_id {
        write_file(&mut out, WRAPPED_SECRET_ID_PATH, "0600", &format!("{w}\n"));
    }
    match s.via {
        Via::Runcmd => {
            out.push_str("runcmd:\n  - - sh\n    - -c\n    - ");
            block(&mut out, 6, &script(s));
        }
        Via::Systemd => {
            let BundleSource::Url(u) = &s.source else {
                unreachable!("checked: --via systemd needs a URL")
            };
            let mut env = String::from(
                "# Written by cloud-init (kiln cloud-init --via systemd) for kiln-firstboot.service.\n",
            );
            let _ = writeln!(env, "KILN_BUNDLE={}", q(u));
            let _ = writeln!(env, "KILN_BUNDLE_SHA256={}", s.sha256.to_ascii_lowercase());
            let _ = writeln!(env, "KILN_HOSTGROUP={}", s.hostgroup);
            write_file(&mut out, ENV_PATH, "0644", &env);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            hostgroup: "web".into(),
            version: Some(7),
            source: BundleSource::Url("https://bundles.example.invalid/web-7.kiln".into()),
            sha256: "ab".repeat(32),
            via: Via::Runcmd,
            consul_addr: Some("http://10.0.2.100:8500".into()),
            consul_ca_pem: None,
            consul_token: None,
            vault_addr: Some("http://10.0.2.100:8200".into()),
            vault_ca_pem: None,
            vault_role_id: None,
            wrapped_secret_id: Some("s.wrapped".into()),
            min_version: None,
            deadline: None,
            dynamic_deadline: None,
            firstboot: "/usr/local/sbin/kiln-firstboot".into(),
        }
    }

    #[test]
    fn the_secret_is_0600_under_run_and_the_command_is_pinned() {
        let s = spec();
        check(&s).unwrap();
        let y = render(&s);
        assert!(y.starts_with("#cloud-config\n"));
        assert!(y.contains(
            "  - path: /run/kiln/wrapped-secret-id\n    owner: root:root\n    permissions: '0600'\n    content: |\n      s.wrapped\n"
        ), "{y}");
        assert!(y.contains(&format!("--sha256 {} --hostgroup 'web'", "ab".repeat(32))));
        assert!(y.contains("wrapped-secret-id-file = /run/kiln/wrapped-secret-id"));
        // The secret appears once: in its 0600 file, nowhere in the command or the config.
        assert_eq!(y.matches("s.wrapped").count(), 1);
    }

    #[test]
    fn bad_values_are_refused() {
        let mut s = spec();
        s.sha256 = "xyz".into();
        assert!(check(&s).is_err());
        let mut s = spec();
        s.source = BundleSource::Url("ftp://x/y".into());
        assert!(check(&s).is_err());
        let mut s = spec();
        s.wrapped_secret_id = Some("a\nb".into());
        assert!(check(&s).is_err());
        let mut s = spec();
        s.source = BundleSource::Seed("web-7.kiln".into());
        s.via = Via::Systemd;
        assert!(check(&s).unwrap_err().contains("--via systemd"));
        let mut s = spec();
        s.vault_addr = None;
        assert!(check(&s).is_err());
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(shq("a'b"), "'a'\\''b'");
        let mut s = spec();
        s.source = BundleSource::Url("https://x.invalid/a?b=1&c=2".into());
        let y = render(&s);
        assert!(y.contains("--bundle 'https://x.invalid/a?b=1&c=2'"), "{y}");
    }
}
