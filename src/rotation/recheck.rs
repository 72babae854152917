//! Recheck: before recovery rolls a rotation forward, what it staged is judged again, at the time
//! of the recovery, as the components would read it. The crash may be days old: a staged
//! certificate can have expired since, and the digest in the journal proves only that the bytes
//! are the ones written, not that they are still worth installing.
//!
//! Each staged file is read as a consumer reads it (PEM, or a kubeconfig's embedded client
//! credentials): every certificate must parse, the first (the leaf) must be valid at `now`, a key
//! in the same file or kubeconfig user must be its certificate's, and a key staged in a file of its
//! own must belong to one of the staged certificates. Errors name the file, never its contents.

use std::path::Path;

use time::OffsetDateTime;

use super::RotationError;
use super::journal::Change;
use crate::pki::cert::Cert;
use crate::pki::key::{is_key_label, public_half};
use crate::pki::kubeconfig::{self, Source};
use crate::pki::pem::{self, Block};

/// Checks every staged file content (`contents[i]` belongs to `changes[i]`) at `now`.
pub fn staged(
    changes: &[Change],
    contents: &[Option<Vec<u8>>],
    now: OffsetDateTime,
) -> Result<(), RotationError> {
    let mut leaves: Vec<Cert> = Vec::new();
    let mut lone_keys: Vec<(&Path, Vec<u8>)> = Vec::new();
    for (change, data) in changes.iter().zip(contents) {
        let (Change::File { path, .. }, Some(data)) = (change, data) else {
            continue;
        };
        let fail = |reason: String| refused(path, reason);
        if is_kubeconfig(data) {
            let kc = kubeconfig::parse(path, data).map_err(|e| fail(e.to_string()))?;
            for user in &kc.users {
                let Source::Embedded(cert_pem) = &user.cert else {
                    continue;
                };
                let what = format!("users[{}]", user.name);
                let blocks =
                    pem::blocks(path, cert_pem).map_err(|e| fail(format!("{what}: {e}")))?;
                let Some(leaf) = leaf_of(&blocks, now).map_err(|e| fail(format!("{what}: {e}")))?
                else {
                    return Err(fail(format!("{what} embeds no certificate")));
                };
                if let Some(Source::Embedded(key_pem)) = &user.key {
                    let key =
                        pem::blocks(path, key_pem).map_err(|e| fail(format!("{what}: {e}")))?;
                    if public_half(&key).map_err(|e| fail(format!("{what}: {e}")))?
                        != leaf.public_key
                    {
                        return Err(fail(format!(
                            "{what}: the key does not match its certificate"
                        )));
                    }
                }
                leaves.push(leaf);
            }
            continue;
        }
        let blocks = pem::blocks(path, data).map_err(|e| fail(e.to_string()))?;
        let leaf = leaf_of(&blocks, now).map_err(fail)?;
        let has_key = blocks.iter().any(|b| is_key_label(&b.label));
        let key = if has_key {
            Some(public_half(&blocks).map_err(|e| fail(e.to_string()))?)
        } else {
            None
        };
        match (leaf, key) {
            (Some(leaf), Some(key)) if key != leaf.public_key => {
                return Err(fail("the key does not match the certificate".into()));
            }
            (Some(leaf), _) => leaves.push(leaf),
            (None, Some(key)) => lone_keys.push((path, key)),
            (None, None) => return Err(fail("it holds no certificate and no key".into())),
        }
    }
    for (path, key) in lone_keys {
        if !leaves.iter().any(|c| c.public_key == key) {
            return Err(refused(
                path,
                "the key belongs to none of the staged certificates".into(),
            ));
        }
    }
    Ok(())
}

fn refused(path: &Path, reason: String) -> RotationError {
    RotationError::SelfCheck {
        what: format!("the staged content for {}", path.display()),
        reason,
    }
}

