//! Discover: scan a node root and account for every certificate on it, with the CA that signed each
//! one found by verifying signatures (never by name alone), whether its key is present and matches,
//! and which components consume it. A file that cannot be read becomes a named problem on its entry;
//! nothing here ever writes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Settings;
use crate::pki::cert::Cert;
use crate::pki::key::{PrivateKey, is_key_label, public_half};
use crate::pki::kubeconfig::{self, Source as KcSource};
use crate::pki::layout::{self, Component, FileShape, Known, Layout, Tree};
use crate::pki::pem::{self, Block};
use crate::pki::verify::KeyCache;
use crate::root::Root;

mod jobs;
mod load;
pub(crate) mod parallel;
mod read;

use jobs::plan_jobs;
use load::{load, load_key_pair};
use read::NodeReader;

/// Where an entry's certificate was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Origin {
    /// Its own certificate file (key beside it, in `key_path`).
    File,
    /// A file holding certificate and key together.
    Combined,
    /// A further certificate of a bundle (leaf followed by its CA) held by another entry.
    Bundled {
        /// The entry whose file holds the bundle.
        holder: String,
    },
    /// Embedded in a kubeconfig as `client-certificate-data`.
    KubeconfigEmbedded {
        /// The kubeconfig's path.
        kubeconfig: PathBuf,
        /// The user entry.
        user: String,
    },
    /// Referenced by a kubeconfig's `client-certificate` path.
    KubeconfigReference {
        /// The kubeconfig's path.
        kubeconfig: PathBuf,
        /// The user entry.
        user: String,
    },
    /// A kubeconfig cluster's `certificate-authority-data`.
    KubeconfigCa {
        /// The kubeconfig's path.
        kubeconfig: PathBuf,
        /// The cluster entry.
        cluster: String,
    },
}

/// Whether an entry's private key is there and belongs to its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// No key is expected or none was found where none is required.
    Absent,
    /// The key is present and matches the certificate.
    Match,
    /// The key is present but belongs to another certificate.
    Mismatch,
    /// The key file is missing, unreadable or unparseable (see the entry's problems).
    Broken,
}

impl KeyState {
    /// `key_match` as reported: true, false, or null when there is no usable key.
    pub fn as_match(self) -> Option<bool> {
        match self {
            KeyState::Match => Some(true),
            KeyState::Mismatch => Some(false),
            KeyState::Absent | KeyState::Broken => None,
        }
    }
}

/// One certificate of the node (or a file that should have been one).
#[derive(Debug, Clone)]
pub struct Entry {
    /// kubeadm-style name, or the file name.
    pub name: String,
    /// The real path of the file that holds the certificate.
    pub path: PathBuf,
    /// The same path as the node sees it.
    pub node_path: PathBuf,
    /// How the certificate is held.
    pub origin: Origin,
    /// Where its private key is (real path), when one is expected or found.
    pub key_path: Option<PathBuf>,
    /// The parsed certificate, `None` when the file could not be parsed.
    pub cert: Option<Cert>,
    /// Further certificates in the same file or field (bundles).
    pub chain: Vec<Cert>,
    /// Key presence and match.
    pub key: KeyState,
    /// Components that read it.
    pub consumers: Vec<Component>,
    /// Name of the entry whose key signed it (itself for a self-signed CA).
    pub signer: Option<String>,
    /// Whether certrotd cannot renew it from a key on this node (kubeadm's "externally managed").
    pub externally_managed: bool,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

impl Entry {
    /// Whether the entry is a CA certificate.
    pub fn is_ca(&self) -> bool {
        self.cert.as_ref().is_some_and(|c| c.is_ca)
    }
}

/// A key pair without a certificate (`sa.key` / `sa.pub`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyPairEntry {
    /// Its name (`sa`).
    pub name: String,
    /// The private key's real path.
    pub private_path: PathBuf,
    /// The public key's real path.
    pub public_path: PathBuf,
    /// Algorithm and size, when the private key could be read.
    pub key_algorithm: Option<String>,
    /// Whether the public key belongs to the private key (null when either is unreadable).
    pub key_match: Option<bool>,
    /// Components that read it.
    pub consumers: Vec<Component>,
    /// What is wrong with it.
    pub problems: Vec<String>,
}

/// What the kubelet's configuration says about its own certificate rotation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeletInfo {
    /// The configuration file, when present.
    pub config_path: Option<PathBuf>,
    /// `rotateCertificates`: whether the kubelet renews its client certificate itself.
    pub rotate_certificates: Option<bool>,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// Everything found on a node.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The layouts scanned.
    pub layouts: Vec<Layout>,
    /// Every certificate.
    pub entries: Vec<Entry>,
    /// Key pairs without certificates.
    pub key_pairs: Vec<KeyPairEntry>,
    /// The kubelet's rotation setting.
    pub kubelet: KubeletInfo,
    /// Problems not tied to one certificate (an extra path that matched nothing, …).
    pub warnings: Vec<String>,
    /// Each file loaded and what it gave before signers were resolved, so that a change re-reads
    /// that file only ([`Inventory::refresh`]).
    loaded: Vec<(Job, Vec<Entry>)>,
}

