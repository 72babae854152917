//! Who signs a renewed certificate: the CA on this node that signed it (while that CA is still
//! valid), a remote CA (cfssl) as `[issuer]` says, or a throwaway self-signed CA for the kubelet's
//! serving certificate; or, in kubeadm's words, why none can.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{Decision, PlanOptions, spec_of};
use crate::inventory::{Entry, Inventory, KeyState, Origin};
use crate::pki::cert::Cert;
use crate::pki::encode::KeySpec;
use crate::pki::layout;
use crate::root::Root;
use crate::rotation::signing::{CaChoice, RemoteCa};

/// Who signs a renewed certificate.
#[derive(Debug, Clone)]
pub enum IssuerPlan {
    /// A CA on this node, by inventory name, with its certificate and key file.
    Local {
        /// The CA's inventory name.
        ca: String,
        /// The CA certificate.
        cert: Box<Cert>,
        /// Its key file (real path).
        key_path: PathBuf,
    },
    /// A remote CA (cfssl), for a CA whose key is not on this node (or configured so).
    Remote {
        /// The CA's inventory name.
        ca: String,
        /// The CA certificate the old certificate chained to: the new one must chain to it too.
        cert: Box<Cert>,
        /// The server and credentials (real paths).
        remote: RemoteCa,
        /// The cfssl profile for this certificate.
        profile: String,
    },
    /// A fresh self-signed CA made for it alone, as client-go does for the kubelet's serving
    /// certificate.
    SelfSigned {
        /// The throwaway CA that signed the old certificate (the template for the new one).
        ca: Box<Cert>,
        /// The new CA key's algorithm.
        ca_spec: KeySpec,
    },
}

impl IssuerPlan {
    /// How the plan names it.
    pub fn describe(&self) -> String {
        match self {
            IssuerPlan::Local { ca, .. } => ca.clone(),
            IssuerPlan::Remote {
                ca,
                remote,
                profile,
                ..
            } => format!("{ca} via cfssl {} (profile {profile:?})", remote.url),
            IssuerPlan::SelfSigned { .. } => "self-signed (regenerated)".to_owned(),
        }
    }
}

/// Decides who signs the new certificate, in kubeadm's terms when it cannot be renewed here.
#[allow(clippy::too_many_arguments)]
pub(super) fn issuer(
    inv: &Inventory,
    e: &Entry,
    old: &Cert,
    name: &str,
    explicit: bool,
    opts: &PlanOptions,
    root: &Root,
    now: OffsetDateTime,
    notes: &mut Vec<String>,
) -> Result<IssuerPlan, Decision> {
    // kubeadm's own words for a certificate whose CA key is not on the node.
    let external = |ca: &str| {
        let reason = format!(
            "Detected external {ca}, {name} can't be renewed (the CA's private key is not on this node)"
        );
        if explicit {
            Decision::Refuse(reason)
        } else {
            Decision::Skip(reason)
        }
    };
    let signer = e.signer.as_deref().and_then(|s| inv.get(s));
    if let Some(ca) = signer {
        if ca.name == e.name {
            return Err(Decision::Refuse(
                "it is self-signed, not issued by a CA on this node".into(),
            ));
        }
        if let Some(plan) = self_signed_serving(e, ca) {
            return Ok(plan);
        }
        let has_key = ca.key == KeyState::Match;
        return match opts.issuer.for_ca(&ca.name) {
            CaChoice::Remote(r) => remote(ca, r, name, root, now),
            CaChoice::LocalElse(Some(r)) if !has_key => remote(ca, r, name, root, now),
            _ if !has_key => Err(external(&ca.name)),
            _ => local(ca, now),
        };
    }
    // No CA on the node verifies it: either none has its issuer's name (external), or one does
    // but the signature says another CA of that name signed it.
    let same_name: Vec<&Entry> = inv
        .entries
        .iter()
        .filter(|c| c.is_ca() && c.cert.as_ref().is_some_and(|c| c.subject == old.issuer))
        .collect();
    let usable = same_name.iter().find(|c| c.key == KeyState::Match);
    match (same_name.is_empty(), usable) {
        (true, _) if opts.issuer.remote_by_default() => {
            let reason = format!(
                "its CA \"{}\" is not on this node, so a remote CA's answer could not be checked \
                 (put the CA certificate on the node)",
                old.issuer
            );
            Err(if explicit {
                Decision::Refuse(reason)
            } else {
                Decision::Skip(reason)
            })
        }
        (true, _) => Err(external(&format!("CA \"{}\"", old.issuer))),
        (false, Some(ca)) if opts.force => {
            notes.push(format!(
                "forced: its chain does not verify; re-issued from {}, whose name matches its issuer",
                ca.name
            ));
            local(ca, now)
        }
        (false, Some(ca)) => Err(Decision::Refuse(format!(
            "its chain does not verify: {} (--force re-issues it from {}, whose name matches its issuer)",
            e.problems.join("; "),
            ca.name
        ))),
        (false, None) => Err(external(&same_name[0].name)),
    }
}

