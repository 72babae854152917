//! The new CA key travels to the other control-plane nodes inside the cluster record, encrypted
//! with a key only they can derive: HKDF-SHA256 over the old CA's private key (which every
//! control-plane node already holds, and nothing else does — not the API server's etcd client
//! certificate, not a worker), salted per wrap, bound to the cluster, track and new CA; then
//! AES-256-GCM. Whoever can read etcd without the old CA key learns nothing of the new one.
//!
//! Wire form: `v1:` + base64(salt(32) ‖ nonce(12) ‖ ciphertext+tag).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::pki::encode::{self, KeyFormat};
use crate::pki::key::PrivateKey;
use crate::pki::secret::SecretString;

const VERSION: &str = "v1:";
const SALT_LEN: usize = 32;

/// Why a key could not be wrapped or unwrapped. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The wrapped text is not in the expected form.
    #[error("wrapped CA key: {0}")]
    Malformed(&'static str),
    /// Authentication failed: another old CA key, another cluster, track or new CA, or tampering.
    #[error(
        "wrapped CA key: cannot be opened with this node's old CA key (another CA, cluster or \
         track, or altered)"
    )]
    Open,
    /// The crypto library failed.
    #[error("wrapped CA key: {0}")]
    Crypto(&'static str),
}

/// What the wrap is bound to: a ciphertext made for one cluster, track and new CA opens for
/// no other.
pub fn context(cluster: &str, track: &str, new_fp: &str) -> String {
    format!("certrotd ca-key wrap v1\0{cluster}\0{track}\0{new_fp}")
}

fn derive(old_key: &PrivateKey, salt: &[u8], context: &str) -> Result<LessSafeKey, WrapError> {
    // PKCS#8 whatever the file's format, so every node derives the same key from its copy.
    let ikm = encode::private_key_der(&old_key.pair, KeyFormat::Pkcs8)
        .map_err(|_| WrapError::Crypto("the old CA key cannot be encoded"))?;
    let prk = Salt::new(HKDF_SHA256, salt).extract(&ikm);
    let info = [context.as_bytes()];
    let okm = prk
        .expand(&info, HKDF_SHA256)
        .map_err(|_| WrapError::Crypto("HKDF expand failed"))?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    okm.fill(bytes.as_mut())
        .map_err(|_| WrapError::Crypto("HKDF fill failed"))?;
    let key = UnboundKey::new(&AES_256_GCM, bytes.as_ref())
        .map_err(|_| WrapError::Crypto("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(key))
}

/// Encrypts `new_key_pem` for the holders of `old_key`.
pub fn wrap(
    new_key_pem: &SecretString,
    old_key: &PrivateKey,
    context: &str,
) -> Result<String, WrapError> {
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| WrapError::Crypto("random salt"))?;
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| WrapError::Crypto("random nonce"))?;
    let key = derive(old_key, &salt, context)?;
    let mut data = Zeroizing::new(new_key_pem.as_bytes().to_vec());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(context.as_bytes()),
        &mut *data,
    )
    .map_err(|_| WrapError::Crypto("AES-256-GCM seal"))?;
    let mut out = Vec::with_capacity(SALT_LEN + NONCE_LEN + data.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(format!(
        "{VERSION}{}",
        base64::engine::general_purpose::STANDARD.encode(out)
    ))
}

/// Decrypts what [`wrap`] made, with this node's copy of the old CA key.
pub fn unwrap(
    wrapped: &str,
    old_key: &PrivateKey,
    context: &str,
) -> Result<SecretString, WrapError> {
    let body = wrapped
        .strip_prefix(VERSION)
        .ok_or(WrapError::Malformed("unknown version"))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| WrapError::Malformed("not base64"))?;
    if raw.len() < SALT_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(WrapError::Malformed("too short"));
    }
    let (salt, rest) = raw.split_at(SALT_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let key = derive(old_key, salt, context)?;
    let nonce =
        Nonce::try_assume_unique_for_key(nonce).map_err(|_| WrapError::Malformed("nonce"))?;
    let mut data = Zeroizing::new(sealed.to_vec());
    let plain = key
        .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
        .map_err(|_| WrapError::Open)?;
    let text = std::str::from_utf8(plain).map_err(|_| WrapError::Malformed("not text"))?;
    Ok(SecretString::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::{KeySpec, generate};
    use crate::pki::pem;

    fn key(spec: KeySpec) -> PrivateKey {
        let pem_text = generate(spec).unwrap().serialize_pem();
        let blocks = pem::blocks(std::path::Path::new("k"), pem_text.as_bytes()).unwrap();
        PrivateKey::from_blocks(&blocks).unwrap()
    }

    #[test]
    fn only_the_old_ca_key_and_the_same_context_open_the_wrap() {
        let old = key(KeySpec::EcdsaP256);
        let other = key(KeySpec::EcdsaP256);
        let secret = SecretString::new("-----BEGIN EC PRIVATE KEY-----\nsecret\n".to_owned());
        let ctx = context("c1", "etcd-ca", "ab12");
        let w = wrap(&secret, &old, &ctx).unwrap();
        assert!(!w.contains("secret") && !w.contains("PRIVATE"), "{w}");
        assert_eq!(&*unwrap(&w, &old, &ctx).unwrap(), &*secret);
        assert_eq!(unwrap(&w, &other, &ctx).unwrap_err(), WrapError::Open);
        let elsewhere = context("c2", "etcd-ca", "ab12");
        assert_eq!(unwrap(&w, &old, &elsewhere).unwrap_err(), WrapError::Open);
        // Two wraps of the same key differ (fresh salt and nonce).
        assert_ne!(wrap(&secret, &old, &ctx).unwrap(), w);
        // One flipped bit is refused.
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&w[3..])
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let bad = format!(
            "v1:{}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
        assert_eq!(unwrap(&bad, &old, &ctx).unwrap_err(), WrapError::Open);
        assert!(matches!(
            unwrap("v0:abc", &old, &ctx),
            Err(WrapError::Malformed(_))
        ));
    }
}
