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

pub(crate) mod parallel;
mod read;

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
pub struct Request<'a> {
    /// The node root.
    pub root: &'a Root,
    /// Layouts to scan; `None` detects them.
    pub layouts: Option<Vec<Layout>>,
    /// Extra files or globs (node paths).
    pub extra_paths: &'a [String],
}

impl<'a> Request<'a> {
    /// What the configuration asks to be scanned under `root`: its layouts (or detection) and
    /// its `[inventory] extra_paths`.
    pub fn for_settings(root: &'a Root, settings: &'a Settings) -> Self {
        Request {
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
        scan(&Request::for_settings(&root, settings))
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
pub fn scan(req: &Request<'_>) -> Inventory {
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
    pub fn refresh(&mut self, req: &Request<'_>, changed: &[PathBuf]) {
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

fn plan_jobs(req: &Request<'_>, layouts: &[Layout], inv: &mut Inventory) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |job: Job, jobs: &mut Vec<Job>| {
        if seen.insert(job.node_path.clone()) {
            jobs.push(job);
        }
    };
    for l in layouts {
        for k in layout::dist_known(*l) {
            if std::fs::symlink_metadata(req.root.join(&k.path)).is_ok() {
                push(known_job(k), &mut jobs);
            }
        }
    }
    for l in layouts {
        for tree in layout::trees(*l) {
            for job in tree_jobs(req.root, &tree) {
                push(job, &mut jobs);
            }
        }
    }
    for pattern in req.extra_paths {
        for job in extra_jobs(req.root, pattern, &mut inv.warnings) {
            push(job, &mut jobs);
        }
    }
    jobs
}

fn known_job(k: Known) -> Job {
    let expect_key = matches!(k.shape, FileShape::CertKey { .. } | FileShape::Combined);
    Job {
        name: k.name,
        node_path: k.path,
        shape: Some(k.shape),
        consumers: k.consumers,
        expect_key,
        from_glob: false,
    }
}

/// Walks a layout tree (bounded depth, symlinked directories not followed, so a loop cannot trap it).
fn tree_jobs(root: &Root, tree: &Tree) -> Vec<Job> {
    let mut out = Vec::new();
    let base = root.join(&tree.dir);
    let mut stack = vec![(base.clone(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.filter_map(Result::ok).collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let path = e.path();
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                if tree.recursive && depth < 6 {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let Some(shape) = layout::shape_by_name(&path) else {
                continue;
            };
            let Some(node_path) = root.node_path(&path) else {
                continue;
            };
            let rel = path.strip_prefix(&base).unwrap_or(&path).with_extension("");
            let stem = rel.to_string_lossy();
            let name = match shape {
                FileShape::Kubeconfig => format!(
                    "{}{}",
                    tree.name_prefix,
                    path.file_name().unwrap_or_default().to_string_lossy()
                ),
                _ => format!("{}{stem}", tree.name_prefix),
            };
            out.push(Job {
                name,
                node_path,
                shape: Some(node_shape(root, shape)),
                consumers: tree.consumers.clone(),
                expect_key: false,
                from_glob: false,
            });
        }
    }
    out
}

/// `shape_by_name` works on real paths; jobs carry node paths.
fn node_shape(root: &Root, shape: FileShape) -> FileShape {
    match shape {
        FileShape::CertKey { key } => FileShape::CertKey {
            key: root.node_path(&key).unwrap_or(key),
        },
        other => other,
    }
}

fn extra_jobs(root: &Root, pattern: &str, warnings: &mut Vec<String>) -> Vec<Job> {
    let real = root.join(pattern);
    let Some(real_str) = real.to_str() else {
        warnings.push(format!("extra_paths {pattern:?}: not valid UTF-8"));
        return Vec::new();
    };
    let paths = match glob::glob(real_str) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("extra_paths {pattern:?}: bad pattern: {e}"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for p in paths {
        let path = match p {
            Ok(p) => p,
            Err(e) => {
                warnings.push(format!("extra_paths {pattern:?}: {e}"));
                continue;
            }
        };
        let Some(node_path) = root.node_path(&path) else {
            continue;
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A key matched by a broad glob is found again beside its certificate; skip it here.
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "key" || name.ends_with("-key.pem") || ext == "csr" {
            continue;
        }
        out.push(Job {
            name,
            shape: layout::shape_by_name(&path).map(|s| node_shape(root, s)),
            node_path,
            consumers: Vec::new(),
            expect_key: false,
            from_glob: true,
        });
    }
    if out.is_empty() && !has_glob_chars(pattern) {
        warnings.push(format!("extra_paths {pattern:?}: no such file"));
    } else if out.is_empty() {
        warnings.push(format!("extra_paths {pattern:?}: matched no file"));
    }
    out
}

fn has_glob_chars(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Loads one file into its entries: a certificate file gives one (plus its bundled CAs), a
/// kubeconfig one per user plus its cluster CAs.
fn load(rd: &NodeReader<'_>, job: &Job) -> Vec<Entry> {
    let (real, data) = rd.read(&job.node_path);
    let data = match data {
        Ok(d) => d,
        Err(pem::ReadError::NotAFile {
            what: "a directory",
            ..
        }) if job.from_glob => return Vec::new(),
        Err(e) => return vec![broken(job, real, read_problem(rd.root, job, e))],
    };
    let is_kubeconfig = match &job.shape {
        Some(FileShape::Kubeconfig) => true,
        Some(_) => false,
        None => kubeconfig::looks_like_kubeconfig(&data),
    };
    if is_kubeconfig {
        return load_kubeconfig(rd, job, &real, &data);
    }
    let key = match &job.shape {
        Some(FileShape::CertKey { key }) => KeyRef::File(key.clone()),
        _ => KeyRef::SameFile,
    };
    cert_entries(rd, job, real, &data, Origin::File, key)
}

/// A read error as a problem; a dangling symlink says where it points.
fn read_problem(root: &Root, job: &Job, e: pem::ReadError) -> String {
    let link = root.join(&job.node_path);
    match (&e, std::fs::read_link(&link)) {
        (pem::ReadError::Missing { .. }, Ok(target)) => format!(
            "{}: dangling symlink to {}",
            job.node_path.display(),
            target.display()
        ),
        _ => e.to_string(),
    }
}

fn broken(job: &Job, path: PathBuf, problem: String) -> Entry {
    Entry {
        name: job.name.clone(),
        node_path: job.node_path.clone(),
        path,
        origin: Origin::File,
        key_path: None,
        cert: None,
        chain: Vec::new(),
        key: KeyState::Absent,
        consumers: job.consumers.clone(),
        signer: None,
        externally_managed: false,
        problems: vec![problem],
    }
}

/// Where a certificate's key is to be found.
enum KeyRef {
    /// In another file (node path).
    File(PathBuf),
    /// Among the blocks of the certificate's own file (combined PEM, or none at all).
    SameFile,
    /// Embedded bytes (a kubeconfig's client-key-data).
    Data(crate::pki::secret::SecretBytes, PathBuf),
}

/// Entries for the certificate blocks of one buffer: the first is the entry itself, further CA
/// certificates become `Bundled` entries.
fn cert_entries(
    rd: &NodeReader<'_>,
    job: &Job,
    path: PathBuf,
    data: &[u8],
    origin: Origin,
    key: KeyRef,
) -> Vec<Entry> {
    let blocks = match pem::blocks(&path, data) {
        Ok(b) => b,
        Err(e) => {
            let mut entry = broken(job, path, e.to_string());
            entry.origin = origin;
            return vec![entry];
        }
    };
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    for (i, b) in blocks
        .iter()
        .filter(|b| b.label == "CERTIFICATE")
        .enumerate()
    {
        match Cert::from_der(&b.der) {
            Ok(c) => certs.push(c),
            Err(e) => problems.push(format!("{}: certificate #{}: {e}", path.display(), i + 1)),
        }
    }
    if certs.is_empty() && problems.is_empty() {
        let labels: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
        problems.push(format!(
            "{}: no CERTIFICATE block (found {})",
            path.display(),
            labels.join(", ")
        ));
    }
    let mut certs = certs.into_iter();
    let mut entry = broken(job, path.clone(), String::new());
    entry.problems = problems;
    entry.origin = origin;
    entry.cert = certs.next();
    entry.chain = certs.collect();
    if let Some(cert) = &entry.cert {
        let (state, key_path, problem) = check_key(rd, job, cert, &path, &blocks, key);
        entry.key = state;
        entry.key_path = key_path;
        entry.problems.extend(problem);
    }
    let mut out = vec![entry];
    let holder = out[0].name.clone();
    let bundled: Vec<Cert> = out[0].chain.iter().filter(|c| c.is_ca).cloned().collect();
    for (i, ca) in bundled.into_iter().enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            (i + 1).to_string()
        };
        out.push(Entry {
            name: format!("{holder}:ca{suffix}"),
            path: path.clone(),
            node_path: job.node_path.clone(),
            origin: Origin::Bundled {
                holder: holder.clone(),
            },
            key_path: None,
            cert: Some(ca),
            chain: Vec::new(),
            key: KeyState::Absent,
            consumers: Vec::new(),
            signer: None,
            externally_managed: false,
            problems: Vec::new(),
        });
    }
    out
}

/// Finds and checks a certificate's private key. Returns the state, where the key is, and a problem.
fn check_key(
    rd: &NodeReader<'_>,
    job: &Job,
    cert: &Cert,
    cert_path: &Path,
    blocks: &[Block],
    key: KeyRef,
) -> (KeyState, Option<PathBuf>, Option<String>) {
    let separate_file = matches!(key, KeyRef::File(_));
    let (key_blocks, key_path): (Vec<Block>, PathBuf) = match key {
        KeyRef::SameFile => (
            blocks
                .iter()
                .filter(|b| is_key_label(&b.label))
                .cloned()
                .collect(),
            cert_path.to_owned(),
        ),
        KeyRef::Data(bytes, kubeconfig) => match pem::blocks(&kubeconfig, &bytes) {
            Ok(b) => (b, kubeconfig),
            Err(e) => return (KeyState::Broken, Some(kubeconfig), Some(e.to_string())),
        },
        KeyRef::File(node) => {
            let (real, data) = rd.read(&node);
            match data.and_then(|d| pem::blocks(&real, &d)) {
                Ok(b) => (b, real),
                Err(pem::ReadError::Missing { .. }) if !must_have_key(job, cert) => {
                    return (KeyState::Absent, None, None);
                }
                Err(e) => return (KeyState::Broken, Some(real), Some(key_problem(e))),
            }
        }
    };
    if key_blocks.iter().all(|b| !is_key_label(&b.label)) {
        // A file standing where the key belongs that holds no key is always wrong.
        if must_have_key(job, cert) || separate_file {
            let why = PrivateKey::from_blocks(&key_blocks)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            let problem = format!("{}: {why}", key_path.display());
            return (KeyState::Broken, Some(key_path), Some(problem));
        }
        return (KeyState::Absent, None, None);
    }
    match public_half(&key_blocks) {
        Ok(public) if public == cert.public_key => (KeyState::Match, Some(key_path), None),
        Ok(_) => {
            let problem = format!(
                "{}: private key does not match the certificate",
                key_path.display()
            );
            (KeyState::Mismatch, Some(key_path), Some(problem))
        }
        Err(e) => {
            let problem = format!("{}: {e}", key_path.display());
            (KeyState::Broken, Some(key_path), Some(problem))
        }
    }
}

fn key_problem(e: pem::ReadError) -> String {
    match e {
        pem::ReadError::Missing { path } => format!("{}: private key not found", path.display()),
        other => other.to_string(),
    }
}

/// A leaf the layout knows must have its key; a CA without its key is merely externally managed.
fn must_have_key(job: &Job, cert: &Cert) -> bool {
    job.expect_key && !cert.is_ca
}

fn load_kubeconfig(rd: &NodeReader<'_>, job: &Job, real: &Path, data: &[u8]) -> Vec<Entry> {
    let kc = match kubeconfig::parse(&job.node_path, data) {
        Ok(kc) => kc,
        Err(e) => {
            return vec![broken(
                job,
                real.to_owned(),
                format!("{}: {e}", real.display()),
            )];
        }
    };
    let mut out = Vec::new();
    let single = kc.users.len() == 1;
    for user in &kc.users {
        let name = if single {
            job.name.clone()
        } else {
            format!("{}:{}", job.name, user.name)
        };
        let named = Job {
            name,
            expect_key: true,
            ..job.clone()
        };
        out.extend(user_entries(rd, &named, real, user));
    }
    for cluster in &kc.clusters {
        let KcSource::Embedded(bytes) = &cluster.ca else {
            continue;
        };
        let ca_job = Job {
            name: format!("{}:{}", job.name, cluster.name),
            consumers: Vec::new(),
            expect_key: false,
            ..job.clone()
        };
        let origin = Origin::KubeconfigCa {
            kubeconfig: real.to_owned(),
            cluster: cluster.name.clone(),
        };
        let mut entries = cert_entries(
            rd,
            &ca_job,
            real.to_owned(),
            bytes,
            origin,
            KeyRef::SameFile,
        );
        // Only CA certificates matter here; anything else in the field is ignored.
        entries.retain(|e| e.is_ca());
        for e in &mut entries {
            e.key = KeyState::Absent;
        }
        out.extend(entries);
    }
    if out.is_empty() {
        out.push(broken(
            job,
            real.to_owned(),
            format!("{}: kubeconfig holds no client certificate", real.display()),
        ));
    }
    out
}

fn user_entries(
    rd: &NodeReader<'_>,
    job: &Job,
    kubeconfig: &Path,
    user: &kubeconfig::User,
) -> Vec<Entry> {
    let key = match &user.key {
        Some(KcSource::Embedded(b)) => KeyRef::Data(b.clone(), kubeconfig.to_owned()),
        Some(KcSource::File(p)) => KeyRef::File(p.clone()),
        None => KeyRef::SameFile,
    };
    match &user.cert {
        KcSource::Embedded(bytes) => {
            let origin = Origin::KubeconfigEmbedded {
                kubeconfig: kubeconfig.to_owned(),
                user: user.name.clone(),
            };
            cert_entries(rd, job, kubeconfig.to_owned(), bytes, origin, key)
        }
        KcSource::File(node) => {
            let origin = Origin::KubeconfigReference {
                kubeconfig: kubeconfig.to_owned(),
                user: user.name.clone(),
            };
            let ref_job = Job {
                node_path: node.clone(),
                ..job.clone()
            };
            let (real, data) = rd.read(node);
            match data {
                Ok(data) => {
                    let mut entries = cert_entries(rd, &ref_job, real, &data, origin, key);
                    // Bundled CAs of a referenced file are listed with that file's own entry.
                    entries.truncate(1);
                    entries
                }
                Err(e) => {
                    let problem = format!(
                        "{} (referenced by {}): {}",
                        node.display(),
                        kubeconfig.display(),
                        read_problem(rd.root, &ref_job, e)
                    );
                    let mut b = broken(job, real, problem);
                    b.origin = origin;
                    vec![b]
                }
            }
        }
    }
}

fn load_key_pair(root: &Root, job: &Job) -> KeyPairEntry {
    let Some(FileShape::KeyPair { public }) = &job.shape else {
        unreachable!("load_key_pair is only called for key pairs")
    };
    let private_path = root.join(&job.node_path);
    let public_path = root.join(public);
    let mut entry = KeyPairEntry {
        name: job.name.clone(),
        private_path: private_path.clone(),
        public_path: public_path.clone(),
        key_algorithm: None,
        key_match: None,
        consumers: job.consumers.clone(),
        problems: Vec::new(),
    };
    let private = pem::read_capped(&private_path)
        .and_then(|d| pem::blocks(&private_path, &d))
        .map_err(|e| e.to_string())
        .and_then(|b| public_half(&b).map_err(|e| format!("{}: {e}", private_path.display())));
    let public = pem::read_capped(&public_path)
        .and_then(|d| pem::blocks(&public_path, &d))
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.into_iter()
                .find(|b| b.label == "PUBLIC KEY")
                .ok_or_else(|| format!("{}: no PUBLIC KEY block", public_path.display()))
        });
    match (&private, &public) {
        (Ok(private_half), Ok(spki)) => {
            let public_bits = crate::pki::cert::spki_public_bits(&spki.der);
            entry.key_algorithm = Some(crate::pki::cert::spki_algorithm(&spki.der).to_string());
            entry.key_match = Some(public_bits.as_deref() == Some(private_half.as_slice()));
            if entry.key_match == Some(false) {
                entry.problems.push(format!(
                    "{}: public key does not belong to {}",
                    public_path.display(),
                    private_path.display()
                ));
            }
        }
        _ => {
            entry.problems.extend(private.as_ref().err().cloned());
            entry.problems.extend(public.as_ref().err().cloned());
        }
    }
    entry
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
