//! The proof over TLS of an etcd-ca step: a client certificate made in memory from the new CA
//! key (and from the old one while the node still has it) is presented to the node's own etcd
//! member, which must accept the new CA's client at every level from TrustBoth on, the old CA's
//! while it still trusts it, and refuse the old CA's once the old CA is distrusted. The disk
//! proof ([`super::node::prove`]) says what the files hold; this says what the restarted member
//! actually does with them.
//!
//! The probe's key and certificate live only in memory, for one connection; its certificate is
//! modelled on the node's `apiserver-etcd-client` (a client certificate etcd already accepts)
//! and lives an hour.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use rcgen::PublicKeyData as _;
use time::OffsetDateTime;

use super::node::backup_id;
use super::phase::Level;
use super::record::CaRecord;
use super::track::Track;
use crate::issuer::local::LocalCa;
use crate::issuer::{IssueRequest, Issuer as _};
use crate::pki::cert::Cert;
use crate::pki::encode::{self, KeySpec};
use crate::pki::key::PrivateKey;
use crate::pki::pem;
use crate::store::Backup;

/// How long the member may take to answer the probe.
const ANSWER: Duration = Duration::from_secs(3);
/// The client certificate every probe is modelled on.
const TEMPLATE: &str = "apiserver-etcd-client.crt";

/// Which CA a probe's client certificate comes from, and what the member must do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The CA: `true` the new one, `false` the old one.
    pub new_ca: bool,
    /// Whether the member must accept it.
    pub accepted: bool,
}

/// What the member must do at `level` with each CA's probe: the new CA's accepted from
/// TrustBoth on; the old CA's accepted until DistrustOld, refused then.
pub fn expectations(level: Level) -> Vec<Expect> {
    match level {
        Level::Original => Vec::new(),
        Level::TrustBoth | Level::IssueNew => vec![
            Expect {
                new_ca: true,
                accepted: true,
            },
            Expect {
                new_ca: false,
                accepted: true,
            },
        ],
        Level::DistrustOld => vec![
            Expect {
                new_ca: true,
                accepted: true,
            },
            Expect {
                new_ca: false,
                accepted: false,
            },
        ],
    }
}

fn pem_cert(text: &str, what: &str) -> Result<Cert, String> {
    let blocks = pem::blocks(Path::new(what), text.as_bytes()).map_err(|e| e.to_string())?;
    let first = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| format!("{what}: no certificate"))?;
    Cert::from_der(&first.der).map_err(|e| format!("{what}: {e}"))
}

fn pem_key(data: &[u8], what: &str) -> Result<PrivateKey, String> {
    let blocks = pem::blocks(Path::new(what), data).map_err(|e| e.to_string())?;
    PrivateKey::from_blocks(&blocks).map_err(|e| format!("{what}: {e}"))
}

/// The key of `ca` as this node has it: the track's key file while it matches; the new key
/// unwrapped from the record while the file holds the old one; the old key from the backup of
/// the step that replaced it (the IssueNew step keeps it there).
pub fn ca_key(
    track: Track,
    pki: &Path,
    backups: &Path,
    record: &CaRecord,
    cluster: &str,
    ca: &Cert,
) -> Result<PrivateKey, String> {
    let key_path = pki.join(track.ca_key());
    let data = pem::read_capped(&key_path).map_err(|e| e.to_string())?;
    let key = pem_key(&data, &key_path.display().to_string())?;
    if key.matches(ca) {
        return Ok(key);
    }
    if super::fingerprint(&ca.der) == record.new_fp {
        // Before IssueNew the new key is only in the record, wrapped for the old key's holders.
        let ctx = super::coordinate::wrap_context(cluster, record);
        let pem_text = super::wrap::unwrap(&record.wrapped_key, &key, &ctx)
            .map_err(|e| format!("unwrapping the new key: {e}"))?;
        return pem_key(pem_text.as_bytes(), "the new CA key (unwrapped)");
    }
    let id = backup_id(&record.rotation_id, Level::IssueNew);
    let backup = Backup::open(backups, &id).map_err(|e| format!("backup {id}: {e}"))?;
    let entry = backup
        .entry(&key_path)
        .ok_or_else(|| format!("backup {id} holds no {}", key_path.display()))?;
    let crate::store::SavedState::File { stored, .. } = &entry.state else {
        return Err(format!("backup {id}: {} was no file", key_path.display()));
    };
    let data = super::read_file(&backup.dir().join(stored))
        .map_err(|e| format!("backup {id}: {}: {e}", key_path.display()))?;
    let key = pem_key(&data, &format!("backup {id}"))?;
    if key.matches(ca) {
        Ok(key)
    } else {
        Err(format!("backup {id}: the key is not the CA's"))
    }
}

