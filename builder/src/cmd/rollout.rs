//! `kiln rollout status HOSTGROUP [--json]` and `kiln rollout wait HOSTGROUP --version V
//! --count N --timeout T`.

use anyhow::{anyhow, Context, Result};
use serde_json::json;

use crate::cli::{ConsulArgs, RolloutCommand};
use crate::rollout::{self, Consul, Tls, Verdict, EXIT_NODE_FAILED, EXIT_TIMEOUT};

fn client(a: &ConsulArgs) -> Result<Consul> {
    let token = match &a.consul_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the Consul token from {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let read = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .transpose()
    };
    let ca = read(&a.consul_ca)?;
    let client = match (read(&a.consul_client_cert)?, read(&a.consul_client_key)?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(anyhow!(crate::Exit {
                code: kiln_signing::exit::USAGE,
                message: "a Consul client certificate needs both --consul-client-cert and --consul-client-key (or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)".into(),
            }))
        }
    };
    let tls = Tls {
        ca_pem: ca.as_deref(),
        client: client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    };
    let ssl = std::env::var("CONSUL_HTTP_SSL").ok();
    let consul = Consul::new(&a.consul_addr, ssl.as_deref(), token, tls);
    if let Some((_, mut key)) = client {
        key.iter_mut().for_each(|b| *b = 0);
    }
    consul
}

fn check_hostgroup(h: &str) -> Result<()> {
    if !crate::config::check::is_hostgroup_name(h) {
        return Err(anyhow!(crate::Exit {
            code: kiln_signing::exit::USAGE,
            message: format!("{h:?} is not a hostgroup name"),
        }));
    }
    Ok(())
}

pub fn run(c: RolloutCommand) -> Result<()> {
    match c {
        RolloutCommand::Status(a) => {
            check_hostgroup(&a.hostgroup)?;
            let mut consul = client(&a.consul)?;
            let r = consul.read(&a.hostgroup, None)?;
            if a.json {
                let v = json!({
                    "hostgroup": a.hostgroup,
                    "index": r.index,
                    "by_version": rollout::by_version(&r.nodes)
                        .into_iter()
                        .map(|(v, c)| (v.to_string(), c))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                    "nodes": r.nodes,
                });
                super::print_json(&v)?;
            } else {
                print!("{}", rollout::table(&a.hostgroup, &r.nodes));
            }
            Ok(())
        }
        RolloutCommand::Wait(a) => {
            check_hostgroup(&a.hostgroup)?;
            let mut consul = client(&a.consul)?;
            let json = a.json;
            let hg = a.hostgroup.clone();
            let progress = move |m: &str| {
                if !json {
                    eprintln!("kiln: rollout {hg}: {m}")
                }
            };
            let w = rollout::wait(
                &mut consul,
                &a.hostgroup,
                a.version,
                a.count,
                a.timeout,
                a.wait.min(std::time::Duration::from_secs(600)),
                &progress,
            )?;
            let (outcome, code) = match &w.verdict {
                Verdict::Done(_) => ("done", 0),
                Verdict::Failed(_) => ("failed", EXIT_NODE_FAILED),
                Verdict::Waiting(_) => ("timeout", EXIT_TIMEOUT),
            };
            if a.json {
                let failed: Vec<_> = match &w.verdict {
                    Verdict::Failed(v) => v.clone(),
                    _ => Vec::new(),
                };
                super::print_json(&json!({
                    "outcome": outcome,
                    "exit_code": code,
                    "hostgroup": a.hostgroup,
                    "version": a.version,
                    "count": a.count,
                    "succeeded": w.nodes.iter().filter(|n| n.succeeded() && n.version == a.version).count(),
                    "failed": failed,
                    "nodes": w.nodes,
                    "requests": w.requests,
                    "seconds": w.seconds,
                    "consul_error": w.last_error,
                }))?;
            }
            let message = match &w.verdict {
                Verdict::Done(v) => {
                    if !a.json {
                        eprintln!(
                            "kiln: rollout {}: {} node(s) of version {} succeeded ({:.1}s)",
                            a.hostgroup,
                            v.len(),
                            a.version,
                            w.seconds
                        );
                    }
                    return Ok(());
                }
                Verdict::Failed(v) => {
                    let lines: Vec<String> = v
                        .iter()
                        .map(|n| {
                            format!(
                                "{} (version {}): exit {}: {}",
                                n.hostname,
                                if n.version == 0 {
                                    "unknown".into()
                                } else {
                                    n.version.to_string()
                                },
                                n.exit_code,
                                n.error
                                    .as_deref()
                                    .unwrap_or("no error text")
                                    .lines()
                                    .next()
                                    .unwrap_or("")
                            )
                        })
                        .collect();
                    format!(
                        "rollout {} version {}: {} node(s) reported failure:\n  {}",
                        a.hostgroup,
                        a.version,
                        v.len(),
                        lines.join("\n  ")
                    )
                }
                Verdict::Waiting(n) => format!(
                    "rollout {} version {}: timed out after {} with {n} of {} node(s) succeeded{}",
                    a.hostgroup,
                    a.version,
                    humantime::format_duration(a.timeout),
                    a.count,
                    w.last_error
                        .as_deref()
                        .map(|e| format!(" (Consul could not be read: {e})"))
                        .unwrap_or_default()
                ),
            };
            Err(anyhow!(crate::Exit { code, message }))
        }
    }
}
