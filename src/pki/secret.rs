//! Private key material in memory: zeroed when dropped, never printed.
//!
//! certrotd holds CA keys. A crash dump, a swapped-out page or a later allocation must not find
//! them once they are used, so every buffer that holds a private key (read from a file, made,
//! re-encoded, composed into a file's new contents) is one of these types; their `Debug` says how
//! many bytes, never which. rcgen's key pair keeps its private key as DER, wiped here on drop;
//! the parsed key inside it belongs to aws-lc, whose `OPENSSL_free` clears memory before freeing.

use std::fmt;
use std::ops::Deref;

use zeroize::{Zeroize as _, Zeroizing};

/// Bytes that may hold a private key (DER, PEM text, a whole key file), zeroed when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes` (no copy is left behind).
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// Shortens the contents in place (never reallocates, so no copy is left behind).
    pub fn truncate(&mut self, len: usize) {
        self.0[len..].zeroize();
        self.0.truncate(len);
    }
}

impl AsMut<[u8]> for SecretBytes {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes::new(bytes)
    }
}

impl From<SecretString> for SecretBytes {
    fn from(mut text: SecretString) -> SecretBytes {
        // Moves the String's buffer out, leaving an empty (nothing to wipe) String behind.
        SecretBytes::new(std::mem::take(&mut *text.0).into_bytes())
    }
}

impl Deref for SecretBytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// Text that may hold a private key (PEM), zeroed when dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `text` (no copy is left behind).
    pub fn new(text: String) -> SecretString {
        SecretString(Zeroizing::new(text))
    }
}

impl Deref for SecretString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<[u8]> for SecretString {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl AsRef<str> for SecretString {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString({} bytes)", self.0.len())
    }
}

/// An rcgen key pair whose private key DER is zeroed when dropped. Usable wherever rcgen wants
/// a signing key; `&SecretKeyPair` also derefs to `&rcgen::KeyPair`.
pub struct SecretKeyPair(rcgen::KeyPair);

impl SecretKeyPair {
    /// The private key as PKCS#8 DER (or the DER it was loaded from), zeroed when dropped.
    /// Shadows rcgen's method of the same name, which returns a plain `Vec`.
    pub fn serialize_der(&self) -> SecretBytes {
        SecretBytes::new(self.0.serialize_der())
    }

    /// The private key as PEM, zeroed when dropped. Shadows rcgen's, which returns a `String`.
    pub fn serialize_pem(&self) -> SecretString {
        SecretString::new(self.0.serialize_pem())
    }
}

impl From<rcgen::KeyPair> for SecretKeyPair {
    fn from(pair: rcgen::KeyPair) -> SecretKeyPair {
        SecretKeyPair(pair)
    }
}

impl Deref for SecretKeyPair {
    type Target = rcgen::KeyPair;
    fn deref(&self) -> &rcgen::KeyPair {
        &self.0
    }
}

impl Drop for SecretKeyPair {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKeyPair({:?}, <redacted>)", self.0.algorithm())
    }
}

impl rcgen::PublicKeyData for SecretKeyPair {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&self.0)
    }
}

impl rcgen::SigningKey for SecretKeyPair {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::encode::{self, KeyFormat, KeySpec};
    use crate::pki::key::PrivateKey;
    use crate::pki::pem;

    #[test]
    fn debug_of_every_key_type_shows_no_key_bytes() {
        let key = encode::generate(KeySpec::EcdsaP256).unwrap();
        let pem_text = encode::private_key_pem(&key, KeyFormat::Sec1).unwrap();
        let der = encode::private_key_der(&key, KeyFormat::Sec1).unwrap();
        let blocks = pem::blocks(std::path::Path::new("k"), pem_text.as_bytes()).unwrap();
        let loaded = PrivateKey::from_blocks(&blocks).unwrap();
        let shown = [
            format!("{key:?}"),
            format!("{pem_text:?}"),
            format!("{der:?}"),
            format!("{:?}", key.serialize_der()),
            format!("{:?}", key.serialize_pem()),
            format!("{:?}", SecretBytes::from(pem_text.as_bytes().to_vec())),
            format!("{blocks:?}"),
            format!("{loaded:?}"),
            format!("{:#?}", loaded.pair),
        ];
        // The key as text, as hex, and as Debug prints a byte list, in both encodings.
        let pkcs8 = key.serialize_der();
        let needles = [
            pem_text.lines().nth(1).unwrap().to_owned(),
            key.serialize_pem().lines().nth(1).unwrap().to_owned(),
            hex::encode(&der[..12]),
            hex::encode(&pkcs8[..12]),
            format!("{:?}", &der[..6]).trim_end_matches(']').to_owned(),
            format!("{:?}", &pkcs8[..6])
                .trim_end_matches(']')
                .to_owned(),
        ];
        for s in &shown {
            for n in &needles {
                assert!(!s.contains(n.as_str()), "{s:?} shows key bytes ({n})");
            }
            assert!(
                s.contains("bytes") || s.contains("redacted"),
                "{s}: says what it hides"
            );
        }
    }
}
