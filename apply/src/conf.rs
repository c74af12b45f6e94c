//! `/etc/kiln/firstboot.conf`: where Consul and Vault are and where their credentials lie, as
//! cloud-init writes it for the host. One `key = value` per line (`#` comments, blank lines,
//! optional double quotes); the keys are the long flags of `kiln-firstboot apply` without the
//! dashes in front (`consul-addr = https://127.0.0.1:8501`), and a flag given on the command
//! line wins over the file. File paths in it are paths inside the target root (the file
//! describes that root), read through the same confined lookup as everything else.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::DynamicArgs;
use crate::engine::dynamic::{DynamicConfig, FileRef};
use crate::fsroot::Root;

/// The default place of the file, inside the root.
pub const CONF_FILE: &str = "/etc/kiln/firstboot.conf";

/// What the file may set.
pub const KEYS: &[&str] = &[
    "consul-addr",
    "consul-token-file",
    "consul-ca",
    "consul-client-cert",
    "consul-client-key",
    "vault-addr",
    "vault-ca",
    "vault-client-cert",
    "vault-client-key",
    "vault-role-id-file",
    "wrapped-secret-id-file",
    "hostname",
    "primary-ip",
    "dynamic-deadline",
];

/// The file's settings, by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Conf {
    pub values: Vec<(String, String)>,
}

impl Conf {
    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the file's text. Errors name the line.
pub fn parse(text: &str) -> Result<Conf, String> {
    let mut conf = Conf::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: expected key = value", i + 1));
        };
        let key = k.trim().replace('_', "-");
        if !KEYS.contains(&key.as_str()) {
            return Err(format!(
                "line {}: unknown key {key:?} (known: {})",
                i + 1,
                KEYS.join(", ")
            ));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        conf.values.push((key, v.to_string()));
    }
    Ok(conf)
}

/// Reads the config file: `explicit` (a host path, which must exist), else the default one in
/// the root if it is there.
pub fn load(root: &Root, explicit: Option<&PathBuf>) -> Result<Conf, String> {
    let text = match explicit {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => match root.read_text(CONF_FILE, 1 << 20) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(Conf::default()),
            Err(e) => return Err(format!("{}: {e}", root.display(CONF_FILE).display())),
        },
    };
    parse(&text).map_err(|e| {
        format!(
            "{}: {e}",
            explicit
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| root.display(CONF_FILE).display().to_string())
        )
    })
}

/// Flags over the file over the defaults (and, for Consul's address, over
/// `$CONSUL_HTTP_ADDR`, read as Consul's tools read it with `$CONSUL_HTTP_SSL`).
pub fn dynamic_config(args: &DynamicArgs, conf: &Conf) -> Result<DynamicConfig, String> {
    dynamic_config_env(args, conf, &|k| std::env::var(k).ok())
}

