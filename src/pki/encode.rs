//! Making private keys, and writing keys and certificates as PEM in exactly the formats kubeadm,
//! client-go and openssl use: PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`), PKCS#8
//! (`PRIVATE KEY`), PKIX (`PUBLIC KEY`) and `CERTIFICATE`.
//!
//! rcgen keeps a key as the DER it was made or loaded from: PKCS#8 for a generated key, PKCS#1 or
//! SEC1 for a key read from a kubeadm file. Everything here looks at that DER's structure rather
//! than assuming one, so a renewed key can be written in the same format as the key it replaces.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as lc_signature, EcdsaKeyPair, EcdsaSigningAlgorithm, RsaKeyPair};
use base64::Engine as _;
use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SignatureAlgorithm};
use x509_parser::der_parser::ber::BerObjectContent;
use x509_parser::der_parser::der::parse_der_sequence;
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use zeroize::Zeroizing;

use super::secret::{SecretBytes, SecretKeyPair, SecretString};

/// The algorithm and size of a key, named as kubeadm's `encryptionAlgorithm` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// RSA with a modulus of this many bits (kubeadm makes 2048, 3072 or 4096).
    Rsa(u32),
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
}

impl KeySpec {
    /// The signature algorithm a key of this spec signs with, as Go picks it (SHA-256 for every
    /// RSA size, the curve's own hash for ECDSA).
    pub fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeySpec::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
            KeySpec::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeySpec::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// The on-disk format kubeadm and client-go write for this kind of key.
    pub fn native_format(self) -> KeyFormat {
        match self {
            KeySpec::Rsa(_) => KeyFormat::Pkcs1,
            KeySpec::EcdsaP256 | KeySpec::EcdsaP384 => KeyFormat::Sec1,
        }
    }

    /// The spec of an existing key, so that a replacement can be made alike; `None` for
    /// algorithms kubeadm never makes (Ed25519, P-521).
    pub fn of(key: &KeyPair) -> Option<KeySpec> {
        let alg = key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(KeySpec::EcdsaP256)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Some(KeySpec::EcdsaP384)
        } else if is_rsa(alg) {
            // For RSA, rcgen's raw public key is the PKCS#1 RSAPublicKey.
            rsa_modulus_bits(key.public_key_raw()).map(KeySpec::Rsa)
        } else {
            None
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeySpec::EcdsaP256 => f.write_str("ECDSA-P256"),
            KeySpec::EcdsaP384 => f.write_str("ECDSA-P384"),
        }
    }
}

impl FromStr for KeySpec {
    type Err = EncodeError;

    /// Parses kubeadm's `encryptionAlgorithm` names: `RSA-2048`, `RSA-3072`, `RSA-4096`,
    /// `ECDSA-P256`, `ECDSA-P384`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || EncodeError::UnknownKeySpec(s.to_owned());
        match s {
            "ECDSA-P256" => Ok(KeySpec::EcdsaP256),
            "ECDSA-P384" => Ok(KeySpec::EcdsaP384),
            _ => {
                let bits = s.strip_prefix("RSA-").ok_or_else(unknown)?;
                match bits.parse::<u32>() {
                    Ok(bits @ (2048 | 3072 | 4096)) => Ok(KeySpec::Rsa(bits)),
                    _ => Err(unknown()),
                }
            }
        }
    }
}

/// How a private key is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// PKCS#1 `RSAPrivateKey`, PEM `RSA PRIVATE KEY` (what kubeadm writes for RSA).
    Pkcs1,
    /// PKCS#8 `PrivateKeyInfo`, PEM `PRIVATE KEY`.
    Pkcs8,
    /// SEC1 / RFC 5915 `ECPrivateKey` with the curve and public key, PEM `EC PRIVATE KEY`.
    Sec1,
}

