//! Kubeconfig files: the client certificates (and CA bundles) they embed or reference, and the one
//! edit certrotd makes to them (replacing a user's embedded client certificate and key) while keeping
//! everything else as it was.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_yaml_ng::{Mapping, Value};

use super::secret::{SecretBytes, SecretString};

/// Where a credential of a kubeconfig lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// Embedded as base64 (`*-data`); holds the decoded bytes (PEM text), zeroed when dropped
    /// (`client-key-data` is a private key).
    Embedded(SecretBytes),
    /// Referenced by path, resolved against the kubeconfig's directory when relative (as kubectl does).
    File(PathBuf),
}

impl std::fmt::Debug for Source {
    // client-key-data passes through here: never print contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Embedded(b) => write!(f, "Embedded({} bytes)", b.len()),
            Source::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// A user entry with a client certificate.
#[derive(Debug, Clone)]
pub struct User {
    /// The user's name in the kubeconfig.
    pub name: String,
    /// `client-certificate-data` or `client-certificate`.
    pub cert: Source,
    /// `client-key-data` or `client-key`, if any.
    pub key: Option<Source>,
}

/// A cluster entry's CA bundle.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    /// `certificate-authority-data` or `certificate-authority`.
    pub ca: Source,
}

/// What certrotd needs from a kubeconfig.
#[derive(Debug, Clone, Default)]
pub struct Kubeconfig {
    /// Users that authenticate with a client certificate.
    pub users: Vec<User>,
    /// Clusters that pin a CA.
    pub clusters: Vec<Cluster>,
}

/// Why a kubeconfig could not be read. Names the field; never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// Not YAML, or not a kubeconfig.
    #[error("not a valid kubeconfig: {0}")]
    Syntax(String),
    /// A `*-data` field is not valid base64.
    #[error("{field}: invalid base64")]
    Base64 {
        /// e.g. `users[kubernetes-admin].client-certificate-data`
        field: String,
    },
    /// The user to edit is missing or has no embedded certificate.
    #[error("{0}")]
    Edit(String),
}

/// Whether a YAML document looks like a kubeconfig (used to sniff files named by globs).
pub fn looks_like_kubeconfig(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    text.lines().any(|l| l.trim_end() == "kind: Config")
        || (text.contains("clusters:") && text.contains("users:"))
}

/// Parses a kubeconfig; `path` is its location, to resolve relative references.
pub fn parse(path: &Path, data: &[u8]) -> Result<Kubeconfig, KubeconfigError> {
    let doc: Value =
        serde_yaml_ng::from_slice(data).map_err(|e| KubeconfigError::Syntax(e.to_string()))?;
    if !doc.is_mapping() {
        return Err(KubeconfigError::Syntax(
            "the document is not a mapping".into(),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut out = Kubeconfig::default();
    for (name, user) in named_entries(&doc, "users", "user") {
        let field = |f: &str| format!("users[{name}].{f}");
        let cert = source(user, "client-certificate", base, &field)?;
        let key = source(user, "client-key", base, &field)?;
        if let Some(cert) = cert {
            out.users.push(User { name, cert, key });
        }
    }
    for (name, cluster) in named_entries(&doc, "clusters", "cluster") {
        let field = |f: &str| format!("clusters[{name}].{f}");
        if let Some(ca) = source(cluster, "certificate-authority", base, &field)? {
            out.clusters.push(Cluster { name, ca });
        }
    }
    Ok(out)
}

fn named_entries<'a>(doc: &'a Value, list: &str, inner: &str) -> Vec<(String, &'a Value)> {
    doc.get(list)
        .and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .filter_map(|e| {
                    let name = e
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    e.get(inner).map(|v| (name, v))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn source(
    v: &Value,
    key: &str,
    base: &Path,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<Source>, KubeconfigError> {
    let data_key = format!("{key}-data");
    if let Some(s) = v.get(&data_key).and_then(Value::as_str) {
        let cleaned: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(cleaned.as_bytes())
            .map_err(|_| KubeconfigError::Base64 {
                field: field(&data_key),
            })?;
        return Ok(Some(Source::Embedded(bytes.into())));
    }
    if let Some(p) = v.get(key).and_then(Value::as_str) {
        return Ok(Some(Source::File(base.join(p))));
    }
    Ok(None)
}

/// Replaces one user's embedded client certificate and key, keeping every other field. Fails when the
/// user does not embed them (a referenced certificate is renewed in its own file instead). The new
/// text holds the key, and is zeroed when dropped; the YAML library's own working copies are not.
pub fn replace_embedded_client(
    data: &[u8],
    user: &str,
    cert_pem: &str,
    key_pem: Option<&str>,
) -> Result<SecretString, KubeconfigError> {
    let mut doc: Value =
        serde_yaml_ng::from_slice(data).map_err(|e| KubeconfigError::Syntax(e.to_string()))?;
    let entry = doc
        .get_mut("users")
        .and_then(Value::as_sequence_mut)
        .and_then(|seq| {
            seq.iter_mut()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(user))
        })
        .and_then(|e| e.get_mut("user"))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| KubeconfigError::Edit(format!("no user named {user:?}")))?;
    set_data(entry, "client-certificate-data", cert_pem, user)?;
    if let Some(key) = key_pem {
        set_data(entry, "client-key-data", key, user)?;
    }
    serde_yaml_ng::to_string(&doc)
        .map(SecretString::new)
        .map_err(|e| KubeconfigError::Syntax(e.to_string()))
}

fn set_data(
    entry: &mut Mapping,
    field: &str,
    pem: &str,
    user: &str,
) -> Result<(), KubeconfigError> {
    let slot = entry
        .get_mut(field)
        .ok_or_else(|| KubeconfigError::Edit(format!("users[{user}] has no {field} to replace")))?;
    *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KC: &str = "apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    certificate-authority-data: QUJD
    server: https://10.0.0.1:6443
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: kubelet
  user:
    client-certificate: ../pki/kubelet.pem
    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem
contexts: []
current-context: kubernetes-admin@kubernetes
";

    #[test]
    fn embedded_and_referenced_credentials() {
        let kc = parse(Path::new("/etc/kubernetes/admin.conf"), KC.as_bytes()).unwrap();
        assert_eq!(kc.users.len(), 2);
        assert_eq!(kc.users[0].cert, Source::Embedded(b"CERT".to_vec().into()));
        assert_eq!(
            kc.users[1].cert,
            Source::File(PathBuf::from("/etc/kubernetes/../pki/kubelet.pem"))
        );
        assert_eq!(kc.clusters[0].ca, Source::Embedded(b"ABC".to_vec().into()));
    }

    #[test]
    fn broken_base64_names_the_field() {
        let bad = KC.replace("Q0VSVA==", "Q0V*SVA");
        let e = parse(Path::new("/x.conf"), bad.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "users[kubernetes-admin].client-certificate-data: invalid base64"
        );
    }

    #[test]
    fn replacing_keeps_everything_else() {
        let out =
            replace_embedded_client(KC.as_bytes(), "kubernetes-admin", "NEW", Some("K2")).unwrap();
        let kc = parse(Path::new("/x.conf"), out.as_bytes()).unwrap();
        assert_eq!(kc.users[0].cert, Source::Embedded(b"NEW".to_vec().into()));
        assert_eq!(
            kc.users[0].key,
            Some(Source::Embedded(b"K2".to_vec().into()))
        );
        assert!(out.contains("server: https://10.0.0.1:6443"));
        assert!(out.contains("current-context: kubernetes-admin@kubernetes"));
        assert!(replace_embedded_client(KC.as_bytes(), "kubelet", "X", None).is_err());
    }
}
