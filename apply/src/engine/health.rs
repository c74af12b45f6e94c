//! Health checks: after the services have started on a live host, each of the bundle's checks
//! (a unit active, a TCP port open, an HTTP status, a command that exits 0) is retried until it
//! passes or its deadline passes. The node is healthy when every one passed; the state file and
//! the Consul report list each check, and a failed one fails the apply with its own exit code
//! (a rerun checks again). On an offline root (`kiln bake`, `--root DIR`) nothing runs, so no
//! check is made.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_signing::{Check, Probe};

use super::process::Program;
use super::{ApplyError, Ctx};
use crate::state::{CheckResult, Health};

/// Pause between two tries of a failing check.
const RETRY: Duration = Duration::from_secs(1);
/// Longest a TCP connect or an HTTP exchange may take in one try.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest HTTP status line read.
const STATUS_LINE_LIMIT: u64 = 1024;

/// Runs every check (each until it passes or its deadline); the summary line, or the error
/// naming the checks that failed.
pub(crate) fn run_checks(ctx: &Ctx) -> Result<String, ApplyError> {
    let checks = &ctx.manifest.checks;
    if checks.is_empty() {
        return Ok("none".into());
    }
    if !ctx.live {
        return Ok(format!(
            "{} check(s) not run (offline root: no service runs)",
            checks.len()
        ));
    }
    let started = Instant::now();
    let mut results = Vec::new();
    for c in checks {
        let r = run_one(c, started, ctx.root.path());
        if r.passed {
            ctx.log.info(&format!(
                "  check {}: passed after {:.1}s ({} tr{})",
                r.name,
                r.seconds,
                r.tries,
                if r.tries == 1 { "y" } else { "ies" }
            ));
        } else {
            ctx.log.warn(&format!(
                "  check {}: FAILED after {:.1}s: {}",
                r.name,
                r.seconds,
                r.detail.as_deref().unwrap_or("")
            ));
        }
        results.push(r);
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} ({})", r.name, r.detail.as_deref().unwrap_or("failed")))
        .collect();
    let passed = results.len() - failed.len();
    *ctx.health.borrow_mut() = Some(Health {
        status: if failed.is_empty() {
            "healthy"
        } else {
            "unhealthy"
        }
        .into(),
        checks: results,
    });
    if failed.is_empty() {
        Ok(format!("healthy: {passed} check(s) passed"))
    } else {
        Err(ApplyError::Unhealthy(format!(
            "{} of {} check(s) failed: {}",
            failed.len(),
            checks.len(),
            failed.join("; ")
        )))
    }
}

fn run_one(c: &Check, started: Instant, root: &Path) -> CheckResult {
    let deadline = started + Duration::from_secs(c.deadline_secs);
    let mut tries = 0;
    loop {
        tries += 1;
        let outcome = probe(&c.probe, root);
        let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        match outcome {
            Ok(()) => {
                return CheckResult {
                    name: c.name.clone(),
                    passed: true,
                    seconds,
                    tries,
                    detail: None,
                }
            }
            Err(detail) if Instant::now() + RETRY >= deadline => {
                return CheckResult {
                    name: c.name.clone(),
                    passed: false,
                    seconds,
                    tries,
                    detail: Some(detail),
                }
            }
            Err(_) => std::thread::sleep(RETRY),
        }
    }
}

/// One try of a probe: `Err` says what was seen. A check's command runs as the bundle's
/// commands do in `root` (on `/`: what it leaves running is ended with it).
fn probe(p: &Probe, root: &Path) -> Result<(), String> {
    match p {
        Probe::Unit { unit } => {
            let done = Program::new(
                &["systemctl", "is-active", "--", unit.as_str()],
                TRY_TIMEOUT,
            )
            .run()
            .map_err(|e| format!("systemctl is-active: {e}"))?;
            if done.success() {
                Ok(())
            } else {
                Err(format!("{unit} is {}", done.output.trim()))
            }
        }
        Probe::Tcp { address } => connect(address).map(drop),
        Probe::Http { url, status } => {
            let got = http_status(url)?;
            if got == *status {
                Ok(())
            } else {
                Err(format!("{url} answered {got}, expected {status}"))
            }
        }
        Probe::Command { argv, timeout_secs } => {
            let timeout = Duration::from_secs(*timeout_secs);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let done = Program::new(&argv, timeout)
                .in_root(root)
                .run()
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            if done.success() {
                Ok(())
            } else {
                let last = done.last_line().to_string();
                Err(format!(
                    "{}{}",
                    done.describe(timeout),
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ))
            }
        }
    }
}

fn connect(address: &str) -> Result<TcpStream, String> {
    let addrs = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?;
    let mut last = format!("{address}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, TRY_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

/// The status code of a plain HTTP/1.1 GET of an `http://host[:port]/path` URL.
fn http_status(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are checked"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut s = connect(&address)?;
    s.set_read_timeout(Some(TRY_TIMEOUT)).ok();
    s.set_write_timeout(Some(TRY_TIMEOUT)).ok();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: kiln-firstboot\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = Vec::new();
    s.take(STATUS_LINE_LIMIT)
        .read_to_end(&mut head)
        .map_err(|e| format!("{url}: {e}"))?;
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("{url}: not an HTTP answer: {:?}", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(answer.as_bytes());
            }
        });
        format!("http://127.0.0.1:{port}/health")
    }

    #[test]
    fn http_status_is_read_from_the_status_line() {
        let url = serve_once("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(http_status(&url), Ok(204));
        let url = serve_once("garbage\r\n\r\n");
        assert!(http_status(&url)
            .unwrap_err()
            .contains("not an HTTP answer"));
        assert!(http_status("https://127.0.0.1/")
            .unwrap_err()
            .contains("only http://"));
    }

    #[test]
    fn a_closed_port_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
}
