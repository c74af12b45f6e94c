//! HTTPS as a Consul agent serves it: `tls { defaults { cert_file, key_file, ca_file,
//! verify_incoming } }` with `ports { https = ... }`. With `verify_incoming`, a client must
//! present a certificate signed by `ca_file` or the TLS handshake fails (Go's
//! `tls.RequireAndVerifyClientCert`): no HTTP request is ever read from it.
//!
//! [`TestPki`] makes a throwaway CA, a server certificate for 127.0.0.1 and client
//! certificates with the `openssl` tool, for tests.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server side of HTTPS.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain of the server (`cert_file`).
    pub cert_pem: Vec<u8>,
    /// PEM private key of the server (`key_file`).
    pub key_pem: Vec<u8>,
    /// PEM CA certificates client certificates must chain to (`ca_file`).
    pub ca_pem: Option<Vec<u8>>,
    /// Consul's `verify_incoming`: refuse clients without a certificate signed by `ca_pem`.
    pub verify_incoming: bool,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn read(p: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

impl TlsConfig {
    pub fn from_files(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        verify_incoming: bool,
    ) -> io::Result<TlsConfig> {
        Ok(TlsConfig {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: ca.map(read).transpose()?,
            verify_incoming,
        })
    }

    /// The rustls server configuration (ring, TLS 1.2 and 1.3, HTTP/1.1 only).
    pub(crate) fn acceptor(&self) -> io::Result<tokio_rustls::TlsAcceptor> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("TLS certificate: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("TLS certificate: no certificate in the PEM".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| invalid(format!("TLS key: {e}")))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?;
        let builder = if self.verify_incoming {
            // Consul: "VerifyIncoming set, and no CA certificate provided!"
            let ca = self
                .ca_pem
                .as_ref()
                .ok_or_else(|| invalid("verify_incoming needs a CA (ca_file)".into()))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| invalid(format!("TLS CA: {e}")))?;
                roots.add(c).map_err(|e| invalid(format!("TLS CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid(format!("TLS client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid(format!("TLS certificate and key: {e}")))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// A CA, a server certificate for `127.0.0.1`/`localhost` (`server.dc1.consul`, as Consul's
/// own), a client certificate signed by the CA, and one signed by another CA, as PEM files
/// in a directory. Keys are P-256, unencrypted PKCS#8.
#[derive(Clone, Debug)]
pub struct TestPki {
    pub dir: PathBuf,
    /// The CA certificate (what clients trust, and what client certificates must chain to).
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate of another CA (a server with `verify_incoming` refuses it).
    pub foreign_client_cert: PathBuf,
    pub foreign_client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running openssl: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

fn make_ca(dir: &Path, name: &str) -> io::Result<()> {
    let mut args = vec!["req", "-x509", "-new", "-nodes"];
    args.extend(EC);
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=Kiln test CA {name}"),
    );
    args.extend([
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "30",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args)
}

fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) -> io::Result<()> {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext)?;
    let subj = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(EC);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args)?;
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| io::Error::other(e.to_string()))?;
    let serial = format!(
        "0x{}",
        serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ],
    )
}

impl TestPki {
    /// Makes the files in `dir` (which must exist). Needs the `openssl` tool.
    pub fn generate(dir: &Path) -> io::Result<TestPki> {
        make_ca(dir, "ca")?;
        make_ca(dir, "other-ca")?;
        make_leaf(
            dir,
            "ca",
            "server",
            "server.dc1.consul",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:server.dc1.consul\n",
        )?;
        let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
        make_leaf(dir, "ca", "client", "kiln-client", client_ext)?;
        make_leaf(dir, "other-ca", "foreign-client", "kiln-client", client_ext)?;
        let p = |n: &str| dir.join(n);
        Ok(TestPki {
            dir: dir.to_path_buf(),
            ca: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            foreign_client_cert: p("foreign-client.pem"),
            foreign_client_key: p("foreign-client.key"),
        })
    }

    /// The server's TLS settings, with this CA for client certificates.
    pub fn server_tls(&self, verify_incoming: bool) -> TlsConfig {
        TlsConfig::from_files(
            &self.server_cert,
            &self.server_key,
            Some(&self.ca),
            verify_incoming,
        )
        .expect("reading the test PKI")
    }
}
