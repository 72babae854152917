//! Private keys: reading PKCS#1, PKCS#8 and SEC1 PEM blocks, and checking that a key belongs to a
//! certificate. Key material never leaves this module in an error or a `Debug` string, and is
//! zeroed when dropped ([`SecretKeyPair`]).

use std::fmt;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use super::cert::Cert;
use super::encode::KeyFormat;
use super::pem::Block;
use super::secret::SecretKeyPair;

/// A private key read from disk.
pub struct PrivateKey {
    /// The key, usable for signing; zeroed when dropped.
    pub pair: SecretKeyPair,
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

/// The first block among `blocks` that holds a private key; the error names what is there instead.
fn first_key(blocks: &[Block]) -> Result<&Block, KeyError> {
    blocks
        .iter()
        .find(|b| is_key_label(&b.label))
        .ok_or_else(|| {
            let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
            KeyError::NotAKey(if labels.is_empty() {
                "nothing".to_owned()
            } else {
                labels.join(", ")
            })
        })
}

impl PrivateKey {
    /// Reads the first private key among `blocks`.
    pub fn from_blocks(blocks: &[Block]) -> Result<PrivateKey, KeyError> {
        Self::from_block(first_key(blocks)?)
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
        // aws-lc ignores bytes after the key's SEQUENCE, but the key keeps them and could not be
        // written back (key_policy = "reuse"): refuse them here, where the file is named.
        let whole = x509_parser::der_parser::der::parse_der_sequence(&block.der)
            .is_ok_and(|(rest, _)| rest.is_empty());
        if !whole {
            return Err(KeyError::Unparseable(what));
        }
        let pair = rcgen::KeyPair::try_from(&der).map_err(|_| KeyError::Unparseable(what))?;
        Ok(PrivateKey {
            pair: pair.into(),
            format,
        })
    }

    /// Whether this key is the private half of the certificate's public key.
    pub fn matches(&self, cert: &Cert) -> bool {
        self.pair.public_key_raw() == cert.public_key.as_slice()
    }
}

/// The public half of the first private key among `blocks`, in the form a certificate's
/// SubjectPublicKeyInfo bit string holds it (RSAPublicKey DER, or the EC point).
///
/// Read from the key's structure, as `openssl rsa -modulus` compares keys, rather than by loading
/// the key for signing: aws-lc validates an RSA key on load (several big-number operations, most
/// of an inventory's time on a kubeadm node), which matching does not need. A key that is about to
/// sign is fully loaded and validated by [`PrivateKey::from_block`].
pub fn public_half(blocks: &[Block]) -> Result<Vec<u8>, KeyError> {
    let block = first_key(blocks)?;
    let (format, what) = match block.label.as_str() {
        "RSA PRIVATE KEY" => (KeyFormat::Pkcs1, "PKCS#1 RSA"),
        "EC PRIVATE KEY" => (KeyFormat::Sec1, "SEC1 EC"),
        "PRIVATE KEY" => (KeyFormat::Pkcs8, "PKCS#8"),
        "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
        other => return Err(KeyError::NotAKey(other.to_owned())),
    };
    let public = match format {
        KeyFormat::Pkcs1 => structure::rsa_public(&block.der),
        KeyFormat::Sec1 => structure::ec_public(&block.der),
        KeyFormat::Pkcs8 => structure::pkcs8_public(&block.der),
    };
    match public {
        Some(p) => Ok(p),
        // Not in the structure (a SEC1 key without its optional public key, Ed25519): derive it.
        None => PrivateKey::from_block(block)
            .map(|k| k.pair.public_key_raw().to_vec())
            .map_err(|_| KeyError::Unparseable(what)),
    }
}

/// Reading public halves out of private key structures (RFC 8017 A.1.2, RFC 5915, RFC 5208).
mod structure {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::{parse_der, parse_der_sequence};

    /// RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, … } → RSAPublicKey DER.
    pub fn rsa_public(der: &[u8]) -> Option<Vec<u8>> {
        let (_, seq) = parse_der_sequence(der).ok()?;
        let items = seq.as_sequence().ok()?;
        let n = items.get(1)?.as_bigint().ok()?;
        let e = items.get(2)?.as_bigint().ok()?;
        // Both fields must be present and the rest of the key at least shaped like one.
        if items.len() < 9 {
            return None;
        }
        let (n, e) = (n.to_signed_bytes_be(), e.to_signed_bytes_be());
        Some(yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_bigint_bytes(&n, true);
                w.next().write_bigint_bytes(&e, true);
            })
        }))
    }

    /// ECPrivateKey ::= SEQUENCE { version 1, privateKey, [0] parameters OPTIONAL,
    /// [1] publicKey BIT STRING OPTIONAL } → the point, when present.
    pub fn ec_public(der: &[u8]) -> Option<Vec<u8>> {
        let (_, seq) = parse_der_sequence(der).ok()?;
        let items = seq.as_sequence().ok()?;
        items.iter().skip(2).find_map(|item| {
            if item.header.tag().0 != 1 || !item.header.is_contextspecific() {
                return None;
            }
            let inner = match &item.content {
                BerObjectContent::Unknown(any) => parse_der(any.data).ok()?.1,
                _ => return None,
            };
            match inner.content {
                BerObjectContent::BitString(_, bits) => Some(bits.data.to_vec()),
                _ => None,
            }
        })
    }

    /// PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, privateKey OCTET STRING }.
    pub fn pkcs8_public(der: &[u8]) -> Option<Vec<u8>> {
        let (_, seq) = parse_der_sequence(der).ok()?;
        let items = seq.as_sequence().ok()?;
        let alg = items
            .get(1)?
            .as_sequence()
            .ok()?
            .first()?
            .as_oid()
            .ok()?
            .to_id_string();
        let inner = items.get(2)?.as_slice().ok()?;
        match alg.as_str() {
            "1.2.840.113549.1.1.1" => rsa_public(inner),
            "1.2.840.10045.2.1" => ec_public(inner),
            _ => None,
        }
    }
}