/// A client identity issued by `ca` in memory, modelled on `template`: (certificate PEM, key
/// PEM). The key never leaves this process.
fn identity(
    ca: &Cert,
    ca_key: PrivateKey,
    template: &Cert,
    now: OffsetDateTime,
) -> Result<Identity, String> {
    // P-256 whatever the CA's own key: made in a millisecond, and every etcd accepts it.
    let spec = KeySpec::EcdsaP256;
    let pair = encode::generate(spec).map_err(|e| e.to_string())?;
    let issuer = LocalCa::new("probe", ca.clone(), ca_key).map_err(|e| e.to_string())?;
    let issued = issuer
        .issue(&IssueRequest {
            template,
            spki: &pair.subject_public_key_info(),
            validity: Duration::from_secs(3600),
            now,
        })
        .map_err(|e| e.to_string())?;
    let key_pem =
        encode::private_key_pem(&pair, spec.native_format()).map_err(|e| e.to_string())?;
    Ok(Identity::from_pem(
        encode::cert_pem(&issued.der),
        key_pem.as_bytes(),
    ))
}

/// Whether the member at `url` serves a client presenting `identity`, trusting `server_ca_pem`
/// for the member's own certificate: refused when the handshake or the first request fails.
async fn served(url: &str, server_ca_pem: &str, identity: Identity) -> bool {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(server_ca_pem))
        .identity(identity);
    let options = ConnectOptions::new()
        .with_connect_timeout(ANSWER)
        .with_timeout(ANSWER)
        .with_tls(tls);
    let Ok(mut c) = Client::connect([url], Some(options)).await else {
        return false;
    };
    // TLS 1.3 sends the server's verdict on the client certificate after the handshake: only a
    // request answered proves the certificate was accepted.
    matches!(tokio::time::timeout(ANSWER, c.status()).await, Ok(Ok(_)))
}

/// Probes the member at `url` with a client of each CA, as `level` expects; returns one line
/// per probe, or why the member did not do what the level asks.
pub async fn member(
    url: &str,
    cluster: &str,
    pki: &Path,
    backups: &Path,
    record: &CaRecord,
    level: Level,
    now: OffsetDateTime,
) -> Result<Vec<String>, String> {
    let track = Track::EtcdCa;
    let bundle_path = pki.join(track.ca_cert());
    let bundle = super::read_text(&bundle_path)?;
    let template_text = super::read_text(&pki.join(TEMPLATE))?;
    let template = pem_cert(&template_text, TEMPLATE)?;
    let mut seen = Vec::new();
    for e in expectations(level) {
        let (which, pem_text) = if e.new_ca {
            ("new", &record.new_ca_pem)
        } else {
            ("old", &record.old_ca_pem)
        };
        let ca = pem_cert(pem_text, &format!("the {which} CA"))?;
        let key = ca_key(track, pki, backups, record, cluster, &ca)
            .map_err(|err| format!("the {which} CA's key for the probe: {err}"))?;
        let id = identity(&ca, key, &template, now)?;
        let ok = served(url, &bundle, id).await;
        let verdict = if ok { "accepted" } else { "refused" };
        if ok != e.accepted {
            return Err(format!(
                "{url} {verdict} a client of the {which} CA at {level}, which must be {}",
                if e.accepted { "accepted" } else { "refused" }
            ));
        }
        seen.push(format!("{which}-CA client {verdict}"));
    }
    Ok(seen)
}
