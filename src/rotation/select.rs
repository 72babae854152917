//! Select: which certificates of the inventory a selection names, one target per certificate
//! actually written (kubelet.conf that references kubelet-client-current.pem and
//! kubelet-client-current itself are one certificate in one file).

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{RotationType, Selection};
use crate::inventory::{Entry, Inventory, Origin};
use crate::pki::layout::Component;

/// One certificate to renew.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The inventory entry that holds it (the certificate file's own entry when a kubeconfig also
    /// references it).
    pub entry: &'a Entry,
    /// Every inventory name that refers to it, the entry's own first.
    pub names: Vec<String>,
    /// Every component that reads it, through any of those names.
    pub consumers: Vec<Component>,
    /// Named with `--cert` (rather than through a type), so an operator expects it renewed.
    pub explicit: bool,
}

/// What a selection names.
#[derive(Debug, Clone, Default)]
pub struct Selected<'a> {
    /// The certificates, in inventory order.
    pub targets: Vec<Target<'a>>,
    /// Things worth saying (a type that matched nothing on this node).
    pub notes: Vec<String>,
}

/// A selection that names nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Neither a type nor a certificate was given.
    #[error("say what to renew: --type kubernetes-leaf, etcd-leaf, kubelet or all, or --cert NAME")]
    Empty,
    /// `--cert` named something the inventory does not have.
    #[error("no certificate named {name:?} on this node (known: {known})")]
    UnknownCert {
        /// The name given.
        name: String,
        /// The names the inventory has.
        known: String,
    },
}

/// Where a certificate is written: its file, and for an embedded kubeconfig credential the user.
fn location(e: &Entry) -> (PathBuf, Option<String>) {
    match &e.origin {
        Origin::KubeconfigEmbedded { kubeconfig, user } => (kubeconfig.clone(), Some(user.clone())),
        _ => (e.path.clone(), None),
    }
}

/// Whether `all` covers an entry: every certificate that is not a CA or a copy of one.
fn is_leaf(e: &Entry) -> bool {
    !e.is_ca()
        && !matches!(
            e.origin,
            Origin::Bundled { .. } | Origin::KubeconfigCa { .. }
        )
}

/// Resolves a selection against the inventory.
pub fn select<'a>(inv: &'a Inventory, sel: &Selection) -> Result<Selected<'a>, SelectError> {
    if sel.types.is_empty() && sel.certs.is_empty() {
        return Err(SelectError::Empty);
    }
    let mut notes = Vec::new();
    let mut chosen: Vec<(usize, bool)> = Vec::new();
    let all = sel.types.contains(&RotationType::All);
    for (i, e) in inv.entries.iter().enumerate() {
        let by_type = if all {
            is_leaf(e)
        } else {
            sel.types
                .iter()
                .any(|t| t.members().contains(&e.name.as_str()))
        };
        let explicit = sel.certs.contains(&e.name);
        if by_type || explicit {
            chosen.push((i, explicit));
        }
    }
    for name in &sel.certs {
        if inv.get(name).is_none() {
            let known: Vec<&str> = inv.entries.iter().map(|e| e.name.as_str()).collect();
            return Err(SelectError::UnknownCert {
                name: name.clone(),
                known: known.join(", "),
            });
        }
    }
    for t in &sel.types {
        if *t != RotationType::All && !t.members().iter().any(|m| inv.get(m).is_some()) {
            notes.push(format!(
                "--type {t}: none of its certificates is on this node"
            ));
        }
    }

    // One target per written location; the entry of the certificate file itself represents it,
    // since a kubeconfig's reference carries no consumers of its own beyond the kubeconfig's.
    let mut targets: Vec<Target<'a>> = Vec::new();
    let mut keys: Vec<(PathBuf, Option<String>)> = Vec::new();
    for (i, explicit) in chosen {
        let e = &inv.entries[i];
        let key = location(e);
        match keys.iter().position(|k| *k == key) {
            Some(j) => merge(&mut targets[j], e, explicit),
            None => {
                keys.push(key);
                targets.push(Target {
                    entry: e,
                    names: vec![e.name.clone()],
                    consumers: e.consumers.clone(),
                    explicit,
                });
            }
        }
    }
    // An entry referencing a file that also has its own entry in the inventory is the same
    // certificate, even when only the reference was selected.
    for t in &mut targets {
        if matches!(t.entry.origin, Origin::KubeconfigReference { .. })
            && let Some(own) = inv.entries.iter().find(|o| {
                o.path == t.entry.path && matches!(o.origin, Origin::File | Origin::Combined)
            })
        {
            let explicit = t.explicit;
            merge(t, own, explicit);
        }
    }
    Ok(Selected { targets, notes })
}

