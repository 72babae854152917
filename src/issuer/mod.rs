//! Issue: making renewed certificates. An [`Issuer`] signs a certificate whose attributes all come
//! from the certificate it replaces; `local` signs with a CA key held on the node, `selfsigned`
//! regenerates the kubelet's self-signed serving certificate, `cfssl` asks a remote cfssl server
//! (with a CSR from `csr`, its answer checked by `check`).

pub mod cfssl;
pub mod check;
pub mod csr;
pub mod local;
pub mod selfsigned;
pub mod tbs;

use std::time::Duration;

use time::OffsetDateTime;

use crate::pki::cert::Cert;

/// kubeadm backdates NotBefore by five minutes so that nodes with slightly slow clocks accept a
/// certificate the moment it is installed (`CertificateBackdate`).
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

/// The one clock-skew allowance between this node and whoever issued a certificate (a remote CA,
/// another node): a NotBefore up to this far after the time of issue is still taken as valid.
pub const CLOCK_SKEW: time::Duration = time::Duration::minutes(10);

/// The end of a lifetime of `validity` issued at `now`; refused when it falls past the last date
/// a certificate can hold.
pub(crate) fn valid_until(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<OffsetDateTime, IssueError> {
    time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .ok_or_else(|| {
            IssueError::Template(format!(
                "validity {} from {} is past the last date a certificate can hold",
                crate::duration::format(validity),
                crate::timefmt::rfc3339(now)
            ))
        })
}

/// What to renew.
pub struct IssueRequest<'a> {
    /// The certificate being replaced: the authority for every attribute.
    pub template: &'a Cert,
    /// The SubjectPublicKeyInfo DER of the key the new certificate certifies (new or reused).
    pub spki: &'a [u8],
    /// Requested lifetime.
    pub validity: Duration,
    /// The time of issue.
    pub now: OffsetDateTime,
}

/// A renewed certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Its DER.
    pub der: Vec<u8>,
    /// Things the operator should know (e.g. the lifetime was clamped to the CA's).
    pub notes: Vec<String>,
}

/// Why a certificate could not be issued. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The old certificate cannot serve as a template.
    #[error("template: {0}")]
    Template(String),
    /// The CA cannot be used.
    #[error("CA: {0}")]
    Ca(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The remote CA could not be asked, refused, or answered with a certificate that is refused.
    #[error("remote CA: {0}")]
    Remote(String),
}

/// Something that signs renewed certificates.
pub trait Issuer: Send + Sync {
    /// A short description for plans and logs (e.g. `local CA ca (/etc/kubernetes/pki/ca.crt)`).
    fn describe(&self) -> String;
    /// The CA certificate that will sign (what the new certificate must chain to).
    fn ca(&self) -> &Cert;
    /// Issues the renewed certificate.
    fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, IssueError>;
}
