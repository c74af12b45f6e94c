//! SSH signatures (OpenSSH PROTOCOL.sshsig) made and checked directly with ed25519-dalek and
//! sha2, so `ssh-keygen -Y verify -n kiln-bundle` can check a bundle's signature by hand.
//! Only version 1, hash sha512 and ssh-ed25519 keys are accepted.

use ed25519_dalek::{Signature, Signer as _};
use sha2::{Digest, Sha512};

use crate::error::BundleError;
use crate::keys::{PublicKey, SigningKey, KEY_TYPE};
use crate::wire::{self, put_string, put_u32};

/// The namespace every bundle signature is made in; a signature made for anything else
/// (git commits, files) is refused.
pub const NAMESPACE: &str = "kiln-bundle";

const MAGIC: &[u8; 6] = b"SSHSIG";
const VERSION: u32 = 1;
const HASH: &str = "sha512";
const LABEL: &str = "SSH SIGNATURE";

/// What the ed25519 signature covers (PROTOCOL.sshsig §3).
fn signed_data(
    namespace: &[u8],
    reserved: &[u8],
    hash_alg: &[u8],
    message_sha512: &[u8],
) -> Vec<u8> {
    let mut data = MAGIC.to_vec();
    put_string(&mut data, namespace);
    put_string(&mut data, reserved);
    put_string(&mut data, hash_alg);
    put_string(&mut data, message_sha512);
    data
}

/// Signs `message` in `namespace`; returns the armored signature, as `ssh-keygen -Y sign` writes.
pub fn sign(key: &SigningKey, namespace: &str, message: &[u8]) -> String {
    let data = signed_data(
        namespace.as_bytes(),
        b"",
        HASH.as_bytes(),
        &Sha512::digest(message),
    );
    let sig: Signature = key.dalek().sign(&data);

    let mut sig_blob = Vec::with_capacity(83);
    put_string(&mut sig_blob, KEY_TYPE.as_bytes());
    put_string(&mut sig_blob, &sig.to_bytes());

    let mut blob = MAGIC.to_vec();
    put_u32(&mut blob, VERSION);
    put_string(&mut blob, &key.public().wire_blob());
    put_string(&mut blob, namespace.as_bytes());
    put_string(&mut blob, b"");
    put_string(&mut blob, HASH.as_bytes());
    put_string(&mut blob, &sig_blob);
    wire::armor(LABEL, &blob)
}

/// Checks an armored signature over `message` made in `namespace`, and returns the key that
/// made it. Whether that key is trusted is the trust store's question, not this one's.
pub fn verify(armored: &[u8], namespace: &str, message: &[u8]) -> Result<PublicKey, BundleError> {
    verify_sha512(armored, namespace, &Sha512::digest(message))
}

/// [`verify`] given the message's SHA-512 (the only hash a signature is accepted with) rather
/// than the message: the signed data covers the hash alone, so a message read in pieces need
/// never be whole in memory.
pub fn verify_sha512(
    armored: &[u8],
    namespace: &str,
    message_sha512: &[u8],
) -> Result<PublicKey, BundleError> {
    parse_and_verify(armored, namespace, message_sha512).map_err(BundleError::BadSignature)
}

