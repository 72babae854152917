//! Signing with a CA whose certificate and key are on the node (kubeadm's CA, etcd's CA, the
//! front-proxy CA, RKE2's and k3s's CAs).

use rand::RngExt as _;

use super::tbs::{self, Changes};
use super::{BACKDATE, IssueError, IssueRequest, Issued, Issuer};
use crate::pki::cert::Cert;
use crate::pki::key::PrivateKey;

/// A CA held on this node.
pub struct LocalCa {
    name: String,
    cert: Cert,
    key: PrivateKey,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalCa({})", self.name)
    }
}

impl LocalCa {
    /// A CA named `name` (as the inventory calls it). Refuses a certificate that is not a CA or a
    /// key that does not belong to it.
    pub fn new(name: &str, cert: Cert, key: PrivateKey) -> Result<Self, IssueError> {
        if !cert.is_ca {
            return Err(IssueError::Ca(format!(
                "{name} is not a CA certificate (basic constraints CA:FALSE or absent)"
            )));
        }
        if !key.matches(&cert) {
            return Err(IssueError::Ca(format!(
                "{name}: the CA key does not belong to the CA certificate"
            )));
        }
        Ok(LocalCa {
            name: name.to_owned(),
            cert,
            key,
        })
    }
}

impl Issuer for LocalCa {
    fn describe(&self) -> String {
        format!("local CA {}", self.name)
    }

    fn ca(&self) -> &Cert {
        &self.cert
    }

    fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, IssueError> {
        let mut notes = Vec::new();
        let not_before = req.now - BACKDATE;
        let wanted = super::valid_until(req.now, req.validity)?;
        let not_after = if wanted > self.cert.not_after {
            notes.push(format!(
                "lifetime clamped to the CA {}'s NotAfter {} (a certificate cannot outlive its CA)",
                self.name,
                crate::timefmt::rfc3339(self.cert.not_after)
            ));
            self.cert.not_after
        } else {
            wanted
        };
        if not_after <= req.now {
            return Err(IssueError::Ca(format!(
                "the CA {} has expired ({}); renew the CA first",
                self.name,
                crate::timefmt::rfc3339(self.cert.not_after)
            )));
        }
        let changes = Changes {
            serial: random_serial(),
            not_before,
            not_after,
            spki: req.spki,
            issuer_subject: &self.cert.subject_der,
            issuer_key_id: self.cert.subject_key_id.as_deref(),
        };
        let der = tbs::renew(&req.template.der, &changes, &self.key.pair)?;
        Ok(Issued { der, notes })
    }
}

/// kubeadm's serials: random in [1, 2^63 - 1].
pub fn random_serial() -> u64 {
    let mut rng = rand::rng();
    loop {
        let s: u64 = rng.random::<u64>() >> 1;
        if s != 0 {
            return s;
        }
    }
}
