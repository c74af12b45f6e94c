//! OpenSSH ed25519 keys: the public line (`ssh-ed25519 AAAA… comment`), its `SHA256:`
//! fingerprint, and the unencrypted `openssh-key-v1` private key file that `ssh-keygen` writes.
//! Kiln keys are ordinary OpenSSH keys, so `ssh-keygen` can make, inspect and use them.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::wire::{self, put_string, put_u32};

/// The only key type kiln accepts.
pub const KEY_TYPE: &str = "ssh-ed25519";

const PRIVATE_LABEL: &str = "OPENSSH PRIVATE KEY";
const AUTH_MAGIC: &[u8] = b"openssh-key-v1\0";

/// Why a key could not be read or made.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("malformed OpenSSH key: {0}")]
    Malformed(String),
    #[error("unsupported key type {0:?}: kiln accepts ssh-ed25519 keys only")]
    UnsupportedType(String),
    #[error("key is passphrase-protected; kiln needs an unencrypted key (use a CI secret store)")]
    Encrypted,
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// An ed25519 public key with its OpenSSH comment.
///
/// Two keys are equal when their key bytes are; the comment is only a label.
#[derive(Clone)]
pub struct PublicKey {
    pub key: VerifyingKey,
    pub comment: String,
}

impl PublicKey {
    pub fn new(key: VerifyingKey, comment: impl Into<String>) -> PublicKey {
        PublicKey {
            key,
            comment: comment.into(),
        }
    }

    /// Parses `ssh-ed25519 AAAA… [comment]` (one line of a `.pub` file).
    pub fn parse_openssh(line: &str) -> Result<PublicKey, KeyError> {
        let line = line.trim();
        let (kind, rest) = split_token(line);
        if kind.is_empty() {
            return Err(KeyError::Malformed("empty key line".into()));
        }
        if kind != KEY_TYPE {
            return Err(KeyError::UnsupportedType(kind.into()));
        }
        let (b64, comment) = split_token(rest);
        if b64.is_empty() {
            return Err(KeyError::Malformed(
                "no base64 key after ssh-ed25519".into(),
            ));
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|e| KeyError::Malformed(format!("bad base64: {e}")))?;
        let key = Self::from_wire(&blob).map_err(KeyError::Malformed)?;
        Ok(PublicKey {
            key,
            comment: comment.trim().to_string(),
        })
    }

    /// The key of a wire blob (`string "ssh-ed25519", string key[32]`), nothing after it.
    pub(crate) fn from_wire(blob: &[u8]) -> Result<VerifyingKey, String> {
        let mut r = wire::Reader::new(blob);
        let key = read_wire_key(&mut r)?;
        r.finish("public key")?;
        Ok(key)
    }

    /// The SSH wire encoding of the key (what fingerprints and signatures cover).
    pub fn wire_blob(&self) -> Vec<u8> {
        wire_blob(&self.key)
    }

    /// `ssh-ed25519 AAAA… comment`, as in a `.pub` file (without a newline).
    pub fn to_openssh(&self) -> String {
        let b64 = STANDARD.encode(self.wire_blob());
        if self.comment.is_empty() {
            format!("{KEY_TYPE} {b64}")
        } else {
            format!("{KEY_TYPE} {b64} {}", self.comment)
        }
    }

    /// `SHA256:…`, exactly as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(self.wire_blob()))
        )
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.as_bytes() == other.key.as_bytes()
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {:?})", self.fingerprint(), self.comment)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

fn wire_blob(key: &VerifyingKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(51);
    put_string(&mut out, KEY_TYPE.as_bytes());
    put_string(&mut out, key.as_bytes());
    out
}

/// Reads `string type, string key` and checks both.
fn read_wire_key(r: &mut wire::Reader<'_>) -> Result<VerifyingKey, String> {
    let kind = r.string()?;
    if kind != KEY_TYPE.as_bytes() {
        return Err(format!(
            "key type {:?} is not ssh-ed25519",
            String::from_utf8_lossy(kind)
        ));
    }
    let bytes: [u8; 32] = r
        .string()?
        .try_into()
        .map_err(|_| "ed25519 public key is not 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid ed25519 public key".to_string())
}

