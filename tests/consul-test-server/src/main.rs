//! `consul-test-server --listen 127.0.0.1:0 [--seed FILE] [--acl FILE] [--port-file FILE]
//! [--tls-cert FILE --tls-key FILE [--tls-ca FILE] [--verify-incoming]]`
//!
//! Prints `listening on 127.0.0.1:PORT` as its first line on stdout, writes
//! `127.0.0.1:PORT` to the port file if asked, and serves until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use consul_test_server::{AclConfig, Config, TlsConfig};

const USAGE: &str =
    "usage: consul-test-server [--listen ADDR] [--seed FILE] [--acl FILE] [--port-file FILE]
                          [--tls-cert FILE --tls-key FILE [--tls-ca FILE] [--verify-incoming]]

  --listen ADDR     address to listen on, loopback only (default 127.0.0.1:0: a free port)
  --seed FILE       KV data to load at start: `consul kv export` JSON, or {\"key\": \"value\", ...}
  --acl FILE        enable ACLs: {\"management_token\": ..., \"default_policy\": \"deny\",
                    \"tokens\": [{\"secret\": ..., \"key_prefix\": {\"kiln/\": \"read\"}}]}
  --port-file FILE  write the bound address (127.0.0.1:PORT) to FILE once listening
  --tls-cert FILE   serve HTTPS with this PEM certificate (chain) ...
  --tls-key FILE    ... and this PEM private key
  --tls-ca FILE     PEM CA certificates that client certificates must chain to
  --verify-incoming refuse TLS clients without a certificate signed by --tls-ca
                    (Consul's tls.defaults.verify_incoming)

Test controls live under /_test/ (requests, faults, down, kv, seed, acl, status).";

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s2 = match s.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_string(),
    };
    let addr: SocketAddr = s2
        .parse()
        .map_err(|_| format!("--listen: not an IP:PORT address: {s}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--listen: refusing {addr}: only loopback addresses (127.0.0.0/8, ::1) are allowed"
        ));
    }
    Ok(addr)
}

fn run() -> Result<(), String> {
    let mut config = Config::default();
    let mut port_file: Option<String> = None;
    let (mut tls_cert, mut tls_key, mut tls_ca) = (None::<String>, None::<String>, None::<String>);
    let mut verify_incoming = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--listen" => config.listen = parse_listen(&value("--listen")?)?,
            "--seed" => {
                let f = value("--seed")?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("--seed {f}: {e}"))?;
                config = config
                    .with_seed_json(&text)
                    .map_err(|e| format!("--seed {f}: {e}"))?;
            }
            "--acl" => {
                let f = value("--acl")?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("--acl {f}: {e}"))?;
                config.acl =
                    Some(AclConfig::from_json(&text).map_err(|e| format!("--acl {f}: {e}"))?);
            }
            "--port-file" => port_file = Some(value("--port-file")?),
            "--tls-cert" => tls_cert = Some(value("--tls-cert")?),
            "--tls-key" => tls_key = Some(value("--tls-key")?),
            "--tls-ca" => tls_ca = Some(value("--tls-ca")?),
            "--verify-incoming" => verify_incoming = true,
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }

    match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => {
            let tls = TlsConfig::from_files(
                c.as_ref(),
                k.as_ref(),
                tls_ca.as_deref().map(std::path::Path::new),
                verify_incoming,
            )
            .map_err(|e| format!("TLS: {e}"))?;
            config = config.with_tls(tls);
        }
        (None, None) if tls_ca.is_none() && !verify_incoming => {}
        _ => return Err("HTTPS needs --tls-cert and --tls-key".into()),
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async move {
        // Handlers first, so a SIGTERM right after the address is printed still ends cleanly.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signal: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signal: {e}"))?;
        let handle = consul_test_server::start(config)
            .await
            .map_err(|e| format!("listen: {e}"))?;
        let addr = handle.addr();
        if let Some(pf) = &port_file {
            // Written whole, then renamed: a reader never sees a partial address.
            let tmp = format!("{pf}.tmp.{}", std::process::id());
            std::fs::write(&tmp, format!("{addr}\n"))
                .map_err(|e| format!("--port-file {tmp}: {e}"))?;
            std::fs::rename(&tmp, pf).map_err(|e| format!("--port-file {pf}: {e}"))?;
        }
        // Port file first: whoever reads the line can rely on the file too.
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        handle.shutdown().await;
        Ok(())
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consul-test-server: {e}");
            ExitCode::from(2)
        }
    }
}
