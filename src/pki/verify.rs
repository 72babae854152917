//! Signature checks for finding a certificate's signer.
//!
//! An inventory verifies every certificate against its candidate CAs. Letting aws-lc parse the CA's
//! public key for every check repeats the same work (for RSA: building the Montgomery context),
//! which dominated a 10,000-certificate inventory; here each CA key is parsed once per signature
//! algorithm and reused. Algorithms without a cached path fall back to x509-parser's check.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use super::cert::{Cert, KeyAlgorithm, SignatureAlg};

/// Parsed CA public keys, shared by the threads of one inventory.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<(usize, SignatureAlg), Option<ParsedPublicKey>>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCache")
    }
}

impl KeyCache {
    /// Whether `issuer` (known to the cache as `issuer_id`) signed `cert`.
    pub fn verify(&self, cert: &Cert, issuer_id: usize, issuer: &Cert) -> bool {
        if !cert.names_as_issuer(issuer) {
            return false;
        }
        let Some(alg) = algorithm(cert.signature_alg, issuer.key_algorithm) else {
            return cert.is_signed_by(issuer);
        };
        let key = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            keys.entry((issuer_id, cert.signature_alg))
                .or_insert_with(|| ParsedPublicKey::new(alg, &issuer.public_key).ok())
                .clone()
        };
        match key {
            Some(k) => k.verify_sig(cert.tbs(), &cert.signature).is_ok(),
            None => false,
        }
    }
}

/// The aws-lc algorithm for a signature made by a key of the issuer's kind. RSA sizes below 2048
/// are accepted: this finds who signed a certificate, it does not judge the key's strength.
fn algorithm(sig: SignatureAlg, key: KeyAlgorithm) -> Option<&'static dyn VerificationAlgorithm> {
    use KeyAlgorithm as K;
    use SignatureAlg as S;
    Some(match (sig, key) {
        (S::RsaSha256, K::Rsa(_)) => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        (S::RsaSha384, K::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA384,
        (S::RsaSha512, K::Rsa(_)) => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        (S::RsaSha1, K::Rsa(_)) => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (S::EcdsaSha256, K::EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
        (S::EcdsaSha384, K::EcdsaP256) => &signature::ECDSA_P256_SHA384_ASN1,
        (S::EcdsaSha256, K::EcdsaP384) => &signature::ECDSA_P384_SHA256_ASN1,
        (S::EcdsaSha384, K::EcdsaP384) => &signature::ECDSA_P384_SHA384_ASN1,
        (S::EcdsaSha512, K::EcdsaP521) => &signature::ECDSA_P521_SHA512_ASN1,
        (S::Ed25519, K::Ed25519) => &signature::ED25519,
        _ => return None,
    })
}

impl Cert {
    /// Whether this certificate's issuer Name is, byte for byte, `issuer`'s subject Name.
    ///
    /// DER, not text: Go (every Kubernetes component) builds chains by the raw issuer bytes, so a
    /// CA whose subject prints the same but is encoded otherwise (a PrintableString CN where the
    /// certificate has a UTF8String) is not its issuer to the apiserver or the kubelet, and must
    /// not be to certrotd either.
    pub fn names_as_issuer(&self, issuer: &Cert) -> bool {
        self.issuer_der == issuer.subject_der
    }

    /// Whether `issuer` signed this certificate: the issuer Name is the issuer's subject in DER
    /// ([`Cert::names_as_issuer`]) and the signature verifies with the issuer's key. Names alone
    /// are not enough: kubeadm v1.8 gave front-proxy-ca and ca one subject.
    pub fn is_signed_by(&self, issuer: &Cert) -> bool {
        if !self.names_as_issuer(issuer) {
            return false;
        }
        let Ok((_, me)) = X509Certificate::from_der(&self.der) else {
            return false;
        };
        let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(&issuer.spki_der) else {
            return false;
        };
        me.verify_signature(Some(&spki)).is_ok()
    }
}
