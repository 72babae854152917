//! Restarting a static pod by changing its manifest: an annotation with the time of the restart
//! changes the pod's hash, so the kubelet, which watches `/etc/kubernetes/manifests`, recreates it.
//!
//! The annotation is edited into the text itself so that comments, quoting and key order stay as
//! the operator (or kubeadm) wrote them; the edit is accepted only if the result parses to the old
//! document plus the annotation, otherwise the document is re-serialised (same content, plainer
//! form).

use std::io;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{self, StoreError};

/// The annotation certrotd sets to make the kubelet recreate a static pod.
pub const RESTARTED_AT: &str = "certrotd.io/restarted-at";

/// Mode for a manifest that does not exist yet; never used in practice, as only existing
/// manifests are annotated and [`store::write_atomic`] keeps their mode and owner.
const NEW_FILE_MODE: u32 = 0o600;

/// Errors annotating a manifest; each names the manifest's path.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest could not be read.
    #[error("read static pod manifest {}: {source}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The manifest is not YAML.
    #[error("parse static pod manifest {}: {source}", path.display())]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// Where and why parsing failed.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The manifest is YAML but not a pod with a metadata mapping.
    #[error("annotate static pod manifest {}: {reason}", path.display())]
    NotAPod {
        /// The manifest.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `now` cannot be written as RFC 3339 (a year outside 0..=9999).
    #[error("annotate static pod manifest {}: time {now} has no RFC 3339 form", path.display())]
    Time {
        /// The manifest.
        path: PathBuf,
        /// The time given.
        now: OffsetDateTime,
    },
    /// Serialising the annotated document failed.
    #[error("serialise static pod manifest {}: {source}", path.display())]
    Serialise {
        /// The manifest.
        path: PathBuf,
        /// What serde_yaml_ng reported.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// Writing the manifest failed (the old one is left intact).
    #[error(transparent)]
    Write(#[from] StoreError),
}

/// Sets [`RESTARTED_AT`] to `now` in the manifest at `path` (a real path, already resolved under
/// the node root) and installs the result atomically, keeping mode and owner.
pub fn annotate(path: &Path, now: OffsetDateTime) -> Result<(), ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let stamp = now
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|_| ManifestError::Time {
            path: path.to_path_buf(),
            now,
        })?;
    let annotated = with_annotation(path, &text, RESTARTED_AT, &stamp)?;
    // The temp file store writes first is named `.<name>.certrotd-tmp.*`: the kubelet ignores
    // dotfiles in the manifest directory, so it never sees a half-written pod.
    store::write_atomic(path, annotated.as_bytes(), NEW_FILE_MODE)?;
    Ok(())
}

/// The manifest `text` with annotation `key` set to `value` under `metadata.annotations`,
/// everything else unchanged. `path` only names the manifest in errors.
pub fn with_annotation(
    path: &Path,
    text: &str,
    key: &str,
    value: &str,
) -> Result<String, ManifestError> {
    let not_a_pod = |reason| ManifestError::NotAPod {
        path: path.to_path_buf(),
        reason,
    };
    let original: Value = serde_yaml_ng::from_str(text).map_err(|source| ManifestError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut expected = original;
    let doc = expected
        .as_mapping_mut()
        .ok_or_else(|| not_a_pod("the document is not a mapping"))?;
    if let Some(kind) = doc.get("kind")
        && kind.as_str() != Some("Pod")
    {
        return Err(not_a_pod("its kind is not Pod"));
    }
    let metadata = doc
        .get_mut("metadata")
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| not_a_pod("it has no metadata mapping"))?;
    let annotations = metadata
        .entry(Value::from("annotations"))
        .or_insert(Value::Null);
    if annotations.is_null() {
        *annotations = Value::Mapping(Mapping::new());
    }
    annotations
        .as_mapping_mut()
        .ok_or_else(|| not_a_pod("its metadata.annotations is not a mapping"))?
        .insert(Value::from(key), Value::from(value));

    if let Some(edited) = edit_text(text, key, value)
        && serde_yaml_ng::from_str::<Value>(&edited).is_ok_and(|v| v == expected)
    {
        return Ok(edited);
    }
    tracing::warn!(
        path = %path.display(),
        "static pod manifest rewritten without its original formatting: the annotation could not be edited into its text"
    );
    serde_yaml_ng::to_string(&expected).map_err(|source| ManifestError::Serialise {
        path: path.to_path_buf(),
        source,
    })
}