impl KeyFormat {
    /// The PEM label of this format.
    pub fn pem_label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
        }
    }

    /// The format a PEM label names, if it names a plaintext private key.
    pub fn from_pem_label(label: &str) -> Option<KeyFormat> {
        match label {
            "RSA PRIVATE KEY" => Some(KeyFormat::Pkcs1),
            "PRIVATE KEY" => Some(KeyFormat::Pkcs8),
            "EC PRIVATE KEY" => Some(KeyFormat::Sec1),
            _ => None,
        }
    }
}

impl fmt::Display for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyFormat::Pkcs1 => "PKCS#1",
            KeyFormat::Pkcs8 => "PKCS#8",
            KeyFormat::Sec1 => "SEC1",
        })
    }
}

/// Why a key could not be made or encoded. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The text does not name a key spec kubeadm knows.
    #[error(
        "parsing a key spec: unknown {0:?} (expected RSA-2048, RSA-3072, RSA-4096, ECDSA-P256 or ECDSA-P384)"
    )]
    UnknownKeySpec(String),
    /// RSA keys of this size are not generated.
    #[error("generating a {spec} key: only RSA-2048, RSA-3072 and RSA-4096 are supported")]
    UnsupportedRsaSize {
        /// The requested spec.
        spec: KeySpec,
    },
    /// The crypto library failed to generate the key.
    #[error("generating a {spec} key")]
    Generate {
        /// The requested spec.
        spec: KeySpec,
        /// What the crypto library said.
        #[source]
        source: rcgen::Error,
    },
    /// The format cannot hold this kind of key (e.g. an ECDSA key as PKCS#1).
    #[error("encoding a private key as {format}: {format} cannot hold a {algorithm} key")]
    IncompatibleFormat {
        /// The key's algorithm family.
        algorithm: &'static str,
        /// The requested format.
        format: KeyFormat,
    },
    /// The key's DER is not a PKCS#1, PKCS#8 or SEC1 structure we can convert.
    #[error("encoding a private key as {format}: its DER {problem}")]
    Malformed {
        /// The requested format.
        format: KeyFormat,
        /// What is wrong with the structure.
        problem: &'static str,
    },
    /// The crypto library would not re-encode the key.
    #[error("encoding a {algorithm} private key as {format}: the crypto library rejected the key")]
    Convert {
        /// The key's algorithm family.
        algorithm: &'static str,
        /// The requested format.
        format: KeyFormat,
    },
}

/// Generates a new key pair of the given spec, zeroed when dropped.
pub fn generate(spec: KeySpec) -> Result<SecretKeyPair, EncodeError> {
    let generated = match spec {
        KeySpec::Rsa(bits) => {
            let size = match bits {
                2048 => RsaKeySize::_2048,
                3072 => RsaKeySize::_3072,
                4096 => RsaKeySize::_4096,
                _ => return Err(EncodeError::UnsupportedRsaSize { spec }),
            };
            KeyPair::generate_rsa_for(spec.signature_algorithm(), size)
        }
        KeySpec::EcdsaP256 | KeySpec::EcdsaP384 => {
            KeyPair::generate_for(spec.signature_algorithm())
        }
    };
    generated
        .map(SecretKeyPair::from)
        .map_err(|source| EncodeError::Generate { spec, source })
}

/// The private key as PEM in the given format, zeroed when dropped.
pub fn private_key_pem(key: &KeyPair, format: KeyFormat) -> Result<SecretString, EncodeError> {
    let der = private_key_der(key, format)?;
    Ok(SecretString::new(pem_encode(format.pem_label(), &der)))
}

/// The private key as DER in the given format, zeroed when dropped. The crypto library's own
/// copies (aws-lc's encoders) wipe themselves when dropped too.
pub fn private_key_der(key: &KeyPair, format: KeyFormat) -> Result<SecretBytes, EncodeError> {
    private_key_der_inner(key, format).map(SecretBytes::new)
}