fn parse_and_verify(
    armored: &[u8],
    namespace: &str,
    message_sha512: &[u8],
) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(armored).map_err(|_| "signature is not text".to_string())?;
    let blob = wire::dearmor(text, LABEL)?;
    let mut r = wire::Reader::new(&blob);
    if r.bytes(MAGIC.len())? != MAGIC {
        return Err("not an SSHSIG signature".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!(
            "signature version {version} not accepted (only {VERSION})"
        ));
    }
    let public = PublicKey::from_wire(r.string()?)?;
    let ns = r.string()?;
    if ns != namespace.as_bytes() {
        return Err(format!(
            "signature is for namespace {:?}, expected {namespace:?}",
            String::from_utf8_lossy(ns)
        ));
    }
    let reserved = r.string()?;
    if !reserved.is_empty() {
        return Err("reserved field is not empty".into());
    }
    let hash_alg = r.string()?;
    if hash_alg != HASH.as_bytes() {
        return Err(format!(
            "hash algorithm {:?} not accepted (only {HASH})",
            String::from_utf8_lossy(hash_alg)
        ));
    }
    let mut s = wire::Reader::new(r.string()?);
    r.finish("signature")?;
    if s.string()? != KEY_TYPE.as_bytes() {
        return Err("signature type is not ssh-ed25519".into());
    }
    let sig_bytes = s.string()?;
    s.finish("ed25519 signature")?;
    let sig = Signature::from_slice(sig_bytes).map_err(|_| "ed25519 signature is not 64 bytes")?;
    let data = signed_data(ns, reserved, hash_alg, message_sha512);
    public
        .verify_strict(&data, &sig)
        .map_err(|_| "signature does not match the signed data".to_string())?;
    Ok(PublicKey::new(public, ""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    const MSG: &[u8] = b"{\"format\":1}\n";

    fn key() -> SigningKey {
        SigningKey::from_seed(&[42; 32], "signer")
    }

    fn expect_bad(res: Result<PublicKey, BundleError>, want: &str) {
        match res {
            Err(BundleError::BadSignature(reason)) => {
                assert!(reason.contains(want), "reason {reason:?} lacks {want:?}")
            }
            other => panic!("expected BadSignature({want}), got {other:?}"),
        }
    }

    /// Re-encodes a signature blob with one field replaced, then re-signs nothing: used to
    /// check that a parse-level change is refused before or by the signature check.
    fn rebuild(version: u32, ns: &str, hash: &str, reserved: &[u8], sign_it: bool) -> String {
        let k = key();
        let data = signed_data(
            ns.as_bytes(),
            reserved,
            hash.as_bytes(),
            &Sha512::digest(MSG),
        );
        let sig: Signature = if sign_it {
            k.dalek().sign(&data)
        } else {
            k.dalek().sign(b"something else")
        };
        let mut sig_blob = Vec::new();
        put_string(&mut sig_blob, KEY_TYPE.as_bytes());
        put_string(&mut sig_blob, &sig.to_bytes());
        let mut blob = MAGIC.to_vec();
        put_u32(&mut blob, version);
        put_string(&mut blob, &k.public().wire_blob());
        put_string(&mut blob, ns.as_bytes());
        put_string(&mut blob, reserved);
        put_string(&mut blob, hash.as_bytes());
        put_string(&mut blob, &sig_blob);
        wire::armor(LABEL, &blob)
    }

    #[test]
    fn sign_then_verify() {
        let sig = sign(&key(), NAMESPACE, MSG);
        assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
        assert!(sig.ends_with("\n-----END SSH SIGNATURE-----\n"));
        assert!(sig.lines().all(|l| l.len() <= 70));
        let signer = verify(sig.as_bytes(), NAMESPACE, MSG).unwrap();
        assert_eq!(signer, key().public());
        // ed25519 is deterministic: same key and message, same signature.
        assert_eq!(sig, sign(&key(), NAMESPACE, MSG));
        assert_eq!(rebuild(1, NAMESPACE, "sha512", b"", true), sig);
    }

    #[test]
    fn refusals() {
        let sig = sign(&key(), NAMESPACE, MSG);
        expect_bad(verify(sig.as_bytes(), "git", MSG), "namespace");
        let mut msg = MSG.to_vec();
        msg[3] ^= 1;
        expect_bad(verify(sig.as_bytes(), NAMESPACE, &msg), "does not match");

        let blob = wire::dearmor(&sig, LABEL).unwrap();
        // The last 64 bytes are the ed25519 signature itself.
        for pos in [blob.len() - 1, blob.len() - 40, blob.len() - 64] {
            let mut b = blob.clone();
            b[pos] ^= 0x10;
            expect_bad(
                verify(wire::armor(LABEL, &b).as_bytes(), NAMESPACE, MSG),
                "",
            );
        }
        // Every single-byte change to the blob is refused.
        for pos in 0..blob.len() {
            let mut b = blob.clone();
            b[pos] ^= 0x01;
            expect_bad(
                verify(wire::armor(LABEL, &b).as_bytes(), NAMESPACE, MSG),
                "",
            );
        }
        let mut long = blob.clone();
        long.push(0);
        expect_bad(
            verify(wire::armor(LABEL, &long).as_bytes(), NAMESPACE, MSG),
            "trailing",
        );

        // Correctly signed, but with parameters kiln does not accept.
        expect_bad(
            verify(
                rebuild(1, NAMESPACE, "sha256", b"", true).as_bytes(),
                NAMESPACE,
                MSG,
            ),
            "sha256",
        );
        expect_bad(
            verify(
                rebuild(2, NAMESPACE, "sha512", b"", true).as_bytes(),
                NAMESPACE,
                MSG,
            ),
            "version 2",
        );
        expect_bad(
            verify(
                rebuild(1, NAMESPACE, "sha512", b"x", true).as_bytes(),
                NAMESPACE,
                MSG,
            ),
            "reserved",
        );
        expect_bad(
            verify(
                rebuild(1, NAMESPACE, "sha512", b"", false).as_bytes(),
                NAMESPACE,
                MSG,
            ),
            "does not match",
        );
        expect_bad(verify(b"", NAMESPACE, MSG), "");
        expect_bad(verify(&[0xff, 0xfe], NAMESPACE, MSG), "not text");
    }

    #[test]
    fn ssh_keygen_accepts_our_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let allowed = dir.path().join("allowed_signers");
        std::fs::write(&allowed, format!("kiln {}\n", k.public().to_openssh())).unwrap();
        let sig_path = dir.path().join("manifest.json.sig");
        std::fs::write(&sig_path, sign(&k, NAMESPACE, MSG)).unwrap();

        let run = |ns: &str| {
            let mut child = Command::new("/usr/bin/ssh-keygen")
                .args(["-Y", "verify", "-f"])
                .arg(&allowed)
                .args(["-I", "kiln", "-n", ns, "-s"])
                .arg(&sig_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(MSG).unwrap();
            child.wait_with_output().unwrap()
        };
        let ok = run(NAMESPACE);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(!run("git").status.success());
    }

    #[test]
    fn we_accept_ssh_keygen_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("id");
        let kp = key_path.to_str().unwrap();
        let out = Command::new("/usr/bin/ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f", kp])
            .output()
            .unwrap();
        assert!(out.status.success());
        let msg_path = dir.path().join("manifest.json");
        std::fs::write(&msg_path, MSG).unwrap();
        let out = Command::new("/usr/bin/ssh-keygen")
            .args(["-Y", "sign", "-f", kp, "-n", NAMESPACE])
            .arg(&msg_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig = std::fs::read(dir.path().join("manifest.json.sig")).unwrap();
        let signer = verify(&sig, NAMESPACE, MSG).unwrap();
        let public =
            PublicKey::parse_openssh(&std::fs::read_to_string(format!("{kp}.pub")).unwrap())
                .unwrap();
        assert_eq!(signer, public);
        expect_bad(verify(&sig, "file", MSG), "namespace");
    }
}