/// Folds another name for the same certificate into a target, preferring the file's own entry.
fn merge<'a>(t: &mut Target<'a>, e: &'a Entry, explicit: bool) {
    if !t.names.contains(&e.name) {
        if matches!(e.origin, Origin::File | Origin::Combined)
            && matches!(t.entry.origin, Origin::KubeconfigReference { .. })
        {
            t.entry = e;
            t.names.insert(0, e.name.clone());
        } else {
            t.names.push(e.name.clone());
        }
    }
    let consumers: BTreeSet<Component> = t.consumers.iter().chain(&e.consumers).copied().collect();
    t.consumers = consumers.into_iter().collect();
    t.explicit |= explicit;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::KeyState;

    fn entry(name: &str, path: &str, origin: Origin, consumers: &[Component]) -> Entry {
        Entry {
            name: name.into(),
            path: path.into(),
            node_path: path.into(),
            origin,
            key_path: None,
            cert: None,
            chain: vec![],
            key: KeyState::Absent,
            consumers: consumers.to_vec(),
            signer: None,
            externally_managed: false,
            problems: vec![],
        }
    }

    fn inv() -> Inventory {
        let current = "/var/lib/kubelet/pki/kubelet-client-2026.pem";
        let mut inv = Inventory::default();
        inv.entries = vec![
            entry(
                "apiserver",
                "/pki/apiserver.crt",
                Origin::File,
                &[Component::KubeApiserver],
            ),
            entry(
                "admin.conf",
                "/admin.conf",
                Origin::KubeconfigEmbedded {
                    kubeconfig: "/admin.conf".into(),
                    user: "kubernetes-admin".into(),
                },
                &[],
            ),
            entry(
                "kubelet.conf",
                current,
                Origin::KubeconfigReference {
                    kubeconfig: "/kubelet.conf".into(),
                    user: "system:node:n".into(),
                },
                &[Component::Kubelet],
            ),
            entry(
                "kubelet-client-current",
                current,
                Origin::File,
                &[Component::Kubelet],
            ),
        ];
        inv
    }

    #[test]
    fn kubelet_conf_and_its_client_file_are_one_target() {
        let inv = inv();
        let sel = Selection {
            types: vec![RotationType::Kubelet],
            certs: vec![],
        };
        let s = select(&inv, &sel).unwrap();
        assert_eq!(s.targets.len(), 1);
        assert_eq!(
            s.targets[0].names,
            ["kubelet-client-current", "kubelet.conf"]
        );
        assert_eq!(s.targets[0].entry.name, "kubelet-client-current");

        // Naming only the kubeconfig still renews the file's own entry.
        let sel = Selection {
            types: vec![],
            certs: vec!["kubelet.conf".into()],
        };
        let s = select(&inv, &sel).unwrap();
        assert_eq!(s.targets.len(), 1);
        assert_eq!(s.targets[0].entry.name, "kubelet-client-current");
        assert!(s.targets[0].explicit);
    }

    #[test]
    fn types_and_names_combine_without_duplicates() {
        let inv = inv();
        let sel = Selection {
            types: vec![RotationType::All],
            certs: vec!["apiserver".into()],
        };
        let s = select(&inv, &sel).unwrap();
        assert_eq!(s.targets.len(), 3);
        assert!(s.targets[0].explicit && !s.targets[1].explicit);

        let sel = Selection {
            types: vec![RotationType::EtcdLeaf],
            certs: vec![],
        };
        let s = select(&inv, &sel).unwrap();
        assert!(s.targets.is_empty());
        assert!(s.notes[0].contains("etcd-leaf"), "{:?}", s.notes);
    }

    #[test]
    fn unknown_names_and_empty_selections_are_errors() {
        let inv = inv();
        let e = select(
            &inv,
            &Selection {
                types: vec![],
                certs: vec!["nope".into()],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        assert!(matches!(
            select(&inv, &Selection::default()),
            Err(SelectError::Empty)
        ));
    }
}