/// A staged kubeconfig is YAML; everything else certrotd stages is PEM.
fn is_kubeconfig(data: &[u8]) -> bool {
    !data.trim_ascii_start().starts_with(b"-----BEGIN") && kubeconfig::looks_like_kubeconfig(data)
}

/// The first certificate of `blocks` (every one must parse), refused unless valid at `now`.
fn leaf_of(blocks: &[Block], now: OffsetDateTime) -> Result<Option<Cert>, String> {
    let mut leaf = None;
    for (i, b) in blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .enumerate()
    {
        let cert = Cert::from_der(&b.der).map_err(|e| format!("certificate {}: {e}", i + 1))?;
        if leaf.is_none() {
            leaf = Some(cert);
        }
    }
    if let Some(c) = &leaf
        && c.not_after <= now
    {
        return Err(format!(
            "its certificate expired at {}",
            crate::timefmt::rfc3339(c.not_after)
        ));
    }
    Ok(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::{self, KeyFormat, KeySpec};
    use crate::pki::secret::SecretKeyPair;
    use rcgen::CertificateParams;

    fn pair(not_after: OffsetDateTime) -> (String, String, SecretKeyPair) {
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let mut p = CertificateParams::new(vec!["node".into()]).unwrap();
        p.not_before = not_after - time::Duration::days(365);
        p.not_after = not_after;
        let cert = p.self_signed(&key).unwrap();
        let key_pem = encode::private_key_pem(&key, KeyFormat::Pkcs8).unwrap();
        (cert.pem(), key_pem.to_string(), key)
    }

    fn file(path: &str) -> Change {
        Change::File {
            path: path.into(),
            staged: "0000-x".into(),
            sha256: String::new(),
            new_mode: 0o600,
        }
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2026-06-01 0:00 UTC);

    #[test]
    fn a_good_pair_passes_and_an_expired_one_is_named() {
        let (crt, key, _) = pair(NOW + time::Duration::days(30));
        let changes = [file("/pki/a.crt"), file("/pki/a.key")];
        let contents = [Some(crt.clone().into_bytes()), Some(key.into_bytes())];
        staged(&changes, &contents, NOW).unwrap();

        let err = staged(&changes, &contents, NOW + time::Duration::days(31)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/pki/a.crt") && msg.contains("expired"),
            "{msg}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_and_never_printed() {
        let (crt, _, _) = pair(NOW + time::Duration::days(30));
        let (_, other_key, _) = pair(NOW + time::Duration::days(30));
        let changes = [file("/pki/a.crt"), file("/pki/a.key")];
        let contents = [
            Some(crt.clone().into_bytes()),
            Some(other_key.clone().into_bytes()),
        ];
        let msg = staged(&changes, &contents, NOW).unwrap_err().to_string();
        assert!(
            msg.contains("/pki/a.key") && msg.contains("none of the staged"),
            "{msg}"
        );
        assert!(!msg.contains("PRIVATE KEY"), "{msg}");

        // Combined in one file: the key must be the file's own certificate's.
        let combined = format!("{crt}{other_key}");
        let msg = staged(&[file("/pki/c.pem")], &[Some(combined.into_bytes())], NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("does not match"), "{msg}");
    }

    #[test]
    fn garbage_and_kubeconfigs_are_read_as_their_consumers_read_them() {
        let msg = staged(&[file("/pki/a.crt")], &[Some(b"garbage".to_vec())], NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/pki/a.crt"), "{msg}");

        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (crt, key, _) = pair(NOW + time::Duration::days(30));
        let (_, other_key, _) = pair(NOW + time::Duration::days(30));
        let kc = |k: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers:\n- name: admin\n  \
                 user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&crt),
                b64(k)
            )
        };
        let change = [file("/etc/kubernetes/admin.conf")];
        staged(&change, &[Some(kc(&key).into_bytes())], NOW).unwrap();
        let msg = staged(&change, &[Some(kc(&other_key).into_bytes())], NOW)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("users[admin]") && msg.contains("does not match"),
            "{msg}"
        );
    }
}