/// Edits `key: "value"` into the block-style `metadata.annotations` of `text`, or adds that
/// mapping right under `metadata:`. None when the text has another shape (flow style, no
/// indented metadata block); the caller checks whatever this returns by parsing it.
fn edit_text(text: &str, key: &str, value: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let is_content = |l: &str| {
        let t = l.trim_start_matches(' ');
        !t.trim().is_empty() && !t.starts_with('#')
    };
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let is_key = |l: &str, name: &str| {
        let body = strip_comment(l.trim_start_matches(' ')).trim_end();
        body.strip_suffix(':') == Some(name)
    };

    let meta = lines
        .iter()
        .position(|l| indent(l) == 0 && is_key(l, "metadata"))?;
    // The metadata block: everything indented up to the next top-level key.
    let block_end = (meta + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent(lines[i]) == 0)
        .unwrap_or(lines.len());
    let child = (meta + 1..block_end)
        .find(|&i| is_content(lines[i]))
        .map(|i| indent(lines[i]))?;
    let entry_line = |ind: usize| format!("{}{key}: \"{value}\"\n", " ".repeat(ind));

    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    match (meta + 1..block_end)
        .find(|&i| indent(lines[i]) == child && is_key(lines[i], "annotations"))
    {
        Some(ann) => {
            let ann_end = (ann + 1..block_end)
                .find(|&i| is_content(lines[i]) && indent(lines[i]) <= child)
                .unwrap_or(block_end);
            let entry = (ann + 1..ann_end)
                .find(|&i| is_content(lines[i]))
                .map(|i| indent(lines[i]))?;
            let existing = (ann + 1..ann_end).find(|&i| {
                indent(lines[i]) == entry
                    && lines[i]
                        .trim_start_matches(' ')
                        .starts_with(&format!("{key}:"))
            });
            match existing {
                Some(i) => out[i] = entry_line(entry),
                None => out.insert(ann + 1, entry_line(entry)),
            }
        }
        None => {
            out.insert(meta + 1, entry_line(child * 2));
            out.insert(meta + 1, format!("{}annotations:\n", " ".repeat(child)));
        }
    }
    Some(out.concat())
}

/// A line without its trailing comment (a `#` after a space; kubeadm's values hold no such text,
/// and a wrong cut only makes the parse check reject the edit).
fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = "\
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 10.0.0.1:6443
  creationTimestamp: null
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.1
    image: registry.k8s.io/kube-apiserver:v1.30.0
    name: kube-apiserver
status: {}
";

    fn annotated(text: &str) -> String {
        with_annotation(
            Path::new("m.yaml"),
            text,
            RESTARTED_AT,
            "2026-01-02T03:04:05Z",
        )
        .expect("annotate")
    }

    #[test]
    fn adds_the_annotation_as_one_line() {
        let out = annotated(KUBEADM);
        let added = "    certrotd.io/restarted-at: \"2026-01-02T03:04:05Z\"\n";
        assert_eq!(
            out,
            KUBEADM.replacen("  annotations:\n", &format!("  annotations:\n{added}"), 1)
        );
    }

    #[test]
    fn replaces_an_earlier_annotation() {
        let once = annotated(KUBEADM);
        let twice = with_annotation(
            Path::new("m.yaml"),
            &once,
            RESTARTED_AT,
            "2027-01-01T00:00:00Z",
        )
        .expect("annotate");
        assert_eq!(
            twice,
            once.replace("2026-01-02T03:04:05Z", "2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn adds_annotations_when_there_are_none_and_keeps_comments() {
        let text = "# written by hand\napiVersion: v1\nkind: Pod\nmetadata:\n    name: etcd # the name\n    namespace: kube-system\nspec: {}\n";
        let out = annotated(text);
        assert_eq!(
            out,
            "# written by hand\napiVersion: v1\nkind: Pod\nmetadata:\n    annotations:\n        certrotd.io/restarted-at: \"2026-01-02T03:04:05Z\"\n    name: etcd # the name\n    namespace: kube-system\nspec: {}\n"
        );
    }

    #[test]
    fn flow_style_falls_back_to_reserialising_the_same_content() {
        let text =
            "{apiVersion: v1, kind: Pod, metadata: {name: x, annotations: {a: b}}, spec: {}}";
        let out = annotated(text);
        let v: Value = serde_yaml_ng::from_str(&out).expect("parse");
        assert_eq!(v["metadata"]["annotations"]["a"], Value::from("b"));
        assert_eq!(
            v["metadata"]["annotations"][RESTARTED_AT],
            Value::from("2026-01-02T03:04:05Z")
        );
        assert_eq!(v["metadata"]["name"], Value::from("x"));
    }

    #[test]
    fn refuses_what_is_not_a_pod() {
        for (text, reason) in [
            ("- a\n", "the document is not a mapping"),
            (
                "kind: Deployment\nmetadata:\n  name: x\n",
                "its kind is not Pod",
            ),
            ("kind: Pod\nspec: {}\n", "it has no metadata mapping"),
            (
                "kind: Pod\nmetadata:\n  annotations: [1]\n",
                "its metadata.annotations is not a mapping",
            ),
        ] {
            let err = with_annotation(Path::new("/m/x.yaml"), text, RESTARTED_AT, "t").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("annotate static pod manifest /m/x.yaml: {reason}")
            );
        }
        let err = with_annotation(Path::new("/m/x.yaml"), "a: [", RESTARTED_AT, "t").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("parse static pod manifest /m/x.yaml: "),
            "{err}"
        );
    }
}
