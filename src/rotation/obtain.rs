//! Obtain: the certificates a remote CA signs, fetched before the node takes the lease.
//!
//! A remote CA answers in its own time (cfssl: up to three tries of its timeout per certificate),
//! and a cluster's slot is the scarcest thing it has: holding it while the network talks would
//! stall every other node. So the daemon obtains the remote certificates (with their new keys,
//! kept in memory only) right after planning, and the rotation then installs them under the
//! lease. Each answer is judged against the time it was issued, not the time the lease was
//! finally taken: cfssl backdates NotBefore by five minutes, and a node that waited longer than
//! that in the queue would otherwise refuse a perfectly good certificate and queue again.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use super::RotationError;
use super::plan::{IssuerPlan, Item, KeyPlan, Plan, read_key};
use super::signing::RemoteCa;
use crate::issuer::Issued;
use crate::issuer::cfssl::{CfsslClient, SignRequest};
use crate::pki::cert::Cert;
use crate::pki::encode;
use crate::pki::secret::SecretKeyPair;

/// One certificate a remote CA signed, with the new key it certifies (none when the old key is
/// reused).
pub struct ObtainedCert {
    /// The certificate's DER.
    pub der: Vec<u8>,
    /// Its new key.
    pub key: Option<SecretKeyPair>,
    /// What the CA had to say.
    pub notes: Vec<String>,
}

/// The remote certificates of a plan, by item name.
pub struct Obtained {
    /// When they were issued (asked for): what each is judged against.
    pub issued_at: OffsetDateTime,
    certs: BTreeMap<String, ObtainedCert>,
}

impl fmt::Debug for Obtained {
    // Holds private keys: only the names are printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Obtained")
            .field("issued_at", &self.issued_at)
            .field("certs", &self.certs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Obtained {
    /// The certificate obtained for item `name`.
    pub fn get(&self, name: &str) -> Option<&ObtainedCert> {
        self.certs.get(name)
    }
}

/// Whether any item of `plan` is signed by a remote CA.
pub fn needed(plan: &Plan) -> bool {
    plan.items
        .iter()
        .any(|i| matches!(i.issuer, IssuerPlan::Remote { .. }))
}

/// Asks the remote CA for every remote item of `plan` at `now`. Blocking (HTTP); writes nothing.
pub fn obtain(plan: &Plan, now: OffsetDateTime) -> Result<Obtained, RotationError> {
    let mut certs = BTreeMap::new();
    for item in &plan.items {
        let IssuerPlan::Remote {
            cert,
            remote,
            profile,
            ..
        } = &item.issuer
        else {
            continue;
        };
        let fail = |reason: String| RotationError::Renew {
            name: item.name().to_owned(),
            reason,
        };
        let new_key = match item.key {
            KeyPlan::New { spec, .. } => {
                Some(encode::generate(spec).map_err(|e| fail(e.to_string()))?)
            }
            KeyPlan::Reuse => None,
        };
        let issued =
            ask_remote(item, cert, remote, profile, new_key.as_ref(), now).map_err(fail)?;
        certs.insert(
            item.name().to_owned(),
            ObtainedCert {
                der: issued.der,
                key: new_key,
                notes: issued.notes,
            },
        );
    }
    Ok(Obtained {
        issued_at: now,
        certs,
    })
}

/// Asks `remote` to renew `item` at `now`, signed by the CA `cert` under `profile`. The CSR is
/// signed by the key the certificate will certify: `new_key`, or the item's old key when it is
/// reused. The error is the reason, for [`RotationError::Renew`].
pub(crate) fn ask_remote(
    item: &Item,
    cert: &Cert,
    remote: &RemoteCa,
    profile: &str,
    new_key: Option<&SecretKeyPair>,
    now: OffsetDateTime,
) -> Result<Issued, String> {
    let old_key;
    let key = match new_key {
        Some(k) => k,
        None => {
            old_key = read_key(&item.key_source)?;
            &old_key.pair
        }
    };
    let client = CfsslClient::open(remote.server()).map_err(|e| e.to_string())?;
    client
        .renew(&SignRequest {
            template: &item.old,
            key,
            ca: cert,
            profile,
            now,
        })
        .map_err(|e| e.to_string())
}