fn private_key_der_inner(key: &KeyPair, format: KeyFormat) -> Result<Vec<u8>, EncodeError> {
    let der = key.serialized_der();
    let family = Family::of(key.algorithm());
    let malformed = |problem| EncodeError::Malformed { format, problem };
    let convert = || EncodeError::Convert {
        algorithm: family.name(),
        format,
    };
    let structure = Structure::of(der).map_err(malformed)?;

    match (family, format) {
        (Family::Rsa, KeyFormat::Pkcs1) => match structure {
            Structure::Pkcs1 => Ok(der.to_vec()),
            Structure::Pkcs8 { rsa: true, inner } => match Structure::of(inner) {
                Ok(Structure::Pkcs1) => Ok(inner.to_vec()),
                _ => Err(malformed("wraps something other than an RSAPrivateKey")),
            },
            _ => Err(malformed("is not an RSA key structure")),
        },
        (Family::Rsa, KeyFormat::Pkcs8) => match structure {
            Structure::Pkcs8 { .. } => Ok(der.to_vec()),
            Structure::Pkcs1 => {
                let pair = RsaKeyPair::from_der(der).map_err(|_| convert())?;
                let pkcs8 = pair.as_der().map_err(|_| convert())?;
                Ok(pkcs8.as_ref().to_vec())
            }
            Structure::Sec1 => Err(malformed("is an EC key structure")),
        },
        (Family::Ec(alg), KeyFormat::Sec1) => {
            // Re-export through aws-lc even when the input is already SEC1: its RFC 5915 encoding
            // always carries the named curve and the public key, which Go and openssl need.
            let pair = EcdsaKeyPair::from_private_key_der(alg, der).map_err(|_| convert())?;
            let sec1 = pair.private_key().as_der().map_err(|_| convert())?;
            Ok(sec1.as_ref().to_vec())
        }
        (Family::Ec(alg), KeyFormat::Pkcs8) => match structure {
            Structure::Pkcs8 { .. } => Ok(der.to_vec()),
            _ => {
                let pair = EcdsaKeyPair::from_private_key_der(alg, der).map_err(|_| convert())?;
                let pkcs8 = pair.to_pkcs8v1().map_err(|_| convert())?;
                Ok(pkcs8.as_ref().to_vec())
            }
        },
        (Family::Other, KeyFormat::Pkcs8) => match structure {
            Structure::Pkcs8 { .. } => Ok(der.to_vec()),
            _ => Err(malformed("is not PKCS#8")),
        },
        _ => Err(EncodeError::IncompatibleFormat {
            algorithm: family.name(),
            format,
        }),
    }
}

/// The public key as PKIX `PUBLIC KEY` PEM (the format of kubeadm's sa.pub).
pub fn public_key_pem(key: &KeyPair) -> String {
    pem_encode("PUBLIC KEY", &key.subject_public_key_info())
}

/// A DER certificate as `CERTIFICATE` PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// One PEM block, 64 base64 characters a line and `\n` endings, as Go's encoding/pem writes it.
/// The base64 text is wiped when done, and `out` is made large enough up front that it never
/// reallocates (a reallocation would leave a copy of a private key in freed memory).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so splitting at any byte offset stays on char boundaries.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// The kind of key behind an rcgen signature algorithm.
#[derive(Clone, Copy)]
enum Family {
    Rsa,
    Ec(&'static EcdsaSigningAlgorithm),
    Other,
}

impl Family {
    fn of(alg: &SignatureAlgorithm) -> Family {
        // Only the curve matters for parsing and re-encoding; the hash is irrelevant here.
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Family::Ec(&lc_signature::ECDSA_P256_SHA256_ASN1_SIGNING)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Family::Ec(&lc_signature::ECDSA_P384_SHA384_ASN1_SIGNING)
        } else if alg == &rcgen::PKCS_ECDSA_P521_SHA256
            || alg == &rcgen::PKCS_ECDSA_P521_SHA384
            || alg == &rcgen::PKCS_ECDSA_P521_SHA512
        {
            Family::Ec(&lc_signature::ECDSA_P521_SHA512_ASN1_SIGNING)
        } else if is_rsa(alg) {
            Family::Rsa
        } else {
            Family::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Rsa => "RSA",
            Family::Ec(_) => "ECDSA",
            Family::Other => "non-RSA, non-ECDSA",
        }
    }
}

