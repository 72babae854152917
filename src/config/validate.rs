//! Checks shared by several tables and the top-level keys: node names, node paths, directories.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// This machine's hostname as kubelet turns it into a node name: trimmed and lowercased.
pub(super) fn machine_node_name() -> Result<String, String> {
    let hostname = nix::unistd::gethostname().map_err(|e| format!("reading the hostname: {e}"))?;
    let hostname = hostname
        .into_string()
        .map_err(|raw| format!("the hostname {raw:?} is not UTF-8"))?;
    Ok(hostname.trim().to_lowercase())
}

/// Checks a Kubernetes node name: an RFC 1123 subdomain, as the API server requires.
pub(super) fn check_node_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (a leading, trailing or doubled '.')".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("only lowercase letters, digits, '-' and '.' are allowed".to_owned());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "label {label:?} must start and end with a letter or digit"
            ));
        }
    }
    Ok(())
}

/// Checks a node path: absolute, and unable to climb out of the root.
pub(super) fn check_node_path(path: &Path) -> Result<(), String> {
    if !path.has_root() {
        return Err("must be an absolute node path, such as /var/lib/certrotd".to_owned());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain '..': node paths stay inside root".to_owned());
    }
    Ok(())
}

/// Resolves a path to an existing directory, symlinks and all.
pub(super) fn real_dir(path: &Path) -> Result<PathBuf, String> {
    let real = fs::canonicalize(path).map_err(|e| e.to_string())?;
    if real.is_dir() {
        Ok(real)
    } else {
        Err("not a directory".to_owned())
    }
}
