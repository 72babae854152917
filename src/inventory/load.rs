//! Loading one file into entries: certificates with their keys checked, kubeconfigs user by
//! user, and service-account key pairs; what cannot be read becomes a named problem.

use super::*;

/// Loads one file into its entries: a certificate file gives one (plus its bundled CAs), a
/// kubeconfig one per user plus its cluster CAs.
pub(super) fn load(rd: &NodeReader<'_>, job: &Job) -> Vec<Entry> {
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

pub(super) fn load_key_pair(root: &Root, job: &Job) -> KeyPairEntry {
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