fn is_rsa(alg: &SignatureAlgorithm) -> bool {
    alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
}

/// Which of the three private-key structures a DER blob is. They differ in their second field:
/// PKCS#8 has the AlgorithmIdentifier SEQUENCE, PKCS#1 the modulus INTEGER, SEC1 the private
/// key OCTET STRING.
enum Structure<'a> {
    Pkcs8 { rsa: bool, inner: &'a [u8] },
    Pkcs1,
    Sec1,
}

impl<'a> Structure<'a> {
    fn of(der: &'a [u8]) -> Result<Structure<'a>, &'static str> {
        // Parse errors are dropped on purpose: they may quote the input, which is a secret.
        let (rest, seq) = parse_der_sequence(der).map_err(|_| "is not a DER SEQUENCE")?;
        if !rest.is_empty() {
            return Err("has trailing bytes");
        }
        let items = seq.as_sequence().map_err(|_| "is not a DER SEQUENCE")?;
        if !matches!(
            items.first().map(|o| &o.content),
            Some(BerObjectContent::Integer(_))
        ) {
            return Err("does not start with a version INTEGER");
        }
        match items.get(1).map(|o| &o.content) {
            Some(BerObjectContent::Sequence(alg_id)) => {
                let rsa = alg_id
                    .first()
                    .and_then(|o| o.as_oid().ok())
                    .is_some_and(|oid| *oid == OID_PKCS1_RSAENCRYPTION);
                match items.get(2).map(|o| &o.content) {
                    Some(BerObjectContent::OctetString(inner)) => {
                        Ok(Structure::Pkcs8 { rsa, inner })
                    }
                    _ => Err("is PKCS#8-like but has no private key OCTET STRING"),
                }
            }
            Some(BerObjectContent::Integer(_)) => Ok(Structure::Pkcs1),
            Some(BerObjectContent::OctetString(_)) => Ok(Structure::Sec1),
            _ => Err("is neither PKCS#1, PKCS#8 nor SEC1"),
        }
    }
}

