//! Private keys: reading PKCS#1, PKCS#8 and SEC1 PEM blocks, and checking that a key belongs to a
//! certificate. Key material never leaves this module in an error or a `Debug` string.

use std::fmt;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use super::cert::Cert;
use super::encode::KeyFormat;
use super::pem::Block;

/// A private key read from disk.
pub struct PrivateKey {
    /// The key, usable for signing.
    pub pair: rcgen::KeyPair,
    /// The format it was stored in, so that a renewed key is written the same way.
    pub format: KeyFormat,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.format)
    }
}

/// Why a block could not be used as a private key. Carries no key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key is encrypted; certrotd does not hold passphrases.
    #[error("the private key is encrypted (certrotd cannot use passphrase-protected keys)")]
    Encrypted,
    /// The block is not a private key at all.
    #[error("no private key block (found {0})")]
    NotAKey(String),
    /// The block is a private key certrotd cannot parse (unknown algorithm or corrupt).
    #[error("unsupported or corrupt {0} private key")]
    Unparseable(&'static str),
}

/// The label of every PEM block that holds a private key.
pub fn is_key_label(label: &str) -> bool {
    label.ends_with("PRIVATE KEY")
}

impl PrivateKey {
    /// Reads the first private key among `blocks`.
    pub fn from_blocks(blocks: &[Block]) -> Result<PrivateKey, KeyError> {
        let Some(block) = blocks.iter().find(|b| is_key_label(&b.label)) else {
            let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
            return Err(KeyError::NotAKey(if labels.is_empty() {
                "nothing".to_owned()
            } else {
                labels.join(", ")
            }));
        };
        Self::from_block(block)
    }

    /// Reads one PEM block as a private key.
    pub fn from_block(block: &Block) -> Result<PrivateKey, KeyError> {
        let (der, format, what): (PrivateKeyDer<'_>, KeyFormat, &'static str) =
            match block.label.as_str() {
                "RSA PRIVATE KEY" => (
                    PrivatePkcs1KeyDer::from(block.der.as_slice()).into(),
                    KeyFormat::Pkcs1,
                    "PKCS#1 RSA",
                ),
                "EC PRIVATE KEY" => (
                    PrivateSec1KeyDer::from(block.der.as_slice()).into(),
                    KeyFormat::Sec1,
                    "SEC1 EC",
                ),
                "PRIVATE KEY" => (
                    PrivatePkcs8KeyDer::from(block.der.as_slice()).into(),
                    KeyFormat::Pkcs8,
                    "PKCS#8",
                ),
                "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
                other => return Err(KeyError::NotAKey(other.to_owned())),
            };
        let pair = rcgen::KeyPair::try_from(&der).map_err(|_| KeyError::Unparseable(what))?;
        Ok(PrivateKey { pair, format })
    }

    /// Whether this key is the private half of the certificate's public key.
    pub fn matches(&self, cert: &Cert) -> bool {
        self.pair.public_key_raw() == cert.public_key.as_slice()
    }
}