impl Inventory {
    /// The entry with this name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Every entry as its file gave it, file by file, before copies of a CA file (a kubeconfig's
    /// `certificate-authority-data`, a bundle's CA) were merged into that file's entry: what a
    /// file-by-file reader such as x509-certificate-exporter sees.
    pub fn as_read(&self) -> impl Iterator<Item = &Entry> {
        self.loaded.iter().flat_map(|(_, entries)| entries)
    }
}

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest<'a> {
    /// The node root.
    pub root: &'a Root,
    /// Layouts to scan; `None` detects them.
    pub layouts: Option<Vec<Layout>>,
    /// Extra files or globs (node paths).
    pub extra_paths: &'a [String],
}

impl<'a> ScanRequest<'a> {
    /// What the configuration asks to be scanned under `root`: its layouts (or detection) and
    /// its `[inventory] extra_paths`.
    pub fn for_settings(root: &'a Root, settings: &'a Settings) -> Self {
        ScanRequest {
            root,
            layouts: settings.layout.layouts(),
            extra_paths: &settings.inventory.extra_paths,
        }
    }
}

impl Inventory {
    /// Scans the node the settings describe.
    pub fn for_settings(settings: &Settings) -> Inventory {
        let root = Root::new(&settings.root);
        scan(&ScanRequest::for_settings(&root, settings))
    }
}

/// One file to load, with what the layout says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Job {
    name: String,
    node_path: PathBuf,
    shape: Option<FileShape>,
    consumers: Vec<Component>,
    /// Layout-known leaves must have their key; for other files a missing key is normal.
    expect_key: bool,
    /// A glob may match directories; those are skipped, not reported.
    from_glob: bool,
}

/// Scans a node root.
pub fn scan(req: &ScanRequest<'_>) -> Inventory {
    let layouts = req
        .layouts
        .clone()
        .unwrap_or_else(|| layout::detect(req.root));
    let mut inv = Inventory {
        layouts: layouts.clone(),
        ..Inventory::default()
    };
    let jobs = plan_jobs(req, &layouts, &mut inv);
    let (pairs, files): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| matches!(j.shape, Some(FileShape::KeyPair { .. })));
    inv.key_pairs = pairs.iter().map(|j| load_key_pair(req.root, j)).collect();
    let reader = NodeReader::new(req.root);
    let loaded = parallel::map(&files, |job| load(&reader, job));
    inv.loaded = files.into_iter().zip(loaded).collect();
    inv.assemble();
    if layouts.contains(&Layout::Kubeadm) {
        inv.kubelet = kubelet_info(req.root);
    }
    inv
}

impl Inventory {
    /// Re-reads only the files behind `changed` (real paths, as the watcher reports them) and
    /// works out signers again. A change it cannot attribute to one certificate file (a key pair,
    /// the kubelet's configuration, a file no entry came from) falls back to a full [`scan`].
    pub fn refresh(&mut self, req: &ScanRequest<'_>, changed: &[PathBuf]) {
        let touched: Vec<usize> = self
            .loaded
            .iter()
            .enumerate()
            .filter(|(_, (job, entries))| {
                let own = req.root.join(&job.node_path);
                changed.iter().any(|c| {
                    *c == own
                        || entries
                            .iter()
                            .any(|e| e.path == *c || e.key_path.as_deref() == Some(c.as_path()))
                })
            })
            .map(|(i, _)| i)
            .collect();
        let attributed = changed.iter().all(|c| {
            touched.iter().any(|&i| {
                let (job, entries) = &self.loaded[i];
                *c == req.root.join(&job.node_path)
                    || entries
                        .iter()
                        .any(|e| e.path == *c || e.key_path.as_deref() == Some(c.as_path()))
            })
        });
        if !attributed {
            *self = scan(req);
            return;
        }
        let reader = NodeReader::new(req.root);
        for i in touched {
            let job = self.loaded[i].0.clone();
            self.loaded[i].1 = load(&reader, &job);
        }
        self.assemble();
    }

    /// Entries from what was loaded: CA copies dropped, names made unique, signers found.
    fn assemble(&mut self) {
        let raw: Vec<Entry> = self.loaded.iter().flat_map(|(_, e)| e.clone()).collect();
        self.entries = dedup_cas(raw);
        unique_names(&mut self.entries);
        resolve_signers(&mut self.entries);
    }
}