/// The size in bits of the modulus of a PKCS#1 RSAPublicKey.
fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<u32> {
    let (_, seq) = parse_der_sequence(rsa_public_key).ok()?;
    let modulus = seq.as_sequence().ok()?.first()?;
    let BerObjectContent::Integer(bytes) = modulus.content else {
        return None;
    };
    // DER adds a leading zero byte to keep a positive INTEGER positive.
    let first = bytes.iter().position(|&b| b != 0)?;
    let significant = &bytes[first..];
    let len = u32::try_from(significant.len()).ok()?;
    Some(len * 8 - significant[0].leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// Runs openssl with `input` on stdin and returns stdout, failing the test on a non-zero exit.
    fn openssl(args: &[&str], input: &str) -> String {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl must be installed");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .expect("writing to openssl");
        let out = child.wait_with_output().expect("waiting for openssl");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("openssl prints text")
    }

    fn first_label(pem: &str) -> &str {
        pem.lines()
            .next()
            .and_then(|l| l.strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"))
            .expect("a PEM header line")
    }

    /// Every format of `key` must round-trip through rcgen and rustls-pki-types to the same
    /// public key, carry its format's label, and be accepted by openssl with that exact format.
    fn check_formats(key: &KeyPair, formats: &[KeyFormat], openssl_check: &str) {
        let want_pub = public_key_pem(key);
        for &format in formats {
            let pem = private_key_pem(key, format).expect("encoding");
            assert_eq!(first_label(&pem), format.pem_label(), "{format}");
            assert!(pem.ends_with(&format!("-----END {}-----\n", format.pem_label())));
            assert!(
                pem.lines().all(|l| l.len() <= 64),
                "{format}: lines of at most 64"
            );

            let reloaded = KeyPair::from_pem(&pem).expect("rcgen reads it back");
            assert_eq!(
                public_key_pem(&reloaded),
                want_pub,
                "{format}: same public key"
            );
            assert_eq!(
                KeySpec::of(&reloaded),
                KeySpec::of(key),
                "{format}: same spec"
            );

            use rustls_pki_types::pem::PemObject as _;
            let parsed =
                rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("pki-types");
            let variant_ok = matches!(
                (&parsed, format),
                (rustls_pki_types::PrivateKeyDer::Pkcs1(_), KeyFormat::Pkcs1)
                    | (rustls_pki_types::PrivateKeyDer::Pkcs8(_), KeyFormat::Pkcs8)
                    | (rustls_pki_types::PrivateKeyDer::Sec1(_), KeyFormat::Sec1)
            );
            assert!(variant_ok, "{format}: pki-types sees the same format");

            // openssl derives the public key from the private key on its own, and checks the
            // key's internal consistency.
            let pubout = openssl(&["pkey", "-pubout"], &pem);
            assert_eq!(
                pubout, want_pub,
                "{format}: openssl derives the same public key"
            );
            openssl(&[openssl_check, "-noout", "-check"], &pem);

            // The DER really has the structure the label claims (see `Structure`).
            let asn1 = openssl(&["asn1parse"], &pem);
            let fields: Vec<&str> = asn1
                .lines()
                .filter(|l| l.contains("d=1"))
                .map(|l| l.split(':').nth(2).unwrap_or_default().trim())
                .collect();
            match format {
                KeyFormat::Pkcs1 => assert!(fields.len() == 9, "{format}: {asn1}"),
                KeyFormat::Pkcs8 => assert!(fields[1].contains("SEQUENCE"), "{format}: {asn1}"),
                KeyFormat::Sec1 => {
                    assert!(fields[1].contains("OCTET STRING"), "{format}: {asn1}");
                    // Go and openssl need the named curve ([0]) and the public key ([1]).
                    let text = openssl(&["ec", "-noout", "-text"], &pem);
                    assert!(text.contains("ASN1 OID:"), "SEC1 carries the curve: {text}");
                    assert!(text.contains("pub:"), "SEC1 carries the public key: {text}");
                    assert!(asn1.contains("cont [ 0 ]") && asn1.contains("cont [ 1 ]"));
                }
            }
        }
        let spki_text = openssl(&["pkey", "-pubin", "-noout", "-text"], &want_pub);
        assert!(spki_text.contains("Public-Key:"), "{spki_text}");
    }

    #[test]
    fn rsa_key_round_trips_in_pkcs1_and_pkcs8() {
        let key = generate(KeySpec::Rsa(2048)).expect("generating RSA-2048");
        assert_eq!(KeySpec::of(&key), Some(KeySpec::Rsa(2048)));
        check_formats(&key, &[KeyFormat::Pkcs1, KeyFormat::Pkcs8], "rsa");

        // A key loaded from kubeadm's PKCS#1 file is kept as PKCS#1 DER by rcgen.
        let pkcs1 = private_key_pem(&key, KeyFormat::Pkcs1).expect("PKCS#1");
        let loaded = KeyPair::from_pem(&pkcs1).expect("loading PKCS#1");
        assert_eq!(
            private_key_pem(&loaded, KeyFormat::Pkcs1).expect("PKCS#1 again"),
            pkcs1,
            "PKCS#1 in, identical PKCS#1 out"
        );
        check_formats(&loaded, &[KeyFormat::Pkcs1, KeyFormat::Pkcs8], "rsa");

        let text = openssl(&["rsa", "-noout", "-text"], &pkcs1);
        assert!(text.contains("Private-Key: (2048 bit, 2 primes)"), "{text}");
        assert!(matches!(
            private_key_pem(&key, KeyFormat::Sec1),
            Err(EncodeError::IncompatibleFormat { .. })
        ));
    }

    #[test]
    fn ecdsa_keys_round_trip_in_sec1_and_pkcs8() {
        for spec in [KeySpec::EcdsaP256, KeySpec::EcdsaP384] {
            let key = generate(spec).expect("generating ECDSA");
            assert_eq!(KeySpec::of(&key), Some(spec));
            check_formats(&key, &[KeyFormat::Sec1, KeyFormat::Pkcs8], "ec");

            let sec1 = private_key_pem(&key, KeyFormat::Sec1).expect("SEC1");
            let loaded = KeyPair::from_pem(&sec1).expect("loading SEC1");
            check_formats(&loaded, &[KeyFormat::Sec1, KeyFormat::Pkcs8], "ec");
            assert!(matches!(
                private_key_pem(&key, KeyFormat::Pkcs1),
                Err(EncodeError::IncompatibleFormat { .. })
            ));
        }
    }

    #[test]
    fn reads_kubeadm_format_keys_and_writes_them_back_identically() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        // The set's own sa.key is not in the repository: this one was generated in kubeadm's
        // PKCS#1 layout, its sa.pub beside it (tests/fixtures/README.md).
        let dir = fixtures.join("resigned/kubeadm-zeta/pki");
        let pem = std::fs::read_to_string(dir.join("sa.key")).expect("fixture sa.key");
        let key = KeyPair::from_pem(&pem).expect("a PKCS#1 key");
        assert_eq!(KeySpec::of(&key), Some(KeySpec::Rsa(2048)));
        assert_eq!(
            &*private_key_pem(&key, KeyFormat::Pkcs1).expect("PKCS#1"),
            pem
        );
        let sa_pub = std::fs::read_to_string(dir.join("sa.pub")).expect("fixture sa.pub");
        let ours = public_key_pem(&key);
        assert_eq!(ours, sa_pub, "the public half of the key");
        // kubeadm's own sa.pub (copied as it wrote it): the same PKIX PEM layout as ours.
        let kubeadm = std::fs::read_to_string(fixtures.join("kubeadm-zeta/pki/sa.pub"))
            .expect("kubeadm's sa.pub");
        let layout = |pem: &str| -> Vec<String> {
            pem.split_inclusive('\n')
                .map(|l| match l.starts_with("-----") {
                    true => l.to_owned(),
                    false => format!("{} chars", l.len()),
                })
                .collect()
        };
        assert_eq!(
            layout(&ours),
            layout(&kubeadm),
            "PKIX public key as kubeadm writes it"
        );
    }

    #[test]
    fn key_spec_names_are_kubeadms() {
        for spec in [
            KeySpec::Rsa(2048),
            KeySpec::Rsa(3072),
            KeySpec::Rsa(4096),
            KeySpec::EcdsaP256,
            KeySpec::EcdsaP384,
        ] {
            assert_eq!(spec.to_string().parse::<KeySpec>().ok(), Some(spec));
        }
        assert_eq!(KeySpec::Rsa(2048).to_string(), "RSA-2048");
        assert_eq!(KeySpec::EcdsaP256.to_string(), "ECDSA-P256");
        assert!("RSA-1024".parse::<KeySpec>().is_err());
        assert!("ED25519".parse::<KeySpec>().is_err());
        assert!(matches!(
            generate(KeySpec::Rsa(1024)),
            Err(EncodeError::UnsupportedRsaSize { .. })
        ));
        for f in [KeyFormat::Pkcs1, KeyFormat::Pkcs8, KeyFormat::Sec1] {
            assert_eq!(KeyFormat::from_pem_label(f.pem_label()), Some(f));
        }
    }

    #[test]
    fn cert_pem_is_readable_by_openssl() {
        let key = generate(KeySpec::EcdsaP256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["example".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let pem = cert_pem(cert.der());
        assert_eq!(pem, cert.pem(), "same PEM as rcgen's own");
        let text = openssl(&["x509", "-noout", "-text"], &pem);
        assert!(text.contains("DNS:example"), "{text}");
    }
}