/// [`dynamic_config`] with the environment given.
pub fn dynamic_config_env(
    args: &DynamicArgs,
    conf: &Conf,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DynamicConfig, String> {
    let host = |p: &Option<PathBuf>| p.as_ref().map(|p| FileRef::Host(p.clone()));
    let in_root = |k: &str| -> Result<Option<FileRef>, String> {
        match conf.get(k) {
            None | Some("") => Ok(None),
            Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => {
                Ok(Some(FileRef::InRoot(p.to_string())))
            }
            Some(p) => Err(format!(
                "firstboot config: {k} = {p:?}: expected an absolute path without .."
            )),
        }
    };
    let text = |k: &str| conf.get(k).filter(|v| !v.is_empty()).map(str::to_string);
    let consul_addr = args
        .consul_addr
        .clone()
        .or_else(|| text("consul-addr"))
        .or_else(|| env("CONSUL_HTTP_ADDR").filter(|a| !a.trim().is_empty()))
        .map(|a| crate::engine::dynamic::consul_url(&a, env("CONSUL_HTTP_SSL").as_deref()))
        .transpose()?;
    let mut cfg = DynamicConfig {
        consul_addr,
        consul_token: host(&args.consul_token_file).or(in_root("consul-token-file")?),
        consul_ca: host(&args.consul_ca).or(in_root("consul-ca")?),
        consul_client_cert: host(&args.consul_client_cert).or(in_root("consul-client-cert")?),
        consul_client_key: host(&args.consul_client_key).or(in_root("consul-client-key")?),
        vault_addr: args.vault_addr.clone().or_else(|| text("vault-addr")),
        vault_ca: host(&args.vault_ca).or(in_root("vault-ca")?),
        vault_client_cert: host(&args.vault_client_cert).or(in_root("vault-client-cert")?),
        vault_client_key: host(&args.vault_client_key).or(in_root("vault-client-key")?),
        vault_role_id: host(&args.vault_role_id_file).or(in_root("vault-role-id-file")?),
        wrapped_secret_id: host(&args.wrapped_secret_id_file)
            .or(in_root("wrapped-secret-id-file")?),
        hostname: args.hostname.clone().or_else(|| text("hostname")),
        primary_ip: match (args.primary_ip, text("primary-ip")) {
            (Some(ip), _) => Some(ip.to_string()),
            (None, Some(t)) => Some(
                t.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| format!("primary-ip {t:?} is not an IPv4 address"))?
                    .to_string(),
            ),
            (None, None) => None,
        },
        ..DynamicConfig::default()
    };
    for (source, cert, key) in [
        ("consul", &cfg.consul_client_cert, &cfg.consul_client_key),
        ("vault", &cfg.vault_client_cert, &cfg.vault_client_key),
    ] {
        if cert.is_some() != key.is_some() {
            return Err(format!(
                "a {source} client certificate needs both {source}-client-cert and {source}-client-key (flags --{source}-client-cert, --{source}-client-key)"
            ));
        }
    }
    match (args.dynamic_deadline, text("dynamic-deadline")) {
        (Some(d), _) => cfg.deadline = d,
        (None, Some(t)) => {
            cfg.deadline = humantime::parse_duration(&t)
                .map_err(|e| format!("firstboot config: dynamic-deadline = {t:?}: {e}"))?
        }
        (None, None) => {}
    }
    cfg.request_timeout = cfg
        .request_timeout
        .min(cfg.deadline.max(Duration::from_secs(1)));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file() {
        let conf = parse(
            "# written by cloud-init\nconsul-addr = http://127.0.0.1:8500\nvault_addr=\"https://vault:8200\"\n\nwrapped-secret-id-file = /run/kiln/wrapped-secret-id\ndynamic-deadline = 90s\n",
        )
        .unwrap();
        let args = DynamicArgs {
            consul_addr: Some("http://10.0.0.1:8500".into()),
            ..DynamicArgs::default()
        };
        let cfg = dynamic_config(&args, &conf).unwrap();
        assert_eq!(cfg.consul_addr.as_deref(), Some("http://10.0.0.1:8500"));
        assert_eq!(cfg.vault_addr.as_deref(), Some("https://vault:8200"));
        assert_eq!(
            cfg.wrapped_secret_id,
            Some(FileRef::InRoot("/run/kiln/wrapped-secret-id".into()))
        );
        assert_eq!(cfg.deadline, Duration::from_secs(90));
        assert!(parse("consul-token = x\n")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse("just words\n").is_err());
        let bad = parse("consul-ca = ../ca.pem\n").unwrap();
        assert!(dynamic_config(&DynamicArgs::default(), &bad).is_err());
    }

    #[test]
    fn client_certificates_map_like_the_ca_flags() {
        let conf = parse(
            "consul-client-cert = /etc/kiln/consul-client.pem\nconsul-client-key = /etc/kiln/consul-client.key\nvault_client_cert = /etc/kiln/vault-client.pem\nvault-client-key = /etc/kiln/vault-client.key\n",
        )
        .unwrap();
        let args = DynamicArgs {
            vault_client_key: Some("/host/vault.key".into()),
            ..DynamicArgs::default()
        };
        let none = |_: &str| None;
        let cfg = dynamic_config_env(&args, &conf, &none).unwrap();
        assert_eq!(
            cfg.consul_client_cert,
            Some(FileRef::InRoot("/etc/kiln/consul-client.pem".into()))
        );
        assert_eq!(
            cfg.consul_client_key,
            Some(FileRef::InRoot("/etc/kiln/consul-client.key".into()))
        );
        assert_eq!(
            cfg.vault_client_cert,
            Some(FileRef::InRoot("/etc/kiln/vault-client.pem".into()))
        );
        assert_eq!(
            cfg.vault_client_key,
            Some(FileRef::Host("/host/vault.key".into()))
        );
        // One without the other is refused, naming both.
        let half = parse("consul-client-cert = /etc/kiln/c.pem\n").unwrap();
        let e = dynamic_config_env(&DynamicArgs::default(), &half, &none).unwrap_err();
        assert!(
            e.contains("consul-client-cert") && e.contains("consul-client-key"),
            "{e}"
        );
    }

    #[test]
    fn consul_http_addr_is_the_last_resort_and_read_as_consul_does() {
        let env = |k: &str| match k {
            "CONSUL_HTTP_ADDR" => Some("127.0.0.1:8501".to_string()),
            "CONSUL_HTTP_SSL" => Some("true".to_string()),
            _ => None,
        };
        let empty = Conf::default();
        let cfg = dynamic_config_env(&DynamicArgs::default(), &empty, &env).unwrap();
        assert_eq!(cfg.consul_addr.as_deref(), Some("https://127.0.0.1:8501"));
        // The file wins over the environment; host:port there is read the same way.
        let conf = parse("consul-addr = 10.0.0.1:8500\n").unwrap();
        let cfg = dynamic_config_env(&DynamicArgs::default(), &conf, &|_| None).unwrap();
        assert_eq!(cfg.consul_addr.as_deref(), Some("http://10.0.0.1:8500"));
        let cfg = dynamic_config_env(&DynamicArgs::default(), &conf, &env).unwrap();
        assert_eq!(cfg.consul_addr.as_deref(), Some("https://10.0.0.1:8500"));
        let bad = parse("consul-addr = ftp://x:1\n").unwrap();
        assert!(dynamic_config_env(&DynamicArgs::default(), &bad, &|_| None).is_err());
    }
}