/// A CA that has expired signs nothing that anyone would accept: it must be rotated first.
fn still_valid(ca: &Entry, cert: &Cert, now: OffsetDateTime) -> Result<(), Decision> {
    if cert.not_after <= now {
        return Err(Decision::Refuse(format!(
            "its CA {} expired at {}; rotate the CA first",
            ca.name,
            crate::timefmt::rfc3339(cert.not_after)
        )));
    }
    Ok(())
}

fn local(ca: &Entry, now: OffsetDateTime) -> Result<IssuerPlan, Decision> {
    let (Some(cert), Some(key_path)) = (&ca.cert, &ca.key_path) else {
        return Err(Decision::Refuse(format!(
            "the CA {} cannot be read",
            ca.name
        )));
    };
    still_valid(ca, cert, now)?;
    Ok(IssuerPlan::Local {
        ca: ca.name.clone(),
        cert: Box::new(cert.clone()),
        key_path: key_path.clone(),
    })
}

/// Signing through a remote CA. Its answer is checked against the CA certificate on the node, so
/// that certificate must be readable and current; the auth key must be readable now, so that a
/// plan does not promise what the build cannot do.
fn remote(
    ca: &Entry,
    mut remote: RemoteCa,
    name: &str,
    root: &Root,
    now: OffsetDateTime,
) -> Result<IssuerPlan, Decision> {
    let Some(cert) = &ca.cert else {
        return Err(Decision::Refuse(format!(
            "the CA {} cannot be read, so a remote CA's answer cannot be checked",
            ca.name
        )));
    };
    still_valid(ca, cert, now)?;
    remote.auth_key_file = root.join(&remote.auth_key_file);
    remote.ca_bundle = remote.ca_bundle.map(|b| root.join(b));
    crate::issuer::cfssl::read_auth_key(&remote.auth_key_file).map_err(|e| {
        Decision::Refuse(format!(
            "issuer for CA {} via cfssl {}: {e}",
            ca.name, remote.url
        ))
    })?;
    Ok(IssuerPlan::Remote {
        ca: ca.name.clone(),
        cert: Box::new(cert.clone()),
        profile: remote.profile_for(name).to_owned(),
        remote,
    })
}

/// The kubelet's serving certificate signed by the throwaway CA bundled after it, whose key
/// client-go discarded: regenerated rather than renewed.
fn self_signed_serving(e: &Entry, ca: &Entry) -> Option<IssuerPlan> {
    let serving = Path::new(layout::KUBELET_PKI).join("kubelet.crt");
    let bundled_here = matches!(&ca.origin, Origin::Bundled { holder } if *holder == e.name);
    if e.node_path != serving || !bundled_here || ca.key == KeyState::Match {
        return None;
    }
    let cert = ca.cert.as_ref()?;
    if !cert.is_self_signed() {
        return None;
    }
    Some(IssuerPlan::SelfSigned {
        ca_spec: spec_of(cert.key_algorithm)?,
        ca: Box::new(cert.clone()),
    })
}
