//! One X.509 certificate, parsed into the facts certrotd reasons about.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    /// `DNS:name`
    Dns(String),
    /// `IP Address:addr`
    Ip(IpAddr),
    /// `URI:uri`
    Uri(String),
    /// `email:addr`
    Email(String),
    /// Anything else, kept as text for display only.
    Other(String),
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
            San::Uri(u) => write!(f, "URI:{u}"),
            San::Email(e) => write!(f, "email:{e}"),
            San::Other(o) => write!(f, "{o}"),
        }
    }
}

impl Serialize for San {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The algorithm and size of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// RSA with the modulus size in bits.
    Rsa(u32),
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on NIST P-521.
    EcdsaP521,
    /// Ed25519.
    Ed25519,
    /// Anything else: certrotd can report it but not renew it.
    Unknown,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyAlgorithm::EcdsaP256 => f.write_str("ECDSA-P256"),
            KeyAlgorithm::EcdsaP384 => f.write_str("ECDSA-P384"),
            KeyAlgorithm::EcdsaP521 => f.write_str("ECDSA-P521"),
            KeyAlgorithm::Ed25519 => f.write_str("Ed25519"),
            KeyAlgorithm::Unknown => f.write_str("unknown"),
        }
    }
}

impl Serialize for KeyAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A parsed certificate. Holds its DER so that it can be verified and re-issued.
#[derive(Clone)]
pub struct Cert {
    /// The certificate's DER encoding.
    pub der: Vec<u8>,
    /// The subject as text (RFC 4514 style).
    pub subject: String,
    /// The subject's DER, compared byte for byte when looking for an issuer.
    pub subject_der: Vec<u8>,
    /// The first common name of the subject.
    pub subject_cn: Option<String>,
    /// Every organization of the subject, in order.
    pub organizations: Vec<String>,
    /// The issuer as text.
    pub issuer: String,
    /// The issuer's DER.
    pub issuer_der: Vec<u8>,
    /// The serial number in lower-case hex.
    pub serial: String,
    /// Subject alternative names, in certificate order.
    pub sans: Vec<San>,
    /// Key usages, by their RFC 5280 names.
    pub key_usages: Vec<String>,
    /// Extended key usages (`serverAuth`, `clientAuth`, or the OID).
    pub ext_key_usages: Vec<String>,
    /// Whether basic constraints say CA:TRUE.
    pub is_ca: bool,
    /// Whether a basic constraints extension is present at all (old kubeadm leaves have none).
    pub has_basic_constraints: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The public key's algorithm and size.
    pub key_algorithm: KeyAlgorithm,
    /// The SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
    /// The raw public key (the SPKI bit string), compared with a private key's public half.
    pub public_key: Vec<u8>,
    /// Subject key identifier.
    pub subject_key_id: Option<Vec<u8>>,
    /// Authority key identifier.
    pub authority_key_id: Option<Vec<u8>>,
    /// The algorithm the issuer signed with.
    pub signature_alg: SignatureAlg,
    /// The signature value.
    pub signature: Vec<u8>,
    /// Where the TBSCertificate lies in `der` (what the signature covers).
    tbs_range: std::ops::Range<usize>,
}

/// The signature algorithms certrotd verifies itself (anything else goes through x509-parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlg {
    /// sha1WithRSAEncryption
    RsaSha1,
    /// sha256WithRSAEncryption
    RsaSha256,
    /// sha384WithRSAEncryption
    RsaSha384,
    /// sha512WithRSAEncryption
    RsaSha512,
    /// ecdsa-with-SHA256
    EcdsaSha256,
    /// ecdsa-with-SHA384
    EcdsaSha384,
    /// ecdsa-with-SHA512
    EcdsaSha512,
    /// Ed25519
    Ed25519,
    /// Anything else (RSA-PSS, …).
    Other,
}

fn signature_alg(x: &X509Certificate<'_>) -> SignatureAlg {
    use oid_registry as o;
    let oid = &x.signature_algorithm.algorithm;
    let table = [
        (o::OID_PKCS1_SHA1WITHRSA, SignatureAlg::RsaSha1),
        (o::OID_PKCS1_SHA256WITHRSA, SignatureAlg::RsaSha256),
        (o::OID_PKCS1_SHA384WITHRSA, SignatureAlg::RsaSha384),
        (o::OID_PKCS1_SHA512WITHRSA, SignatureAlg::RsaSha512),
        (o::OID_SIG_ECDSA_WITH_SHA256, SignatureAlg::EcdsaSha256),
        (o::OID_SIG_ECDSA_WITH_SHA384, SignatureAlg::EcdsaSha384),
        (o::OID_SIG_ECDSA_WITH_SHA512, SignatureAlg::EcdsaSha512),
        (o::OID_SIG_ED25519, SignatureAlg::Ed25519),
    ];
    table
        .iter()
        .find(|(o, _)| o == oid)
        .map(|(_, a)| *a)
        .unwrap_or(SignatureAlg::Other)
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject)
            .field("issuer", &self.issuer)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Why DER could not be read as a certificate.
#[derive(Debug, thiserror::Error)]
#[error("not a valid X.509 certificate: {0}")]
pub struct CertError(String);