/// First whitespace-separated token and the rest (not trimmed on the right).
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// An ed25519 secret key with its OpenSSH comment. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    comment: String,
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate(comment: &str) -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(&seed, comment))
    }

    /// The key whose 32-byte ed25519 seed is `seed` (deterministic keys for tests).
    pub fn from_seed(seed: &[u8; 32], comment: &str) -> SigningKey {
        SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
            comment: comment.into(),
        }
    }

    pub fn comment(&self) -> &str {
        &self.comment
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            comment: self.comment.clone(),
        }
    }

    pub(crate) fn dalek(&self) -> &ed25519_dalek::SigningKey {
        &self.key
    }

    /// The unencrypted OpenSSH private key file (`openssh-key-v1`, cipher and kdf `none`).
    ///
    /// The check integers are derived from the public key rather than drawn at random, so the
    /// same key always gives the same file; with cipher `none` they protect nothing anyway.
    pub fn to_openssh_private(&self) -> String {
        let public = self.key.verifying_key();
        let pub_blob = wire_blob(&public);
        let digest = Sha256::digest([b"kiln checkint\0".as_slice(), public.as_bytes()].concat());
        let check = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);

        let mut private = Vec::new();
        put_u32(&mut private, check);
        put_u32(&mut private, check);
        put_string(&mut private, KEY_TYPE.as_bytes());
        put_string(&mut private, public.as_bytes());
        put_string(&mut private, &self.key.to_keypair_bytes());
        put_string(&mut private, self.comment.as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }

        let mut out = AUTH_MAGIC.to_vec();
        put_string(&mut out, b"none");
        put_string(&mut out, b"none");
        put_string(&mut out, b"");
        put_u32(&mut out, 1);
        put_string(&mut out, &pub_blob);
        put_string(&mut out, &private);
        wire::armor(PRIVATE_LABEL, &out)
    }

    /// Reads an unencrypted OpenSSH ed25519 private key file.
    pub fn from_openssh_private(text: &str) -> Result<SigningKey, KeyError> {
        let data = wire::dearmor(text, PRIVATE_LABEL).map_err(KeyError::Malformed)?;
        let bad = KeyError::Malformed;
        let mut r = wire::Reader::new(&data);
        if r.bytes(AUTH_MAGIC.len()).map_err(bad)? != AUTH_MAGIC {
            return Err(KeyError::Malformed("not an openssh-key-v1 key".into()));
        }
        let cipher = r.string().map_err(bad)?;
        let kdf = r.string().map_err(bad)?;
        let _kdf_options = r.string().map_err(bad)?;
        if cipher != b"none" || kdf != b"none" {
            return Err(KeyError::Encrypted);
        }
        let nkeys = r.u32().map_err(bad)?;
        if nkeys != 1 {
            return Err(KeyError::Malformed(format!(
                "file holds {nkeys} keys, expected 1"
            )));
        }
        let pub_blob = r.string().map_err(bad)?;
        let private = r.string().map_err(bad)?;
        r.finish("private key section").map_err(bad)?;

        let mut pr = wire::Reader::new(pub_blob);
        let pub_type = pr.string().map_err(bad)?;
        if pub_type != KEY_TYPE.as_bytes() {
            return Err(KeyError::UnsupportedType(
                String::from_utf8_lossy(pub_type).into(),
            ));
        }
        let public = PublicKey::from_wire(pub_blob).map_err(bad)?;

        if private.len() % 8 != 0 {
            return Err(KeyError::Malformed(
                "private section is not padded to 8 bytes".into(),
            ));
        }
        let mut p = wire::Reader::new(private);
        let check1 = p.u32().map_err(bad)?;
        let check2 = p.u32().map_err(bad)?;
        if check1 != check2 {
            return Err(KeyError::Malformed("check integers differ".into()));
        }
        let kind = p.string().map_err(bad)?;
        if kind != KEY_TYPE.as_bytes() {
            return Err(KeyError::UnsupportedType(
                String::from_utf8_lossy(kind).into(),
            ));
        }
        let pk = p.string().map_err(bad)?;
        let sk: [u8; 64] = p
            .string()
            .map_err(bad)?
            .try_into()
            .map_err(|_| KeyError::Malformed("ed25519 private key is not 64 bytes".into()))?;
        let comment = p.utf8("comment").map_err(bad)?.to_string();
        for (i, b) in p.rest().iter().enumerate() {
            if usize::from(*b) != i + 1 {
                return Err(KeyError::Malformed(
                    "bad padding after the private key".into(),
                ));
            }
        }
        if pk != public.as_bytes() || sk[32..] != public.as_bytes()[..] {
            return Err(KeyError::Malformed(
                "private and public halves do not match".into(),
            ));
        }
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&sk)
            .map_err(|_| KeyError::Malformed("private key does not match its public key".into()))?;
        Ok(SigningKey { key, comment })
    }

    /// Writes the private key to `path` (mode 0600) and the public line to `path.pub`, as
    /// `ssh-keygen` does. Refuses to overwrite either file.
    pub fn write_openssh_pair(&self, path: &Path) -> std::io::Result<()> {
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path)?;
        f.write_all(self.to_openssh_private().as_bytes())?;
        f.sync_all()?;
        let mut p = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(pub_path)?;
        p.write_all(format!("{}\n", self.public().to_openssh()).as_bytes())?;
        p.sync_all()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({} {:?}, secret redacted)",
            self.public().fingerprint(),
            self.comment
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    pub(crate) fn ssh_keygen(args: &[&str]) -> String {
        let out = Command::new("/usr/bin/ssh-keygen")
            .args(args)
            .output()
            .expect("run ssh-keygen");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    #[test]
    fn public_line_round_trips() {
        let key = SigningKey::from_seed(&[7; 32], "ci@kiln");
        let line = key.public().to_openssh();
        assert!(line.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert!(line.ends_with(" ci@kiln"));
        let parsed = PublicKey::parse_openssh(&format!("  {line}\n")).unwrap();
        assert_eq!(parsed, key.public());
        assert_eq!(parsed.comment, "ci@kiln");
        let bare = PublicKey::parse_openssh(line.trim_end_matches(" ci@kiln")).unwrap();
        assert_eq!(bare.comment, "");
    }

    #[test]
    fn public_parse_refuses_bad_lines() {
        let good = SigningKey::from_seed(&[1; 32], "").public().to_openssh();
        let b64 = good.split(' ').nth(1).unwrap().to_string();
        for (line, want) in [
            ("", "empty"),
            ("ssh-ed25519", "no base64"),
            ("ssh-ed25519 !!!", "bad base64"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "truncated"),
        ] {
            let err = PublicKey::parse_openssh(line).unwrap_err();
            assert!(matches!(err, KeyError::Malformed(_)), "{line}: {err}");
            assert!(err.to_string().contains(want), "{line}: {err}");
        }
        let err = PublicKey::parse_openssh(&format!("ssh-rsa {b64}")).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedType(ref t) if t == "ssh-rsa"),
            "{err}"
        );
        // Trailing bytes inside the blob.
        let mut blob = STANDARD.decode(&b64).unwrap();
        blob.push(0);
        let err = PublicKey::parse_openssh(&format!("ssh-ed25519 {}", STANDARD.encode(&blob)));
        assert!(matches!(err, Err(KeyError::Malformed(_))));
    }

    #[test]
    fn private_key_round_trips_and_is_stable() {
        let key = SigningKey::generate("round trip").unwrap();
        let text = key.to_openssh_private();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(text.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        assert_eq!(text, key.to_openssh_private());
        let back = SigningKey::from_openssh_private(&text).unwrap();
        assert_eq!(back.public(), key.public());
        assert_eq!(back.comment(), "round trip");
        assert!(!format!("{key:?}").contains(&hex::encode(key.key.to_bytes())));
    }

    #[test]
    fn keys_we_write_are_read_by_ssh_keygen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln_ed25519");
        let key = SigningKey::generate("kiln@test").unwrap();
        key.write_openssh_pair(&path).unwrap();
        let p = path.to_str().unwrap();

        let derived = ssh_keygen(&["-y", "-f", p]);
        let ours = key.public().to_openssh();
        // ssh-keygen -y prints the comment stored in the private key.
        assert_eq!(derived.trim_end(), ours);

        let listed = ssh_keygen(&["-lf", &format!("{p}.pub")]);
        let fp = listed.split_whitespace().nth(1).unwrap();
        assert_eq!(fp, key.public().fingerprint());
        // Writing again must not clobber the key.
        assert!(key.write_openssh_pair(&path).is_err());
    }

    #[test]
    fn keys_ssh_keygen_wrote_are_read_by_us() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let p = path.to_str().unwrap();
        ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "made by ssh-keygen",
            "-f",
            p,
        ]);
        let key =
            SigningKey::from_openssh_private(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let public =
            PublicKey::parse_openssh(&std::fs::read_to_string(format!("{p}.pub")).unwrap())
                .unwrap();
        assert_eq!(key.public(), public);
        assert_eq!(key.comment(), "made by ssh-keygen");
        assert_eq!(public.comment, "made by ssh-keygen");
        let listed = ssh_keygen(&["-lf", &format!("{p}.pub")]);
        assert_eq!(
            listed.split_whitespace().nth(1).unwrap(),
            public.fingerprint()
        );
        // ssh-keygen writes the same private file we would (check ints aside).
        assert_eq!(
            key.to_openssh_private().lines().count(),
            std::fs::read_to_string(&path).unwrap().lines().count()
        );
    }

    #[test]
    fn encrypted_and_foreign_keys_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let enc = dir.path().join("enc");
        ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "secret phrase",
            "-f",
            enc.to_str().unwrap(),
        ]);
        let err =
            SigningKey::from_openssh_private(&std::fs::read_to_string(&enc).unwrap()).unwrap_err();
        assert!(matches!(err, KeyError::Encrypted));
        assert_eq!(
            err.to_string(),
            "key is passphrase-protected; kiln needs an unencrypted key (use a CI secret store)"
        );

        let ecdsa = dir.path().join("ecdsa");
        ssh_keygen(&["-q", "-t", "ecdsa", "-N", "", "-f", ecdsa.to_str().unwrap()]);
        let err = SigningKey::from_openssh_private(&std::fs::read_to_string(&ecdsa).unwrap())
            .unwrap_err();
        assert!(matches!(err, KeyError::UnsupportedType(ref t) if t == "ecdsa-sha2-nistp256"));
        let err = PublicKey::parse_openssh(
            &std::fs::read_to_string(dir.path().join("ecdsa.pub")).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, KeyError::UnsupportedType(_)));
    }

    #[test]
    fn damaged_private_keys_are_errors_not_panics() {
        let text = SigningKey::from_seed(&[3; 32], "x").to_openssh_private();
        let data = wire::dearmor(&text, PRIVATE_LABEL).unwrap();
        for i in 0..data.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut d = data.clone();
                d[i] ^= flip;
                let t = wire::armor(PRIVATE_LABEL, &d);
                // Flips in the comment bytes still give a valid key; nothing may panic.
                if let Ok(k) = SigningKey::from_openssh_private(&t) {
                    assert_eq!(k.public(), SigningKey::from_seed(&[3; 32], "").public());
                }
            }
        }
        for len in 0..data.len() {
            let t = wire::armor(PRIVATE_LABEL, &data[..len]);
            assert!(
                SigningKey::from_openssh_private(&t).is_err(),
                "truncated to {len}"
            );
        }
    }
}