/// A CA held in a bundle or a kubeconfig that is the same certificate as a CA file on the node is
/// that CA: keep the file's entry (which knows whether the key is here) and drop the copy.
fn dedup_cas(entries: Vec<Entry>) -> Vec<Entry> {
    let mut file_cas: HashSet<Vec<u8>> = HashSet::new();
    for e in &entries {
        if matches!(e.origin, Origin::File) && e.is_ca() {
            file_cas.extend(e.cert.as_ref().map(|c| c.der.clone()));
        }
    }
    let mut seen_copies: HashSet<Vec<u8>> = HashSet::new();
    entries
        .into_iter()
        .filter(|e| {
            let copy = matches!(
                e.origin,
                Origin::Bundled { .. } | Origin::KubeconfigCa { .. }
            );
            match (&e.cert, copy) {
                (Some(c), true) => !file_cas.contains(&c.der) && seen_copies.insert(c.der.clone()),
                _ => true,
            }
        })
        .collect()
}

/// Names must be unique because operators select certificates by name; a clash keeps the first and
/// names the later ones by their node path.
fn unique_names(entries: &mut [Entry]) {
    let mut seen = HashSet::new();
    for e in entries.iter_mut() {
        if !seen.insert(e.name.clone()) {
            e.name = e.node_path.display().to_string();
            seen.insert(e.name.clone());
        }
    }
}

/// Finds each certificate's signer among the node's CAs by verifying the signature, then works out
/// which certificates cannot be renewed here.
///
/// Candidates are looked up by the issuer Name's DER, as Go builds chains: a CA whose subject only
/// prints the same is not the signer, and the certificate says why (see [`Cert::names_as_issuer`]).
fn resolve_signers(entries: &mut [Entry]) {
    let mut by_subject: HashMap<&[u8], Vec<usize>> = HashMap::new();
    // CAs by their subject's text, only to explain an issuer that matches one in text but not in DER.
    let mut ca_by_text: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(c) = &e.cert {
            by_subject.entry(&c.subject_der).or_default().push(i);
            if e.is_ca() {
                ca_by_text.entry(&c.subject).or_default().push(i);
            }
        }
    }
    // CAs first, so that a leaf that happens to share a subject is tried last.
    for v in by_subject.values_mut() {
        v.sort_by_key(|&i| !entries[i].is_ca());
    }
    let names = |list: &[usize]| {
        list.iter()
            .map(|&j| entries[j].name.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let indices: Vec<usize> = (0..entries.len()).collect();
    let keys = KeyCache::default();
    let found: Vec<(Option<usize>, Option<String>)> = parallel::map(&indices, |&i| {
        let Some(cert) = &entries[i].cert else {
            return (None, None);
        };
        let candidates = by_subject
            .get(cert.issuer_der.as_slice())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let signer = candidates
            .iter()
            .copied()
            .filter(|&j| j == i || entries[j].is_ca())
            .find(|&j| {
                entries[j]
                    .cert
                    .as_ref()
                    .is_some_and(|ca| keys.verify(cert, j, ca))
            });
        let problem = match (signer, candidates.is_empty()) {
            (None, false) => Some(format!(
                "signature does not verify against {} on this node (issued by another CA with the same name)",
                names(candidates)
            )),
            (None, true) => ca_by_text
                .get(cert.issuer.as_str())
                .filter(|l| l.iter().any(|&j| j != i))
                .map(|l| {
                    format!(
                        "its issuer \"{}\" is encoded differently from the subject of {} (same text, \
                         other DER): Kubernetes components match issuers byte for byte and will not \
                         chain it to that CA",
                        cert.issuer,
                        names(l)
                    )
                }),
            _ => None,
        };
        (signer, problem)
    });
    for (i, (signer, problem)) in found.iter().enumerate() {
        entries[i].signer = signer.map(|j| entries[j].name.clone());
        // kubeadm's meaning: a CA is externally managed when its own key is not here; a leaf when
        // the key of the CA that signed it is not here (or that CA is not here at all).
        let key_holder = if entries[i].is_ca() { Some(i) } else { *signer };
        entries[i].externally_managed = match (&entries[i].cert, key_holder) {
            (None, _) => false,
            (Some(_), Some(j)) => entries[j].key != KeyState::Match,
            (Some(_), None) => true,
        };
        entries[i].problems.extend(problem.clone());
    }
}

fn kubelet_info(root: &Root) -> KubeletInfo {
    let path = root.join(layout::KUBELET_CONFIG);
    let mut info = KubeletInfo::default();
    let data = match pem::read_capped(&path) {
        Ok(d) => d,
        Err(pem::ReadError::Missing { .. }) => return info,
        Err(e) => {
            info.problems.push(e.to_string());
            return info;
        }
    };
    info.config_path = Some(path.clone());
    match serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&data) {
        Ok(v) => {
            info.rotate_certificates = Some(
                v.get("rotateCertificates")
                    .and_then(serde_yaml_ng::Value::as_bool)
                    .unwrap_or(false),
            )
        }
        Err(e) => info.problems.push(format!("{}: {e}", path.display())),
    }
    info
}