impl Cert {
    /// Parses one DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Cert, CertError> {
        let (rest, x) = X509Certificate::from_der(der).map_err(|e| CertError(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError(format!(
                "{} bytes of trailing data after the certificate",
                rest.len()
            )));
        }
        let used = der.len() - rest.len();
        let validity = x.validity();
        let ts =
            |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| CertError(e.to_string()));
        let (is_ca, has_bc) = match x.basic_constraints() {
            Ok(Some(bc)) => (bc.value.ca, true),
            Ok(None) => (false, false),
            Err(e) => return Err(CertError(format!("basic constraints: {e}"))),
        };
        Ok(Cert {
            der: der[..used].to_vec(),
            subject: x.subject().to_string(),
            subject_der: x.subject().as_raw().to_vec(),
            subject_cn: x
                .subject()
                .iter_common_name()
                .next()
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned),
            organizations: x
                .subject()
                .iter_organization()
                .filter_map(|a| a.as_str().ok().map(str::to_owned))
                .collect(),
            issuer: x.issuer().to_string(),
            issuer_der: x.issuer().as_raw().to_vec(),
            serial: hex::encode(x.raw_serial()),
            sans: sans(&x)?,
            key_usages: key_usages(&x)?,
            ext_key_usages: ext_key_usages(&x)?,
            is_ca,
            has_basic_constraints: has_bc,
            not_before: ts(validity.not_before.timestamp())?,
            not_after: ts(validity.not_after.timestamp())?,
            key_algorithm: key_algorithm(x.public_key()),
            spki_der: x.public_key().raw.to_vec(),
            public_key: x.public_key().subject_public_key.data.to_vec(),
            subject_key_id: subject_key_id(&x),
            authority_key_id: authority_key_id(&x),
            signature_alg: signature_alg(&x),
            signature: x.signature_value.data.to_vec(),
            tbs_range: {
                let raw = x.tbs_certificate.as_ref();
                let start = raw.as_ptr() as usize - der.as_ptr() as usize;
                start..start + raw.len()
            },
        })
    }

    /// The TBSCertificate bytes (what the signature covers).
    pub fn tbs(&self) -> &[u8] {
        &self.der[self.tbs_range.clone()]
    }

    /// Whether the certificate names itself as issuer and its own key verifies it.
    pub fn is_self_signed(&self) -> bool {
        self.is_signed_by(self)
    }

    /// Seconds left until NotAfter (negative once expired).
    pub fn residual_seconds(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_seconds()
    }
}

fn sans(x: &X509Certificate<'_>) -> Result<Vec<San>, CertError> {
    let ext = x
        .subject_alternative_name()
        .map_err(|e| CertError(format!("subject alternative names: {e}")))?;
    let Some(ext) = ext else {
        return Ok(Vec::new());
    };
    Ok(ext
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => San::Dns((*d).to_owned()),
            GeneralName::URI(u) => San::Uri((*u).to_owned()),
            GeneralName::RFC822Name(e) => San::Email((*e).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                _ => San::Other(format!("IP:<{} bytes>", b.len())),
            },
            other => San::Other(format!("{other}")),
        })
        .collect())
}

fn key_usages(x: &X509Certificate<'_>) -> Result<Vec<String>, CertError> {
    let ku = x
        .key_usage()
        .map_err(|e| CertError(format!("key usage: {e}")))?;
    let Some(ku) = ku else {
        return Ok(Vec::new());
    };
    let k = ku.value;
    let all = [
        (k.digital_signature(), "digitalSignature"),
        (k.non_repudiation(), "nonRepudiation"),
        (k.key_encipherment(), "keyEncipherment"),
        (k.data_encipherment(), "dataEncipherment"),
        (k.key_agreement(), "keyAgreement"),
        (k.key_cert_sign(), "keyCertSign"),
        (k.crl_sign(), "cRLSign"),
        (k.encipher_only(), "encipherOnly"),
        (k.decipher_only(), "decipherOnly"),
    ];
    Ok(all
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| (*n).to_owned())
        .collect())
}

fn ext_key_usages(x: &X509Certificate<'_>) -> Result<Vec<String>, CertError> {
    let eku = x
        .extended_key_usage()
        .map_err(|e| CertError(format!("extended key usage: {e}")))?;
    let Some(eku) = eku else {
        return Ok(Vec::new());
    };
    let e = eku.value;
    let mut out: Vec<String> = [
        (e.any, "any"),
        (e.server_auth, "serverAuth"),
        (e.client_auth, "clientAuth"),
        (e.code_signing, "codeSigning"),
        (e.email_protection, "emailProtection"),
        (e.time_stamping, "timeStamping"),
        (e.ocsp_signing, "OCSPSigning"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| (*n).to_owned())
    .collect();
    out.extend(e.other.iter().map(|o| o.to_id_string()));
    Ok(out)
}

/// The algorithm of a DER SubjectPublicKeyInfo (`sa.pub`, a key pair's public half).
pub fn spki_algorithm(spki_der: &[u8]) -> KeyAlgorithm {
    SubjectPublicKeyInfo::from_der(spki_der)
        .map(|(_, spki)| key_algorithm(&spki))
        .unwrap_or(KeyAlgorithm::Unknown)
}

/// The public key bits of a DER SubjectPublicKeyInfo (what a private key's public half is compared
/// with).
pub fn spki_public_bits(spki_der: &[u8]) -> Option<Vec<u8>> {
    SubjectPublicKeyInfo::from_der(spki_der)
        .ok()
        .map(|(_, spki)| spki.subject_public_key.data.to_vec())
}

fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> KeyAlgorithm {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                KeyAlgorithm::Rsa(u32::try_from(rsa.key_size()).unwrap_or(0))
            }
            _ => KeyAlgorithm::Unknown,
        };
    }
    if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => KeyAlgorithm::EcdsaP256,
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => KeyAlgorithm::EcdsaP384,
            Some(c) if c == oid_registry::OID_NIST_EC_P521 => KeyAlgorithm::EcdsaP521,
            _ => KeyAlgorithm::Unknown,
        };
    }
    if *alg == oid_registry::OID_SIG_ED25519 {
        return KeyAlgorithm::Ed25519;
    }
    KeyAlgorithm::Unknown
}

fn subject_key_id(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}
